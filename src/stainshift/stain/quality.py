"""Colour-histogram distances between images (seed 004's evaluation of stain transfer).

Seed 004 compares the colour histograms of a normalized image and its target by Euclidean
distance, correlation and the Hellinger distance ``H(p, q) = sqrt(1 - sum_i sqrt(p_i q_i))``
(0 = identical histograms, 1 = disjoint), averaged over the R, G, B channels.
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
    pa = channel_histograms(a, bins, masks[0])
    pb = channel_histograms(b, bins, masks[1])
    bc = np.sqrt(pa * pb).sum(axis=1)
    return float(np.mean(np.sqrt(np.clip(1.0 - bc, 0.0, 1.0))))
