"""Slide readers: one interface over openslide, tifffile and PIL; clear errors naming the file."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from stainshift.io import SlideReadError, open_slide, rgb_array, rgb_view


def _rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_plain_image_reader_mpp_override_and_padding(tmp_path: Path) -> None:
    img = _rgb(50, 70)
    Image.fromarray(img).save(tmp_path / "roi.png")
    with pytest.raises(SlideReadError, match=r"roi\.png.*mpp"):
        _ = open_slide(tmp_path / "roi.png").mpp
    r = open_slide(tmp_path / "roi.png", mpp=0.25)
    assert r.backend == "pil" and r.mpp == 0.25 and r.level_count == 1 and r.dimensions == (70, 50)
    np.testing.assert_array_equal(r.read_region(10, 5, 0, 20, 30), img[5:35, 10:30])
    edge = r.read_region(60, 40, 0, 20, 20)  # partly outside: white beyond the image
    np.testing.assert_array_equal(edge[:10, :10], img[40:50, 60:70])
    assert (edge[10:] == 255).all() and (edge[:, 10:] == 255).all()


def test_rgba_alpha_becomes_white(tmp_path: Path) -> None:
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:4, :, 3] = 255  # top opaque red-ish, bottom transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = open_slide(tmp_path / "a.png", mpp=1.0).read_region(0, 0, 0, 8, 8)
    assert (out[:4, :, 0] == 200).all() and (out[4:] == 255).all()


def test_tifffile_pyramid_and_resolution_mpp(tmp_path: Path) -> None:
    """A pyramidal TIFF written with SubIFDs (which OpenSlide ignores) opens with tifffile."""
    base = _rgb(256, 384, seed=1)
    path = tmp_path / "pyr.ome.tif"
    with tifffile.TiffWriter(path) as tw:
        tw.write(base, tile=(64, 64), subifds=1, resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER",
                 photometric="rgb")
        tw.write(base[::4, ::4], tile=(64, 64), subfiletype=1, photometric="rgb")
    r = open_slide(path)
    assert r.level_count == 2 and r.dimensions == (384, 256)
    assert r.level_dimensions[1] == (96, 64) and r.level_downsamples[1] == pytest.approx(4.0)
    assert r.mpp == pytest.approx(0.5, rel=1e-3)
    np.testing.assert_array_equal(r.read_region(64, 32, 0, 40, 50), base[32:82, 64:104])
    np.testing.assert_array_equal(r.read_region(64, 32, 1, 8, 8), base[::4, ::4][8:16, 16:24])
    thumb, ds = r.thumbnail(100)
    assert max(thumb.shape[:2]) <= 100 and ds >= 3.84


def test_openslide_reader_on_synth_like_tiff(tmp_path: Path) -> None:
    """Levels as top-level pages (not SubIFDs) + resolution tags: OpenSlide opens it with its pyramid."""
    base = np.full((512, 512, 3), 230, np.uint8)
    base[100:300, 50:200] = (150, 60, 160)
    path = tmp_path / "ap.tiff"
    desc = "Aperio Image Library v10.0.0\n512x512 [0,0 512x512] (256x256) JPEG/RGB Q=90|AppMag = 20|MPP = 0.5"
    with tifffile.TiffWriter(path) as tw:
        tw.write(base, tile=(256, 256), description=desc, photometric="rgb", compression="jpeg",
                 resolution=(2e4, 2e4), resolutionunit="CENTIMETER")
        tw.write(base[::4, ::4], tile=(128, 128), subfiletype=1, photometric="rgb", compression="jpeg")
    r = open_slide(path)
    assert r.backend == "openslide" and r.vendor in ("aperio", "generic-tiff") and r.mpp == pytest.approx(0.5)
    assert r.level_downsamples == pytest.approx((1.0, 4.0))
    region = r.read_region(60, 110, 0, 32, 32)
    assert region.shape == (32, 32, 3) and np.abs(region.astype(int) - (150, 60, 160)).max() < 12
    assert r.read_region(-20, -20, 0, 8, 8).min() == 255  # outside the slide is white


@pytest.mark.parametrize("direct", [False, True])
def test_openslide_raw_reads_without_a_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, direct: bool) -> None:
    """read_region_raw: an opaque region is OpenSlide's own BGRX buffer, or (direct) the decoded
    TIFF tiles, pixel-identical to OpenSlide's; outside the scanned area it is composited onto white;
    read_level = the thumbnail's strip reader."""
    import stainshift.io as sio

    monkeypatch.setattr(sio, "DIRECT_TIFF_TILES", direct)
    base = np.full((512, 512, 3), 230, np.uint8)
    base[100:300, 50:200] = (150, 60, 160)
    base[300:400, 250:500] = (20, 140, 60)
    path = tmp_path / "ap.tiff"
    desc = "Aperio Image Library v10.0.0\n512x512 [0,0 512x512] (256x256) JPEG/RGB Q=90|AppMag = 20|MPP = 0.5"
    with tifffile.TiffWriter(path) as tw:
        tw.write(base, tile=(256, 256), description=desc, photometric="rgb", compression="jpeg",
                 resolution=(2e4, 2e4), resolutionunit="CENTIMETER")
        tw.write(base[::4, ::4], tile=(128, 128), subfiletype=1, photometric="rgb", compression="jpeg")
    r = open_slide(path)
    pixels, order = r.read_region_raw(40, 90, 0, 96, 64)
    assert (order, pixels.shape) == (("RGB", (64, 96, 3)) if direct else ("BGRX", (64, 96, 4)))
    assert (r._direct is not None) == direct and (not direct or r._direct.levels[0]["verified"])
    tile, order = r.read_region_raw(256, 0, 0, 256, 256)  # one whole TIFF tile
    np.testing.assert_array_equal(rgb_view(tile, order), r.read_region(256, 0, 0, 256, 256))
    region = r.read_region(40, 90, 0, 96, 64)
    np.testing.assert_array_equal(rgb_view(pixels, order), region)
    np.testing.assert_array_equal(rgb_array(pixels, order), region)
    import openslide

    ref = np.asarray(openslide.OpenSlide(str(path)).read_region((40, 90), 0, (96, 64)).convert("RGB"))
    np.testing.assert_array_equal(region, ref)  # the same pixels as openslide's public path
    edge, order = r.read_region_raw(480, 480, 0, 64, 64)  # partly outside: transparent -> white, RGB
    assert order == "RGB" and edge.shape == (64, 64, 3) and (edge[40:, :] == 255).all() and (edge[:, 40:] == 255).all()
    np.testing.assert_array_equal(edge[:32, :32], ref_edge := r.read_region(480, 480, 0, 32, 32))
    assert ref_edge.shape == (32, 32, 3)
    thumb, ds = r.thumbnail(64)
    np.testing.assert_array_equal(thumb, r.read_level(1, 2))
    assert ds == 8.0 and r.read_level(0, 1).shape == (512, 512, 3)


