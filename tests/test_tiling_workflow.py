"""The tile / import_crops rules in a throw-away working directory (tiny overlay)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from stainshift.store import PatchStore
from workflow_helpers import make_workdir, run_snakemake

pytestmark = pytest.mark.slow


def _crop_folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    rows = ["path,label,domain,slide"]
    for g in range(5):
        for k in range(2):
            rel = f"c/{g}_{k}.png"
            (root / "c").mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / rel)
            rows.append(f"{rel},{'a' if k else 'b'},dom1,s{g}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def test_tile_and_import_crops_rules(tmp_path: Path) -> None:
    crops = _crop_folder(tmp_path / "crops")
    work = make_workdir(tmp_path / "w", {"crops": [{"name": "toy", "folder": str(crops), "group_column": "slide"}],
                                         "tiling": {"workers": 2}})  # the process pool inside a Snakemake script
    targets = ["results/tiles/a_test.json", "results/qc/a_test.png", "results/tiles/toy-dom1-test.json"]
    proc = run_snakemake(work, *targets)
    # progress on the console as well as in the job's log (stainshift.joblog)
    assert "[tile_slide a_test] " in proc.stderr and "tiles kept of" in proc.stderr, proc.stderr[-3000:]
    store = PatchStore.open(work / "results/tiles/a_test.zarr")
    cfg = yaml.safe_load((work / "config/config.yaml").read_text())
    assert len(store) == cfg["tiling"]["max_tiles"] and store.patch_size == cfg["tiling"]["patch_size"]
    assert store.attrs["slide_id"] == "a_test" and store.attrs["center"] == "center_a" and store.attrs["split"] == "test"
    assert store.label.min() >= 0 and not np.isnan(store.label_fraction).any()  # labelled from the XML
    assert (work / "results/logs/tile/a_test.log").read_text().count("kept") >= 1
    assert (work / "results/benchmarks/tile/a_test.tsv").is_file()
    crop_store = PatchStore.open(work / "results/tiles/toy-dom1-test.zarr")
    assert len(crop_store) == 2 and (crop_store.coords == -1).all()
    manifest = json.loads((work / "results/tiles/a_test.json").read_text())  # written last: the store is complete
    assert manifest["n_tiles"] == len(store) and manifest["slide_id"] == "a_test"
    # nothing to do now; a tiling change re-runs tile (params trigger), not synth
    dry = run_snakemake(work, "-n", *targets)
    assert "Nothing to be done" in dry.stdout + dry.stderr
    cfg["tiling"]["max_tiles"] = 20
    (work / "config/config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    dry = run_snakemake(work, "-n", *targets)
    out = dry.stdout + dry.stderr
    assert "rule tile_slide:" in out or "localrule tile_slide:" in out
    assert "rule synth:" not in out and "localrule synth:" not in out and "import_crops:" not in out
