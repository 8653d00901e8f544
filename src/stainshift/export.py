"""A patch store's tiles as GeoJSON for QuPath (``stainshift export-geojson``, rule ``export_geojson``).

One ``Feature`` per kept tile: a closed square ``Polygon`` (counter-clockwise by the shoelace
formula, as RFC 7946 asks) in **level-0 pixel coordinates** with the origin at the slide's top-left
corner — QuPath's own convention, so *File → Import objects* (or dragging the file onto the slide)
puts the grid back on the original slide. Properties:

- ``objectType: "tile"`` (QuPath imports tiles as detections: measurement maps and classes work);
- ``classification``: ``{"name", "color": [r, g, b]}`` — the predicted class when predictions are
  given, else the tile label (absent for unlabelled tiles without predictions);
- ``measurements`` (QuPath shows and maps these): tissue fraction, label, label fraction and, with
  predictions, prediction, score (P(positive class)), share of sources correct, each numeric and
  finite (a NaN is left out);
- the same values as plain properties (``tile_index``, ``tissue_fraction``, ``label``,
  ``label_name``, ``label_fraction``, ``prediction``, ``prediction_name``, ``score``), ``null``
  where not known.

The collection carries a foreign member ``stainshift`` (store, slide, tile side, which runs scored
it). Which predictions score a tile is :func:`stainshift.slide_view.tile_scores`' rule: protocol
``probe``, the first seed, the mean over the sources that never saw the slide's center.
"""
from __future__ import annotations

import math
import os
import uuid
from pathlib import Path
from typing import Any, Sequence

from stainshift.atomic import write_json
from stainshift.slide_view import TileScores, class_names, has_coords, label_colour, tile_size0, tile_table
from stainshift.store import PatchStore, StoreError

__all__ = ["tiles_geojson", "write_geojson", "export_store"]

_NAMESPACE = uuid.UUID("5f1c3a52-6d1e-4c57-9a4e-0b7d3c1e2f60")  # tile ids: uuid5(namespace, "slide/index")


def _finite(value: Any) -> float | int | None:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return None
    return value


def _rgb(label: int) -> list[int]:
    return [int(round(255 * c)) for c in label_colour(label)]


def tiles_geojson(store: PatchStore, scores: TileScores | None = None, names: Sequence[str] | None = None) -> dict[str, Any]:
    """The store's tiles as a GeoJSON FeatureCollection (module docstring). Raises StoreError for a
    store without slide coordinates (a crop set)."""
    if len(store) and not has_coords(store):
        raise StoreError(f"{store.path}: tiles have no slide coordinates (a crop set?); nothing to place on a slide")
    names = list(names or class_names(store.attrs, scores.n_classes if scores else 2))
    table = tile_table(store, scores, names)
    side = tile_size0(store)
    slide = str(store.attrs.get("slide_id") or store.path.stem)
    features = []
    for row in table.to_dict("records"):
        x, y = float(row["x"]), float(row["y"])
        ring = [[x, y], [x + side, y], [x + side, y + side], [x, y + side], [x, y]]
        label = int(row["label"])
        props: dict[str, Any] = {
            "objectType": "tile", "name": f"tile {row['index']}", "tile_index": int(row["index"]),
            "tissue_fraction": _finite(float(row["tissue_fraction"])), "label": label, "label_name": row["label_name"],
            "label_fraction": _finite(float(row["label_fraction"])),
        }
        shown = label
        if scores is not None:
            pred = None if math.isnan(row["pred"]) else int(row["pred"])
            props.update(prediction=pred, prediction_name=row["pred_name"] or None, score=_finite(float(row["score"])),
                         share_correct=_finite(float(row["share_correct"])))
            shown = pred if pred is not None else -1
        if shown >= 0:
            props["classification"] = {"name": names[shown], "color": _rgb(shown)}
        props["measurements"] = {k: float(v) for k, v in props.items()
                                 if k in ("tissue_fraction", "label", "label_fraction", "prediction", "score", "share_correct")
                                 and v is not None}
        features.append({"type": "Feature", "id": str(uuid.uuid5(_NAMESPACE, f"{slide}/{row['index']}")),
                         "geometry": {"type": "Polygon", "coordinates": [ring]}, "properties": props})
    meta: dict[str, Any] = {"store": str(store.path), "slide_id": slide, "source_path": store.attrs.get("source_path"),
                            "tile_size0": side, "classes": names, "coordinates": "level-0 pixels, origin top-left"}
    if scores is not None:
        meta.update(method=scores.method, protocol=scores.protocol, seed=scores.seed, sources=scores.sources,
                    sources_saw_center=scores.seen)
    return {"type": "FeatureCollection", "stainshift": meta, "features": features}


def write_geojson(collection: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write strict JSON (no NaN) atomically (:mod:`stainshift.atomic`)."""
    return write_json(path, collection, allow_nan=False, separators=(",", ":"))


def export_store(store_path: str | os.PathLike, out: str | os.PathLike, *, predictions: Sequence[str | os.PathLike] = (),
                 protocol: str = "probe", seed: int | None = None, unseen_only: bool = True,
                 names: Sequence[str] | None = None) -> tuple[Path, int, TileScores | None]:
    """Export one store (scored by ``predictions`` CSVs of one method when given) to ``out``;
    returns (path, number of tiles, the scores used)."""
    from stainshift.slide_view import read_predictions, tile_scores

    store = PatchStore.open(store_path)
    store_id = Path(str(store_path).rstrip("/")).stem
    scores = None
    if predictions:
        scores = tile_scores(read_predictions(predictions, store_id), store_id, protocol=protocol, seed=seed,
                             unseen_only=unseen_only)
    return write_geojson(tiles_geojson(store, scores, names), out), len(store), scores
