"""The tile stage: level choice, grid, foreground filters, tile selection, labels -> one patch store.

Read plan: tiles are ``patch_size`` px at ``target_mpp``. The level read is the coarsest native
level that is not coarser than the target (the "nearest finer level", 1 % tolerance for scanner
rounding, e.g. 0.499 vs 0.5 µm/px). When that level is not the target, a region of
``round(patch_size * scale)`` px is read and reduced with PIL's BOX filter (area averaging: every
output pixel is the mean of the input pixels it covers, no ringing). Upsampling (target finer than
level 0) is refused unless ``allow_upsample`` is set, and then recorded. The plan (level, read size,
effective mpp, filter) goes into the store's attrs.

Foreground (seed 001, App. A; seed 002): masks are computed on a thumbnail first (with a light
morphological clean-up) to pick candidate tiles, then per tile at full tile resolution to get
``tissue_fraction``; tiles with fraction >= ``min_tissue_fraction`` are kept.

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
worker opens the slide once, reads, resizes, filters and JPEG/zstd-encodes its tiles, and the main
process only appends the encoded bytes to the store.
"""
from __future__ import annotations

import logging
import math
import os
import sys
import time
import warnings
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
from PIL import Image

from stainshift.io import SlideReader, open_slide
from stainshift.store import CodecSpec, StoreWriter, encode_tile

__all__ = [
    "TilingConfig", "ReadPlan", "plan_read", "tile_grid", "hsv_mask", "otsu_threshold", "pen_mask",
    "SlideStats", "slide_stats", "od_mask",
    "foreground_mask", "thumbnail_mask", "read_tile", "tile_slide", "TilingError", "RESIZE_FILTER",
]

log = logging.getLogger("stainshift.tiling")
RESIZE_FILTER = "PIL.Image.BOX (area average)"
MPP_TOLERANCE = 0.01
# A grid tile is read only if its thumbnail-mask share is >= PREFILTER_FACTOR * min_tissue_fraction
# (the thumbnail mask is closed/filled, so it over-covers tissue; on a 6144² real-pixel slide 0.8
# reads 20 % more tiles than are kept and loses none of them, 0.5 reads 32 % more).
PREFILTER_FACTOR = 0.8
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
            "min_tissue_fraction": self.min_tissue_fraction,
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


def otsu_threshold(rgb: np.ndarray) -> float:
    """Otsu threshold (seed 002) of the HSV saturation of ``rgb``; foreground is more saturated.

    Never below 0.05, so a slide that is all glass does not split its noise into "tissue"."""
    from skimage.filters import threshold_otsu

    _, sat, _ = rgb_to_hsv(rgb)
    if float(sat.max() - sat.min()) < 1e-6:
        return max(0.05, float(sat.max()))
    return max(0.05, float(threshold_otsu(sat)))


@dataclass(frozen=True)
class SlideStats:
    """Slide-level quantities from the thumbnail that per-tile filters reuse."""

    otsu: float
    glass: tuple[float, float, float]


def slide_stats(thumb: np.ndarray) -> SlideStats:
    """Otsu saturation threshold and glass colour (99th percentile per channel, >= 220) of a thumbnail."""
    glass = np.clip(np.percentile(thumb.reshape(-1, 3), 99, axis=0), 220, 255)
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
    sat = np.zeros((h + 1, w + 1), dtype=np.int64)
    sat[1:, 1:] = mask.astype(np.int64).cumsum(0).cumsum(1)
    x0 = np.floor(coords0[:, 0] / ds).astype(np.int64)
    y0 = np.floor(coords0[:, 1] / ds).astype(np.int64)
    side = max(1, int(round(size0 / ds)))
    xa, xb = np.clip(x0, 0, w), np.clip(x0 + side, 0, w)
    ya, yb = np.clip(y0, 0, h), np.clip(y0 + side, 0, h)
    s = sat[yb, xb] - sat[ya, xb] - sat[yb, xa] + sat[ya, xa]
    return s / float(side * side)


