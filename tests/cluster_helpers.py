"""Helpers of the cluster / re-run tests (tests/test_slurm.py, tests/test_reruns.py).

- CI_MINI: the config overlay (on top of config/examples/tiny.yaml) both suites run: the whole demo
  DAG — every stage — with one pretraining method on one source and two stain methods, so a full local run and a
  full SLURM run stay within the CI budget.
- base_run(): one completed local run of CI_MINI per pytest session, shared by both suites (they copy
  it, mtimes and .snakemake metadata included, before changing anything).
- planned_rules() / rule_graph() / descendants(): what Snakemake *would* run, from
  `--dry-run --quiet rules` and `--rulegraph`.
- compare_results(): two results/ trees hold the same data (arrays, tables, models), not the same mtimes.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from workflow_helpers import REPO, SNAKEFILE, make_workdir, run_snakemake

CI_MINI: dict[str, Any] = {
    # one method, one source (center_a, scored on b and c): every stage, the fewest jobs
    "pretrain": {"methods": ["baseline"], "sources": ["center_a"]},
    "normalize": {"methods": ["reinhard", "macenko"], "targets": {"k": 2}},
    # small requests so the one-node CI cluster (2 CPUs, ~24 GB) runs two jobs side by side
    "resources": {
        "default": {"mem_mb": 1000, "runtime": 30},
        "tile": {"mem_mb": 1000},
        "normalize": {"mem_mb": 1000},
        "pretrain": {"mem_mb": 3000, "cpus": 2, "gpus": 1},
        "finetune": {"mem_mb": 2000},
        "embed": {"mem_mb": 2000},
        "evaluate": {"mem_mb": 2000},
    },
}

_BASE: dict[str, Any] = {}


def base_run(tmp_path_factory) -> tuple[Path, float]:
    """(workdir, seconds) of the session's completed local run of the CI_MINI demo."""
    if "dir" not in _BASE and os.environ.get("STAINSHIFT_CI_BASE"):
        # developers only: reuse a completed CI_MINI working directory (copied, never modified)
        work = copy_workdir(Path(os.environ["STAINSHIFT_CI_BASE"]), tmp_path_factory.mktemp("ci-mini-local") / "w")
        _BASE["dir"], _BASE["seconds"] = work, 0.0
    if "dir" not in _BASE:
        work = make_workdir(tmp_path_factory.mktemp("ci-mini-local"), CI_MINI)
        t0 = time.monotonic()
        run_snakemake(work)
        _BASE["dir"], _BASE["seconds"] = work, time.monotonic() - t0
    return _BASE["dir"], _BASE["seconds"]


def copy_workdir(src: Path, dst: Path) -> Path:
    """Copy a completed working directory (mtimes kept: shutil.copy2/copystat) without its locks."""
    shutil.copytree(src, dst, symlinks=True, ignore=shutil.ignore_patterns("locks", "slurm_logs"))
    return dst


def snakemake_cmd(workdir: Path, *args: str, cores: int = 2) -> tuple[list[str], dict]:
    """(argv, env) of the same Snakemake invocation as workflow_helpers.run_snakemake."""
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(SNAKEFILE), "--directory", str(workdir),
           "--cores", str(cores), "--profile", str(REPO / "workflow" / "profiles" / "default"), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return cmd, env


def kill_tree(proc: subprocess.Popen) -> list[int]:
    """SIGKILL a process and all its descendants at once (as a crash or the OOM killer would)."""
    import psutil

    try:
        parent = psutil.Process(proc.pid)
        victims = [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
    for p in victims:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    proc.wait(timeout=30)
    return [p.pid for p in victims]


def set_config(workdir: Path, overrides: dict) -> None:
    """Change keys of workdir/config/config.yaml in place (nested dicts merge)."""
    import yaml

    from workflow_helpers import deep_update

    path = workdir / "config" / "config.yaml"
    cfg = deep_update(yaml.safe_load(path.read_text()), overrides)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))


