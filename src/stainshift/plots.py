"""Figures of the evaluate stage (matplotlib, PNG, Agg backend; every file written atomically).

* :func:`cross_center_heatmap` — one panel per (protocol, metric): rows = sources, columns = test
  centers, cells whose test center the source saw hatched and framed (seed 000 Table IV as a matrix).
* :func:`roc_curves` — one panel per test center, one curve per (protocol, source) that never saw it.
* :func:`variant_accuracy_plot` — accuracy across normalized variants, box + strip per method
  (seed 000 Table II / BRACS70).
* :func:`embedding_map` — UMAP (or t-SNE / PCA) of embeddings coloured by center and by class
  (seed 003 Fig. 2, seed 000 Fig. 2).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.patches import Patch, Rectangle  # noqa: E402

from .atomic import atomic_path  # noqa: E402
from .metrics.cross_center import proba_columns  # noqa: E402

HEATMAP_METRICS: tuple[str, ...] = ("balanced_accuracy", "accuracy", "auc")
PROTOCOL_STYLE = {"probe": "-", "native": "--"}


def save_figure(fig: plt.Figure, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Write ``fig`` to ``path`` as PNG atomically (:mod:`stainshift.atomic`: no half-written PNG); closes ``fig``."""
    try:
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
    finally:
        plt.close(fig)
    return path


def cross_center_heatmap(table: pd.DataFrame, path: str | os.PathLike, title: str = "",
                         metrics: Sequence[str] = HEATMAP_METRICS) -> Path:
    """Heatmaps of the ``kind == "cell"`` rows of a cross-center table (``protocol, source, test,
    metric, value, seen``): one row of panels per protocol, one panel per metric. Cells whose
    test center the source saw (encoder or head) are hatched and framed; each source's mean over
    the centers it never saw is in its tick label."""
    cells = table[table["kind"] == "cell"]
    protocols = [p for p in ("probe", "native") if p in set(cells["protocol"])]
    metrics = [m for m in metrics if m in set(cells["metric"])]
    sources = list(dict.fromkeys(cells["source"]))
    tests = list(dict.fromkeys(cells["test"]))
    unseen = table[table["kind"] == "unseen_mean"].set_index(["protocol", "source", "metric"])["value"]
    fig, axes = plt.subplots(len(protocols), len(metrics), squeeze=False,
                             figsize=(1.1 * len(tests) * len(metrics) + 2.2 * len(metrics), 0.42 * len(sources) * len(protocols) + 1.6 * len(protocols) + 0.6))
    for row_axes, protocol in zip(axes, protocols):
        for ax, m in zip(row_axes, metrics):
            sub = cells[(cells["protocol"] == protocol) & (cells["metric"] == m)]
            values = sub.pivot(index="source", columns="test", values="value").reindex(index=sources, columns=tests)
            seen = sub.pivot(index="source", columns="test", values="seen").reindex(index=sources, columns=tests)
            im = ax.imshow(values.to_numpy(dtype=float), vmin=-1 if m == "qwk" else 0, vmax=1, cmap="viridis", aspect="auto")
            ax.set_xticks(range(len(tests)), tests, rotation=30, ha="right", fontsize=7)
            labels = [f"{s} (unseen {unseen[(protocol, s, m)]:.2f})" if (protocol, s, m) in unseen.index else s for s in sources]
            ax.set_yticks(range(len(sources)), labels, fontsize=7)
            ax.set_title(f"{protocol}: {m}", fontsize=9)
            for i in range(len(sources)):
                for j in range(len(tests)):
                    v = values.iloc[i, j]
                    if np.isfinite(v):
                        ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                                color="white" if v < 0.6 else "black")
                    if seen.iloc[i, j] is True or seen.iloc[i, j] == 1:
                        ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, lw=1.6, ec="red", hatch="///"))
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
    for ax in axes[-1]:
        ax.set_xlabel("test center", fontsize=8)
    fig.legend(handles=[Patch(fill=False, ec="red", hatch="///", label="seen: the test center trained the encoder or head")],
               loc="lower center", bbox_to_anchor=(0.5, -0.02), fontsize=8, frameon=False)
    fig.suptitle(title or "cross-center table (rows: training source)", fontsize=10)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return save_figure(fig, path)