# --------------------------------------------------------------------------------------------------
# Reading tiles (shared by the stage, the round-trip test and the benchmark)
# --------------------------------------------------------------------------------------------------
def read_tile(reader: SlideReader, coord: Sequence[int], plan: ReadPlan) -> np.ndarray:
    """The stored pixels of the tile at level-0 ``coord`` under ``plan`` ((S, S, 3) uint8)."""
    region = reader.read_region(int(coord[0]), int(coord[1]), plan.level, plan.read_size, plan.read_size)
    if plan.read_size == plan.patch_size:
        return region
    resample = Image.Resampling.BOX if plan.read_size > plan.patch_size else Image.Resampling.BICUBIC
    return np.asarray(Image.fromarray(region).resize((plan.patch_size, plan.patch_size), resample))


def tissue_fraction(tile: np.ndarray, cfg: TilingConfig, stats: SlideStats | None) -> float:
    """Foreground share of a tile; tiles >= 128 px are measured on every 2nd pixel (4x cheaper,
    a sampling error far below the 1/patch granularity that matters for min_tissue_fraction)."""
    sample = tile[::2, ::2] if min(tile.shape[:2]) >= 128 else tile
    return float(foreground_mask(sample, cfg, stats).mean())


_WORKER: dict[str, Any] = {}


def _worker_init(path: str, mpp: float | None) -> None:
    _WORKER["reader"] = open_slide(path, mpp)


def _process_batch(coords: np.ndarray, plan: ReadPlan, cfg: TilingConfig, stats: SlideStats | None,
                   reader: SlideReader | None = None) -> list[tuple[float, bytes | None]]:
    """Read, filter and encode one batch; (tissue_fraction, encoded bytes or None) per tile."""
    reader = reader or _WORKER["reader"]
    codec = CodecSpec(cfg.codec, cfg.jpeg_quality)
    out = []
    for c in coords:
        tile = read_tile(reader, c, plan)
        frac = tissue_fraction(tile, cfg, stats)
        out.append((frac, encode_tile(tile, codec) if frac >= cfg.min_tissue_fraction else None))
    return out


# --------------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------------
@dataclass
class TilingResult:
    """What :func:`tile_slide` did (also logged and stored in attrs)."""

    store: str
    n_grid: int
    n_candidates: int
    n_read: int
    n_kept: int
    plan: dict[str, Any]
    seconds: float
    tiles_per_s: float
    thumbnail_downsample: float
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
    return ProcessPoolExecutor(cfg.workers, mp_context=ctx, initializer=_worker_init, initargs=(path, mpp))


