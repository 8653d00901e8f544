"""QC pictures and `stainshift inspect`."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from stainshift.cli import app
from stainshift.qc import (
    CAPPED_COLOUR,
    LABEL_COLOURS,
    MASK_TINT,
    QC_WIDTH,
    REJECTED_COLOUR,
    montage,
    slide_qc_png,
)
from stainshift.store import write_store


def _band(img: np.ndarray, box: list[float], colour: tuple[int, int, int], lw: int = 2) -> float:
    """Share of a tile outline's border band (``lw`` px inside the box) drawn in ``colour``."""
    x0, y0, x1, y1 = (int(v) for v in box)
    hit = (img == colour).all(-1)
    band = np.zeros(hit.shape, bool)
    band[y0 : y1 + 1, x0 : x1 + 1] = True
    band[y0 + lw : y1 + 1 - lw, x0 + lw : x1 + 1 - lw] = False
    return float(hit[band].mean())


def test_slide_qc_png_overlays_legend_and_scale_bar(tmp_path: Path) -> None:
    """Kept tiles solid in their label colour, capped tiles dashed, rejected dotted, each where its
    level-0 coordinates say; a legend entry (with counts and class names) for every overlay drawn,
    its swatch in the legend band; a title with the counts; a scale bar in µm."""
    thumb = np.full((100, 200, 3), 240, np.uint8)
    tissue = np.zeros((100, 200), bool)
    tissue[20:80, 20:180] = True
    kept, capped = np.array([[80, 80], [400, 80]]), np.array([[240, 240], [560, 240]])
    rejected = np.array([[80, 240]])
    info = slide_qc_png(tmp_path / "qc.png", thumb, 4.0, tissue, kept, 64, [1, 0], title="s1: level 2",
                        capped=capped, rejected=rejected, max_tiles=2, class_names=["normal", "tumour"], mpp0=0.5)
    img = np.asarray(Image.open(tmp_path / "qc.png").convert("RGB"))
    assert img.shape[1] == info["size"][0] == QC_WIDTH >= 1024  # small thumbnails are enlarged
    assert img.shape[0] == info["size"][1]
    f, (ox, oy) = info["scale"], info["origin"]
    assert f == pytest.approx((info["image_box"][2] - ox) / (200 * 4.0))

    def box(xy: np.ndarray) -> list[int]:
        x0, y0, side = ox + round(xy[0] * f), oy + round(xy[1] * f), round(64 * f)
        return [x0, y0, x0 + side - 1, y0 + side - 1]

    assert _band(img, box(kept[0]), LABEL_COLOURS[1]) > 0.95 and _band(img, box(kept[1]), LABEL_COLOURS[0]) > 0.95
    for xy in capped:  # dashed: dark grey on part of the outline, not all of it
        assert 0.4 < _band(img, box(xy), CAPPED_COLOUR) < 0.9
        assert _band(img, box(xy), LABEL_COLOURS[0]) == 0
    assert 0.1 < _band(img, box(rejected[0]), REJECTED_COLOUR) < 0.6
    legend = {e["label"]: (e["count"], e["style"], e["colour"]) for e in info["legend"]}
    assert legend == {
        "tissue mask (decision image)": (None, "tint", MASK_TINT),
        "kept: normal (label 0)": (1, "solid", LABEL_COLOURS[0]),
        "kept: tumour (label 1)": (1, "solid", LABEL_COLOURS[1]),
        "capped: tissue candidate left out by max_tiles=2": (2, "dashed", CAPPED_COLOUR),
        "rejected: read, tissue below threshold": (1, "dotted", REJECTED_COLOUR),
    }
    below = img[info["image_box"][3] + 2 :]  # the legend band: a swatch of every outline style
    for count, style, colour in legend.values():
        if style != "tint":
            assert (below == colour).all(-1).sum() > 10, colour
    assert info["title"][0] == "s1: level 2"
    assert info["title"][1] == "kept 2 (normal: 1, tumour: 1) · capped 2 (max_tiles 2) · rejected 1"
    # 1000 px show 800 level-0 px at 0.5 µm: 0.4 µm/px; the bar is the nice length under a quarter width
    assert info["um_per_px"] == pytest.approx(0.4, rel=0.01) and info["scale_bar_um"] == 100
    bar_rows = (below[:, :, :] == (20, 20, 20)).all(-1).sum(1)
    assert bar_rows.max() >= 100 / info["um_per_px"] - 2  # a solid bar of that length


