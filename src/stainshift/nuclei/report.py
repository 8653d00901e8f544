"""The nuclei section of ``summary.md`` (seed 004): stain transfer, segmentation across centers, nucleus classes."""
from __future__ import annotations

import math
from collections.abc import Mapping

import pandas as pd

TRANSFER_COLS = (("l2", "hist. L2 ↓"), ("hist_correlation", "hist. correlation ↑"), ("hellinger", "Hellinger ↓"),
                 ("glass_coloured", "glass coloured ↓"))


def _md(header: list[str], rows: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                     + ["| " + " | ".join(r) + " |" for r in rows])


def _pct(v: float) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * float(v):.1f}"


def _ci(v: float, lo: float, hi: float) -> str:
    if lo is None or math.isnan(float(lo)):
        return _pct(v)
    return f"{_pct(v)} [{_pct(lo)}, {_pct(hi)}]"


def transfer_table(scores: pd.DataFrame, train_center: str | None = None) -> str:
    """Mean over test fields of seed 004's stain-transfer numbers per normalization (unseen centers first)."""
    if scores.empty:
        return ""
    rows = []
    for method, g in scores.groupby("method", sort=False):
        unseen = g[g["center"] != train_center] if train_center else g
        use = unseen if len(unseen) else g
        rows.append([f"`{method}`" if method != "none" else "none (as scanned)", str(len(use))]
                    + [f"{use[c].mean():.3f}" if c != "glass_coloured" else _pct(use[c].mean()) + " %"
                       for c, _ in TRANSFER_COLS])
    return _md(["normalization", "fields", *[t for _, t in TRANSFER_COLS]], rows)


def segmentation_markdown(table: pd.DataFrame) -> str:
    """Pooled pixel scores (seed 004's table) and object scores per (normalization, model), seen and unseen centers."""
    dom = table[table.get("domain").notna()] if "domain" in table else table.iloc[:0]
    if dom.empty:
        return ""
    rows = []
    for (norm, model), g in dom.groupby(["normalization", "model"], sort=False):
        cells = [f"`{norm}`", "U-Net" if model == "unet" else "threshold (H + Otsu)"]
        for d in ("seen", "unseen"):
            r = g[g["domain"] == d]
            if r.empty:
                cells += ["–"] * 4
                continue
            r = r.iloc[0]
            cells += [_pct(r["sensitivity"]), _pct(r["specificity"]), _ci(r["dice"], r["dice_ci_low"], r["dice_ci_high"]),
                      _pct(r["jaccard"])]
        u = g[g["domain"] == "unseen"]
        cells += [_pct(u.iloc[0]["aji"]), _pct(u.iloc[0]["pq"])] if len(u) else ["–", "–"]
        rows.append(cells)
    header = ["normalization", "model", "seen sens.", "seen spec.", "seen Dice", "seen Jaccard", "unseen sens.",
              "unseen spec.", "unseen Dice", "unseen Jaccard", "unseen AJI", "unseen PQ"]
    return _md(header, rows)


def classes_markdown(scores: pd.DataFrame) -> str:
    """Seed 004's clustering tables: per-class precision / sensitivity / F1 and accuracy, Hungarian-matched."""
    if scores.empty:
        return ""
    cols = [c for c in scores.columns if c not in ("n_train_crops", "n_test_crops", "encoder", "accuracy")
            and not c.startswith("infogan_minus")]
    rows = []
    for d in scores.to_dict("records"):
        rows.append([f"`{d[c]}`" if c == "method" else (f"{d[c]:.3f}" if isinstance(d[c], float) else str(d[c]))
                     for c in cols])
    return _md(cols, rows)


def classes_verdict(scores: pd.DataFrame) -> str:
    """One sentence: InfoGAN's accuracy minus each k-means baseline's, paired bootstrap CI (points)."""
    if "infogan_minus_acc" not in scores or "infogan" not in set(scores["method"]):
        return ""
    parts = []
    for r in scores[scores["method"] != "infogan"].to_dict("records"):
        d, lo, hi = (100 * float(r[c]) for c in ("infogan_minus_acc", "infogan_minus_acc_ci_low",
                                                  "infogan_minus_acc_ci_high"))
        word = "beats" if lo > 0 else ("loses to" if hi < 0 else "is within the CI of")
        parts.append(f"{word} `{r['method']}` ({d:+.1f} points [{lo:+.1f}, {hi:+.1f}])")
    return "InfoGAN " + "; ".join(parts) + " — accuracy difference, paired bootstrap over test nuclei."


