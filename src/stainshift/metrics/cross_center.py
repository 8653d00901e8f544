"""Classification metrics of one cross-center cell (a model of one source scored on one test center).

Seed 000 (Table IV, CAMELYON17): a model trained on one center is scored on the test sets of the
centers it never saw. Seed 002 (Tables 1-7) adds quadratic weighted kappa and macro-F1; AUC
follows the usual binary / macro one-vs-rest convention. ``balanced_accuracy_valthr`` (binary
tasks) thresholds P(class 1) at the value chosen on the source's validation split: the share
predicted positive at 0.5 drifts across scanners while the true rate does not (issue 11).

Every metric is its own function on integer class indices ``y_true`` / ``y_pred`` (0..C-1) or
class probabilities ``proba`` (N, C); they agree with scikit-learn where scikit-learn has the
same quantity (tests check this) but are written on the confusion matrix so the bootstrap can
call them thousands of times cheaply. This module holds the project's only balanced accuracy.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import pandas as pd

#: metrics of a cross-center cell, in table order (``balanced_accuracy_valthr``: binary tasks only)
METRICS: tuple[str, ...] = ("accuracy", "balanced_accuracy", "auc", "macro_f1", "qwk", "balanced_accuracy_valthr")


def _as_int(y: Sequence[int] | np.ndarray) -> np.ndarray:
    return np.asarray(y).astype(np.int64, copy=False).ravel()


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """C[i, j] = number of samples with true class i predicted as j (classes 0..n_classes-1)."""
    y_true, y_pred = _as_int(y_true), _as_int(y_pred)
    return np.bincount(y_true * n_classes + y_pred, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def _n_classes(y_true: np.ndarray, y_pred: np.ndarray) -> int:
    return int(max(y_true.max(), y_pred.max())) + 1


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Accuracy = (1/N) Σ_i [ŷ_i = y_i] (seed 000 Tables I-IV, seed 002 "Acc")."""
    y_true, y_pred = _as_int(y_true), _as_int(y_pred)
    if y_true.size == 0:
        return float("nan")
    return _accuracy(confusion_matrix(y_true, y_pred, _n_classes(y_true, y_pred)))


