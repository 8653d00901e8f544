"""Figures of the evaluate stage (matplotlib, PNG, Agg backend; every file written atomically).

* :func:`cross_center_heatmap` — one panel per metric, rows train center, columns test center,
  the in-center cells outlined (seed 000 Table IV laid out as a matrix).
* :func:`roc_curves` — one panel per test center, one curve per train center.
* :func:`variant_accuracy_plot` — accuracy across normalized variants, box + strip per method
  (seed 000 Table II / BRACS70).
* :func:`embedding_map` — UMAP (or t-SNE / PCA) of embeddings coloured by center and by class
  (seed 003 Fig. 2, seed 000 Fig. 2).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .metrics.cross_center import OFF_DIAGONAL, proba_columns, wide_table  # noqa: E402

HEATMAP_METRICS: tuple[str, ...] = ("accuracy", "balanced_accuracy", "auc", "macro_f1", "qwk")


def save_figure(fig: plt.Figure, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Write ``fig`` to ``path`` as PNG via a temporary file + os.replace (no half-written PNG)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _order(train_or_test: Sequence[str]) -> list[str]:
    vals = sorted(set(train_or_test) - {"all"})
    return vals + (["all"] if "all" in set(train_or_test) else [])


def cross_center_heatmap(table: pd.DataFrame, path: str | os.PathLike, title: str = "",
                         metrics: Sequence[str] = HEATMAP_METRICS) -> Path:
    """Heatmaps of a long cross-center table (``train, test, metric, value``), one per metric;
    the in-center cells get a black frame, the mean off-diagonal of each row is in its tick label."""
    metrics = [m for m in metrics if m in set(table["metric"])]
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.9 * len(metrics) + 0.6, 3.4), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        w = wide_table(table, m)
        w = w.reindex(index=_order(w.index), columns=_order(w.columns))
        im = ax.imshow(w.to_numpy(dtype=float), vmin=0 if m != "qwk" else -1, vmax=1, cmap="viridis")
        off = table[(table["metric"] == m) & (table["test"] == OFF_DIAGONAL)].set_index("train")["value"]
        ax.set_xticks(range(w.shape[1]), w.columns, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(w.shape[0]), [f"{tr}\n(off {off[tr]:.2f})" if tr in off.index else tr for tr in w.index],
                      fontsize=7)
        ax.set_xlabel("test center", fontsize=8)
        ax.set_title(m, fontsize=9)
        for i, tr in enumerate(w.index):
            for j, te in enumerate(w.columns):
                v = w.iloc[i, j]
                if np.isfinite(v):
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6,
                            color="white" if v < 0.6 else "black")
                if tr == te:
                    ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, lw=2, ec="black"))
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    axes[0][0].set_ylabel("train center", fontsize=8)
    fig.suptitle(title or "cross-center table (framed: in-center)", fontsize=10)
    return save_figure(fig, path)


def _roc_points(y: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(y, score)
    return fpr, tpr


def roc_curves(preds: pd.DataFrame, path: str | os.PathLike, title: str = "") -> Path:
    """ROC per test center (one panel each), one curve per train center. Binary tasks use P(class 1);
    multi-class tasks the micro-average of the one-vs-rest curves."""
    pcols = proba_columns(preds)
    df = preds[preds["label"] >= 0]
    tests = _order(df["test"].unique())
    fig, axes = plt.subplots(1, len(tests), figsize=(3.0 * len(tests), 3.0), squeeze=False)
    for ax, te in zip(axes[0], tests):
        sub_t = df[df["test"] == te]
        for tr in _order(sub_t["train"].unique()):
            sub = sub_t[sub_t["train"] == tr]
            y = sub["label"].to_numpy()
            p = sub[pcols].to_numpy(dtype=float)
            if np.unique(y).size < 2:
                continue
            if len(pcols) == 2:
                fpr, tpr = _roc_points(y == 1, p[:, 1])
            else:
                onehot = np.eye(len(pcols), dtype=bool)[y]
                fpr, tpr = _roc_points(onehot.ravel(), p.ravel())
            ls = "-" if tr == te else ("--" if tr == "all" else ":")
            ax.plot(fpr, tpr, ls, lw=1.4, label=f"train {tr}")
        ax.plot([0, 1], [0, 1], color="grey", lw=0.6)
        ax.set_title(f"test {te}", fontsize=9)
        ax.set_xlabel("false positive rate", fontsize=8)
        ax.set_aspect("equal")
        ax.legend(fontsize=6, loc="lower right")
    axes[0][0].set_ylabel("true positive rate", fontsize=8)
    fig.suptitle(title or "ROC per test center", fontsize=10)
    return save_figure(fig, path)


def variant_accuracy_plot(variants: pd.DataFrame, path: str | os.PathLike, train: str | None = None,
                          title: str = "") -> Path:
    """Accuracy on every normalized variant (rows ``metric == "accuracy"`` whose ``test`` is a
    variant name), box + jittered strip per method, for one train center (default: "all" if present)."""
    v = variants[(variants["metric"] == "accuracy") & (variants["kind"] == "variant")]
    if train is None:
        train = "all" if "all" in set(v["train"]) else sorted(v["train"].unique())[0]
    v = v[v["train"] == train]
    methods = list(dict.fromkeys(v["method"]))
    data = [v[v["method"] == m]["value"].to_numpy(dtype=float) for m in methods]
    fig, ax = plt.subplots(figsize=(1.2 * max(len(methods), 2) + 1.5, 3.2))
    ax.boxplot(data, widths=0.5, showfliers=False)
    ax.set_xticks(range(1, len(methods) + 1), methods, rotation=20)
    rng = np.random.default_rng(0)
    for i, (m, d) in enumerate(zip(methods, data), start=1):
        sub = v[v["method"] == m]
        colors = np.where(sub["test"] == "raw", "crimson", "tab:blue")
        ax.scatter(i + rng.uniform(-0.15, 0.15, d.size), d, s=12, c=colors, alpha=0.8, zorder=3)
        if d.size:
            ax.text(i, np.nanmax(d) + 0.01, f"{np.nanmean(d):.2f}±{np.nanstd(d, ddof=1) if d.size > 1 else 0:.2f}",
                    ha="center", fontsize=7)
    ax.set_ylabel("accuracy (each dot = one test-set variant; red = raw)", fontsize=8)
    ax.set_title(title or f"accuracy across stain variants (train: {train})", fontsize=9)
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
                  kind: str = "umap", seed: int = 0, title: str = "") -> Path:
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
                            label=f"class {lab}" if j == 0 else None, alpha=0.8)
    axes[0].set_title("coloured by center", fontsize=9)
    axes[1].set_title("coloured by class (marker = center)", fontsize=9)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(fontsize=6, markerscale=2)
    fig.suptitle(title or f"{kind.upper()} of embeddings", fontsize=10)
    return save_figure(fig, path)
