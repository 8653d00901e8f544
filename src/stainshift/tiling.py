"""The tile stage: level choice, grid, foreground filters, tile selection, labels -> one patch store.

Read plan: tiles are ``patch_size`` px at ``target_mpp``. The level read is the coarsest native
level that is not coarser than the target (the "nearest finer level", 1 % tolerance for scanner
rounding, e.g. 0.499 vs 0.5 µm/px). When that level is not the target, a region of
``round(patch_size * scale)`` px is read and reduced with PIL's BOX filter (area averaging: every
output pixel is the mean of the input pixels it covers, no ringing). Upsampling (target finer than
level 0) is refused unless ``allow_upsample`` is set, and then recorded. The plan (level, read size,
effective mpp, filter) goes into the store's attrs.

Tissue decision (which grid tiles are kept; ``t = min_tissue_fraction``, ``m = tissue_margin``).
One low-resolution *decision image* is read: the coarsest native pyramid level at which a tile
still covers >= 8 x 8 pixels (``MASK_MIN_PX``), box-reduced by an integer factor where a tile covers
>= 32 px there (to 16..31 px: single-level slides), long side <= ``MASK_MAX_SIDE``; or the
``thumbnail_size`` thumbnail when that key is set. The foreground rule (below) and the pen filter
are evaluated on its pixels, without morphology; a tile's *mask fraction* is the share of mask
pixels under its footprint (outside the slide counts as background). Then, per grid tile:

- mask fraction >= t + m: kept; its pixels are read only to be stored; ``tissue_fraction`` = mask fraction;
- mask fraction <  t - m: dropped, never read;
- in between (within the margin): read and checked per pixel at tile resolution exactly as every
  tile was before (every 2nd pixel of tiles >= 128 px, same filter, same slide statistics); kept
  when that pixel fraction >= t, which is then its ``tissue_fraction``;
- ``pen_filter`` also drops a tile whose footprint on the statistics thumbnail is < 0.8 t tissue
  outside the *ink zone* (ink dilated by 2 thumbnail px) -- the ink part of the thumbnail prefilter
  this stage applied before (``INK_ZONE_PX``, ``INK_ZONE_FACTOR``).

``m = 0`` decides from the mask alone: no pixel is read to decide. Low-res pixels are box averages,
so where tissue and glass mix the mask fraction runs high (mean +0.05 on the real-pixel benchmark
slide, +0.02..+0.03 on CMU-1, ~0 on the synth slides); the default ``m = 0.1`` sends the tiles this
can flip to the pixel check. Against the per-tile rule it replaces (every candidate read and
checked): same kept tiles on the synth slides and the HistoQC / CMU-1 references up to a few tiles
(IoU vs their reference masks within 0.01: tests/test_tiling.py); on the 16384² real-pixel benchmark
slide all 1433 tiles of before plus 42 with mask fraction >= 0.6 and pixel fraction < 0.5 (m = 0:
+159). The slide statistics (Otsu saturation threshold, glass colour) come from the thumbnail they
always came from (long side ~8 px per tile, 512..4096; the decision image itself when that is the
same read), so the pixel rule is unchanged. The QC picture is the decision image with its mask
(cyan), the ink zone (red) and the kept tiles; ``attrs["tissue_decision"]`` records the image
(level, reduce factor, downsample, pixels per tile side), the margin and the counts.

- ``hsv``: ``hue in (0.5, 0.65)``, ``sat > 0.1``, ``value in (0.5, 0.9)`` with an explicit hue
  convention. ``opencv`` (default) reads the bounds as OpenCV uint8 hue / 255 (hue_deg / 2 / 255:
  255°..331.5°, purple to pink) -- the band that actually selects H&E and the seed's intent;
  ``skimage`` reads them as hue / 360 (180°..234°, cyan-blue), which is the band the paper's numbers
  select when taken literally in skimage/colorsys units (it drops H&E; kept for reproduction studies).
- ``otsu``: saturation > Otsu threshold of the slide thumbnail's HSV saturation (CLAM-style; the
  same threshold is used per tile). Otsu on grey levels splits nuclei from stroma on pale slides
  (tissue IoU 0.27 vs 0.91 on a synth slide), saturation separates stain from glass.
- ``od``: optical density ``-log(I / I0)`` of the most absorbing channel > ``od_threshold`` (0.15,
  Macenko's transparency threshold), with ``I0`` = the slide's glass colour (99th percentile of
  the thumbnail per channel, clipped to >= 220). Robust to tinted glass and to eosin hues outside
  the seed's HSV band: tissue IoU >= 0.99 on all four synth centers where ``hsv`` reaches 0.08-0.98
  (synth eosin sits at hue 325-350°, the seed band ends at 331.5°).
- ``a+b`` (``hsv+otsu``, ``hsv+od``, ``otsu+od``): both (logical and).
- ``pen_filter``: removes ink pixels (green/blue/black marker: saturated hue 60°..250°, or very dark)
  from every mode; the HSV band already excludes most ink, Otsu alone does not.

Selection: ``max_tiles`` random tiles per slide with ``seed`` (candidates visited in a seeded random
order, the first ``max_tiles`` that pass are kept -- the same tiles for any worker count), or all.
Parallelism: ``workers`` > 1 uses a process pool (``parallel: process``, default) or threads; each
worker opens the slide once, reads, resizes, checks and JPEG/zstd-encodes its tiles, and the main
process only appends the encoded bytes to the store.

Pixel path per tile: the reader's raw buffer (OpenSlide: opaque premultiplied BGRX, see
:mod:`stainshift.io`) goes to the JPEG encoder as is -- no RGBA -> RGB copy; a pixel check looks at
an RGB view of the same buffer. Only a resized read (target mpp not a native level) or a tile with
transparent pixels makes one RGB array.
"""
from __future__ import annotations

