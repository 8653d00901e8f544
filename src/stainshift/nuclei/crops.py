"""Fixed-size nucleus crops centred on instance centroids (seed 004 §3.3: 40×40 nucleus images).

Seed 004 re-sizes segmented nuclei to 40×40 before its InfoGAN. Here every crop is a *fixed*
``size``×``size`` window of the image around the instance centroid, without rescaling: the pixel
scale stays the same for every nucleus, so nucleus size — the clearest difference between large
neoplastic/epithelial nuclei and small lymphocytes — is kept (rescaling each nucleus to fill the
crop would remove it). At a 40×-like scale (nuclei 8–30 px across) a 40 px window holds the whole
nucleus plus some context; the few larger nuclei are cut at the window's edge.

Centroids are the instance pixels' mean (x, y), computed for all instances at once with
``np.bincount``. The centroid pixel ``(round(x), round(y))`` lands at crop index
``(size // 2, size // 2)`` (row, column). Windows that leave the image are padded with constant
white (255, the H&E background) — reflection would mirror neighbouring nuclei into the crop.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

__all__ = ["NucleusCrops", "concat_crops", "nucleus_crops"]

log = logging.getLogger(__name__)

PAD_VALUE = 255


@dataclass(frozen=True)
class NucleusCrops:
    """Crops of N nuclei: ``crops`` uint8 (N, size, size, 3); ``centroids`` float (N, 2) as (x, y)
    in image pixels; ``ids`` the instance ids; ``labels`` int (N,) the majority type id under the
    instance (−1 when no typed pixel lies under it); ``area`` int (N,) instance pixels."""

    crops: np.ndarray
    centroids: np.ndarray
    ids: np.ndarray
    labels: np.ndarray
    area: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


def nucleus_crops(image: np.ndarray, instances: np.ndarray, types: np.ndarray | None = None, size: int = 40,
                  min_area: int = 16) -> NucleusCrops:
    """Cut a ``size``×``size`` window around every instance's centroid (white padding at borders).

    ``image`` uint8 (H, W, 3); ``instances`` int (H, W), 0 = background; ``types`` int (H, W) with
    0 = untyped, or None (then every label is −1). Instances with fewer than ``min_area`` pixels
    are skipped. Label = argmax over type values > 0 of the instance's pixel counts (ties: the
    smaller type id), −1 if the instance has no typed pixel.
    """
    image = np.asarray(image)
    instances = np.asarray(instances)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
    if instances.shape != image.shape[:2]:
        raise ValueError(f"instances shape {instances.shape} != image shape {image.shape[:2]}")
    if types is not None and np.shape(types) != image.shape[:2]:
        raise ValueError(f"types shape {np.shape(types)} != image shape {image.shape[:2]}")
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    if instances.min(initial=0) < 0:
        raise ValueError("instance ids must be >= 0 (0 = background)")
    inst = instances.astype(np.int64).ravel()
    n_ids = int(inst.max(initial=0)) + 1
    height, width = instances.shape
    yy, xx = np.divmod(np.arange(inst.size, dtype=np.int64), width)
    area = np.bincount(inst, minlength=n_ids)
    keep = np.flatnonzero(area >= max(min_area, 1))
    keep = keep[keep > 0]
    with np.errstate(invalid="ignore", divide="ignore"):
        cx = np.bincount(inst, weights=xx, minlength=n_ids) / area
        cy = np.bincount(inst, weights=yy, minlength=n_ids) / area
    labels = np.full(n_ids, -1, dtype=np.int64)
    if types is not None:
        typ = np.asarray(types).astype(np.int64).ravel()
        if typ.min(initial=0) < 0:
            raise ValueError("type ids must be >= 0 (0 = untyped)")
        n_types = int(typ.max(initial=0)) + 1
        counts = np.bincount(inst * n_types + typ, minlength=n_ids * n_types).reshape(n_ids, n_types)
        counts[:, 0] = 0
        labels = np.where(counts.max(axis=1) > 0, counts.argmax(axis=1), -1)
    half = size // 2
    pad = size
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), constant_values=PAD_VALUE)
    cols = np.rint(cx[keep]).astype(np.int64) - half + pad
    rows = np.rint(cy[keep]).astype(np.int64) - half + pad
    offs = np.arange(size)
    crops = padded[rows[:, None, None] + offs[None, :, None], cols[:, None, None] + offs[None, None, :]]
    log.debug("nucleus_crops: %d of %d instances (min_area %d), %dx%d windows on a %dx%d image", len(keep),
              int((area[1:] > 0).sum()), min_area, size, size, height, width)
    return NucleusCrops(crops=np.ascontiguousarray(crops, dtype=np.uint8),
                        centroids=np.stack([cx[keep], cy[keep]], axis=1),
                        ids=keep.astype(np.int64), labels=labels[keep].astype(np.int64),
                        area=area[keep].astype(np.int64))


def concat_crops(parts: list[NucleusCrops]) -> NucleusCrops:
    """Concatenate crop sets (e.g. of several images) in order; ids/centroids stay per image."""
    if not parts:
        raise ValueError("concat_crops needs at least one NucleusCrops")
    return NucleusCrops(*(np.concatenate([getattr(p, f) for p in parts]) for f in
                          ("crops", "centroids", "ids", "labels", "area")))
