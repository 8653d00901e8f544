"""The markdown summary of an evaluation run (``{R}/report/summary.md``).

Reads the tidy ``summary.csv`` (columns of :data:`stainshift.metrics.pipeline.COLUMNS`) and writes
per-method headline tables and a closing note that says, with 95 % CIs, which methods reduce the
cross-center drop relative to the reference method and which do not. A method "reduces" the drop
only when the paired-bootstrap CI of Δdrop (method − reference) lies entirely below 0; "increases"
when it lies above 0; otherwise the data do not tell them apart.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd


def _fmt(v: float, lo: float = np.nan, hi: float = np.nan, pct: bool = False) -> str:
    if v is None or not np.isfinite(v):
        return "n/a"
    s = 100.0 if pct else 1.0
    txt = f"{v * s:.1f}" if pct else f"{v:.3f}"
    if np.isfinite(lo) and np.isfinite(hi):
        txt += f" [{lo * s:.1f}, {hi * s:.1f}]" if pct else f" [{lo:.3f}, {hi:.3f}]"
    return txt


def _get(df: pd.DataFrame, **kw) -> pd.Series | None:
    m = np.ones(len(df), dtype=bool)
    for k, v in kw.items():
        m &= (df[k] == v).to_numpy()
    sub = df[m]
    return None if sub.empty else sub.iloc[0]


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def closing_note(summary: pd.DataFrame, reference: str = "baseline") -> str:
    """One sentence per method: does it reduce the cross-center drop vs ``reference`` (paired CI)?"""
    ref = _get(summary, method=reference, metric="cross_center_drop", kind="headline")
    lines = []
    if ref is not None:
        lines.append(
            f"The reference method `{reference}` loses {_fmt(ref.value, ref.ci_low, ref.ci_high, pct=True)} accuracy "
            "points between its own center and the others (in-center − mean off-diagonal, averaged over train "
            f"centers; 95 % CI, resampling unit: {ref.unit or 'tile'})."
            + (" That drop is measurably above zero." if np.isfinite(ref.ci_low) and ref.ci_low > 0 else
               " Its CI includes zero: this run shows no measurable cross-center drop for it.")
        )
    reduce, same, worse = [], [], []
    for method in [m for m in dict.fromkeys(summary["method"]) if m != reference]:
        d = _get(summary, method=method, metric="delta_cross_center_drop", kind="paired")
        if d is None:
            continue
        own = _get(summary, method=method, metric="cross_center_drop", kind="headline")
        txt = (f"`{method}` (drop {_fmt(own.value, own.ci_low, own.ci_high, pct=True)}; "
               f"Δ vs {reference} {_fmt(d.value, d.ci_low, d.ci_high, pct=True)} points)") if own is not None else f"`{method}`"
        if np.isfinite(d.ci_high) and d.ci_high < 0:
            reduce.append(txt)
        elif np.isfinite(d.ci_low) and d.ci_low > 0:
            worse.append(txt)
        else:
            same.append(txt)
    if reduce:
        lines.append("Reduce the cross-center drop (paired 95 % CI of Δdrop below 0): " + "; ".join(reduce) + ".")
    if same:
        lines.append("Do not measurably reduce it (CI of Δdrop includes 0): " + "; ".join(same) + ".")
    if worse:
        lines.append("Increase it (CI of Δdrop above 0): " + "; ".join(worse) + ".")
    if not lines:
        lines.append("No paired comparison available (the reference method is not in this run).")
    return "\n\n".join(lines)


def summary_markdown(summary: pd.DataFrame, reference: str = "baseline", figures: Sequence[str] = ()) -> str:
    """The whole summary.md text from the long summary table."""
    methods = list(dict.fromkeys(summary["method"]))
    parts = ["# stainshift — cross-center evaluation summary", "",
             "All numbers are point estimates with percentile-bootstrap 95 % CIs in brackets "
             "(slides resampled when each test center has enough slides, else tiles; see `unit` in "
             "`metrics/summary.csv`). Accuracies in %.", ""]
    rows = []
    for m in methods:
        off = _get(summary, method=m, metric="mean_off_diagonal_accuracy", kind="headline")
        drop = _get(summary, method=m, metric="cross_center_drop", kind="headline")
        am = _get(summary, method=m, train="all", metric="accuracy_mean", kind="summary")
        sd = _get(summary, method=m, train="all", metric="accuracy_std", kind="summary")
        cons = _get(summary, method=m, train="all", metric="consistency_all", kind="summary")
        ri = _get(summary, method=m, metric="ri_pathorob", kind="ri")
        rid = _get(summary, method=m, metric="ri_de_jong", kind="ri")
        w2 = _get(summary, method=m, test="mean_pairs", metric="w2_gaussian", kind="w2")
        rows.append([
            f"`{m}`",
            _fmt(off.value, off.ci_low, off.ci_high, pct=True) if off is not None else "n/a",
            _fmt(drop.value, drop.ci_low, drop.ci_high, pct=True) if drop is not None else "n/a",
            (f"{am.value * 100:.1f} ± {sd.value * 100:.1f}" if am is not None and sd is not None else "n/a"),
            _fmt(cons.value, cons.ci_low, cons.ci_high, pct=True) if cons is not None else "n/a",
            _fmt(ri.value) if ri is not None else "n/a",
            _fmt(rid.value) if rid is not None else "n/a",
            _fmt(w2.value) if w2 is not None else "n/a",
        ])
    parts += ["## Headline per method", "",
              _md_table(["method", "mean off-diagonal acc", "cross-center drop", "acc over variants (train all)",
                         "consistent in all variants", "RI PathoROB", "RI de Jong", "mean W2 (Gaussian)"], rows), "",
              "*mean off-diagonal acc*: a head trained on one center, scored on the others, averaged (seed 000 "
              "Table IV). *cross-center drop*: in-center − off-diagonal accuracy. *acc over variants*: mean ± std "
              "over raw + every normalized test-set variant (seed 000 BRACS70). RI: k-NN robustness index "
              "(PathoROB SO/(SO+OS), de Jong (SS+SO)/(SS+OS)); W2 between centers' raw test embeddings (seed 003).",
              ""]
    parts += ["## Cross-center accuracy per method", ""]
    for m in methods:
        cells = summary[(summary["method"] == m) & summary["kind"].isin(["cell", "in_center", "mean_off_diagonal"])
                        & (summary["metric"] == "accuracy")]
        if cells.empty:
            continue
        tests = sorted(set(cells["test"]) - {"mean_off_diagonal"}) + ["mean_off_diagonal"]
        trains = sorted(set(cells["train"]) - {"all"}) + (["all"] if "all" in set(cells["train"]) else [])
        body = []
        for tr in trains:
            r = [f"**{tr}**"]
            for te in tests:
                c = _get(cells, train=tr, test=te)
                v = _fmt(c.value, c.ci_low, c.ci_high, pct=True) if c is not None else ""
                r.append(f"*{v}*" if tr == te and v else v)
            body.append(r)
        parts += [f"### `{m}`", "", _md_table(["train \\ test"] + tests, body), "",
                  "(*italic*: in-center cell, not part of the off-diagonal mean.)", ""]
    parts += ["## Closing note", "", closing_note(summary, reference), ""]
    if figures:
        parts += ["## Figures", ""] + [f"- `{f}`" for f in figures] + [""]
    return "\n".join(parts)


def write_summary_markdown(summary: pd.DataFrame, path: str | os.PathLike, reference: str = "baseline",
                           figures: Sequence[str] = ()) -> Path:
    """Write :func:`summary_markdown` atomically to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        fh.write(summary_markdown(summary, reference, figures))
    os.replace(tmp, path)
    return path
