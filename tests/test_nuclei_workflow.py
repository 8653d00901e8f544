"""Seed 004's stages in Snakemake (issue 14): `snakemake nuclei` on tiny synthetic fields, its tables and
figures, and the report section built from them."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from workflow_helpers import make_workdir, run_snakemake  # noqa: E402

TINY_NUCLEI = {
    "datasets": ["synthetic"],
    "synthetic": {"centers": ["center_a", "center_c"], "fields": {"train": 1, "test": 1}, "size": 160},
    "segmentation": {"normalizations": ["none", "macenko", "neural"], "epochs": 1, "patches": 8, "base_channels": 4,
                     "patch": 80, "batch_size": 4},
    "classes": {"iterations": 4, "batch_size": 16, "encoder": "random", "bootstrap": 20},
}
NUCLEI_RULES = ["nuclei_fields", "nuclei_stain_transfer", "nuclei_normalize", "nuclei_segment",
                "nuclei_segment_summary", "nuclei_crops", "nuclei_classes", "nuclei"]


@pytest.mark.slow
def test_nuclei_stage_end_to_end(tmp_path: Path) -> None:
    from stainshift.nuclei.report import nuclei_section
    from stainshift.store import PatchStore

    from stainshift.models import build_encoder
    from stainshift.train import save_encoder

    # the k-means feature baseline reads the baseline method's encoder.pt (made here: no pretraining)
    work = make_workdir(tmp_path / "wf", {"nuclei": {**TINY_NUCLEI, "classes": {**TINY_NUCLEI["classes"],
                                                                                 "encoder": "baseline"}},
                                          "pretrain": {"methods": ["baseline"], "sources": ["center_a"]}})
    encoder = work / "results" / "models" / "baseline" / "center_a" / "seed0" / "encoder.pt"
    encoder.parent.mkdir(parents=True)
    save_encoder(build_encoder("resnet18"), encoder)
    run_snakemake(work, "--allowed-rules", *NUCLEI_RULES, "--", "nuclei")
    out = work / "results" / "nuclei" / "synthetic"

    # every field under every normalization; the neural one differs from the raw fields
    from stainshift.nuclei.experiment import read_fields

    raw, neural = read_fields(out / "normalized" / "none.npz"), read_fields(out / "normalized" / "neural.npz")
    assert raw.train_center == "center_a" and sorted(set(raw.centers)) == ["center_a", "center_c"]
    assert neural.meta["normalization"] == "neural"
    assert not np.array_equal(raw.images[-1], neural.images[-1])

    seg = pd.read_csv(out / "segmentation.csv")
    dom = seg[seg["domain"].notna()]
    assert set(dom["normalization"]) == {"none", "macenko", "neural"}
    assert set(dom["model"]) == {"unet", "threshold"}
    assert set(dom["domain"]) == {"seen", "unseen"}
    for col in ("sensitivity", "specificity", "dice", "jaccard", "aji", "pq"):
        assert dom[col].between(0, 1).all(), col

    scores = pd.read_csv(out / "transfer_scores.csv")
    assert set(scores["method"]) == {"none", "macenko", "neural"}
    assert np.isfinite(scores[["l2", "hist_correlation", "hellinger"]].to_numpy()).all()

    crops = PatchStore.open(out / "crops" / "test.zarr")
    assert crops.patch_size == 40 and len(crops) > 5
    assert set(np.unique(crops.label)) <= {-1, 0, 1, 2}

    classes = pd.read_csv(out / "classes" / "scores.csv")
    assert set(classes["method"]) == {"infogan", "kmeans_pixels", "kmeans_features"}
    assert str(encoder.relative_to(work)) in classes.loc[classes["method"] == "kmeans_features", "encoder"].iloc[0]
    for png in ("transfer_montage.png", "segmentation.png", "classes/samples.png"):
        assert (out / png).stat().st_size > 1000, png

    for m in ("kmeans_pixels", "kmeans_features"):  # InfoGAN − baseline, paired bootstrap CI around it
        r = classes[classes["method"] == m].iloc[0]
        assert r["infogan_minus_acc_ci_low"] <= r["infogan_minus_acc"] <= r["infogan_minus_acc_ci_high"]
    md = nuclei_section({"synthetic": {"transfer": scores, "segmentation": seg, "classes": classes,
                                       "train_center": "center_a", "figure_dir": "../nuclei/synthetic"}})
    assert "stain transfer to center_a" in md and "U-Net" in md and "`infogan`" in md
    assert "Unseen-center Dice, `none`: U-Net" in md and "InfoGAN " in md and "`kmeans_pixels` (" in md
    assert "](../nuclei/synthetic/segmentation.png)" in md and "](../nuclei/synthetic/classes/samples.png)" in md


def test_nuclei_config_errors_name_the_key(tmp_path: Path) -> None:
    work = make_workdir(tmp_path / "wf", {"nuclei": {**TINY_NUCLEI, "synthetic": {"centers": ["center_q"]}}})
    proc = run_snakemake(work, "-n", "nuclei", check=False)
    assert proc.returncode != 0
    assert "nuclei.synthetic.centers" in proc.stderr + proc.stdout
    work = make_workdir(tmp_path / "wf2", {"nuclei": {**TINY_NUCLEI, "classes": {"encoder": "nonesuch"}}})
    proc = run_snakemake(work, "-n", "nuclei", check=False)
    assert "nuclei.classes.encoder" in proc.stderr + proc.stdout
