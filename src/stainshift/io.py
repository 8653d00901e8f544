"""Slide and image readers behind one interface (:class:`SlideReader`).

Backends, tried in this order by :func:`open_slide`:

- ``openslide`` for everything OpenSlide detects (SVS, NDPI, MRXS, SCN, vendor/generic tiled TIFF);
- ``tifffile`` for (pyramidal / OME) TIFF that OpenSlide does not open, read lazily through
  tifffile's zarr view, one region at a time;
- ``pil`` for plain images (PNG / JPEG / BMP / small TIFF ROIs); mpp must come from the sheet.

Every reader returns RGB uint8 (alpha composited onto white; area outside the image is white).
Problems raise :class:`SlideReadError` naming the file.

Hot path: :meth:`SlideReader.read_region_raw` returns the pixels in the layout the backend produced
them in, without a conversion, plus its channel order (``RGB``, or ``BGRX`` = 4 bytes per pixel,
blue first, the 4th byte ignored):

- Aperio / generic tiled TIFF with JPEG tiles (SVS, pyramidal TIFF): the tiles under the region are
  decoded straight from the file with imagecodecs (libjpeg-turbo, ~0.5 ms per 256² tile against
  ~2.5 ms through OpenSlide's compositor) -- RGB, and for a region that is exactly one TIFF tile the
  decoder's own array. The first read of each level is compared with OpenSlide's pixels; any
  difference sends that level back to OpenSlide (``_DirectJpegTiles``; ``STAINSHIFT_DIRECT_TIFF=0``
  turns it off).
- everything else OpenSlide opens: OpenSlide decodes into premultiplied ARGB words (B, G, R, A bytes
  on little-endian machines); an opaque region -- every tile inside the scanned area -- is handed on
  as that buffer (``BGRX``) and the JPEG encoder reads it directly (libjpeg-turbo's extended input
  colour spaces: the same bytes as encoding the RGB copy). Only a region with transparent pixels is
  composited onto white into RGB: premultiplied, so ``out = c + (255 - a)`` per channel.

Why one module of this size: the reader interface and its three backends keep one ``read_region``
contract, one mpp rule and one error style; the direct-JPEG path is checked against OpenSlide in the
same place.
"""
from __future__ import annotations

import ctypes
import math
import os
import sys
import threading
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

__all__ = ["SlideReader", "SlideReadError", "open_slide", "native_pixel_size", "PLAIN_IMAGE_SUFFIXES", "CHANNEL_ORDERS", "rgb_view",
           "rgb_array", "pil_rgb"]

CHANNEL_ORDERS = ("RGB", "BGRX")
DIRECT_TIFF_TILES = os.environ.get("STAINSHIFT_DIRECT_TIFF", "1") != "0"  # _DirectJpegTiles (off: OpenSlide only)
DIRECT_CACHE_BYTES = 32 << 20  # decoded partially-read TIFF tiles kept per reader (as OpenSlide's default cache)
STRIP_PIXELS = 1 << 22  # whole-level reads go in row strips of at most this many level pixels (16 MB RGBA)

