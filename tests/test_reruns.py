"""Re-run semantics of the workflow, on a completed tiny demo run (tests/cluster_helpers.CI_MINI).

After one full local run, each test works on a copy (mtimes and .snakemake metadata kept) and asks
Snakemake what it would re-run (`--dry-run --quiet rules`, `--list-changes params`), compared with
the rule graph: a change must re-run its stage and everything downstream of it, and nothing else.
Two tests kill jobs for real (SIGKILL to Snakemake and its job, as a node crash would) and re-run.
"""
from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest

from cluster_helpers import (base_run, copy_workdir, descendants, kill_tree, planned_rules, rule_graph,
                             set_config, snakemake_cmd)
from stainshift.store import PatchStore
from workflow_helpers import run_snakemake

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    work, seconds = base_run(tmp_path_factory)
    print(f"\n[reruns] local CI_MINI demo run: {seconds:.0f} s")
    return work


@pytest.fixture(scope="module")
def graph(base) -> dict[str, set[str]]:
    return rule_graph(base)


@pytest.fixture
def work(base, tmp_path) -> Path:
    return copy_workdir(base, tmp_path / "work")


def _list_changes_params(work: Path) -> list[str]:
    proc = run_snakemake(work, "--list-changes", "params")
    return [ln.strip() for ln in proc.stdout.splitlines() if ln.strip().startswith("results/")]


def test_completed_run_is_up_to_date(base, graph):
    assert planned_rules(base) == {}, "a finished run plans more jobs"
    # the stages this suite is about exist in the workflow
    assert {"tile_slide", "evaluate_method"} <= set(graph), sorted(graph)


def test_tiling_param_reruns_tiling_and_downstream_only(work, graph):
    set_config(work, {"tiling": {"min_tissue_fraction": 0.6}})
    # --list-changes params names every tile store (in Snakemake 9.27 it also lists files whose
    # params did not change, so only the plan below is compared exactly)
    changed = set(_list_changes_params(work))
    stores = {f"results/tiles/{p.name}" for p in (work / "results" / "tiles").glob("*.json")}  # store manifests
    assert stores and stores <= changed, sorted(stores - changed)
    planned = planned_rules(work)
    assert set(planned) == descendants(graph, "tile_slide"), (
        f"planned {dict(planned)}; expected tile_slide and downstream: {sorted(descendants(graph, 'tile_slide'))}")
    assert "synth" not in planned
    assert planned["tile_slide"] == _count(work, "tile_slide"), "every slide's store is re-tiled"


def _count(work: Path, rule: str) -> int:
    return planned_rules(work, "--forceall")[rule]


def test_evaluation_param_reruns_only_evaluation_and_report(work, graph):
    set_config(work, {"evaluate": {"bootstrap": 20}})
    planned = planned_rules(work)
    expected = descendants(graph, "evaluate_method")
    assert set(planned) == expected, f"planned {dict(planned)}; expected {sorted(expected)}"
    assert {"tile_slide", "normalize_store", "pretrain_run", "embed_run", "finetune_run", "synth"}.isdisjoint(planned)
    # run it for real: upstream artifacts are untouched, evaluation outputs are rewritten
    results = work / "results"
    upstream_dirs = ("synth", "tiles", "qc", "normalize", "variants", "models", "embeddings", "predictions")
    upstream = {p: p.stat().st_mtime_ns for p in results.rglob("*")
                if p.is_file() and p.relative_to(results).parts[0] in upstream_dirs}
    assert upstream
    t0 = time.time()
    run_snakemake(work)
    touched = [str(p) for p, m in upstream.items() if not p.exists() or p.stat().st_mtime_ns != m]
    assert not touched, f"upstream files rewritten: {touched[:10]}"
    rewritten = [p for p in (results / "metrics").rglob("*.csv") if p.stat().st_mtime >= t0]
    assert rewritten, "no metrics CSV rewritten"
    assert planned_rules(work) == {}


def test_adding_a_test_slide_reruns_only_its_jobs_and_the_aggregates(work, graph):
    sheet = work / "config" / "slides.tsv"
    rows = sheet.read_text().splitlines()
    new = next(r for r in rows if r.startswith("b_test\t")).replace("b_test", "b_test2").replace("b_p4", "b_p5")
    sheet.write_text("\n".join(rows + [new]) + "\n")
    planned = planned_rules(work)
    methods = _count(work, "evaluate_method")
    # the new slide's own jobs: made, tiled, normalized, and embedded + scored by every run of each method
    assert {r: planned[r] for r in ("synth", "tile_slide", "normalize_store", "restain_store", "predict_store")} == \
        {"synth": 1, "tile_slide": 1, "normalize_store": 1, "restain_store": 1, "predict_store": methods}, planned
    # aggregates over the test stores; nothing that learns (its data did not change) and no other store
    aggregates = {"normalize_montage", "evaluate_method", "summarize", "slide_view_method", "report"}
    assert set(planned) - {"synth", "tile_slide", "normalize_store", "restain_store", "predict_store"} <= aggregates, \
        planned
    assert {"pretrain_run", "embed_run", "finetune_run", "select_targets"}.isdisjoint(planned), planned
    assert planned["evaluate_method"] == methods


def test_forcerun_normalize_reruns_normalize_and_downstream(work, graph):
    planned = planned_rules(work, "--forcerun", "normalize_store")
    expected = descendants(graph, "normalize_store")
    assert set(planned) == expected, f"planned {dict(planned)}; expected {sorted(expected)}"
    assert planned["normalize_store"] == _count(work, "normalize_store")
    assert {"synth", "tile_slide"}.isdisjoint(planned)


