"""Foreground filters on RGB pixels: HSV band (seed 001), Otsu on saturation, optical density, pen ink;
slide statistics and per-tile tissue fractions (the rules are in :mod:`stainshift.tiling`)."""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .config import HUE_CONVENTIONS, TilingConfig, TilingError


# --------------------------------------------------------------------------------------------------
# Foreground filters
# --------------------------------------------------------------------------------------------------
def rgb_to_hsv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(hue in degrees [0, 360), saturation [0, 1], value [0, 1]) as float32 arrays."""
    x = rgb.astype(np.float32) * (1.0 / 255.0)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    maxc = np.maximum(np.maximum(r, g), b)
    minc = np.minimum(np.minimum(r, g), b)
    delta = maxc - minc
    sat = np.where(maxc > 0, delta / np.maximum(maxc, 1e-12), 0.0).astype(np.float32)
    safe = np.where(delta > 0, delta, 1.0)
    hue = np.where(
        maxc == r, ((g - b) / safe) % 6.0, np.where(maxc == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0)
    )
    hue = np.where(delta > 0, hue * 60.0, 0.0).astype(np.float32)
    return hue, sat, maxc


def hue_bounds_degrees(hue: tuple[float, float], convention: str) -> tuple[float, float]:
    """Seed hue bounds -> degrees: ``opencv`` = uint8 OpenCV hue / 255 (deg = b * 510),
    ``skimage`` = hue / 360 (deg = b * 360)."""
    if convention == "opencv":
        return hue[0] * 255.0 * 2.0, hue[1] * 255.0 * 2.0
    if convention == "skimage":
        return hue[0] * 360.0, hue[1] * 360.0
    raise TilingError(f"unknown hue convention {convention!r}; use one of {HUE_CONVENTIONS}")


def hsv_mask(rgb: np.ndarray, *, hue: tuple[float, float] = (0.5, 0.65), saturation_min: float = 0.1,
             value: tuple[float, float] = (0.5, 0.9), hue_convention: str = "opencv") -> np.ndarray:
    """Seed 001's HSV foreground rule with an explicit hue convention (see module docstring)."""
    h, s, v = rgb_to_hsv(rgb)
    lo, hi = hue_bounds_degrees(hue, hue_convention)
    return (h > lo) & (h < hi) & (s > saturation_min) & (v > value[0]) & (v < value[1])


def pen_mask(rgb: np.ndarray) -> np.ndarray:
    """Marker ink: saturated green/blue (hue 60°..235°, sat > 0.25, value < 0.9) or near-black (value < 0.15).

    Blue ink measured at hue 214-244° (median 225°); hematoxylin of bluish stains reaches 238-250°, so
    the band stops at 235°. Integer arithmetic (no float HSV): with d = max - min, hue in (60°, 180°]
    when G is the maximum and B - R > -d; hue in (180°, 235°) when B is the maximum and
    12 (R - G) < -d.
    """
    x = rgb.astype(np.int16)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    mx = np.maximum(np.maximum(r, g), b)
    d = mx - np.minimum(np.minimum(r, g), b)
    coloured = (4 * d > mx) & (10 * mx < 9 * 255)
    g_max = (g >= r) & (g >= b) & (b - r > -d)
    b_max = (b > g) & (b > r) & (12 * (r - g) < -d)
    return (coloured & (g_max | b_max)) | (20 * mx < 3 * 255)


def grey(rgb: np.ndarray) -> np.ndarray:
    """Luma (ITU-R 601) as float32 in [0, 255]."""
    x = rgb.astype(np.float32)
    return 0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]


def _threshold_otsu(values: np.ndarray, nbins: int = 256) -> float:
    """``skimage.filters.threshold_otsu`` for a float array, in numpy (the same histogram -- 256 bins
    over [min, max] -- and the same arithmetic, so the same threshold; a test compares them). Saves
    importing skimage/scipy (~0.5-0.9 s) inside every tile job."""
    v = values.reshape(-1)
    if np.all(v == v[0]):
        return float(v[0])
    counts, edges = np.histogram(v, bins=nbins)
    counts = counts.astype(np.float32)
    centers = (edges[:-1] + edges[1:]) / 2.0
    w1 = np.cumsum(counts)
    w2 = np.cumsum(counts[::-1])[::-1]
    m1 = np.cumsum(counts * centers) / w1
    m2 = (np.cumsum((counts * centers)[::-1]) / w2[::-1])[::-1]
    var12 = w1[:-1] * w2[1:] * (m1[:-1] - m2[1:]) ** 2
    return float(centers[np.argmax(var12)])


