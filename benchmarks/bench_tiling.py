#!/usr/bin/env python3
"""Tile-stage benchmark: the harness's whole-call figure, the per-stage split, and a bare read loop.

One command (from the repo root):

    .venv/bin/python benchmarks/bench_tiling.py                 # 16384² slide of real CMU-1 pixels
    .venv/bin/python benchmarks/bench_tiling.py --source synth  # 16384² stainshift.synth slide
    .venv/bin/python benchmarks/bench_tiling.py --slide X.svs   # any slide
    .venv/bin/python benchmarks/bench_tiling.py --codecs        # + store codec size / read speed

What it measures, in one run, every step in its own subprocess, ``--repeats`` rounds round-robin over
the steps (slow drift of a shared machine is spread over all of them), medians reported:

1. ``stage_w1`` / ``stage_w2`` / ``stage_w2_process``: :func:`stainshift.tiling.tile_slide` exactly as
   ``../shared/tools/peer_tiling_bench.py`` runs it (its ``stainshift`` configuration: level 0,
   patch = ``--patch`` at the slide's mpp, all tissue tiles, min_tissue_fraction 0.5, JPEG q90 zarr
   store, ``workers`` 1 / 2 with the default thread pool / 2 with ``parallel: process``) -- the same whole-call figure: **kept tiles / wall seconds of the
   tile_slide call** (imports excluded, everything inside the call included);
2. ``bare_w1`` / ``bare_w2``: the harness's bare loop (``openslide.OpenSlide.read_region`` ->
   ``.convert("RGB")`` -> numpy) over exactly the tiles the stage kept, 1 process / a 2-process pool
   -- the decode limit for the same tiles;
3. peak RSS: the step's own ``ru_maxrss`` (the harness's "RSS MB": /usr/bin/time of the process) and
   the process tree's peak sampled from /proc every 0.1 s (its "tree RSS MB"); plus the 1-worker
   stage on a slide of half the side, to show memory does not grow with slide size;
4. the per-stage split of ``tile_slide`` (``TilingResult.stages``: open, mask, read, resize, check,
   encode -- summed over workers with 2 --, write, wait, qc), also per kept tile;
5. with ``--codecs``: bytes/tile and random single-tile reads/s of the store codecs (zarr 3 +
   stainshift.jpeg sharded, the same unsharded, zarr 2 + imagecodecs' numcodecs JPEG, zstd, lz4).

Results: printed tables + ``{out}/bench_tiling.json``. The load average is printed at the start and
end: on a shared machine compare the ratios (measured in the same run), not absolute figures.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BENCH_TOOL = REPO.parent / "shared" / "tools" / "make_bench_slide.py"


def peak_rss_mb() -> dict[str, float]:
    """Peak RSS of this process and of its (waited-for) children, MB, and their CPU seconds
    (user + system: unlike wall time, not inflated by other jobs on a shared machine)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"self_mb": me.ru_maxrss / 1024, "children_mb": kids.ru_maxrss / 1024,
            "cpu_s": me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime}


# ---- steps (each runs in a fresh subprocess: python bench_tiling.py --step NAME ...) ---------------
def harness_config(slide: str, patch: int, workers: int, parallel: str, target_mpp: float | None) -> dict:
    """peer_tiling_bench.py's ``stainshift`` configuration (plus the pool kind)."""
    from stainshift.io import open_slide

    mpp0 = open_slide(slide).mpp
    return {"target_mpp": target_mpp or mpp0, "patch_size": patch, "max_tiles": None, "min_tissue_fraction": 0.5,
            "codec": "jpeg", "jpeg_quality": 90, "workers": workers, "parallel": parallel}


def step_stage(slide: str, out: str, workers: int, parallel: str, patch: int, target_mpp: float | None) -> dict:
    from stainshift.tiling import tile_slide

    cfg = harness_config(slide, patch, workers, parallel, target_mpp)
    t0 = time.perf_counter()
    res = tile_slide(slide, out, cfg, slide_id=Path(slide).stem, progress=False)
    wall = time.perf_counter() - t0
    return {"n_kept": res.n_kept, "n_read": res.n_read, "n_grid": res.n_grid, "n_checked": res.n_checked,
            "seconds": wall, "plan": res.plan, "mask": res.mask, "stages": res.stages, **peak_rss_mb()}


_READER = {}


def _bare_init(slide: str) -> None:
    import openslide

    _READER["r"] = openslide.OpenSlide(slide)


def _bare_chunk(coords: np.ndarray, level: int, size: int) -> int:
    r = _READER["r"]
    for x, y in coords:
        np.asarray(r.read_region((int(x), int(y)), level, (size, size)).convert("RGB"))
    return len(coords)


