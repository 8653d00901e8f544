"""Annotations -> per-tile label fractions.

Sources (picked by file suffix): ASAP / CAMELYON XML polygons (``.xml``), GeoJSON from QuPath
(``.geojson`` / ``.json``), and label-mask images (``.png``/``.tif``/...; any downsample of level 0,
inferred from the mask's size). Polygons are rasterised once into a positive-class mask at a
resolution fine enough for the label threshold (>= 32 x 32 raster px per tile footprint); per-tile
fractions then come from a summed-area table, so labelling is O(1) per tile.

Conventions:
- polygons in an exclusion group (CAMELYON16 ``_2``, ``Exclusion``; configurable) are subtracted;
  all other polygons are positive (class 1);
- label masks: ``positive_values`` lists the mask values counted as positive. Default (None):
  a binary mask (values within {0, 1} or {0, 255}) counts non-zero; a multi-value mask counts its
  largest value (stainshift.synth masks: 0 glass, 1 tissue, 2 tumour -> 2). With ``mask_classes``
  ({mask value: class id}) a multi-class mask gives each tile the class covering most of it.
"""
from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from PIL import Image

__all__ = ["AnnotationError", "LabelRaster", "load_annotation", "read_polygons", "DEFAULT_EXCLUDE_GROUPS"]

DEFAULT_EXCLUDE_GROUPS = ("_2", "Exclusion", "exclusion")
MASK_SUFFIXES = {".png", ".tif", ".tiff", ".bmp", ".jpg", ".jpeg", ".gif"}
OUTSIDE_TOLERANCE = 0.02  # polygons may overshoot the slide by 2 % (hand-drawn edges), not more
MAX_RASTER_SIDE = 8192


class AnnotationError(ValueError):
    """An annotation file that cannot be used; the message names the file and the problem."""


@dataclass
class Polygon:
    """A polygon in level-0 pixels: exterior (n, 2) x/y and optional holes."""

    exterior: np.ndarray
    holes: list[np.ndarray] = field(default_factory=list)
    group: str = ""


