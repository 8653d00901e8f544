"""k-NN robustness index: do embeddings organise by biology (class) or by center?

For every sample i, its k nearest neighbours (cosine distance on the embeddings; neighbours from
the same slide as i — and i itself — excluded, so near-duplicates do not count) are typed by
(same/other class) × (same/other center): SS, SO, OS, OO. Totals are pooled over the set:

* de Jong et al. 2025 ("Current pathology foundation models are unrobust to medical center
  differences"; DESIGN.md): RI_dJ = (SS + SO) / (SS + OS) — same-class neighbours over
  same-center neighbours; > 1 means biology dominates.
* PathoROB (Kömen, de Jong et al. 2025): RI_P = SO / (SO + OS) ∈ [0, 1] over the informative
  neighbours only (SS and OO say nothing about the trade-off); ``support`` = share of samples with
  at least one SO or OS neighbour. This is what :class:`croma.RI` computes (tests compare).

k is chosen among ``k_candidates`` by the balanced accuracy of a k-NN majority vote of the class
(same-slide neighbours excluded; ties go to the lower class index; the first k reaching the best
score wins), as in PathoROB.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
from sklearn.neighbors import NearestNeighbors

from .batch_effect import l2_normalize
from .cross_center import balanced_accuracy

DEFAULT_K = (1, 3, 5, 7, 9, 11, 15, 21, 31, 51)


@dataclass(frozen=True)
class RobustnessIndexResult:
    k: int
    de_jong: float
    pathorob: float
    support: float
    knn_balanced_accuracy: float
    ss: int
    so: int
    os: int
    oo: int
    n: int

    def as_dict(self) -> dict:
        return asdict(self)


def cross_group_neighbours(
    features: np.ndarray, groups: Sequence | None, kmax: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (N, kmax) of each sample's nearest neighbours by cosine distance, skipping itself
    and every sample of its own group (slide); −1 where fewer than kmax remain. Also returns the
    number of valid neighbours per sample (N,)."""
    x = l2_normalize(features)
    n = len(x)
    g = np.arange(n).astype(str) if groups is None else np.asarray(groups).astype(str)
    _, counts = np.unique(g, return_counts=True)
    fetch = int(min(n - 1, kmax + counts.max()))
    out = np.full((n, kmax), -1, dtype=np.int64)
    valid = np.zeros(n, dtype=np.int64)
    if fetch <= 0:
        return out, valid
    nn = NearestNeighbors(n_neighbors=fetch, metric="cosine", algorithm="brute").fit(x)
    _, idx = nn.kneighbors(x)
    for i in range(n):
        row = idx[i]
        row = row[(row != i) & (g[row] != g[i])][:kmax]
        out[i, : row.size] = row
        valid[i] = row.size
    return out, valid


def knn_balanced_accuracy(labels: np.ndarray, neigh: np.ndarray, valid: np.ndarray, k: int) -> float:
    """Balanced accuracy of the k-NN majority vote of ``labels`` (ties → lowest class index),
    over the samples with at least one valid neighbour."""
    y = np.unique(np.asarray(labels), return_inverse=True)[1]
    n_classes = int(y.max()) + 1
    eff = np.minimum(valid, k)
    used = eff > 0
    votes = np.zeros((len(y), n_classes), dtype=np.int64)
    for j in range(k):
        ok = (j < eff) & used
        np.add.at(votes, (np.flatnonzero(ok), y[neigh[ok, j]]), 1)
    pred = votes.argmax(axis=1)
    return balanced_accuracy(y[used], pred[used])


def neighbour_type_counts(
    labels: np.ndarray, centers: np.ndarray, neigh: np.ndarray, valid: np.ndarray, k: int
) -> dict[str, np.ndarray]:
    """Per-sample counts (N,) of SS, SO, OS, OO among the first k valid neighbours."""
    lab, cen = np.asarray(labels), np.asarray(centers).astype(str)
    eff = np.minimum(valid, k)
    slot = np.arange(neigh.shape[1])[None, :k] < eff[:, None]
    nb = np.where(slot, neigh[:, :k], 0)
    same_l = lab[nb] == lab[:, None]
    same_c = cen[nb] == cen[:, None]
    return {
        "ss": (slot & same_l & same_c).sum(1),
        "so": (slot & same_l & ~same_c).sum(1),
        "os": (slot & ~same_l & same_c).sum(1),
        "oo": (slot & ~same_l & ~same_c).sum(1),
    }


def select_k(labels: np.ndarray, neigh: np.ndarray, valid: np.ndarray, k_candidates: Sequence[int]) -> tuple[int, float]:
    """The k (first of the best) maximizing k-NN balanced accuracy of the class, and that score."""
    best_k, best = int(k_candidates[0]), -np.inf
    for k in k_candidates:
        s = knn_balanced_accuracy(labels, neigh, valid, int(k))
        if s > best:
            best_k, best = int(k), s
    return best_k, float(best)


def robustness_index(
    features: np.ndarray,
    labels: Sequence,
    centers: Sequence,
    groups: Sequence | None = None,
    k_candidates: Sequence[int] = DEFAULT_K,
) -> RobustnessIndexResult:
    """Both robustness indices at the k chosen by k-NN balanced accuracy (see module docstring):
    RI_dJ = (ΣSS + ΣSO) / (ΣSS + ΣOS), RI_P = ΣSO / (ΣSO + ΣOS) (0.5 if no informative
    neighbour, as croma), support = mean_i [SO_i + OS_i > 0]. ``groups`` = slide ids (samples of
    one slide are never each other's neighbours); None = only the sample itself is excluded."""
    lab = np.asarray(labels)
    n = len(lab)
    ks = [int(k) for k in k_candidates if 0 < int(k) < n]
    if not ks:
        raise ValueError(f"no k candidate below the number of samples ({n})")
    neigh, valid = cross_group_neighbours(features, groups, max(ks))
    k, bacc = select_k(lab, neigh, valid, ks)
    cnt = neighbour_type_counts(lab, centers, neigh, valid, k)
    ss, so, os_, oo = (int(cnt[t].sum()) for t in ("ss", "so", "os", "oo"))
    de_jong = (ss + so) / (ss + os_) if (ss + os_) > 0 else float("inf")
    pathorob = so / (so + os_) if (so + os_) > 0 else 0.5
    support = float(np.mean((cnt["so"] + cnt["os"]) > 0))
    return RobustnessIndexResult(k=k, de_jong=float(de_jong), pathorob=float(pathorob), support=support,
                                 knn_balanced_accuracy=bacc, ss=ss, so=so, os=os_, oo=oo, n=n)
