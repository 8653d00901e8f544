"""Cross-center classification tables: rows = train center (and "all"), columns = test center.

Seed 000 (Table IV, CAMELYON17): a model trained on one center is scored on the test sets of the
centers it never saw; the headline is the mean accuracy over those off-diagonal cells. Seed 002
(Tables 1-7) adds quadratic weighted kappa and macro-F1; AUC follows the usual binary /
macro one-vs-rest convention.

Every metric is its own function on integer class indices ``y_true`` / ``y_pred`` (0..C-1) or
class probabilities ``proba`` (N, C); they agree with scikit-learn where scikit-learn has the
same quantity (tests check this) but are written on the confusion matrix so the bootstrap can
call them thousands of times cheaply.
"""
from __future__ import annotations

from typing import Callable, Iterable, Sequence

import numpy as np
import pandas as pd
from scipy.stats import rankdata

#: metrics of a cross-center cell, in table order
METRICS: tuple[str, ...] = ("accuracy", "balanced_accuracy", "auc", "macro_f1", "qwk")
#: the ``test`` value of the headline row of each train center
OFF_DIAGONAL = "mean_off_diagonal"
IN_CENTER = "in_center"
#: the ``test`` value of the in-center − off-diagonal row (stainshift.metrics.pipeline)
DROP = "drop"