@dataclass
class LabelRaster:
    """Class raster at ``downsample`` of level 0 (uint8 class ids; 0 = background/negative)."""

    classes: np.ndarray
    downsample: float
    source: str
    multiclass: bool = False
    warnings: list[str] = field(default_factory=list)  # geometry the user should look at (tile stage logs them)
    _sat: dict[int, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def class_ids(self) -> list[int]:
        """Class ids present in the raster (0 = unlabelled excluded)."""
        return [int(c) for c in np.unique(self.classes) if c != 0]

    def _table(self, cls: int) -> np.ndarray:
        if cls not in self._sat:
            m = (self.classes == cls).astype(np.int64)
            sat = np.zeros((m.shape[0] + 1, m.shape[1] + 1), dtype=np.int64)
            sat[1:, 1:] = m.cumsum(0).cumsum(1)
            self._sat[cls] = sat
        return self._sat[cls]

    def class_fractions(self, coords0: np.ndarray, size0: float) -> dict[int, np.ndarray]:
        """Fraction of each tile's footprint (level-0 top-left ``coords0``, side ``size0``) per class.

        The part of a footprint outside the raster counts as background.
        """
        coords0 = np.asarray(coords0, dtype=np.float64).reshape(-1, 2)
        h, w = self.classes.shape
        x0 = np.floor(coords0[:, 0] / self.downsample).astype(np.int64)
        y0 = np.floor(coords0[:, 1] / self.downsample).astype(np.int64)
        side = max(1, int(round(size0 / self.downsample)))
        x1, y1 = x0 + side, y0 + side
        xa, xb = np.clip(x0, 0, w), np.clip(x1, 0, w)
        ya, yb = np.clip(y0, 0, h), np.clip(y1, 0, h)
        out = {}
        for cls in self.class_ids:
            sat = self._table(cls)
            s = sat[yb, xb] - sat[ya, xb] - sat[yb, xa] + sat[ya, xa]
            out[cls] = (s / float(side * side)).astype(np.float32)
        return out

    def tile_labels(self, coords0: np.ndarray, size0: float, threshold: float) -> tuple[np.ndarray, np.ndarray]:
        """(label int64, label_fraction float32) per tile.

        Binary: fraction = positive coverage, label = 1 if fraction > threshold else 0.
        Multi-class: the class with the largest coverage above ``threshold`` (else 0) and its coverage.
        """
        n = len(np.asarray(coords0).reshape(-1, 2))
        fractions = self.class_fractions(coords0, size0)
        if not self.multiclass:
            frac = fractions.get(1, np.zeros(n, dtype=np.float32))
            return (frac > threshold).astype(np.int64), frac.astype(np.float32)
        if not fractions:
            return np.zeros(n, np.int64), np.zeros(n, np.float32)
        ids = np.array(sorted(fractions))
        stack = np.stack([fractions[i] for i in ids], 1)
        best = stack.argmax(1)
        best_frac = stack[np.arange(n), best]
        label = np.where(best_frac > threshold, ids[best], 0).astype(np.int64)
        return label, best_frac.astype(np.float32)


# ---- polygons ----------------------------------------------------------------------------------
def _float(text: str | None, path: Path, what: str) -> float:
    if text is None:
        raise AnnotationError(f"{path}: {what} is missing")
    t = text.strip()
    if "," in t and "." not in t:  # some CAMELYON exports use a decimal comma
        t = t.replace(",", ".")
    try:
        value = float(t.replace(",", ""))
    except ValueError as exc:
        raise AnnotationError(f"{path}: {what} {text!r} is not a number") from exc
    if not math.isfinite(value):
        raise AnnotationError(f"{path}: {what} {text!r} is not finite")
    return value


def _read_asap(path: Path) -> list[Polygon]:
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise AnnotationError(f"{path}: malformed XML ({exc})") from exc
    polygons = []
    annotations = root.iter("Annotation")
    for i, ann in enumerate(annotations):
        kind = (ann.get("Type") or "Polygon").lower()
        if kind in ("dot", "pointset", "point"):
            continue
        coords = []
        for c in ann.iter("Coordinate"):
            order = c.get("Order")
            coords.append((int(order) if order is not None and order.isdigit() else len(coords),
                           _float(c.get("X"), path, f"annotation {i} X"), _float(c.get("Y"), path, f"annotation {i} Y")))
        if len(coords) < 3:
            raise AnnotationError(f"{path}: annotation {i} ({ann.get('Name')!r}) has {len(coords)} points, a polygon needs >= 3")
        coords.sort(key=lambda t: t[0])
        polygons.append(Polygon(np.array([(x, y) for _, x, y in coords]), group=ann.get("PartOfGroup") or ""))
    if root.tag != "ASAP_Annotations" and not polygons:
        raise AnnotationError(f"{path}: not an ASAP/CAMELYON annotation file (root <{root.tag}>)")
    return polygons


def _read_geojson(path: Path) -> list[Polygon]:
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AnnotationError(f"{path}: malformed JSON ({exc})") from exc
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        features = data.get("features", [])
    elif isinstance(data, dict) and data.get("type") == "Feature":
        features = [data]
    elif isinstance(data, list):
        features = data
    else:
        raise AnnotationError(f"{path}: expected a GeoJSON FeatureCollection, Feature or list of features")
    polygons = []
    for i, feat in enumerate(features):
        if not isinstance(feat, dict) or "geometry" not in feat:
            raise AnnotationError(f"{path}: feature {i} has no geometry")
        props = feat.get("properties") or {}
        cls = props.get("classification") or {}
        group = (cls.get("name") if isinstance(cls, dict) else str(cls)) or props.get("name") or ""
        geom = feat["geometry"] or {}
        gtype = geom.get("type")
        if gtype == "Polygon":
            rings_list = [geom.get("coordinates")]
        elif gtype == "MultiPolygon":
            rings_list = geom.get("coordinates")
        elif gtype in ("Point", "MultiPoint", "LineString", "MultiLineString"):
            continue
        else:
            raise AnnotationError(f"{path}: feature {i} has unsupported geometry {gtype!r}")
        for rings in rings_list or []:
            try:
                arrs = [np.asarray(r, dtype=np.float64)[:, :2] for r in rings]
            except (TypeError, ValueError, IndexError) as exc:
                raise AnnotationError(f"{path}: feature {i} has malformed coordinates") from exc
            if not arrs or len(arrs[0]) < 3 or not np.isfinite(np.concatenate(arrs)).all():
                raise AnnotationError(f"{path}: feature {i} has a ring with < 3 points or non-finite coordinates")
            polygons.append(Polygon(arrs[0], arrs[1:], group=str(group)))
    return polygons


def read_polygons(path: str | Path) -> list[Polygon]:
    """Polygons of an ASAP/CAMELYON XML or GeoJSON file (level-0 pixel coordinates)."""
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(f"{path}: annotation file not found")
    if path.suffix.lower() == ".xml":
        return _read_asap(path)
    if path.suffix.lower() in (".geojson", ".json"):
        return _read_geojson(path)
    raise AnnotationError(f"{path}: unsupported annotation format (use .xml, .geojson/.json or a mask image)")


def shoelace_area(ring: np.ndarray) -> float:
    """|signed area| of a closed ring (n, 2) by the shoelace formula: for a self-intersecting ring the
    lobes of opposite orientation cancel, so it falls below the filled area."""
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y)))