import logging
import math
import os
import sys
import time
import warnings
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
from PIL import Image

from stainshift.io import SlideReader, open_slide, pil_rgb, rgb_view
from stainshift.store import CodecSpec, StoreWriter, encode_tile

__all__ = [
    "TilingConfig", "ReadPlan", "plan_read", "tile_grid", "hsv_mask", "otsu_threshold", "pen_mask",
    "SlideStats", "slide_stats", "od_mask",
    "foreground_mask", "thumbnail_mask", "read_tile", "tile_slide", "TilingError", "RESIZE_FILTER",
    "MaskPlan", "plan_mask", "TissueMap", "tissue_map", "tissue_fraction",
]

log = logging.getLogger("stainshift.tiling")
RESIZE_FILTER = "PIL.Image.BOX (area average)"
MPP_TOLERANCE = 0.01
# The tissue-decision image (module docstring): a tile covers >= MASK_MIN_PX x MASK_MIN_PX of its
# pixels; a level where it covers >= 2 * MASK_REDUCE_PX px is box-reduced to MASK_REDUCE_PX..2x-1 px;
# the image's long side is capped at MASK_MAX_SIDE (memory: the same envelope as the old 4096-px
# thumbnail; a note is logged when the cap breaks MASK_MIN_PX).
MASK_MIN_PX = 8
MASK_REDUCE_PX = 16
MASK_MAX_SIDE = 4096
DEFAULT_TISSUE_MARGIN = 0.1
# Ink gate (pen_filter): on the statistics thumbnail, ink pixels dilated by INK_ZONE_PX px form the
# ink zone; a tile whose footprint there is < INK_ZONE_FACTOR * min_tissue_fraction tissue outside
# the zone is dropped. This is the ink part of the thumbnail prefilter the stage applied before the
# low-res decision (closing, hole filling, speck removal, & ~dilated ink, share >= 0.8 t, on the same
# thumbnail); measured on the HistoQC pen / coverslip-edge examples it is the part that kept
# ink-fringed tiles out (pen pixels inside kept tiles 0.03 with it, 0.08 without; coverslip edge 0.35
# vs 0.68), while the closing / hole / speck steps changed no reference IoU by more than 0.005.
INK_ZONE_PX = 2
INK_ZONE_FACTOR = 0.8
HUE_CONVENTIONS = ("opencv", "skimage")
FILTER_PARTS = ("hsv", "otsu", "od")
FILTERS = ("hsv", "otsu", "od", "hsv+otsu", "hsv+od", "otsu+od")


class TilingError(ValueError):
    """A tiling problem (bad settings for this slide, upsampling refused); names the slide."""


# --------------------------------------------------------------------------------------------------
# Configuration and read plan
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TilingConfig:
    """The ``tiling:`` config section (defaults = the seed rules, demo values live in config.yaml)."""

    target_mpp: float = 0.5
    patch_size: int = 224
    stride: int | None = None
    filter: str = "od"  # seed 001 "hsv" misses pale or magenta eosin (module docstring); od keeps it
    hue_convention: str = "opencv"
    od_threshold: float = 0.15
    hue: tuple[float, float] = (0.5, 0.65)
    saturation_min: float = 0.1
    value: tuple[float, float] = (0.5, 0.9)
    pen_filter: bool = True
    min_tissue_fraction: float = 0.5
    tissue_margin: float = DEFAULT_TISSUE_MARGIN  # pixel-check band around min_tissue_fraction (docstring)
    max_tiles: int | None = 100
    label_threshold: float = 0.01
    codec: str = "jpeg"
    jpeg_quality: int = 90
    workers: int = 1
    parallel: str = "process"
    seed: int = 0
    allow_upsample: bool = False
    thumbnail_size: int | None = None
    exclude_groups: tuple[str, ...] = ("_2", "Exclusion", "exclusion")
    mask_positive_values: tuple[int, ...] | None = None
    class_names: tuple[str, ...] | None = None
    shard_tiles: int = 64

    def __post_init__(self) -> None:
        if self.filter not in FILTERS:
            raise TilingError(f"tiling.filter must be one of {FILTERS}, got {self.filter!r}")
        if self.hue_convention not in HUE_CONVENTIONS:
            raise TilingError(f"tiling.hue_convention must be one of {HUE_CONVENTIONS}, got {self.hue_convention!r}")
        if self.parallel not in ("process", "thread"):
            raise TilingError(f"tiling.parallel must be 'process' or 'thread', got {self.parallel!r}")
        if self.patch_size < 1 or self.target_mpp <= 0:
            raise TilingError("tiling.patch_size and tiling.target_mpp must be positive")
        if not 0.0 <= self.tissue_margin <= 1.0:
            raise TilingError(f"tiling.tissue_margin must be in [0, 1], got {self.tissue_margin}")

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any] | None) -> "TilingConfig":
        cfg = dict(cfg or {})
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise TilingError(f"unknown tiling key(s): {', '.join(unknown)}")
        for key in ("hue", "value", "exclude_groups", "mask_positive_values", "class_names"):
            if cfg.get(key) is not None:
                cfg[key] = tuple(cfg[key])
        return cls(**cfg)

    @property
    def step(self) -> int:
        return int(self.stride or self.patch_size)

    def filter_params(self) -> dict[str, Any]:
        return {
            "filter": self.filter, "hue_convention": self.hue_convention, "hue": list(self.hue),
            "saturation_min": self.saturation_min, "value": list(self.value), "od_threshold": self.od_threshold,
            "pen_filter": self.pen_filter,
            "min_tissue_fraction": self.min_tissue_fraction, "tissue_margin": self.tissue_margin,
        }