def step_bare(slide: str, store: str, workers: int) -> dict:
    """The harness's bare loop over the tiles the stage kept (fork pool, chunks of 32, like it)."""
    from stainshift.store import PatchStore

    st = PatchStore.open(store)
    coords = st.coords
    level, size = int(st.attrs["read_plan"]["level"]), int(st.attrs["read_plan"]["read_size"])
    t0 = time.perf_counter()
    if workers == 1:
        _bare_init(slide)
        n = _bare_chunk(coords, level, size)
    else:
        import multiprocessing as mp

        chunks = [coords[i : i + 32] for i in range(0, len(coords), 32)]
        with mp.get_context("fork").Pool(workers, _bare_init, (slide,)) as pool:
            n = sum(pool.starmap(_bare_chunk, [(c, level, size) for c in chunks]))
    wall = time.perf_counter() - t0
    return {"n": n, "seconds": wall, **peak_rss_mb()}


def step_codecs(store: str, out_dir: str, n_tiles: int = 512, n_reads: int = 400) -> dict:
    """Store size per tile and random single-tile reads/s per codec layout."""
    import imagecodecs.numcodecs as icn
    import zarr

    from stainshift.store import PatchStore, write_store

    icn.register_codecs()
    src = PatchStore.open(store)
    n = min(n_tiles, len(src))
    tiles = src.read(slice(0, n))
    s = tiles.shape[1]
    fields = dict(coords=src.coords[:n], tissue_fraction=src.tissue_fraction[:n], label=src.label[:n],
                  label_fraction=src.label_fraction[:n])
    rng = np.random.default_rng(0)
    order = rng.integers(0, n, n_reads)
    results = {}

    def size_of(path: Path, sub: str = "images") -> float:
        return sum(p.stat().st_size for p in (path / sub).rglob("*") if p.is_file()) / n

    def files_of(path: Path, sub: str = "images") -> int:
        return sum(1 for p in (path / sub).rglob("*") if p.is_file())

    layouts = [("v3_jpeg_q90_sharded64", "jpeg", 64), ("v3_jpeg_q90_unsharded", "jpeg", 1),
               ("v3_zstd3_sharded64", "zstd", 64), ("v3_lz4_sharded64", "lz4", 64)]
    for name, codec, shard in layouts:
        path = Path(out_dir) / f"codec_{name}.zarr"
        t0 = time.perf_counter()
        write_store(path, tiles, **fields, attrs={}, codec=codec, shard_tiles=shard)
        wt = time.perf_counter() - t0
        st = PatchStore.open(path)
        st.read(0)
        t0 = time.perf_counter()
        for i in order:
            st.read(int(i))
        rt = time.perf_counter() - t0
        arr = zarr.open_group(path, mode="r")["images"]
        t0 = time.perf_counter()
        for i in order:
            arr[int(i)]
        zt = time.perf_counter() - t0
        results[name] = {"kb_per_tile": size_of(path) / 1024, "files": files_of(path), "writes_per_s": n / wt,
                         "reads_per_s_patchstore": n_reads / rt, "reads_per_s_zarr": n_reads / zt}
    # zarr format 2 + imagecodecs' numcodecs JPEG (one file per tile)
    path = Path(out_dir) / "codec_v2_imagecodecs_jpeg_q90.zarr"
    t0 = time.perf_counter()
    arr = zarr.create_array(path, shape=tiles.shape, chunks=(1, s, s, 3), dtype="uint8", zarr_format=2,
                            compressors=None, filters=[icn.Jpeg(level=90)], overwrite=True)
    arr[...] = tiles
    wt = time.perf_counter() - t0
    arr = zarr.open_array(path, mode="r")
    t0 = time.perf_counter()
    for i in order:
        arr[int(i)]
    zt = time.perf_counter() - t0
    results["v2_imagecodecs_jpeg_q90"] = {"kb_per_tile": size_of(path, ".") / 1024, "files": files_of(path, "."),
                                          "writes_per_s": n / wt, "reads_per_s_zarr": n_reads / zt}
    return {"tile_size": s, "n_tiles": n, "n_reads": n_reads, "layouts": results}


