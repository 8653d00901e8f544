"""Learning diagnostics: collapse / chance statistics and every method's learning_check rules."""
from __future__ import annotations

import math

import pytest
import torch

from stainshift.methods import get_method_class
from stainshift.methods.base import MIN_JUDGED_IMAGES
from stainshift.methods.base import class_weights
from stainshift.methods.losses import embedding_spread, label_entropy, nt_xent, nt_xent_chance, positive_accuracy

torch.set_num_threads(1)


def test_embedding_spread_is_one_for_a_spread_and_zero_for_collapse() -> None:
    g = torch.Generator().manual_seed(0)
    spread = embedding_spread(torch.randn(4096, 16, generator=g))
    assert float(spread) == pytest.approx(1.0, abs=0.03)
    point = torch.randn(1, 16, generator=g)
    assert float(embedding_spread(point.expand(64, 16) + 1e-6 * torch.randn(64, 16, generator=g))) < 1e-3
    assert float(embedding_spread(point)) == 0.0  # one sample: no spread to measure


def test_positive_accuracy_and_rank() -> None:
    g = torch.Generator().manual_seed(1)
    z = torch.randn(8, 32, generator=g)
    acc, rank = positive_accuracy(z, z + 0.01 * torch.randn(8, 32, generator=g))
    assert float(acc) == 1.0 and float(rank) == 1.0
    acc, rank = positive_accuracy(torch.randn(8, 4, generator=g), torch.randn(8, 4, generator=g))
    assert 1.0 <= float(rank) <= 15.0
    same = torch.ones(8, 4)  # collapse: every candidate ties with the positive, ties count against it
    acc, rank = positive_accuracy(same, same)
    assert float(acc) == 0.0 and float(rank) == 15.0


def test_nt_xent_chance_level() -> None:
    z = torch.ones(6, 5)
    assert float(nt_xent(z, z, 0.1)) == pytest.approx(nt_xent_chance(6), rel=1e-6)  # log(2N − 1)


