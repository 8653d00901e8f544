"""How the workflow's cost grows with the study: the demo DAG at several study sizes, a dry run at
CAMELYON17 size, and what a single-stage re-run re-plans.

    .venv/bin/python benchmarks/bench_scale.py                      # 12, 24, 48 slides + 1000-slide dry run
    .venv/bin/python benchmarks/bench_scale.py --sizes 12 24 --dry-slides 1000 --methods baseline simclr

Every run is ``snakemake --cores N`` in a fresh folder on the demo's synthetic centers with the tiny
settings of ``config/examples/tiny.yaml`` (what CI runs end to end) and ``--methods`` (default
baseline + simclr: the method count multiplies the training jobs, not the per-slide ones). A study
of ``k`` slides per center has k − 2 train, 1 val and 1 test slide per center (the demo's split
rule, ``stainshift.synth.split_names``). Measured per size: wall seconds, jobs run, peak RSS of the
largest process of the run (GNU ``time -f %M``); the growth exponent is the least-squares slope of
log(wall) on log(slides). The dry run (``snakemake -n``) at ``--dry-slides`` slides over the four
synthetic centers times the DAG build and its memory; nothing runs.

Start-up (what every cluster job pays before its rule runs: Snakemake parses the Snakefile in each
job): ``snakemake -n`` on the smallest study before it runs, against ``python -c "import
snakemake.cli"`` (Snakemake's own import, the floor) timed in the same run, ``--start-repeats``
times each, medians; and the heavy modules (torch, numba, kornia, monai, zarr) the parse imported.

Re-run table (on the smallest study, after its full run): ``snakemake -n`` after (a) adding one
test slide to the sheet and (b) changing one evaluation parameter — the jobs Snakemake would run,
per rule, so one sees which stages a change reaches.

Results: printed tables and ``{out}/bench_scale.json``. Run on a quiet machine.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from stainshift.synth import study_rows  # noqa: E402
from stainshift.train.config import deep_merge  # noqa: E402

CENTERS3 = ["center_a", "center_b", "center_c"]
CENTERS4 = CENTERS3 + ["center_d"]


def write_study(work: Path, centers: list[str], per_center: int, methods: list[str]) -> None:
    """A working folder with the repo's config, the tiny overlay, ``methods`` and a synthetic sheet."""
    shutil.copytree(REPO / "config", work / "config", dirs_exist_ok=True)
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    cfg = deep_merge(cfg, yaml.safe_load((REPO / "config" / "examples" / "tiny.yaml").read_text()))
    cfg = deep_merge(cfg, {"pretrain": {"methods": methods}, "finetune": {"fusion": []}, "samples": "config/study.tsv"})
    (work / "config" / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    write_sheet(work / "config" / "study.tsv", study_rows(centers, per_center))


def write_sheet(path: Path, rows: list[dict[str, str]]) -> None:
    """The sample sheet of synthetic slides (paths under ``{results}/synth/``)."""
    lines = ["slide_id\tpath\tcenter\tpatient\tsplit\tlabel\tannotation\tmpp"]
    for r in rows:
        sid = r["slide_id"]
        lines.append(f"{sid}\t{{results}}/synth/{sid}.tiff\t{r['center']}\t{r['patient']}\t{r['split']}\t\t"
                     f"{{results}}/synth/{sid}.xml\t")
    path.write_text("\n".join(lines) + "\n")


def snakemake(work: Path, *args: str, cores: int) -> tuple[subprocess.CompletedProcess, float, float]:
    """Run snakemake in ``work``; (process, wall seconds, peak RSS MB of the run's largest process)."""
    profile = REPO / "workflow" / "profiles" / "default"
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "workflow" / "Snakefile"),
           "--directory", str(work), "--cores", str(cores), "--profile", str(profile), *args]
    env = {**os.environ, "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")}
    rss_file = work / ".peak_rss_kb"
    if shutil.which("time") or Path("/usr/bin/time").is_file():  # GNU time: peak RSS of this run's process tree
        cmd = ["/usr/bin/time", "-f", "%M", "-o", str(rss_file), *cmd]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    try:
        rss = int(rss_file.read_text().split()[-1]) / 1024
    except (OSError, ValueError, IndexError):  # no GNU time: the largest child of this benchmark so far
        rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    if proc.returncode != 0:
        raise SystemExit(f"snakemake failed in {work}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc, wall, rss


def planned_jobs(text: str) -> Counter:
    """Jobs per rule from snakemake's 'Job stats' table (dry run or real run)."""
    counts: Counter = Counter()
    block = text.split("Job stats:", 1)[-1].split("\n\n", 1)[0] if "Job stats:" in text else ""
    for line in block.splitlines():
        m = re.match(r"^(\w+)\s+(\d+)\s*$", line.strip())
        if m and m.group(1) != "total":
            counts[m.group(1)] = int(m.group(2))
    return counts


HEAVY = ("torch", "numba", "kornia", "monai", "zarr")


def start_up(work: Path, repeats: int, cores: int) -> dict:
    """Median seconds and peak RSS of a dry run in ``work`` and of importing snakemake.cli; the heavy
    modules the parse imported (``PYTHONPROFILEIMPORTTIME``)."""
    dry, floor = [], []
    rss_dry = rss_floor = 0.0
    for _ in range(repeats):
        _, wall, rss = snakemake(work, "-n", cores=cores)
        dry.append(wall)
        rss_dry = max(rss_dry, rss)
        rss_file = work / ".peak_rss_floor_kb"
        t0 = time.perf_counter()
        subprocess.run(["/usr/bin/time", "-f", "%M", "-o", str(rss_file), sys.executable, "-c", "import snakemake.cli"],
                       check=True)
        floor.append(time.perf_counter() - t0)
        rss_floor = max(rss_floor, int(rss_file.read_text().split()[-1]) / 1024)
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1",
           "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")}
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "workflow" / "Snakefile"),
                           "--directory", str(work), "--cores", str(cores), "-n"], capture_output=True, text=True,
                          env=env)
    imported = {ln.rsplit("|", 1)[1].strip() for ln in proc.stderr.splitlines() if ln.startswith("import time:")}
    heavy = sorted({m.split(".")[0] for m in imported} & set(HEAVY))
    med = lambda v: sorted(v)[len(v) // 2]  # noqa: E731
    return {"dry_run_s": round(med(dry), 2), "dry_run_rss_mb": round(rss_dry), "snakemake_import_s": round(med(floor), 2),
            "snakemake_import_rss_mb": round(rss_floor), "ratio": round(med(dry) / med(floor), 2),
            "heavy_imports": heavy, "repeats": repeats}


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of log(y) on log(x)."""
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[12, 24, 48], help="slides (3 centers each)")
    parser.add_argument("--dry-slides", type=int, default=1000, help="slides of the dry run (0 = none)")
    parser.add_argument("--methods", nargs="+", default=["baseline", "simclr"])
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--start-repeats", type=int, default=3, help="dry runs timed for the start-up row (0 = none)")
    parser.add_argument("--out", type=Path, default=REPO / "bench_out")
    parser.add_argument("--keep", action="store_true", help="keep the working folders")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"# bench_scale  {platform.node()}  load {os.getloadavg()[0]:.2f}  cores {args.cores}  "
          f"methods {args.methods}", flush=True)
    report: dict = {"sizes": [], "rerun": {}, "dry": None, "start": None, "methods": args.methods, "cores": args.cores}
    root = Path(tempfile.mkdtemp(prefix="bench_scale_"))
    first_work = None
    for n in sorted(args.sizes):
        if n % 3 or n // 3 < 3:
            raise SystemExit(f"--sizes: {n} is not 3 centers x >= 3 slides")
        work = root / f"n{n}"
        write_study(work, CENTERS3, n // 3, args.methods)
        if first_work is None and args.start_repeats:
            report["start"] = {"slides": n, **start_up(work, args.start_repeats, args.cores)}
        proc, wall, rss = snakemake(work, cores=args.cores)
        jobs = sum(planned_jobs(proc.stdout + proc.stderr).values())
        report["sizes"].append({"slides": n, "wall_s": round(wall, 1), "jobs": jobs, "peak_rss_mb": round(rss)})
        print(f"  {n:5d} slides: {wall:7.1f} s  {jobs:4d} jobs  peak RSS {rss:6.0f} MB", flush=True)
        first_work = first_work or work
    if first_work is not None:
        sheet = first_work / "config" / "study.tsv"
        base = sheet.read_text()
        n0 = sum(1 for _ in base.strip().splitlines()) - 1
        k = n0 // 3
        extra = study_rows(["center_a"], k + 1)[-1] | {"slide_id": "a_test_added", "patient": "a_p_added"}
        write_sheet(sheet, [*_read_rows(sheet), extra])
        proc, wall, _ = snakemake(first_work, "-n", cores=args.cores)
        report["rerun"]["one_test_slide_added"] = dict(planned_jobs(proc.stdout + proc.stderr))
        sheet.write_text(base)
        cfg_path = first_work / "config" / "config.yaml"
        cfg_text = cfg_path.read_text()
        cfg = yaml.safe_load(cfg_text)
        cfg["evaluate"]["bootstrap"] = int(cfg["evaluate"]["bootstrap"]) + 1
        cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        proc, wall, _ = snakemake(first_work, "-n", cores=args.cores)
        report["rerun"]["evaluate.bootstrap_changed"] = dict(planned_jobs(proc.stdout + proc.stderr))
        cfg_path.write_text(cfg_text)
    if args.dry_slides:
        per = -(-args.dry_slides // 4)
        work = root / f"dry{args.dry_slides}"
        write_study(work, CENTERS4, per, args.methods)
        proc, wall, rss = snakemake(work, "-n", cores=args.cores)
        jobs = planned_jobs(proc.stdout + proc.stderr)
        report["dry"] = {"slides": 4 * per, "wall_s": round(wall, 1), "jobs": sum(jobs.values()),
                         "peak_rss_mb": round(rss), "per_rule": dict(jobs)}
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    _print(report)
    (args.out / "bench_scale.json").write_text(json.dumps(report, indent=2))


def _read_rows(sheet: Path) -> list[dict[str, str]]:
    lines = sheet.read_text().strip().splitlines()
    head = lines[0].split("\t")
    return [dict(zip(head, ln.split("\t"))) for ln in lines[1:]]


def _print(report: dict) -> None:
    sizes = report["sizes"]
    print("\n| slides | wall s | jobs | peak RSS MB |\n|---|---|---|---|")
    for s in sizes:
        print(f"| {s['slides']} | {s['wall_s']} | {s['jobs']} | {s['peak_rss_mb']} |")
    if len(sizes) >= 2:
        xs = [s["slides"] for s in sizes]
        print(f"\ngrowth exponent (wall ~ slides^b): b = {slope(xs, [s['wall_s'] for s in sizes]):.2f}; "
              f"jobs ~ slides^{slope(xs, [s['jobs'] for s in sizes]):.2f}")
    if report["rerun"]:
        print("\n| change (smallest study) | jobs planned, per rule |\n|---|---|")
        for change, jobs in report["rerun"].items():
            per_rule = ", ".join(f"{r} {c}" for r, c in sorted(jobs.items()))
            print(f"| {change} | {sum(jobs.values())}: {per_rule} |")
    if report["start"]:
        st = report["start"]
        print(f"\nstart-up ({st['slides']}-slide study, medians of {st['repeats']}): dry run {st['dry_run_s']} s, "
              f"{st['dry_run_rss_mb']} MB; import snakemake.cli {st['snakemake_import_s']} s, "
              f"{st['snakemake_import_rss_mb']} MB; ratio {st['ratio']}; heavy modules imported by the parse: "
              f"{', '.join(st['heavy_imports']) or 'none'}")
    if report["dry"]:
        d = report["dry"]
        print(f"\ndry run at {d['slides']} slides: DAG of {d['jobs']} jobs built in {d['wall_s']} s, "
              f"peak RSS {d['peak_rss_mb']} MB")


if __name__ == "__main__":
    main()
