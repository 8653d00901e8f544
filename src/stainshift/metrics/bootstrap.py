"""Hierarchical bootstrap CIs over replicate seeds and test units, and paired comparisons.

A number in a table is the mean over replicate training seeds s = 1..S of a per-seed statistic
θ_s computed on the test tiles: θ̄ = (1/S) Σ_s θ_s(all tiles). Two things make it uncertain:
which seeds were trained (seed variance) and which patients happened to be in the test set
(test-set variance). One bootstrap replicate b redraws both (a two-level, crossed bootstrap):

1. *outer level* (when S ≥ 2): draw S seeds with replacement, s*_1..s*_S;
2. *inner level*: within every stratum h (test center) draw as many units as it holds, with
   replacement, and take all their tiles (idx*_b);
3. θ*_b = (1/S) Σ_j θ_{s*_j}(idx*_b).

The interval is the ((1−ci)/2, (1+ci)/2) percentile interval of the finite θ*_b (Efron &
Tibshirani 1993, ch. 13). With one seed it is the plain stratified cluster bootstrap.

**Resampling unit per stratum** (:func:`resampling_design`): tiles of one patient share the
patient, tiles of one slide the staining run, so they are not independent. A stratum resamples
patients when it holds ≥ ``min_units`` distinct patients (a patient draw takes every tile of
every slide of that patient: slides are nested in patients), else slides when it holds ≥
``min_units`` slides, else single tiles. Groups of one tile each are reported as ``tile``.

**Paired comparisons** (method A vs reference B): pass ``statistic = θ^A − θ^B`` evaluated on the
same drawn seeds and the same resampled tiles, so Δ_s = θ^A_s − θ^B_s pairs the two methods by
replicate seed and test-set difficulty cancels. p-value (two-sided, H0: Δ = 0):
p = min(1, 2 · min(P*(Δ* ≤ 0), P*(Δ* ≥ 0))) (the bootstrap-percentile test; resolution 1/B).

**Streams**: a statistic that combines runs trained independently (e.g. the mean over sources of
their per-source numbers) asks for ``n_streams`` independent seed draws per replicate, one per
source; every stream shares the same resampled tiles.

The seeds report point estimates only (000 Tables I-IV, 002 Tables 1-7); the CIs are this
project's addition (issue 11).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

#: statistic(seeds, idx) -> (M,) values. ``seeds`` (n_streams, n_drawn) seed indices drawn for
#: each stream (with repetition), ``idx`` the resampled tile indices.
SeedStatistic = Callable[[np.ndarray, np.ndarray], np.ndarray]

@dataclass(frozen=True)
class ResamplingDesign:
    """How N test tiles are resampled: per stratum, the tile indices of each unit."""

    n: int
    strata: np.ndarray                         # (N,) stratum (test center) of every tile
    units: tuple[tuple[np.ndarray, ...], ...]  # per stratum, one index array per unit
    unit_of: dict[str, str]                    # stratum -> "patient" | "slide" | "tile"

    @property
    def label(self) -> str:
        """The unit per stratum, e.g. ``"center_a:patient; center_b:tile"``."""
        return "; ".join(f"{h}:{u}" for h, u in self.unit_of.items())

    def resample(self, rng: np.random.Generator) -> np.ndarray:
        """One inner-level draw: per stratum as many units as it holds, with replacement, all their tiles."""
        parts = [np.zeros(0, dtype=np.int64)]
        for stratum in self.units:
            pick = rng.integers(0, len(stratum), size=len(stratum))
            parts.extend(stratum[i] for i in pick)
        return np.concatenate(parts)


def _units(idx: np.ndarray, groups: np.ndarray | None) -> tuple[np.ndarray, ...]:
    if groups is None:
        return tuple(idx[i: i + 1] for i in range(idx.size))
    g = groups[idx]
    order = np.argsort(g, kind="stable")
    bounds = np.flatnonzero(np.r_[True, g[order][1:] != g[order][:-1], True])
    return tuple(idx[order[a:b]] for a, b in zip(bounds[:-1], bounds[1:]))


def resampling_design(strata: Sequence | np.ndarray, patients: Sequence | np.ndarray | None = None,
                      slides: Sequence | np.ndarray | None = None, min_units: int = 5) -> ResamplingDesign:
    """Per stratum, the first of patient → slide → tile with at least ``min_units`` distinct
    units (module docstring). ``patients`` / ``slides`` are per-tile ids (None = unknown)."""
    s = np.asarray(strata).astype(str)
    levels = [(name, None if ids is None else np.asarray(ids).astype(str))
              for name, ids in (("patient", patients), ("slide", slides))]
    units, unit_of = [], {}
    for h in dict.fromkeys(s):  # strata in order of first appearance
        idx = np.flatnonzero(s == h)
        chosen, groups = "tile", None
        for name, ids in levels:
            if ids is not None and np.unique(ids[idx]).size >= min_units:
                chosen, groups = name, ids
                break
        u = _units(idx, groups)
        units.append(u)
        unit_of[h] = chosen if len(u) < idx.size else "tile"
    return ResamplingDesign(len(s), s, tuple(units), unit_of)


@dataclass(frozen=True)
class BootstrapResult:
    """Per component of the statistic: point estimate (mean over seeds), percentile interval,
    two-sided p-value of H0: value = 0, standard deviation of the per-seed point estimates
    (NaN with one seed), and how many of the replicates were finite."""

    value: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    p_value: np.ndarray
    seed_sd: np.ndarray
    n_valid: np.ndarray
    n_boot: int
    n_seeds: int
    unit: str


def mean_over_seeds(seeds: np.ndarray, per_seed: Callable[[int], np.ndarray]) -> np.ndarray:
    """(1/J) Σ_j per_seed(seeds[j]) for one stream's drawn seeds, each distinct seed evaluated once."""
    uniq, counts = np.unique(np.asarray(seeds, dtype=np.int64), return_counts=True)
    vals = np.stack([np.atleast_1d(np.asarray(per_seed(int(s)), dtype=np.float64)) for s in uniq])
    return (vals * counts[:, None]).sum(0) / counts.sum()


