"""stainshift.report: summary.md from a summary table; verdicts follow the CIs."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from stainshift import report
from stainshift.metrics import pipeline as pl
from test_metrics_pipeline import SOURCE_DICTS, read_method, synthetic_runs


def _row(method, metric, value, lo, hi, kind, test="drop", source="each", protocol="probe", p=np.nan):
    return pl.row(method=method, protocol=protocol, source=source, test=test, metric=metric, value=value, ci_low=lo,
                  ci_high=hi, p_value=p, n=10, n_seeds=3, kind=kind, unit="a:patient")


def test_ci_verdict_distinguishes_both_sides_of_zero():
    assert report.ci_verdict(0.01, 0.2) == "above"
    assert report.ci_verdict(-0.2, -0.01) == "below"
    assert report.ci_verdict(-0.1, 0.1) == report.ci_verdict(0.0, 0.1) == "includes"
    assert report.ci_verdict(np.nan, 0.1) == "unknown"


@pytest.mark.parametrize("lo, hi, says", [(0.1, 0.3, "measurably above zero"), (-0.3, -0.1, "below zero"),
                                           (-0.1, 0.2, "includes zero")])
def test_reference_drop_verdict(lo, hi, says):
    s = pl.frame([_row("baseline", "balanced_accuracy", (lo + hi) / 2, lo, hi, "headline")])
    note = report.closing_note(s)
    assert says in note
    if says != "includes zero":
        assert "includes zero" not in note


def test_closing_note_classifies_methods_by_ci():
    s = pl.frame([
        _row("baseline", "balanced_accuracy", 0.20, 0.15, 0.25, "headline"),
        _row("good", "delta_unseen_balanced_accuracy", 0.10, 0.05, 0.15, "paired", test="vs_baseline", p=0.01),
        _row("good", "delta_drop_balanced_accuracy", -0.15, -0.2, -0.1, "paired", test="vs_baseline"),
        _row("meh", "delta_unseen_balanced_accuracy", 0.01, -0.03, 0.05, "paired", test="vs_baseline", p=0.6),
        _row("bad", "delta_unseen_balanced_accuracy", -0.1, -0.15, -0.05, "paired", test="vs_baseline", p=0.0),
    ])
    parts = {p.split(":")[0]: p for p in report.closing_note(s).split("\n\n")}
    higher = parts["Higher unseen-center balanced accuracy than `baseline` (95 % CI of Δ excludes 0)"]
    assert "`good`" in higher and "10.0 [5.0, 15.0]" in higher and "smaller drop" in higher
    assert "`meh`" in parts["Unseen-center balanced accuracy not distinguishable from `baseline` (95 % CI of Δ includes 0)"]
    lower = parts["Lower unseen-center balanced accuracy than `baseline` (95 % CI of Δ excludes 0)"]
    assert "`bad`" in lower and "resolution" in lower


@pytest.fixture(scope="module")
def summary(tmp_path_factory) -> pd.DataFrame:
    root = synthetic_runs(tmp_path_factory.mktemp("report_run"))
    cfg = pl.EvalConfig(bootstrap=20)
    preds = {m: read_method(root, m) for m in ("baseline", "robust")}
    tables = [pl.cross_center(p, m, cfg, SOURCE_DICTS) for m, p in preds.items()]
    tables += [pl.learning_table([pl.read_train_summary(x) for x in sorted((root / "models" / m).rglob("*.json"))],
                                 m, SOURCE_DICTS) for m in preds]
    tables.append(pl.compare_methods(preds, cfg, SOURCE_DICTS))
    path = tmp_path_factory.mktemp("report") / "summary.csv"
    pl.write_csv_atomic(pd.concat(tables, ignore_index=True), path)
    return pl.read_table(path)  # as the report rule reads it


def test_summary_markdown_end_to_end(summary, tmp_path):
    out = report.write_summary_markdown(summary, tmp_path / "report" / "summary.md", figures=["../plots/x.png"])
    text = out.read_text()
    assert text.startswith("# stainshift") and "**2 replicate training seed(s)**" in text
    probe = text.split("## Headline — probe")[1].split("## ")[0]
    assert "| `baseline` |" in probe and "| `robust` |" in probe and "**did not learn** (1/12 runs)" in probe
    native = text.split("## Headline — native")[1].split("## ")[0]
    assert "`robust` (native = probe)" in native
    chance = text.split("## Chance level")[1].split("## ")[0]
    assert "| cc | 30 | class 0 50 % · class 1 50 % | 50.0 | 50.0 | 50.0 | slide |" in chance and "| cb | 60 |" in chance
    assert "*seen* " in text and "loco-ca→cb" in text  # loco sources see the other centers: said
    loco = text.split("## Leave-one-center-out")[1].split("## Training")[0]
    assert "| method \\ held-out center | ca | cb | cc | mean |" in loco
    note = text.split("## Closing note")[1]
    assert "measurably above zero" in note and "`robust`" in note and "did not learn in 1 of 12 runs" in note
    assert "../plots/x.png" in text
    named = report.summary_markdown(summary, class_names=["normal", "atypical"])
    assert "| cc | 30 | normal 50 % · atypical 50 % |" in named  # class names from the config


def test_seen_note_for_the_default_protocol():
    cells = pl.frame([pl.row(method="m", protocol="probe", source=s, test=t, metric="accuracy", value=0.5,
                             kind="cell", seen=(s == t)) for s in ("a", "b") for t in ("a", "b")])
    assert "never another one" in report.seen_note(cells)


def test_report_names_test_only_centers_flags_heads_and_shows_the_restain_curve(tmp_path):
    root = synthetic_runs(tmp_path / "runs")
    cfg = pl.EvalConfig(bootstrap=20)
    preds = read_method(root, "robust")
    preds = preds[(preds["source_kind"] == "center") & (preds["source"] != "cc")]  # nobody trains on cc
    const = (preds["source"] == "ca") & (preds["test"] == "cb")
    preds.loc[const, "pred"], preds.loc[const, "p1"], preds.loc[const, "p0"] = 0, 0.1, 0.9  # a constant head
    restained = preds[pl.is_raw(preds)].assign(variant_method="restain", variant_target="s1")
    preds = pd.concat([preds, restained], ignore_index=True)
    summary = pd.concat([pl.cross_center(preds, "robust", cfg), pl.restain_curve(preds, "robust", cfg)],
                        ignore_index=True)
    text = report.summary_markdown(summary, reference="robust")
    per_test = text.split("## Per test center")[1].split("\n## ")[0]
    assert "| **cc** (test-only) | none (no training data) |" in per_test and "| ca | ca |" in per_test
    flagged = text.split("## Flagged heads")[1].split("\n## ")[0]
    assert "| `robust` | probe | ca | cb | near-constant | 100 % of tiles predicted class 0 |" in flagged
    assert "⚠ near-constant" in text.split("### `robust` — probe")[1].split("\n### ")[0]
    assert "⚠ 1 flagged cell(s)" in text.split("## Headline — probe")[1].split("\n## ")[0]
    curve = text.split("## Stain-robustness curve")[1].split("\n## ")[0]
    assert "| method | s = 0 (raw) | s = 1 [0.5, 2] | area |" in curve
    assert "On the test-only center `cc`" in text.split("## Closing note")[1]
    assert "**balanced accuracy**:" in text.split("## What each number means")[1]


def test_summary_html_renders_the_tables(summary, tmp_path):
    text = report.summary_markdown(summary)
    page = report.write_summary_html(text, tmp_path / "summary.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<table>" in page and "<h2>Headline — probe" in page
    assert page.count("<table>") == text.count("\n|---") and "| method |" not in page
