"""Robustness to the stain-normalization target: accuracy per normalized variant of the test
set and cross-stain consistency (seed 000, Table II "BRACS70" and the supplement).

A *variant* is the whole test set normalized to one (method, target) pair, or the raw test set.
Seed 000 normalizes the BRACS test set to 69 random targets (23 each for Vahadane, Macenko,
Reinhard) plus raw = 70 test sets and reports accuracy as mean ± std over them.
"""
from __future__ import annotations

import math
from typing import Mapping

import numpy as np

RAW = "raw"


def variant_name(method: str | None, target: str | None) -> str:
    """``raw`` for the unnormalized test set, else ``{method}/{target}``."""
    if method in (None, "", "none", RAW):
        return RAW
    return f"{method}/{target}"


def mean_std_over_variants(values: Mapping[str, float] | np.ndarray) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof = 1) of a metric over variants: seed 000's
    "59.0 ± 1.6" over BRACS70 (the seed does not state ddof; with 70 variants the difference is
    < 1 %). One variant gives std = 0."""
    v = np.asarray(list(values.values()) if isinstance(values, Mapping) else values, dtype=np.float64)
    if v.size == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def cross_stain_consistency(pred_matrix: np.ndarray, min_agree: int | None = None) -> float:
    """Share of tiles whose predicted class is the same in at least ``min_agree`` of the V variants
    (all V when None): (1/N) Σ_i [max_c #{v : ŷ_i^v = c} ≥ k].

    Seed 000 supplement: "a prediction is cross-stain consistent if its label for a given sample
    normalized to different targets stays the same" (88 % across raw/TH/TR; "80 % of test set data
    was cross-stain consistent across at least 65 versions" of BRACS70).
    ``pred_matrix`` is (V, N): variants × tiles."""
    p = np.asarray(pred_matrix)
    if p.ndim != 2 or p.size == 0:
        return float("nan")
    k = p.shape[0] if min_agree is None else int(min_agree)
    return float(np.mean(modal_count(p) >= k))


def modal_count(pred_matrix: np.ndarray) -> np.ndarray:
    """Per tile, how many variants agree with the most frequent prediction (N,)."""
    p = np.asarray(pred_matrix, dtype=np.int64)
    n_classes = int(p.max()) + 1
    counts = np.stack([(p == c).sum(axis=0) for c in range(n_classes)])
    return counts.max(axis=0)


def consistent_and_correct(pred_matrix: np.ndarray, y_true: np.ndarray, min_agree: int | None = None) -> float:
    """Among the tiles consistent in ≥ k variants, the share whose modal prediction is correct
    (seed 000: "70 % of those samples were correct predictions"). NaN if none is consistent."""
    p = np.asarray(pred_matrix, dtype=np.int64)
    k = p.shape[0] if min_agree is None else int(min_agree)
    n_classes = int(max(p.max(), np.max(y_true))) + 1
    counts = np.stack([(p == c).sum(axis=0) for c in range(n_classes)])
    consistent = counts.max(axis=0) >= k
    if not consistent.any():
        return float("nan")
    return float(np.mean(counts.argmax(axis=0)[consistent] == np.asarray(y_true)[consistent]))


def min_agree_from_share(n_variants: int, share: float) -> int:
    """k = ⌈share · V⌉ (seed 000 used 65 of 70, share ≈ 0.93); at least 1, at most V."""
    return int(min(n_variants, max(1, math.ceil(share * n_variants - 1e-9))))
