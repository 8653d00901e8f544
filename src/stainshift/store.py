"""The zarr patch store: the one module that knows its layout (docs/architecture.md, "Patch store").

Layout of ``{store}.zarr`` (zarr format 3, a group):

- ``images``          (N, S, S, 3) uint8, one tile per chunk, ``shard_tiles`` tiles per shard file;
                      codec ``jpeg`` (the ``stainshift.jpeg`` codec below), ``zstd`` or ``lz4``.
- ``coords``          (N, 2) int64 level-0 x, y of each tile's top-left (-1 where unknown).
- ``tissue_fraction`` (N,) float32.
- ``label``           (N,) int64, -1 = unknown.
- ``label_fraction``  (N,) float32, NaN where not annotated.
- group attrs: every key of ``REQUIRED_ATTRS`` (None where it does not apply), plus ``n_tiles``.
  ``mpp_source`` says where ``mpp_level0`` came from: ``"file"`` (the slide's own metadata, read by
  :mod:`stainshift.io`), ``"sheet"`` (the sample sheet's ``mpp`` column, which overrides the file),
  ``"config"`` (a crop set's ``mpp`` key in the config) or None (no µm/px known); stores written
  before it existed lack the key and read as ``"unknown"`` (:func:`mpp_source`).

Portability: the ``jpeg`` codec needs stainshift (its entry point or an import) to decode; ``zstd``
is built into zarr-python 3 (``gzip`` is in the zarr-3 core spec), so such a store opens with a plain
zarr install. :func:`export_store` (``stainshift export``) writes a lossless zstd/gzip copy of any
store for readers without stainshift.

Why zarr 3 with a registered JPEG codec rather than zarr 2 + ``imagecodecs.numcodecs``: both need
a registration before a plain ``zarr.open_group`` can decode (imagecodecs declares no entry point),
but zarr 3 gives sharding (one file per ``shard_tiles`` tiles instead of one per tile) and the
codec is registered for every process through the package entry point
``[project.entry-points."zarr.codecs"] "stainshift.jpeg" = "stainshift.store:JpegCodec"``
(importing this module registers it too). Measured with benchmarks/bench_tiling.py ``--codecs``
(512 real 256² CMU-1 tiles): JPEG q90 4:4:4 32.2 KB/tile in 9 shard files (zarr 2 + imagecodecs JPEG,
4:2:0: 25.9 KB/tile in 514 files), zstd-3 172 KB, lz4 180 KB. 4:4:4 is the default because 4:2:0
costs ~5 dB on small downsampled tiles (32 px at 1 µm/px: 38 vs 43 dB mean PSNR at q90).

Writes are atomic: everything goes to a hidden temp directory beside the target, which is renamed
into place on success and removed on error (temp dirs of killed writers are removed by the next
writer of the same store). ``{store}.json`` beside it (:func:`write_manifest`, written last) marks
a complete store; the workflow's rules declare it as their output.

Why one module of this size: it owns one format end to end — the layout, the JPEG codec registered
with zarr, the writer, the reader, manifests and atomic replacement; split, the format would have
several owners.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shutil
import struct
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import google_crc32c
import imagecodecs
import numcodecs
import numpy as np
import zarr
from zarr.abc.codec import ArrayBytesCodec
from zarr.codecs import BytesCodec, ZstdCodec
from zarr.codecs.numcodecs import LZ4 as ZarrLZ4
from zarr.core.buffer import Buffer, NDBuffer
from zarr.core.common import JSON, parse_named_configuration
from zarr.registry import register_codec

log = logging.getLogger("stainshift.store")

from stainshift import __version__
from stainshift.atomic import write_json

__all__ = [
    "CODECS",
    "REQUIRED_ATTRS",
    "ARRAYS",
    "JpegCodec",
    "StoreError",
    "StoreWriter",
    "PatchStore",
    "write_store",
    "encode_tile",
    "atomic_dir",
    "manifest_path",
    "store_path",
    "write_manifest",
    "export_store",
    "mpp_source",
    "EXPORT_CODECS",
    "MPP_SOURCES",
]

CODECS = ("jpeg", "zstd", "lz4")
JPEG_CODEC_NAME = "stainshift.jpeg"
ARRAYS = ("images", "coords", "tissue_fraction", "label", "label_fraction")
REQUIRED_ATTRS = (
    "slide_id", "center", "patient", "split", "source_path", "source_size", "source_mtime",
    "mpp_level0", "mpp_source", "target_mpp", "read_level", "downsample", "patch_size", "stride", "filter",
    "filter_params", "seed", "codec", "software_version",
)
STORE_FORMAT_VERSION = 1
MPP_SOURCES = ("file", "sheet", "config")  # attrs["mpp_source"]; None = no µm/px known
EXPORT_CODECS = ("zstd", "gzip")  # lossless codecs built into zarr-python 3: no stainshift needed to read
_MAX_U64 = 2**64 - 1
_SUBSAMPLING = {"444": (1, 1), "422": (2, 1), "420": (2, 2)}


class StoreError(ValueError):
    """A patch store that cannot be written or read, with a message naming the store and the key."""


# --------------------------------------------------------------------------------------------------
# The zarr-3 JPEG codec
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class JpegCodec(ArrayBytesCodec):
    """zarr-3 array->bytes codec: a uint8 chunk (..., H, W, C) with C in {1, 3} as one baseline JPEG.

    Leading dimensions are stacked vertically (a (1, S, S, 3) tile chunk is one S x S JPEG), so a
    chunk decodes with any JPEG reader. Registered as ``stainshift.jpeg``.
    """

    is_fixed_size = False
    quality: int = 90
    subsampling: str = "444"

    def __init__(self, *, quality: int = 90, subsampling: str = "444") -> None:
        if not 1 <= int(quality) <= 100:
            raise ValueError(f"{JPEG_CODEC_NAME}: quality must be in 1..100, got {quality}")
        if subsampling not in _SUBSAMPLING:
            raise ValueError(f"{JPEG_CODEC_NAME}: subsampling must be one of {sorted(_SUBSAMPLING)}, got {subsampling!r}")
        object.__setattr__(self, "quality", int(quality))
        object.__setattr__(self, "subsampling", subsampling)

    @classmethod
    def from_dict(cls, data: dict[str, JSON]) -> "JpegCodec":
        """The codec from its zarr metadata."""
        _, configuration = parse_named_configuration(data, JPEG_CODEC_NAME, require_configuration=False)
        return cls(**(configuration or {}))  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, JSON]:
        """The codec's zarr metadata (name and configuration)."""
        return {"name": JPEG_CODEC_NAME, "configuration": {"quality": self.quality, "subsampling": self.subsampling}}

    def validate(self, *, shape: tuple[int, ...], dtype: Any, chunk_grid: Any) -> None:
        """Check that the array is uint8 with 1 or 3 channels last."""
        native = np.dtype(dtype.to_native_dtype()) if hasattr(dtype, "to_native_dtype") else np.dtype(dtype)
        if native != np.uint8:
            raise ValueError(f"{JPEG_CODEC_NAME} needs uint8 data, got {native}")
        if len(shape) < 3 or shape[-1] not in (1, 3):
            raise ValueError(f"{JPEG_CODEC_NAME} needs shape (..., H, W, 1|3), got {shape}")

    def encode_array(self, chunk: np.ndarray) -> bytes:
        """JPEG bytes of one chunk (also used by workers that pre-encode tiles)."""
        return _jpeg_encode(chunk, self.quality, self.subsampling)

    def decode_bytes(self, data: bytes | np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        """Decode one chunk's bytes to an array of ``shape``."""
        img = imagecodecs.jpeg8_decode(np.asarray(data, dtype=np.uint8) if not isinstance(data, bytes) else data)
        return np.asarray(img, dtype=np.uint8).reshape(shape)

    def _decode_sync(self, chunk_bytes: Buffer, chunk_spec: Any) -> NDBuffer:
        arr = self.decode_bytes(chunk_bytes.as_numpy_array(), tuple(chunk_spec.shape))
        return chunk_spec.prototype.nd_buffer.from_numpy_array(arr)

    async def _decode_single(self, chunk_bytes: Buffer, chunk_spec: Any) -> NDBuffer:
        return await asyncio.to_thread(self._decode_sync, chunk_bytes, chunk_spec)

    def _encode_sync(self, chunk_array: NDBuffer, chunk_spec: Any) -> Buffer | None:
        data = self.encode_array(chunk_array.as_numpy_array())
        return chunk_spec.prototype.buffer.from_bytes(data)

    async def _encode_single(self, chunk_array: NDBuffer, chunk_spec: Any) -> Buffer | None:
        return await asyncio.to_thread(self._encode_sync, chunk_array, chunk_spec)

    def compute_encoded_size(self, input_byte_length: int, _chunk_spec: Any) -> int:
        """Not defined for JPEG (variable size): raises NotImplementedError."""
        raise NotImplementedError(f"{JPEG_CODEC_NAME} has no fixed encoded size")


def _jpeg_encode(chunk: np.ndarray, quality: int, subsampling: str, order: str = "RGB") -> bytes:
    """Baseline JPEG of a uint8 chunk; ``order="BGRX"`` takes 4-byte pixels (blue first, 4th byte
    ignored) straight from a slide reader (libjpeg-turbo's extended input colour space: the same
    bytes as encoding the RGB copy, without making it)."""
    arr = np.ascontiguousarray(chunk, dtype=np.uint8)
    w, c = arr.shape[-2], arr.shape[-1]
    img = arr.reshape(-1, w, c)
    if c == 1:
        img = img[..., 0]
    kwargs: dict[str, Any] = {"level": quality}
    if order == "BGRX":
        if c != 4:
            raise StoreError(f"BGRX pixels need 4 channels, got {c}")
        kwargs.update(colorspace=_JCS_EXT_BGRX, outcolorspace=_JCS_YCBCR, subsampling=_SUBSAMPLING[subsampling])
    elif order != "RGB":
        raise StoreError(f"unknown channel order {order!r} (RGB or BGRX)")
    elif c == 3:
        kwargs["subsampling"] = _SUBSAMPLING[subsampling]
    return bytes(imagecodecs.jpeg8_encode(img, **kwargs))


_JCS_EXT_BGRX = imagecodecs.JPEG8.CS.EXT_BGRX
_JCS_YCBCR = imagecodecs.JPEG8.CS.YCbCr


register_codec(JPEG_CODEC_NAME, JpegCodec)


# --------------------------------------------------------------------------------------------------
# Codec choice and pre-encoding of single tiles
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CodecSpec:
    """A tile codec as configured: ``jpeg`` (quality, subsampling), ``zstd`` (level) or ``lz4``."""

    name: str = "jpeg"
    jpeg_quality: int = 90
    jpeg_subsampling: str = "444"
    zstd_level: int = 3

    def __post_init__(self) -> None:
        if self.name not in CODECS:
            raise StoreError(f"unknown codec {self.name!r}: choose one of {', '.join(CODECS)}")

    def inner_codecs(self) -> list[Any]:
        """The zarr codec chain of one tile chunk."""
        if self.name == "jpeg":
            return [JpegCodec(quality=self.jpeg_quality, subsampling=self.jpeg_subsampling)]
        if self.name == "zstd":
            return [BytesCodec(), ZstdCodec(level=self.zstd_level)]
        with warnings.catch_warnings():  # "numcodecs codecs are not in the zarr 3 spec": known, wanted
            warnings.simplefilter("ignore")
            return [BytesCodec(), ZarrLZ4()]

    def describe(self) -> dict[str, Any]:
        """The codec and its settings as a JSON-ready dict (store attrs)."""
        if self.name == "jpeg":
            return {"name": "jpeg", "quality": self.jpeg_quality, "subsampling": self.jpeg_subsampling}
        if self.name == "zstd":
            return {"name": "zstd", "level": self.zstd_level}
        return {"name": "lz4"}


def encode_tile(tile: np.ndarray, codec: CodecSpec, order: str = "RGB") -> bytes:
    """The exact chunk bytes the store's codec chain writes for one (S, S, 3) tile.

    Worker processes call this so the (single) writer only moves bytes; a round-trip test checks
    the bytes decode through zarr. ``order="BGRX"``: ``tile`` is (S, S, 4) as a slide reader
    returns it (:meth:`stainshift.io.SlideReader.read_region_raw`); JPEG reads it as is, the
    lossless codecs store its RGB bytes (one copy).
    """
    if codec.name == "jpeg":
        return _jpeg_encode(tile, codec.jpeg_quality, codec.jpeg_subsampling, order)
    if order == "BGRX":
        from PIL import Image

        h, w = tile.shape[:2]
        raw = Image.frombuffer("RGB", (w, h), np.ascontiguousarray(tile, dtype=np.uint8), "raw", "BGRX", 0, 1).tobytes()
    elif order == "RGB":
        raw = np.ascontiguousarray(tile, dtype=np.uint8).tobytes()
    else:
        raise StoreError(f"unknown channel order {order!r} (RGB or BGRX)")
    if codec.name == "zstd":
        return bytes(numcodecs.Zstd(level=codec.zstd_level, checksum=False).encode(raw))
    return bytes(numcodecs.LZ4().encode(raw))


def _shard_bytes(chunks: Sequence[bytes], shard_tiles: int) -> bytes:
    """A ``sharding_indexed`` shard (zarr v3 spec): chunks, then the (offset, nbytes) uint64 index
    (``bytes`` little-endian + ``crc32c``) at the end; unused slots are 2**64-1."""
    index = np.full((shard_tiles, 1, 1, 1, 2), _MAX_U64, dtype="<u8")
    offset = 0
    for i, chunk in enumerate(chunks):
        index[i, 0, 0, 0] = (offset, len(chunk))
        offset += len(chunk)
    index_bytes = index.tobytes()
    crc = struct.pack("<I", google_crc32c.value(index_bytes))
    return b"".join(chunks) + index_bytes + crc


# --------------------------------------------------------------------------------------------------
# Atomic directories
# --------------------------------------------------------------------------------------------------
class atomic_dir:
    """Context manager: yields a temp dir beside ``path``; renames it to ``path`` on success,
    removes it on error (an existing ``path`` is replaced only after success). Entering also
    removes what killed writers of the same ``path`` left behind (temp dirs of processes that no
    longer run on this host, half-swapped ``.old`` dirs)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.tmp = self.path.parent / f".{self.path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"

    def __enter__(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(self.path)
        self.tmp.mkdir()
        return self.tmp

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        old = None
        if self.path.exists():
            old = self.path.parent / f".{self.path.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(self.path, old)
        os.replace(self.tmp, self.path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Delete ``.{name}.tmp-{pid}-*`` siblings of ``path`` whose writer process is gone and
    ``.{name}.old-*`` leftovers of an interrupted swap; return what was removed. (A killed tile job
    leaves its temp store behind: gigabytes at WSI size.)"""
    path = Path(path)
    removed = []
    if not path.parent.is_dir():
        return removed
    for p in path.parent.glob(f".{path.name}.*"):
        m = re.fullmatch(rf"\.{re.escape(path.name)}\.(?:tmp-(\d+)-[0-9a-f]+|old-[0-9a-f]+)", p.name)
        if m is None or (m.group(1) is not None and _pid_alive(int(m.group(1)))):
            continue
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        removed.append(p)
        log.info("removed %s, left by a writer of %s that did not finish", p, path)
    return removed


# --------------------------------------------------------------------------------------------------
# Completion manifests
# --------------------------------------------------------------------------------------------------
def manifest_path(store: str | os.PathLike) -> Path:
    """The completion manifest of a store: ``x.zarr`` → ``x.json`` beside it. The workflow's rules
    declare the manifest, not the store, as their output: Snakemake never deletes a store before
    re-making it (the writer replaces it atomically on success), and a store without its manifest
    — a killed or failed job — is never taken for done."""
    store = Path(store)
    if store.suffix != ".zarr":
        raise StoreError(f"{store}: a patch store's path ends in .zarr")
    return store.with_suffix(".json")


def store_path(manifest: str | os.PathLike) -> Path:
    """Inverse of :func:`manifest_path`: ``x.json`` → ``x.zarr``."""
    return Path(manifest).with_suffix(".zarr")


def write_manifest(store: str | os.PathLike) -> Path:
    """Open ``store`` (checks it is a complete patch store) and write its manifest last, atomically:
    ``{store, n_tiles, patch_size, slide_id, center, split}``. Returns the manifest's path."""
    st = PatchStore.open(store)
    payload = {"store": Path(store).name, "n_tiles": len(st), "patch_size": st.patch_size,
               **{k: st.attrs.get(k) for k in ("slide_id", "center", "split")}}
    return write_json(manifest_path(store), payload, indent=1, sort_keys=True)


def _jsonable(value: Any) -> Any:
    """attrs -> plain JSON types (numpy scalars/arrays, Paths, tuples)."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------
class StoreWriter:
    """Streaming, atomic patch-store writer (a context manager).

    ``append`` encodes a tile in-process; ``append_encoded`` takes bytes from :func:`encode_tile`
    (e.g. made in a worker process). Full shards go to disk as they fill, so memory stays at one
    shard. The store appears at ``path`` on a clean ``__exit__``; on error nothing is left behind.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        patch_size: int,
        attrs: Mapping[str, Any] | None = None,
        codec: str = "jpeg",
        jpeg_quality: int = 90,
        jpeg_subsampling: str = "444",
        zstd_level: int = 3,
        shard_tiles: int = 64,
    ) -> None:
        if int(patch_size) < 1:
            raise StoreError(f"{path}: patch_size must be >= 1, got {patch_size}")
        if int(shard_tiles) < 1:
            raise StoreError(f"{path}: shard_tiles must be >= 1, got {shard_tiles}")
        self.path = Path(path)
        self.patch_size = int(patch_size)
        self.codec = CodecSpec(codec, int(jpeg_quality), jpeg_subsampling, int(zstd_level))
        self.shard_tiles = int(shard_tiles)
        self.attrs = dict(attrs or {})
        if self.attrs.get("mpp_source") not in (None, *MPP_SOURCES):
            raise StoreError(f"{path}: attrs['mpp_source'] must be one of {', '.join(MPP_SOURCES)} or None, "
                             f"got {self.attrs['mpp_source']!r}")
        self._atomic = atomic_dir(self.path)
        self._root: Path | None = None
        self._images: Any = None
        self._pending: list[bytes] = []
        self._n_shards = 0
        self._coords: list[tuple[int, int]] = []
        self._tissue: list[float] = []
        self._label: list[int] = []
        self._label_fraction: list[float] = []

    # context manager ---------------------------------------------------------------------------
    def __enter__(self) -> "StoreWriter":
        self._root = self._atomic.__enter__()
        group = zarr.open_group(self._root, mode="w", zarr_format=3)
        s = self.patch_size
        self._images = group.create_array(
            "images",
            shape=(0, s, s, 3),
            dtype="uint8",
            chunks=(1, s, s, 3),
            shards=(self.shard_tiles, s, s, 3),
            serializer=self.codec.inner_codecs()[0],
            compressors=self.codec.inner_codecs()[1:] or None,
            fill_value=255,
            dimension_names=["tile", "y", "x", "channel"],
        )
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            if exc_type is None:
                self._finish()
        except BaseException:
            self._atomic.__exit__(RuntimeError, None, None)
            raise
        self._atomic.__exit__(exc_type, exc, tb)

    def __len__(self) -> int:
        return len(self._coords)

    # appending ---------------------------------------------------------------------------------
    def append(
        self,
        tile: np.ndarray,
        coord: tuple[int, int] | Sequence[int] = (-1, -1),
        tissue_fraction: float = float("nan"),
        label: int = -1,
        label_fraction: float = float("nan"),
    ) -> None:
        """Add one (S, S, 3) uint8 tile and its per-tile fields."""
        tile = np.asarray(tile)
        s = self.patch_size
        if tile.shape != (s, s, 3) or tile.dtype != np.uint8:
            raise StoreError(
                f"{self.path}: tile {len(self)} must be ({s}, {s}, 3) uint8, got {tile.shape} {tile.dtype}"
            )
        self.append_encoded(encode_tile(tile, self.codec), coord, tissue_fraction, label, label_fraction)

    def append_encoded(
        self,
        data: bytes,
        coord: tuple[int, int] | Sequence[int] = (-1, -1),
        tissue_fraction: float = float("nan"),
        label: int = -1,
        label_fraction: float = float("nan"),
    ) -> None:
        """Add one tile already encoded with :func:`encode_tile` and this writer's ``codec``."""
        if self._root is None:
            raise StoreError(f"{self.path}: use StoreWriter as a context manager (with ...)")
        self._pending.append(bytes(data))
        self._coords.append((int(coord[0]), int(coord[1])))
        self._tissue.append(float(tissue_fraction))
        self._label.append(int(label))
        self._label_fraction.append(float(label_fraction))
        if len(self._pending) == self.shard_tiles:
            self._flush_shard()

    def _flush_shard(self) -> None:
        if not self._pending:
            return
        assert self._root is not None
        shard_dir = self._root / "images" / "c" / str(self._n_shards) / "0" / "0"
        shard_dir.mkdir(parents=True, exist_ok=True)
        (shard_dir / "0").write_bytes(_shard_bytes(self._pending, self.shard_tiles))
        self._n_shards += 1
        self._pending = []

    def _finish(self) -> None:
        assert self._root is not None and self._images is not None
        self._flush_shard()
        n = len(self._coords)
        s = self.patch_size
        self._images.resize((n, s, s, 3))
        group = zarr.open_group(self._root, mode="r+")
        chunk = (max(n, 1),)
        fields = {
            "coords": np.asarray(self._coords, dtype=np.int64).reshape(n, 2),
            "tissue_fraction": np.asarray(self._tissue, dtype=np.float32),
            "label": np.asarray(self._label, dtype=np.int64),
            "label_fraction": np.asarray(self._label_fraction, dtype=np.float32),
        }
        for name, values in fields.items():
            arr = group.create_array(
                name, shape=values.shape, dtype=values.dtype, chunks=chunk + values.shape[1:],
                compressors=[ZstdCodec(level=3)],
            )
            if n:
                arr[...] = values
        attrs = {key: None for key in REQUIRED_ATTRS}
        attrs.update(self.attrs)
        attrs.update(
            codec=self.codec.describe(),
            patch_size=s,
            software_version=__version__,
            n_tiles=n,
            store_format=STORE_FORMAT_VERSION,
        )
        group.update_attributes(_jsonable(attrs))  # one zarr.json write (attrs.update writes once per key)


