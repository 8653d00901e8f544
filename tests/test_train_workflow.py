"""End-to-end (slow): the tiny demo DAG up to predictions for simclr, then a killed + re-run pretrain
job resumes from its checkpoint inside the workflow."""
from __future__ import annotations

from pathlib import Path

import h5py
import pandas as pd
import pytest

from stainshift.embeddings import read_predictions
from workflow_helpers import make_workdir, run_snakemake

pytestmark = pytest.mark.slow


def test_tiny_workflow_pretrain_embed_finetune_predict(tmp_path: Path) -> None:
    work = make_workdir(tmp_path, {"pretrain": {"methods": ["simclr"]}})
    run_snakemake(work, "results/predictions/simclr.csv")
    res = work / "results"
    assert (res / "models/simclr/encoder.pt").is_file()
    metrics = pd.read_csv(res / "models/simclr/metrics.csv")
    assert len(metrics) == 1 and metrics["loss"].notna().all()
    manifest = pd.read_csv(res / "embeddings/simclr/manifest.csv", dtype=str)
    assert set(manifest["variant_method"]) >= {"raw", "reinhard", "macenko", "vahadane"}
    with h5py.File(work / manifest["path"].iloc[0]) as fh:  # paths are relative to the working directory
        assert fh["features"].shape[0] == len(fh["label"]) == len(fh["coords"]) == len(fh["index"])
        assert fh.attrs["method"] == "simclr"
    heads = sorted(p.parent.name for p in (res / "models/simclr").glob("*/head.pt"))
    assert heads == ["all", "center_a", "center_b", "center_c"]
    preds = read_predictions(res / "predictions/simclr.csv")
    assert set(preds["train"]) == set(heads) and set(preds["split"]) == {"test"}
    assert set(preds["test"]) == {"center_a", "center_b", "center_c"}
    assert (preds[["p0", "p1"]].sum(axis=1) - 1).abs().max() < 1e-4
    # the same tiles are predicted on every variant
    per_variant = preds.groupby(["variant_method", "variant_target"]).size()
    assert per_variant.nunique() == 1
    # a finished pretrain job re-run (e.g. after a code change) with the same inputs resumes its
    # checkpoint: no epoch is trained again, metrics.csv is rewritten from the checkpoint
    run_snakemake(work, "results/models/simclr/encoder.pt", "--forcerun", "pretrain")
    log = (res / "logs/pretrain/simclr.log").read_text()
    assert "resumed from" in log and "epoch 1 of 1 done" in log
    assert pd.read_csv(res / "models/simclr/metrics.csv")["loss"].tolist() == metrics["loss"].tolist()
