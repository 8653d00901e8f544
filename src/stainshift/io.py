"""Slide and image readers behind one interface (:class:`SlideReader`).

Backends, tried in this order by :func:`open_slide`:

- ``openslide`` for everything OpenSlide detects (SVS, NDPI, MRXS, SCN, vendor/generic tiled TIFF);
- ``tifffile`` for (pyramidal / OME) TIFF that OpenSlide does not open, read lazily through
  tifffile's zarr view, one region at a time;
- ``pil`` for plain images (PNG / JPEG / BMP / small TIFF ROIs); mpp must come from the sheet.

Every reader returns RGB uint8 (alpha composited onto white; area outside the image is white).
Problems raise :class:`SlideReadError` naming the file.
"""
from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

__all__ = ["SlideReader", "SlideReadError", "open_slide", "PLAIN_IMAGE_SUFFIXES"]

PLAIN_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}
TIFF_SUFFIXES = {".tif", ".tiff", ".ome.tif", ".ome.tiff", ".btf"}
MAX_PLAIN_PIXELS = 30_000 * 30_000  # plain images are decoded whole; larger ones must be pyramidal TIFF


class SlideReadError(ValueError):
    """A slide or image that cannot be opened or read; the message names the file."""


class SlideReader:
    """One interface over the backends. Coordinates of ``read_region`` are level-0 pixels.

    Attributes: ``path``, ``backend``, ``level_count``, ``level_dimensions`` ((w, h) per level),
    ``level_downsamples``, ``mpp`` (level-0 µm/px, override applied), ``vendor``.
    """

    backend = "base"

    def __init__(self, path: Path, mpp_override: float | None = None) -> None:
        self.path = Path(path)
        self._mpp_override = mpp_override
        self.level_dimensions: tuple[tuple[int, int], ...] = ()
        self.level_downsamples: tuple[float, ...] = ()
        self.vendor: str | None = None
        self._native_mpp: float | None = None

    # ---- common -----------------------------------------------------------------------------
    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    @property
    def dimensions(self) -> tuple[int, int]:
        return self.level_dimensions[0]

    @property
    def mpp(self) -> float:
        """Level-0 µm/px: the override if given, else the file's own value; neither is an error."""
        if self._mpp_override is not None:
            return float(self._mpp_override)
        if self._native_mpp is None:
            raise SlideReadError(
                f"{self.path}: no pixel size (mpp) in the file; give it in the sample sheet's 'mpp' column"
            )
        return float(self._native_mpp)

    @property
    def native_mpp(self) -> float | None:
        return self._native_mpp

    def read_region(self, x0: int, y0: int, level: int, w: int, h: int) -> np.ndarray:
        """RGB uint8 (h, w, 3) of ``level`` starting at level-0 pixel (x0, y0)."""
        if not 0 <= level < self.level_count:
            raise SlideReadError(f"{self.path}: level {level} does not exist ({self.level_count} levels)")
        if w <= 0 or h <= 0:
            raise SlideReadError(f"{self.path}: region size must be positive, got {w}x{h}")
        try:
            return self._read(int(x0), int(y0), int(level), int(w), int(h))
        except SlideReadError:
            raise
        except Exception as exc:  # backend errors (truncated tiles, decode failures)
            raise SlideReadError(f"{self.path}: reading level {level} at ({x0}, {y0}) size {w}x{h} failed: {exc}") from exc

    def _read(self, x0: int, y0: int, level: int, w: int, h: int) -> np.ndarray:
        raise NotImplementedError

    def thumbnail(self, max_size: int = 1024) -> tuple[np.ndarray, float]:
        """An RGB thumbnail whose longer side is <= ``max_size``; returns (image, level-0 downsample).

        Taken from the coarsest level whose longer side is >= ``max_size / 2`` (a native level is
        preferred to decoding a finer one), read in row strips and reduced by an integer box factor
        (PIL ``Image.reduce``) when still larger than ``max_size``, so memory stays bounded.
        """
        level = 0
        for i, (w, h) in enumerate(self.level_dimensions):
            if max(w, h) >= max_size / 2:
                level = i
        lds = self.level_downsamples[level]
        lw, lh = self.level_dimensions[level]
        factor = max(1, int(math.ceil(max(lw, lh) / float(max_size) - 1e-9)))
        out_w, out_h = max(1, lw // factor), max(1, lh // factor)
        strip = max(factor, (2048 // factor) * factor)
        rows = []
        for ly in range(0, out_h * factor, strip):
            sh = min(strip, out_h * factor - ly)
            region = self.read_region(0, int(round(ly * lds)), level, out_w * factor, sh)
            rows.append(np.asarray(Image.fromarray(region).reduce(factor)) if factor > 1 else region)
        return np.concatenate(rows, 0), lds * factor

    def close(self) -> None:
        pass

    def __enter__(self) -> "SlideReader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def describe(self) -> dict[str, Any]:
        return {
            "path": str(self.path), "backend": self.backend, "vendor": self.vendor,
            "level_dimensions": [list(d) for d in self.level_dimensions],
            "level_downsamples": list(self.level_downsamples), "native_mpp": self._native_mpp,
            "mpp_override": self._mpp_override,
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path}, levels={self.level_dimensions}, mpp={self._mpp_override or self._native_mpp})"


def _rgba_to_rgb(arr: np.ndarray) -> np.ndarray:
    """Composite RGBA onto white; pass RGB through; expand grey."""
    if arr.ndim == 2:
        return np.repeat(arr[..., None], 3, axis=2).astype(np.uint8)
    if arr.shape[2] == 4:
        if arr[..., 3].min() == 255:  # opaque (every pixel inside the scanned area): no compositing
            return np.ascontiguousarray(arr[..., :3])
        rgb = arr[..., :3].astype(np.uint16)
        a = arr[..., 3:4].astype(np.uint16)
        return ((rgb * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)
    if arr.shape[2] == 1:
        return np.repeat(arr, 3, axis=2).astype(np.uint8)
    return np.ascontiguousarray(arr[..., :3], dtype=np.uint8)


def _paste(h: int, w: int, x0: int, y0: int, full_w: int, full_h: int, getter: Any) -> np.ndarray:
    """White (h, w, 3) canvas with the in-bounds part of a region from ``getter(x0, y0, x1, y1)``."""
    out = np.full((h, w, 3), 255, dtype=np.uint8)
    xa, ya = max(x0, 0), max(y0, 0)
    xb, yb = min(x0 + w, full_w), min(y0 + h, full_h)
    if xb > xa and yb > ya:
        out[ya - y0 : yb - y0, xa - x0 : xb - x0] = getter(xa, ya, xb, yb)
    return out


# ---- openslide ---------------------------------------------------------------------------------
class OpenSlideReader(SlideReader):
    backend = "openslide"

    def __init__(self, path: Path, mpp_override: float | None = None) -> None:
        super().__init__(path, mpp_override)
        import openslide

        try:
            self._slide = openslide.OpenSlide(str(path))
        except Exception as exc:
            raise SlideReadError(f"{path}: OpenSlide could not open it: {exc}") from exc
        self.level_dimensions = tuple(tuple(int(v) for v in d) for d in self._slide.level_dimensions)
        self.level_downsamples = tuple(float(d) for d in self._slide.level_downsamples)
        props = self._slide.properties
        self.vendor = props.get(openslide.PROPERTY_NAME_VENDOR)
        mpp = props.get(openslide.PROPERTY_NAME_MPP_X)
        try:
            self._native_mpp = float(mpp) if mpp not in (None, "") and float(mpp) > 0 else None
        except ValueError:
            self._native_mpp = None

    def _read(self, x0: int, y0: int, level: int, w: int, h: int) -> np.ndarray:
        region = self._slide.read_region((x0, y0), level, (w, h))
        return _rgba_to_rgb(np.asarray(region))

    def close(self) -> None:
        self._slide.close()


# ---- tifffile ----------------------------------------------------------------------------------
_RES_UNIT_UM = {2: 25_400.0, 3: 10_000.0}  # inch, centimetre in µm


class TiffReader(SlideReader):
    backend = "tifffile"

    def __init__(self, path: Path, mpp_override: float | None = None) -> None:
        super().__init__(path, mpp_override)
        import tifffile
        import zarr

        try:
            self._tif = tifffile.TiffFile(str(path))
            series = self._tif.series[0]
            levels = series.levels
            self._axes = series.axes
            self._arrays = []
            for i in range(len(levels)):
                store = series.aszarr(level=i)  # tifffile exposes zarr-2 metadata
                self._arrays.append(zarr.open_array(store, mode="r", zarr_format=2))
        except Exception as exc:
            raise SlideReadError(f"{path}: tifffile could not open it: {exc}") from exc
        if self._axes not in ("YXS", "YX", "SYX", "CYX"):
            raise SlideReadError(f"{path}: unsupported TIFF axes {self._axes!r} (need YXS, YX or CYX)")
        yi, xi = self._axes.index("Y"), self._axes.index("X")
        dims = [(int(a.shape[xi]), int(a.shape[yi])) for a in self._arrays]
        self.level_dimensions = tuple(dims)
        self.level_downsamples = tuple(dims[0][0] / d[0] for d in dims)
        self.vendor = "ome" if self._tif.is_ome else "tiff"
        self._native_mpp = self._find_mpp(levels[0].keyframe)

    def _find_mpp(self, page: Any) -> float | None:
        if self._tif.is_ome:
            import re

            m = re.search(r'PhysicalSizeX="([0-9.eE+-]+)"', self._tif.ome_metadata or "")
            unit = re.search(r'PhysicalSizeXUnit="([^"]+)"', self._tif.ome_metadata or "")
            if m and (unit is None or unit.group(1) in ("µm", "um", "\u00b5m")):
                return float(m.group(1))
        tags = page.tags
        if "XResolution" in tags and "ResolutionUnit" in tags:
            num, den = tags["XResolution"].value
            unit = int(tags["ResolutionUnit"].value)
            if num and den and unit in _RES_UNIT_UM:
                px_per_unit = num / den
                mpp = _RES_UNIT_UM[unit] / px_per_unit
                if 0.01 < mpp < 100:  # 72 dpi defaults etc. are not microscope pixel sizes
                    return mpp
        return None

    def _read(self, x0: int, y0: int, level: int, w: int, h: int) -> np.ndarray:
        ds = self.level_downsamples[level]
        lx, ly = int(x0 // ds), int(y0 // ds)
        lw, lh = self.level_dimensions[level]
        arr = self._arrays[level]

        def get(xa: int, ya: int, xb: int, yb: int) -> np.ndarray:
            if self._axes in ("SYX", "CYX"):
                block = np.moveaxis(np.asarray(arr[:, ya:yb, xa:xb]), 0, -1)
            else:
                block = np.asarray(arr[ya:yb, xa:xb])
            if block.dtype != np.uint8:
                raise SlideReadError(f"{self.path}: only uint8 images are supported, got {block.dtype}")
            return _rgba_to_rgb(block)

        return _paste(h, w, lx, ly, lw, lh, get)

    def close(self) -> None:
        self._tif.close()


# ---- plain images -------------------------------------------------------------------------------
class PlainImageReader(SlideReader):
    backend = "pil"

    def __init__(self, path: Path, mpp_override: float | None = None) -> None:
        super().__init__(path, mpp_override)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(path) as img:
                    if img.width * img.height > MAX_PLAIN_PIXELS:
                        raise SlideReadError(f"{path}: {img.width}x{img.height} is too large for a plain image; use a tiled TIFF")
                    img.load()
                    self._rgb = _rgba_to_rgb(np.asarray(img.convert("RGBA") if img.mode in ("P", "LA", "RGBA", "PA") else img.convert("RGB")))
        except SlideReadError:
            raise
        except Exception as exc:
            raise SlideReadError(f"{path}: not a readable image ({type(exc).__name__}: {exc})") from exc
        h, w = self._rgb.shape[:2]
        self.level_dimensions = ((w, h),)
        self.level_downsamples = (1.0,)
        self.vendor = "image"

    def _read(self, x0: int, y0: int, level: int, w: int, h: int) -> np.ndarray:
        H, W = self._rgb.shape[:2]
        return _paste(h, w, x0, y0, W, H, lambda xa, ya, xb, yb: self._rgb[ya:yb, xa:xb])


def open_slide(path: str | os.PathLike, mpp: float | None = None) -> SlideReader:
    """Open ``path`` with the first backend that can read it; ``mpp`` overrides the file's value."""
    path = Path(path)
    if mpp is not None and not (isinstance(mpp, (int, float)) and mpp > 0 and math.isfinite(mpp)):
        raise SlideReadError(f"{path}: mpp override must be a positive number, got {mpp!r}")
    if not path.exists():
        raise SlideReadError(f"{path}: file not found")
    if not path.is_file():
        raise SlideReadError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise SlideReadError(f"{path}: file is empty")
    suffix = "".join(path.suffixes[-2:]).lower() if path.name.lower().endswith((".ome.tif", ".ome.tiff")) else path.suffix.lower()
    if suffix in PLAIN_IMAGE_SUFFIXES:
        return PlainImageReader(path, mpp)
    import openslide

    try:
        fmt = openslide.OpenSlide.detect_format(str(path))
    except Exception:
        fmt = None
    if fmt is not None:
        try:
            reader = OpenSlideReader(path, mpp)
            if fmt == "generic-tiff" and suffix in TIFF_SUFFIXES:
                # OpenSlide ignores pyramid levels stored as SubIFDs (common in OME-TIFF):
                # prefer tifffile when it sees more levels.
                try:
                    alt = TiffReader(path, mpp)
                except SlideReadError:
                    return reader
                if alt.level_count > reader.level_count:
                    reader.close()
                    return alt
                alt.close()
            return reader
        except SlideReadError as exc:
            if suffix not in TIFF_SUFFIXES:
                raise
            openslide_error = exc
    else:
        openslide_error = None
    if suffix in TIFF_SUFFIXES:
        try:
            return TiffReader(path, mpp)
        except SlideReadError as exc:
            if openslide_error is not None:
                raise SlideReadError(f"{openslide_error}; {exc}") from exc
            raise
    if openslide_error is not None:
        raise openslide_error
    raise SlideReadError(
        f"{path}: unsupported format (not detected by OpenSlide; plain images need one of "
        f"{', '.join(sorted(PLAIN_IMAGE_SUFFIXES))}, other TIFF needs .tif/.tiff)"
    )