def write_store(
    path: str | os.PathLike,
    images: np.ndarray | Iterable[np.ndarray],
    *,
    coords: Any,
    tissue_fraction: Any,
    label: Any,
    label_fraction: Any,
    attrs: Mapping[str, Any],
    codec: str = "jpeg",
    jpeg_quality: int = 90,
    shard_tiles: int = 64,
) -> Path:
    """Write a whole patch store atomically; ``images`` is (N, S, S, 3) uint8 or an iterable of tiles.

    ``coords`` (N, 2), ``tissue_fraction``, ``label``, ``label_fraction`` (N,) must match the number
    of tiles. Returns ``path``.
    """
    path = Path(path)
    coords_a = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
    fields = {
        "tissue_fraction": np.asarray(tissue_fraction, dtype=np.float32).reshape(-1),
        "label": np.asarray(label, dtype=np.int64).reshape(-1),
        "label_fraction": np.asarray(label_fraction, dtype=np.float32).reshape(-1),
    }
    n = len(coords_a)
    for key, values in fields.items():
        if len(values) != n:
            raise StoreError(f"{path}: '{key}' has {len(values)} entries but coords has {n}")
    tiles: Iterator[np.ndarray] = iter(images)
    first = None
    if isinstance(images, np.ndarray):
        if images.ndim != 4 or images.shape[-1] != 3 or images.shape[1] != images.shape[2]:
            raise StoreError(f"{path}: 'images' must be (N, S, S, 3), got {images.shape}")
        if len(images) != n:
            raise StoreError(f"{path}: 'images' has {len(images)} tiles but coords has {n}")
        patch_size = images.shape[1]
    else:
        if "patch_size" in attrs and attrs["patch_size"]:
            patch_size = int(attrs["patch_size"])
        else:
            first = next(tiles, None)
            if first is None:
                raise StoreError(f"{path}: no tiles and no attrs['patch_size'] to size an empty store")
            patch_size = int(np.asarray(first).shape[0])
    with StoreWriter(path, patch_size=patch_size, attrs=attrs, codec=codec, jpeg_quality=jpeg_quality,
                     shard_tiles=shard_tiles) as writer:
        stream = tiles if first is None else _chain(first, tiles)
        for i, tile in enumerate(stream):
            if i >= n:
                raise StoreError(f"{path}: more tiles than coords ({n})")
            writer.append(tile, coords_a[i], fields["tissue_fraction"][i], fields["label"][i],
                          fields["label_fraction"][i])
        if len(writer) != n:
            raise StoreError(f"{path}: {len(writer)} tiles but coords has {n}")
    return path


