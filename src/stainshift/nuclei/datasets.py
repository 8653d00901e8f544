"""Nuclei images with instance + type ground truth, and the patches a segmentation net trains on.

:class:`NucleiImage` holds one H&E field and its masks. :func:`load_hgsc` reads the two real
high-grade serous ovarian carcinoma crops of ``../shared/data/nuclei_hgsc`` (histolytics example
data, BSD-3; ``PROVENANCE.md``). :func:`tile_pairs` (a regular grid) and :func:`random_crops`
(seeded uniform positions) cut (image, binary foreground) patches for :func:`train_unet
<stainshift.nuclei.segmentation.train_unet>` — seed 004 §3.2 trains on 144×144 inputs.
"""
from __future__ import annotations

import csv
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["HGSC_IMAGES", "NucleiImage", "load_hgsc", "random_crops", "tile_pairs"]

log = logging.getLogger(__name__)

HGSC_IMAGES = ("hgsc_nest", "hgsc_stroma")


@dataclass(frozen=True, eq=False)
class NucleiImage:
    """One H&E field with nucleus ground truth.

    ``image`` uint8 (H, W, 3) RGB; ``instances`` int32 (H, W), 0 = background, k > 0 = nucleus k;
    ``types`` uint8 (H, W), 0 = background, t ≥ 1 = class ``class_names[t - 1]``; ``source`` says
    where the data came from (a path or a generator name).
    """

    name: str
    image: np.ndarray
    instances: np.ndarray
    types: np.ndarray
    class_names: tuple[str, ...]
    source: str

    def __post_init__(self) -> None:
        if self.image.dtype != np.uint8 or self.image.ndim != 3 or self.image.shape[2] != 3:
            raise ValueError(f"{self.name}: image must be uint8 (H, W, 3), got {self.image.dtype} {self.image.shape}")
        hw = self.image.shape[:2]
        for key in ("instances", "types"):
            arr = getattr(self, key)
            if arr.shape != hw:
                raise ValueError(f"{self.name}: {key} shape {arr.shape} != image shape {hw}")
        if self.instances.dtype != np.int32 or self.types.dtype != np.uint8:
            raise ValueError(f"{self.name}: instances must be int32 and types uint8, "
                             f"got {self.instances.dtype} and {self.types.dtype}")
        if int(self.types.max(initial=0)) > len(self.class_names):
            raise ValueError(f"{self.name}: type id {int(self.types.max())} has no name in {self.class_names}")

    @property
    def foreground(self) -> np.ndarray:
        """Binary nucleus mask (bool, H×W): ``instances > 0``."""
        return self.instances > 0

    @property
    def n_nuclei(self) -> int:
        """Number of distinct instance ids > 0."""
        return int(np.count_nonzero(np.unique(self.instances)))

    def crop(self, y0: int, y1: int, x0: int, x1: int, name: str | None = None) -> NucleiImage:
        """Rows ``y0:y1``, columns ``x0:x1`` (nuclei cut by the window keep their ids)."""
        sl = (slice(y0, y1), slice(x0, x1))
        return replace(self, name=name or f"{self.name}[{y0}:{y1},{x0}:{x1}]", image=self.image[sl].copy(),
                       instances=self.instances[sl].copy(), types=self.types[sl].copy())


def _read(path: Path) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"nuclei data: {path} not found")
    with Image.open(path) as im:
        return np.array(im)


