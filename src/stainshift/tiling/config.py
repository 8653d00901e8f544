"""Tiling settings, errors and the read plan (which level, read size and stride give ``target_mpp``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from stainshift.io import SlideReader

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
    parallel: str = "thread"
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
        """Settings from the config's ``tiling`` section; unknown keys raise TilingError naming them."""
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
        """Grid step in read pixels: the stride, else the patch size."""
        return int(self.stride or self.patch_size)

    def filter_params(self) -> dict[str, Any]:
        """The foreground-filter settings (recorded in the store attrs)."""
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