PLAIN_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}
#: vendor formats OpenSlide reads (a file with one of these it does not detect is damaged)
WSI_SUFFIXES = {".svs", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide", ".tif", ".tiff"}
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
        self.grayscale = False  # one channel: not an H&E colour image (the tile stage warns)

    # ---- common -----------------------------------------------------------------------------
    @property
    def level_count(self) -> int:
        """Number of pyramid levels."""
        return len(self.level_dimensions)

    @property
    def dimensions(self) -> tuple[int, int]:
        """Level-0 (width, height) in pixels."""
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
        """Level-0 µm/px recorded in the file, or None (the override is not applied)."""
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

    def read_region_raw(self, x0: int, y0: int, level: int, w: int, h: int) -> tuple[np.ndarray, str]:
        """Like :meth:`read_region`, without a conversion: ``(pixels, order)`` where ``pixels`` is
        (h, w, 3) for ``order == "RGB"`` or (h, w, 4) for ``"BGRX"`` (opaque; the 4th byte is
        ignored). :func:`rgb_view` gives an RGB view of either without copying. The array may be
        read-only (a decoder's or the tile cache's own): copy before modifying it."""
        if not 0 <= level < self.level_count:
            raise SlideReadError(f"{self.path}: level {level} does not exist ({self.level_count} levels)")
        if w <= 0 or h <= 0:
            raise SlideReadError(f"{self.path}: region size must be positive, got {w}x{h}")
        try:
            return self._read_raw(int(x0), int(y0), int(level), int(w), int(h))
        except SlideReadError:
            raise
        except Exception as exc:
            raise SlideReadError(f"{self.path}: reading level {level} at ({x0}, {y0}) size {w}x{h} failed: {exc}") from exc

    def _read_raw(self, x0: int, y0: int, level: int, w: int, h: int) -> tuple[np.ndarray, str]:
        return self._read(x0, y0, level, w, h), "RGB"

    def read_level(self, level: int, factor: int = 1) -> np.ndarray:
        """The whole of ``level`` as RGB, reduced by an integer box ``factor`` (PIL ``Image.reduce``:
        each output pixel is the mean of a factor x factor block; the right/bottom remainder that
        does not fill a block is dropped). Read in row strips of <= ``STRIP_PIXELS`` level pixels, so
        the peak memory is the result plus one strip."""
        lw, lh = self.level_dimensions[level]
        lds = self.level_downsamples[level]
        factor = max(1, int(factor))
        out_w, out_h = max(1, lw // factor), max(1, lh // factor)
        strip = max(factor, (STRIP_PIXELS // max(1, out_w * factor)) // factor * factor)
        out = np.empty((out_h, out_w, 3), np.uint8)
        for ly in range(0, out_h * factor, strip):
            sh = min(strip, out_h * factor - ly)
            raw, order = self.read_region_raw(0, int(round(ly * lds)), level, out_w * factor, sh)
            if factor > 1 or order != "RGB":
                img = pil_rgb(raw, order)
                raw = np.asarray(img.reduce(factor) if factor > 1 else img)
            out[ly // factor : (ly + sh) // factor] = raw
        return out

    def thumbnail(self, max_size: int = 1024) -> tuple[np.ndarray, float]:
        """An RGB thumbnail whose longer side is <= ``max_size``; returns (image, level-0 downsample).

        Taken from the coarsest level whose longer side is >= ``max_size / 2`` (a native level is
        preferred to decoding a finer one), read in row strips and reduced by an integer box factor
        (PIL ``Image.reduce``) when still larger than ``max_size``, so memory stays bounded.
        """
        level, factor = self.thumbnail_plan(max_size)
        return self.read_level(level, factor), self.level_downsamples[level] * factor

    def thumbnail_plan(self, max_size: int) -> tuple[int, int]:
        """(level, integer reduce factor) that :meth:`thumbnail` uses for ``max_size``."""
        level = 0
        for i, (w, h) in enumerate(self.level_dimensions):
            if max(w, h) >= max_size / 2:
                level = i
        factor = max(1, int(math.ceil(max(self.level_dimensions[level]) / float(max_size) - 1e-9)))
        return level, factor

    def close(self) -> None:
        """Release the file handles (no-op for backends that hold none)."""
        pass

    def __enter__(self) -> "SlideReader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def describe(self) -> dict[str, Any]:
        """Path, backend, vendor, levels and pixel sizes as a JSON-ready dict (store provenance)."""
        return {
            "path": str(self.path), "backend": self.backend, "vendor": self.vendor,
            "level_dimensions": [list(d) for d in self.level_dimensions],
            "level_downsamples": list(self.level_downsamples), "native_mpp": self._native_mpp,
            "mpp_override": self._mpp_override,
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path}, levels={self.level_dimensions}, mpp={self._mpp_override or self._native_mpp})"


def rgb_view(pixels: np.ndarray, order: str) -> np.ndarray:
    """(h, w, 3) RGB view of ``pixels`` in channel ``order`` (no copy; maybe not contiguous)."""
    if order == "RGB":
        return pixels
    if order == "BGRX":
        return pixels[..., 2::-1]
    raise ValueError(f"unknown channel order {order!r}; one of {CHANNEL_ORDERS}")


def pil_rgb(pixels: np.ndarray, order: str) -> Image.Image:
    """A PIL RGB image of ``pixels`` (one unpacking pass for BGRX)."""
    h, w = pixels.shape[:2]
    if order == "BGRX":
        return Image.frombuffer("RGB", (w, h), np.ascontiguousarray(pixels), "raw", "BGRX", 0, 1)
    return Image.fromarray(np.ascontiguousarray(pixels))


def rgb_array(pixels: np.ndarray, order: str) -> np.ndarray:
    """Contiguous (h, w, 3) RGB uint8 of ``pixels`` in channel ``order`` (one copy for BGRX)."""
    if order == "RGB":
        return np.ascontiguousarray(pixels)
    return np.asarray(pil_rgb(pixels, order))


def to_uint8(arr: np.ndarray, path: Path) -> np.ndarray:
    """8-bit pixels, by one rule for every reader: uint8 as is; uint16 scaled (v · 255 / 65535,
    rounded — not clipped to white); any other sample type refused naming the file."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.uint16:
        return ((arr.astype(np.uint32) + 128) // 257).astype(np.uint8)
    raise SlideReadError(f"{path}: {arr.dtype} samples are not supported (8- or 16-bit unsigned integers only); "
                         "convert the image to 8-bit RGB")


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
class _DirectJpegTiles:
    """Decode the JPEG tiles of a tiled TIFF level straight from the file (imagecodecs' libjpeg-turbo).

    OpenSlide's ``read_region`` decodes the same tiles with the same library but then composites
    them through cairo into premultiplied ARGB (~2.5 ms for a 256² tile here, against ~0.5 ms for
    the decode alone). Used by :class:`OpenSlideReader` for regions inside a level whose TIFF page
    it can match exactly (same size, tiled, 8-bit 3-sample contiguous JPEG), at integral level
    coordinates; everything else goes through OpenSlide. The first read of every level is compared
    with OpenSlide's pixels (up to one TIFF tile of it) and the level falls back to OpenSlide for good
    on any difference. Decoded tiles are read-only; those read only in part (tiles smaller than the
    TIFF's, or straddling) stay in an LRU cache of ``DIRECT_CACHE_BYTES`` for the neighbouring reads. Reads use ``os.pread`` (thread-safe, no shared offset).
    """

    def __init__(self, path: Path, level_dimensions: tuple[tuple[int, int], ...]) -> None:
        import tifffile

        self._tif = tifffile.TiffFile(str(path))
        self._fd = os.open(str(path), os.O_RDONLY)
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()  # partially read tiles, LRU
        self._cache_bytes = 0
        self.levels: dict[int, dict[str, Any]] = {}
        pages = [pg for pg in self._tif.pages]
        for level, (w, h) in enumerate(level_dimensions):
            match = [pg for pg in pages if getattr(pg, "is_tiled", False) and (pg.imagewidth, pg.imagelength) == (w, h)]
            if len(match) != 1:
                continue
            pg = match[0]
            if (pg.compression != 7 or pg.planarconfig != 1 or pg.samplesperpixel != 3 or pg.bitspersample != 8
                    or pg.imagedepth != 1 or pg.photometric not in (2, 6)):
                continue
            self.levels[level] = {
                "tw": int(pg.tilewidth), "th": int(pg.tilelength), "w": w, "h": h,
                "across": (w + int(pg.tilewidth) - 1) // int(pg.tilewidth),
                "offsets": np.asarray(pg.dataoffsets, np.int64), "counts": np.asarray(pg.databytecounts, np.int64),
                "tables": pg.jpegtables, "decode": pg.decode, "verified": False,
            }

    def _tile(self, lv: dict[str, Any], index: int, cache: bool = False) -> np.ndarray | None:
        """Decoded tile ``index`` (read-only); ``cache``: keep it for the next partial reads."""
        key = (id(lv), index)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        n = int(lv["counts"][index])
        if n <= 0:
            return None  # sparse tile: let OpenSlide render it
        data = os.pread(self._fd, n, int(lv["offsets"][index]))
        arr = lv["decode"](data, index, jpegtables=lv["tables"])[0]
        if arr is None:
            return None
        arr = arr.reshape(arr.shape[-3:])
        arr.flags.writeable = False
        if cache:
            with self._lock:
                self._cache[key] = arr
                self._cache_bytes += arr.nbytes
                while self._cache_bytes > DIRECT_CACHE_BYTES and self._cache:
                    self._cache_bytes -= self._cache.popitem(last=False)[1].nbytes
        return arr

    def read(self, level: int, lx: int, ly: int, w: int, h: int) -> np.ndarray | None:
        """RGB (h, w, 3) of level pixels [lx, lx + w) x [ly, ly + h), or None (not servable here)."""
        lv = self.levels.get(level)
        if lv is None or lx < 0 or ly < 0 or lx + w > lv["w"] or ly + h > lv["h"]:
            return None
        tw, th = lv["tw"], lv["th"]
        tx0, ty0, tx1, ty1 = lx // tw, ly // th, (lx + w - 1) // tw, (ly + h - 1) // th
        if tx0 == tx1 and ty0 == ty1 and lx % tw == 0 and ly % th == 0 and w == tw and h == th:
            return self._tile(lv, ty0 * lv["across"] + tx0)  # the common case: one whole tile, no copy
        out = np.empty((h, w, 3), np.uint8)
        for ty in range(ty0, ty1 + 1):
            for tx in range(tx0, tx1 + 1):
                partial = lx > tx * tw or ly > ty * th or lx + w < (tx + 1) * tw or ly + h < (ty + 1) * th
                tile = self._tile(lv, ty * lv["across"] + tx, cache=partial)
                if tile is None or tile.shape[0] < th or tile.shape[1] < tw:
                    return None
                ya, yb = max(ly, ty * th), min(ly + h, (ty + 1) * th)
                xa, xb = max(lx, tx * tw), min(lx + w, (tx + 1) * tw)
                out[ya - ly : yb - ly, xa - lx : xb - lx] = tile[ya - ty * th : yb - ty * th, xa - tx * tw : xb - tx * tw]
        return out

    def close(self) -> None:
        try:
            os.close(self._fd)
        finally:
            self._tif.close()


def _openslide_raw_reader() -> Any:
    """openslide-python's ctypes binding of ``openslide_read_region`` (it fills a caller's uint32
    buffer with premultiplied ARGB and raises OpenSlideError on failure), or None where this
    openslide-python lacks it or the machine is big-endian (then the public, converting path is used)."""
    if sys.byteorder != "little":
        return None
    try:
        from openslide import lowlevel

        return getattr(lowlevel, "_read_region", None)
    except Exception:  # pragma: no cover - openslide import problems surface in OpenSlideReader
        return None


class OpenSlideReader(SlideReader):
    """Slides OpenSlide reads (SVS, NDPI, MRXS, generic TIFF, ...); Aperio / generic-TIFF JPEG tiles
    are decoded directly."""
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
        self._raw_read = _openslide_raw_reader()
        self._osr = getattr(self._slide, "_osr", None)
        self._direct: _DirectJpegTiles | None = None
        if DIRECT_TIFF_TILES and self.vendor in ("aperio", "generic-tiff"):
            try:
                self._direct = _DirectJpegTiles(path, self.level_dimensions)
                if not self._direct.levels:
                    self._direct.close()
                    self._direct = None
            except Exception:  # not a TIFF tifffile can parse: OpenSlide alone
                self._direct = None

    def _read(self, x0: int, y0: int, level: int, w: int, h: int) -> np.ndarray:
        pixels, order = self._read_raw(x0, y0, level, w, h)
        out = rgb_array(pixels, order)
        return out if out.flags.writeable else out.copy()  # read_region's result is the caller's

    def _read_raw(self, x0: int, y0: int, level: int, w: int, h: int) -> tuple[np.ndarray, str]:
        direct = self._direct
        lv = direct.levels.get(level) if direct is not None else None
        if lv is not None:
            ds = self.level_downsamples[level]
            lx, ly = x0 / ds, y0 / ds
            if lx == int(lx) and ly == int(ly):
                pixels = direct.read(level, int(lx), int(ly), w, h)
                if pixels is not None:
                    if lv["verified"]:
                        return pixels, "RGB"
                    # first read of the level: compare (at most) one TIFF tile's worth with OpenSlide
                    vw, vh = min(w, lv["tw"]), min(h, lv["th"])
                    ref, order = self._read_openslide(x0, y0, level, vw, vh)
                    if np.array_equal(rgb_view(ref, order), pixels[:vh, :vw]):
                        lv["verified"] = True
                        return pixels, "RGB"
                    direct.levels.pop(level, None)  # differs from OpenSlide: OpenSlide for this level from now on
                    warnings.warn(f"{self.path}: level {level} direct JPEG tile decoding differs from OpenSlide; "
                                  f"using OpenSlide", stacklevel=2)
        return self._read_openslide(x0, y0, level, w, h)

    def _read_openslide(self, x0: int, y0: int, level: int, w: int, h: int) -> tuple[np.ndarray, str]:
        if self._raw_read is None or self._osr is None:
            return _rgba_to_rgb(np.asarray(self._slide.read_region((x0, y0), level, (w, h)))), "RGB"
        buf = np.empty((h, w, 4), np.uint8)  # every pixel is written by OpenSlide
        self._raw_read(self._osr, buf.ctypes.data_as(ctypes.POINTER(ctypes.c_uint32)), x0, y0, level, w, h)
        if int(buf.view(np.uint32).min()) >= 0xFF000000:  # all opaque (alpha is the high byte)
            return buf, "BGRX"
        # transparent pixels (outside the scanned area): premultiplied, so over white c + (255 - a)
        rgb = buf[..., 2::-1].astype(np.int16)
        rgb += 255 - buf[..., 3:4].astype(np.int16)
        return np.clip(rgb, 0, 255).astype(np.uint8), "RGB"

    def close(self) -> None:
        """Close the direct-tile reader and the OpenSlide handle."""
        if self._direct is not None:
            self._direct.close()
        self._slide.close()


# ---- tifffile ----------------------------------------------------------------------------------
_RES_UNIT_UM = {2: 25_400.0, 3: 10_000.0}  # inch, centimetre in µm


class TiffReader(SlideReader):
    """Pyramidal, OME and plain TIFFs through tifffile (also 16-bit and grey TIFFs OpenSlide cannot read)."""
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
        if self._arrays[0].dtype not in (np.uint8, np.uint16):
            raise SlideReadError(f"{path}: {self._arrays[0].dtype} samples are not supported (8- or 16-bit unsigned "
                                 "integers only); convert the image to 8-bit RGB")
        channels = 1 if self._axes == "YX" else int(self._arrays[0].shape[self._axes.index("S" if "S" in self._axes else "C")])
        self.grayscale = channels == 1
        self.dtype = np.dtype(self._arrays[0].dtype)
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
            return _rgba_to_rgb(to_uint8(block, self.path))

        return _paste(h, w, lx, ly, lw, lh, get)

    def close(self) -> None:
        """Close the TIFF file."""
        self._tif.close()


# ---- plain images -------------------------------------------------------------------------------
class PlainImageReader(SlideReader):
    """PNG / JPEG / BMP / GIF / WebP images, loaded whole as one level (16-bit grey scaled to 8 bits)."""
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
                    self.grayscale = img.mode in ("1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "F")
                    if img.mode.startswith("I;16"):  # 16-bit grey: scaled, not clipped by convert()
                        self._rgb = _rgba_to_rgb(to_uint8(np.asarray(img), path))
                    elif img.mode in ("I", "F"):
                        raise SlideReadError(f"{path}: {img.mode!r} ({'32-bit integer' if img.mode == 'I' else 'float'}) "
                                             "pixels are not supported; convert the image to 8-bit RGB")
                    else:
                        self._rgb = _rgba_to_rgb(np.asarray(img.convert("RGBA") if img.mode in ("P", "LA", "RGBA", "PA")
                                                            else img.convert("RGB")))
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


def native_pixel_size(path: str | os.PathLike) -> float | None:
    """Level-0 µm/px recorded in the file's header, or None when it records none; reads no pixels.
    Plain images (PNG, JPEG, ...) carry no microscope pixel size. Unreadable files raise
    :class:`SlideReadError` naming the file."""
    path = Path(path)
    if path.suffix.lower() in PLAIN_IMAGE_SUFFIXES:
        return None
    with open_slide(path) as reader:
        return reader.native_mpp


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
                if alt.level_count > reader.level_count or alt.dtype != np.uint8 or alt.grayscale:
                    # tifffile also reads 16-bit and grey TIFFs right (OpenSlide fails or expands them)
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
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+") or suffix in WSI_SUFFIXES:
        raise SlideReadError(
            f"{path}: {'a TIFF-based' if magic[:2] in (b'II', b'MM') else 'a ' + suffix} slide that OpenSlide cannot "
            f"read: truncated or corrupt ({path.stat().st_size:,} bytes)? Copy it again or check it with the "
            "scanner's software")
    raise SlideReadError(
        f"{path}: unsupported format (not detected by OpenSlide; plain images need one of "
        f"{', '.join(sorted(PLAIN_IMAGE_SUFFIXES))}, other TIFF needs .tif/.tiff)"
    )
