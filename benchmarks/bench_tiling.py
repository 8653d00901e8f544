#!/usr/bin/env python3
"""Tile-stage benchmark: whole-stage tiles/s vs a bare read_region loop over the same kept grid.

One command (from the repo root):

    .venv/bin/python benchmarks/bench_tiling.py                 # 16384² slide of real CMU-1 pixels
    .venv/bin/python benchmarks/bench_tiling.py --source synth  # 16384² stainshift.synth slide
    .venv/bin/python benchmarks/bench_tiling.py --slide X.svs   # any slide
    .venv/bin/python benchmarks/bench_tiling.py --codecs        # + store codec size / read speed

What it measures, in one run (so ratios are comparable on a shared machine):

1. ``stage_w1``: :func:`stainshift.tiling.tile_slide` with 1 worker, all tissue tiles (``max_tiles``
   null), JPEG q90 store -- its kept coords define the grid for everything below;
2. ``bare_w1`` / ``bare_w2``: ``read_region`` over exactly those coords, 1 process / 2 processes
   (the decode limit);
3. ``stage_w2`` (process pool) and ``stage_w2_thread``;
4. peak RSS of every step (each runs in its own subprocess; pool workers counted), and the 1-worker
   stage on a slide of half the side, to show memory does not grow with slide size;
5. with ``--codecs``: bytes/tile and random single-tile reads/s of the store codecs (zarr 3 +
   stainshift.jpeg sharded, the same unsharded, zarr 2 + imagecodecs' numcodecs JPEG, zstd, lz4).

Tiles/s = kept tiles / wall seconds, for the stage including its thumbnail pass, the tiles it reads
and rejects, encoding and writing. Results: printed table + ``{out}/bench_tiling.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
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
def step_stage(slide: str, out: str, workers: int, parallel: str, patch: int, target_mpp: float | None) -> dict:
    from stainshift.io import open_slide
    from stainshift.tiling import tile_slide

    mpp0 = open_slide(slide).mpp
    cfg = dict(target_mpp=target_mpp or mpp0, patch_size=patch, max_tiles=None, codec="jpeg", jpeg_quality=90,
               workers=workers, parallel=parallel, filter="od")
    t0 = time.perf_counter()
    res = tile_slide(slide, out, cfg, slide_id=Path(slide).stem, progress=False)
    wall = time.perf_counter() - t0
    return {"n_kept": res.n_kept, "n_read": res.n_read, "n_grid": res.n_grid, "seconds": wall,
            "plan": res.plan, **peak_rss_mb()}


_READER = {}


def _bare_init(slide: str) -> None:
    from stainshift.io import open_slide

    _READER["r"] = open_slide(slide)


def _bare_chunk(coords: np.ndarray, level: int, size: int) -> int:
    r = _READER["r"]
    for x, y in coords:
        r.read_region(int(x), int(y), level, size, size)
    return len(coords)


def step_bare(slide: str, store: str, workers: int) -> dict:
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

        chunks = np.array_split(coords, workers * 8)
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("forkserver"), initializer=_bare_init,
                                 initargs=(slide,)) as ex:
            n = sum(ex.map(_bare_chunk, chunks, [level] * len(chunks), [size] * len(chunks)))
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
def run_step(args: list[str]) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--step", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"step {args[0]} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--slide", type=Path, help="benchmark this slide instead of building one")
    ap.add_argument("--source", choices=["real", "synth"], default="real",
                    help="real: make_bench_slide.py mosaic of CMU-1 pixels; synth: stainshift.synth")
    ap.add_argument("--size", type=int, default=16384, help="side of the built slide (level 0)")
    ap.add_argument("--patch", type=int, default=256)
    ap.add_argument("--target-mpp", type=float, default=None, help="default: the slide's level-0 mpp")
    ap.add_argument("--out", type=Path, default=REPO / "bench_out")
    ap.add_argument("--no-half", action="store_true", help="skip the half-size memory check")
    ap.add_argument("--codecs", action="store_true", help="also measure store codecs")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    slide = args.slide or build_slide(args.source, args.size, args.out)
    tm = str(args.target_mpp or 0)
    report: dict = {"slide": str(slide), "patch": args.patch, "cpu_count": os.cpu_count(),
                    "loadavg_start": os.getloadavg()}
    store = str(args.out / "bench_stage_w1.zarr")
    report["stage_w1"] = run_step(["stage", str(slide), store, "1", "process", str(args.patch), tm])
    report["bare_w1"] = run_step(["bare", str(slide), store, "1"])
    report["bare_w2"] = run_step(["bare", str(slide), store, "2"])
    report["stage_w2"] = run_step(["stage", str(slide), str(args.out / "bench_stage_w2.zarr"), "2", "process",
                                   str(args.patch), tm])
    report["stage_w2_thread"] = run_step(["stage", str(slide), str(args.out / "bench_stage_w2t.zarr"), "2", "thread",
                                          str(args.patch), tm])
    if not args.slide and not args.no_half:
        half = build_slide(args.source, args.size // 2, args.out)
        report["stage_w1_half_slide"] = run_step(["stage", str(half), str(args.out / "bench_half.zarr"), "1",
                                                  "process", str(args.patch), tm])
    if args.codecs:
        report["codecs"] = run_step(["codecs", store, str(args.out)])
    report["loadavg_end"] = os.getloadavg()

    n = report["stage_w1"]["n_kept"]
    rate = {k: report[k].get("n_kept", report[k].get("n", 0)) / report[k]["seconds"]
            for k in ("stage_w1", "bare_w1", "bare_w2", "stage_w2", "stage_w2_thread")}
    report["tiles_per_s"] = rate
    read_rate = {k: report[k]["n_read"] / report[k]["seconds"] for k in ("stage_w1", "stage_w2", "stage_w2_thread")}
    report["read_tiles_per_s"] = read_rate
    cpu_ms = {k: 1000 * report[k]["cpu_s"] / report[k].get("n_kept", report[k].get("n", 1))
              for k in ("stage_w1", "bare_w1", "bare_w2", "stage_w2", "stage_w2_thread")}
    report["cpu_ms_per_kept_tile"] = cpu_ms
    report["ratios"] = {
        "stage_w1 / bare_w1 (tiles read incl. rejected)": read_rate["stage_w1"] / rate["bare_w1"],
        "stage_w1 / bare_w1": rate["stage_w1"] / rate["bare_w1"],
        "stage_w2 / stage_w1": rate["stage_w2"] / rate["stage_w1"],
        "stage_w2_thread / stage_w1": rate["stage_w2_thread"] / rate["stage_w1"],
        "bare_w2 / bare_w1": rate["bare_w2"] / rate["bare_w1"],
        "stage_w2 / bare_w2": rate["stage_w2"] / rate["bare_w2"],
    }
    print(f"\nslide {slide}: {report['stage_w1']['n_grid']} grid tiles, {n} kept, patch {args.patch}, "
          f"plan {report['stage_w1']['plan']}")
    print(f"{'step':<18}{'tiles/s':>10}{'seconds':>10}{'CPU ms/tile':>13}{'peak MB self':>14}{'children':>10}")
    for k in rate:
        r = report[k]
        print(f"{k:<18}{rate[k]:>10.1f}{r['seconds']:>10.1f}{cpu_ms[k]:>13.2f}{r['self_mb']:>14.0f}{r['children_mb']:>10.0f}")
    print(f"CPU-time ratio bare_w1 / stage_w1 (per kept tile, load-independent): "
          f"{cpu_ms['bare_w1'] / cpu_ms['stage_w1']:.2f}")
    if "stage_w1_half_slide" in report:
        h = report["stage_w1_half_slide"]
        print(f"{'stage_w1 (half)':<18}{h['n_kept'] / h['seconds']:>10.1f}{h['seconds']:>10.1f}{h['self_mb']:>14.0f}{h['children_mb']:>10.0f}")
    for k, v in report["ratios"].items():
        print(f"ratio {k:<48}{v:6.2f}")
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