def _wait_for(pred, proc: subprocess.Popen, timeout: float, poll: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        if proc.poll() is not None:
            return pred()
        time.sleep(poll)
    return False


def test_job_killed_mid_write_leaves_no_complete_output_and_rerun_finishes(work):
    # many overlapping tiles for one slide: the store's write takes long enough to be caught mid-way
    set_config(work, {"tiling": {"stride": 8, "max_tiles": None}})
    slide = "a_train1"
    tiles = work / "results" / "tiles"
    store = tiles / f"{slide}.zarr"
    target = f"results/tiles/{slide}.json"
    n_before = len(PatchStore.open(store))
    cmd, env = snakemake_cmd(work, target)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    writing = lambda: any(p.name.startswith(f".{slide}.zarr.tmp") for p in tiles.iterdir())  # noqa: E731
    caught = _wait_for(writing, proc, timeout=600, poll=0.002)
    killed = kill_tree(proc)
    out = proc.stdout.read() if proc.stdout else ""
    assert caught, f"the tile job ended before it was seen writing (rc {proc.returncode}):\n{out[-3000:]}"
    assert len(killed) >= 2, f"expected Snakemake and its job, killed {killed}"
    run_snakemake(work, "--unlock")  # a killed Snakemake leaves its lock behind, as for any user
    # the store is not complete: the previous one (the base run's) is untouched — Snakemake deletes
    # only the manifest before a job — and the new one never replaced it (atomic rename) ...
    assert len(PatchStore.open(store)) == n_before, "the previous store was lost"
    assert not (tiles / f"{slide}.json").exists()
    # (the killed writer's temp store, if the kill left one: removal by the next writer is unit-tested in
    # test_store.py; here it must be gone after the re-run)
    leftovers = [p for p in tiles.iterdir() if p.name.startswith(f".{slide}.zarr.tmp")]
    # ... and Snakemake plans the job again (missing manifest)
    assert planned_rules(work, target).get("tile_slide") == 1
    run_snakemake(work, target)
    assert not any(p.exists() for p in leftovers), "the re-run did not remove the killed writer's temp store"
    import zarr

    import stainshift.store  # noqa: F401  (registers the stores' codecs)

    group = zarr.open_group(str(store), mode="r")
    n = group["images"].shape[0]
    assert n > 48 and group["coords"].shape == (n, 2), (n, group["coords"].shape)
    assert planned_rules(work, target) == {}
    # nothing else is left: stores, their manifests, hidden temp files of other writers only
    assert all(p.name.startswith(".") or p.suffix in (".zarr", ".json") for p in tiles.iterdir()), sorted(tiles.iterdir())


def test_failed_retiling_keeps_the_previous_store_and_is_planned_again(work):
    # the slide becomes unreadable; its tile job re-runs (newer input) and fails: the store made by the
    # previous run must survive (Snakemake only deletes the manifest) and must not count as done
    slide = "a_test"
    store = work / "results" / "tiles" / f"{slide}.zarr"
    before = PatchStore.open(store)
    n, first = len(before), before.read([0])
    path = work / "results" / "synth" / f"{slide}.tiff"
    path.write_bytes(b"not a slide")
    target = f"results/tiles/{slide}.json"
    proc = run_snakemake(work, target, check=False)
    assert proc.returncode != 0
    after = PatchStore.open(store)
    assert len(after) == n and (after.read([0]) == first).all(), "the previous store was lost"
    assert planned_rules(work, target).get("tile_slide") == 1, "a store without its manifest counted as done"


def test_killed_pretraining_resumes_from_its_checkpoint(work):
    method, run = "baseline", "baseline/center_a/seed0"
    epochs = 4
    set_config(work, {"pretrain": {method: {"epochs": epochs}}})
    model_dir = work / "results" / "models" / run
    last = model_dir / "checkpoints" / "last.pt"
    before = last.stat().st_mtime_ns if last.exists() else None
    target = f"results/models/{run}/encoder.pt"
    assert planned_rules(work, target).get("pretrain_run") == 1, "changed epochs must re-run pretrain"
    cmd, env = snakemake_cmd(work, target)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    new_checkpoint = lambda: last.exists() and last.stat().st_mtime_ns != before  # noqa: E731
    caught = _wait_for(new_checkpoint, proc, timeout=900, poll=0.05)
    killed = kill_tree(proc)
    out = proc.stdout.read() if proc.stdout else ""
    assert caught and proc.returncode != 0, f"no checkpoint seen before the job ended:\n{out[-3000:]}"
    assert killed, "nothing killed"
    run_snakemake(work, "--unlock")
    assert not (model_dir / "encoder.pt").exists(), "encoder.pt exists after the kill"
    # re-run through Snakemake: it resumes from the checkpoint instead of starting over
    run_snakemake(work, target)
    log = (work / "results" / "logs" / "pretrain" / f"{run}.log").read_text()
    m = re.search(r"resumed from \S+: epoch (\d+) of (\d+) done", log)
    assert m, f"no resume line in the pretrain log:\n{log[-3000:]}"
    assert 1 <= int(m.group(1)) < epochs and int(m.group(2)) == epochs, m.group(0)
    import pandas as pd

    metrics = pd.read_csv(model_dir / "metrics.csv")
    assert len(metrics) == epochs, metrics
    assert not last.exists(), "a finished run keeps no resume checkpoint"
    assert planned_rules(work, target) == {}
