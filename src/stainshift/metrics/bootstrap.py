"""Bootstrap confidence intervals and paired tests between methods.

Tiles of one slide are not independent (same patient, same staining run), so the resampling unit
is the slide whenever slide ids exist (a cluster bootstrap): draw as many slides as there are,
with replacement, and take all their tiles. Crop sets without usable slide ids fall back to
resampling tiles. With ``strata`` (e.g. the test center) the draw is done within each stratum, so
every replicate keeps every test center — the mean off-diagonal number stays a mean over the same
centers. Intervals are percentile intervals (Efron & Tibshirani 1993, ch. 13); the seeds report
point estimates only (000 Tables I-IV, 002 Tables 1-7), the CIs are this project's addition.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from scipy.stats import binomtest

Statistic = Callable[[np.ndarray], float]


@dataclass(frozen=True)
class BootstrapResult:
    """Point estimate on the full data, percentile interval, and how it was obtained."""

    value: float
    ci_low: float
    ci_high: float
    n_boot: int
    n_valid: int  # replicates with a finite statistic
    unit: str  # "slide" or "tile"


@dataclass(frozen=True)
class PairedTestResult:
    """Paired comparison A − B on the same tiles: difference, its CI and a two-sided p-value."""

    diff: float
    ci_low: float
    ci_high: float
    p_value: float
    n_boot: int
    unit: str


def resampling_groups(
    groups: Sequence | np.ndarray | None,
    strata: Sequence | np.ndarray | None = None,
    min_groups: int = 5,
) -> np.ndarray | None:
    """The cluster ids to resample, or None for a tile-level bootstrap.

    Slides are used when given and every stratum holds at least ``min_groups`` distinct slides
    (with fewer, a cluster bootstrap has too few units to mean anything: a crop-set store whose
    tiles all carry the store id as "slide" has one)."""
    if groups is None:
        return None
    g = np.asarray(groups).astype(str)
    s = np.zeros(len(g), dtype=int) if strata is None else np.asarray(strata)
    for st in np.unique(s):
        if np.unique(g[s == st]).size < min_groups:
            return None
    return g


def _unit(groups: Sequence | np.ndarray | None, n: int) -> str:
    """"slide" for a cluster bootstrap, "tile" when no groups are given or every group is one tile."""
    if groups is None or np.unique(np.asarray(groups).astype(str)).size >= n:
        return "tile"
    return "slide"


def _index_sets(n: int, groups: np.ndarray | None, strata: np.ndarray | None) -> list[list[np.ndarray]]:
    """Per stratum, the list of index arrays that are resampled as units (slides or single tiles)."""
    s = np.zeros(n, dtype=int) if strata is None else np.asarray(strata)
    out = []
    for st in np.unique(s):
        idx = np.flatnonzero(s == st)
        if groups is None:
            out.append([idx[i : i + 1] for i in range(idx.size)])
        else:
            g = np.asarray(groups)[idx]
            out.append([idx[g == u] for u in np.unique(g)])
    return out


def resample(units: list[list[np.ndarray]], rng: np.random.Generator) -> np.ndarray:
    """One bootstrap replicate: per stratum, draw as many units as it holds, with replacement."""
    parts = []
    for stratum in units:
        pick = rng.integers(0, len(stratum), size=len(stratum))
        parts.extend(stratum[i] for i in pick)
    return np.concatenate(parts)


def bootstrap_ci(
    statistic: Statistic,
    n: int,
    groups: Sequence | np.ndarray | None = None,
    strata: Sequence | np.ndarray | None = None,
    n_boot: int = 200,
    ci: float = 0.95,
    seed: int = 0,
) -> BootstrapResult:
    """Percentile bootstrap CI of ``statistic(idx)`` where ``idx`` indexes the n samples.

    θ̂ = statistic(arange(n)); θ*_b = statistic(idx_b) for b = 1..B replicates drawn by
    :func:`resample` (slides when ``groups`` is given, within ``strata``); the interval is the
    ((1−ci)/2, (1+ci)/2) quantiles of the finite θ*_b. Seeded: the same inputs give the same CI.
    """
    full = np.arange(n)
    value = float(statistic(full))
    unit = _unit(groups, n)
    if n == 0 or n_boot <= 0:
        return BootstrapResult(value, np.nan, np.nan, 0, 0, unit)
    units = _index_sets(n, None if groups is None else np.asarray(groups), None if strata is None else np.asarray(strata))
    rng = np.random.default_rng(seed)
    reps = np.array([statistic(resample(units, rng)) for _ in range(n_boot)], dtype=np.float64)
    ok = reps[np.isfinite(reps)]
    if ok.size == 0:
        return BootstrapResult(value, np.nan, np.nan, n_boot, 0, unit)
    alpha = (1.0 - ci) / 2.0
    lo, hi = np.quantile(ok, [alpha, 1.0 - alpha])
    return BootstrapResult(value, float(lo), float(hi), n_boot, int(ok.size), unit)


def paired_bootstrap_test(
    statistic_a: Statistic,
    statistic_b: Statistic,
    n: int,
    groups: Sequence | np.ndarray | None = None,
    strata: Sequence | np.ndarray | None = None,
    n_boot: int = 200,
    ci: float = 0.95,
    seed: int = 0,
) -> PairedTestResult:
    """Paired bootstrap of d = θ_A − θ_B with both statistics evaluated on the *same* resampled
    tiles (same slides) in every replicate, so tile-level difficulty cancels.

    CI: percentile interval of d*_b. p-value (two-sided, H0: d = 0):
    p = min(1, 2 · min(P*(d* ≤ 0), P*(d* ≥ 0))) with P* the share of replicates
    (the bootstrap-percentile test; resolution 1/B)."""
    full = np.arange(n)
    diff = float(statistic_a(full) - statistic_b(full))
    unit = _unit(groups, n)
    units = _index_sets(n, None if groups is None else np.asarray(groups), None if strata is None else np.asarray(strata))
    rng = np.random.default_rng(seed)
    reps = []
    for _ in range(n_boot):
        idx = resample(units, rng)
        reps.append(statistic_a(idx) - statistic_b(idx))
    d = np.asarray(reps, dtype=np.float64)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return PairedTestResult(diff, np.nan, np.nan, np.nan, n_boot, unit)
    alpha = (1.0 - ci) / 2.0
    lo, hi = np.quantile(d, [alpha, 1.0 - alpha])
    p = min(1.0, 2.0 * min(np.mean(d <= 0), np.mean(d >= 0)))
    return PairedTestResult(diff, float(lo), float(hi), float(p), int(d.size), unit)


def mcnemar_test(correct_a: np.ndarray, correct_b: np.ndarray) -> float:
    """Exact McNemar test on paired per-tile correctness: with b = #(A right, B wrong) and
    c = #(A wrong, B right), p = two-sided binomial P(X ≤ min(b, c) | n = b + c, ½).
    Treats tiles as independent (use :func:`paired_bootstrap_test` for slide clustering)."""
    a = np.asarray(correct_a, dtype=bool)
    b_ = np.asarray(correct_b, dtype=bool)
    b = int(np.sum(a & ~b_))
    c = int(np.sum(~a & b_))
    if b + c == 0:
        return 1.0
    return float(binomtest(b, b + c, 0.5, alternative="two-sided").pvalue)