def test_direct_tiles_fall_back_to_openslide_on_any_difference(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import stainshift.io as sio

    base = np.full((512, 512, 3), 200, np.uint8)
    path = tmp_path / "g.tiff"
    tifffile.imwrite(path, base, tile=(256, 256), photometric="rgb", compression="jpeg",
                     resolution=(2e4, 2e4), resolutionunit="CENTIMETER")
    real = sio._DirectJpegTiles.read
    monkeypatch.setattr(sio._DirectJpegTiles, "read", lambda self, *a: real(self, *a) + 1)  # a wrong decoder
    r = open_slide(path)
    assert r._direct is not None and 0 in r._direct.levels
    with pytest.warns(UserWarning, match="differs from OpenSlide"):
        px, order = r.read_region_raw(0, 0, 0, 256, 256)
    assert 0 not in r._direct.levels and order == "BGRX"  # OpenSlide's pixels, and from now on
    np.testing.assert_array_equal(rgb_view(px, order), r.read_region(0, 0, 0, 256, 256))


def test_direct_tiles_cache_partial_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Sub-tile reads decode each TIFF tile once (LRU cache), whole-tile reads are not cached and
    return the decoder's (read-only) array; read_region's result is always the caller's."""
    import stainshift.io as sio

    base = _rgb(512, 512, seed=4)
    path = tmp_path / "g.tiff"
    tifffile.imwrite(path, base, tile=(256, 256), photometric="rgb", compression="jpeg",
                     resolution=(2e4, 2e4), resolutionunit="CENTIMETER")
    r = open_slide(path)
    assert r._direct is not None
    calls = []
    lv = r._direct.levels[0]
    real = lv["decode"]
    lv["decode"] = lambda *a, **k: (calls.append(a[1]), real(*a, **k))[1]
    ref = r.read_region(0, 0, 0, 512, 512)  # whole tiles (+ the one verification read through OpenSlide)
    n0 = len(calls)
    subs = [r.read_region_raw(x, y, 0, 64, 64) for y in range(0, 256, 64) for x in range(256, 512, 64)]
    assert len(calls) - n0 == 1 and r._direct._cache_bytes == 256 * 256 * 3  # tile 1 decoded once, cached
    for (px, order), (y, x) in zip(subs, [(y, x) for y in range(0, 256, 64) for x in range(256, 512, 64)]):
        assert order == "RGB"  # a crop: a fresh array
        np.testing.assert_array_equal(px, ref[y : y + 64, x : x + 64])
    whole, _ = r.read_region_raw(0, 256, 0, 256, 256)
    assert not whole.flags.writeable and r._direct._cache_bytes == 256 * 256 * 3  # not cached
    region = r.read_region(0, 256, 0, 256, 256)
    region[0, 0] = 0  # the caller's copy
    monkeypatch.setattr(sio, "DIRECT_CACHE_BYTES", 0)
    r.read_region_raw(300, 300, 0, 10, 10)
    assert r._direct._cache_bytes == 0


def test_bad_inputs_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(SlideReadError, match=r"nope\.svs: file not found"):
        open_slide(tmp_path / "nope.svs")
    (tmp_path / "empty.svs").write_bytes(b"")
    with pytest.raises(SlideReadError, match=r"empty\.svs: file is empty"):
        open_slide(tmp_path / "empty.svs")
    (tmp_path / "notes.txt").write_text("not a slide")
    with pytest.raises(SlideReadError, match=r"notes\.txt: unsupported format"):
        open_slide(tmp_path / "notes.txt")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    with pytest.raises(SlideReadError, match=r"broken\.png: not a readable image"):
        open_slide(tmp_path / "broken.png", mpp=1)
    # a truncated tiled TIFF: header intact, tile data cut off
    good = tmp_path / "good.tiff"
    tifffile.imwrite(good, _rgb(256, 256), tile=(64, 64), photometric="rgb", compression="zlib",
                     resolution=(2e4, 2e4), resolutionunit="CENTIMETER")
    data = good.read_bytes()
    trunc = tmp_path / "trunc.tiff"
    trunc.write_bytes(data[: len(data) // 3])
    with pytest.raises(SlideReadError, match=r"trunc\.tiff"):
        r = open_slide(trunc)
        r.read_region(0, 0, 0, 256, 256)
    with pytest.raises(SlideReadError, match="positive number"):
        open_slide(good, mpp=-1)


@pytest.mark.realdata
def test_cmu1_small_region(shared_data: Path) -> None:
    r = open_slide(shared_data / "cmu1_small_region" / "CMU-1-Small-Region.svs")
    assert r.backend == "openslide" and r.vendor == "aperio"
    assert r.dimensions == (2220, 2967) and r.mpp == pytest.approx(0.499)
    tile = r.read_region(1000, 1000, 0, 256, 256)
    assert tile.shape == (256, 256, 3) and tile.dtype == np.uint8
    thumb, ds = r.thumbnail(300)
    assert max(thumb.shape[:2]) <= 300 and ds == pytest.approx(10.0)
    assert open_slide(shared_data / "cmu1_small_region" / "CMU-1-Small-Region.svs", mpp=0.25).mpp == 0.25


@pytest.mark.realdata
def test_cmu1_direct_tiles_equal_openslide(shared_data: Path) -> None:
    """Aperio SVS (photometric RGB JPEG with shared tables, 240² tiles): direct decoding gives
    OpenSlide's pixels on aligned, unaligned and multi-tile regions."""
    import openslide

    path = shared_data / "cmu1_small_region" / "CMU-1-Small-Region.svs"
    r, o = open_slide(path), openslide.OpenSlide(str(path))
    assert r._direct is not None and list(r._direct.levels) == [0]
    rng = np.random.default_rng(0)
    regions = [(240 * i, 240 * j, 240, 240) for i in range(3) for j in range(3)]
    regions += [(int(rng.integers(0, 1900)), int(rng.integers(0, 2600)), int(rng.integers(1, 300)),
                 int(rng.integers(1, 300))) for _ in range(20)]
    for x, y, w, h in regions:
        px, order = r.read_region_raw(x, y, 0, w, h)
        assert order == "RGB"
        np.testing.assert_array_equal(px, np.asarray(o.read_region((x, y), 0, (w, h)).convert("RGB")))


@pytest.mark.parametrize("kind", ["png", "tiff-strips", "tiff-tiled"])
def test_16bit_grey_and_rgb_are_scaled_not_clipped(tmp_path: Path, kind: str) -> None:
    # one rule for every reader: 16-bit v -> round(v * 255 / 65535); grey is flagged, colour is not
    ramp = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)
    expected = ((ramp.astype(np.uint32) + 128) // 257).astype(np.uint8)
    images = {"grey": ramp, "rgb": np.stack([ramp, ramp[::-1], ramp.T], -1)}
    for name, arr in images.items():
        if kind == "png" and name == "rgb":
            continue  # Pillow has no 16-bit RGB mode
        path = tmp_path / f"{name}.{'png' if kind == 'png' else 'tif'}"
        if kind == "png":
            Image.fromarray(arr).save(path)
        else:
            tifffile.imwrite(path, arr, tile=(16, 16) if kind == "tiff-tiled" else None,
                             photometric="rgb" if arr.ndim == 3 else "minisblack")
        with open_slide(path, mpp=0.5) as reader:
            got = reader.read_region(0, 0, 0, 64, 64)
            assert reader.grayscale == (name == "grey"), (kind, name)
        want = np.stack([expected] * 3, -1) if name == "grey" else np.stack(
            [expected, expected[::-1], expected.T], -1)
        np.testing.assert_array_equal(got, want, err_msg=f"{kind} {name}")
        assert got.max() == 255 and got.min() == 0


def test_float_and_32bit_images_are_refused_naming_the_file(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "f.tif", np.zeros((32, 32, 3), np.float32), photometric="rgb")
    with pytest.raises(SlideReadError, match=r"f\.tif: float32 samples are not supported"):
        open_slide(tmp_path / "f.tif", mpp=0.5)
    Image.fromarray(np.zeros((32, 32), np.int32), mode="I").save(tmp_path / "i.tiff")  # Pillow: mode I as TIFF
    with pytest.raises(SlideReadError, match=r"i\.tiff: int32 samples are not supported"):
        open_slide(tmp_path / "i.tiff", mpp=0.5)


@pytest.mark.realdata
def test_truncated_svs_is_reported_as_truncated(shared_data: Path, tmp_path: Path) -> None:
    data = (shared_data / "cmu1_small_region" / "CMU-1-Small-Region.svs").read_bytes()
    for frac in (0.3, 0.95):
        cut = tmp_path / f"cut{int(frac * 100)}.svs"
        cut.write_bytes(data[: int(len(data) * frac)])
        with pytest.raises(SlideReadError, match=rf"cut{int(frac * 100)}\.svs: .*truncated or corrupt"):
            open_slide(cut).read_region(0, 0, 0, 256, 256)


def test_sheet_without_a_required_column_names_it(tmp_path: Path) -> None:
    from stainshift.validation import ConfigError, read_sample_sheet

    (tmp_path / "s.tsv").write_text("slide_id\tpath\tpatient\tsplit\ns1\ta.tiff\tp1\ttrain\n")
    with pytest.raises(ConfigError, match=r"s\.tsv': missing required column\(s\) \['center'\]"):
        read_sample_sheet(tmp_path / "s.tsv")
