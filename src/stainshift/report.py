"""The markdown summary of an evaluation run (``{R}/report/summary.md``).

Reads the tidy ``summary.csv`` (columns :data:`stainshift.metrics.pipeline.COLUMNS`) and writes,
per protocol (``probe``: the common linear probe; ``native``: each method's own seed downstream),
a headline table over the single-center sources (train on one center, score the centers it never
saw; seed 000 Table IV), the chance level and resampling unit per test center, the cross-center
table per method with seen cells marked, the leave-one-center-out table when ``loco`` sources
exist, which runs did not learn, and a closing note.

Every verdict follows a 95 % CI: an interval entirely above 0 is "above zero", entirely below 0
"below zero", and only an interval containing 0 "includes zero" (:func:`ci_verdict`).

Why one module of this size: ``summary.md`` is one document; its sections share the number
formatting and the CI verdict rules, which must not drift apart between sections.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from stainshift.atomic import write_text

PROTOCOL_TITLES = {"probe": "linear probe on the frozen encoder (every method)",
                   "native": "each method's own seed downstream"}
#: the headline metric: balanced accuracy, since pathology tasks are imbalanced (a head that always
#: predicts the majority class scores its share in accuracy, but 50 in balanced accuracy)
HEADLINE = "balanced_accuracy"
HEADLINE_METRICS = (("in_center", HEADLINE, "in-center bal. acc"), ("unseen", HEADLINE, "unseen bal. acc"),
                    ("unseen", "auc", "unseen AUC"), ("unseen", "accuracy", "unseen acc"),
                    ("drop", HEADLINE, "drop (bal. acc)"))


def ci_verdict(lo: float, hi: float) -> str:
    """``"above"`` when the interval lies entirely above 0, ``"below"`` entirely below 0,
    ``"includes"`` when it contains 0, ``"unknown"`` without a finite interval."""
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return "unknown"
    if lo > 0:
        return "above"
    if hi < 0:
        return "below"
    return "includes"


def _fmt(r: pd.Series | None, ci: bool = True, scale: float = 100.0) -> str:
    """``value [low, high]`` ×100 with one decimal; ``n/a`` when absent."""
    if r is None or not np.isfinite(r["value"]):
        return "n/a"
    txt = f"{r['value'] * scale:.1f}"
    if ci and np.isfinite(r["ci_low"]) and np.isfinite(r["ci_high"]):
        txt += f" [{r['ci_low'] * scale:.1f}, {r['ci_high'] * scale:.1f}]"
    return txt


def _get(df: pd.DataFrame, **kw) -> pd.Series | None:
    m = np.ones(len(df), dtype=bool)
    for k, v in kw.items():
        m &= (df[k].astype(str) == str(v)).to_numpy()
    sub = df[m]
    return None if sub.empty else sub.iloc[0]


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def _is_true(v: object) -> bool:
    return str(v).strip().lower() in ("true", "1", "1.0")


def protocol_rows(summary: pd.DataFrame, method: str, protocol: str) -> tuple[pd.DataFrame, bool]:
    """The method's rows of ``protocol``; for ``native`` without any, its probe rows and True
    ("native = probe": the seed's downstream is the frozen-feature probe)."""
    rows = summary[(summary["method"] == method) & (summary["protocol"] == protocol)]
    if protocol == "native" and not (rows["kind"] == "cell").any():
        return summary[(summary["method"] == method) & (summary["protocol"] == "probe")], True
    return rows, False


def learning_flags(summary: pd.DataFrame) -> dict[str, tuple[int, int, list[str]]]:
    """Per method: (runs flagged "did not learn", runs, distinct reasons)."""
    flags = summary[(summary["kind"] == "learning") & (summary["metric"] == "did_not_learn")]
    out = {}
    for method, sub in flags.groupby("method", sort=False):
        bad = sub[sub["value"] > 0]
        reasons = list(dict.fromkeys(f"{r.source}/seed {r.seed}: {r.note}" for r in bad.itertuples()))
        out[method] = (len(bad), len(sub), reasons)
    return out


def _methods(summary: pd.DataFrame) -> list[str]:
    return [m for m in dict.fromkeys(summary["method"]) if m]


def _n_seeds(summary: pd.DataFrame) -> int:
    cells = summary[summary["kind"] == "cell"]
    return int(cells["n_seeds"].max()) if len(cells) else 0


def headline_table(summary: pd.DataFrame, protocol: str, reference: str) -> str:
    """One row per method: in-center / unseen balanced accuracy, unseen AUC and accuracy, the drop,
    Δ vs the reference (unseen balanced accuracy, drop), learning flag."""
    flags = learning_flags(summary)
    external = set(summary.loc[(summary["kind"] == "learning") & (summary["metric"] == "external"), "method"])
    rows = []
    for m in _methods(summary):
        sub, same = protocol_rows(summary, m, protocol)
        head = sub[sub["kind"] == "headline"]
        if head.empty:
            continue
        cells = [f"`{m}`" + (" (native = probe)" if same else "")]
        cells += [_fmt(_get(head, test=t, metric=k)) for t, k, _ in HEADLINE_METRICS]
        if (summary["kind"] == "restain_area").any():
            cells.append(_fmt(_get(sub, kind="restain_area", metric=HEADLINE)))
        for metric in (f"delta_unseen_{HEADLINE}", f"delta_drop_{HEADLINE}"):
            d = _get(summary, method=m, protocol=protocol, kind="paired", source="each", metric=metric)
            cells.append("reference" if m == reference else _fmt(d))
        bad, n, _ = flags.get(m, (0, 0, []))
        state = (f"**did not learn** ({bad}/{n} runs)" if bad else
                 ("external (not trained)" if m in external else "ok" if n else "n/a"))
        odd = degenerate_cells(summary[(summary["method"] == m) | (summary["kind"] == "chance")],
                               "probe" if same else protocol)
        if len(odd):
            state += f"; ⚠ {len(odd.drop_duplicates(['source', 'test']))} flagged cell(s)"
        cells.append(state)
        rows.append(cells)
    if not rows:
        return "_No single-center sources in this run: no headline (see the leave-one-center-out table)._"
    header = ["method"] + [h for _, _, h in HEADLINE_METRICS] + [f"Δ unseen bal. acc vs {reference}",
                                                                   f"Δ drop vs {reference}", "learning"]
    if (summary["kind"] == "restain_area").any():
        header.insert(len(HEADLINE_METRICS) + 1, "stain robustness (area, bal. acc)")
    return _md_table(header, rows)


def degenerate_cells(summary: pd.DataFrame, protocol: str, class_names: Sequence[str] | None = None) -> pd.DataFrame:
    """Cells (method, source, test center) whose head predicts one class for ≥ 95 % of the tiles
    (``near-constant``) or whose balanced-accuracy CI lies entirely below chance (``below chance``):
    columns method, source, test, flag, text."""
    from stainshift.metrics.pipeline import NEAR_CONSTANT_SHARE

    out = []
    share = summary[(summary["kind"] == "prediction_share") & (summary["protocol"] == protocol)]
    for r in share[share["value"] >= NEAR_CONSTANT_SHARE].itertuples():
        k = str(r.note).removeprefix("class ")
        name = class_name(int(k), class_names) if k.isdigit() else str(r.note)
        out.append((r.method, r.source, r.test, "near-constant", f"{r.value * 100:.0f} % of tiles predicted {name}"))
    chance = summary[(summary["kind"] == "chance") & (summary["metric"] == HEADLINE)].groupby("test")["value"].first()
    cells = summary[(summary["kind"] == "cell") & (summary["protocol"] == protocol) & (summary["metric"] == HEADLINE)]
    for r in cells.itertuples():
        level = chance.get(r.test, np.nan)
        if np.isfinite(r.ci_high) and np.isfinite(level) and r.ci_high < level:
            out.append((r.method, r.source, r.test, "below chance",
                        f"balanced accuracy {r.value * 100:.1f} [{r.ci_low * 100:.1f}, {r.ci_high * 100:.1f}] < chance {level * 100:.1f}"))
    return pd.DataFrame(out, columns=["method", "source", "test", "flag", "text"])


def test_center_table(summary: pd.DataFrame, protocol: str = "probe", metric: str = HEADLINE) -> str:
    """Rows = test centers (test-only ones marked), columns = who saw the center in training, then per
    method the mean over the sources that never saw it (kind ``test_unseen``)."""
    per_test = summary[(summary["kind"] == "test_unseen") & (summary["protocol"] == protocol)
                       & (summary["metric"] == metric)]
    if per_test.empty:
        return ""
    cells = summary[(summary["kind"] == "cell") & (summary["protocol"] == protocol) & (summary["metric"] == metric)]
    methods = [m for m in _methods(summary) if (per_test["method"] == m).any()]
    rows = []
    for test in dict.fromkeys(cells["test"]):
        saw = sorted(set(cells[(cells["test"] == test) & cells["seen"].map(_is_true)]["source"]))
        only = per_test[per_test["test"] == test]["note"].astype(str).str.startswith("test-only").any()
        label = f"**{test}** (test-only)" if only else test
        rows.append([label, ", ".join(saw) if saw else "none (no training data)"]
                    + [_fmt(_get(per_test, method=m, test=test)) for m in methods])
    return _md_table(["test center", "trained on by sources"] + [f"`{m}`" for m in methods], rows)


def test_only_centers(summary: pd.DataFrame) -> list[str]:
    """Test centers no model trained on (every source's cell is unseen)."""
    rows = summary[(summary["kind"] == "test_unseen")]
    return list(dict.fromkeys(rows[rows["note"].astype(str).str.startswith("test-only")]["test"]))


GLOSSARY = (
    ("balanced accuracy", "mean recall over the classes; higher = better, 0–100, chance = 100/C whatever the class "
     "balance; 95 % hierarchical-bootstrap CI (seeds, then patients / slides / tiles per test center)"),
    ("accuracy", "share of tiles classified right; higher = better, 0–100, chance = the majority class's share (the "
     "chance table); same CI"),
    ("AUC", "area under the ROC curve (binary; one-vs-rest macro for more classes); higher = better, 50 = chance, "
     "100 = perfect ranking; same CI"),
    ("drop", "in-center − unseen-center balanced accuracy of the single-center sources; lower = better, 0 = no loss "
     "on centers never seen (can be negative); same CI"),
    ("Δ vs reference", "method − reference, paired by seed and resampled test units; CI and a bootstrap p-value"),
    ("stain robustness (area)", "mean unseen-center balanced accuracy over re-staining strengths 0–1 (trapezoid); "
     "higher = better, compare with the s = 0 value; same CI"),
    ("RI", "PathoROB robustness index SO/(SO+OS) of the raw test embeddings (croma): higher = organised by biology "
     "rather than by center, 50 = balanced; no CI (a point estimate per run, then mean)"),
    ("W2", "Gaussian Wasserstein-2 distance between two centers' embeddings (seed 003), mean over pairs; lower = "
     "smaller batch effect, 0 = identical distributions; in the units of the L2-normalized embedding; no CI"),
    ("near-constant head", "one class predicted for ≥ 95 % of a test center's tiles: its balanced accuracy sits at "
     "chance whatever its accuracy"),
)


def glossary_text() -> str:
    """The report's glossary as a markdown list."""
    return "\n".join(f"- **{term}**: {text}." for term, text in GLOSSARY)


def class_name(k: int, class_names: Sequence[str] | None = None) -> str:
    """The configured name of class ``k`` (``class k`` without names)."""
    return str(class_names[k]) if class_names and 0 <= k < len(class_names) else f"class {k}"


def chance_table(summary: pd.DataFrame, class_names: Sequence[str] | None = None) -> str:
    """Per test center: tiles, class balance, chance levels, and the bootstrap's resampling unit."""
    chance = summary[summary["kind"] == "chance"]
    shares = summary[summary["kind"] == "class_share"]
    cells = summary[summary["kind"] == "cell"]
    units = cells.groupby("test")["unit"].first().to_dict()
    rows = []
    for test in dict.fromkeys(chance["test"]):
        sub = chance[chance["test"] == test]
        mine = shares[shares["test"] == test].drop_duplicates("metric")
        balance = " · ".join(f"{class_name(int(str(r.metric).removeprefix('class_')), class_names)} {r.value * 100:.0f} %"
                             for r in mine.itertuples()) or "n/a"
        rows.append([test, str(int(sub["n"].iloc[0])), balance, _fmt(_get(sub, metric="accuracy"), ci=False),
                     _fmt(_get(sub, metric="balanced_accuracy"), ci=False), _fmt(_get(sub, metric="auc"), ci=False),
                     units.get(test, "n/a")])
    return _md_table(["test center", "test tiles", "class balance", "chance acc (majority class)", "chance bal. acc",
                      "chance AUC", "CI resampling unit"], rows)


def cross_center_table(summary: pd.DataFrame, method: str, protocol: str, metric: str = "balanced_accuracy") -> str:
    """Rows = sources, columns = test centers, then the source's unseen mean; seen cells *seen*."""
    sub, _ = protocol_rows(summary, method, protocol)
    cells = sub[(sub["kind"] == "cell") & (sub["metric"] == metric)]
    if cells.empty:
        return ""
    flags = degenerate_cells(summary[summary["method"].isin([method, ""]) | (summary["kind"] == "chance")],
                             str(cells["protocol"].iloc[0]))
    tests = list(dict.fromkeys(cells["test"]))
    body = []
    for src in dict.fromkeys(cells["source"]):
        r = [f"**{src}**"]
        for t in tests:
            c = _get(cells, source=src, test=t)
            v = _fmt(c) if c is not None else ""
            f = flags[(flags["source"] == src) & (flags["test"] == t)]["flag"]
            v += "".join(f" ⚠ {x}" for x in dict.fromkeys(f))
            r.append(f"*seen* {v}" if c is not None and _is_true(c["seen"]) else v)
        r.append(_fmt(_get(sub, kind="unseen_mean", source=src, metric=metric)))
        body.append(r)
    return _md_table(["source \\ test"] + tests + ["mean unseen"], body)


def seen_note(summary: pd.DataFrame) -> str:
    """Which seen cells exist: a center's own test set (the diagonal) or others."""
    cells = summary[(summary["kind"] == "cell") & summary["seen"].map(_is_true)].drop_duplicates(["source", "test"])
    if cells.empty:
        return "No cell's test center was seen by its models."
    off = cells[cells["source"] != cells["test"]]
    if off.empty:
        return ("*seen* marks a cell whose test center trained the encoder or head: only a single-center "
                "source's own center (the diagonal), never another one — every off-diagonal cell is a "
                "center the models never saw.")
    pairs = ", ".join(f"{r.source}→{r.test}" for r in off.itertuples())
    return (f"*seen* marks a cell whose test center trained the encoder or head. Besides the diagonal, "
            f"these cells are seen (their source includes the test center): {pairs}. They are left out of "
            "every unseen mean.")


def loco_table(summary: pd.DataFrame, protocol: str, metric: str = "balanced_accuracy") -> str:
    """Rows = methods, columns = held-out centers + mean: each center scored by the models trained
    on every other center (WILDS / seed 003)."""
    rows, tests = [], []
    for m in _methods(summary):
        sub, same = protocol_rows(summary, m, protocol)
        loco = sub[(sub["kind"] == "loco") & (sub["metric"] == metric)]
        if loco.empty:
            continue
        tests = tests or list(dict.fromkeys(loco["test"]))
        rows.append([f"`{m}`" + (" (native = probe)" if same else "")]
                    + [_fmt(_get(loco, test=t)) for t in tests]
                    + [_fmt(_get(sub, kind="loco_mean", metric=metric))])
    if not rows:
        return ""
    return _md_table(["method \\ held-out center"] + tests + ["mean"], rows)


def closing_note(summary: pd.DataFrame, reference: str = "baseline", protocol: str = "probe") -> str:
    """Verdicts with 95 % CIs for one protocol: the reference's drop, each method's Δ unseen-center
    balanced accuracy and Δ drop vs the reference, unseen balanced accuracy vs chance, and which methods
    did not learn (whose comparisons measure nothing)."""
    lines = []
    ref_rows, _ = protocol_rows(summary, reference, protocol)
    drop = _get(ref_rows, kind="headline", test="drop", metric=HEADLINE)
    if drop is not None:
        verdict = ci_verdict(drop["ci_low"], drop["ci_high"])
        lines.append(
            f"`{reference}` ({protocol}) loses {_fmt(drop)} balanced-accuracy points between the center it was trained on "
            "and the centers it never saw (in-center − unseen, mean over single-center sources; 95 % CI). "
            + {"above": "The drop is measurably above zero.",
               "below": "Its CI lies below zero: it scores measurably higher on unseen centers than in-center.",
               "includes": "Its CI includes zero: this run shows no measurable cross-center drop for it.",
               "unknown": "No CI is available."}[verdict])
    groups: dict[str, list[str]] = {}
    for m in _methods(summary):
        if m == reference:
            continue
        du = _get(summary, method=m, protocol=protocol, kind="paired", source="each", metric=f"delta_unseen_{HEADLINE}")
        dd = _get(summary, method=m, protocol=protocol, kind="paired", source="each", metric=f"delta_drop_{HEADLINE}")
        if du is None:
            continue
        acc = {"above": "higher unseen-center balanced accuracy than", "below": "lower unseen-center balanced accuracy than",
               "includes": "unseen-center balanced accuracy not distinguishable from", "unknown": "no CI against"}
        key = ci_verdict(du["ci_low"], du["ci_high"])
        p = f"p = {du['p_value']:.2g}" if du["p_value"] > 0 else "p below the bootstrap's resolution 1/B"
        same = " (native = probe)" if f"{m}: native = probe" in str(du["note"]) else ""
        txt = f"`{m}`{same} (Δ unseen bal. acc {_fmt(du)}, {p}"
        if dd is not None:
            dv = ci_verdict(dd["ci_low"], dd["ci_high"])
            txt += f"; Δ drop {_fmt(dd)}: " + {"above": "larger drop", "below": "smaller drop",
                                                 "includes": "drop not distinguishable", "unknown": "no CI"}[dv]
        groups.setdefault(f"{acc[key]} `{reference}` (95 % CI of Δ {'includes' if key == 'includes' else 'excludes'} 0)",
                          []).append(txt + ")")
    for title, items in groups.items():
        lines.append(f"{title[0].upper()}{title[1:]}: " + "; ".join(items) + ".")
    above, near = [], []
    for m in _methods(summary):
        rows, _ = protocol_rows(summary, m, protocol)
        ba = _get(rows, kind="headline", test="unseen", metric="balanced_accuracy")
        if ba is not None and np.isfinite(ba["ci_low"]):
            (above if ba["ci_low"] > 0.5 else near).append(f"`{m}` {_fmt(ba)}")
    if above:
        lines.append("Unseen-center balanced accuracy above chance (CI lower bound > 50): " + "; ".join(above) + ".")
    if near:
        lines.append("Not measurably above chance on unseen centers (CI reaches 50 or below): " + "; ".join(near) + ".")
    for test in test_only_centers(summary):
        scores = []
        for m in _methods(summary):
            rows, _ = protocol_rows(summary, m, protocol)
            r = _get(rows, kind="test_unseen", test=test, metric=HEADLINE)
            if r is not None:
                scores.append(f"`{m}` {_fmt(r)}")
        if scores:
            lines.append(f"On the test-only center `{test}` (no model trained on it; chance "
                         f"{_fmt(_get(summary, kind='chance', test=test, metric=HEADLINE), ci=False)}), balanced accuracy: "
                         + "; ".join(scores) + ".")
    for m, (bad, n, reasons) in learning_flags(summary).items():
        if bad:
            lines.append(f"`{m}` did not learn in {bad} of {n} runs ({'; '.join(reasons)}): those runs enter its "
                         "means above but measure a model that did not learn; "
                         + ("none of its comparisons is meaningful." if bad == n else "read its numbers with that in mind."))
    if len(lines) <= 1 and drop is None:
        lines.append(f"No paired comparison available (the reference method `{reference}` is not in this run).")
    return "\n\n".join(lines)


def summary_markdown(summary: pd.DataFrame, reference: str = "baseline", figures: Sequence[str] = (),
                     class_names: Sequence[str] | None = None, nuclei: str = "") -> str:
    """The whole summary.md text from the long summary table (``nuclei``: the seed-004 section's markdown)."""
    methods = _methods(summary)
    protocols = [p for p in ("probe", "native") if (summary["protocol"] == p).any()]
    n_seeds = _n_seeds(summary)
    parts = [
        "# stainshift — cross-center evaluation summary", "",
        f"Every number is the mean over **{n_seeds} replicate training seed(s)** of each (method, source), "
        "×100, with a 95 % hierarchical-bootstrap CI in brackets that carries seed variance and test-set "
        "variance (seeds resampled, then patients — slides or tiles where a test center has too few — within "
        "each test center). Accuracy, balanced accuracy and AUC: higher = better; the headline is balanced "
        "accuracy (mean recall over classes: 50 = chance for two classes, whatever the class balance). *drop* = "
        "in-center − unseen-center balanced accuracy: lower = better, 0 = no loss on centers the model never saw. "
        f"Δ = method − `{reference}`, paired by seed and by resampled test units (Δ unseen bal. acc: higher = better; "
        "Δ drop: lower = better).", ""]
    for protocol in protocols:
        parts += [f"## Headline — {protocol}: {PROTOCOL_TITLES[protocol]}", "",
                  headline_table(summary, protocol, reference), "",
                  "*in-center*: a single-center source scored on its own center's test set (seen). *unseen*: the "
                  "same models on the centers they never saw, averaged per source, then over sources (seed 000 "
                  "Table IV). *learning*: whether every run trained (see Training).", ""]
    per_test = test_center_table(summary)
    if per_test:
        only = test_only_centers(summary)
        parts += ["## Per test center: scored only by models that never saw it (balanced accuracy, probe)", "",
                  per_test, "",
                  "Each test center's mean over the sources whose encoder and head never saw it (its *unseen* "
                  "score); *trained on by sources* names those that did (their cells are *seen* and left out). "
                  + (f"**Test-only** centers ({', '.join(only)}) have no training data anywhere: every model meets "
                     "them for the first time, so their column is the plainest answer to \"does it hold on a new "
                     "center?\" — they enter the unseen means, RI and W2 above and below like any other center, "
                     "and have no in-center value or drop." if only else
                     "Every test center here is also a training center of some source."), ""]
    flagged = pd.concat([degenerate_cells(summary, p, class_names).assign(protocol=p) for p in protocols],
                        ignore_index=True)
    if len(flagged):
        parts += ["## Flagged heads", "",
                  _md_table(["method", "protocol", "source", "test center", "flag", "why"],
                            [[f"`{r.method}`", r.protocol, r.source, r.test, r.flag, r.text] for r in flagged.itertuples()]),
                  "", "A near-constant head (one class for ≥ 95 % of a center's tiles) or one whose balanced accuracy CI "
                  "lies below chance has not learnt the task on that center: its accuracy there can look fine (the "
                  "majority class) and its predictions agree across stain variants trivially, so neither counts "
                  "for robustness.", ""]
    parts += ["## Chance level and resampling unit per test center", "", chance_table(summary, class_names), "",
              "An image-blind model scores the chance level: accuracy of always predicting the majority class, "
              "balanced accuracy 1/C, AUC 50. *CI resampling unit*: what the bootstrap redraws in that center.", ""]
    parts += ["## Cross-center tables (balanced accuracy)", "", seen_note(summary), ""]
    for m in methods:
        for protocol in protocols:
            sub, same = protocol_rows(summary, m, protocol)
            if same:
                parts += [f"### `{m}` — {protocol}", "", "native = probe (the seed's downstream is the linear probe above).", ""]
                continue
            table = cross_center_table(summary, m, protocol)
            if table:
                parts += [f"### `{m}` — {protocol}", "", table, ""]
    loco = [loco_table(summary, p) for p in protocols]
    if any(loco):
        parts += ["## Leave-one-center-out (balanced accuracy)", "",
                  "Each center scored by the models trained on every other center (WILDS / seed 003 setting).", ""]
        for protocol, table in zip(protocols, loco):
            if table:
                parts += [f"### {protocol}", "", table, ""]
    restain = restain_table(summary)
    if restain:
        parts += ["## Stain-robustness curve (unseen-center balanced accuracy, probe)", "", restain, "",
                  "The test tiles of every center re-stained in H&E space at strength *s*: each tile's own H and E "
                  "concentrations scaled by α, β drawn in [1 − s/2, 1 + s] (s = 1 is seed 003's augmentation range "
                  "[0.5, 2]; the same draws for every method), scored by each method's linear probe on the centers "
                  "its source never saw. *area*: the mean of the curve over s (trapezoid), higher = better; a "
                  "method whose area is close to its s = 0 value does not depend on the stain. Figure: "
                  "`plots/restain_curve.png` (accuracy and AUC too, with the normalized variants beside).", ""]
    latent = latent_table(summary)
    if latent:
        parts += ["## Latent batch effect of the encoders", "", latent, "",
                  "Raw test embeddings of each run's encoder, mean over seeds, then over sources. *RI*: PathoROB "
                  "robustness index SO/(SO+OS) (croma): share of informative nearest neighbours that are the same "
                  "class from another center rather than another class from the same center — higher = organised "
                  "by biology, 50 = balanced (or no informative neighbour at all: see *support*, the share of tiles with one). *W2*: Gaussian Wasserstein-2 distance between centers' embeddings, "
                  "mean over center pairs — lower = smaller batch effect (seed 003).", ""]
    parts += ["## Training", "", training_text(summary), ""]
    if nuclei:
        parts += [nuclei, ""]
    parts += ["## What each number means", "", glossary_text(), ""]
    parts += ["## Closing note", ""]
    for protocol in protocols:
        parts += [f"**{protocol}.** " + closing_note(summary, reference, protocol), ""]
    if figures:
        parts += ["## Figures", ""] + [f"- `{f}`" for f in figures] + [""]
    return "\n".join(parts)


def restain_table(summary: pd.DataFrame, protocol: str = "probe", metric: str = HEADLINE) -> str:
    """Rows = methods, columns = re-staining strengths (0 = raw) and the area under the curve."""
    curve = summary[(summary["kind"] == "restain") & (summary["protocol"] == protocol) & (summary["metric"] == metric)]
    if curve.empty:
        return ""
    strengths = sorted(dict.fromkeys(curve["test"]), key=float)
    rows = []
    for m in _methods(summary):
        sub = curve[curve["method"] == m]
        if sub.empty:
            continue
        area = _get(summary, method=m, protocol=protocol, kind="restain_area", metric=metric)
        rows.append([f"`{m}`"] + [_fmt(_get(sub, test=t)) for t in strengths] + [_fmt(area)])
    header = ["method"] + [f"s = {t}" + (" (raw)" if float(t) == 0 else f" [{1 - float(t) / 2:g}, {1 + float(t):g}]")
                           for t in strengths] + ["area"]
    return _md_table(header, rows)


def latent_table(summary: pd.DataFrame) -> str:
    """Per method: robustness index and mean W2 between centers, averaged over sources."""
    rows = []
    for m in _methods(summary):
        sub = summary[(summary["method"] == m) & (summary["protocol"] == "encoder")]
        ri = sub[(sub["kind"] == "ri") & (sub["metric"] == "ri")]["value"]
        support = sub[(sub["kind"] == "ri") & (sub["metric"] == "ri_support")]["value"]
        w2 = sub[(sub["kind"] == "w2") & (sub["test"] == "mean_pairs") & (sub["metric"] == "w2_gaussian")]["value"]
        if len(ri) or len(w2):
            rows.append([f"`{m}`", f"{ri.mean() * 100:.1f}" if len(ri) else "n/a",
                         f"{support.mean() * 100:.0f} %" if len(support) else "n/a",
                         f"{w2.mean():.3f}" if len(w2) else "n/a", str(sub["source"].nunique())])
    header = ["method", "RI ×100 (higher = better)", "RI support", "mean W2 (lower = better)", "sources"]
    return _md_table(header, rows) if rows else ""


def training_text(summary: pd.DataFrame) -> str:
    """Budget per method (mean over runs) and every run flagged "did not learn"."""
    learning = summary[summary["kind"] == "learning"]
    if learning.empty:
        return "No training summaries in this run."
    rows = []
    flags = learning_flags(summary)
    for m in dict.fromkeys(learning["method"]):
        sub = learning[learning["method"] == m]
        mean = sub.groupby("metric")["value"].mean()
        bad, n, reasons = flags.get(m, (0, 0, []))
        rows.append([f"`{m}`", str(n), *(f"{mean[k]:.0f}" if k in mean else "n/a" for k in ("epochs", "images_seen", "seconds")),
                     f"{bad}: " + "; ".join(reasons) if bad else "0"])
    table = _md_table(["method", "runs", "epochs", "images seen", "seconds", "runs that did not learn"], rows)
    return table + weights_files_text(learning)


def weights_files_text(learning: pd.DataFrame) -> str:
    """The weights files behind the encoders: external encoders (evaluated, not trained) and
    pretrainings started from a file, each with its sha256 (the ``external`` / ``init`` rows)."""
    lines = []
    for metric, what in (("external", "external encoder, not trained here"), ("init", "training started from")):
        for (m, note), _ in learning[learning["metric"] == metric].groupby(["method", "note"], sort=False):
            lines.append(f"- `{m}` ({what}): `{note}`")
    if not lines:
        return ""
    caveat = ("\n\nWhat an external encoder was pretrained on is not known to stainshift: its test centers count "
              "as unseen here, which they are not if its pretraining data included them (check the model card)."
              if (learning["metric"] == "external").any() else "")
    return "\n\nWeights read from files:\n\n" + "\n".join(lines) + caveat


def write_summary_markdown(summary: pd.DataFrame, path: str | os.PathLike, reference: str = "baseline",
                           figures: Sequence[str] = (), class_names: Sequence[str] | None = None,
                           nuclei: str = "") -> Path:
    """Write :func:`summary_markdown` atomically to ``path``."""
    return write_text(path, summary_markdown(summary, reference, figures, class_names, nuclei))


HTML_STYLE = """
body { font-family: system-ui, sans-serif; font-size: 14px; line-height: 1.45; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 0.6em 0 1.2em; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: left; white-space: nowrap; }
th { background: #f2f2f2; white-space: normal; } tr:nth-child(even) td { background: #fafafa; }
h1 { font-size: 1.5em; } h2 { font-size: 1.25em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
h3 { font-size: 1.05em; } code { background: #f4f4f4; padding: 0 3px; }
img { max-width: 100%; height: auto; }
"""


def summary_html(markdown_text: str, title: str = "stainshift summary") -> str:
    """The summary as a standalone HTML page (markdown-it, CommonMark + tables): what the HTML
    report (`snakemake --report`) shows inline, where a .md file would only be a download."""
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark").enable("table").render(markdown_text)
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title>"
            f"<style>{HTML_STYLE}</style></head><body>\n{body}</body></html>\n")


def write_summary_html(markdown_text: str, path: str | os.PathLike) -> Path:
    """Write :func:`summary_html` atomically to ``path``."""
    return write_text(path, summary_html(markdown_text))
