"""The whole pipeline on the real mitosis crops (config/examples/mitosis.yaml, tiny settings):
train on each scanner/cohort domain, test on the others. Skipped when ../shared/data is absent."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from workflow_helpers import REPO, make_workdir, run_snakemake

pytestmark = [pytest.mark.slow, pytest.mark.realdata]

DOMAINS = {"midog21_hamamatsu_xr", "midog21_hamamatsu_s360", "tupac16", "tcga_brca"}
METHODS = ["baseline", "simclr"]


def mitosis_overrides(shared_data: Path) -> dict:
    """config/examples/mitosis.yaml with the crop folders pointed at ``shared_data`` and CI-sized
    training (2 methods, 1 epoch, 32 px, 2 normalization targets)."""
    cfg = yaml.safe_load((REPO / "config" / "examples" / "mitosis.yaml").read_text())
    cfg = copy.deepcopy(cfg)
    for entry in cfg["crops"]:
        entry["folder"] = str(shared_data / Path(entry["folder"]).name)
        entry["patch_size"] = 32
    cfg["results"] = "results"
    cfg["pretrain"] = {"methods": METHODS, "defaults": {"epochs": 1, "batch_size": 32}}
    cfg["normalize"] = {"methods": ["reinhard", "macenko"], "targets": {"mode": "random", "k": 2, "split": "test", "seed": 0}}
    cfg["finetune"]["epochs"] = 10
    cfg["evaluate"].update({"bootstrap": 30, "embedding_map": "pca", "w2_max_samples": 100})
    return cfg


@pytest.fixture(scope="module")
def mitosis_run(shared_data, tmp_path_factory) -> Path:
    work = make_workdir(tmp_path_factory.mktemp("mitosis"), mitosis_overrides(shared_data))
    run_snakemake(work, timeout=2400)
    run_snakemake(work, "--report", str(work / "report.html"), timeout=600)
    return work


def test_cross_center_tables_cover_every_domain_pair(mitosis_run):
    s = pd.read_csv(mitosis_run / "results" / "metrics" / "summary.csv", dtype={"train": str, "test": str})
    assert set(s["method"]) == set(METHODS)
    for m in METHODS:
        cells = s[(s.method == m) & s.kind.isin(["cell", "in_center"]) & (s.metric == "accuracy")]
        assert set(cells["test"]) == DOMAINS
        assert set(cells["train"]) == DOMAINS | {"all"}
        assert len(cells) == 5 * 4
        assert cells["value"].between(0, 1).all()
        # crops of a real scanner: every cell has an interval around its value
        assert (cells["ci_low"] <= cells["value"] + 1e-9).all() and (cells["value"] <= cells["ci_high"] + 1e-9).all()
        head = s[(s.method == m) & (s.kind == "mean_off_diagonal") & (s.metric == "auc")]
        assert set(head["train"]) == DOMAINS
        # slide bootstrap where the domain has slides (ami_br), crops where it has none (atnorm_br)
        units = set(s[(s.method == m) & (s.kind == "cell")]["unit"])
        assert units <= {"slide", "tile"} and units
    w2 = s[(s.kind == "w2") & (s.test == "mean_pairs") & (s.metric == "w2_gaussian")]
    assert len(w2) == len(METHODS) and (w2["value"] > 0).all()
    assert (s[s.metric == "ri_support"]["value"] > 0).all()
    paired = s[(s.kind == "paired") & (s.metric == "delta_cross_center_drop")]
    assert list(paired["method"]) == ["simclr"] and np.isfinite(paired["value"]).all()


def test_figures_report_and_summary(mitosis_run):
    r = mitosis_run / "results"
    for m in METHODS:
        for f in ("cross_center_heatmap", "roc", "embedding_map"):
            assert (r / "plots" / m / f"{f}.png").stat().st_size > 5000
    assert (r / "plots" / "variant_accuracy.png").is_file()
    md = (r / "report" / "summary.md").read_text()
    assert "Closing note" in md and "tcga_brca" in md and "midog21_hamamatsu_xr" in md
    html = (mitosis_run / "report.html")
    assert html.is_file() and html.stat().st_size > 10_000