def _run_batches(batches: list[np.ndarray], plan: ReadPlan, cfg: TilingConfig, stats: SlideStats | None,
                 reader: SlideReader, executor: Executor | None) -> Iterator[list[tuple[float, bytes | None]]]:
    """Results per batch, in batch order, with a bounded number of batches in flight."""
    if executor is None:
        for b in batches:
            yield _process_batch(b, plan, cfg, stats, reader)
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
            pending.append(executor.submit(_process_batch, b, plan, cfg, stats, reader))
        else:
            pending.append(executor.submit(_process_batch, b, plan, cfg, stats))
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
    """Tile one slide into a patch store (atomic) and optionally write its QC thumbnail."""
    from tqdm.auto import tqdm

    from stainshift.annotations import load_annotation

    t_start = time.perf_counter()
    cfg = config if isinstance(config, TilingConfig) else TilingConfig.from_dict(config)
    slide_path = Path(slide_path)
    notes: list[str] = []
    with open_slide(slide_path, mpp) as reader:
        plan = plan_read(reader, cfg.target_mpp, cfg.patch_size, cfg.stride, cfg.allow_upsample)
        log.info("%s: %s, levels %s, mpp %.4f -> read plan %s", slide_id, reader.backend,
                 reader.level_dimensions, plan.mpp_level0, asdict(plan))
        dims0 = reader.dimensions
        grid = tile_grid(dims0, plan)
        thumb_size = cfg.thumbnail_size or int(np.clip(max(dims0) * 8 / plan.tile_size0, 512, 4096))
        thumb, tds = reader.thumbnail(thumb_size)
        stats = slide_stats(thumb)
        tmask = thumbnail_mask(thumb, cfg, stats)
        thumb_frac = box_fractions(tmask, grid, plan.tile_size0, tds)
        prefilter = PREFILTER_FACTOR * cfg.min_tissue_fraction
        cand_idx = np.flatnonzero(thumb_frac >= prefilter if prefilter > 0 else np.ones(len(grid), bool))
        log.info("%s: grid %d tiles, %d candidates after the thumbnail filter (%.3f px/thumb px)",
                 slide_id, len(grid), len(cand_idx), tds)
        if cfg.max_tiles is not None:
            rng = np.random.default_rng(cfg.seed)
            order = cand_idx[rng.permutation(len(cand_idx))]
        else:
            order = cand_idx
        # labels: the annotation is parsed (and checked) before any tile is read
        if annotation:
            raster = load_annotation(annotation, dims0, tile_size0=plan.tile_size0,
                                     exclude_groups=cfg.exclude_groups, positive_values=cfg.mask_positive_values)
            slide_lab = None
        else:
            raster = None
            slide_lab = slide_label_to_int(label, cfg.class_names, slide_id)

        def labels_of(c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            if raster is not None:
                return raster.tile_labels(c, plan.tile_size0, cfg.label_threshold)
            return np.full(len(c), slide_lab, dtype=np.int64), np.full(len(c), np.nan, dtype=np.float32)

        stat = slide_path.stat()
        attrs = {
            "slide_id": slide_id, "center": center, "patient": patient, "split": split,
            "source_path": str(slide_path), "source_size": stat.st_size, "source_mtime": stat.st_mtime,
            "mpp_level0": plan.mpp_level0, "target_mpp": cfg.target_mpp, "read_level": plan.level,
            "downsample": plan.downsample, "patch_size": cfg.patch_size, "stride": cfg.step,
            "filter": cfg.filter, "filter_params": {**cfg.filter_params(), "otsu_saturation": stats.otsu,
                                                    "glass_rgb": list(stats.glass)}, "seed": cfg.seed,
            "read_plan": asdict(plan), "backend": reader.backend, "slide_dimensions": list(dims0),
            "annotation": str(annotation) if annotation else None, "slide_label": label,
            "label_threshold": cfg.label_threshold, "max_tiles": cfg.max_tiles,
            "n_grid": int(len(grid)), "n_candidates": int(len(cand_idx)),
        }
        batch = 16
        batches = [grid[order[i : i + batch]] for i in range(0, len(order), batch)]
        sampled: list[tuple[int, float, bytes]] = []  # max_tiles mode: held until the sample is complete
        out_coords: list[np.ndarray] = []
        out_labels: list[np.ndarray] = []
        n_read = 0
        with StoreWriter(out_store, patch_size=cfg.patch_size, attrs=attrs, codec=cfg.codec,
                         jpeg_quality=cfg.jpeg_quality, shard_tiles=cfg.shard_tiles) as writer:
            executor = _executor(cfg, str(slide_path), mpp)
            try:
                bar = tqdm(total=len(order), desc=f"tile {slide_id}", unit="tile", disable=not progress, mininterval=1.0)
                for b_i, results in enumerate(_run_batches(batches, plan, cfg, stats, reader, executor)):
                    n_read += len(results)
                    bar.update(len(results))
                    hits = [(int(order[b_i * batch + j]), frac, data) for j, (frac, data) in enumerate(results)
                            if data is not None]
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
                bar.close()
            finally:
                if executor is not None:
                    executor.shutdown(wait=True, cancel_futures=True)
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
            if n == 0:
                msg = f"{slide_id}: no tile passed the foreground filter ({slide_path}); writing an empty store"
                warnings.warn(msg, stacklevel=2)
                log.warning(msg)
                notes.append(msg)
        coords = np.concatenate(out_coords) if out_coords else np.zeros((0, 2), np.int64)
        labels = np.concatenate(out_labels) if out_labels else np.zeros(0, np.int64)

        if qc_png is not None:
            from stainshift.qc import slide_qc_png

            slide_qc_png(qc_png, thumb, tds, tmask, coords, plan.tile_size0, labels, title=slide_id)
    seconds = time.perf_counter() - t_start
    result = TilingResult(
        store=str(out_store), n_grid=int(len(grid)), n_candidates=int(len(cand_idx)), n_read=n_read, n_kept=n,
        plan=asdict(plan), seconds=seconds, tiles_per_s=n_read / seconds if seconds > 0 else 0.0,
        thumbnail_downsample=tds, warnings=notes,
    )
    log.info("%s: kept %d of %d read tiles in %.1f s -> %s", slide_id, n, n_read, seconds, out_store)
    return result