def geometry_warnings(polygons: Sequence[Polygon], filled_px: Sequence[int], ds: float, path: Path,
                      exclude: Sequence[str]) -> list[str]:
    """What is odd about an annotation's geometry (each a defined result, said once): no polygon at
    all, only exclusion polygons, a polygon of zero area, a self-intersecting polygon (its filled
    area — even-odd rule — exceeds its shoelace area by more than 20 % + one raster px per edge
    length)."""
    if not polygons:
        return [f"{path}: no polygon in the annotation: every tile is labelled negative (class 0)"]
    out = []
    if all(p.group in set(exclude) for p in polygons):
        out.append(f"{path}: only exclusion polygons (groups {sorted({p.group for p in polygons})}): "
                   "every tile is labelled negative (class 0)")
    for i, (poly, px) in enumerate(zip(polygons, filled_px)):
        area = shoelace_area(poly.exterior)
        perimeter = float(np.linalg.norm(np.diff(np.vstack([poly.exterior, poly.exterior[:1]]), axis=0), axis=1).sum())
        filled = px * ds * ds
        if filled > 1.2 * area + perimeter * ds:
            out.append(f"{path}: polygon {i} (group {poly.group!r}) intersects itself: filled by the even-odd rule "
                       f"({filled:.0f} px² filled, {area:.0f} px² by its outline); fix it in the annotation tool "
                       "if a lobe should not count")
        elif area <= perimeter * ds / 2:
            out.append(f"{path}: polygon {i} (group {poly.group!r}) has (almost) no area: it labels nothing")
    return out


