"""End-to-end (slow): the tiny demo DAG up to predictions under the cross-center protocol.

Every run's encoder, heads and model selection read only the stores of its source's centers; the
predictions say which centers each model saw; a forced re-run of a finished pretraining job
trains from scratch.
"""
from __future__ import annotations

from pathlib import Path

import h5py
import pandas as pd
import pytest
import torch

from stainshift.embeddings import read_predictions
from stainshift.store import PatchStore
from workflow_helpers import make_workdir, run_snakemake

pytestmark = pytest.mark.slow

CENTERS = ["center_a", "center_b", "center_c"]
# one single-center source and every leave-one-center-out source (4 runs: CI time)
SOURCES = {"center_a": {"center_a"},
           "loco-center_a": {"center_b", "center_c"}, "loco-center_b": {"center_a", "center_c"},
           "loco-center_c": {"center_a", "center_b"}}


def _centers_of(stores: list[str], work: Path) -> set[str]:
    return {PatchStore.open(work / s if not Path(s).is_absolute() else s).attrs["center"] for s in stores}


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    work = make_workdir(tmp_path_factory.mktemp("train_wf"), {
        "pretrain": {"methods": ["baseline"], "sources": ["center_a", "loco"]},
        "normalize": {"methods": ["reinhard"], "targets": {"k": 1}},
    })
    run_snakemake(work, "predict")  # every run's heads, then every test store scored (rule predict_store)
    return work


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_models_of_a_source_never_read_another_centers_store(work: Path, source: str) -> None:
    allowed = SOURCES[source]
    run = work / "results" / "models" / "baseline" / source / "seed0"
    enc = torch.load(run / "encoder.pt", weights_only=True)
    assert _centers_of(enc["train_stores"], work) == allowed
    assert enc["meta"]["source"] == source and enc["meta"]["centers"] == "+".join(sorted(allowed))
    heads = torch.load(run / "heads.pt", weights_only=True)
    assert set(heads) == {"probe", "native"} and heads["native"]["downstream"] == "end_to_end"
    for protocol, payload in heads.items():
        assert _centers_of(payload["train_stores"] + payload["val_stores"], work) == allowed, protocol
        assert payload["head_centers"] == "+".join(sorted(allowed))
    # the embeddings a probe may learn from (the run's embed_run) are the source's own train/val stores only
    manifest = pd.read_csv(work / "results" / "embeddings" / "baseline" / source / "seed0" / "manifest.csv", dtype=str)
    assert set(manifest["split"]) <= {"train", "val"} and set(manifest["center"]) == allowed
    with h5py.File(work / manifest["path"].iloc[0]) as fh:
        assert fh.attrs["source"] == source and fh["features"].shape[0] == len(fh["label"])
    # every test store is embedded and scored by its own predict_store job, for every run of the method
    by_store = sorted((work / "results" / "embeddings" / "baseline" / "by_store").glob("*.csv"))
    tests = pd.concat([pd.read_csv(p, dtype=str) for p in by_store], ignore_index=True)
    tests = tests[tests["run_source"] == source]
    assert set(tests["split"]) == {"test"} and set(tests["center"]) == set(CENTERS)  # every center is scored
    with h5py.File(work / tests["path"].iloc[0]) as fh:
        assert fh.attrs["source"] == source and fh.attrs["split"] == "test"
    preds = pd.concat([read_predictions(work / "results" / "predictions" / "baseline" / f"{p.stem}.csv")
                       for p in by_store], ignore_index=True)
    assert set(preds["source"]) == set(SOURCES)
    preds = preds[preds["source"] == source]
    assert set(preds["protocol"]) == {"probe", "native"} and set(preds["split"]) == {"test"}
    assert set(preds["encoder_centers"]) == set(preds["head_centers"]) == {"+".join(sorted(allowed))}
    assert set(preds["test"]) == set(CENTERS)
    assert (preds[["p0", "p1"]].sum(axis=1) - 1).abs().max() < 1e-4
    assert preds["threshold"].between(0, 1).all()
    per_variant = preds.groupby(["protocol", "variant_method", "variant_target"]).size()
    assert per_variant.nunique() == 1  # the same tiles on every variant and protocol


def test_forced_rerun_of_a_finished_pretraining_trains_from_scratch(work: Path) -> None:
    run = work / "results" / "models" / "baseline" / "center_a" / "seed0"
    assert not (run / "checkpoints" / "last.pt").exists()
    before = pd.read_csv(run / "metrics.csv")
    run_snakemake(work, str(run.relative_to(work) / "encoder.pt"), "--forcerun", "pretrain_run")
    log = (work / "results" / "logs" / "pretrain" / "baseline" / "center_a" / "seed0.log").read_text()
    assert "resumed from" not in log and "epoch 1/1" in log
    assert pd.read_csv(run / "metrics.csv")["loss"].tolist() == before["loss"].tolist()  # same seed, same run