def _chain(first: np.ndarray, rest: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    yield first
    yield from rest


# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------
# A shard's requested tiles are read as one slice when it spans <= this many tiles per requested tile
# (slice ~0.35 ms/tile of span vs ~1.1 ms per single-tile read; PatchStore._read_sorted).
SLICE_READ_FACTOR = 3


class PatchStore:
    """Read side of a patch store: ``images`` (lazy zarr array) and the per-tile numpy arrays."""

    def __init__(self, path: Path, group: Any) -> None:
        self.path = path
        self.group = group
        self.images = group["images"]
        self.coords = np.asarray(group["coords"][...], dtype=np.int64).reshape(-1, 2)
        self.tissue_fraction = np.asarray(group["tissue_fraction"][...], dtype=np.float32)
        self.label = np.asarray(group["label"][...], dtype=np.int64)
        self.label_fraction = np.asarray(group["label_fraction"][...], dtype=np.float32)
        self.attrs: dict[str, Any] = dict(group.attrs)

    @classmethod
    def open(cls, path: str | os.PathLike) -> "PatchStore":
        """Open a store read-only; a missing path or missing array is a StoreError naming it."""
        path = Path(path)
        if not path.exists():
            raise StoreError(f"patch store {path} does not exist")
        try:
            group = zarr.open_group(path, mode="r")
        except Exception as exc:  # zarr raises several types for a non-store directory
            raise StoreError(f"{path} is not a zarr patch store: {exc}") from exc
        missing = [name for name in ARRAYS if name not in group]
        if missing:
            raise StoreError(f"patch store {path} lacks array(s) {', '.join(missing)}")
        store = cls(path, group)
        n = store.images.shape[0]
        for name in ("coords", "tissue_fraction", "label", "label_fraction"):
            if len(getattr(store, name)) != n:
                raise StoreError(f"patch store {path}: '{name}' has {len(getattr(store, name))} rows, images has {n}")
        return store

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def patch_size(self) -> int:
        """Tile side in pixels."""
        return int(self.images.shape[1])

    def read(self, idx: int | Sequence[int] | slice | np.ndarray) -> np.ndarray:
        """Tiles as (n, S, S, 3) uint8, in the order asked for."""
        n = len(self)
        if isinstance(idx, slice):
            return np.asarray(self.images[idx])
        if isinstance(idx, (int, np.integer)):
            i = int(idx)
            if not -n <= i < n:
                raise IndexError(f"tile {i} out of range for {self.path} ({n} tiles)")
            i %= n
            return np.asarray(self.images[i : i + 1])
        order = np.asarray(idx, dtype=np.int64).reshape(-1)
        if order.size == 0:
            return np.empty((0, self.patch_size, self.patch_size, 3), dtype=np.uint8)
        if order.min() < -n or order.max() >= n:
            raise IndexError(f"tile index out of range for {self.path} ({n} tiles)")
        order = order % n  # never in place: the caller's index array (possibly read-only) stays as it was
        unique, inverse = np.unique(order, return_inverse=True)
        return self._read_sorted(unique)[inverse]

    def _read_sorted(self, unique: np.ndarray) -> np.ndarray:
        """Tiles at sorted unique indices, read shard by shard.

        zarr 3.1's ``get_orthogonal_selection`` over a sharded array re-reads a shard per requested
        tile (measured: ~7 ms/tile for 256 random 224² JPEG tiles vs ~1.1 ms for single-tile reads
        and ~0.35 ms/tile for a contiguous slice), so each shard's requested tiles are read as one
        contiguous slice when that slice is short enough, else one by one.
        """
        shards = getattr(self.images, "shards", None)
        per_shard = int(shards[0]) if shards else 1
        out = np.empty((len(unique), *self.images.shape[1:]), dtype=np.uint8)
        shard_of = unique // per_shard
        bounds = np.flatnonzero(np.diff(shard_of)) + 1
        for run in np.split(np.arange(len(unique)), bounds):
            lo, hi = int(unique[run[0]]), int(unique[run[-1]]) + 1
            if hi - lo <= SLICE_READ_FACTOR * len(run):
                out[run] = np.asarray(self.images[lo:hi])[unique[run] - lo]
            else:
                for k in run:
                    out[k] = np.asarray(self.images[int(unique[k]) : int(unique[k]) + 1])[0]
        return out

    def summary(self) -> dict[str, Any]:
        """Counts and settings for ``stainshift inspect``."""
        labels, counts = np.unique(self.label, return_counts=True)
        return {
            "path": str(self.path),
            "n_tiles": len(self),
            "patch_size": self.patch_size,
            "labels": {int(k): int(v) for k, v in zip(labels, counts)},
            "tissue_fraction_mean": (float(np.nanmean(self.tissue_fraction))
                                     if np.isfinite(self.tissue_fraction).any() else None),  # crop sets: all NaN
            **{k: self.attrs.get(k) for k in REQUIRED_ATTRS},
            "mpp_source": mpp_source(self.attrs),
            **({"exported_from": self.attrs["exported_from"]} if self.attrs.get("exported_from") else {}),
        }

    def __repr__(self) -> str:
        return f"PatchStore({self.path}, n={len(self)}, S={self.patch_size}, codec={json.dumps(self.attrs.get('codec'))})"


def mpp_source(attrs: Mapping[str, Any]) -> str:
    """Where a store's ``mpp_level0`` came from: ``file``, ``sheet``, ``config``, or ``unknown`` (a store
    written before ``mpp_source`` was recorded, or one with no µm/px at all)."""
    value = attrs.get("mpp_source")
    return "unknown" if value is None else str(value)


# --------------------------------------------------------------------------------------------------
# Export: a copy any zarr-3 reader opens without stainshift
# --------------------------------------------------------------------------------------------------
_EXPORT_DEFAULT_LEVEL = {"zstd": 3, "gzip": 6}


def _export_compressor(codec: str, level: int | None) -> tuple[Any, dict[str, Any]]:
    from zarr.codecs import GzipCodec

    if codec not in EXPORT_CODECS:
        raise StoreError(f"export codec {codec!r}: choose one of {', '.join(EXPORT_CODECS)} (lossless, built into zarr)")
    level = _EXPORT_DEFAULT_LEVEL[codec] if level is None else int(level)
    try:
        comp = ZstdCodec(level=level) if codec == "zstd" else GzipCodec(level=level)
    except (ValueError, TypeError) as exc:
        raise StoreError(f"export codec {codec}: bad level {level} ({exc})") from exc
    return comp, {"name": codec, "level": level}


def export_store(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    codec: str = "zstd",
    level: int | None = None,
    overwrite: bool = False,
    shard_tiles: int | None = None,
) -> Path:
    """Copy the patch store ``src`` to ``dst`` with the tiles re-encoded losslessly (``zstd`` or ``gzip``,
    codecs built into zarr), so any zarr-3 reader opens it without stainshift (a ``jpeg`` store needs
    stainshift's codec). The decoded pixels are copied exactly: a JPEG store's export holds the same
    pixels ``PatchStore.read`` returns (4-5x the bytes). Every other array and every attr is copied; attrs
    ``codec`` names the new codec and ``exported_from`` records the source store, its codec and the
    exporting stainshift version. Written to a temp directory and renamed (:class:`atomic_dir`); an
    existing ``dst`` is refused unless ``overwrite`` (and then replaced only if it is a zarr store or an
    empty folder). No manifest is written (that marks workflow outputs).
    Returns ``dst``.
    """
    src, dst = Path(src), Path(dst)
    comp, described = _export_compressor(codec, level)
    source = PatchStore.open(src)
    s_res, d_res = src.resolve(), dst.resolve()
    if d_res == s_res or s_res in d_res.parents or d_res in s_res.parents:
        raise StoreError(f"export {src} -> {dst}: the output must neither be, contain nor lie in the source store")
    if dst.exists() or dst.is_symlink():
        if not overwrite:
            raise StoreError(f"{dst} exists; pass overwrite=True (stainshift export --overwrite) to replace it")
        if not (dst / "zarr.json").is_file() and not (dst.is_dir() and not any(dst.iterdir())):
            raise StoreError(f"{dst} exists and is not a zarr store (nor an empty folder); not replacing it")
    with warnings.catch_warnings():  # stray files in the store (Snakemake's .snakemake_timestamp): not zarr nodes
        warnings.filterwarnings("ignore", message=".*not recognized as a component of a Zarr hierarchy")
        subgroups = sorted(source.group.group_keys())
        array_names = sorted(source.group.array_keys())
    if subgroups:
        raise StoreError(f"{src}: has sub-groups ({', '.join(subgroups)}), which export does not copy")
    n, s = len(source), source.patch_size
    shards = getattr(source.images, "shards", None)
    per_shard = int(shard_tiles or (shards[0] if shards else 64))
    if per_shard < 1:
        raise StoreError(f"export {src}: shard_tiles must be >= 1, got {shard_tiles}")
    with atomic_dir(dst) as tmp:
        group = zarr.open_group(tmp, mode="w", zarr_format=3)
        images = group.create_array(
            "images", shape=(n, s, s, 3), dtype="uint8", chunks=(1, s, s, 3), shards=(per_shard, s, s, 3),
            serializer=BytesCodec(), compressors=[comp], fill_value=255,
            dimension_names=["tile", "y", "x", "channel"], attributes=_jsonable(dict(source.images.attrs)),
        )
        for lo in range(0, n, per_shard):  # whole shards: each is written once, never read back
            hi = min(n, lo + per_shard)
            images[lo:hi] = source.read(slice(lo, hi))
        for name in array_names:
            if name == "images":
                continue
            arr = source.group[name]
            values = np.asarray(arr[...])
            out = group.create_array(
                name, shape=values.shape, dtype=values.dtype, chunks=tuple(arr.chunks), serializer=BytesCodec(),
                compressors=[comp], fill_value=arr.fill_value, attributes=_jsonable(dict(arr.attrs)),
                dimension_names=getattr(arr.metadata, "dimension_names", None),
            )
            if values.size:
                out[...] = values
        attrs = dict(source.attrs)
        attrs["exported_from"] = {"store": str(s_res), "codec": attrs.get("codec"), "software_version": __version__}
        attrs["codec"] = described
        group.update_attributes(_jsonable(attrs))
    log.info("exported %s (%d tiles) to %s (%s)", src, n, dst, described)
    return dst
