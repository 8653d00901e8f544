"""The tissue-decision mask: one low-resolution image of the slide, the per-tile mask fractions, the
ink zone, and which tiles need a per-pixel check (within the margin of the threshold)."""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from stainshift.io import SlideReader

from .config import INK_ZONE_PX, MASK_MAX_SIDE, MASK_MIN_PX, MASK_REDUCE_PX, MPP_TOLERANCE, ReadPlan, TilingConfig
from .filters import SlideStats, box_fractions, foreground_mask, pen_mask, slide_stats


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
        """Level-0 pixels per mask pixel."""
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