# ---- driver ----------------------------------------------------------------------------------------
def _tree_rss_mb(pid: int) -> float:
    """Summed RSS (MB) of ``pid`` and its descendants, from /proc."""
    kids: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                st = f.read()
            with open(f"/proc/{d}/statm") as f:
                rss[int(d)] = int(f.read().split()[1])
            kids.setdefault(int(st[st.rfind(")") + 2 :].split()[1]), []).append(int(d))
        except (OSError, ValueError, IndexError):
            pass
    todo, tot = [pid], 0
    while todo:
        p = todo.pop()
        tot += rss.get(p, 0)
        todo.extend(kids.get(p, []))
    return tot * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_step(args: list[str]) -> dict:
    proc = subprocess.Popen([sys.executable, __file__, "--step", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    peak = [0.0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _tree_rss_mb(proc.pid))
            done.wait(0.1)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out, err = proc.communicate()
    done.set()
    th.join()
    if proc.returncode != 0:
        raise RuntimeError(f"step {args[0]} failed:\n{err[-4000:]}")
    rec = json.loads(out.strip().splitlines()[-1])
    rec["tree_peak_mb"] = peak[0]
    return rec


def build_slide(source: str, side: int, out_dir: Path) -> Path:
    path = out_dir / f"bench_{source}_{side}.tiff"
    if path.exists():
        return path
    t0 = time.perf_counter()
    if source == "real":
        if not BENCH_TOOL.is_file():
            raise SystemExit(f"{BENCH_TOOL} not found: pass --slide or --source synth")
        subprocess.run([sys.executable, str(BENCH_TOOL), "--out", str(path), "--width", str(side), "--height",
                        str(side), "--thumb", str(out_dir / f"bench_{source}_{side}_thumb.png")],
                       check=True, capture_output=True)
    else:
        from stainshift.synth import generate_slide

        generate_slide(path, out_dir / f"bench_synth_{side}_mask.png", out_dir / f"bench_synth_{side}.xml",
                       center="center_a", seed=0, size=side, mpp=0.5, levels=4, mask_downsample=16, slide_id="bench")
    print(f"built {path} in {time.perf_counter() - t0:.1f} s", flush=True)
    return path


def _median_rec(recs: list[dict]) -> dict:
    """The run with the median wall time, with every run's seconds listed."""
    ordered = sorted(recs, key=lambda r: r["seconds"])
    rec = dict(ordered[len(ordered) // 2])
    rec["runs_s"] = [round(r["seconds"], 3) for r in recs]
    rec["tree_peak_mb"] = statistics.median(r["tree_peak_mb"] for r in recs)
    rec["self_mb"] = statistics.median(r["self_mb"] for r in recs)
    return rec


STAGE_KEYS = ("open", "mask", "read", "resize", "check", "encode", "write", "wait", "qc", "total")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--slide", type=Path, help="benchmark this slide instead of building one")
    ap.add_argument("--source", choices=["real", "synth"], default="real",
                    help="real: make_bench_slide.py mosaic of CMU-1 pixels; synth: stainshift.synth")
    ap.add_argument("--size", type=int, default=16384, help="side of the built slide (level 0)")
    ap.add_argument("--patch", type=int, default=256)
    ap.add_argument("--target-mpp", type=float, default=None, help="default: the slide's level-0 mpp")
    ap.add_argument("--repeats", type=int, default=3, help="round-robin rounds over all steps (medians)")
    ap.add_argument("--out", type=Path, default=REPO / "bench_out")
    ap.add_argument("--no-half", action="store_true", help="skip the half-size memory check")
    ap.add_argument("--codecs", action="store_true", help="also measure store codecs")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    slide = args.slide or build_slide(args.source, args.size, args.out)
    tm = str(args.target_mpp or 0)
    report: dict = {"slide": str(slide), "patch": args.patch, "cpu_count": os.cpu_count(), "repeats": args.repeats,
                    "loadavg_start": os.getloadavg()}
    store = str(args.out / "bench_stage_w1.zarr")
    steps = {
        "stage_w1": ["stage", str(slide), store, "1", "thread", str(args.patch), tm],
        "bare_w1": ["bare", str(slide), store, "1"],
        "stage_w2": ["stage", str(slide), str(args.out / "bench_stage_w2.zarr"), "2", "thread", str(args.patch), tm],
        "bare_w2": ["bare", str(slide), store, "2"],
        "stage_w2_process": ["stage", str(slide), str(args.out / "bench_stage_w2p.zarr"), "2", "process",
                             str(args.patch), tm],
    }
    runs: dict[str, list[dict]] = {k: [] for k in steps}
    for rep in range(args.repeats):
        for key, step in steps.items():
            rec = run_step(step)
            runs[key].append(rec)
            print(f"[rep {rep}] {key:<16} {rec.get('n_kept', rec.get('n')):>6} tiles {rec['seconds']:7.2f} s "
                  f"rss {rec['self_mb']:.0f} MB tree {rec['tree_peak_mb']:.0f} MB", flush=True)
    for key, recs in runs.items():
        report[key] = _median_rec(recs)
    if not args.slide and not args.no_half:
        half = build_slide(args.source, args.size // 2, args.out)
        report["stage_w1_half_slide"] = run_step(["stage", str(half), str(args.out / "bench_half.zarr"), "1",
                                                  "process", str(args.patch), tm])
    if args.codecs:
        report["codecs"] = run_step(["codecs", store, str(args.out)])
    report["loadavg_end"] = os.getloadavg()

    n = report["stage_w1"]["n_kept"]
    rate = {k: report[k].get("n_kept", report[k].get("n", 0)) / report[k]["seconds"] for k in steps}
    report["tiles_per_s"] = rate
    cpu_ms = {k: 1000 * report[k]["cpu_s"] / report[k].get("n_kept", report[k].get("n", 1)) for k in steps}
    report["cpu_ms_per_kept_tile"] = cpu_ms
    report["ratios"] = {
        "stage_w1 / bare_w1": rate["stage_w1"] / rate["bare_w1"],
        "stage_w2 / stage_w1": rate["stage_w2"] / rate["stage_w1"],
        "stage_w2_process / stage_w1": rate["stage_w2_process"] / rate["stage_w1"],
        "bare_w2 / bare_w1": rate["bare_w2"] / rate["bare_w1"],
        "stage_w2 / bare_w2": rate["stage_w2"] / rate["bare_w2"],
    }
    s1 = report["stage_w1"]
    print(f"\nslide {slide}: {s1['n_grid']} grid tiles, {n} kept, {s1['n_read']} read, {s1['n_checked']} pixel-checked, "
          f"patch {args.patch}; mask {s1['mask'].get('mask_downsample')}x (level {s1['mask'].get('mask_level')}, "
          f"{s1['mask'].get('mask_px_per_tile')} px per tile side), margin {s1['mask'].get('tissue_margin')}")
    print(f"whole call (harness figure: kept tiles / wall of tile_slide), medians of {args.repeats}:")
    print(f"{'step':<18}{'tiles/s':>10}{'seconds':>10}{'CPU ms/tile':>13}{'RSS MB':>9}{'tree MB':>9}  runs")
    for k in rate:
        r = report[k]
        print(f"{k:<18}{rate[k]:>10.1f}{r['seconds']:>10.2f}{cpu_ms[k]:>13.2f}{r['self_mb']:>9.0f}{r['tree_peak_mb']:>9.0f}"
              f"  {r['runs_s']}")
    if "stage_w1_half_slide" in report:
        h = report["stage_w1_half_slide"]
        print(f"{'stage_w1 (half)':<18}{h['n_kept'] / h['seconds']:>10.1f}{h['seconds']:>10.2f}{'':>13}"
              f"{h['self_mb']:>9.0f}{h['tree_peak_mb']:>9.0f}")
    for k, v in report["ratios"].items():
        print(f"ratio {k:<32}{v:6.2f}")
    print("\nper-stage split of tile_slide (seconds; ms per kept tile; read/check/encode summed over workers):")
    print(f"{'stage':<10}" + "".join(f"{k:>22}" for k in ("stage_w1", "stage_w2", "stage_w2_process")))
    for st in STAGE_KEYS:
        cells = []
        for k in ("stage_w1", "stage_w2", "stage_w2_process"):
            v = report[k]["stages"].get(st, 0.0)
            cells.append(f"{v:>10.3f} s {1000 * v / max(1, report[k]['n_kept']):>6.2f} ms")
        print(f"{st:<10}" + "".join(f"{c:>22}" for c in cells))
    if "codecs" in report:
        print(f"\ncodecs ({report['codecs']['n_tiles']} tiles of {report['codecs']['tile_size']}², "
              f"{report['codecs']['n_reads']} random single-tile reads)")
        for name, r in report["codecs"]["layouts"].items():
            print(f"  {name:<28} {r['kb_per_tile']:7.1f} KB/tile {r['files']:6d} files "
                  f"{r['writes_per_s']:8.0f} writes/s {r.get('reads_per_s_patchstore', float('nan')):8.0f} reads/s (PatchStore) "
                  f"{r['reads_per_s_zarr']:8.0f} reads/s (zarr)")
    print(f"load average start {report['loadavg_start']}, end {report['loadavg_end']} (shared machine: compare ratios)")
    (args.out / "bench_tiling.json").write_text(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--step":
        name, rest = sys.argv[2], sys.argv[3:]
        if name == "stage":
            out = step_stage(rest[0], rest[1], int(rest[2]), rest[3], int(rest[4]), float(rest[5]) or None)
        elif name == "bare":
            out = step_bare(rest[0], rest[1], int(rest[2]))
        elif name == "codecs":
            out = step_codecs(rest[0], rest[1])
        else:
            raise SystemExit(f"unknown step {name}")
        print(json.dumps(out, default=str))
    else:
        main()