def _as_int(y: Sequence[int] | np.ndarray) -> np.ndarray:
    return np.asarray(y).astype(np.int64, copy=False).ravel()


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """C[i, j] = number of samples with true class i predicted as j (classes 0..n_classes-1)."""
    y_true, y_pred = _as_int(y_true), _as_int(y_pred)
    return np.bincount(y_true * n_classes + y_pred, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Accuracy = (1/N) Σ_i [ŷ_i = y_i] (seed 000 Tables I-IV, seed 002 "Acc")."""
    y_true, y_pred = _as_int(y_true), _as_int(y_pred)
    if y_true.size == 0:
        return float("nan")
    return float(np.mean(y_true == y_pred))


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Balanced accuracy = mean over classes c present in y_true of recall_c = TP_c / (TP_c + FN_c).

    Same as ``sklearn.metrics.balanced_accuracy_score`` (classes absent from y_true are skipped).
    """
    y_true, y_pred = _as_int(y_true), _as_int(y_pred)
    if y_true.size == 0:
        return float("nan")
    classes = np.unique(y_true)
    return float(np.mean([np.mean(y_pred[y_true == c] == c) for c in classes]))


def _binary_auc(pos: np.ndarray, score: np.ndarray) -> float:
    """Mann-Whitney AUC = (R_pos − n_pos(n_pos+1)/2) / (n_pos n_neg), ties with mid-ranks."""
    n_pos = int(pos.sum())
    n_neg = int(pos.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(score)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def auc(y_true: np.ndarray, proba: np.ndarray) -> float:
    """ROC AUC. Binary (C = 2): AUC of P(class 1). Multi-class: macro one-vs-rest,
    (1/|K|) Σ_{c∈K} AUC(y = c vs y ≠ c; score p_c) over the classes K present in y_true
    (``sklearn.metrics.roc_auc_score(multi_class="ovr", average="macro")`` when all classes occur).
    NaN when y_true holds a single class (AUC undefined).
    """
    y_true = _as_int(y_true)
    proba = np.asarray(proba, dtype=np.float64)
    if proba.ndim == 1:
        proba = np.stack([1.0 - proba, proba], axis=1)
    if y_true.size == 0 or np.unique(y_true).size < 2:
        return float("nan")
    if proba.shape[1] == 2:
        return _binary_auc(y_true == 1, proba[:, 1])
    vals = [_binary_auc(y_true == c, proba[:, c]) for c in np.unique(y_true)]
    return float(np.nanmean(vals))


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, labels: Iterable[int] | None = None) -> float:
    """Macro-F1 = (1/|L|) Σ_{c∈L} 2 TP_c / (2 TP_c + FP_c + FN_c), a class with an empty
    denominator scoring 0 (scikit-learn's convention); L = classes in y_true ∪ y_pred unless given.
    Seed 002 (Tables 1-7, "F1")."""
    y_true, y_pred = _as_int(y_true), _as_int(y_pred)
    if y_true.size == 0:
        return float("nan")
    labs = np.unique(np.concatenate([y_true, y_pred])) if labels is None else np.asarray(list(labels))
    f1s = []
    for c in labs:
        tp = np.sum((y_true == c) & (y_pred == c))
        fp = np.sum((y_true != c) & (y_pred == c))
        fn = np.sum((y_true == c) & (y_pred != c))
        den = 2 * tp + fp + fn
        f1s.append(0.0 if den == 0 else 2.0 * tp / den)
    return float(np.mean(f1s))


def quadratic_weighted_kappa(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int | None = None) -> float:
    """Quadratic weighted kappa (seed 002, "WQK"): κ = 1 − Σ W_ij O_ij / Σ W_ij E_ij with
    O the confusion matrix, E = outer(row sums, column sums) / N and W_ij = (i − j)² / (C − 1)².
    Equals ``sklearn.metrics.cohen_kappa_score(weights="quadratic")``; for C = 2 it is Cohen's κ.
    NaN when Σ W E = 0 (a single class in both truth and prediction)."""
    y_true, y_pred = _as_int(y_true), _as_int(y_pred)
    if y_true.size == 0:
        return float("nan")
    if n_classes is None:
        n_classes = int(max(y_true.max(), y_pred.max())) + 1
    # Restrict to the classes that occur (as scikit-learn does): unused classes only add zero rows.
    present = np.unique(np.concatenate([y_true, y_pred]))
    if present.size < 2:
        return float("nan")
    remap = np.full(n_classes, -1)
    remap[present] = np.arange(present.size)
    k = present.size
    o = confusion_matrix(remap[y_true], remap[y_pred], k).astype(np.float64)
    e = np.outer(o.sum(1), o.sum(0)) / o.sum()
    idx = np.arange(k)
    w = (idx[:, None] - idx[None, :]) ** 2 / float((k - 1) ** 2)
    den = float((w * e).sum())
    if den == 0.0:
        return float("nan")
    return float(1.0 - (w * o).sum() / den)


def classification_metrics(
    y_true: np.ndarray, proba: np.ndarray, metrics: Sequence[str] = METRICS
) -> dict[str, float]:
    """All metrics of one cross-center cell from labels and class probabilities (N, C);
    the predicted class is argmax_c p_c."""
    proba = np.asarray(proba, dtype=np.float64)
    y_true = _as_int(y_true)
    y_pred = proba.argmax(axis=1)
    out: dict[str, float] = {}
    for m in metrics:
        out[m] = METRIC_FUNCS[m](y_true, proba, y_pred)
    return out


#: metric name -> f(y_true, proba, y_pred) -> float
METRIC_FUNCS: dict[str, Callable[[np.ndarray, np.ndarray, np.ndarray], float]] = {
    "accuracy": lambda y, p, yh: accuracy(y, yh),
    "balanced_accuracy": lambda y, p, yh: balanced_accuracy(y, yh),
    "auc": lambda y, p, yh: auc(y, p),
    "macro_f1": lambda y, p, yh: macro_f1(y, yh),
    "qwk": lambda y, p, yh: quadratic_weighted_kappa(y, yh, n_classes=p.shape[1]),
}


def proba_columns(df: pd.DataFrame) -> list[str]:
    """The class-probability columns ``p0, p1, ...`` of a predictions frame, in class order."""
    cols = [c for c in df.columns if c.startswith("p") and c[1:].isdigit()]
    return sorted(cols, key=lambda c: int(c[1:]))


def cross_center_table(
    preds: pd.DataFrame,
    metrics: Sequence[str] = METRICS,
    ci: Callable[[pd.DataFrame, str], tuple[float, float]] | None = None,
) -> pd.DataFrame:
    """Long cross-center table from a predictions frame.

    ``preds`` has one row per (train center, test tile) with columns ``train``, ``test`` (test
    center), ``label`` and ``p0..p{C-1}``; tiles with label < 0 are ignored. Returns one row per
    (train, test, metric) with ``value``, ``n`` and ``in_center`` (train == test, the cell seed 000
    leaves out of its headline), plus a ``test = "mean_off_diagonal"`` row per train center and
    metric = the unweighted mean over the test centers ≠ train (000 Table IV; for "all", trained on
    every center, there is no off-diagonal and the row is omitted). ``ci(sub, metric)`` may return
    a (low, high) interval for each cell (see :mod:`stainshift.metrics.bootstrap`).
    """
    pcols = proba_columns(preds)
    df = preds[preds["label"] >= 0]
    rows = []
    for (train, test), sub in df.groupby(["train", "test"], sort=True):
        vals = classification_metrics(sub["label"].to_numpy(), sub[pcols].to_numpy(), metrics)
        for m in metrics:
            lo, hi = ci(sub, m) if ci is not None else (np.nan, np.nan)
            rows.append(dict(train=train, test=test, metric=m, value=vals[m], ci_low=lo, ci_high=hi,
                             n=len(sub), in_center=bool(train == test)))
    table = pd.DataFrame(rows, columns=["train", "test", "metric", "value", "ci_low", "ci_high", "n", "in_center"])
    return pd.concat([table, off_diagonal_mean(table)], ignore_index=True)


def off_diagonal_mean(table: pd.DataFrame) -> pd.DataFrame:
    """Rows ``test = "mean_off_diagonal"``: per (train, metric) the mean of ``value`` over the
    cells with test ≠ train (000 Table IV headline); only for train centers that are also test
    centers (i.e. not "all"). CIs are left NaN here; :func:`stainshift.metrics.bootstrap` fills them."""
    cells = table[(table["test"] != OFF_DIAGONAL) & (table["test"] != IN_CENTER)]
    tests = set(cells["test"])
    rows = []
    for (train, metric), sub in cells.groupby(["train", "metric"], sort=True):
        if train not in tests:
            continue
        off = sub[~sub["in_center"]]
        if off.empty:
            continue
        rows.append(dict(train=train, test=OFF_DIAGONAL, metric=metric, value=float(off["value"].mean()),
                         ci_low=np.nan, ci_high=np.nan, n=int(off["n"].sum()), in_center=False))
    return pd.DataFrame(rows, columns=list(table.columns))


def wide_table(table: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The matrix view of one metric: index = train center, columns = test centers (cells only)."""
    cells = table[(table["metric"] == metric) & ~table["test"].isin([OFF_DIAGONAL, IN_CENTER, DROP])]
    return cells.pivot(index="train", columns="test", values="value")
