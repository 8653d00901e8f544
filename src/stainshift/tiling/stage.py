"""The tile stage: one slide → one patch store (+ QC picture), serial or with worker processes."""
from __future__ import annotations

import logging
import math
import os
import sys
import time
import warnings
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from stainshift.io import SlideReader, open_slide
from stainshift.store import StoreWriter

from .config import (
    INK_ZONE_FACTOR,
    INK_ZONE_PX,
    MASK_MAX_SIDE,
    MASK_MIN_PX,
    ReadPlan,
    TilingConfig,
    TilingError,
    plan_read,
    tile_grid,
)
from .filters import SlideStats
from .reading import STAGES, _process_batch, _worker_init
from .tissue import tissue_map

log = logging.getLogger("stainshift.tiling")


# --------------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------------
@dataclass
class TilingResult:
    """What :func:`tile_slide` did (also logged; counts and the decision are in the store's attrs).

    ``n_candidates``: grid tiles the mask did not drop; ``n_checked``: of those, the ones within the
    margin (pixel-checked); ``n_read``: tiles read (a ``max_tiles`` run stops early);
    ``stages``: seconds per stage -- ``open``, ``mask``, ``read``, ``resize``, ``check``, ``encode``
    (summed over workers when there are several), ``write`` (appending, shards, finishing the
    store), ``qc``, ``wait`` (the main process waiting for workers), ``total``.
    """

    store: str
    n_grid: int
    n_candidates: int
    n_read: int
    n_kept: int
    plan: dict[str, Any]
    seconds: float
    tiles_per_s: float           # tiles read per second
    thumbnail_downsample: float  # the tissue-decision image's downsample (kept name)
    kept_per_s: float = 0.0      # kept tiles per second of the whole call (the benchmarks' figure)
    n_checked: int = 0
    mask: dict[str, Any] = field(default_factory=dict)
    stages: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def slide_label_to_int(label: Any, class_names: Sequence[str] | None, slide: str) -> int:
    """A sheet's slide/ROI label as a class id: an integer, or an index into ``class_names``."""
    if label is None or (isinstance(label, float) and math.isnan(label)) or str(label).strip() == "":
        return -1
    text = str(label).strip()
    try:
        return int(float(text))
    except ValueError:
        pass
    if class_names and text in class_names:
        return list(class_names).index(text)
    raise TilingError(
        f"slide {slide}: label {text!r} is not an integer; list the class names in tiling.class_names "
        f"(got {list(class_names or [])})"
    )


def _executor(cfg: TilingConfig, path: str, mpp: float | None) -> Executor | None:
    if cfg.workers <= 1:
        return None
    if cfg.parallel == "thread":
        return ThreadPoolExecutor(cfg.workers)
    import multiprocessing as mp

    # fork on Linux: spawn/forkserver re-import the __main__ file in every worker, which for a
    # Snakemake `script:` is the whole job (workers crashed). Workers only use openslide/tifffile,
    # numpy and imagecodecs and open their own reader, so forking the parent is safe here.
    ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    # the main process is one of the ``workers``: it processes batches itself while it would otherwise
    # wait (:func:`_run_batches`), so ``workers`` processes share the tile work and none idles
    ex = ProcessPoolExecutor(cfg.workers - 1, mp_context=ctx, initializer=_worker_init, initargs=(path, mpp))
    ex.submit(int)  # start the workers now: they open the slide while the parent computes the mask
    return ex


Batch = tuple[np.ndarray, np.ndarray, np.ndarray]  # level-0 coords, mask fractions, check flags
#: tiles per batch handed to a worker; the last batches are smaller (:func:`batch_bounds`)
BATCH_TILES = 16
TAIL_BATCH_TILES = 4


def batch_bounds(n: int, workers: int) -> list[tuple[int, int]]:
    """[start, end) of each batch over ``n`` tiles: BATCH_TILES each, then TAIL_BATCH_TILES for the
    last ~2 batches per worker, so the workers finish together (the tail a process waits for at the
    end of the slide is a quarter batch instead of a whole one). One worker: equal batches."""
    tail = 0 if workers <= 1 else min(n, 2 * workers * BATCH_TILES)
    cut = n - tail
    bounds = [(a, min(a + BATCH_TILES, cut)) for a in range(0, cut, BATCH_TILES)]
    bounds += [(a, min(a + TAIL_BATCH_TILES, n)) for a in range(cut, n, TAIL_BATCH_TILES)]
    return bounds
BatchResult = tuple[list[tuple[float, bytes | None]], dict[str, float]]