@dataclass(frozen=True)
class ReadPlan:
    """How tiles are read from one slide (all sizes in pixels)."""

    mpp_level0: float
    target_mpp: float
    level: int
    level_downsample: float
    read_size: int          # region read at ``level``
    patch_size: int         # stored tile side
    tile_size0: float       # tile footprint in level-0 px
    stride0: float          # grid step in level-0 px
    effective_mpp: float    # µm/px of the stored tile
    resize: str | None      # None when the read is native

    @property
    def downsample(self) -> float:
        """Stored pixels per level-0 pixel (target / level-0 mpp, as realised)."""
        return self.tile_size0 / self.patch_size


def plan_read(reader: SlideReader, target_mpp: float, patch_size: int, stride: int | None = None,
              allow_upsample: bool = False) -> ReadPlan:
    """Choose the nearest finer native level and the read size for ``target_mpp``."""
    mpp0 = reader.mpp
    need = target_mpp / mpp0  # level-0 px per output px
    if need < 1 - MPP_TOLERANCE and not allow_upsample:
        raise TilingError(
            f"{reader.path}: target {target_mpp} µm/px is finer than level 0 ({mpp0:.4f} µm/px); "
            f"that needs upsampling by {1 / need:.2f}x. Lower tiling.target_mpp or set tiling.allow_upsample"
        )
    level = 0
    for i, ds in enumerate(reader.level_downsamples):
        if ds <= need * (1 + MPP_TOLERANCE):
            level = i if ds >= reader.level_downsamples[level] else level
    lds = reader.level_downsamples[level]
    scale = need / lds
    if abs(scale - 1) <= MPP_TOLERANCE:
        read_size, resize = patch_size, None
    else:
        read_size = max(1, int(round(patch_size * scale)))
        resize = RESIZE_FILTER if read_size > patch_size else "PIL.Image.BICUBIC (upsampling, allowed by config)"
        if read_size == patch_size:
            resize = None
    tile0 = read_size * lds
    step = stride or patch_size
    stride0 = tile0 * step / patch_size
    return ReadPlan(
        mpp_level0=mpp0, target_mpp=target_mpp, level=level, level_downsample=lds, read_size=read_size,
        patch_size=patch_size, tile_size0=tile0, stride0=stride0,
        effective_mpp=mpp0 * tile0 / patch_size, resize=resize,
    )


def tile_grid(dims0: tuple[int, int], plan: ReadPlan) -> np.ndarray:
    """Level-0 (x, y) top-lefts of every grid tile that starts inside the slide (row-major).

    Tiles reaching past the right/bottom edge are included; the part outside reads as white (glass),
    so the foreground filter decides whether they are kept.
    """
    w0, h0 = dims0
    xs = np.arange(0, w0, plan.stride0)
    ys = np.arange(0, h0, plan.stride0)
    gx, gy = np.meshgrid(np.round(xs).astype(np.int64), np.round(ys).astype(np.int64))
    return np.stack([gx.ravel(), gy.ravel()], 1)


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
    np.cumsum(np.cumsum(mask, axis=0, dtype=dt), axis=1, out=sat[1:, 1:])
    x0 = np.floor(coords0[:, 0] / ds).astype(np.int64)
    y0 = np.floor(coords0[:, 1] / ds).astype(np.int64)
    side = max(1, int(round(size0 / ds)))
    xa, xb = np.clip(x0, 0, w), np.clip(x0 + side, 0, w)
    ya, yb = np.clip(y0, 0, h), np.clip(y0 + side, 0, h)
    s = sat[yb, xb] - sat[ya, xb] - sat[yb, xa] + sat[ya, xa]
    return s / float(side * side)


# --------------------------------------------------------------------------------------------------
# The tissue-decision mask (module docstring)
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MaskPlan:
    """Where the tissue-decision image comes from: native ``level`` reduced by ``factor``."""

    level: int
    factor: int
    downsample: float       # level-0 px per mask px
    px_per_tile: float      # tile side in mask px
    shape: tuple[int, int]  # (h, w) of the mask


