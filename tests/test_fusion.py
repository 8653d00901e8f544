"""SASSL downstream fusion (seed 002, Eqs. 7–9): frozen general + trainable special encoder."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from stainshift.methods.fusion import FusionEncoder, build_fusion_encoder
from stainshift.models import Classifier, build_encoder

torch.set_num_threads(1)

TINY = {"arch": "resnet18", "small_input": True, "widths": [4, 4, 8, 8, 8]}


def _general(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    enc = build_encoder(TINY)
    # non-trivial BN statistics so eval mode differs from train mode
    enc.train()
    with torch.no_grad():
        enc(torch.rand(4, 3, 16, 16))
    return enc.eval()


def test_forward_matches_equations_7_to_9() -> None:
    fused = build_fusion_encoder(_general(), init="random", seed=1)
    fused.eval()
    g, s = fused.general, fused.special
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        f_g, f_s = g.norm(x), s.norm(x)
        for e_g, e_s in zip([g.stem, *g.stages], [s.stem, *s.stages]):
            f_g = e_g(f_g)  # Eq. 7
            f_s = e_s(f_s) + f_g  # Eq. 8
        f = f_g * f_s + torch.sigmoid(f_s)  # Eq. 9
        expected = F.adaptive_avg_pool2d(f, 1).flatten(1)
        assert torch.allclose(fused(x), expected, atol=1e-6)
        assert fused(x).shape == (2, fused.out_dim)


def test_general_is_frozen_and_special_trains() -> None:
    general = _general()
    stats = general.stem[1].running_mean.clone()
    weights = [p.clone() for p in general.parameters()]
    fused = build_fusion_encoder(general, init="random")
    model = Classifier(fused, num_classes=3)
    model.train()
    assert not fused.general.training and fused.special.training
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    loss = F.cross_entropy(model(torch.rand(4, 3, 16, 16)), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    assert all(p.grad is None for p in fused.general.parameters())
    assert all(p.grad is not None for p in fused.special.parameters())
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(weights, fused.general.parameters()))
    assert torch.equal(stats, fused.general.stem[1].running_mean)  # frozen BN statistics


def test_spec_round_trip_and_copy_init() -> None:
    fused = build_fusion_encoder(_general(), init="random", seed=2)
    fused.eval()
    rebuilt = build_encoder(fused.spec)
    assert isinstance(rebuilt, FusionEncoder)
    rebuilt.load_state_dict(fused.state_dict())
    rebuilt.eval()
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(rebuilt(x), fused(x))
    copied = build_fusion_encoder(_general(), init="copy")
    assert all(torch.equal(a, b) for a, b in zip(copied.general.parameters(), copied.special.parameters()))
    assert all(p.requires_grad for p in copied.special.parameters())


def test_rejects_non_stagewise_encoders() -> None:
    vit = build_encoder({"arch": "vit_tiny", "image_size": 16, "patch": 8, "depth": 1})
    with pytest.raises(TypeError, match="stage-wise"):
        build_fusion_encoder(vit)


def test_finetune_selection() -> None:
    from stainshift.methods.fusion import finetune_encoder, fusion_selected

    assert fusion_selected("sassl", {"fusion": ["sassl"]}) and not fusion_selected("simclr", {"fusion": ["sassl"]})
    assert fusion_selected("simclr", {"fusion": True}) and not fusion_selected("sassl", {})
    general = _general()
    assert finetune_encoder(general, "simclr", {"fusion": ["sassl"]}) is general
    fused = finetune_encoder(general, "sassl", {"fusion": ["sassl"], "fusion_init": "copy", "seed": 3})
    assert isinstance(fused, FusionEncoder) and fused.general is general


def test_fused_encoder_through_full_finetuning_and_head_file(tmp_path) -> None:  # noqa: ANN001
    """Full fine-tuning trains E_s + head only; the head payload rebuilds the fused model."""
    import numpy as np

    from stainshift.train.finetune import finetune_classifier, head_module, head_payload
    from stainshift.models import Classifier
    from test_data import make_stores

    stores = make_stores(tmp_path / "stores", n_slides=2, n_tiles=8)
    general = _general()
    frozen = {k: v.clone() for k, v in general.state_dict().items()}
    enc = build_fusion_encoder(general, init="random", seed=0)
    model, rows = finetune_classifier(Classifier(enc, 2), stores, [],
                                      {"epochs": 1, "batch_size": 8, "lr": 1e-3, "views": {"p": 0.0}},
                                      torch.device("cpu"))
    assert isinstance(model.encoder, FusionEncoder) and len(rows) == 1
    for k, v in model.encoder.general.state_dict().items():
        assert torch.equal(v, frozen[k]), k  # E_g (weights and BN statistics) untouched
    loaded = head_module(head_payload(model, mode="full", num_classes=2))
    x = torch.rand(3, 3, 16, 16)
    with torch.no_grad():
        assert np.allclose(loaded(x).numpy(), model(x).numpy(), atol=1e-6)
