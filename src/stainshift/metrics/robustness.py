"""k-NN robustness index: do embeddings organise by biology (class) or by center?

PathoROB (Kömen, de Jong et al. 2025), computed by ``croma.RI`` (pinned; no second
implementation here). For every sample i, its k nearest neighbours by cosine distance — never a
sample of i's own ``group_id`` (its slide: near-duplicates from one slide do not count) — are
typed by (same/other class) × (same/other center). Pooled over the set,

    RI = Σ_i SO_i / Σ_i (SO_i + OS_i)  ∈ [0, 1]   (0.5 when no sample has an SO or OS neighbour),

SO = same class, other center (biology wins), OS = other class, same center (center wins); SS
and OO neighbours say nothing about the trade-off. ``support`` = share of samples with at least
one SO or OS neighbour. k is chosen among ``k_candidates`` by the balanced accuracy of a k-NN
vote of the class (same-group neighbours excluded), as in PathoROB.

The "de Jong et al. 2025" form (SS + SO) / (SS + OS) that this project used to report cannot be
traced to an equation of that paper from here, so it is no longer computed or reported.
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import pandas as pd

DEFAULT_K = (1, 3, 5, 7, 9, 11, 15, 21, 31, 51)


@dataclass(frozen=True)
class RobustnessIndexResult:
    """croma's RI at the selected k: ``value``, ``k``, ``support`` and the number of samples ``n``."""

    value: float
    k: int
    support: float
    n: int

    def as_dict(self) -> dict:
        """The result as a plain dict."""
        return asdict(self)


def robustness_index(features: np.ndarray, labels: Sequence, centers: Sequence, groups: Sequence | None = None,
                     k_candidates: Sequence[int] = DEFAULT_K) -> RobustnessIndexResult:
    """PathoROB RI of ``features`` (N, D) with ``croma.RI.compute(..., confounder_column="center")``.

    ``groups``: the independence group of every sample (slide ids; samples of one group are
    never each other's neighbours); None = every sample its own group (only itself excluded).
    k candidates ≥ N are dropped; raises ValueError when none is left."""
    import croma

    lab = np.asarray(labels)
    n = len(lab)
    ks = [int(k) for k in k_candidates if 0 < int(k) < n]
    if not ks:
        raise ValueError(f"no k candidate below the number of samples ({n})")
    manifest = pd.DataFrame({
        "sample_id": np.arange(n).astype(str), "image_path": "-", "label": lab.astype(str),
        "group_id": np.arange(n).astype(str) if groups is None else np.asarray(groups).astype(str),
        "center": np.asarray(centers).astype(str)})
    croma_log = logging.getLogger("croma")
    level = croma_log.level
    croma_log.setLevel(logging.ERROR)  # "effective k reduced" notes on small sets
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # "support is x %": reported as ``support``
            r = croma.RI.compute(np.asarray(features, dtype=np.float64), manifest, confounder_column="center",
                                 k_candidates=ks)
    finally:
        croma_log.setLevel(level)
    return RobustnessIndexResult(value=float(r.value), k=int(r.k), support=float(r.support), n=n)
