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
Parallelism: ``workers`` > 1 uses ``workers`` threads (``parallel: thread``, default) or a process
pool; each worker reads, resizes, checks and JPEG/zstd-encodes its tiles (OpenSlide, the tile decoder
and the encoders release the GIL), the main thread appends the encoded bytes to the store. Threads
are the default by measurement (``benchmarks/bench_tiling.py``, 16384² slide, 2 cores: 2-worker
speed-up 1.77-1.83x with threads, 1.63-1.68x with processes; tree RSS 80 vs 130 MB) and do not
fork a parent that may hold torch or CUDA state. With processes each worker opens the slide once
and the main process is one of the ``workers`` (a pool of ``workers − 1``): it appends the encoded
bytes to the store and, whenever the oldest batch in flight is not ready, processes the next batch
itself, so ``workers`` processes on ``workers`` cores never wait on each other. Batches are taken and written
in order: the store does not depend on the worker count.

Pixel path per tile: the reader's raw buffer (OpenSlide: opaque premultiplied BGRX, see
:mod:`stainshift.io`) goes to the JPEG encoder as is -- no RGBA -> RGB copy; a pixel check looks at
an RGB view of the same buffer. Only a resized read (target mpp not a native level) or a tile with
transparent pixels makes one RGB array.
"""
from __future__ import annotations

from .config import (
    DEFAULT_TISSUE_MARGIN,
    FILTER_PARTS,
    FILTERS,
    HUE_CONVENTIONS,
    INK_ZONE_FACTOR,
    INK_ZONE_PX,
    MASK_MAX_SIDE,
    MASK_MIN_PX,
    MASK_REDUCE_PX,
    MPP_TOLERANCE,
    RESIZE_FILTER,
    ReadPlan,
    TilingConfig,
    TilingError,
    plan_read,
    tile_grid,
)
from .filters import (
    SlideStats,
    box_fractions,
    foreground_mask,
    grey,
    hsv_mask,
    hsv_saturation,
    hue_bounds_degrees,
    od_mask,
    otsu_threshold,
    pen_mask,
    rgb_to_hsv,
    slide_stats,
    thumbnail_mask,
)
from .reading import STAGES, read_tile, read_tile_raw, tissue_fraction
from .stage import Batch, BatchResult, TilingResult, slide_label_to_int, tile_slide
from .tissue import MaskPlan, TissueMap, disk_dilate, plan_mask, stats_thumbnail_size, tissue_map

__all__ = [
    "Batch",
    "BatchResult",
    "DEFAULT_TISSUE_MARGIN",
    "FILTERS",
    "FILTER_PARTS",
    "HUE_CONVENTIONS",
    "INK_ZONE_FACTOR",
    "INK_ZONE_PX",
    "MASK_MAX_SIDE",
    "MASK_MIN_PX",
    "MASK_REDUCE_PX",
    "MPP_TOLERANCE",
    "MaskPlan",
    "RESIZE_FILTER",
    "ReadPlan",
    "STAGES",
    "SlideStats",
    "TilingConfig",
    "TilingError",
    "TilingResult",
    "TissueMap",
    "box_fractions",
    "disk_dilate",
    "foreground_mask",
    "grey",
    "hsv_mask",
    "hsv_saturation",
    "hue_bounds_degrees",
    "od_mask",
    "otsu_threshold",
    "pen_mask",
    "plan_mask",
    "plan_read",
    "read_tile",
    "read_tile_raw",
    "rgb_to_hsv",
    "slide_label_to_int",
    "slide_stats",
    "stats_thumbnail_size",
    "thumbnail_mask",
    "tile_grid",
    "tile_slide",
    "tissue_fraction",
    "tissue_map",
]
