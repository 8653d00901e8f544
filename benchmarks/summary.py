"""One table of every benchmark goal: what was measured (in the same run as its peer), the goal, met or not.

Reads the JSON files the benchmarks wrote (``make bench`` → ``bench_out/``) and prints, per goal of
issue 16/17, the ratio against the baseline or peer measured in the same run:

    .venv/bin/python benchmarks/summary.py [bench_out]

A missing JSON (that benchmark was not run) shows as "not run"; the exit status is 0 either way
(a benchmark reports, it does not gate).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from bench_scale import slope


#: torch-CPU ≥ numpy: CPU tensors run the numpy path's kernels (zero-copy), so the two rates differ
#: only by run-to-run noise (±10 % between rounds of 37 tiles on a shared machine); 0.9 reads "not slower".
TORCH_CPU_GOAL = 0.9


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def stain_rows(report: dict | None) -> list[tuple[str, float | None, str, bool | None]]:
    """Normalizer goals from ``bench_stain.json``: ratios of per-core patches/s in one run."""
    names = ["Reinhard per tile / StainTools", "Macenko per tile / torchstain numpy",
             "Vahadane per tile / StainTools (SPAMS, capped)", "torch-CPU / numpy batch, Reinhard",
             "torch-CPU / numpy batch, Macenko", "torch-CPU / numpy batch, Vahadane"]
    goals = [3.0, 8.0, 100.0, TORCH_CPU_GOAL, TORCH_CPU_GOAL, TORCH_CPU_GOAL]
    if report is None:
        return [(n, None, f">= {g:g}x", None) for n, g in zip(names, goals)]
    rate = {r["impl"]: r["patches_per_s"] for r in report["rows"]}
    pairs = [("stainshift reinhard numpy, per tile", "staintools reinhard"),
             ("stainshift macenko numpy, per tile", "torchstain macenko numpy"),
             ("stainshift vahadane numpy, per tile", "staintools vahadane (capped)"),
             ("stainshift reinhard torch-cpu, batch", "stainshift reinhard numpy, batch"),
             ("stainshift macenko torch-cpu, batch", "stainshift macenko numpy, batch"),
             ("stainshift vahadane torch-cpu, batch", "stainshift vahadane numpy, batch")]
    rows = []
    for name, goal, (ours, peer) in zip(names, goals, pairs):
        value = rate[ours] / rate[peer] if ours in rate and rate.get(peer) else None
        rows.append((name, value, f">= {goal:g}x", None if value is None else value >= goal))
    return rows


def tiling_rows(report: dict | None) -> list[tuple[str, float | None, str, bool | None]]:
    """Tiling goals from ``bench_tiling.json``: whole-call tiles/s ratios of one run."""
    specs = [("tiling stage 1 worker / bare read_region loop", "stage_w1 / bare_w1", 0.75),
             ("tiling stage 2 workers / 1 worker", "stage_w2 / stage_w1", 1.7)]
    if report is None:
        return [(n, None, f">= {g:g}x", None) for n, _, g in specs]
    rows = [(n, report["ratios"][k], f">= {g:g}x", report["ratios"][k] >= g) for n, k, g in specs]
    rss = report["stage_w1"]["self_mb"]
    rows.append(("tiling stage 1 worker peak RSS (MB)", rss, "<= 150", rss <= 150))
    return rows


def scale_rows(report: dict | None) -> list[tuple[str, float | None, str, bool | None]]:
    """Workflow-scale goals from ``bench_scale.json``."""
    if report is None or len(report.get("sizes", [])) < 2:
        return [("workflow growth exponent (wall ~ slides^b)", None, "<= 1.1", None)]
    sizes = report["sizes"]
    b = slope([s["slides"] for s in sizes], [s["wall_s"] for s in sizes])
    rows = [("workflow growth exponent (wall ~ slides^b)", b, "<= 1.1", b <= 1.1)]
    if report.get("start"):
        st = report["start"]
        rows.append((f"start-up: dry run / import snakemake ({st['dry_run_s']} s)", st["ratio"], "(reported)", None))
        rows.append(("start-up: heavy modules the parse imports", len(st["heavy_imports"]), "none",
                     not st["heavy_imports"]))
    if report.get("dry"):
        d = report["dry"]
        rows.append((f"dry run at {d['slides']} slides: DAG seconds ({d['jobs']} jobs)", d["wall_s"], "(reported)", None))
    return rows


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "bench_out")
    rows = (stain_rows(_load(out / "bench_stain.json")) + tiling_rows(_load(out / "bench_tiling.json"))
            + scale_rows(_load(out / "bench_scale.json")))
    print(f"\n== summary ({out}): every goal, measured against its peer in the same run ==")
    print(f"{'goal':<52}{'measured':>10}  {'target':<11}status")
    for name, value, target, met in rows:
        shown = "not run" if value is None else f"{value:.2f}"
        status = "" if met is None else ("met" if met else "MISSED")
        print(f"{name:<52}{shown:>10}  {target:<11}{status}")


if __name__ == "__main__":
    main()
