"""stainshift.report: summary.md from a summary table; the closing note follows the paired CIs."""
from __future__ import annotations

import numpy as np
import pandas as pd

from stainshift import report
from stainshift.embeddings import read_predictions
from stainshift.metrics import pipeline as pl
from test_metrics_pipeline import synthetic_run


def _row(method, metric, value, lo, hi, kind, test="mean", train="each"):
    return dict(method=method, train=train, test=test, metric=metric, value=value, ci_low=lo, ci_high=hi, n=10,
                kind=kind, unit="slide")


def test_closing_note_classifies_methods_by_ci():
    s = pd.DataFrame([
        _row("baseline", "cross_center_drop", 0.20, 0.15, 0.25, "headline"),
        _row("good", "cross_center_drop", 0.05, 0.0, 0.1, "headline"),
        _row("good", "delta_cross_center_drop", -0.15, -0.2, -0.1, "paired", test="vs_baseline"),
        _row("meh", "cross_center_drop", 0.19, 0.1, 0.25, "headline"),
        _row("meh", "delta_cross_center_drop", -0.01, -0.05, 0.03, "paired", test="vs_baseline"),
        _row("bad", "cross_center_drop", 0.3, 0.25, 0.35, "headline"),
        _row("bad", "delta_cross_center_drop", 0.1, 0.05, 0.15, "paired", test="vs_baseline"),
    ])
    note = report.closing_note(s)
    assert "measurably above zero" in note
    reduce, rest = note.split("Do not measurably reduce")
    assert "`good`" in reduce and "`meh`" not in reduce
    assert "`meh`" in rest.split("Increase")[0] and "`bad`" in rest.split("Increase")[1]
    assert "-15.0 [-20.0, -10.0]" in reduce  # Δ in accuracy points with its CI


def test_summary_markdown_end_to_end(tmp_path):
    root = synthetic_run(tmp_path / "run", n_slides=5, tiles=8)
    cfg = pl.EvalConfig(bootstrap=25, w2_max_samples=50)
    preds = {m: read_predictions(root / "predictions" / f"{m}.csv") for m in ("baseline", "robust")}
    tables = [pl.cross_center(p, m, cfg) for m, p in preds.items()] + [pl.variant_robustness(p, m, cfg) for m, p in preds.items()]
    summary = pd.concat(tables + [pl.compare_methods(preds, cfg)], ignore_index=True)
    out = report.write_summary_markdown(summary, tmp_path / "report" / "summary.md", figures=["../plots/x.png"])
    text = out.read_text()
    assert text.startswith("# stainshift")
    assert "| `baseline` |" in text and "### `robust`" in text
    assert "Reduce the cross-center drop" in text and "`robust`" in text.split("Reduce the cross-center drop")[1]
    assert "*" in text and "../plots/x.png" in text
    assert "n/a" in text  # no batch-effect rows in this summary: said, not invented
