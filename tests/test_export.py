"""GeoJSON / QuPath export of a store's tiles: valid GeoJSON, round trip through the annotation reader."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from stainshift.annotations import read_polygons
from stainshift.export import export_store, tiles_geojson
from stainshift.slide_view import tile_size0
from stainshift.store import PatchStore, StoreError
from test_slide_view import crop_store, fake_predictions, slide_store

_POSITION = {"type": "array", "minItems": 2, "maxItems": 3, "items": {"type": "number"}}
# RFC 7946, the part the export uses: a FeatureCollection of Polygon features with closed rings
GEOJSON_SCHEMA = {
    "type": "object",
    "required": ["type", "features"],
    "properties": {
        "type": {"const": "FeatureCollection"},
        "features": {"type": "array", "items": {
            "type": "object",
            "required": ["type", "geometry", "properties"],
            "properties": {
                "type": {"const": "Feature"},
                "id": {"type": ["string", "number"]},
                "geometry": {"type": "object", "required": ["type", "coordinates"], "properties": {
                    "type": {"const": "Polygon"},
                    "coordinates": {"type": "array", "minItems": 1,
                                    "items": {"type": "array", "minItems": 4, "items": _POSITION}}}},
                "properties": {"type": ["object", "null"], "properties": {
                    "objectType": {"enum": ["annotation", "detection", "tile", "cell"]},
                    "classification": {"type": "object", "required": ["name", "color"], "properties": {
                        "name": {"type": "string"},
                        "color": {"type": "array", "minItems": 3, "maxItems": 3,
                                  "items": {"type": "integer", "minimum": 0, "maximum": 255}}}},
                    "measurements": {"type": "object", "additionalProperties": {"type": "number"}}}},
            }}},
    },
}


def _valid(path: Path) -> dict:
    data = json.loads(path.read_text())  # strict JSON: json.loads would accept NaN, so check the text too
    assert "NaN" not in path.read_text()
    jsonschema.validate(data, GEOJSON_SCHEMA)
    for feat in data["features"]:
        ring = np.array(feat["geometry"]["coordinates"][0])
        assert (ring[0] == ring[-1]).all()
        x, y = ring[:-1, 0], ring[:-1, 1]
        assert 0.5 * np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y) > 0  # counter-clockwise (shoelace > 0)
    return data


def test_round_trip_through_annotation_reader(tmp_path: Path) -> None:
    path = slide_store(tmp_path)
    store = PatchStore.open(path)
    out, n, scores = export_store(path, tmp_path / "s0.geojson")
    assert n == len(store) and scores is None
    data = _valid(out)
    polys = read_polygons(out)
    side = tile_size0(store)
    assert side == 32.0 and len(polys) == len(store)
    boxes = np.array([[p.exterior[:, 0].min(), p.exterior[:, 1].min(), p.exterior[:, 0].max(), p.exterior[:, 1].max()]
                      for p in polys])
    assert np.array_equal(boxes, np.hstack([store.coords, store.coords + side]))
    props = [f["properties"] for f in data["features"]]
    assert [p["tile_index"] for p in props] == list(range(len(store)))
    assert [p["label"] for p in props] == store.label.tolist()
    assert [p.get("classification", {}).get("name") for p in props][:2] == ["class 1", "class 1"]
    assert "classification" not in props[-1]  # the unlabelled tile
    assert props[0]["measurements"]["tissue_fraction"] == pytest.approx(float(store.tissue_fraction[0]))
    assert [p.group for p in polys][:1] == ["class 1"]  # the reader takes QuPath's classification name
    assert data["stainshift"]["tile_size0"] == 32.0 and data["stainshift"]["slide_id"] == "s0"


def test_export_with_predictions(tmp_path: Path) -> None:
    path = slide_store(tmp_path)
    csv = tmp_path / "seed0.csv"
    preds = fake_predictions(path)
    preds.to_csv(csv, index=False)
    out, _, scores = export_store(path, tmp_path / "p.geojson", predictions=[csv], names=["normal", "tumour"])
    data = _valid(out)
    assert scores is not None and scores.sources == ["c1", "c2", "loco-c0"]
    props = data["features"][0]["properties"]
    assert props["score"] == pytest.approx(float(scores.table.loc[0, "score"]))
    assert props["classification"] == {"name": ["normal", "tumour"][props["prediction"]],
                                       "color": [0, 158, 0] if props["prediction"] == 0 else [217, 0, 0]}
    assert set(props["measurements"]) == {"tissue_fraction", "label", "label_fraction", "prediction", "score",
                                          "share_correct"}
    assert data["stainshift"]["sources"] == ["c1", "c2", "loco-c0"] and data["stainshift"]["protocol"] == "probe"
    # tiles the predictions do not cover are exported unscored
    partial = tiles_geojson(PatchStore.open(path), dataclasses.replace(scores, table=scores.table.iloc[:3]))
    assert partial["features"][5]["properties"]["prediction"] is None


def test_crop_store_has_nothing_to_place(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no slide coordinates"):
        export_store(crop_store(tmp_path), tmp_path / "c.geojson")