def _rasterise(polygons: Sequence[Polygon], dims0: tuple[int, int], ds: float, exclude: Sequence[str], path: Path,
               filled_px: list[int] | None = None) -> np.ndarray:
    """Positive-class raster at downsample ``ds``; ``filled_px`` (if given) receives each polygon's
    filled pixel count (holes not removed), in polygon order, for :func:`geometry_warnings`."""
    from skimage.draw import polygon as draw_polygon

    w0, h0 = dims0
    tol_x, tol_y = w0 * OUTSIDE_TOLERANCE, h0 * OUTSIDE_TOLERANCE
    for i, poly in enumerate(polygons):
        pts = np.concatenate([poly.exterior, *poly.holes]) if poly.holes else poly.exterior
        if (pts[:, 0].min() < -tol_x or pts[:, 1].min() < -tol_y or pts[:, 0].max() > w0 + tol_x
                or pts[:, 1].max() > h0 + tol_y):
            raise AnnotationError(
                f"{path}: polygon {i} (group {poly.group!r}) lies outside the slide "
                f"({w0}x{h0} px): x {pts[:, 0].min():.0f}..{pts[:, 0].max():.0f}, y {pts[:, 1].min():.0f}..{pts[:, 1].max():.0f}"
            )
    shape = (int(math.ceil(h0 / ds)), int(math.ceil(w0 / ds)))
    out = np.zeros(shape, dtype=np.uint8)
    excluded = set(exclude)
    counts: dict[int, int] = {}
    # positives first, then exclusions carved out; holes are carved out of their own polygon
    for positive in (True, False):
        for i, poly in enumerate(polygons):
            if (poly.group in excluded) == positive:
                continue
            rr, cc = draw_polygon(poly.exterior[:, 1] / ds, poly.exterior[:, 0] / ds, shape)
            region = np.zeros(shape, dtype=bool)
            region[rr, cc] = True
            counts[i] = int(region.sum())
            for hole in poly.holes:
                hr, hc = draw_polygon(hole[:, 1] / ds, hole[:, 0] / ds, shape)
                region[hr, hc] = False
            out[region] = 1 if positive else 0
    if filled_px is not None:
        filled_px[:] = [counts.get(i, 0) for i in range(len(polygons))]
    return out


def load_annotation(
    path: str | Path,
    dims0: tuple[int, int],
    *,
    tile_size0: float,
    exclude_groups: Sequence[str] = DEFAULT_EXCLUDE_GROUPS,
    positive_values: Sequence[int] | None = None,
    mask_classes: Mapping[int, int] | None = None,
) -> LabelRaster:
    """A :class:`LabelRaster` for a slide of level-0 size ``dims0`` = (w, h) and tiles of
    ``tile_size0`` level-0 px."""
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(f"{path}: annotation file not found")
    w0, h0 = dims0
    if path.suffix.lower() in MASK_SUFFIXES:
        return _load_mask(path, dims0, positive_values, mask_classes)
    polygons = read_polygons(path)
    ds = max(1.0, tile_size0 / 32.0, max(w0, h0) / MAX_RASTER_SIDE)
    filled: list[int] = []
    raster = _rasterise(polygons, dims0, ds, exclude_groups, path, filled)
    return LabelRaster(raster, ds, str(path), warnings=geometry_warnings(polygons, filled, ds, path, exclude_groups))


def _load_mask(path: Path, dims0: tuple[int, int], positive_values: Sequence[int] | None,
               mask_classes: Mapping[int, int] | None) -> LabelRaster:
    try:
        with Image.open(path) as img:
            img.load()
            mask = np.asarray(img)
    except Exception as exc:
        raise AnnotationError(f"{path}: not a readable label-mask image ({exc})") from exc
    if mask.ndim == 3:
        if not (np.array_equal(mask[..., 0], mask[..., 1]) and np.array_equal(mask[..., 0], mask[..., 2])):
            raise AnnotationError(f"{path}: label mask must be single-channel (got {mask.shape[2]} differing channels)")
        mask = mask[..., 0]
    w0, h0 = dims0
    mh, mw = mask.shape
    dsx, dsy = w0 / mw, h0 / mh
    if abs(dsx - dsy) > 0.02 * max(dsx, dsy) + 1.0 / min(mw, mh) * max(dsx, dsy):
        raise AnnotationError(
            f"{path}: mask size {mw}x{mh} is not a uniform downsample of the slide ({w0}x{h0}): "
            f"x factor {dsx:.3f}, y factor {dsy:.3f}"
        )
    ds = (dsx + dsy) / 2
    values = set(int(v) for v in np.unique(mask))
    if mask_classes:
        classes = np.zeros(mask.shape, dtype=np.uint8)
        for value, cls in mask_classes.items():
            classes[mask == int(value)] = int(cls)
        return LabelRaster(classes, ds, str(path), multiclass=True)
    if positive_values is None:
        positive = [v for v in values if v != 0] if values <= {0, 1} or values <= {0, 255} else [max(values)]
    else:
        positive = [int(v) for v in positive_values]
    return LabelRaster(np.isin(mask, positive).astype(np.uint8), ds, str(path))
