"""Latent batch effect between centers and stain-variant cluster tightness.

* W2 between two centers' embeddings (seed 003, Fig. 2-3: "Wasserstein-2 distance ... quantif[ies]
  batch separation in latent space", overall and per class): the Gaussian (Fréchet) closed form
  and the exact optimal-transport value on a seeded subsample (POT's network simplex).
* Cluster tightness of a tile's stain variants (seed 000, Sec. "Comparison to contrastive
  learning"): mean distance of the variants to their centroid ("intra-cluster distance"),
  centroid-to-raw distance, and raw/variant cosine ("colinearity").

The Gaussian form is written here rather than taken from POT: ``ot.gaussian.bures_wasserstein_distance``
(POT 0.9.7) agrees to 1e-15 on full-rank covariances but returns NaN when a center has fewer tiles
than embedding dimensions (rank-deficient Σ, the usual case for 512-d features; tested in
``tests/test_metrics.py``); the eigendecomposition below clips the round-off instead.

Embeddings of different methods live on different scales; with ``l2_normalize=True`` (the
workflow's default) rows are projected on the unit sphere first so values compare across methods.
"""
from __future__ import annotations

from itertools import combinations
from typing import Sequence

import numpy as np
import pandas as pd


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows divided by their Euclidean norm (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float64)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(n > 0, n, 1.0)


def _psd_sqrt(m: np.ndarray) -> np.ndarray:
    """Symmetric PSD square root by eigendecomposition (negative round-off eigenvalues clipped)."""
    w, v = np.linalg.eigh((m + m.T) / 2.0)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def gaussian_w2_from_moments(mu_a: np.ndarray, cov_a: np.ndarray, mu_b: np.ndarray, cov_b: np.ndarray) -> float:
    """W2 between N(μ_A, Σ_A) and N(μ_B, Σ_B) (Dowson & Landau 1982; the Fréchet distance):
    W2² = ‖μ_A − μ_B‖² + Tr(Σ_A + Σ_B − 2 (Σ_A^½ Σ_B Σ_A^½)^½). Returns W2 (not squared)."""
    mu_a, mu_b = np.atleast_1d(mu_a).astype(np.float64), np.atleast_1d(mu_b).astype(np.float64)
    cov_a, cov_b = np.atleast_2d(cov_a).astype(np.float64), np.atleast_2d(cov_b).astype(np.float64)
    sa = _psd_sqrt(cov_a)
    cross = np.sqrt(np.clip(np.linalg.eigvalsh((sa @ cov_b @ sa + (sa @ cov_b @ sa).T) / 2.0), 0.0, None)).sum()
    w2sq = float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2.0 * cross)
    return float(np.sqrt(max(w2sq, 0.0)))