def test_slide_qc_png_large_image_reduced_and_excluded_zone(tmp_path: Path) -> None:
    thumb = np.full((3000, 1000, 3), 240, np.uint8)
    tissue = np.zeros((3000, 1000), bool)
    tissue[:1500] = True
    ink = np.zeros_like(tissue)
    ink[2000:2100, 200:400] = True
    info = slide_qc_png(tmp_path / "qc.png", thumb, 16.0, tissue, np.zeros((0, 2)), 256, [], max_side=1024,
                        excluded=ink, width=1200)
    img = np.asarray(Image.open(tmp_path / "qc.png").convert("RGB")).astype(int)
    assert img.shape[1] == 1200
    x0, y0, x1, y1 = info["image_box"]
    assert (y1 - y0) == int(1.5 * 1200) and x1 - x0 == round(333 * (y1 - y0) / 1000)  # reduced by 3, fit to 1.5 w
    assert info["scale"] == pytest.approx((y1 - y0) / 1000 / (16.0 * 3), rel=0.01)

    def at(x0_: float, y0_: float) -> np.ndarray:  # picture pixel of a decision-image pixel
        return img[int(y0 + y0_ * 16 * info["scale"]), int(x0 + x0_ * 16 * info["scale"])]

    assert at(100, 100)[0] < at(100, 100)[2]  # cyan tint on tissue
    assert at(300, 2050)[0] > at(300, 2050)[1] + 30  # red tint on the excluded zone
    assert (at(10, 2500) == 240).all()  # neither
    labels = [e["label"] for e in info["legend"]]
    assert labels == ["tissue mask (decision image)", "ink zone (excluded)"]  # no tiles: no tile entries
    assert info["um_per_px"] is None and info["scale_bar_um"] is None and info["title"][0] == "kept 0"


def test_tile_slide_qc_accounts_for_every_candidate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The tiler passes the capped and rejected tiles and the level-0 mpp: kept + capped + rejected are
    the candidates, disjoint; a capped tile is a grid tile the store does not hold."""
    synth = pytest.importorskip("stainshift.synth")
    from stainshift import qc
    from stainshift.store import PatchStore
    from stainshift.tiling import tile_slide

    synth.generate_slide(tmp_path / "s.tiff", tmp_path / "m.png", tmp_path / "s.xml", center="center_b", seed=3,
                         size=1024, mpp=0.5, levels=3, slide_id="q")
    seen: dict = {}
    real = qc.slide_qc_png

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        seen.update(kwargs, coords=args[4], info=real(*args, **kwargs))
        return seen["info"]

    monkeypatch.setattr(qc, "slide_qc_png", spy)
    res = tile_slide(tmp_path / "s.tiff", tmp_path / "q.zarr", {"target_mpp": 1.0, "patch_size": 32, "max_tiles": 20},
                     slide_id="q", annotation=tmp_path / "s.xml", qc_png=tmp_path / "qc.png", progress=False)
    store = PatchStore.open(tmp_path / "q.zarr")
    kept = {tuple(map(int, c)) for c in store.coords}
    capped = {tuple(map(int, c)) for c in seen["capped"]}
    rejected = {tuple(map(int, c)) for c in seen["rejected"]}
    assert len(kept) == 20 and len(capped) > 0 and not (kept & capped) and not (kept & rejected)
    assert not (capped & rejected) and len(kept) + len(capped) + len(rejected) == res.n_candidates
    assert seen["mpp0"] == pytest.approx(0.5) and seen["max_tiles"] == 20
    assert seen["info"]["size"][0] >= 1024 and seen["info"]["title"][0].startswith("q: ")
    assert f"capped {len(capped)} (max_tiles 20)" in seen["info"]["title"][1]


def test_montage_grid() -> None:
    tiles = np.zeros((5, 16, 16, 3), np.uint8)
    img = montage(tiles, columns=3)
    assert img.size == (3 * 20, 2 * 20)


def test_inspect_command(tmp_path: Path) -> None:
    tiles = np.random.default_rng(0).integers(0, 256, (10, 16, 16, 3), dtype=np.uint8)
    store = write_store(tmp_path / "s.zarr", tiles, coords=np.zeros((10, 2)), tissue_fraction=np.ones(10),
                        label=[0] * 7 + [1] * 3, label_fraction=np.zeros(10),
                        attrs={"slide_id": "s", "mpp_level0": 0.5, "target_mpp": 1.0, "read_level": 0})
    runner = CliRunner()
    res = runner.invoke(app, ["inspect", str(store), "--n", "4", "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    assert summary["n_tiles"] == 10 and summary["labels"] == {"0": 7, "1": 3} and summary["target_mpp"] == 1.0
    assert Path(summary["montage"]).is_file() and len(summary["montage_indices"]) == 4
    res = runner.invoke(app, ["inspect", str(store), "--indices", "9,0", "--montage", str(tmp_path / "m.png")])
    assert res.exit_code == 0 and "n_tiles" in res.output and (tmp_path / "m.png").is_file()
    res = runner.invoke(app, ["inspect", str(tmp_path / "missing.zarr")])
    assert res.exit_code == 2 and "Invalid value" in res.output
    res = runner.invoke(app, ["inspect", str(store), "--indices", "99"])
    assert res.exit_code != 0
