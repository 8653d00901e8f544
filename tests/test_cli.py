"""The `stainshift` command line: --version and help."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

import stainshift
from stainshift.cli import app


def test_version_flag() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"stainshift {stainshift.__version__}"
    assert stainshift.__version__ != "0.0.0+unknown"  # installed package metadata is found


def test_console_script_entry_point() -> None:
    script = Path(sys.executable).parent / "stainshift"  # the installed console script
    proc = subprocess.run([str(script), "--help"], capture_output=True, text=True, env={"COLUMNS": "200"})
    assert proc.returncode == 0
    assert "synth" in proc.stdout


def test_inspect_where_selects_and_prints(tmp_path: Path) -> None:
    from test_slide_view import fake_predictions, slide_store

    store = slide_store(tmp_path)
    csv = tmp_path / "seed0.csv"
    fake_predictions(store).to_csv(csv, index=False)
    runner = CliRunner()
    res = runner.invoke(app, ["inspect", str(store), "--where", "label=tumour", "--class-names", "normal,tumour", "--n", "3", "--json",
                              "--montage", str(tmp_path / "m.png")])
    assert res.exit_code == 0, res.output
    sel = json.loads(res.output)["selection"]
    assert sel["selected"] == "9 of 36 tiles" and sel["labels"] == {"tumour": 9}
    assert sel["indices"] == "0,1,2,6,7,8,12,13,14"
    assert all(int(i) in (0, 1, 2, 6, 7, 8, 12, 13, 14) for i in json.loads(res.output)["montage_indices"])
    res = runner.invoke(app, ["inspect", str(store), "--predictions", str(csv), "--where", "score=0.6..1",
                              "--where", "center=c0", "--n", "0"])
    assert res.exit_code == 0, res.output
    assert "selection" in res.output and "score=0.6..1 and center=c0" in res.output
    assert "score_range" in res.output and "unseen sources: c1, c2, loco-c0" in res.output
    res = runner.invoke(app, ["inspect", str(store), "--where", "score>0.5", "--n", "0"])
    assert res.exit_code == 2 and "need --predictions" in res.output
    res = runner.invoke(app, ["inspect", str(store), "--where", "label=1", "--indices", "1"])
    assert res.exit_code == 2 and "not both" in res.output


def test_export_geojson_command(tmp_path: Path) -> None:
    from test_slide_view import crop_store, fake_predictions, slide_store

    store = slide_store(tmp_path)
    csv = tmp_path / "seed0.csv"
    fake_predictions(store).to_csv(csv, index=False)
    runner = CliRunner()
    res = runner.invoke(app, ["export-geojson", str(store), "--predictions", str(csv), "--class-names", "normal,tumour"])
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "s0.geojson").read_text())
    assert len(data["features"]) == 36 and "wrote 36 tiles" in res.output
    assert data["features"][0]["properties"]["classification"]["name"] in ("normal", "tumour")
    res = runner.invoke(app, ["export-geojson", str(store), "--predictions", str(csv), "--protocol", "x",
                              "--out", str(tmp_path / "x.geojson")])
    assert res.exit_code == 2 and "protocol 'x'" in res.output
    res = runner.invoke(app, ["export-geojson", str(crop_store(tmp_path))])
    assert res.exit_code == 2 and "no slide coordinates" in res.output


def test_export_command_and_inspect_shows_mpp_source(tmp_path: Path) -> None:
    import numpy as np

    from stainshift.store import PatchStore, write_store

    tiles = np.random.default_rng(0).integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    src = write_store(tmp_path / "s.zarr", tiles, coords=np.zeros((5, 2)), tissue_fraction=np.ones(5),
                      label=np.zeros(5), label_fraction=np.zeros(5), codec="jpeg",
                      attrs={"slide_id": "s", "mpp_level0": 0.5, "mpp_source": "sheet"})
    runner = CliRunner()
    res = runner.invoke(app, ["inspect", str(src), "--n", "0"])
    assert res.exit_code == 0, res.output
    assert any(line.split() == ["mpp_source", "sheet"] for line in res.output.splitlines()), res.output
    out = tmp_path / "plain.zarr"
    res = runner.invoke(app, ["export", str(src), str(out)])
    assert res.exit_code == 0, res.output
    assert f"wrote 5 tiles to {out} (zstd level 3" in res.output and "source jpeg" in res.output
    np.testing.assert_array_equal(PatchStore.open(out).read(slice(None)), PatchStore.open(src).read(slice(None)))
    res = runner.invoke(app, ["export", str(src), str(out)])
    assert res.exit_code == 2 and "--overwrite" in res.output
    res = runner.invoke(app, ["export", str(src), str(out), "--overwrite", "--codec", "gzip", "--level", "1"])
    assert res.exit_code == 0 and "gzip level 1" in res.output, res.output
    res = runner.invoke(app, ["export", str(src), str(tmp_path / "x.zarr"), "--codec", "lz4"])
    assert res.exit_code == 2 and "zstd, gzip" in res.output
    res = runner.invoke(app, ["inspect", str(out), "--n", "0", "--json"])
    summary = json.loads(res.output)
    assert summary["mpp_source"] == "sheet" and summary["exported_from"]["store"] == str(src.resolve())


def test_check_config_names_the_file_line_and_bad_keys(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[1]
    base = str(repo / "config" / "config.yaml")
    runner = CliRunner()
    ok = runner.invoke(app, ["check-config", base, str(repo / "config" / "examples" / "tiny.yaml")])
    assert ok.exit_code == 0 and ok.output.startswith("ok: ")
    broken = tmp_path / "broken.yaml"
    broken.write_text("tiling:\n  patch_size: 64\n   max_tiles: 3\n")
    res = runner.invoke(app, ["check-config", base, str(broken)])
    assert res.exit_code == 1 and f"{broken}: YAML syntax error at line 3, column 13" in res.output
    typo = tmp_path / "typo.yaml"
    typo.write_text("pretrain:\n  defaults:\n    epoch: 3\ntiling:\n  patch_size: big\n")
    res = runner.invoke(app, ["check-config", base, str(typo)])
    assert res.exit_code == 1 and "tiling.patch_size" in res.output  # schema first: every bad key
    typo.write_text("pretrain:\n  defaults:\n    epoch: 3\n")
    res = runner.invoke(app, ["check-config", base, str(typo)])
    assert res.exit_code == 1 and "pretrain.defaults.epoch" in res.output and "epochs" in res.output


def test_merge_overlay_replaces_lists_and_merges_mappings() -> None:
    from stainshift.validation import merge_overlay

    base = {"crops": [{"name": "a"}], "pretrain": {"methods": ["x", "y"], "defaults": {"epochs": 4, "lr": 1}}}
    out = merge_overlay(base, {"crops": [{"name": "b"}], "pretrain": {"methods": ["z"], "defaults": {"epochs": 9}}})
    assert out == {"crops": [{"name": "b"}], "pretrain": {"methods": ["z"], "defaults": {"epochs": 9, "lr": 1}}}
    assert base["pretrain"]["defaults"]["epochs"] == 4  # the base is not modified