def _reduce_factor(side: float) -> int:
    """Integer box factor that brings a tile side of ``side`` px to MASK_REDUCE_PX..2x-1 px
    (1 below 2 * MASK_REDUCE_PX); an exact divisor of an integral side when one is in that range."""
    if side < 2 * MASK_REDUCE_PX:
        return 1
    hi = int(side // MASK_REDUCE_PX)
    if abs(side - round(side)) < 1e-6:
        for f in range(hi, max(1, int(side // (2 * MASK_REDUCE_PX))), -1):
            if round(side) % f == 0:
                return f
    return hi


def plan_mask(reader: SlideReader, plan: ReadPlan, thumbnail_size: int | None = None) -> MaskPlan:
    """Choose the tissue-decision image: the coarsest native level where a tile covers >= MASK_MIN_PX
    px, reduced to MASK_REDUCE_PX..2x-1 px per tile; or the ``thumbnail_size`` thumbnail (same level
    rule as :meth:`SlideReader.thumbnail`). The long side is capped at MASK_MAX_SIDE."""
    dims, dss = reader.level_dimensions, reader.level_downsamples
    if thumbnail_size:
        level, factor = reader.thumbnail_plan(thumbnail_size)
    else:
        level = 0
        for i, ds in enumerate(dss):
            if plan.tile_size0 / ds >= MASK_MIN_PX * (1 - MPP_TOLERANCE) and ds >= dss[level]:
                level = i
        factor = _reduce_factor(plan.tile_size0 / dss[level])
    factor = max(factor, int(math.ceil(max(dims[level]) / MASK_MAX_SIDE - 1e-9)))
    w, h = dims[level]
    ds = dss[level] * factor
    return MaskPlan(level=level, factor=factor, downsample=ds, px_per_tile=plan.tile_size0 / ds,
                    shape=(max(1, h // factor), max(1, w // factor)))


def stats_thumbnail_size(dims0: tuple[int, int], plan: ReadPlan, thumbnail_size: int | None = None) -> int:
    """Long side of the thumbnail the slide statistics come from: ``thumbnail_size``, else a tile
    covering ~8 px, within 512..4096 (the thumbnail the stage has always used for them)."""
    return int(thumbnail_size or np.clip(max(dims0) * 8 / plan.tile_size0, 512, 4096))


@dataclass
class TissueMap:
    """The low-res image the tissue decision was made on, its mask and the slide statistics
    (``stats_downsample``: of the thumbnail they were computed on)."""

    image: np.ndarray
    mask: np.ndarray
    plan: MaskPlan
    stats: SlideStats
    stats_downsample: float = 0.0
    ink_zone: np.ndarray | None = None  # on the statistics thumbnail (pen_filter only; None: no ink)
    ink_gate: np.ndarray | None = None  # thumbnail foreground outside the ink zone

    @property
    def downsample(self) -> float:
        return self.plan.downsample

    def fractions(self, coords0: np.ndarray, tile_size0: float) -> np.ndarray:
        """Mask fraction of each level-0 tile footprint (outside the slide = background)."""
        return box_fractions(self.mask, coords0, tile_size0, self.plan.downsample)

    def ink_fractions(self, coords0: np.ndarray, tile_size0: float) -> np.ndarray | None:
        """Share of each footprint that is thumbnail tissue outside the ink zone (None: no ink)."""
        if self.ink_gate is None:
            return None
        return box_fractions(self.ink_gate, coords0, tile_size0, self.stats_downsample)

    def ink_zone_on_image(self) -> np.ndarray | None:
        """The ink zone resampled (nearest) onto :attr:`image` (for the QC picture)."""
        if self.ink_zone is None:
            return None
        h, w = self.mask.shape
        r = self.plan.downsample / self.stats_downsample
        zh, zw = self.ink_zone.shape
        yi = np.minimum(((np.arange(h) + 0.5) * r).astype(np.int64), zh - 1)
        xi = np.minimum(((np.arange(w) + 0.5) * r).astype(np.int64), zw - 1)
        return self.ink_zone[yi][:, xi]


def disk_dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation by a disk of ``radius`` px (skimage ``disk``: dy² + dx² <= r²), in numpy:
    per row offset dy a horizontal run of half-width floor(sqrt(r² - dy²)) via a cumulative sum."""
    if radius <= 0 or not mask.any():
        return mask.copy()
    h, w = mask.shape
    r = int(radius)
    csum = np.zeros((h, w + 2 * r + 1), np.int32)
    np.cumsum(np.pad(mask, ((0, 0), (r, r))), axis=1, out=csum[:, 1:])
    runs: dict[int, np.ndarray] = {}
    out = np.zeros_like(mask, dtype=bool)
    for dy in range(-r, r + 1):
        half = int(math.isqrt(r * r - dy * dy))
        if half not in runs:  # any set pixel within +-half columns
            runs[half] = (csum[:, r + half + 1 : r + half + 1 + w] - csum[:, r - half : r - half + w]) > 0
        row = runs[half]
        if dy >= 0:
            out[dy:] |= row[: h - dy] if dy else row
        else:
            out[:dy] |= row[-dy:]
    return out


def tissue_map(reader: SlideReader, plan: ReadPlan, cfg: TilingConfig) -> TissueMap:
    """Read the decision image (:func:`plan_mask`) and evaluate ``cfg``'s foreground rule and pen
    filter on its pixels (no morphology: the mask fraction estimates the per-pixel rule).

    The slide statistics (Otsu saturation, glass colour) come from the thumbnail they always came
    from (:func:`stats_thumbnail_size`; a second, small read when that is not the decision image),
    so the pixel checks apply exactly the per-tile rule of before, and a glass colour taken at a
    finer resolution (brighter: noise) does not shift the od threshold."""
    mplan = plan_mask(reader, plan, cfg.thumbnail_size)
    image = reader.read_level(mplan.level, mplan.factor)
    t_level, t_factor = reader.thumbnail_plan(stats_thumbnail_size(reader.dimensions, plan, cfg.thumbnail_size))
    thumb = image if (t_level, t_factor) == (mplan.level, mplan.factor) else reader.read_level(t_level, t_factor)
    stats = slide_stats(thumb)
    stats_ds = reader.level_downsamples[t_level] * t_factor
    plain = replace(cfg, pen_filter=False)
    mask = foreground_mask(image, plain, stats)
    zone = gate = None
    if cfg.pen_filter:
        ink = pen_mask(image)
        mask &= ~ink
        ink_t = ink if thumb is image else pen_mask(thumb)
        if ink_t.any():
            zone = disk_dilate(ink_t, INK_ZONE_PX)
            gate = (mask if thumb is image else foreground_mask(thumb, plain, stats)) & ~zone
    return TissueMap(image=image, mask=mask, plan=mplan, stats=stats, stats_downsample=stats_ds, ink_zone=zone,
                     ink_gate=gate)


# --------------------------------------------------------------------------------------------------
# Reading tiles (shared by the stage, the round-trip test and the benchmark)
# --------------------------------------------------------------------------------------------------
def _resize(pixels: np.ndarray, order: str, plan: ReadPlan) -> np.ndarray:
    resample = Image.Resampling.BOX if plan.read_size > plan.patch_size else Image.Resampling.BICUBIC
    return np.asarray(pil_rgb(pixels, order).resize((plan.patch_size, plan.patch_size), resample))


def read_tile_raw(reader: SlideReader, coord: Sequence[int], plan: ReadPlan) -> tuple[np.ndarray, str]:
    """The stored pixels of the tile at ``coord`` as ``(pixels, channel order)`` without a conversion
    where the read is native (see :meth:`stainshift.io.SlideReader.read_region_raw`)."""
    pixels, order = reader.read_region_raw(int(coord[0]), int(coord[1]), plan.level, plan.read_size, plan.read_size)
    if plan.read_size == plan.patch_size:
        return pixels, order
    return _resize(pixels, order, plan), "RGB"


def read_tile(reader: SlideReader, coord: Sequence[int], plan: ReadPlan) -> np.ndarray:
    """The stored pixels of the tile at level-0 ``coord`` under ``plan`` ((S, S, 3) uint8)."""
    region = reader.read_region(int(coord[0]), int(coord[1]), plan.level, plan.read_size, plan.read_size)
    if plan.read_size == plan.patch_size:
        return region
    return _resize(region, "RGB", plan)


def tissue_fraction(tile: np.ndarray, cfg: TilingConfig, stats: SlideStats | None) -> float:
    """Foreground share of a tile (RGB, a view is fine); tiles >= 128 px are measured on every 2nd
    pixel (4x cheaper, a sampling error far below the 1/patch granularity that matters for
    min_tissue_fraction)."""
    sample = tile[::2, ::2] if min(tile.shape[:2]) >= 128 else tile
    return float(foreground_mask(sample, cfg, stats).mean())


_WORKER: dict[str, Any] = {}


def _worker_init(path: str, mpp: float | None) -> None:
    _WORKER["reader"] = open_slide(path, mpp)


STAGES = ("read", "resize", "check", "encode")


def _process_batch(coords: np.ndarray, fracs: np.ndarray, check: np.ndarray, plan: ReadPlan, cfg: TilingConfig,
                   stats: SlideStats, reader: SlideReader | None = None
                   ) -> tuple[list[tuple[float, bytes | None]], dict[str, float]]:
    """Read, (check,) encode one batch: ``(tissue_fraction, encoded bytes or None)`` per tile and
    the seconds spent per stage. Tiles with ``check`` get the per-pixel rule; the others were
    decided by the mask and keep its fraction."""
    reader = reader or _WORKER["reader"]
    codec = CodecSpec(cfg.codec, cfg.jpeg_quality)
    thr = cfg.min_tissue_fraction
    resize = plan.read_size != plan.patch_size
    clock = time.perf_counter
    t = dict.fromkeys(STAGES, 0.0)
    out: list[tuple[float, bytes | None]] = []
    for c, frac, chk in zip(coords, fracs, check):
        t0 = clock()
        pixels, order = reader.read_region_raw(int(c[0]), int(c[1]), plan.level, plan.read_size, plan.read_size)
        t1 = clock()
        t["read"] += t1 - t0
        if resize:
            pixels, order = _resize(pixels, order, plan), "RGB"
            t0, t1 = t1, clock()
            t["resize"] += t1 - t0
        if chk:
            frac = tissue_fraction(rgb_view(pixels, order), cfg, stats)
            t0, t1 = t1, clock()
            t["check"] += t1 - t0
            if frac < thr:
                out.append((frac, None))
                continue
        data = encode_tile(pixels, codec, order)
        t["encode"] += clock() - t1
        out.append((float(frac), data))
    return out, t


# --------------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------------
@dataclass
class TilingResult:
    """What :func:`tile_slide` did (also logged; counts and the decision are in the store's attrs).

    ``n_candidates``: grid tiles the mask did not drop; ``n_checked``: of those, the ones within the
    margin (pixel-checked); ``n_read``: tiles read (a ``max_tiles`` run stops early);
    ``stages``: seconds per stage -- ``open``, ``mask``, ``read``, ``resize``, ``check``, ``encode``
    (summed over workers when there are several), ``write`` (appending, shards, finishing the
    store), ``qc``, ``wait`` (the main process waiting for workers), ``total``.
    """

    store: str
    n_grid: int
    n_candidates: int
    n_read: int
    n_kept: int
    plan: dict[str, Any]
    seconds: float
    tiles_per_s: float           # tiles read per second
    thumbnail_downsample: float  # the tissue-decision image's downsample (kept name)
    kept_per_s: float = 0.0      # kept tiles per second of the whole call (the benchmarks' figure)
    n_checked: int = 0
    mask: dict[str, Any] = field(default_factory=dict)
    stages: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def slide_label_to_int(label: Any, class_names: Sequence[str] | None, slide: str) -> int:
    """A sheet's slide/ROI label as a class id: an integer, or an index into ``class_names``."""
    if label is None or (isinstance(label, float) and math.isnan(label)) or str(label).strip() == "":
        return -1
    text = str(label).strip()
    try:
        return int(float(text))
    except ValueError:
        pass
    if class_names and text in class_names:
        return list(class_names).index(text)
    raise TilingError(
        f"slide {slide}: label {text!r} is not an integer; list the class names in tiling.class_names "
        f"(got {list(class_names or [])})"
    )


def _executor(cfg: TilingConfig, path: str, mpp: float | None) -> Executor | None:
    if cfg.workers <= 1:
        return None
    if cfg.parallel == "thread":
        return ThreadPoolExecutor(cfg.workers)
    import multiprocessing as mp

    # fork on Linux: spawn/forkserver re-import the __main__ file in every worker, which for a
    # Snakemake `script:` is the whole job (workers crashed). Workers only use openslide/tifffile,
    # numpy and imagecodecs and open their own reader, so forking the parent is safe here.
    ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    ex = ProcessPoolExecutor(cfg.workers, mp_context=ctx, initializer=_worker_init, initargs=(path, mpp))
    ex.submit(int)  # start the workers now: they open the slide while the parent computes the mask
    return ex


Batch = tuple[np.ndarray, np.ndarray, np.ndarray]  # level-0 coords, mask fractions, check flags
BatchResult = tuple[list[tuple[float, bytes | None]], dict[str, float]]


def _run_batches(batches: list[Batch], plan: ReadPlan, cfg: TilingConfig, stats: SlideStats,
                 reader: SlideReader, executor: Executor | None) -> Iterator[BatchResult]:
    """Results per batch, in batch order, with a bounded number of batches in flight."""
    if executor is None:
        for b in batches:
            yield _process_batch(*b, plan, cfg, stats, reader)
        return
    thread = isinstance(executor, ThreadPoolExecutor)
    window = max(2, 4 * cfg.workers)
    pending: list[Future] = []
    it = iter(batches)

    def submit() -> bool:
        b = next(it, None)
        if b is None:
            return False
        if thread:
            pending.append(executor.submit(_process_batch, *b, plan, cfg, stats, reader))
        else:
            pending.append(executor.submit(_process_batch, *b, plan, cfg, stats))
        return True

    for _ in range(window):
        if not submit():
            break
    try:
        while pending:
            result = pending.pop(0).result()
            submit()
            yield result
    finally:
        for f in pending:
            f.cancel()


def tile_slide(
    slide_path: str | os.PathLike,
    out_store: str | os.PathLike,
    config: Mapping[str, Any] | TilingConfig,
    *,
    slide_id: str,
    center: str = "",
    patient: str = "",
    split: str = "",
    label: Any = None,
    annotation: str | os.PathLike | None = None,
    mpp: float | None = None,
    qc_png: str | os.PathLike | None = None,
    progress: bool = True,
) -> TilingResult:
    """Tile one slide into a patch store (atomic) and optionally write its QC picture.

    ``mpp`` (the sample sheet's ``mpp`` column in the workflow) overrides the file's level-0 µm/px;
    attrs ``mpp_source`` records which one was used (``sheet`` or ``file``)."""
    clock = time.perf_counter
    t_start = clock()
    stages: dict[str, float] = dict.fromkeys(("open", "mask", *STAGES, "write", "wait", "qc"), 0.0)
    cfg = config if isinstance(config, TilingConfig) else TilingConfig.from_dict(config)
    slide_path = Path(slide_path)
    notes: list[str] = []
    with ExitStack() as stack:
        reader = stack.enter_context(open_slide(slide_path, mpp))
        plan = plan_read(reader, cfg.target_mpp, cfg.patch_size, cfg.stride, cfg.allow_upsample)
        log.info("%s: %s, levels %s, mpp %.4f -> read plan %s", slide_id, reader.backend,
                 reader.level_dimensions, plan.mpp_level0, asdict(plan))
        if reader.grayscale:
            msg = (f"{slide_id}: {slide_path} is a single-channel (grey) image, not an H&E colour image; tiled "
                   "as grey RGB, but the tissue filter, stain normalization and H&E augmentation assume H&E")
            log.warning(msg)
            notes.append(msg)
        dims0 = reader.dimensions
        grid = tile_grid(dims0, plan)
        executor = _executor(cfg, str(slide_path), mpp)
        if executor is not None:
            stack.callback(executor.shutdown, wait=True, cancel_futures=True)
        t0 = clock()
        stages["open"] = t0 - t_start
        tmap = tissue_map(reader, plan, cfg)
        mplan, stats = tmap.plan, tmap.stats
        mfrac = tmap.fractions(grid, plan.tile_size0)
        thr, margin = cfg.min_tissue_fraction, cfg.tissue_margin
        cand = mfrac >= thr - margin
        ink_frac = tmap.ink_fractions(grid, plan.tile_size0)
        n_ink_dropped = 0
        if ink_frac is not None:
            ink_drop = cand & (ink_frac < INK_ZONE_FACTOR * thr)
            n_ink_dropped = int(ink_drop.sum())
            cand &= ~ink_drop
        cand_idx = np.flatnonzero(cand)
        check = (mfrac < thr + margin) if margin > 0 else np.zeros(len(grid), bool)
        stages["mask"] = clock() - t0
        if mplan.px_per_tile < MASK_MIN_PX:
            msg = (f"{slide_id}: a tile side covers only {mplan.px_per_tile:.1f} px of the tissue-decision image "
                   f"(level {mplan.level}, downsample {mplan.downsample:g}; wanted >= {MASK_MIN_PX}: "
                   f"tiling.thumbnail_size set too small, or the {MASK_MAX_SIDE}-px cap); mask fractions are "
                   f"coarse, a larger tiling.tissue_margin sends more tiles to the pixel check")
            log.warning(msg)
            notes.append(msg)
        n_checked_cand = int(check[cand_idx].sum())
        log.info("%s: grid %d tiles; mask at level %d / %d (downsample %g, %.1f px per tile side): %d candidates, "
                 "%d within the margin %.2f of %.2f (pixel-checked)", slide_id, len(grid), mplan.level, mplan.factor,
                 mplan.downsample, mplan.px_per_tile, len(cand_idx), n_checked_cand, margin, thr)
        if cfg.max_tiles is not None:
            rng = np.random.default_rng(cfg.seed)
            order = cand_idx[rng.permutation(len(cand_idx))]
        else:
            order = cand_idx
        # labels: the annotation is parsed (and checked) before any tile is read
        if annotation:
            from stainshift.annotations import load_annotation

            raster = load_annotation(annotation, dims0, tile_size0=plan.tile_size0,
                                     exclude_groups=cfg.exclude_groups, positive_values=cfg.mask_positive_values)
            for msg in raster.warnings:  # odd geometry: a defined result, said on the console and in the log
                log.warning(msg)
                notes.append(msg)
            slide_lab = None
        else:
            raster = None
            slide_lab = slide_label_to_int(label, cfg.class_names, slide_id)

        def labels_of(c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            if raster is not None:
                return raster.tile_labels(c, plan.tile_size0, cfg.label_threshold)
            return np.full(len(c), slide_lab, dtype=np.int64), np.full(len(c), np.nan, dtype=np.float32)

        decision = {
            "rule": "mask fraction >= t + m kept, < t - m dropped, else per-pixel check (stainshift.tiling docstring)",
            "tissue_fraction": "the decision's: mask fraction, or per-pixel fraction for pixel-checked tiles",
            "mask_level": mplan.level, "mask_reduce": mplan.factor, "mask_downsample": mplan.downsample,
            "mask_px_per_tile": mplan.px_per_tile, "mask_shape": list(mplan.shape),
            "stats_downsample": tmap.stats_downsample, "ink_zone_px": INK_ZONE_PX if tmap.ink_zone is not None else 0,
            "n_ink_gate_dropped": n_ink_dropped,
            "min_tissue_fraction": thr, "tissue_margin": margin,
            "n_candidates": int(len(cand_idx)), "n_within_margin": n_checked_cand,
        }
        stat = slide_path.stat()
        attrs = {
            "slide_id": slide_id, "center": center, "patient": patient, "split": split,
            "source_path": str(slide_path), "source_size": stat.st_size, "source_mtime": stat.st_mtime,
            "mpp_level0": plan.mpp_level0, "mpp_source": "file" if mpp is None else "sheet",  # `mpp`: the sheet's column
            "target_mpp": cfg.target_mpp, "read_level": plan.level,
            "downsample": plan.downsample, "patch_size": cfg.patch_size, "stride": cfg.step,
            "filter": cfg.filter, "filter_params": {**cfg.filter_params(), "otsu_saturation": stats.otsu,
                                                    "glass_rgb": list(stats.glass)}, "seed": cfg.seed,
            "read_plan": asdict(plan), "backend": reader.backend, "slide_dimensions": list(dims0),
            "annotation": str(annotation) if annotation else None, "slide_label": label,
            "label_threshold": cfg.label_threshold, "max_tiles": cfg.max_tiles,
            "n_grid": int(len(grid)), "n_candidates": int(len(cand_idx)), "tissue_decision": decision,
        }
        batch = 16
        batches = [(grid[idx], mfrac[idx], check[idx]) for idx in (order[i : i + batch] for i in range(0, len(order), batch))]
        sampled: list[tuple[int, float, bytes]] = []  # max_tiles mode: held until the sample is complete
        out_coords: list[np.ndarray] = []
        out_labels: list[np.ndarray] = []
        rejected: list[int] = []  # grid indices read and below the threshold (QC picture)
        n_read = n_checked = 0
        tw = clock()
        with StoreWriter(out_store, patch_size=cfg.patch_size, attrs=attrs, codec=cfg.codec,
                         jpeg_quality=cfg.jpeg_quality, shard_tiles=cfg.shard_tiles) as writer:
            bar = None
            if progress:
                from tqdm.auto import tqdm

                bar = tqdm(total=len(order), desc=f"tile {slide_id}", unit="tile", mininterval=1.0)
            stages["write"] += clock() - tw
            try:
                t_wait = clock()
                for b_i, (results, t_batch) in enumerate(_run_batches(batches, plan, cfg, stats, reader, executor)):
                    t_got = clock()
                    if executor is not None:  # in-process batches: their time is in read/check/encode
                        stages["wait"] += t_got - t_wait
                    for k, v in t_batch.items():
                        stages[k] += v
                    n_read += len(results)
                    n_checked += int(batches[b_i][2].sum())
                    if bar is not None:
                        bar.update(len(results))
                    hits = [(int(order[b_i * batch + j]), frac, data) for j, (frac, data) in enumerate(results)
                            if data is not None]
                    rejected.extend(int(order[b_i * batch + j]) for j, (_, d) in enumerate(results) if d is None)
                    if cfg.max_tiles is not None:
                        sampled.extend(hits)
                        if len(sampled) >= cfg.max_tiles:
                            sampled = sampled[: cfg.max_tiles]
                            break
                    elif hits:  # all tiles: grid order already, stream to disk (memory stays flat)
                        c = grid[[h[0] for h in hits]]
                        lab, lf = labels_of(c)
                        for (_, frac, data), xy, la, f in zip(hits, c, lab, lf):
                            writer.append_encoded(data, xy, frac, int(la), float(f))
                        out_coords.append(c)
                        out_labels.append(lab)
                    t_wait = clock()
                    stages["write"] += t_wait - t_got
                if bar is not None:
                    bar.close()
            finally:
                if executor is not None:
                    executor.shutdown(wait=True, cancel_futures=True)
            tw = clock()
            if sampled:
                sampled.sort(key=lambda t: t[0])
                c = grid[[h[0] for h in sampled]]
                lab, lf = labels_of(c)
                for (_, frac, data), xy, la, f in zip(sampled, c, lab, lf):
                    writer.append_encoded(data, xy, frac, int(la), float(f))
                out_coords.append(c)
                out_labels.append(lab)
            n = len(writer)
            writer.attrs["n_read"] = n_read
            writer.attrs["tissue_decision"] = {**decision, "n_checked": n_checked}
            if n == 0:
                msg = f"{slide_id}: no tile passed the foreground filter ({slide_path}); writing an empty store"
                warnings.warn(msg, stacklevel=2)
                log.warning(msg)
                notes.append(msg)
        stages["write"] += clock() - tw
        coords = np.concatenate(out_coords) if out_coords else np.zeros((0, 2), np.int64)
        labels = np.concatenate(out_labels) if out_labels else np.zeros(0, np.int64)

        if qc_png is not None:
            from stainshift.qc import slide_qc_png

            tq = clock()
            capped = None
            if cfg.max_tiles is not None:  # candidates neither kept nor rejected: unread or over the cap
                done = {h[0] for h in sampled} | set(rejected)
                capped = grid[np.asarray([i for i in order.tolist() if i not in done], np.int64)]
            slide_qc_png(qc_png, tmap.image, mplan.downsample, tmap.mask, coords, plan.tile_size0, labels,
                         title=f"{slide_id}: tissue-decision image, level {mplan.level} (downsample "
                               f"{mplan.downsample:g}{f', reduced /{mplan.factor}' if mplan.factor > 1 else ''})",
                         excluded=tmap.ink_zone_on_image(), capped=capped,
                         rejected=grid[np.asarray(rejected, np.int64)], max_tiles=cfg.max_tiles,
                         class_names=cfg.class_names, mpp0=plan.mpp_level0)
            stages["qc"] = clock() - tq
    seconds = clock() - t_start
    stages["total"] = seconds
    result = TilingResult(
        store=str(out_store), n_grid=int(len(grid)), n_candidates=int(len(cand_idx)), n_read=n_read, n_kept=n,
        plan=asdict(plan), seconds=seconds, tiles_per_s=n_read / seconds if seconds > 0 else 0.0,
        kept_per_s=n / seconds if seconds > 0 else 0.0,
        thumbnail_downsample=mplan.downsample, n_checked=n_checked, mask={**decision, "n_checked": n_checked},
        stages={k: round(v, 4) for k, v in stages.items()}, warnings=notes,
    )
    log.info("%s: kept %d of %d read tiles (%d pixel-checked) in %.2f s -> %s; stages %s", slide_id, n, n_read,
             n_checked, seconds, out_store, result.stages)
    return result