def planned_rules(workdir: Path, *args: str) -> Counter:
    """{rule: number of jobs} Snakemake would run now (`--dry-run --quiet rules`), without `all`."""
    # targets / options first: `--quiet` takes a list of values and would swallow a target after it
    proc = run_snakemake(workdir, *args, "--dry-run", "--quiet", "rules")
    out = Counter()
    in_table = False
    for line in proc.stdout.splitlines():
        s = line.strip()
        if s.startswith("job") and "count" in s:
            in_table = True
            continue
        m = re.fullmatch(r"(\w+)\s+(\d+)", s)
        if in_table and m:
            if m.group(1) == "total":
                break  # Snakemake prints the table twice in a dry run; the first one is enough
            if m.group(1) != "all":
                out[m.group(1)] += int(m.group(2))
    return out


def rule_graph(workdir: Path) -> dict[str, set[str]]:
    """{rule: rules that consume its outputs} from `snakemake --rulegraph` (DOT)."""
    proc = run_snakemake(workdir, "--rulegraph", "--forceall")
    names, edges = {}, []
    for line in proc.stdout.splitlines():
        m = re.match(r'\s*(\d+)\[label = "(\w+)"', line)
        if m:
            names[m.group(1)] = m.group(2)
        m = re.match(r"\s*(\d+) -> (\d+)", line)
        if m:
            edges.append((m.group(1), m.group(2)))
    assert names, f"no rule graph in output:\n{proc.stdout[-3000:]}"
    graph: dict[str, set[str]] = {n: set() for n in names.values()}
    for a, b in edges:
        graph[names[a]].add(names[b])
    return graph


def descendants(graph: dict[str, set[str]], rule: str) -> set[str]:
    """`rule` and every rule downstream of it, without `all`."""
    seen, todo = {rule}, [rule]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen - {"all"}


# ----------------------------------------------------------------------------------------------
# Comparing two results/ trees
# ----------------------------------------------------------------------------------------------
SKIP_DIRS = {"logs", "benchmarks"}       # top-level per-run logs/timings (and any checkpoints/ dir)
VOLATILE = re.compile(r"(time|date|mtime|host|seconds|elapsed|duration|pid|created|wall|per_s\b|throughput)", re.I)
# derived figures: their data is compared through the CSVs they plot; pixels only where they are data
FIGURE_DIRS = ("plots/", "report/")
RTOL, ATOL = 1e-5, 1e-7


class Mismatch(AssertionError):
    pass


def _norm(value: Any, roots: tuple[str, ...]) -> Any:
    """JSON-ish value with working-directory paths replaced and volatile keys dropped."""
    if isinstance(value, dict):
        return {k: _norm(v, roots) for k, v in value.items() if not VOLATILE.search(str(k))}
    if isinstance(value, (list, tuple)):
        return [_norm(v, roots) for v in value]
    if isinstance(value, np.ndarray):
        return _norm(value.tolist(), roots)
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    if isinstance(value, str):
        for root in roots:
            value = value.replace(root, "<WORKDIR>")
        return value
    if isinstance(value, np.generic):
        return value.item()
    return value


def _close(a: Any, b: Any, where: str) -> None:
    """Recursive equality with float tolerance (RTOL/ATOL), NaN == NaN."""
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            raise Mismatch(f"{where}: keys differ: {sorted(set(a) ^ set(b))}")
        for k in a:
            _close(a[k], b[k], f"{where}.{k}")
        return
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            raise Mismatch(f"{where}: lengths {len(a)} != {len(b)}")
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{where}[{i}]")
        return
    if hasattr(a, "detach"):  # torch tensors
        a, b = a.detach().cpu().numpy(), b.detach().cpu().numpy()
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        _arrays(np.asarray(a), np.asarray(b), where)
        return
    if isinstance(a, float) or isinstance(b, float):
        if not (math.isclose(float(a), float(b), rel_tol=RTOL, abs_tol=ATOL)
                or (math.isnan(float(a)) and math.isnan(float(b)))):
            raise Mismatch(f"{where}: {a!r} != {b!r}")
        return
    if a != b:
        raise Mismatch(f"{where}: {a!r} != {b!r}")