def gaussian_w2(x: np.ndarray, y: np.ndarray) -> float:
    """Gaussian (Fréchet) W2 between two embedding sets (N_A, D), (N_B, D): the closed form of
    :func:`gaussian_w2_from_moments` on their sample means and covariances (ddof = 1).
    Seed 003 (Fig. 2-3, W2 between RAD and UNI). W2(X, X) = 0."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) < 2 or len(y) < 2:
        return float("nan")
    return gaussian_w2_from_moments(x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False))


def _subsample(x: np.ndarray, n: int | None, seed: int) -> np.ndarray:
    if n is None or len(x) <= n:
        return x
    return x[np.sort(np.random.default_rng(seed).choice(len(x), size=n, replace=False))]


def exact_w2(x: np.ndarray, y: np.ndarray, max_samples: int | None = 1000, seed: int = 0) -> float:
    """Exact empirical W2 = (min_{π ∈ Π(a, b)} Σ_ij π_ij ‖x_i − y_j‖²)^½ with uniform weights
    a = 1/n, b = 1/m, solved by POT's ``ot.emd2``; each set is first subsampled to at most
    ``max_samples`` rows (seeded: both sets use ``seed``, so W2(X, X) = 0 exactly). Seed 003."""
    import ot  # lazy: POT pulls in its torch backend at import (seconds)

    x = _subsample(np.asarray(x, dtype=np.float64), max_samples, seed)
    y = _subsample(np.asarray(y, dtype=np.float64), max_samples, seed)
    if len(x) == 0 or len(y) == 0:
        return float("nan")
    cost = ot.dist(x, y, metric="sqeuclidean")
    a = np.full(len(x), 1.0 / len(x))
    b = np.full(len(y), 1.0 / len(y))
    return float(np.sqrt(max(float(ot.emd2(a, b, cost, numItermax=1_000_000)), 0.0)))


def w2_between_centers(
    features: np.ndarray,
    centers: Sequence,
    labels: Sequence | None = None,
    max_samples: int | None = 1000,
    seed: int = 0,
    l2: bool = True,
    min_per_set: int = 2,
) -> pd.DataFrame:
    """W2 for every pair of centers, overall (``subset = "all"``) and per class
    (``subset = "class_{c}"``; seed 003 Fig. 2 reports normal, tumour and overall), in both
    forms. Returns rows (center_a, center_b, subset, estimator ∈ {gaussian, exact}, value, n_a, n_b).
    Pairs with fewer than ``min_per_set`` embeddings on a side are skipped."""
    f = l2_normalize(features) if l2 else np.asarray(features, dtype=np.float64)
    c = np.asarray(centers).astype(str)
    lab = None if labels is None else np.asarray(labels)
    subsets: list[tuple[str, np.ndarray]] = [("all", np.ones(len(f), dtype=bool))]
    if lab is not None:
        subsets += [(f"class_{int(k)}", lab == k) for k in np.unique(lab) if k >= 0]
    rows = []
    for ca, cb in combinations(sorted(np.unique(c)), 2):
        for name, mask in subsets:
            xa, xb = f[mask & (c == ca)], f[mask & (c == cb)]
            if len(xa) < min_per_set or len(xb) < min_per_set:
                continue
            for est, val in (("gaussian", gaussian_w2(xa, xb)), ("exact", exact_w2(xa, xb, max_samples, seed))):
                rows.append(dict(center_a=ca, center_b=cb, subset=name, estimator=est, value=val,
                                 n_a=len(xa), n_b=len(xb)))
    return pd.DataFrame(rows, columns=["center_a", "center_b", "subset", "estimator", "value", "n_a", "n_b"])


def cluster_tightness(raw: np.ndarray, variants: np.ndarray, l2: bool = True) -> dict[str, float]:
    """Stain-variant cluster tightness (seed 000, Fig. 2 discussion), for N tiles each embedded raw
    (``raw`` (N, D)) and under V normalized variants (``variants`` (V, N, D)); c_i = (1/V) Σ_v z_i^v:

    * ``intra_distance`` = (1/N) Σ_i (1/V) Σ_v ‖z_i^v − c_i‖ ("mean intra-cluster distance"),
    * ``centroid_to_raw`` = (1/N) Σ_i ‖c_i − z_i^raw‖,
    * ``raw_variant_cosine`` = (1/(N V)) Σ_i Σ_v cos(z_i^raw, z_i^v) ("colinearity").

    Lower distances / higher cosine = stain variations move a tile less in latent space."""
    r = np.asarray(raw, dtype=np.float64)
    v = np.asarray(variants, dtype=np.float64)
    if v.ndim != 3 or v.shape[1:] != r.shape:
        raise ValueError(f"variants must be (V, N, D) matching raw {r.shape}, got {v.shape}")
    if l2:
        r = l2_normalize(r)
        v = np.stack([l2_normalize(x) for x in v])
    cen = v.mean(axis=0)
    intra = float(np.linalg.norm(v - cen[None], axis=2).mean())
    to_raw = float(np.linalg.norm(cen - r, axis=1).mean())
    rn, vn = l2_normalize(r), np.stack([l2_normalize(x) for x in v])
    cos = float(np.einsum("nd,vnd->vn", rn, vn).mean())
    return {"intra_distance": intra, "centroid_to_raw": to_raw, "raw_variant_cosine": cos}