def test_label_entropy() -> None:
    assert float(label_entropy(torch.tensor([0, 1, 0, 1]), 2)) == pytest.approx(math.log(2))
    assert float(label_entropy(torch.tensor([0, 0, 0, 1, -1]), 2)) == pytest.approx(
        -(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    assert float(label_entropy(torch.tensor([1, 1]), 3)) == 0.0
    assert float(label_entropy(torch.tensor([-1]), 2)) == 0.0


def _rows(n: int = 5, images: int = 1000, **series: list[float]) -> list[dict]:
    return [{"epoch": e + 1, "images": images, **{k: v[e] for k, v in series.items()}} for e in range(n)]


HEALTHY = {
    "baseline": _rows(loss=[0.6, 0.5, 0.45, 0.4, 0.35], ce_chance=[0.54] * 5, emb_std=[0.4] * 5),
    "simclr": _rows(loss=[4.8, 4.5, 4.2, 3.9, 3.7], loss_chance=[4.84] * 5, emb_std=[0.5] * 5),
    "lmc": _rows(loss=[900, 600, 400, 300, 250], loss_on=[300, 200, 150, 120, 100], loss_on_chance=[512] * 5,
                 emb_std=[0.6] * 5),
    "stain_embed": _rows(loss_e=[0.6, 0.5, 0.45, 0.4, 0.35], ce_chance=[0.54] * 5, loss_c=[3.6, 3.0, 2.0, 1.5, 1.2],
                         loss_c_chance=[3.64] * 5, emb_std=[0.4] * 5),
    "sassl": _rows(emb_std=[0.5] * 5, proj_std=[0.8, 0.7, 0.7, 0.6, 0.6], affinity_diff=[0.1, 0.4, 0.5, 0.6, 0.68],
                   loss_ssl=[4.8, 4.5, 4.2, 3.9, 3.7], loss_ssl_chance=[4.84] * 5),
}
# each method's failure as it was seen on the mitosis crops (issue 11)
FAILED = {
    "baseline": _rows(loss=[0.56, 0.55, 0.55, 0.54, 0.54], ce_chance=[0.54] * 5, emb_std=[0.4] * 5),
    "simclr": _rows(loss=[4.88, 4.85, 4.83, 4.80, 4.78], loss_chance=[4.84] * 5, emb_std=[0.4] * 5),
    "lmc": _rows(loss=[171, 170, 168, 165, 160], loss_on=[150] * 5, loss_on_chance=[512] * 5, emb_std=[0.5] * 5),
    "stain_embed": _rows(loss_e=[0.6, 0.58, 0.57, 0.56, 0.56], ce_chance=[0.54] * 5, loss_c=[3.6] * 5,
                         loss_c_chance=[3.64] * 5, emb_std=[0.4] * 5),
    "sassl": _rows(emb_std=[0.44, 0.40, 0.40, 0.37, 0.38], proj_std=[0.61, 0.32, 0.30, 0.26, 0.27],
                   affinity_diff=[0.59, 0.89, 0.90, 0.92, 0.93]),
}


@pytest.mark.parametrize("name", sorted(HEALTHY))
def test_healthy_history_passes_and_collapsed_one_is_flagged(name: str) -> None:
    cls = get_method_class(name)
    assert cls.learning_check(HEALTHY[name]) == []
    reasons = cls.learning_check(FAILED[name])
    assert reasons and all(isinstance(r, str) for r in reasons)


def test_stain_embed_c_uses_the_same_rules() -> None:
    cls = get_method_class("stain_embed_c")
    assert cls.learning_check(HEALTHY["stain_embed"]) == []
    assert any("loss_c" in r for r in cls.learning_check(FAILED["stain_embed"]))


def test_rule_messages_name_the_statistic() -> None:
    simclr = get_method_class("simclr").learning_check(FAILED["simclr"])
    assert any("loss = 4.78" in r and "chance level 4.84" in r for r in simclr)
    sassl = get_method_class("sassl").learning_check(FAILED["sassl"])
    assert [r.split(" =")[0] for r in sassl] == ["affinity_diff"]
    collapsed = _rows(emb_std=[0.3, 0.01, 0.01, 0.01, 0.01], proj_std=[0.5, 0.02, 0.01, 0.01, 0.004],
                      loss_ssl=[4.84] * 5, loss_ssl_chance=[4.84] * 5)
    assert [r.split(" =")[0] for r in get_method_class("sassl").learning_check(collapsed)] == [
        "emb_std", "proj_std", "loss_ssl"]
    lmc = get_method_class("lmc").learning_check(FAILED["lmc"])
    assert any("fell from 171 to 160" in r for r in lmc)


def test_short_runs_are_not_judged() -> None:
    short = _rows(n=3, images=8, loss=[4.8] * 3, loss_chance=[4.84] * 3, emb_std=[0.0] * 3)
    assert 3 * 8 < MIN_JUDGED_IMAGES
    assert get_method_class("simclr").learning_check(short) == []
    assert get_method_class("simclr").learning_check(_rows(n=3, loss=[4.8] * 3, loss_chance=[4.84] * 3,
                                                           emb_std=[0.0] * 3))


def test_native_classifier_only_for_seed_000_models() -> None:
    from stainshift.methods import build_method
    from stainshift.models import Classifier

    enc = {"arch": "resnet18_narrow", "small_input": True, "widths": [4, 4, 8, 8, 8]}
    for name, has in (("baseline", True), ("stain_embed", True), ("stain_embed_c", True), ("simclr", False),
                      ("lmc", False), ("sassl", False)):
        method = build_method(name, {"encoder": enc, "image_size": 16, "proj_hidden": 8, "proj_dim": 8,
                                     "head_hidden": 8, "pred_dim": 4}, num_classes=3)
        clf = method.native_classifier()
        assert (clf is not None) == has, name
        if has:
            assert isinstance(clf, Classifier) and clf.encoder is method.encoder and clf.head is method.head
            assert clf(torch.rand(2, 3, 16, 16)).shape == (2, 3)
            assert clf.head.spec["kind"] == ("linear" if name == "baseline" else "mlp")


def test_label_entropy_with_balanced_weights_is_log_c() -> None:
    labels = torch.tensor([0] * 8 + [1] * 2)
    w = class_weights({"class_weight": "balanced", "class_counts": [80, 20]}, 2)
    assert float(label_entropy(labels, 2, weight=w)) == pytest.approx(math.log(2))


def test_class_weights_balanced_none_and_errors() -> None:
    w = class_weights({"class_weight": "balanced", "class_counts": [80, 20, 0]}, 3)
    # N / (C N_c): 100 / (3 · 80), 100 / (3 · 20); a class absent from training weighs 0
    assert w.tolist() == pytest.approx([100 / 240, 100 / 60, 0.0])
    assert class_weights({"class_weight": None}, 2) is None
    assert class_weights({}, 2) is None
    with pytest.raises(ValueError, match="null or 'balanced'"):
        class_weights({"class_weight": "inverse"}, 2)
    with pytest.raises(ValueError, match="class_counts"):
        class_weights({"class_weight": "balanced"}, 2)