def _arrays(a: np.ndarray, b: np.ndarray, where: str) -> None:
    if a.shape != b.shape or a.dtype != b.dtype:
        raise Mismatch(f"{where}: shape/dtype {a.shape} {a.dtype} != {b.shape} {b.dtype}")
    if a.dtype.kind in "fc":
        if not np.allclose(a, b, rtol=RTOL, atol=ATOL, equal_nan=True):
            raise Mismatch(f"{where}: max |diff| {np.nanmax(np.abs(a - b))}")
    elif not np.array_equal(a, b):
        raise Mismatch(f"{where}: {int(np.sum(a != b))} elements differ")


def _zarr(a: Path, b: Path, roots) -> None:
    import zarr

    import stainshift.store  # noqa: F401  registers the stores' codecs (also an entry point once installed)

    ga, gb = zarr.open_group(str(a), mode="r"), zarr.open_group(str(b), mode="r")
    _close(_norm(dict(ga.attrs), roots), _norm(dict(gb.attrs), roots), f"{a.name}.attrs")
    na, nb = dict(ga.arrays()), dict(gb.arrays())
    if set(na) != set(nb):
        raise Mismatch(f"{a.name}: arrays {sorted(na)} != {sorted(nb)}")
    for name in na:
        _arrays(na[name][...], nb[name][...], f"{a.name}/{name}")
        _close(_norm(dict(na[name].attrs), roots), _norm(dict(nb[name].attrs), roots), f"{a.name}/{name}.attrs")
    sa, sb = dict(ga.groups()), dict(gb.groups())
    if set(sa) != set(sb):
        raise Mismatch(f"{a.name}: groups {sorted(sa)} != {sorted(sb)}")
    for name in sa:
        _zarr(a / name, b / name, roots)


def _csv(a: Path, b: Path, roots) -> None:
    import pandas as pd

    sep = "\t" if a.suffix == ".tsv" else ","
    da, db = pd.read_csv(a, sep=sep), pd.read_csv(b, sep=sep)
    if list(da.columns) != list(db.columns) or da.shape != db.shape:
        raise Mismatch(f"{a.name}: columns/shape {list(da.columns)} {da.shape} != {list(db.columns)} {db.shape}")
    if "metric" in da.columns and "value" in da.columns:  # long format: timing rows (seconds, images_per_s)
        volatile = (da["metric"].astype(str).map(lambda m: bool(VOLATILE.search(m)))
                    | db["metric"].astype(str).map(lambda m: bool(VOLATILE.search(m))))
        da, db = da[~volatile].reset_index(drop=True), db[~volatile].reset_index(drop=True)
    keep = [c for c in da.columns if not VOLATILE.search(str(c))]
    for col in keep:
        x, y = da[col], db[col]
        if pd.api.types.is_numeric_dtype(x) and pd.api.types.is_numeric_dtype(y):
            _arrays(x.to_numpy(dtype=float), y.to_numpy(dtype=float), f"{a.name}:{col}")
        else:
            _close(_norm(x.astype(str).tolist(), roots), _norm(y.astype(str).tolist(), roots), f"{a.name}:{col}")


def _h5(a: Path, b: Path, roots) -> None:
    import h5py

    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        items_a, items_b = {}, {}
        fa.visititems(lambda n, o: items_a.__setitem__(n, o))
        fb.visititems(lambda n, o: items_b.__setitem__(n, o))
        if set(items_a) != set(items_b):
            raise Mismatch(f"{a.name}: datasets {sorted(items_a)} != {sorted(items_b)}")
        _close(_norm(dict(fa.attrs), roots), _norm(dict(fb.attrs), roots), f"{a.name}.attrs")
        for name, obj in items_a.items():
            if isinstance(obj, h5py.Dataset):
                _arrays(obj[()] if obj.shape == () else obj[...], items_b[name][()] if obj.shape == () else items_b[name][...],
                        f"{a.name}/{name}")
            _close(_norm(dict(obj.attrs), roots), _norm(dict(items_b[name].attrs), roots), f"{a.name}/{name}.attrs")


