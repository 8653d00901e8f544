"""Normalized variants of patch stores (the `normalize` stage) and per-target montages.

A variant store has the source store's layout, tiles in the same order with the same coords,
labels, tissue and label fractions; its attrs are the source's plus ``stain_method``,
``stain_target`` (target id), ``stain_target_source`` (where the target tile came from),
``stain_fallback_tiles`` (tiles left unchanged: blank / background / single stain) and the
software version. Tiles stream through in batches, so memory stays at one batch.
"""
from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from . import get_normalizer
from .targets import load_target

log = logging.getLogger(__name__)


def _software_version() -> str:
    from stainshift import __version__

    return str(__version__)


def normalize_store(
    store_path: str | os.PathLike,
    targets: Sequence[dict[str, Any]],
    out_paths: dict[str, str | os.PathLike],
    batch_size: int = 64,
) -> dict[str, int]:
    """Write one variant store per target entry (``out_paths[target id]``); returns fallback counts."""
    from stainshift.store import PatchStore, write_store

    src = PatchStore.open(store_path)
    n = len(src)
    fallbacks: dict[str, int] = {}
    for entry in targets:
        tid, method = entry["id"], entry["method"]
        if tid not in out_paths:
            raise KeyError(f"normalize_store: no output path for target {tid!r}")
        normalizer = get_normalizer(method).fit(load_target(entry))
        counter = {"fallback": 0}

        def tiles(normalizer: Any = normalizer, counter: dict = counter) -> Iterator[np.ndarray]:
            for start in range(0, n, batch_size):
                out = normalizer.transform(src.read(slice(start, min(n, start + batch_size))))
                counter["fallback"] += int(np.count_nonzero(normalizer.last_flags))
                yield from out

        attrs = dict(src.attrs)
        attrs.pop("n_tiles", None)
        attrs.pop("store_format", None)
        attrs.update(
            stain_method=method,
            stain_target=tid,
            stain_target_source=_target_source(entry),
            stain_params=normalizer.params.as_dict(),
            software_version=_software_version(),
            patch_size=src.patch_size,
        )
        codec, jpeg_quality = _source_codec(src.attrs)
        images: Any = tiles() if n else np.empty((0, src.patch_size, src.patch_size, 3), np.uint8)
        # the fallback count is known only after streaming: write it with the store's attrs below
        write_store(
            out_paths[tid], images, coords=src.coords, tissue_fraction=src.tissue_fraction,
            label=src.label, label_fraction=src.label_fraction, attrs=attrs, codec=codec,
            jpeg_quality=jpeg_quality,
        )
        _set_attr(out_paths[tid], "stain_fallback_tiles", counter["fallback"])
        fallbacks[tid] = counter["fallback"]
        log.info("%s -> %s (%s, target %s): %d tiles, %d fallback", store_path, out_paths[tid], method, tid,
                 n, counter["fallback"])
    return fallbacks


def _source_codec(attrs: dict[str, Any]) -> tuple[str, int]:
    """(codec name, JPEG quality) of a source store (attrs 'codec' is a dict or a name)."""
    codec = attrs.get("codec") or "jpeg"
    if isinstance(codec, dict):
        return str(codec.get("name", "jpeg")), int(codec.get("quality") or 90)
    return str(codec), int(attrs.get("jpeg_quality") or 90)


def _set_attr(path: str | os.PathLike, key: str, value: Any) -> None:
    import zarr

    group = zarr.open_group(Path(path), mode="r+")
    group.attrs[key] = value


def _target_source(entry: dict[str, Any]) -> str:
    if entry.get("kind") == "store":
        return f"{entry['path']}:{entry['index']}"
    return str(entry.get("path"))


def montage(
    tiles: np.ndarray,
    target: np.ndarray,
    methods: Sequence[str],
    tile_px: int = 96,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Grid image: first column the target, then ``tiles`` raw (row 0) and under each method.

    Returns (uint8 RGB montage, flags per method).
    """
    from PIL import Image

    def fit_px(img: np.ndarray) -> np.ndarray:
        return np.asarray(Image.fromarray(img).resize((tile_px, tile_px), Image.Resampling.BILINEAR))

    rows = [("raw", tiles)]
    flags = {}
    for method in methods:
        n = get_normalizer(method).fit(target)
        rows.append((method, n.transform(tiles)))
        flags[method] = np.asarray(n.last_flags)
    gap = 4
    n_cols = len(tiles) + 1
    height = len(rows) * (tile_px + gap) + gap
    width = n_cols * (tile_px + gap) + gap
    canvas = np.full((height, width, 3), 255, np.uint8)
    canvas[gap : gap + tile_px, gap : gap + tile_px] = fit_px(target)
    for r, (_, imgs) in enumerate(rows):
        y = gap + r * (tile_px + gap)
        for c, img in enumerate(imgs):
            x = gap + (c + 1) * (tile_px + gap)
            canvas[y : y + tile_px, x : x + tile_px] = fit_px(img)
    return canvas, flags


def write_png_atomic(path: str | os.PathLike, img: np.ndarray) -> Path:
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        Image.fromarray(img).save(tmp, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def sample_tiles(store_paths: Sequence[str | os.PathLike], n_tiles: int, seed: int = 0) -> np.ndarray:
    """``n_tiles`` tiles spread over the stores (seeded), for montages."""
    from stainshift.store import PatchStore

    stores = [PatchStore.open(p) for p in store_paths]
    pool = [(s, i) for s in stores for i in range(len(s))]
    if not pool:
        raise ValueError("sample_tiles: the stores hold no tiles")
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(pool), size=min(n_tiles, len(pool)), replace=False)
    return np.stack([pool[int(j)][0].read(pool[int(j)][1])[0] for j in sorted(pick)])


__all__ = ["montage", "normalize_store", "sample_tiles", "write_png_atomic"]