def _accuracy(c: np.ndarray) -> float:
    return float(np.trace(c) / c.sum())


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Balanced accuracy = mean over classes c present in y_true of recall_c = TP_c / (TP_c + FN_c).

    Same as ``sklearn.metrics.balanced_accuracy_score`` (classes absent from y_true are skipped).
    """
    y_true, y_pred = _as_int(y_true), _as_int(y_pred)
    if y_true.size == 0:
        return float("nan")
    return _balanced_accuracy(confusion_matrix(y_true, y_pred, _n_classes(y_true, y_pred)))


def _balanced_accuracy(c: np.ndarray) -> float:
    support = c.sum(1)
    present = support > 0
    return float(np.mean(np.diag(c)[present] / support[present]))


def balanced_accuracy_at_threshold(y_true: np.ndarray, proba: np.ndarray, threshold: float) -> float:
    """Binary balanced accuracy of ŷ = [p_1 ≥ t] with t chosen on the source's validation split
    (the predictions table's ``threshold``). NaN for multi-class tasks or an unknown t."""
    proba = np.asarray(proba, dtype=np.float64)
    if proba.ndim != 2 or proba.shape[1] != 2 or not np.isfinite(threshold):
        return float("nan")
    return balanced_accuracy(y_true, (proba[:, 1] >= threshold).astype(np.int64))


def _binary_auc(pos: np.ndarray, score: np.ndarray) -> float:
    """Mann-Whitney AUC = (R_pos − n_pos(n_pos+1)/2) / (n_pos n_neg), R_pos the sum of the
    positives' ranks of ``score`` with ties given their mid-rank."""
    n_pos = int(pos.sum())
    n_neg = int(pos.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(score, kind="stable")
    ordered = score[order]
    first = np.r_[True, ordered[1:] != ordered[:-1]]
    starts = np.flatnonzero(first)
    mid_rank = (starts + np.r_[starts[1:], ordered.size] + 1) / 2.0  # ranks start+1..end averaged
    ranks = mid_rank[np.cumsum(first) - 1]
    return float((ranks[pos[order]].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


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


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Macro-F1 = (1/|L|) Σ_{c∈L} 2 TP_c / (2 TP_c + FP_c + FN_c) over the classes L that occur
    in y_true ∪ y_pred (``sklearn.metrics.f1_score(average="macro")``). Seed 002 (Tables 1-7, "F1")."""
    y_true, y_pred = _as_int(y_true), _as_int(y_pred)
    if y_true.size == 0:
        return float("nan")
    return _macro_f1(confusion_matrix(y_true, y_pred, _n_classes(y_true, y_pred)))


def _macro_f1(c: np.ndarray) -> float:
    tp = np.diag(c).astype(np.float64)
    den = c.sum(0) + c.sum(1)  # = 2 TP + FP + FN
    occurs = den > 0
    return float(np.mean(2.0 * tp[occurs] / den[occurs]))


def quadratic_weighted_kappa(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int | None = None) -> float:
    """Quadratic weighted kappa (seed 002, "WQK") over the classes 0..C−1 of the task:
    κ = 1 − Σ W_ij O_ij / Σ W_ij E_ij with O the C×C confusion matrix, E = outer(row sums,
    column sums) / N and W_ij = (i − j)². C = ``n_classes`` (the width of the probability matrix),
    whether or not every class occurs: a missing middle class keeps its place on the ordinal scale.
    Equals ``sklearn.metrics.cohen_kappa_score(weights="quadratic", labels=range(C))``; for C = 2
    it is Cohen's κ. NaN when Σ W E = 0 (a single class in both truth and prediction)."""
    y_true, y_pred = _as_int(y_true), _as_int(y_pred)
    if y_true.size == 0:
        return float("nan")
    return _qwk(confusion_matrix(y_true, y_pred, n_classes or _n_classes(y_true, y_pred)))


def _qwk(c: np.ndarray) -> float:
    o = c.astype(np.float64)
    e = np.outer(o.sum(1), o.sum(0)) / o.sum()
    idx = np.arange(len(o))
    w = (idx[:, None] - idx[None, :]) ** 2.0
    den = float((w * e).sum())
    if den == 0.0:
        return float("nan")
    return float(1.0 - (w * o).sum() / den)


#: metrics computed from the C×C confusion matrix of argmax predictions
CONFUSION_METRICS: dict[str, Callable[[np.ndarray], float]] = {
    "accuracy": _accuracy, "balanced_accuracy": _balanced_accuracy, "macro_f1": _macro_f1, "qwk": _qwk}


def classification_metrics(y_true: np.ndarray, proba: np.ndarray, metrics: Sequence[str] = METRICS,
                           threshold: float = float("nan")) -> np.ndarray:
    """The ``metrics`` of one cell, in order, from labels and class probabilities (N, C); the
    predicted class is argmax_c p_c (and [p_1 ≥ threshold] for ``balanced_accuracy_valthr``).
    The label metrics share one confusion matrix over the C classes of the task."""
    proba = np.asarray(proba, dtype=np.float64)
    y_true = _as_int(y_true)
    if y_true.size == 0:
        return np.full(len(metrics), np.nan)
    conf = confusion_matrix(y_true, proba.argmax(axis=1), proba.shape[1])
    out = []
    for m in metrics:
        if m in CONFUSION_METRICS:
            out.append(CONFUSION_METRICS[m](conf))
        elif m == "auc":
            out.append(auc(y_true, proba))
        elif m == "balanced_accuracy_valthr":
            out.append(balanced_accuracy_at_threshold(y_true, proba, threshold))
        else:
            raise KeyError(f"unknown metric {m!r}; known: {', '.join(METRICS)}")
    return np.array(out, dtype=np.float64)


def chance_levels(y_true: np.ndarray, n_classes: int, metrics: Sequence[str] = METRICS) -> np.ndarray:
    """What a model that ignores the image scores on this test set: for accuracy and macro-F1 the
    constant majority-class prediction (accuracy = share of the majority class), balanced accuracy
    1/C, AUC 0.5, QWK 0 (``balanced_accuracy_valthr``: 0.5, binary tasks only)."""
    y = _as_int(y_true)
    if y.size == 0:
        return np.full(len(metrics), np.nan)
    majority = np.full_like(y, np.bincount(y, minlength=n_classes).argmax())
    levels = {"accuracy": accuracy(y, majority), "balanced_accuracy": 1.0 / n_classes, "auc": 0.5,
              "macro_f1": macro_f1(y, majority), "qwk": 0.0,
              "balanced_accuracy_valthr": 0.5 if n_classes == 2 else float("nan")}
    return np.array([levels[m] for m in metrics], dtype=np.float64)


def proba_columns(df: pd.DataFrame) -> list[str]:
    """The class-probability columns ``p0, p1, ...`` of a predictions frame, in class order."""
    cols = [c for c in df.columns if c.startswith("p") and c[1:].isdigit()]
    return sorted(cols, key=lambda c: int(c[1:]))