def load_hgsc(root: str | os.PathLike) -> list[NucleiImage]:
    """The two ``nuclei_hgsc`` crops (``hgsc_nest``, ``hgsc_stroma``; 1500×1500 each).

    Reads ``{name}.jpg`` (RGB), ``{name}_inst.png`` (uint16 instance ids) and ``{name}_type.png``
    (uint8: 1 connective, 2 inflammatory, 3 neoplastic) and ``classes.csv`` (``class_id,class_name``).
    A missing file raises :class:`FileNotFoundError` naming it.
    """
    root = Path(root)
    classes_path = root / "classes.csv"
    if not classes_path.is_file():
        raise FileNotFoundError(f"nuclei data: {classes_path} not found")
    with open(classes_path, newline="") as fh:
        rows = sorted((int(r["class_id"]), r["class_name"]) for r in csv.DictReader(fh))
    if [cid for cid, _ in rows] != list(range(1, len(rows) + 1)):
        raise ValueError(f"{classes_path}: class ids must be 1..K, got {[cid for cid, _ in rows]}")
    class_names = tuple(name for _, name in rows)
    out = []
    for name in HGSC_IMAGES:
        image = _read(root / f"{name}.jpg")
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"{root / f'{name}.jpg'}: expected an RGB image, got shape {image.shape}")
        inst = _read(root / f"{name}_inst.png").astype(np.int32)
        types = _read(root / f"{name}_type.png").astype(np.uint8)
        out.append(NucleiImage(name=name, image=image, instances=inst, types=types, class_names=class_names,
                               source=str(root / f"{name}.jpg")))
        log.info("loaded %s: %dx%d, %d nuclei", name, image.shape[0], image.shape[1], out[-1].n_nuclei)
    return out


def _starts(length: int, size: int, stride: int) -> list[int]:
    """Window starts 0, stride, … plus ``length - size`` so the last window ends at the edge."""
    if length < size:
        raise ValueError(f"image side {length} is smaller than the patch size {size}")
    starts = list(range(0, length - size + 1, stride))
    if starts[-1] != length - size:
        starts.append(length - size)
    return starts


def _stack(pairs: list[tuple[np.ndarray, np.ndarray]], size: int) -> tuple[np.ndarray, np.ndarray]:
    if not pairs:
        return np.zeros((0, size, size, 3), np.uint8), np.zeros((0, size, size), np.uint8)
    return (np.stack([p[0] for p in pairs]).astype(np.uint8),
            np.stack([p[1] for p in pairs]).astype(np.uint8))


def tile_pairs(images: Sequence[NucleiImage], size: int = 144,
               stride: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Cut every image into a grid of ``size``×``size`` patches.

    Windows start at 0, ``stride``, 2·``stride``, … (``stride`` defaults to ``size``: no overlap),
    plus one flush with the right / bottom edge, so every pixel is in at least one patch. Returns
    ``X`` uint8 (N, size, size, 3) and ``Y`` uint8 (N, size, size) with 1 = nucleus.
    """
    stride = size if stride is None else int(stride)
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    pairs = []
    for img in images:
        fg = img.foreground
        for y in _starts(img.image.shape[0], size, stride):
            for x in _starts(img.image.shape[1], size, stride):
                pairs.append((img.image[y:y + size, x:x + size], fg[y:y + size, x:x + size]))
    return _stack(pairs, size)


def random_crops(images: Sequence[NucleiImage], size: int = 144, n: int = 256,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` ``size``×``size`` patches at random positions (``numpy.random.default_rng(seed)``).

    Each patch picks an image with probability proportional to its number of possible windows,
    then a uniform top-left corner, so every window of every image is equally likely. Same
    output as :func:`tile_pairs`.
    """
    if not images:
        raise ValueError("random_crops: no images")
    rng = np.random.default_rng(seed)
    windows = []
    for img in images:
        h, w = img.image.shape[:2]
        if h < size or w < size:
            raise ValueError(f"{img.name}: {h}x{w} is smaller than the patch size {size}")
        windows.append((h - size + 1) * (w - size + 1))
    p = np.asarray(windows, float) / sum(windows)
    pairs = []
    for i in rng.choice(len(images), size=n, p=p):
        img = images[i]
        y = int(rng.integers(0, img.image.shape[0] - size + 1))
        x = int(rng.integers(0, img.image.shape[1] - size + 1))
        pairs.append((img.image[y:y + size, x:x + size], img.instances[y:y + size, x:x + size] > 0))
    return _stack(pairs, size)