def _run_batches(batches: list[Batch], plan: ReadPlan, cfg: TilingConfig, stats: SlideStats,
                 reader: SlideReader, executor: Executor | None,
                 main_seconds: list[float] | None = None) -> Iterator[BatchResult]:
    """Results per batch, in batch order, with a bounded number of batches in flight.

    With a process pool the main process works too: whenever the oldest batch in flight is not done,
    it takes the next batch and processes it itself (its result waits in order), so the pool's
    ``workers − 1`` processes and the main process share the tiles by how fast each is — the main
    process, which also writes the store, takes fewer. Batches are taken in order and results
    yielded in order, so the store is the same for any worker count. The pool holds two batches per
    process (a short queue, so the main process's batches come up in order soon); the seconds the
    main process spends on batches are added to ``main_seconds[0]``."""
    if executor is None:
        for b in batches:
            yield _process_batch(*b, plan, cfg, stats, reader)
        return
    thread = isinstance(executor, ThreadPoolExecutor)
    window = max(2, 4 * cfg.workers) if thread else 2 * max(1, cfg.workers - 1)
    max_slots = window + 2  # results computed here but not yet in order
    slots: list[Future | BatchResult] = []  # in batch order: a pool future or a result computed here
    in_pool = 0
    it = iter(batches)

    def submit() -> bool:
        nonlocal in_pool
        b = next(it, None)
        if b is None:
            return False
        if thread:
            slots.append(executor.submit(_process_batch, *b, plan, cfg, stats, reader))
        else:
            slots.append(executor.submit(_process_batch, *b, plan, cfg, stats))
        in_pool += 1
        return True

    for _ in range(window):
        if not submit():
            break
    try:
        while slots:
            head = slots[0]
            if isinstance(head, Future):
                if not thread and not head.done() and len(slots) < max_slots:
                    b = next(it, None)
                    if b is not None:
                        t0 = time.perf_counter()
                        slots.append(_process_batch(*b, plan, cfg, stats, reader))
                        if main_seconds is not None:
                            main_seconds[0] += time.perf_counter() - t0
                        continue
                result = head.result()
                in_pool -= 1
            else:
                result = head
            slots.pop(0)
            while in_pool < window and submit():
                pass
            yield result
    finally:
        for f in slots:
            if isinstance(f, Future):
                f.cancel()


