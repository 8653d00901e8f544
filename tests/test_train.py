"""The training loop: loss falls, resume after a kill reproduces the weights exactly, NaN stops."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

from stainshift.data import TileDataset
from stainshift.methods import Method, StepContext, register_method
from stainshift.models import build_encoder
from stainshift.train import (DidNotLearnError, NonFiniteLossError, fit, load, load_encoder, method_config,
                              package_digest, pretrain)
from test_data import make_stores

torch.set_num_threads(1)

TINY_RESNET = {"arch": "resnet18", "widths": [4, 4, 8, 8, 16], "small_input": True}


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    return make_stores(tmp_path_factory.mktemp("train_stores"), n_tiles=8)


def tiny_cfg(**extra: Any) -> dict[str, Any]:
    cfg = {"encoder": TINY_RESNET, "epochs": 3, "batch_size": 8, "image_size": 16, "optimizer": "adam",
           "lr": 1e-3, "seed": 0, "num_workers": 0, "device": "cpu", "grad_clip": 1.0}
    cfg.update(extra)
    return cfg


@pytest.mark.parametrize("method", ["simclr", "lmc"])
def test_resume_after_kill_reproduces_weights(stores: list[str], tmp_path: Path, method: str) -> None:
    cfg = method_config({"defaults": tiny_cfg(), method: {"proj_hidden": 16, "proj_dim": 16}}, method)
    if method == "lmc":
        cfg["encoder"] = {"arch": "vit_tiny", "patch": 8, "dim": 12, "depth": 1, "heads": 2}
        cfg["schedule"], cfg["warmup_epochs"] = "wsa", 1
    full = pretrain(method, stores, cfg, tmp_path / "full", progress=False)

    def kill(epoch: int, row: dict) -> None:
        if epoch == 0:
            raise KeyboardInterrupt("simulated kill after the first epoch's checkpoint")

    with pytest.raises(KeyboardInterrupt):
        pretrain(method, stores, cfg, tmp_path / "resumed", callbacks=[kill], progress=False)
    ck = load(tmp_path / "resumed" / "checkpoints" / "last.pt")
    assert ck["epoch"] == 0 and set(ck) >= {"optimizers", "schedulers", "rng", "sampler", "scaler", "method"}
    resumed = pretrain(method, stores, cfg, tmp_path / "resumed", progress=False)
    a, b = load(full)["state_dict"], load(resumed)["state_dict"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    m_full = pd.read_csv(tmp_path / "full" / "metrics.csv")
    m_res = pd.read_csv(tmp_path / "resumed" / "metrics.csv")
    assert len(m_res) == 3 and m_full["loss"].tolist() == m_res["loss"].tolist()


def test_changed_config_does_not_resume(stores: list[str], tmp_path: Path) -> None:
    cfg = method_config({"defaults": tiny_cfg(epochs=1, schedule="constant", warmup_epochs=0, lr_scale_batch=False)}, "simclr")
    pretrain("simclr", stores, cfg, tmp_path, progress=False)
    cfg2 = dict(cfg, epochs=2, lr=2e-3)
    pretrain("simclr", stores, cfg2, tmp_path, progress=False)
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    assert metrics["epoch"].tolist() == [1, 2] and metrics["lr_main"].tolist() == [2e-3, 2e-3]


def test_baseline_overfits_tiny_batch(stores: list[str], tmp_path: Path) -> None:
    cfg = method_config({"defaults": tiny_cfg(epochs=25, batch_size=8, lr=1e-2, views={"p": 0.0})}, "baseline")
    cfg["schedule"] = "constant"
    ds = TileDataset(stores[:1], labelled_only=True)  # 7 labelled tiles, one batch of 7
    cfg["batch_size"] = len(ds)
    torch.manual_seed(0)
    from stainshift.methods import build_method

    method = build_method("baseline", cfg, 2)
    hist = fit(method, ds, cfg, tmp_path, device=torch.device("cpu"), progress=False)
    assert hist[-1]["loss"] < 0.25 * hist[0]["loss"]
    assert hist[-1]["acc"] == 1.0


@register_method("_test_nan")
class _NaNMethod(Method):
    def __init__(self, cfg: dict, num_classes: int) -> None:
        super().__init__(cfg, num_classes)
        self.encoder = build_encoder(cfg["encoder"])

    def training_step(self, batch: dict, ctx: StepContext) -> dict:
        out = self.encoder(batch["image"].float()).mean()
        return {"loss": out * float("nan") if ctx.step >= 1 else out}


def test_non_finite_loss_stops_with_clear_message(stores: list[str], tmp_path: Path) -> None:
    cfg = dict(tiny_cfg(epochs=2), schedule="constant")
    with pytest.raises(NonFiniteLossError, match=r"_test_nan.*non-finite loss.*epoch 1, step 1"):
        pretrain("_test_nan", stores, cfg, tmp_path, progress=False)
    assert not (tmp_path / "encoder.pt").exists()


def test_encoder_file_round_trip(stores: list[str], tmp_path: Path) -> None:
    path = pretrain("simclr", stores, method_config({"defaults": tiny_cfg(epochs=1)}, "simclr"), tmp_path, progress=False)
    enc = load_encoder(path)
    payload = load(path)
    assert payload["method"] == "simclr" and payload["out_dim"] == enc.out_dim == 16
    x = torch.rand(2, 3, 16, 16)
    ref = build_encoder(payload["spec"])
    ref.load_state_dict(payload["state_dict"])
    assert torch.equal(enc(x), ref.eval()(x))


def test_method_config_layers() -> None:
    cfg = method_config({"defaults": {"epochs": 2, "encoder": {"arch": "resnet18", "width": 0.25}},
                         "lmc": {"encoder": {"arch": "vit_tiny", "depth": 2}, "batch_size": 4}}, "lmc")
    assert cfg["encoder"] == {"arch": "vit_tiny", "depth": 2}  # another arch replaces the spec
    assert cfg["optimizer"] == "adamw" and cfg["lambd"] == 0.005 and cfg["weight_decay"] == 0.01  # seed 003
    assert cfg["epochs"] == 2 and cfg["batch_size"] == 4
    simclr = method_config({}, "simclr")
    assert simclr["optimizer"] == "lars" and simclr["temperature"] == 0.1 and simclr["views"]["crop_scale"] == [0.15, 1.0]
    with pytest.raises(KeyError, match="unknown method 'nope'"):
        method_config({}, "nope")


def test_finished_run_drops_its_checkpoint_so_a_rerun_trains_afresh(stores: list[str], tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    # `snakemake --forcerun pretrain_run` re-runs a finished job: it must train again, not load the old run
    cfg = method_config({"defaults": tiny_cfg(epochs=1)}, "simclr")
    pretrain("simclr", stores, cfg, tmp_path, meta={"source": "c1", "seed": 0}, progress=False)
    assert not (tmp_path / "checkpoints" / "last.pt").exists()
    summary = json.loads((tmp_path / "train_summary.json").read_text())
    assert summary["source"] == "c1" and summary["epochs"] == 1 and summary["tiles"] == 24
    assert summary["images_seen"] == 24 and summary["train_stores"] == stores
    caplog.set_level(logging.INFO, logger="stainshift.train")
    pretrain("simclr", stores, cfg, tmp_path, progress=False)
    assert "resumed from" not in caplog.text


def test_package_digest_covers_every_module(tmp_path: Path) -> None:
    import shutil

    import stainshift

    pkg = tmp_path / "stainshift"
    shutil.copytree(Path(stainshift.__file__).parent, pkg, ignore=shutil.ignore_patterns("__pycache__"))
    before = package_digest(pkg)
    assert before == package_digest(pkg)
    for module in ("stain/macenko.py", "data.py", "store.py"):  # not the method's own module
        path = pkg / module
        path.write_text(path.read_text() + "\n# changed\n")
        after = package_digest(pkg)
        assert after != before, module
        before = after


@register_method("_test_flat")
class _FlatMethod(_NaNMethod):
    """Trains, but its learning_check says it did not learn."""

    def training_step(self, batch: dict, ctx: StepContext) -> dict:
        return {"loss": self.encoder(batch["image"].float()).mean() * 0.0 + 1.0}

    def learning_check(self, history: list[dict]) -> list[str]:
        return ["loss stayed at 1.0 (its chance level)"]


def test_did_not_learn_fails_or_is_flagged(stores: list[str], tmp_path: Path) -> None:
    cfg = dict(tiny_cfg(epochs=1), schedule="constant")
    with pytest.raises(DidNotLearnError, match=r"did not learn: loss stayed at 1.0.*on_no_learning: flag"):
        pretrain("_test_flat", stores, cfg, tmp_path / "fail", progress=False)
    assert not (tmp_path / "fail" / "encoder.pt").exists()
    pretrain("_test_flat", stores, cfg, tmp_path / "flag", on_no_learning="flag", progress=False)
    assert load(tmp_path / "flag" / "encoder.pt")["learning"]["status"] == "did_not_learn"
    summary = json.loads((tmp_path / "flag" / "train_summary.json").read_text())
    assert summary["learning"] == {"status": "did_not_learn", "reasons": ["loss stayed at 1.0 (its chance level)"]}


def test_pretraining_from_an_init_file_records_it_through_to_the_report(stores: list[str], tmp_path: Path) -> None:
    from stainshift.external import file_sha256
    from stainshift.metrics import pipeline as pl
    from stainshift.report import weights_files_text

    torch.manual_seed(3)
    start = build_encoder(TINY_RESNET)
    torch.save({"state_dict": start.state_dict()}, tmp_path / "start.pt")  # stainshift layout, nested like encoder.pt
    cfg = method_config({"defaults": tiny_cfg(epochs=1), "simclr": {"init": {"file": str(tmp_path / "start.pt")}}},
                        "simclr")
    seen: list[torch.Tensor] = []
    original = torch.nn.Module.load_state_dict

    def spy(self, state, *args, **kwargs):  # the weights the method's encoder is initialised with
        seen.append(state["stem.0.weight"].clone())
        return original(self, state, *args, **kwargs)

    torch.nn.Module.load_state_dict = spy
    try:
        pretrain("simclr", stores, cfg, tmp_path / "run", meta={"source": "c1", "seed": 0}, progress=False)
    finally:
        torch.nn.Module.load_state_dict = original
    assert seen and torch.equal(seen[0], start.state_dict()["stem.0.weight"])
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    sha = file_sha256(tmp_path / "start.pt")
    assert summary["init"] == {"file": str(tmp_path / "start.pt"), "sha256": sha}
    assert "init" not in load(tmp_path / "run" / "encoder.pt")["spec"]  # reloads without the file
    table = pl.learning_table([summary], "simclr")
    assert f"`simclr` (training started from): `state_dict {tmp_path / 'start.pt'} sha256 {sha}`" in weights_files_text(table)


def test_resume_across_a_thread_count_change_starts_afresh_and_says_why(stores: list[str], tmp_path: Path,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    # CPU float reductions depend on the thread count: a resumed run must not mix two of them
    cfg = method_config({"defaults": tiny_cfg(epochs=2)}, "simclr")

    def kill(epoch: int, row: dict) -> None:
        raise KeyboardInterrupt("simulated kill after the first epoch's checkpoint")

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        with pytest.raises(KeyboardInterrupt):
            pretrain("simclr", stores, cfg, tmp_path, callbacks=[kill], progress=False)
        assert load(tmp_path / "checkpoints" / "last.pt")["run_info"]["threads"] == 1
        torch.set_num_threads(2)
        caplog.set_level(logging.INFO, logger="stainshift.train")
        pretrain("simclr", stores, cfg, tmp_path, progress=False)
    finally:
        torch.set_num_threads(before)
    assert "threads 1 → 2: starting from scratch" in caplog.text and "resumed from" not in caplog.text


def test_checkpoint_write_error_names_the_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from stainshift.train import atomic_save

    (tmp_path / "last.pt").write_bytes(b"previous")

    def full_disk(obj, f, *a, **k):  # what torch raises on a full disk: no path in the message
        raise RuntimeError("basic_ios::clear: iostream error")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match=r"could not write .*last\.pt: basic_ios::clear: iostream error\. Check free space"):
        atomic_save({"x": 1}, tmp_path / "last.pt")
    assert (tmp_path / "last.pt").read_bytes() == b"previous" and list(tmp_path.iterdir()) == [tmp_path / "last.pt"]


@pytest.mark.parametrize("method", ["baseline", "stain_embed"])
def test_class_weight_balanced_weighs_the_ce_by_training_counts(stores: list[str], tmp_path: Path, method: str) -> None:
    """pretrain counts the training labels, the method weighs its CE by n / (C n_c), the summary says so."""
    extra = {"stain_methods": ["reinhard"]} if method == "stain_embed" else {}
    cfg = method_config({"defaults": tiny_cfg(epochs=1, class_weight="balanced"), method: extra}, method)
    pretrain(method, stores, cfg, tmp_path, progress=False)
    summary = json.loads((tmp_path / "train_summary.json").read_text())
    ds = TileDataset(stores, labelled_only=True)
    counts = torch.bincount(torch.as_tensor(ds.labels[ds.labels >= 0]), minlength=2).tolist()
    assert summary["class_counts"] == counts
    from stainshift.methods import build_method

    m = build_method(method, dict(cfg, image_size=16, class_counts=counts), 2)
    n = sum(counts)
    assert m.ce_weight.tolist() == pytest.approx([n / (2 * c) for c in counts])
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    assert metrics["ce_chance"].iloc[0] > 0  # the weighted chance level is logged


def test_class_weight_typo_fails_at_parse_time() -> None:
    from stainshift.train.config import check_pretrain_config
    from stainshift.validation import ConfigError

    with pytest.raises(ConfigError, match=r"pretrain.baseline.class_weight.*null or 'balanced'"):
        check_pretrain_config({"baseline": {"class_weight": "balance"}})


def test_min_steps_raises_the_epochs_of_a_small_source(stores: list[str], tmp_path: Path) -> None:
    """min_steps: 5 steps of one batch each → 5 epochs instead of 2; the summary records 5;
    a min_steps already met leaves the epochs alone; a wrong value is refused at parse time."""
    from stainshift.train.config import check_pretrain_config
    from stainshift.train.loop import effective_epochs
    from stainshift.validation import ConfigError

    assert effective_epochs({"epochs": 2, "min_steps": 5}, 1) == 5
    assert effective_epochs({"epochs": 2, "min_steps": 5}, 3) == 2
    assert effective_epochs({"epochs": 2, "min_steps": None}, 1) == 2
    cfg = method_config({"defaults": tiny_cfg(epochs=2, min_steps=5)}, "baseline")
    ds = TileDataset(stores[:1], labelled_only=True)
    cfg["batch_size"] = len(ds)  # one step per epoch
    pretrain("baseline", stores[:1], cfg, tmp_path, progress=False)
    assert pd.read_csv(tmp_path / "metrics.csv")["epoch"].tolist() == [1, 2, 3, 4, 5]
    assert json.loads((tmp_path / "train_summary.json").read_text())["epochs"] == 5
    with pytest.raises(ConfigError, match="pretrain.baseline.min_steps"):
        check_pretrain_config({"baseline": {"min_steps": 0}})
