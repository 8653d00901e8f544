"""QC pictures and `stainshift inspect`."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from stainshift.cli import app
from stainshift.qc import montage, slide_qc_png
from stainshift.store import write_store


def test_slide_qc_png_outlines_in_label_colours(tmp_path: Path) -> None:
    thumb = np.full((100, 200, 3), 240, np.uint8)
    tissue = np.zeros((100, 200), bool)
    tissue[20:80, 20:180] = True
    slide_qc_png(tmp_path / "qc.png", thumb, 4.0, tissue, np.array([[80, 80], [400, 80]]), 64, [1, 0], title="s")
    img = np.asarray(Image.open(tmp_path / "qc.png").convert("RGB"))
    assert img.shape[1] == 512  # small thumbnails are enlarged
    assert ((img == (230, 0, 0)).all(-1)).sum() > 20 and ((img == (0, 170, 0)).all(-1)).sum() > 20


def test_slide_qc_png_large_image_reduced_and_excluded_zone(tmp_path: Path) -> None:
    thumb = np.full((3000, 1000, 3), 240, np.uint8)
    tissue = np.zeros((3000, 1000), bool)
    tissue[:1500] = True
    ink = np.zeros_like(tissue)
    ink[2000:2100, 200:400] = True
    slide_qc_png(tmp_path / "qc.png", thumb, 16.0, tissue, np.zeros((0, 2)), 256, [], max_side=1024, excluded=ink)
    img = np.asarray(Image.open(tmp_path / "qc.png").convert("RGB")).astype(int)
    assert img.shape[:2] == (1000, 333)  # reduced by 3
    assert img[100, 100, 0] < img[100, 100, 2]  # cyan tint on tissue
    assert img[2050 // 3, 300 // 3, 0] > img[2050 // 3, 300 // 3, 1] + 30  # red tint on the excluded zone
    assert (img[2500 // 3, 10] == 240).all()  # neither


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
