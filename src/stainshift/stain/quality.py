"""Colour-histogram distances between images (seed 004's evaluation of stain transfer, §4.1).

Seed 004 compares the colour histograms of a normalized image and its target by Euclidean
distance, correlation and the Hellinger distance ``H(p, q) = sqrt(1 - sum_i sqrt(p_i q_i))``
(0 = identical histograms, 1 = disjoint), averaged over the R, G, B channels
(:func:`transfer_scores` gives all three).
"""
from __future__ import annotations

import numpy as np


def channel_histograms(img: np.ndarray, bins: int = 64, mask: np.ndarray | None = None) -> np.ndarray:
    """Normalised per-channel histograms (3, bins) of uint8 RGB (..., 3), optionally masked."""
    flat = np.asarray(img).reshape(-1, 3)
    if mask is not None:
        flat = flat[np.asarray(mask).reshape(-1)]
    if len(flat) == 0:
        raise ValueError("channel_histograms: no pixels (empty image or empty mask)")
    idx = (flat.astype(np.int64) * bins) // 256  # (P,3) bin per channel
    counts = np.stack([np.bincount(idx[:, c], minlength=bins) for c in range(3)]).astype(np.float64)
    return counts / counts.sum(axis=1, keepdims=True)


def hellinger_distance(a: np.ndarray, b: np.ndarray, bins: int = 64, tissue_only: bool = False) -> float:
    """Mean over RGB of the Hellinger distance between the colour histograms of two images.

    ``tissue_only`` drops near-white pixels (every channel >= 220) from both histograms.
    """
    masks = [None, None]
    if tissue_only:
        masks = [np.asarray(x).reshape(-1, 3).min(axis=1) < 220 for x in (a, b)]
    return hellinger_from_histograms(channel_histograms(a, bins, masks[0]), channel_histograms(b, bins, masks[1]))


def hellinger_from_histograms(pa: np.ndarray, pb: np.ndarray) -> float:
    """Mean over channels of ``sqrt(1 - sum_i sqrt(p_i q_i))`` for normalised histograms (C, bins)."""
    bc = np.sqrt(pa * pb).sum(axis=1)
    return float(np.mean(np.sqrt(np.clip(1.0 - bc, 0.0, 1.0))))


def _pearson(p: np.ndarray, q: np.ndarray) -> float:
    """Pearson correlation of two histograms; 1 if both are flat and equal, 0 if one is flat."""
    dp, dq = p - p.mean(), q - q.mean()
    den = np.sqrt((dp * dp).sum() * (dq * dq).sum())
    if den == 0.0:
        return 1.0 if np.array_equal(p, q) else 0.0
    return float((dp * dq).sum() / den)


def transfer_scores(normalized: np.ndarray, target: np.ndarray, bins: int = 64) -> dict[str, float]:
    """Seed 004 §4.1's three colour-histogram scores of a stain-normalized image against its target.

    ``p_c``, ``q_c``: normalised ``bins``-bin histograms of channel c (R, G, B) of ``normalized``
    and ``target`` (uint8 (..., 3), any sizes: the two are different tissue, so pixels are never
    compared one to one), each summing to 1. Every score is the mean over the three channels:

    * ``l2`` = ``||p_c - q_c||_2`` (Euclidean; 0 ideal, at most sqrt(2));
    * ``hist_correlation`` = Pearson ``corr(p_c, q_c)`` over the bins (1 ideal);
    * ``hellinger`` = ``sqrt(1 - sum_i sqrt(p_ci q_ci))`` (0 ideal, 1 disjoint).
    """
    p = channel_histograms(normalized, bins)
    q = channel_histograms(target, bins)
    return {
        "l2": float(np.mean(np.linalg.norm(p - q, axis=1))),
        "hist_correlation": float(np.mean([_pearson(p[c], q[c]) for c in range(p.shape[0])])),
        "hellinger": hellinger_from_histograms(p, q),
    }
