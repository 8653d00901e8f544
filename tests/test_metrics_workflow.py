"""The demo DAG end to end (tiny settings): evaluate / summarize / report outputs and the HTML report."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from workflow_helpers import make_workdir, run_snakemake

pytestmark = pytest.mark.slow

METHODS = ["baseline", "stain_embed"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    # the demo's own settings (not tiny.yaml): the stain-shift sanity check below is a property of the
    # demo users run; one tiny epoch on 32-px tiles learns too little for a drop to show
    work = make_workdir(tmp_path_factory.mktemp("demo_eval"), {
        "pretrain": {"methods": METHODS, "sources": ["each"]},
        # one normalized and one re-stained variant per test store: CI time
        "normalize": {"methods": ["reinhard"], "targets": {"k": 1}, "restain": {"strengths": [1.0]}},
        "evaluate": {"embedding_map": "pca"},
    }, tiny=False)
    run_snakemake(work, timeout=2400)
    run_snakemake(work, "--report", str(work / "report.html"), timeout=600)
    return work


def test_demo_tables_plots_and_report(demo):
    r = demo / "results"
    s = pd.read_csv(r / "metrics" / "summary.csv", dtype={"source": str, "test": str})
    assert {"method", "protocol", "source", "test", "metric", "value", "ci_low", "ci_high", "seen"} <= set(s.columns)
    assert set(s.method) == set(METHODS)
    for m in METHODS:
        for t in ("cross_center", "variants", "restain", "batch_effect", "learning"):
            assert (r / "metrics" / m / f"{t}.csv").stat().st_size > 200
        for f in ("cross_center_heatmap", "roc", "embedding_map"):
            assert (r / "plots" / m / f"{f}.png").is_file()
    # the synthetic centers carry a stain shift: a baseline trained on one center loses accuracy on
    # the centers it never saw, measurably, while it is accurate on its own center's test slide
    head = s[(s.method == "baseline") & (s.kind == "headline") & (s.metric == "balanced_accuracy")
             & (s.protocol == "probe")]
    drop, in_center = head[head.test == "drop"].iloc[0], head[head.test == "in_center"].iloc[0]
    assert drop.value > 0 and drop.ci_low > 0, drop
    assert in_center.value > 0.8, in_center
    # the stain-robustness curve: raw (s = 0) and the re-stained test tiles, an area per method
    curve = s[(s.kind == "restain") & (s.protocol == "probe") & (s.metric == "balanced_accuracy")]
    assert set(curve.test) == {"0", "1"} and set(curve.method) == set(METHODS)
    assert set(s[s.kind == "restain_area"].method) == set(METHODS)
    assert (r / "plots" / "restain_curve.png").is_file() and (r / "variants" / "a_test" / "restain" / "s1.zarr").is_dir()
    md = (r / "report" / "summary.md").read_text()
    assert "Closing note" in md and "`stain_embed`" in md.split("Closing note")[1]
    for section in ("## Per test center", "## Stain-robustness curve", "## What each number means"):
        assert section in md, section
    assert "normal " in md.split("## Chance level")[1]  # class names from the config
    assert "<table>" in (r / "report" / "summary.html").read_text()
    html = (demo / "report.html").read_text(errors="ignore")
    assert "cross_center_heatmap.png" in html or "heatmap" in html
