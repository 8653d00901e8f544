"""Patch store: layout, codecs, atomic writes, plain-zarr/dask readability."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import zarr

from stainshift.store import (
    ARRAYS,
    REQUIRED_ATTRS,
    CodecSpec,
    PatchStore,
    StoreError,
    StoreWriter,
    encode_tile,
    manifest_path,
    remove_stale_temps,
    store_path,
    write_manifest,
    write_store,
)

pytestmark = pytest.mark.filterwarnings("ignore:Numcodecs codecs are not in the Zarr version 3")


def smooth_tiles(n: int, s: int, seed: int = 0) -> np.ndarray:
    """Tissue-like smooth tiles (JPEG-friendly): low-frequency colour fields plus mild noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:s, 0:s] / s
    out = np.empty((n, s, s, 3), dtype=np.uint8)
    for i in range(n):
        base = rng.uniform(120, 220, 3)
        amp = rng.uniform(10, 40, 3)
        ph = rng.uniform(0, 6.28, 3)
        img = base + amp * np.sin(2 * np.pi * (xx[..., None] + yy[..., None]) * 1.5 + ph)
        img += rng.normal(0, 2, img.shape)
        out[i] = np.clip(img, 0, 255).astype(np.uint8)
    return out


def fields(n: int) -> dict:
    return dict(
        coords=np.stack([np.arange(n) * 64, np.arange(n) * 32], 1),
        tissue_fraction=np.linspace(0.5, 1, n),
        label=np.arange(n) % 2,
        label_fraction=np.linspace(0, 1, n),
    )


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


@pytest.mark.parametrize("codec", ["zstd", "lz4"])
def test_lossless_roundtrip_and_layout(tmp_path: Path, codec: str) -> None:
    tiles = smooth_tiles(70, 32)  # > one shard of 64
    path = write_store(tmp_path / "s.zarr", tiles, **fields(70), attrs={"slide_id": "s1", "center": "a"}, codec=codec)
    store = PatchStore.open(path)
    assert len(store) == 70 and store.images.shape == (70, 32, 32, 3) and store.images.dtype == np.uint8
    np.testing.assert_array_equal(store.read(slice(None)), tiles)
    np.testing.assert_array_equal(store.read([69, 3, 3, 0]), tiles[[69, 3, 3, 0]])
    np.testing.assert_array_equal(store.read(-1), tiles[-1:])
    np.testing.assert_array_equal(store.coords, fields(70)["coords"])
    assert store.coords.dtype == np.int64 and store.label.dtype == np.int64
    assert store.tissue_fraction.dtype == np.float32 and store.label_fraction.dtype == np.float32
    for key in REQUIRED_ATTRS:
        assert key in store.attrs, key
    assert store.attrs["slide_id"] == "s1" and store.attrs["codec"]["name"] == codec
    assert store.attrs["patch_size"] == 32 and store.attrs["n_tiles"] == 70
    group = zarr.open_group(path, mode="r")
    assert set(ARRAYS) <= set(group.array_keys())
    # sharded: 2 shard files for 70 tiles instead of 70 chunk files
    assert len(list((path / "images" / "c").rglob("0"))) >= 2
    assert sum(1 for p in (path / "images").rglob("*") if p.is_file()) == 3  # 2 shards + zarr.json
    with pytest.raises(IndexError):
        store.read(70)


def test_jpeg_roundtrip_psnr_and_size(tmp_path: Path) -> None:
    tiles = smooth_tiles(20, 64)
    path = write_store(tmp_path / "j.zarr", tiles, **fields(20), attrs={}, codec="jpeg", jpeg_quality=90)
    back = PatchStore.open(path).read(slice(None))
    assert min(psnr(a, b) for a, b in zip(tiles, back)) >= 40
    raw = tiles.nbytes
    stored = sum(p.stat().st_size for p in (path / "images").rglob("*") if p.is_file())
    assert stored < raw / 4


def test_encode_tile_matches_zarr_chunks(tmp_path: Path) -> None:
    """Pre-encoded bytes (worker path) and in-process appends give identical stores."""
    tiles = smooth_tiles(5, 32, seed=3)
    for codec in ("jpeg", "zstd", "lz4"):
        spec = CodecSpec(codec)
        with StoreWriter(tmp_path / f"{codec}.zarr", patch_size=32, codec=codec, shard_tiles=4) as w:
            for i, t in enumerate(tiles):
                w.append_encoded(encode_tile(t, spec), (i, i), 1.0, 0, 0.0)
        back = PatchStore.open(tmp_path / f"{codec}.zarr").read(slice(None))
        ref = zarr.create_array(tmp_path / f"ref_{codec}.zarr", shape=tiles.shape, dtype="uint8",
                              chunks=(1, 32, 32, 3), serializer=spec.inner_codecs()[0],
                              compressors=spec.inner_codecs()[1:] or None)
        ref[...] = tiles
        np.testing.assert_array_equal(back, ref[...])


