"""Reading, resizing, checking and encoding tiles (shared by the stage, the round-trip test and the
benchmark); the worker side of the parallel stage."""
from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np
from PIL import Image

from stainshift.io import SlideReader, open_slide, pil_rgb, rgb_view
from stainshift.store import CodecSpec, encode_tile

from .config import ReadPlan, TilingConfig
from .filters import SlideStats, foreground_mask


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