def hierarchical_bootstrap(statistic: SeedStatistic, n_seeds: int, design: ResamplingDesign, n_boot: int = 200,
                           ci: float = 0.95, seed: int = 0, n_streams: int = 1) -> BootstrapResult:
    """Seed × unit bootstrap of ``statistic`` (module docstring). Seeded: same inputs, same CI.

    Point estimate: statistic with every stream holding all seeds 0..S−1 once, on all tiles.
    ``seed_sd``: sample sd over s of the statistic with every stream holding seed s only."""
    all_tiles = np.arange(design.n)
    every_seed = np.tile(np.arange(n_seeds), (n_streams, 1))
    value = np.atleast_1d(np.asarray(statistic(every_seed, all_tiles), dtype=np.float64))
    if n_seeds >= 2:
        per_seed = np.stack([np.atleast_1d(np.asarray(statistic(np.full((n_streams, 1), s), all_tiles), np.float64))
                             for s in range(n_seeds)])
        seed_sd = np.array([np.std(c[np.isfinite(c)], ddof=1) if np.isfinite(c).sum() > 1 else np.nan
                            for c in per_seed.T])
    else:
        seed_sd = np.full(value.shape, np.nan)
    nan = np.full(value.shape, np.nan)
    if design.n == 0 or n_boot <= 0:
        return BootstrapResult(value, nan, nan, nan, seed_sd, np.zeros(value.shape, int), 0, n_seeds, design.label)
    rng = np.random.default_rng(seed)
    reps = np.empty((n_boot, value.size), dtype=np.float64)
    for b in range(n_boot):
        drawn = rng.integers(0, n_seeds, size=(n_streams, n_seeds)) if n_seeds >= 2 else np.zeros((n_streams, 1), int)
        reps[b] = statistic(drawn, design.resample(rng))
    finite = np.isfinite(reps)
    lo, hi, p = nan.copy(), nan.copy(), nan.copy()
    alpha = (1.0 - ci) / 2.0
    for j in range(value.size):
        r = reps[finite[:, j], j]
        if r.size:
            lo[j], hi[j] = np.quantile(r, [alpha, 1.0 - alpha])
            p[j] = min(1.0, 2.0 * min(np.mean(r <= 0), np.mean(r >= 0)))
    return BootstrapResult(value, lo, hi, p, seed_sd, finite.sum(0), n_boot, n_seeds, design.label)