def test_empty_store(tmp_path: Path) -> None:
    path = write_store(tmp_path / "e.zarr", [], **fields(0), attrs={"patch_size": 16})
    store = PatchStore.open(path)
    assert len(store) == 0 and store.images.shape == (0, 16, 16, 3)
    assert store.read([]).shape == (0, 16, 16, 3)


def test_atomic_on_error_and_replace(tmp_path: Path) -> None:
    target = tmp_path / "a.zarr"
    with pytest.raises(RuntimeError):
        with StoreWriter(target, patch_size=8) as w:
            w.append(np.zeros((8, 8, 3), np.uint8), (0, 0), 1.0, 0, 0.0)
            raise RuntimeError("boom")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []
    write_store(target, np.zeros((2, 8, 8, 3), np.uint8), **fields(2), attrs={"slide_id": "old"})
    write_store(target, np.full((3, 8, 8, 3), 7, np.uint8), **fields(3), attrs={"slide_id": "new"})
    store = PatchStore.open(target)
    assert len(store) == 3 and store.attrs["slide_id"] == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zarr"]


def test_manifest_is_written_last_and_maps_back_to_the_store(tmp_path: Path) -> None:
    target = write_store(tmp_path / "s.zarr", np.zeros((3, 8, 8, 3), np.uint8), **fields(3),
                         attrs={"slide_id": "s", "center": "c", "split": "test"})
    path = write_manifest(target)
    assert path == manifest_path(target) == tmp_path / "s.json" and store_path(path) == tmp_path / "s.zarr"
    assert '"n_tiles": 3' in path.read_text() and '"slide_id": "s"' in path.read_text()
    with pytest.raises(StoreError, match="does not exist"):  # no manifest for a store that is not there
        write_manifest(tmp_path / "missing.zarr")
    assert not (tmp_path / "missing.json").exists()


def test_temp_stores_of_dead_writers_are_removed_by_the_next_writer(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)  # a process that has exited
    stale = tmp_path / f".a.zarr.tmp-{dead_pid}-0123abcd"
    alive = tmp_path / f".a.zarr.tmp-{os.getpid()}-0123abcd"  # a writer that still runs: kept
    swapped = tmp_path / ".a.zarr.old-89abcdef"
    other = tmp_path / f".b.zarr.tmp-{dead_pid}-0123abcd"  # another store's: not ours to touch
    for p in (stale, alive, swapped, other):
        (p / "images").mkdir(parents=True)
    assert sorted(remove_stale_temps(tmp_path / "a.zarr")) == sorted([stale, swapped])
    write_store(tmp_path / "a.zarr", np.zeros((1, 8, 8, 3), np.uint8), **fields(1), attrs={})
    assert alive.exists() and other.exists() and not stale.exists()


def test_bad_inputs_name_the_store(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="label"):
        write_store(tmp_path / "b.zarr", np.zeros((2, 8, 8, 3), np.uint8), coords=np.zeros((2, 2)),
                    tissue_fraction=[1, 1], label=[0], label_fraction=[0, 0], attrs={})
    assert not (tmp_path / "b.zarr").exists()
    with pytest.raises(StoreError, match=r"b2\.zarr.*\(8, 8, 3\)"):
        with StoreWriter(tmp_path / "b2.zarr", patch_size=8) as w:
            w.append(np.zeros((9, 9, 3), np.uint8))
    with pytest.raises(StoreError, match="does not exist"):
        PatchStore.open(tmp_path / "missing.zarr")
    zarr.open_group(tmp_path / "g.zarr", mode="w")
    with pytest.raises(StoreError, match="lacks array"):
        PatchStore.open(tmp_path / "g.zarr")
    with pytest.raises(StoreError, match="unknown codec"):
        StoreWriter(tmp_path / "c.zarr", patch_size=8, codec="png")


