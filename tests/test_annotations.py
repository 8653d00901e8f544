"""Annotations -> per-tile label fractions: ASAP XML, GeoJSON, label masks; malformed input."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stainshift.annotations import AnnotationError, load_annotation, read_polygons

SQUARE = [(100, 100), (300, 100), (300, 300), (100, 300)]


def asap_xml(path: Path, polygons: list[tuple[str, list[tuple[float, float]]]]) -> Path:
    anns = []
    for i, (group, pts) in enumerate(polygons):
        coords = "".join(f'<Coordinate Order="{j}" X="{x}" Y="{y}"/>' for j, (x, y) in enumerate(pts))
        anns.append(f'<Annotation Name="a{i}" Type="Polygon" PartOfGroup="{group}"><Coordinates>{coords}</Coordinates></Annotation>')
    path.write_text(f"<ASAP_Annotations><Annotations>{''.join(anns)}</Annotations></ASAP_Annotations>")
    return path


def test_asap_fractions_and_exclusion(tmp_path: Path) -> None:
    xml = asap_xml(tmp_path / "a.xml", [("Tumor", SQUARE), ("_2", [(100, 100), (200, 100), (200, 200), (100, 200)])])
    raster = load_annotation(xml, (512, 512), tile_size0=100)
    coords = np.array([[100, 100], [200, 200], [0, 0], [250, 100], [450, 450]])
    labels, frac = raster.tile_labels(coords, 100, threshold=0.01)
    # first tile lies in the excluded corner; second inside the tumour; third outside; fourth half in
    np.testing.assert_allclose(frac, [0.0, 1.0, 0.0, 0.5, 0.0], atol=0.05)  # raster at 1/32 tile side
    assert labels.tolist() == [0, 1, 0, 1, 0]


def test_geojson_with_hole_matches_area(tmp_path: Path) -> None:
    hole = [(150, 150), (250, 150), (250, 250), (150, 250), (150, 150)]
    feat = {"type": "Feature", "properties": {"classification": {"name": "Tumor"}},
            "geometry": {"type": "Polygon", "coordinates": [SQUARE + [SQUARE[0]], hole]}}
    path = tmp_path / "a.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [feat]}))
    polys = read_polygons(path)
    assert len(polys) == 1 and len(polys[0].holes) == 1 and polys[0].group == "Tumor"
    raster = load_annotation(path, (400, 400), tile_size0=200)
    _, frac = raster.tile_labels(np.array([[100, 100]]), 200, 0.01)
    assert frac[0] == pytest.approx(0.75, abs=0.05)


def test_label_mask_binary_multivalue_and_multiclass(tmp_path: Path) -> None:
    mask = np.zeros((64, 64), np.uint8)  # mask at downsample 4 of a 256 x 256 slide
    mask[:, 32:] = 1
    mask[:16, 48:] = 2
    Image.fromarray(mask).save(tmp_path / "m.png")
    coords = np.array([[0, 0], [128, 0], [192, 0], [192, 128]])
    r = load_annotation(tmp_path / "m.png", (256, 256), tile_size0=64)
    assert r.downsample == pytest.approx(4.0)
    labels, frac = r.tile_labels(coords, 64, 0.01)  # multi-value mask: the largest value is positive
    assert labels.tolist() == [0, 0, 1, 0] and frac[2] == pytest.approx(1.0)
    r2 = load_annotation(tmp_path / "m.png", (256, 256), tile_size0=64, mask_classes={1: 1, 2: 2})
    labels2, _ = r2.tile_labels(coords, 64, 0.01)
    assert labels2.tolist() == [0, 1, 2, 1]
    Image.fromarray((mask > 0).astype(np.uint8) * 255).save(tmp_path / "b.png")
    labels3, _ = load_annotation(tmp_path / "b.png", (256, 256), tile_size0=64).tile_labels(coords, 64, 0.01)
    assert labels3.tolist() == [0, 1, 1, 1]


def test_bad_annotations_name_the_file(tmp_path: Path) -> None:
    xml = asap_xml(tmp_path / "out.xml", [("Tumor", [(100, 100), (5000, 100), (5000, 300)])])
    with pytest.raises(AnnotationError, match=r"out\.xml: polygon 0 .* outside the slide"):
        load_annotation(xml, (512, 512), tile_size0=64)
    (tmp_path / "bad.xml").write_text("<ASAP_Annotations><Annot")
    with pytest.raises(AnnotationError, match=r"bad\.xml: malformed XML"):
        load_annotation(tmp_path / "bad.xml", (512, 512), tile_size0=64)
    two = asap_xml(tmp_path / "two.xml", [("Tumor", [(1, 1), (2, 2)])])
    with pytest.raises(AnnotationError, match=r"two\.xml: annotation 0 .* 2 points"):
        load_annotation(two, (512, 512), tile_size0=64)
    (tmp_path / "nan.xml").write_text('<ASAP_Annotations><Annotations><Annotation><Coordinates>'
                                      '<Coordinate X="a" Y="1"/></Coordinates></Annotation></Annotations></ASAP_Annotations>')
    with pytest.raises(AnnotationError, match=r"nan\.xml: annotation 0 X 'a' is not a number"):
        load_annotation(tmp_path / "nan.xml", (512, 512), tile_size0=64)
    (tmp_path / "g.geojson").write_text("{not json")
    with pytest.raises(AnnotationError, match=r"g\.geojson: malformed JSON"):
        load_annotation(tmp_path / "g.geojson", (512, 512), tile_size0=64)
    Image.fromarray(np.zeros((10, 40), np.uint8)).save(tmp_path / "skew.png")
    with pytest.raises(AnnotationError, match=r"skew\.png: mask size 40x10 is not a uniform downsample"):
        load_annotation(tmp_path / "skew.png", (512, 512), tile_size0=64)
    with pytest.raises(AnnotationError, match=r"missing\.xml: annotation file not found"):
        load_annotation(tmp_path / "missing.xml", (512, 512), tile_size0=64)
    (tmp_path / "a.csv").write_text("x,y")
    with pytest.raises(AnnotationError, match=r"a\.csv: unsupported annotation format"):
        load_annotation(tmp_path / "a.csv", (512, 512), tile_size0=64)


def test_odd_geometry_is_a_defined_result_with_a_warning(tmp_path: Path) -> None:
    """Empty files, exclusion-only files, self-intersecting and zero-area polygons label tiles by a
    stated rule and say so (LabelRaster.warnings; the tile stage logs them to the console)."""
    square = [(100, 100), (900, 100), (900, 900), (100, 900)]
    ok = load_annotation(asap_xml(tmp_path / "ok.xml", [("Tumor", square)]), (2000, 2000), tile_size0=64)
    assert ok.warnings == []
    empty = load_annotation(asap_xml(tmp_path / "empty.xml", []), (2000, 2000), tile_size0=64)
    assert len(empty.warnings) == 1 and "no polygon" in empty.warnings[0] and "empty.xml" in empty.warnings[0]
    assert empty.classes.max() == 0
    only_excl = load_annotation(asap_xml(tmp_path / "excl.xml", [("_2", square)]), (2000, 2000), tile_size0=64)
    assert any("only exclusion polygons" in w for w in only_excl.warnings)
    bowtie = [(100, 100), (900, 900), (900, 100), (100, 900)]  # two lobes of opposite orientation
    bow = load_annotation(asap_xml(tmp_path / "bow.xml", [("Tumor", bowtie)]), (2000, 2000), tile_size0=64)
    assert len(bow.warnings) == 1 and "intersects itself" in bow.warnings[0] and "even-odd" in bow.warnings[0]
    labels, _ = bow.tile_labels(np.array([[450, 150], [150, 450]]), 64, 0.5)
    assert labels.tolist() == [0, 1]  # the left and right lobes are filled, the top wedge between them is not
    flat = load_annotation(asap_xml(tmp_path / "flat.xml", [("Tumor", [(100, 100), (500, 500), (900, 900)])]),
                           (2000, 2000), tile_size0=64)
    assert any("almost) no area" in w for w in flat.warnings)