def _roc_points(y: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(y, score)
    return fpr, tpr


def class_label(k: int, class_names: Sequence[str] | None = None) -> str:
    """``name`` of class ``k`` from the config's class names, else ``class k``."""
    return str(class_names[k]) if class_names and 0 <= int(k) < len(class_names) else f"class {int(k)}"


def roc_curves(preds: pd.DataFrame, path: str | os.PathLike, title: str = "",
               class_names: Sequence[str] | None = None) -> Path:
    """ROC per test center (one panel each), one curve per (protocol, source), from the rows given
    (the evaluate stage passes raw tiles of unseen cells), pooled over replicate seeds. Binary
    tasks use P(class 1) (named in the axis label); multi-class tasks the micro-average of the
    one-vs-rest curves."""
    pcols = proba_columns(preds)
    df = preds[preds["label"] >= 0]
    tests = sorted(df["test"].unique())
    sources = list(dict.fromkeys(df["source"]))
    colors = {s: plt.get_cmap("tab10")(i % 10) for i, s in enumerate(sources)}
    fig, axes = plt.subplots(1, max(len(tests), 1), figsize=(3.3 * max(len(tests), 1), 3.6), squeeze=False)
    for ax, te in zip(axes[0], tests):
        for (protocol, src), sub in df[df["test"] == te].groupby(["protocol", "source"], sort=False):
            y = sub["label"].to_numpy()
            p = sub[pcols].to_numpy(dtype=float)
            if np.unique(y).size < 2:
                continue
            if len(pcols) == 2:
                fpr, tpr = _roc_points(y == 1, p[:, 1])
            else:
                onehot = np.eye(len(pcols), dtype=bool)[y]
                fpr, tpr = _roc_points(onehot.ravel(), p.ravel())
            ax.plot(fpr, tpr, PROTOCOL_STYLE.get(protocol, ":"), color=colors[src], lw=1.3, label=f"{src} ({protocol})")
        ax.plot([0, 1], [0, 1], color="grey", lw=0.6)
        ax.set_title(f"test {te}", fontsize=9)
        ax.set_xlabel("false positive rate", fontsize=8)
        ax.set_aspect("equal")
        ax.legend(fontsize=6, loc="lower right")
    positive = (f"positive class: {class_label(1, class_names)} vs {class_label(0, class_names)}" if len(pcols) == 2
                else "micro-average over one-vs-rest classes")
    axes[0][0].set_ylabel(f"true positive rate\n({positive})", fontsize=8)
    fig.suptitle(title or "ROC per test center (sources that never saw it)", fontsize=10)
    return save_figure(fig, path)


def variant_accuracy_plot(variants: pd.DataFrame, path: str | os.PathLike, protocol: str = "probe",
                          title: str = "") -> Path:
    """Accuracy on every normalized variant, box + jittered strip per method: rows ``kind ==
    "variant"`` of ``protocol`` on unseen test centers, averaged per variant over the sources."""
    v = variants[(variants["kind"] == "variant") & (variants["protocol"] == protocol)
                 & ~variants["seen"].astype(bool)]
    v = v.groupby(["method", "test"], sort=False)["value"].mean().reset_index()
    methods = list(dict.fromkeys(v["method"]))
    data = [v[v["method"] == m]["value"].to_numpy(dtype=float) for m in methods]
    fig, ax = plt.subplots(figsize=(1.2 * max(len(methods), 2) + 1.5, 3.4))
    ax.boxplot(data, widths=0.5, showfliers=False)
    ax.set_xticks(range(1, len(methods) + 1), methods, rotation=20)
    rng = np.random.default_rng(0)
    for i, (m, d) in enumerate(zip(methods, data), start=1):
        colors = np.where(v[v["method"] == m]["test"] == "raw", "crimson", "tab:blue")
        ax.scatter(i + rng.uniform(-0.15, 0.15, d.size), d, s=12, c=colors, alpha=0.8, zorder=3)
        if d.size:
            ax.text(i, np.nanmax(d) + 0.01, f"{np.nanmean(d):.2f}±{np.nanstd(d, ddof=1) if d.size > 1 else 0:.2f}",
                    ha="center", fontsize=7)
    ax.set_ylabel("accuracy on unseen centers\n(dot = one test-set variant; red = raw)", fontsize=8)
    ax.set_title(title or f"accuracy across stain variants ({protocol}, mean over sources)", fontsize=9)
    return save_figure(fig, path)


RESTAIN_PANELS = (("balanced_accuracy", "balanced accuracy"), ("accuracy", "accuracy"), ("auc", "AUC"))


def restain_curve_plot(summary: pd.DataFrame, path: str | os.PathLike, protocol: str = "probe",
                       title: str = "") -> Path:
    """The stain-robustness curve: per metric panel, one line per method over re-staining strength
    (kind ``restain`` rows of ``protocol``) with its CI band, the area under it in the legend; the
    accuracy panel also shows each method's mean accuracy over the stain-normalized variants
    (kind ``variant_summary``, unseen centers, mean over sources) at the right."""
    summary = summary.assign(**{c: pd.to_numeric(summary[c], errors="coerce") for c in ("value", "ci_low", "ci_high")})
    curve = summary[(summary["kind"] == "restain") & (summary["protocol"] == protocol)]
    area = summary[(summary["kind"] == "restain_area") & (summary["protocol"] == protocol)]
    norm = summary[(summary["kind"] == "variant_summary") & (summary["protocol"] == protocol)
                   & (summary["metric"] == "accuracy_mean") & ~summary["seen"].astype(bool)]
    methods = list(dict.fromkeys(curve["method"]))
    fig, axes = plt.subplots(1, len(RESTAIN_PANELS), figsize=(4.2 * len(RESTAIN_PANELS), 4.4), squeeze=False)
    cmap = plt.get_cmap("tab10")
    if curve.empty:
        axes[0, 0].text(0.5, 0.5, "no re-stained variants (normalize.restain.strengths is empty)",
                        ha="center", va="center", transform=axes[0, 0].transAxes)
    x_max = 1.0
    for ax, (metric, label) in zip(axes[0], RESTAIN_PANELS):
        for i, method in enumerate(methods):
            c = curve[(curve["method"] == method) & (curve["metric"] == metric)].copy()
            if c.empty:
                continue
            c["x"] = c["test"].astype(float)
            c = c.sort_values("x")
            x_max = max(x_max, float(c["x"].max()))
            a = area[(area["method"] == method) & (area["metric"] == metric)]
            name = method if a.empty else f"{method} (area {100 * a['value'].iloc[0]:.1f})"
            ax.plot(c["x"], 100 * c["value"], marker="o", ms=3.5, color=cmap(i % 10), label=name)
            ax.fill_between(c["x"], 100 * c["ci_low"], 100 * c["ci_high"], color=cmap(i % 10), alpha=0.15, lw=0)
            if metric == "accuracy":
                v = norm[norm["method"] == method]["value"]
                if len(v):
                    ax.plot([x_max + 0.15], [100 * v.mean()], marker="D", ms=5, color=cmap(i % 10), ls="none")
        ticks = sorted({float(t) for t in curve["test"]}) if not curve.empty else [0.0, 1.0]
        labels = [f"{t:g}\n[{1 - t / 2:g}, {1 + t:g}]" for t in ticks]
        if metric == "accuracy" and not norm.empty:
            ticks, labels = ticks + [x_max + 0.15], labels + ["normalized\nvariants"]
        ax.set_xticks(ticks, labels, fontsize=7)
        ax.set_xlabel("re-staining strength s [α, β range]", fontsize=8)
        ax.set_ylabel(f"unseen-center {label} ×100", fontsize=8)
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=2, frameon=False)
    fig.suptitle(title or f"stain-robustness curve ({protocol}; test tiles re-stained in H&E space; band = 95 % CI)",
                 fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def embed_2d(features: np.ndarray, kind: str = "umap", seed: int = 0) -> np.ndarray:
    """2-D map of embeddings: UMAP (umap-learn, n_neighbors = min(15, N−1)), t-SNE or PCA."""
    x = np.asarray(features, dtype=np.float32)
    n = len(x)
    if kind == "pca" or n < 5:
        from sklearn.decomposition import PCA

        return PCA(n_components=2, random_state=seed).fit_transform(x) if n >= 2 else np.zeros((n, 2))
    if kind == "tsne":
        from sklearn.manifold import TSNE

        return TSNE(n_components=2, perplexity=min(30.0, (n - 1) / 3.0), random_state=seed, init="pca").fit_transform(x)
    if kind == "umap":
        import umap

        return umap.UMAP(n_neighbors=min(15, n - 1), random_state=seed, n_jobs=1).fit_transform(x)
    raise ValueError(f"unknown embedding map {kind!r} (umap | tsne | pca)")


def embedding_map(features: np.ndarray, centers: Sequence, labels: Sequence, path: str | os.PathLike,
                  kind: str = "umap", seed: int = 0, title: str = "",
                  class_names: Sequence[str] | None = None) -> Path:
    """Two panels of the same 2-D map: coloured by center, and by class (marker = center)."""
    xy = embed_2d(features, kind, seed)
    centers = np.asarray(centers).astype(str)
    labels = np.asarray(labels)
    fig, axes = plt.subplots(1, 2, figsize=(8.4, 3.8))
    cmap = plt.get_cmap("tab10")
    markers = "os^Dv<>pPX"
    ucen = sorted(np.unique(centers))
    for i, c in enumerate(ucen):
        m = centers == c
        axes[0].scatter(xy[m, 0], xy[m, 1], s=6, color=cmap(i % 10), label=c, alpha=0.8)
    for i, lab in enumerate(sorted(np.unique(labels))):
        for j, c in enumerate(ucen):
            m = (labels == lab) & (centers == c)
            axes[1].scatter(xy[m, 0], xy[m, 1], s=6, color=cmap(i % 10), marker=markers[j % len(markers)],
                            label=class_label(int(lab), class_names) if j == 0 else None, alpha=0.8)
    axes[0].set_title("coloured by center", fontsize=9)
    axes[1].set_title("coloured by class (marker = center)", fontsize=9)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(fontsize=6, markerscale=2)
    fig.suptitle(title or f"{kind.upper()} of embeddings", fontsize=10)
    return save_figure(fig, path)