def tile_slide(
    slide_path: str | os.PathLike,
    out_store: str | os.PathLike,
    config: Mapping[str, Any] | TilingConfig,
    *,
    slide_id: str,
    center: str = "",
    patient: str = "",
    split: str = "",
    label: Any = None,
    annotation: str | os.PathLike | None = None,
    mpp: float | None = None,
    qc_png: str | os.PathLike | None = None,
    progress: bool = True,
) -> TilingResult:
    """Tile one slide into a patch store (atomic) and optionally write its QC picture.

    ``mpp`` (the sample sheet's ``mpp`` column in the workflow) overrides the file's level-0 µm/px;
    attrs ``mpp_source`` records which one was used (``sheet`` or ``file``)."""
    clock = time.perf_counter
    t_start = clock()
    stages: dict[str, float] = dict.fromkeys(("open", "mask", *STAGES, "write", "wait", "qc"), 0.0)
    cfg = config if isinstance(config, TilingConfig) else TilingConfig.from_dict(config)
    slide_path = Path(slide_path)
    notes: list[str] = []
    with ExitStack() as stack:
        reader = stack.enter_context(open_slide(slide_path, mpp))
        plan = plan_read(reader, cfg.target_mpp, cfg.patch_size, cfg.stride, cfg.allow_upsample)
        log.info("%s: %s, levels %s, mpp %.4f -> read plan %s", slide_id, reader.backend,
                 reader.level_dimensions, plan.mpp_level0, asdict(plan))
        if reader.grayscale:
            msg = (f"{slide_id}: {slide_path} is a single-channel (grey) image, not an H&E colour image; tiled "
                   "as grey RGB, but the tissue filter, stain normalization and H&E augmentation assume H&E")
            log.warning(msg)
            notes.append(msg)
        dims0 = reader.dimensions
        grid = tile_grid(dims0, plan)
        executor = _executor(cfg, str(slide_path), mpp)
        if executor is not None:
            stack.callback(executor.shutdown, wait=True, cancel_futures=True)
        t0 = clock()
        stages["open"] = t0 - t_start
        tmap = tissue_map(reader, plan, cfg)
        mplan, stats = tmap.plan, tmap.stats
        mfrac = tmap.fractions(grid, plan.tile_size0)
        thr, margin = cfg.min_tissue_fraction, cfg.tissue_margin
        cand = mfrac >= thr - margin
        ink_frac = tmap.ink_fractions(grid, plan.tile_size0)
        n_ink_dropped = 0
        if ink_frac is not None:
            ink_drop = cand & (ink_frac < INK_ZONE_FACTOR * thr)
            n_ink_dropped = int(ink_drop.sum())
            cand &= ~ink_drop
        cand_idx = np.flatnonzero(cand)
        check = (mfrac < thr + margin) if margin > 0 else np.zeros(len(grid), bool)
        stages["mask"] = clock() - t0
        if mplan.px_per_tile < MASK_MIN_PX:
            msg = (f"{slide_id}: a tile side covers only {mplan.px_per_tile:.1f} px of the tissue-decision image "
                   f"(level {mplan.level}, downsample {mplan.downsample:g}; wanted >= {MASK_MIN_PX}: "
                   f"tiling.thumbnail_size set too small, or the {MASK_MAX_SIDE}-px cap); mask fractions are "
                   f"coarse, a larger tiling.tissue_margin sends more tiles to the pixel check")
            log.warning(msg)
            notes.append(msg)
        n_checked_cand = int(check[cand_idx].sum())
        log.info("%s: grid %d tiles; mask at level %d / %d (downsample %g, %.1f px per tile side): %d candidates, "
                 "%d within the margin %.2f of %.2f (pixel-checked)", slide_id, len(grid), mplan.level, mplan.factor,
                 mplan.downsample, mplan.px_per_tile, len(cand_idx), n_checked_cand, margin, thr)
        if cfg.max_tiles is not None:
            rng = np.random.default_rng(cfg.seed)
            order = cand_idx[rng.permutation(len(cand_idx))]
        else:
            order = cand_idx
        # labels: the annotation is parsed (and checked) before any tile is read
        if annotation:
            from stainshift.annotations import load_annotation

            raster = load_annotation(annotation, dims0, tile_size0=plan.tile_size0,
                                     exclude_groups=cfg.exclude_groups, positive_values=cfg.mask_positive_values)
            for msg in raster.warnings:  # odd geometry: a defined result, said on the console and in the log
                log.warning(msg)
                notes.append(msg)
            slide_lab = None
        else:
            raster = None
            slide_lab = slide_label_to_int(label, cfg.class_names, slide_id)

        def labels_of(c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            if raster is not None:
                return raster.tile_labels(c, plan.tile_size0, cfg.label_threshold)
            return np.full(len(c), slide_lab, dtype=np.int64), np.full(len(c), np.nan, dtype=np.float32)

        decision = {
            "rule": "mask fraction >= t + m kept, < t - m dropped, else per-pixel check (stainshift.tiling docstring)",
            "tissue_fraction": "the decision's: mask fraction, or per-pixel fraction for pixel-checked tiles",
            "mask_level": mplan.level, "mask_reduce": mplan.factor, "mask_downsample": mplan.downsample,
            "mask_px_per_tile": mplan.px_per_tile, "mask_shape": list(mplan.shape),
            "stats_downsample": tmap.stats_downsample, "ink_zone_px": INK_ZONE_PX if tmap.ink_zone is not None else 0,
            "n_ink_gate_dropped": n_ink_dropped,
            "min_tissue_fraction": thr, "tissue_margin": margin,
            "n_candidates": int(len(cand_idx)), "n_within_margin": n_checked_cand,
        }
        stat = slide_path.stat()
        attrs = {
            "slide_id": slide_id, "center": center, "patient": patient, "split": split,
            "source_path": str(slide_path), "source_size": stat.st_size, "source_mtime": stat.st_mtime,
            "mpp_level0": plan.mpp_level0, "mpp_source": "file" if mpp is None else "sheet",  # `mpp`: the sheet's column
            "target_mpp": cfg.target_mpp, "read_level": plan.level,
            "downsample": plan.downsample, "patch_size": cfg.patch_size, "stride": cfg.step,
            "filter": cfg.filter, "filter_params": {**cfg.filter_params(), "otsu_saturation": stats.otsu,
                                                    "glass_rgb": list(stats.glass)}, "seed": cfg.seed,
            "read_plan": asdict(plan), "backend": reader.backend, "slide_dimensions": list(dims0),
            "annotation": str(annotation) if annotation else None, "slide_label": label,
            "label_threshold": cfg.label_threshold, "max_tiles": cfg.max_tiles,
            "n_grid": int(len(grid)), "n_candidates": int(len(cand_idx)), "tissue_decision": decision,
        }
        bounds = batch_bounds(len(order), cfg.workers)
        batches = [(grid[order[a:b]], mfrac[order[a:b]], check[order[a:b]]) for a, b in bounds]
        sampled: list[tuple[int, float, bytes]] = []  # max_tiles mode: held until the sample is complete
        out_coords: list[np.ndarray] = []
        out_labels: list[np.ndarray] = []
        rejected: list[int] = []  # grid indices read and below the threshold (QC picture)
        n_read = n_checked = 0
        tw = clock()
        with StoreWriter(out_store, patch_size=cfg.patch_size, attrs=attrs, codec=cfg.codec,
                         jpeg_quality=cfg.jpeg_quality, shard_tiles=cfg.shard_tiles) as writer:
            bar = None
            if progress:
                from tqdm.auto import tqdm

                bar = tqdm(total=len(order), desc=f"tile {slide_id}", unit="tile", mininterval=1.0)
            stages["write"] += clock() - tw
            try:
                t_wait = clock()
                main_work = [0.0]  # seconds the main process spent on batches inside _run_batches
                for b_i, (results, t_batch) in enumerate(
                        _run_batches(batches, plan, cfg, stats, reader, executor, main_work)):
                    t_got = clock()
                    if executor is not None:  # in-process batches: their time is in read/check/encode
                        stages["wait"] += t_got - t_wait - main_work[0]
                        main_work[0] = 0.0
                    for k, v in t_batch.items():
                        stages[k] += v
                    n_read += len(results)
                    n_checked += int(batches[b_i][2].sum())
                    if bar is not None:
                        bar.update(len(results))
                    first = bounds[b_i][0]
                    hits = [(int(order[first + j]), frac, data) for j, (frac, data) in enumerate(results)
                            if data is not None]
                    rejected.extend(int(order[first + j]) for j, (_, d) in enumerate(results) if d is None)
                    if cfg.max_tiles is not None:
                        sampled.extend(hits)
                        if len(sampled) >= cfg.max_tiles:
                            sampled = sampled[: cfg.max_tiles]
                            break
                    elif hits:  # all tiles: grid order already, stream to disk (memory stays flat)
                        c = grid[[h[0] for h in hits]]
                        lab, lf = labels_of(c)
                        for (_, frac, data), xy, la, f in zip(hits, c, lab, lf):
                            writer.append_encoded(data, xy, frac, int(la), float(f))
                        out_coords.append(c)
                        out_labels.append(lab)
                    t_wait = clock()
                    stages["write"] += t_wait - t_got
                if bar is not None:
                    bar.close()
            finally:
                if executor is not None:
                    executor.shutdown(wait=True, cancel_futures=True)
            tw = clock()
            if sampled:
                sampled.sort(key=lambda t: t[0])
                c = grid[[h[0] for h in sampled]]
                lab, lf = labels_of(c)
                for (_, frac, data), xy, la, f in zip(sampled, c, lab, lf):
                    writer.append_encoded(data, xy, frac, int(la), float(f))
                out_coords.append(c)
                out_labels.append(lab)
            n = len(writer)
            writer.attrs["n_read"] = n_read
            writer.attrs["tissue_decision"] = {**decision, "n_checked": n_checked}
            if n == 0:
                msg = f"{slide_id}: no tile passed the foreground filter ({slide_path}); writing an empty store"
                warnings.warn(msg, stacklevel=2)
                log.warning(msg)
                notes.append(msg)
        stages["write"] += clock() - tw
        coords = np.concatenate(out_coords) if out_coords else np.zeros((0, 2), np.int64)
        labels = np.concatenate(out_labels) if out_labels else np.zeros(0, np.int64)

        if qc_png is not None:
            from stainshift.qc import slide_qc_png

            tq = clock()
            capped = None
            if cfg.max_tiles is not None:  # candidates neither kept nor rejected: unread or over the cap
                done = {h[0] for h in sampled} | set(rejected)
                capped = grid[np.asarray([i for i in order.tolist() if i not in done], np.int64)]
            slide_qc_png(qc_png, tmap.image, mplan.downsample, tmap.mask, coords, plan.tile_size0, labels,
                         title=f"{slide_id}: tissue-decision image, level {mplan.level} (downsample "
                               f"{mplan.downsample:g}{f', reduced /{mplan.factor}' if mplan.factor > 1 else ''})",
                         excluded=tmap.ink_zone_on_image(), capped=capped,
                         rejected=grid[np.asarray(rejected, np.int64)], max_tiles=cfg.max_tiles,
                         class_names=cfg.class_names, mpp0=plan.mpp_level0)
            stages["qc"] = clock() - tq
    seconds = clock() - t_start
    stages["total"] = seconds
    result = TilingResult(
        store=str(out_store), n_grid=int(len(grid)), n_candidates=int(len(cand_idx)), n_read=n_read, n_kept=n,
        plan=asdict(plan), seconds=seconds, tiles_per_s=n_read / seconds if seconds > 0 else 0.0,
        kept_per_s=n / seconds if seconds > 0 else 0.0,
        thumbnail_downsample=mplan.downsample, n_checked=n_checked, mask={**decision, "n_checked": n_checked},
        stages={k: round(v, 4) for k, v in stages.items()}, warnings=notes,
    )
    log.info("%s: kept %d of %d read tiles (%d pixel-checked) in %.2f s -> %s; stages %s", slide_id, n, n_read,
             n_checked, seconds, out_store, result.stages)
    return result