def hsv_saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation as :func:`rgb_to_hsv` computes it (bit-identical: max/min of the uint8 channels
    scale to the same float32 values), without the hue."""
    mx = rgb.max(axis=-1).astype(np.float32) * np.float32(1.0 / 255.0)
    mn = rgb.min(axis=-1).astype(np.float32) * np.float32(1.0 / 255.0)
    delta = mx - mn
    return np.where(mx > 0, delta / np.maximum(mx, 1e-12), 0.0).astype(np.float32)


def otsu_threshold(rgb: np.ndarray) -> float:
    """Otsu threshold (seed 002) of the HSV saturation of ``rgb``; foreground is more saturated.

    Never below 0.05, so a slide that is all glass does not split its noise into "tissue"."""
    sat = hsv_saturation(rgb)
    if float(sat.max() - sat.min()) < 1e-6:
        return max(0.05, float(sat.max()))
    return max(0.05, _threshold_otsu(sat))


@dataclass(frozen=True)
class SlideStats:
    """Slide-level quantities from the thumbnail that per-tile filters reuse."""

    otsu: float
    glass: tuple[float, float, float]


def _percentile_u8(values: np.ndarray, q: float) -> float:
    """``np.percentile(values, q)`` (linear interpolation) of uint8 values, from a 256-bin count."""
    counts = np.bincount(values.reshape(-1), minlength=256)
    cum = np.cumsum(counts)
    pos = (cum[-1] - 1) * q / 100.0
    lo = int(np.floor(pos))
    v_lo = int(np.searchsorted(cum, lo + 1))  # the lo-th smallest value (0-based)
    v_hi = int(np.searchsorted(cum, min(lo + 1, cum[-1] - 1) + 1))
    return float(v_lo + (pos - lo) * (v_hi - v_lo))


def slide_stats(thumb: np.ndarray) -> SlideStats:
    """Otsu saturation threshold and glass colour (99th percentile per channel, >= 220) of a thumbnail."""
    if thumb.dtype == np.uint8:
        pct = [_percentile_u8(thumb[..., c], 99) for c in range(3)]
    else:
        pct = list(np.percentile(thumb.reshape(-1, 3), 99, axis=0))
    glass = np.clip(pct, 220, 255)
    return SlideStats(otsu_threshold(thumb), tuple(float(g) for g in glass))  # type: ignore[arg-type]


def od_mask(rgb: np.ndarray, glass: Sequence[float], threshold: float = 0.15) -> np.ndarray:
    """Max-channel optical density ``-log((I + 1) / (I0 + 1))`` above ``threshold``.

    Evaluated as per-channel uint8 comparisons ``I_c < (I0_c + 1) exp(-threshold) - 1``."""
    limits = (np.asarray(glass, np.float64) + 1.0) * np.exp(-threshold) - 1.0
    lim = np.ceil(limits).clip(0, 256).astype(np.int16)  # I < limit  <=>  I <= ceil(limit) - 1 for integers
    return (rgb[..., 0] < lim[0]) | (rgb[..., 1] < lim[1]) | (rgb[..., 2] < lim[2])


def foreground_mask(rgb: np.ndarray, cfg: TilingConfig, stats: SlideStats | None) -> np.ndarray:
    """Pixel foreground mask of ``rgb`` under ``cfg`` (no morphology); ``stats`` from :func:`slide_stats`."""
    parts = cfg.filter.split("+")
    if ("otsu" in parts or "od" in parts) and stats is None:
        stats = slide_stats(rgb)
    mask = np.ones(rgb.shape[:2], dtype=bool)
    if "hsv" in parts:
        mask &= hsv_mask(rgb, hue=cfg.hue, saturation_min=cfg.saturation_min, value=cfg.value,
                         hue_convention=cfg.hue_convention)
    if "otsu" in parts:
        assert stats is not None
        mask &= rgb_to_hsv(rgb)[1] > stats.otsu
    if "od" in parts:
        assert stats is not None
        mask &= od_mask(rgb, stats.glass, cfg.od_threshold)
    if cfg.pen_filter:
        mask &= ~pen_mask(rgb)
    return mask


def thumbnail_mask(thumb: np.ndarray, cfg: TilingConfig, stats: SlideStats | None) -> np.ndarray:
    """Thumbnail foreground with clean-up: closing with a disk of 0.5 % of the thumbnail side
    (>= 2 px), holes < 1 % of the thumbnail filled, specks < 0.25 % removed. Pen pixels (dilated by
    2 px) stay excluded after the closing."""
    from skimage.morphology import binary_closing, dilation, disk, remove_small_holes, remove_small_objects

    raw = foreground_mask(thumb, cfg, stats)
    area = max(4, int(raw.size * 0.01))
    radius = max(2, int(round(0.005 * max(raw.shape))))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # skimage deprecation chatter about the area/max_size names
        mask = binary_closing(raw, disk(radius))
        mask = remove_small_holes(mask, area)
        mask = remove_small_objects(mask, max(4, area // 4))
    if cfg.pen_filter:
        mask &= ~dilation(pen_mask(thumb), disk(2)).astype(bool)
    return mask


def box_fractions(mask: np.ndarray, coords0: np.ndarray, size0: float, ds: float) -> np.ndarray:
    """Mean of ``mask`` (at level-0 downsample ``ds``) over each level-0 box (outside = 0)."""
    h, w = mask.shape
    dt = np.int32 if mask.size < 2**31 else np.int64
    sat = np.zeros((h + 1, w + 1), dtype=dt)
    inner = sat[1:, 1:]
    inner[...] = mask  # cast once, then sum in place: np.cumsum(bool, dtype=...) casts per element (3x slower)
    np.cumsum(inner, axis=0, out=inner)
    np.cumsum(inner, axis=1, out=inner)
    x0 = np.floor(coords0[:, 0] / ds).astype(np.int64)
    y0 = np.floor(coords0[:, 1] / ds).astype(np.int64)
    side = max(1, int(round(size0 / ds)))
    xa, xb = np.clip(x0, 0, w), np.clip(x0 + side, 0, w)
    ya, yb = np.clip(y0, 0, h), np.clip(y0 + side, 0, h)
    s = sat[yb, xb] - sat[ya, xb] - sat[yb, xa] + sat[ya, xa]
    return s / float(side * side)
