"""stainshift.synth: pyramidal JPEG TIFFs that OpenSlide opens, exact ground truth, determinism, centers."""
from __future__ import annotations

import hashlib
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import openslide
import pytest
import tifffile
from PIL import Image
from skimage.draw import polygon as draw_polygon

from stainshift import synth
from stainshift.synth import writer as synth_writer
from stainshift.synth import CENTERS, derive_seed, generate_slide, render_he

REPO = Path(__file__).resolve().parents[1]


def _make(tmp: Path, name: str, **kw) -> synth.SlideInfo:
    args = dict(center="center_a", seed=0, size=512, slide_id=name)
    args.update(kw)
    return generate_slide(tmp / f"{name}.tiff", tmp / f"{name}_mask.png", tmp / f"{name}.xml", **args)


def _xml_polygons(path: Path) -> list[np.ndarray]:
    root = ET.parse(path).getroot()
    assert root.tag == "ASAP_Annotations"
    polys = []
    for ann in root.iter("Annotation"):
        assert ann.get("Type") == "Polygon" and ann.get("PartOfGroup") == "Tumor"
        pts = sorted(ann.iter("Coordinate"), key=lambda c: int(c.get("Order")))
        polys.append(np.array([[float(c.get("X")), float(c.get("Y"))] for c in pts]))
    assert [g.get("Name") for g in root.iter("Group")] == ["Tumor"]
    return polys