def segmentation_verdict(table: pd.DataFrame) -> str:
    """One sentence per normalization: U-Net minus threshold pooled Dice on unseen centers."""
    if "domain" not in table:
        return ""
    dom = table[(table["domain"] == "unseen")]
    parts = []
    for norm, g in dom.groupby("normalization", sort=False):
        u, t = g[g["model"] == "unet"], g[g["model"] == "threshold"]
        if u.empty or t.empty:
            continue
        u, t = u.iloc[0], t.iloc[0]
        word = ("above" if u["dice_ci_low"] > t["dice_ci_high"] else
                "below" if u["dice_ci_high"] < t["dice_ci_low"] else "level with")
        parts.append(f"`{norm}`: U-Net {_ci(u['dice'], u['dice_ci_low'], u['dice_ci_high'])} vs threshold "
                     f"{_ci(t['dice'], t['dice_ci_low'], t['dice_ci_high'])} ({word})")
    if not parts:
        return ""
    return "Unseen-center Dice, " + "; ".join(parts) + " (CIs that do not overlap decide *above* / *below*)."


def _figure(res: Mapping, name: str, caption: str) -> list[str]:
    """An embedded image (``res["figure_dir"]``: the dataset's folder relative to the report), else nothing."""
    return [f"![{caption}]({res['figure_dir']}/{name})", ""] if res.get("figure_dir") else []


def nuclei_section(results: Mapping[str, Mapping]) -> str:
    """Markdown of every dataset's nuclei results: ``results[dataset]`` has ``transfer``, ``segmentation``,
    ``classes`` tables, ``train_center`` and optionally ``figure_dir`` (figures embedded from there)."""
    parts = ["## Nuclei: stain transfer, segmentation and nucleus classes (seed 004)", "",
             "Seed 004's pipeline: a grayscale → colour CNN re-colours every field into the train center's stain "
             "style (*neural*), a U-Net segments nuclei, and an InfoGAN sorts nuclei into classes without labels. "
             "Models learn only from the train center's train fields; every number below is on test fields.", ""]
    for dataset, res in results.items():
        tc = res.get("train_center")
        parts += [f"### {dataset}: stain transfer to {tc}'s style", "",
                  transfer_table(res["transfer"], tc), "",
                  "Colour histograms of each normalized test field against the train center's reference field "
                  "(per-channel, mean over R, G, B): L2 distance and Hellinger distance (0 = identical), correlation "
                  "(1 = identical). *glass coloured*: share of the field's white-glass pixels (min channel ≥ 220 as "
                  "scanned) a method turned darker than 200 — seed 004's failure mode of the SVD (Macenko) method. "
                  "Figure: `transfer_montage.png`.", "",
                  *_figure(res, "transfer_montage.png", f"{dataset}: test fields as scanned and normalized")]
        seg = segmentation_markdown(res["segmentation"])
        if seg:
            parts += [f"### {dataset}: nuclei segmentation (train and test under the same normalization)", "", seg, "",
                      "Pixel scores pooled over test fields (summed counts), ×100: sensitivity, specificity, Dice, "
                      "Jaccard (seed 004's table), Dice with a bootstrap CI over fields; *seen* = test fields of the "
                      "train center, *unseen* = the other centers'. AJI and PQ: object-level, mean over unseen "
                      "fields. Figure: `segmentation.png`.", ""]
            verdict = segmentation_verdict(res["segmentation"])
            if verdict:
                parts += [verdict, ""]
            parts += _figure(res, "segmentation.png", f"{dataset}: ground truth (green) and predicted nuclei (yellow)")
        cls = classes_markdown(res["classes"])
        if cls:
            n_tr = int(res["classes"]["n_train_crops"].iloc[0]) if "n_train_crops" in res["classes"] else 0
            n_te = int(res["classes"]["n_test_crops"].iloc[0]) if "n_test_crops" in res["classes"] else 0
            parts += [f"### {dataset}: unsupervised nucleus classes", "", cls, "",
                      f"Clusters learnt without labels from {n_tr} train nuclei, assigned to {n_te} test nuclei and "
                      "matched to the true classes by the Hungarian algorithm (clustering accuracy, seed 004 Sec. 4.2); "
                      "CIs: bootstrap over test nuclei. Figure: `classes/samples.png` (generated nuclei per code, "
                      "real nuclei per class).", ""]
            verdict = classes_verdict(res["classes"])
            if verdict:
                parts += [verdict, ""]
            parts += _figure(res, "classes/samples.png", f"{dataset}: generated nuclei per code, real nuclei per class")
    return "\n".join(parts)