def test_plain_zarr_and_dask_in_fresh_process_via_entry_point(tmp_path: Path) -> None:
    """A process that never imports stainshift opens a JPEG store through the zarr.codecs entry
    point declared in pyproject.toml (simulated with a dist-info on PYTHONPATH, so the test does not
    depend on the venv having been reinstalled since the entry point was added)."""
    tiles = smooth_tiles(6, 32)
    path = write_store(tmp_path / "p.zarr", tiles, **fields(6), attrs={}, codec="jpeg")
    expected = PatchStore.open(path).read(slice(None))
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert '[project.entry-points."zarr.codecs"]' in pyproject
    assert '"stainshift.jpeg" = "stainshift.store:JpegCodec"' in pyproject
    dist = tmp_path / "ep" / "stainshift_codec_probe-0.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: stainshift-codec-probe\nVersion: 0.0\n")
    (dist / "entry_points.txt").write_text("[zarr.codecs]\nstainshift.jpeg = stainshift.store:JpegCodec\n")
    script = textwrap.dedent(f"""
        import sys, numpy as np, zarr, dask.array as da
        assert "stainshift.store" not in sys.modules
        g = zarr.open_group({str(path)!r}, mode="r")
        a = g["images"][...]
        d = da.from_zarr({str(path)!r}, component="images").compute()
        assert "stainshift.store" in sys.modules  # loaded by zarr through the entry point
        np.save(sys.stdout.buffer, np.stack([a, d]))
    """)
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "ep")}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    import io

    both = np.load(io.BytesIO(proc.stdout))
    np.testing.assert_array_equal(both[0], expected)
    np.testing.assert_array_equal(both[1], expected)


@pytest.mark.parametrize("codec", ["jpeg", "zstd", "lz4"])
def test_encode_tile_from_reader_bgrx_is_byte_identical(codec: str) -> None:
    """A reader's BGRX buffer (4 bytes per pixel, 4th ignored) encodes to the same chunk bytes as
    its RGB copy: JPEG reads it directly (libjpeg-turbo extended colour space)."""
    rgb = smooth_tiles(1, 64, seed=3)[0]
    bgrx = np.concatenate([rgb[..., ::-1], np.full((64, 64, 1), 255, np.uint8)], axis=2)
    bgrx[..., 3] = 7  # ignored
    spec = CodecSpec(codec)
    assert encode_tile(bgrx, spec, "BGRX") == encode_tile(rgb, spec)
    with pytest.raises(StoreError, match="channel order"):
        encode_tile(rgb, spec, "ARGB")


def test_read_leaves_the_callers_index_array_alone(tmp_path):
    from test_data import make_stores

    store = PatchStore.open(make_stores(tmp_path, n_slides=1, n_tiles=6)[0])
    idx = np.array([5, -1, 0])
    idx.flags.writeable = False  # as pandas hands out .to_numpy() views
    tiles = store.read(idx)
    assert idx.tolist() == [5, -1, 0] and tiles.shape[0] == 3
    np.testing.assert_array_equal(tiles[0], tiles[1])


# ---- mpp_source and export ----------------------------------------------------------------------
def test_mpp_source_recorded_validated_and_unknown_for_old_stores(tmp_path: Path) -> None:
    from stainshift.store import mpp_source

    path = write_store(tmp_path / "m.zarr", smooth_tiles(2, 16), **fields(2), codec="zstd",
                       attrs={"mpp_level0": 0.25, "mpp_source": "sheet"})
    store = PatchStore.open(path)
    assert store.attrs["mpp_source"] == "sheet" and store.summary()["mpp_source"] == "sheet"
    # a store written before mpp_source existed: no key -> "unknown"
    old = zarr.open_group(path, mode="r+")
    attrs = dict(old.attrs)
    del attrs["mpp_source"]
    old.attrs.clear()
    old.update_attributes(attrs)
    store = PatchStore.open(path)
    assert "mpp_source" not in store.attrs and store.summary()["mpp_source"] == "unknown"
    assert mpp_source({"mpp_source": None}) == "unknown" and mpp_source({"mpp_source": "file"}) == "file"
    with pytest.raises(StoreError, match="mpp_source"):
        StoreWriter(tmp_path / "bad.zarr", patch_size=8, attrs={"mpp_source": "guess"})


def test_crop_stores_record_mpp_source_config(tmp_path: Path) -> None:
    from test_cropsets import make_set

    from stainshift.cropsets import import_crop_set

    root = make_set(tmp_path / "set")
    entry = {"name": "mit", "folder": str(root), "group_column": "slide", "classes": ["normal", "atypical"]}
    with_mpp = PatchStore.open(import_crop_set({**entry, "mpp": 0.25}, tmp_path / "a", codec="zstd")[0])
    assert with_mpp.attrs["mpp_source"] == "config" and with_mpp.attrs["mpp_level0"] == 0.25
    without = PatchStore.open(import_crop_set(entry, tmp_path / "b", codec="zstd")[0])
    assert without.attrs["mpp_source"] is None and without.summary()["mpp_source"] == "unknown"


