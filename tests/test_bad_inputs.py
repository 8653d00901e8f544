"""Bad input through the workflow: every case is a config overlay and/or sample-sheet edit run by
Snakemake on tiny settings, and asserts the outcome and the message (issue 15's regression net).

Parse-time cases run ``snakemake --dry-run`` (the checks in ``workflow/rules/common.smk``): the run
must fail before any job, the message must name the key / row / file once, and without a Python
traceback. Run-time cases tile small images and assert the defined result and the console warning.

Cases tested where they live (they need a real run or a killed process, kept out of this file so
CI runs them once): a failed / killed re-run keeps the previous store and is planned again
(``test_reruns.py``), shell quoting with spaces and ``$(…)`` in ``results:`` (``test_lint.py``),
checkpoint write errors and the thread-count fingerprint (``test_train.py``), YAML syntax errors
by file and line (``test_cli.py``: ``stainshift check-config``; Snakemake parses the config file
before the workflow's code runs), the report's closing sentence for CIs above / containing /
below zero (``test_report.py``), annotation geometry (``test_annotations.py``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pytest
import tifffile
import yaml
from PIL import Image

from conftest import SHARED_DATA
from workflow_helpers import make_workdir, run_snakemake

CMU1 = SHARED_DATA / "cmu1_small_region" / "CMU-1-Small-Region.svs"

Mutate = Callable[[dict, pd.DataFrame, Path], pd.DataFrame | None]


def _add_row(sheet: pd.DataFrame, **row: str) -> pd.DataFrame:
    base = {c: "" for c in sheet.columns}
    base.update({"center": "center_a", "patient": "x_p1", "split": "test"}, **row)
    return pd.concat([sheet, pd.DataFrame([base])], ignore_index=True)


def _tiff_without_pixel_size(cfg: dict, sheet: pd.DataFrame, work: Path) -> pd.DataFrame:
    tifffile.imwrite(work / "nompp.tiff", np.full((64, 64, 3), 200, np.uint8), photometric="rgb")
    return _add_row(sheet, slide_id="nompp", path="nompp.tiff")


def _png_without_pixel_size(cfg: dict, sheet: pd.DataFrame, work: Path) -> pd.DataFrame:
    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(work / "roi.png")
    return _add_row(sheet, slide_id="roi", path="roi.png")


def _truncated_svs(cfg: dict, sheet: pd.DataFrame, work: Path) -> pd.DataFrame:
    if not CMU1.is_file():
        pytest.skip(f"real data not available: {CMU1} not found")
    data = CMU1.read_bytes()
    (work / "cut.svs").write_bytes(data[: len(data) * 3 // 10])
    return _add_row(sheet, slide_id="cut", path="cut.svs")


def _one_class(cfg: dict, sheet: pd.DataFrame, work: Path) -> None:
    train = sheet["split"] == "train"
    sheet.loc[train, "annotation"] = ""
    sheet.loc[train, "label"] = "tumour"


def _patient_in_two_splits(cfg: dict, sheet: pd.DataFrame, work: Path) -> None:
    sheet.loc[sheet["slide_id"] == "a_test", "patient"] = "a_p1"


def _drop_center_column(cfg: dict, sheet: pd.DataFrame, work: Path) -> pd.DataFrame:
    return sheet.drop(columns=["center"])


def _no_training_slides(cfg: dict, sheet: pd.DataFrame, work: Path) -> pd.DataFrame:
    return sheet[sheet["split"] != "train"]


PARSE_TIME: list[tuple[str, Mutate, list[str]]] = [
    # --- config keys and types (item 3)
    ("unknown-value", lambda c, s, w: c["tiling"].update(filter="magic"), ["tiling.filter"]),
    ("method-setting-typo", lambda c, s, w: c["pretrain"]["defaults"].update(epoch=3),
     ["key 'pretrain.defaults.epoch': not a setting of any method (did you mean 'epochs'?)"]),
    ("method-setting-type", lambda c, s, w: c["pretrain"]["defaults"].update(epochs="two"),
     ["key 'pretrain.defaults.epochs': 'two' should be an integer"]),
    ("unknown-finetune-key", lambda c, s, w: c["finetune"].update(mode="full"), ["finetune", "mode"]),
    ("unknown-embed-key", lambda c, s, w: c["embed"].update(batch=8), ["embed", "batch"]),
    ("misspelt-resource-stage", lambda c, s, w: c["resources"].update(pretrian={"gpus": 2}),
     ["key 'resources'", "'pretrian'"]),
    ("unknown-source-center", lambda c, s, w: c["pretrain"].update(sources=["each", "center_x"]), ["center_x"]),
    ("external-file-missing", lambda c, s, w: c["external"].append({"name": "uni", "file": "missing.pt2"}),
     ["external[0] ('uni'): file 'missing.pt2' does not exist"]),
    ("more-targets-than-patients", lambda c, s, w: c["normalize"]["targets"].update(k=40),
     ["config normalize.targets: k = 40 targets need as many patients"]),
    # --- sample sheet (items 3, 4)
    ("unknown-split", lambda c, s, w: s.loc.__setitem__((1, "split"), "holdout"), ["row 3", "column 'split'"]),
    ("duplicate-id", lambda c, s, w: s.loc.__setitem__((2, "slide_id"), "a_train1"),
     ["row 4", "duplicate slide_id 'a_train1'"]),
    ("missing-column", _drop_center_column, ["missing required column(s) ['center']"]),
    ("patient-in-two-splits", _patient_in_two_splits, ["patient 'a_p1' is in several splits"]),
    ("one-class-labels", _one_class, ["every 'train' slide has label 'tumour'"]),
    ("no-training-slides", _no_training_slides, ["no center has training stores", "split 'train'"]),
    # --- slides without a pixel size, unreadable slides: headers read at parse time (item 3, 4)
    ("tiff-without-mpp", _tiff_without_pixel_size,
     ["slide_id='nompp'", "'nompp.tiff' records no pixel size", "'mpp' column"]),
    ("png-without-mpp", _png_without_pixel_size, ["slide_id='roi'", "'roi.png' records no pixel size"]),
    ("truncated-svs", _truncated_svs, ["slide_id='cut'", "cut.svs", "truncated or corrupt"]),
]


@pytest.mark.parametrize("mutate, expected", [c[1:] for c in PARSE_TIME], ids=[c[0] for c in PARSE_TIME])
def test_bad_input_fails_at_parse_time_naming_it(tmp_path: Path, mutate: Mutate, expected: list[str]) -> None:
    work = make_workdir(tmp_path)
    cfg = yaml.safe_load((work / "config" / "config.yaml").read_text())
    sheet = pd.read_csv(work / "config" / "slides.tsv", sep="\t", dtype=str, keep_default_na=False)
    changed = mutate(cfg, sheet, work)
    sheet = sheet if changed is None else changed
    (work / "config" / "config.yaml").write_text(yaml.safe_dump(cfg))
    sheet.to_csv(work / "config" / "slides.tsv", sep="\t", index=False)
    proc = run_snakemake(work, "--dry-run", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-2000:]
    for text in expected:
        assert text in out, f"{text!r} not in:\n{out[-3000:]}"
    assert "Traceback (most recent call last)" not in out, out[-3000:]
    assert not (work / "results" / "tiles").exists()  # nothing ran


def test_a_slide_with_a_pixel_size_in_its_header_needs_no_mpp_cell(tmp_path: Path) -> None:
    work = make_workdir(tmp_path)
    sheet = pd.read_csv(work / "config" / "slides.tsv", sep="\t", dtype=str, keep_default_na=False)
    tifffile.imwrite(work / "withmpp.tiff", np.full((64, 64, 3), 200, np.uint8), photometric="rgb",
                     resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER")
    _add_row(sheet, slide_id="withmpp", path="withmpp.tiff").to_csv(work / "config" / "slides.tsv", sep="\t",
                                                                      index=False)
    proc = run_snakemake(work, "--dry-run", check=False)
    assert proc.returncode == 0, proc.stdout[-3000:]
    cache = yaml.safe_load((work / ".snakemake" / "stainshift" / "slide_headers.json").read_text())
    assert [v[2] for k, v in cache.items() if k.endswith("withmpp.tiff")] == [pytest.approx(0.5)]


@pytest.mark.slow
def test_degenerate_images_tile_with_a_console_warning(tmp_path: Path) -> None:
    """Run time: a 16-bit grey PNG is scaled (not clipped to white) and tiled with a 'grey' warning;
    an all-glass image gives an empty store with a console warning naming the slide."""
    grey16 = (np.indices((512, 512)).sum(0) % 256 * 200 + 4000).astype(np.uint16)  # dark: tissue-like values
    Image.fromarray(grey16).save(tmp_path / "grey16.png")
    Image.fromarray(np.full((512, 512, 3), 245, np.uint8)).save(tmp_path / "glass.png")
    rows = [
        {"slide_id": "grey16", "path": str(tmp_path / "grey16.png"), "center": "c1", "patient": "p1",
         "split": "train", "label": "tumour", "annotation": "", "mpp": "0.5"},
        {"slide_id": "glass", "path": str(tmp_path / "glass.png"), "center": "c1", "patient": "p2",
         "split": "train", "label": "normal", "annotation": "", "mpp": "0.5"},
    ]
    work = make_workdir(tmp_path / "w", {"samples": "config/bad.tsv", "synth": {"enabled": False},
                                         "pretrain": {"sources": ["all"]}})
    pd.DataFrame(rows).to_csv(work / "config" / "bad.tsv", sep="\t", index=False)
    proc = run_snakemake(work, "results/tiles/grey16.json", "results/tiles/glass.json", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "grey16" in out and "grey" in out.lower()
    assert "glass" in out and "no tile passed the foreground filter" in out
    import json

    tiles = work / "results" / "tiles"
    assert json.loads((tiles / "grey16.json").read_text())["n_tiles"] > 0
    assert json.loads((tiles / "glass.json").read_text())["n_tiles"] == 0
