"""napari reader for patch stores (optional extra: ``pip install 'stainshift[viewer]'``).

Open ``{store}.zarr`` in napari (File → Open Folder, or ``napari results/tiles/a_test.zarr``;
manifest ``stainshift/napari.yaml``, entry point ``napari.manifest``). Layers:

1. ``{slide} tiles`` — the tile stack (N, S, S, 3), read lazily from the zarr array, one tile per
   slice of the first axis; for slide stores scaled to level-0 pixels like the slide layers, so a
   tile shows at its true size in the top-left corner (hide the slide layers and zoom there);
2. ``{slide} tile info`` — one text point per slice; its features (layer properties) are the tile
   table of :func:`stainshift.slide_view.tile_table`: index, x, y, label, label name, tissue and
   label fraction, and ``score_{method}`` per method;
3. for stores with slide coordinates: ``{slide} on slide`` — the tiles pasted back at their
   level-0 positions (a mosaic, reduced by an integer factor to at most ``max_mosaic_px`` pixels),
   and ``{slide} tile grid`` — one square per tile in level-0 pixels with the same features,
   filled by the first method's score (else its label colour), outlined in its label colour.

Scores: the predictions tables of the results tree the store sits in (``{R}/tiles/{store}.zarr`` →
``{R}/predictions/{method}/{store}.csv``), per method the rule of
:func:`stainshift.slide_view.tile_scores` (probe, first seed, mean over the sources that never saw
the store's center). :func:`store_layers` takes prediction CSVs explicitly.

This module does not import napari: the reader returns napari's plain layer-data tuples.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from stainshift.slide_view import class_names, has_coords, label_colour, read_predictions, tile_scores, tile_size0, tile_table
from stainshift.store import ARRAYS, PatchStore

__all__ = ["napari_get_reader", "read_store", "store_layers", "find_predictions"]

LayerData = tuple[Any, dict[str, Any], str]
MAX_MOSAIC_PX = 4096 * 4096


def napari_get_reader(path: str | Sequence[str]) -> Callable[[str], list[LayerData]] | None:
    """napari reader hook: :func:`read_store` for one patch-store folder, else None."""
    if not isinstance(path, (str, os.PathLike)):
        if len(path) != 1:
            return None
        path = path[0]
    p = Path(path)
    if p.is_dir() and (p / "zarr.json").is_file() and all((p / name).is_dir() for name in ARRAYS):
        return read_store
    return None


def read_store(path: str | Sequence[str]) -> list[LayerData]:
    """The layers of one store, scored by the predictions found beside it (:func:`find_predictions`)."""
    path = path if isinstance(path, (str, os.PathLike)) else path[0]
    return store_layers(path, find_predictions(path))


def find_predictions(store_path: str | os.PathLike) -> list[Path]:
    """The prediction CSVs of a ``{R}/tiles/{store}.zarr`` in its results tree, one per method
    (``{R}/predictions/{method}/{store}.csv``; else none)."""
    path = Path(store_path).resolve()
    if path.parent.name != "tiles":
        return []
    return sorted((path.parent.parent / "predictions").glob(f"*/{path.name.removesuffix('.zarr')}.csv"))


def _method_scores(store_id: str, predictions: Sequence[str | os.PathLike], protocol: str) -> dict[str, pd.Series]:
    """method -> score per tile index, for each method whose predictions cover the store."""
    if not predictions:
        return {}
    preds = read_predictions(predictions, store_id)
    out = {}
    for method, rows in preds.groupby("method", sort=True):
        if (rows["protocol"] == protocol).any() and (rows["variant_method"] == "raw").any():
            out[str(method)] = tile_scores(rows, store_id, protocol=protocol).table["score"]
    return out


def _mosaic(store: PatchStore, max_px: int) -> tuple[np.ndarray, float, tuple[float, float]]:
    """(RGB mosaic of the tiles at their coordinates, level-0 px per mosaic px, level-0 (y, x) of its
    top-left corner)."""
    from PIL import Image

    side0 = tile_size0(store)
    s = store.patch_size
    x0, y0 = store.coords.min(0)
    extent = store.coords.max(0) - store.coords.min(0) + side0  # level-0 (w, h)
    px0 = side0 / s  # level-0 px per stored tile px
    factor = max(1, math.ceil(math.sqrt(extent[0] * extent[1] / px0**2 / max_px)))
    t = max(1, s // factor)
    scale = side0 / t
    w, h = (int(math.ceil(v / scale)) for v in extent)
    canvas = np.full((h, w, 3), 255, np.uint8)
    for start in range(0, len(store), 256):
        idx = np.arange(start, min(len(store), start + 256))
        for i, tile in zip(idx, store.read(idx)):
            small = np.asarray(Image.fromarray(tile).reduce(factor)) if factor > 1 else tile
            cx = int(round((store.coords[i, 0] - x0) / scale))
            cy = int(round((store.coords[i, 1] - y0) / scale))
            ye, xe = min(h, cy + t), min(w, cx + t)
            canvas[cy:ye, cx:xe] = small[:ye - cy, :xe - cx]
    return canvas, scale, (float(y0), float(x0))


def store_layers(path: str | os.PathLike, predictions: Sequence[str | os.PathLike] = (), *, protocol: str = "probe",
                 names: Sequence[str] | None = None, max_mosaic_px: int = MAX_MOSAIC_PX) -> list[LayerData]:
    """The layers of the module docstring for one store, scored by ``predictions`` (CSVs, any methods)."""
    store = PatchStore.open(path)
    store_id = Path(str(path).rstrip("/")).stem
    sid = str(store.attrs.get("slide_id") or store_id)
    names = list(names or class_names(store.attrs))
    table = tile_table(store, None, names)
    scores = _method_scores(store_id, predictions, protocol)
    for method, score in scores.items():
        table[f"score_{method}"] = score.reindex(table["index"]).to_numpy()
    meta = {"stainshift": {"store": str(path), "attrs": store.attrs, "methods": list(scores)}}
    s = store.patch_size
    px0 = tile_size0(store) / s if has_coords(store) else 1.0  # stack in level-0 px, the slide layers' unit
    stack = {"scale": (1.0, px0, px0), "axis_labels": ("tile", "y", "x"), "metadata": meta}
    label_rgba = np.array([(*label_colour(int(k)), 1.0) for k in store.label]).reshape(-1, 4)
    first = f"score_{next(iter(scores))}" if scores else None
    text = "#{index} {label_name}" + (" p={" + first + ":.2f}" if first else "")
    layers: list[LayerData] = [
        (store.images, {"name": f"{sid} tiles", "rgb": True, **stack}, "image"),
        (np.column_stack([np.arange(len(store)), np.zeros((len(store), 2))]).reshape(-1, 3),
         {"name": f"{sid} tile info", "features": table, "size": 1.0, "face_color": label_rgba,
          "text": {"string": text, "anchor": "upper_left", "size": 9, "color": "yellow"}, **stack}, "points"),
    ]
    if not has_coords(store):
        return layers
    mosaic, scale, origin = _mosaic(store, max_mosaic_px)
    side0 = tile_size0(store)
    centres = store.coords[:, ::-1].astype(float) + side0 / 2  # napari points are (row, col) = (y, x)
    grid: dict[str, Any] = {"name": f"{sid} tile grid", "features": table, "symbol": "square", "size": side0,
                            "border_color": label_rgba, "border_width": 0.06, "opacity": 0.55, "metadata": meta}
    if first:
        grid.update(face_color=first, face_colormap="coolwarm", face_contrast_limits=(0.0, 1.0))
    else:
        grid["face_color"] = label_rgba
    layers += [
        (mosaic, {"name": f"{sid} on slide", "rgb": True, "scale": (scale, scale),
                  "translate": (origin[0] + scale / 2, origin[1] + scale / 2),  # napari: pixel centres
                  "metadata": meta}, "image"),
        (centres, grid, "points"),
    ]
    return layers