def _rasterize(polys: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    out = np.zeros(shape, dtype=bool)
    for p in polys:
        rr, cc = draw_polygon(p[:, 1], p[:, 0], shape=shape)
        out[rr, cc] = True
    return out


@pytest.fixture(scope="module")
def slide(tmp_path_factory) -> synth.SlideInfo:
    """One 1024² center_a slide shared by the read-back tests."""
    return _make(tmp_path_factory.mktemp("synth"), "a_train", size=1024)


def test_openslide_reads_vendor_levels_and_mpp(slide):
    with openslide.OpenSlide(slide.slide_path) as s:
        assert s.properties[openslide.PROPERTY_NAME_VENDOR] == "aperio"
        assert s.level_count == 3
        assert s.level_dimensions == ((1024, 1024), (256, 256), (64, 64))
        assert s.level_downsamples == pytest.approx((1.0, 4.0, 16.0))
        assert float(s.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(0.5)
        assert float(s.properties[openslide.PROPERTY_NAME_MPP_Y]) == pytest.approx(0.5)
        assert s.properties[openslide.PROPERTY_NAME_OBJECTIVE_POWER] == "20"
        assert s.properties["aperio.Center"] == "center_a"
        region = np.asarray(s.read_region((0, 0), 2, (64, 64)).convert("RGB"))
    assert region.std() > 5  # real content at the lowest level, not a blank page
    assert slide.level_dimensions == [(1024, 1024), (256, 256), (64, 64)]


def test_tifffile_pages_are_tiled_jpeg_top_level_levels(slide):
    with tifffile.TiffFile(slide.slide_path) as tif:
        assert len(tif.pages) == 3
        for i, page in enumerate(tif.pages):
            assert page.is_tiled and (page.tilewidth, page.tilelength) == (256, 256)
            assert page.compression == tifffile.COMPRESSION.JPEG
            assert page.subfiletype == (0 if i == 0 else 1)
            assert "SubIFDs" not in page.tags
            assert page.tags["ResolutionUnit"].value == tifffile.RESUNIT.CENTIMETER
            xres = page.tags["XResolution"].value
            assert xres[0] / xres[1] == pytest.approx(1e4 / 0.5 / 4**i, rel=1e-4)
            assert page.shape == (1024 // 4**i, 1024 // 4**i, 3)
        desc = tif.pages[0].description
        assert desc.startswith("Aperio Image Library") and "|AppMag = 20|MPP = 0.5|" in desc
        level0 = tif.pages[0].asarray()
        level1 = tif.pages[1].asarray()
    # level 1 is the 4x block mean of level 0 (both JPEG-compressed, so compare loosely)
    down = level0.reshape(256, 4, 256, 4, 3).mean(axis=(1, 3))
    assert np.abs(down - level1).mean() < 3.0


def test_mask_tumour_equals_rasterized_xml_and_lies_in_tissue(slide):
    mask = np.asarray(Image.open(slide.mask_path))
    assert mask.dtype == np.uint8 and mask.shape == (1024, 1024)
    assert set(np.unique(mask)) == {0, 1, 2}
    polys = _xml_polygons(Path(slide.xml_path))
    assert len(polys) == slide.n_tumours >= 1
    np.testing.assert_array_equal(mask == 2, _rasterize(polys, mask.shape))
    # tumour is tissue in the image too: almost no glass-bright pixels inside the polygons
    with openslide.OpenSlide(slide.slide_path) as s:
        rgb = np.asarray(s.read_region((0, 0), 0, (1024, 1024)).convert("RGB")).astype(int)
    bright = rgb.min(axis=-1) > 225
    assert bright[mask == 2].mean() < 0.01
    assert bright[mask == 0].mean() > 0.95  # glass is glass
    assert rgb[mask == 2].mean() < rgb[mask == 1].mean()  # crowded dark nuclei
    meta = Image.open(slide.mask_path).text
    assert meta["stainshift.mask_downsample"] == "1" and meta["stainshift.slide_size"] == "1024x1024"


def test_tissue_and_tumour_fractions_are_sensible(slide):
    mask = np.asarray(Image.open(slide.mask_path))
    assert 0.25 < slide.tissue_fraction < 0.7
    assert 0.005 < slide.tumour_fraction < 0.5 * slide.tissue_fraction
    assert slide.tissue_fraction == pytest.approx((mask > 0).mean())
    assert slide.tumour_fraction == pytest.approx((mask == 2).mean())


def test_mask_downsample_is_centre_sampling_of_level0_labels(tmp_path):
    full = _make(tmp_path, "full", seed=3, slide_id="s")
    small = _make(tmp_path, "small", seed=3, slide_id="s", mask_downsample=4)
    m_full = np.asarray(Image.open(full.mask_path))
    m_small = np.asarray(Image.open(small.mask_path))
    assert small.mask_size == (128, 128) and m_small.shape == (128, 128)
    np.testing.assert_array_equal(m_small, m_full[2::4, 2::4])
    assert Image.open(small.mask_path).text["stainshift.mask_downsample"] == "4"
    # the slide itself does not depend on the mask resolution
    assert Path(full.slide_path).read_bytes() == Path(small.slide_path).read_bytes()


def test_generation_is_deterministic_and_seeded(tmp_path, monkeypatch):
    a = _make(tmp_path / "a", "x", seed=7, tile_size=64)
    # same seed, rendered in 16-row strips instead of one 512-row strip: identical files, so the
    # output is both reproducible and independent of how the slide is cut into strips
    monkeypatch.setattr(synth_writer, "_STRIP_PIXELS", 512 * 16)
    assert synth_writer._strip_rows(512, 64) == 16
    b = _make(tmp_path / "b", "x", seed=7, tile_size=64)
    monkeypatch.undo()
    for attr in ("slide_path", "mask_path", "xml_path"):
        assert Path(getattr(a, attr)).read_bytes() == Path(getattr(b, attr)).read_bytes(), attr
    d = _make(tmp_path / "d", "x", seed=8, tile_size=64)
    e = _make(tmp_path / "e", "y", seed=7, tile_size=64)  # same study seed, another slide id
    pix = {k: tifffile.imread(v.slide_path, key=0).astype(int) for k, v in dict(a=a, d=d, e=e).items()}
    assert np.abs(pix["a"] - pix["d"]).mean() > 10
    assert np.abs(pix["a"] - pix["e"]).mean() > 10


def test_derive_seed_is_sha256_of_seed_and_slide_id():
    expected = int.from_bytes(hashlib.sha256(b"stainshift.synth|0|a_train").digest()[:8], "little") >> 1
    assert derive_seed(0, "a_train") == expected
    assert derive_seed(0, "a_train") != derive_seed(1, "a_train") != derive_seed(0, "a_val")


def test_centers_differ_in_tissue_colour_background_and_jpeg(tmp_path):
    means, glass = {}, {}
    for name in ("center_a", "center_b", "center_c", "center_d"):
        info = _make(tmp_path, name, center=name, seed=1, slide_id="s")  # same scene, different center
        rgb = tifffile.imread(info.slide_path, key=0).astype(float)
        mask = np.asarray(Image.open(info.mask_path))
        means[name] = rgb[mask > 0].mean(axis=0)
        glass[name] = rgb[mask == 0].mean(axis=0)
        # H&E at a glance: glass near white, tissue pink (red > green), tumour nuclei purple (blue > green)
        assert glass[name].min() > 215
        assert means[name][0] > means[name][1]
        assert rgb[mask == 2].mean(axis=0)[2] > rgb[mask == 2].mean(axis=0)[1]
    names = list(means)
    for i, p in enumerate(names):
        for q in names[i + 1:]:
            assert np.abs(means[p] - means[q]).max() > 4, (p, q, means[p], means[q])
            assert np.abs(glass[p] - glass[q]).max() > 2, (p, q)
    assert len({c.jpeg_quality for c in CENTERS.values()}) == len(CENTERS)


def test_center_styles_have_unit_stain_vectors():
    assert {"center_a", "center_b", "center_c"} <= set(CENTERS)
    for name, style in CENTERS.items():
        assert style.stain_matrix.shape == (2, 3)
        np.testing.assert_allclose(np.linalg.norm(style.stain_matrix, axis=1), 1.0, rtol=1e-12)
        assert not style.stain_matrix.flags.writeable, name
    vecs = np.stack([s.stain_matrix for s in CENTERS.values()])
    assert np.ptp(vecs, axis=0).max() > 0.05  # centers really differ in stain vectors


def test_unknown_center_names_the_known_ones(tmp_path):
    with pytest.raises(ValueError, match=r"unknown synthetic center 'center_z'.*center_a, center_b, center_c"):
        _make(tmp_path, "z", center="center_z")
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_render_he_roundtrip_recovers_concentrations():
    rng = np.random.default_rng(0)
    h = rng.uniform(0, 1.5, (64, 64))
    e = rng.uniform(0, 1.0, (64, 64))
    for style in CENTERS.values():
        s = style.stain_matrix
        rgb = render_he(h, e, s, io=240.0)
        assert rgb.dtype == np.uint8 and rgb.shape == (64, 64, 3)
        od = -np.log(np.maximum(rgb.astype(float), 1.0) / 240.0)
        conc = od.reshape(-1, 3) @ np.linalg.pinv(s)
        np.testing.assert_allclose(conc[:, 0], h.ravel(), atol=0.03)
        np.testing.assert_allclose(conc[:, 1], e.ravel(), atol=0.03)
    # zero stain is the glass colour (per-channel Io)
    assert render_he(np.zeros(1), np.zeros(1), CENTERS["center_b"].stain_matrix, io=(250, 240, 230)).tolist() == [[250, 240, 230]]
    with pytest.raises(ValueError, match="stain_matrix must have shape"):
        render_he(h, e, np.eye(3))


def test_cli_writes_slides_and_a_valid_sample_sheet(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from stainshift.cli import app
    from stainshift.validation import load_sample_sheet

    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["synth", "out", "--centers", "center_a,center_c", "--slides-per-center", "1",
                                   "--size", "512", "--seed", "5"])
    assert res.exit_code == 0, res.output
    df = load_sample_sheet("out/slides.tsv", REPO / "workflow" / "schemas" / "samples.schema.yaml", base_dir=".")
    assert list(df["slide_id"]) == ["a_test", "c_test"]
    assert list(df["center"]) == ["center_a", "center_c"]
    for row in df.itertuples():
        assert Path(row.path).is_file() and Path(row.annotation).is_file()
        assert Path(row.path).with_name(f"{row.slide_id}_mask.png").is_file()
    bad = CliRunner().invoke(app, ["synth", "out2", "--centers", "center_q", "--size", "512"])
    assert bad.exit_code != 0 and "center_q" in bad.output


def test_study_rows_match_the_demo_sheet():
    import pandas as pd

    rows = synth.study_rows(["center_a", "center_b", "center_c"], 4)
    demo = pd.read_csv(REPO / "config" / "slides.tsv", sep="\t")
    assert [r["slide_id"] for r in rows] == list(demo["slide_id"])
    assert [r["split"] for r in rows] == list(demo["split"])
    assert [r["patient"] for r in rows] == list(demo["patient"])
    assert synth.split_names(5) == ["train", "train", "train", "val", "test"]
    assert [r["slide_id"] for r in synth.study_rows(["center_d"], 4)] == ["d_train1", "d_train2", "d_val", "d_test"]
    assert synth.auto_mask_downsample(3072) == 1 and synth.auto_mask_downsample(16384) == 4


@pytest.mark.slow
def test_workflow_synth_rule_generates_a_sheet_slide(tmp_path):
    from workflow_helpers import make_workdir, run_snakemake

    work = make_workdir(tmp_path, {"synth": {"size": 512}})
    run_snakemake(work, "results/synth/b_val.tiff", cores=1)
    with openslide.OpenSlide(str(work / "results/synth/b_val.tiff")) as s:
        assert s.level_count == 3 and s.properties["aperio.Center"] == "center_b"
    assert (work / "results/synth/b_val_mask.png").is_file() and (work / "results/synth/b_val.xml").is_file()
    assert "done in" in (work / "results/logs/synth/b_val.log").read_text()


def test_nuclei_scene_masks_match_the_rendered_nuclei():
    """Instance and type masks of :func:`nuclei_scene` sit on the dark nuclei it renders; deterministic."""
    from stainshift.synth import NUCLEUS_TYPES, nuclei_scene

    a = nuclei_scene("center_a", size=256, seed=1)
    b = nuclei_scene("center_a", size=256, seed=1)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.instances, b.instances)
    assert a.image.shape == (256, 256, 3) and a.instances.shape == a.types.shape == (256, 256)
    assert ((a.instances > 0) == (a.types > 0)).all()
    assert set(np.unique(a.types)) <= {0, *NUCLEUS_TYPES}
    assert len(np.unique(a.instances)) - 1 >= 10
    # every instance has one type
    ids, inv = np.unique(a.instances[a.instances > 0], return_inverse=True)
    t = a.types[a.instances > 0]
    for k in range(len(ids)):
        assert len(np.unique(t[inv == k])) == 1
    # nuclei are hematoxylin-dark: far darker (lower grey) than the rest of the tissue
    grey = a.image.astype(np.float32).mean(axis=2)
    tissue = (grey < 225) & (a.instances == 0)
    assert grey[a.instances > 0].mean() < grey[tissue].mean() - 30
    with pytest.raises(ValueError, match="unknown synthetic center"):
        nuclei_scene("center_z")