def _torch(a: Path, b: Path, roots) -> None:
    import torch

    _close(_norm_torch(torch.load(a, map_location="cpu", weights_only=False), roots),
           _norm_torch(torch.load(b, map_location="cpu", weights_only=False), roots), a.name)


def _norm_torch(obj: Any, roots) -> Any:
    if isinstance(obj, dict):
        return {k: _norm_torch(v, roots) for k, v in obj.items() if not VOLATILE.search(str(k))}
    if isinstance(obj, (list, tuple)):
        return [_norm_torch(v, roots) for v in obj]
    if hasattr(obj, "detach"):
        return obj.detach().cpu().numpy()
    return _norm(obj, roots)


def _image(a: Path, b: Path, roots) -> None:
    if a.suffix in (".tif", ".tiff"):
        import tifffile

        _arrays(tifffile.imread(a), tifffile.imread(b), a.name)
    else:
        from PIL import Image

        _arrays(np.asarray(Image.open(a)), np.asarray(Image.open(b)), a.name)


def _json(a: Path, b: Path, roots) -> None:
    _close(_norm(json.loads(a.read_text()), roots), _norm(json.loads(b.read_text()), roots), a.name)


def _text(a: Path, b: Path, roots) -> None:
    _close(_norm(a.read_text(), roots), _norm(b.read_text(), roots), a.name)


COMPARERS = {".csv": _csv, ".h5": _h5, ".pt": _torch, ".png": _image, ".tif": _image, ".tiff": _image,
             ".json": _json, ".xml": _text, ".tsv": _csv}


def _entries(results: Path) -> tuple[set[str], set[str]]:
    """(zarr store dirs, other files) under results/, relative; logs/benchmarks/checkpoints skipped."""
    stores, files = set(), set()

    def walk(d: Path):
        for p in sorted(d.iterdir()):
            rel = p.relative_to(results).as_posix()
            if p.is_dir():
                if (p.parent == results and p.name in SKIP_DIRS) or p.name == "checkpoints":
                    continue
                if p.suffix == ".zarr":
                    stores.add(rel)
                else:
                    walk(p)
            else:
                files.add(rel)

    walk(results)
    return stores, files


def compare_results(a: Path, b: Path) -> Counter:
    """Assert results/ trees `a` and `b` hold the same data; return {kind: number compared}.

    zarr stores: every array exactly (floats within 1e-5 relative), attrs without volatile keys
    (times, mtimes, hosts); CSV/TSV: same columns and rows, numbers within tolerance, timing
    columns skipped; HDF5, torch checkpoints, JSON, PNG/TIFF pixels, XML text likewise. Other files
    (markdown/HTML reports with timings) are only required to exist in both.
    """
    roots = (str(a.parent.resolve()), str(b.parent.resolve()))
    stores_a, files_a = _entries(a)
    stores_b, files_b = _entries(b)
    problems = []
    if stores_a != stores_b:
        problems.append(f"zarr stores only in one run: {sorted(stores_a ^ stores_b)}")
    if files_a != files_b:
        problems.append(f"files only in one run: {sorted(files_a ^ files_b)}")
    counts = Counter()
    for rel in sorted(stores_a & stores_b):
        try:
            _zarr(a / rel, b / rel, roots)
            counts["zarr"] += 1
        except Mismatch as exc:
            problems.append(f"{rel}: {exc}")
    for rel in sorted(files_a & files_b):
        fn = COMPARERS.get(Path(rel).suffix.lower())
        if fn is _image and rel.startswith(FIGURE_DIRS):
            fn = None
        if fn is None:
            counts["exists-only"] += 1
            continue
        try:
            fn(a / rel, b / rel, roots)
            counts[Path(rel).suffix.lower()] += 1
        except Mismatch as exc:
            problems.append(f"{rel}: {exc}")
    if problems:
        raise AssertionError(f"results differ between {a} and {b}:\n  " + "\n  ".join(problems[:40]))
    return counts