_PLAIN_READ = textwrap.dedent("""
    import json, sys
    sys.modules["stainshift"] = None  # as if stainshift were not installed: any import of it fails
    import numpy as np, zarr
    out = {}
    for path in sys.argv[1:]:
        try:
            g = zarr.open_group(path, mode="r")
            np.save(path + ".npy", g["images"][...])
            out[path] = {"ok": True, "attrs": dict(g.attrs), "coords": g["coords"][...].tolist()}
        except Exception as exc:
            out[path] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    assert not any(m.startswith("stainshift.") for m in sys.modules), sorted(sys.modules)
    print(json.dumps(out))
""")


@pytest.mark.parametrize("codec", ["zstd", "gzip"])
def test_export_is_lossless_and_opens_without_stainshift(tmp_path: Path, codec: str) -> None:
    import json

    from stainshift.store import export_store

    tiles = smooth_tiles(70, 32)  # 2 shards of 64
    src = write_store(tmp_path / "src.zarr", tiles, **fields(70), codec="jpeg", shard_tiles=64,
                      attrs={"slide_id": "s1", "mpp_level0": 0.5, "mpp_source": "file", "classes": ["a", "b"]})
    expected = PatchStore.open(src).read(slice(None))  # the decoded JPEG pixels
    dst = export_store(src, tmp_path / "out" / "dst.zarr", codec=codec)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["dst.zarr"]  # no temp dir left
    out = PatchStore.open(dst)
    np.testing.assert_array_equal(out.read(slice(None)), expected)
    src_store = PatchStore.open(src)
    for name in ("coords", "tissue_fraction", "label", "label_fraction"):
        np.testing.assert_array_equal(getattr(out, name), getattr(src_store, name))
    assert out.images.shards == (64, 32, 32, 3)
    level = {"zstd": 3, "gzip": 6}[codec]
    assert out.attrs["codec"] == {"name": codec, "level": level}
    assert out.attrs["exported_from"]["store"] == str(src.resolve())
    assert out.attrs["exported_from"]["codec"]["name"] == "jpeg"
    for key in ("slide_id", "mpp_level0", "mpp_source", "classes", "n_tiles", "store_format"):
        assert out.attrs[key] == src_store.attrs[key], key
    assert out.summary()["mpp_source"] == "file" and out.summary()["exported_from"]["codec"]["name"] == "jpeg"

    # a process that cannot import stainshift opens the export with plain zarr, but not the JPEG store
    proc = subprocess.run([sys.executable, "-c", _PLAIN_READ, str(dst), str(src)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res[str(dst)]["ok"], res[str(dst)]
    np.testing.assert_array_equal(np.load(str(dst) + ".npy"), expected)
    assert res[str(dst)]["attrs"]["codec"]["name"] == codec
    assert res[str(dst)]["coords"] == fields(70)["coords"].tolist()
    assert not res[str(src)]["ok"] and "stainshift" in res[str(src)]["error"], res[str(src)]


def test_export_refuses_existing_output_and_bad_requests(tmp_path: Path) -> None:
    from stainshift.store import export_store

    src = write_store(tmp_path / "src.zarr", smooth_tiles(3, 16), **fields(3), attrs={}, codec="jpeg")
    dst = export_store(src, tmp_path / "dst.zarr")
    with pytest.raises(StoreError, match="exists.*overwrite"):
        export_store(src, dst, level=9)
    assert PatchStore.open(dst).attrs["codec"] == {"name": "zstd", "level": 3}
    export_store(src, dst, overwrite=True, level=9)
    assert PatchStore.open(dst).attrs["codec"] == {"name": "zstd", "level": 9}
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "keep.txt").write_text("mine")
    with pytest.raises(StoreError, match="not a zarr store"):  # --overwrite replaces stores, not any folder
        export_store(src, mine, overwrite=True)
    assert (mine / "keep.txt").read_text() == "mine"
    for bad in (src, src / "inner.zarr", tmp_path):  # the source itself, inside it, a folder holding it
        with pytest.raises(StoreError, match="source store"):
            export_store(src, bad, overwrite=True)
    with pytest.raises(StoreError, match="choose one of zstd, gzip"):
        export_store(src, tmp_path / "x.zarr", codec="jpeg")
    with pytest.raises(StoreError, match="bad level"):
        export_store(src, tmp_path / "x.zarr", codec="gzip", level=42)
    with pytest.raises(StoreError, match="does not exist"):
        export_store(tmp_path / "missing.zarr", tmp_path / "y.zarr")
    assert not (tmp_path / "x.zarr").exists() and not (tmp_path / "y.zarr").exists()
    assert PatchStore.open(src).attrs["codec"]["name"] == "jpeg"  # the source is untouched
    empty = write_store(tmp_path / "e.zarr", np.empty((0, 8, 8, 3), np.uint8), **fields(0), attrs={}, codec="jpeg")
    assert len(PatchStore.open(export_store(empty, tmp_path / "e2.zarr"))) == 0
