"""The shared training loop (AMP, checkpoints, resume, DDP), pretraining and the encoder file.

Pretraining (``pretrain``): build the method from the merged config (:func:`method_config`), run
:func:`fit`, write ``encoder.pt``. :func:`fit`:

- seeds everything (model init identical on every rank; augmentation streams differ per rank);
- AMP (fp16 + GradScaler, or bf16) and channels_last only on CUDA; gradient clipping;
- a checkpoint ``checkpoints/last.pt`` after every epoch (atomic: tmp + ``os.replace``) with the
  method, optimizer, scheduler, scaler and sampler state, every rank's RNG state, and the metric
  history; a re-run resumes from it and reproduces the uninterrupted run's weights exactly on CPU;
- a non-finite loss stops the run with :class:`NonFiniteLossError` (no checkpoint of that epoch);
- ``metrics.csv`` (one row per epoch: every scalar the method returns, lr per optimizer, seconds,
  images/s) and a tqdm progress bar on rank 0;
- DDP when launched by ``torchrun`` (RANK / WORLD_SIZE set): automatic-optimization methods are
  wrapped in DistributedDataParallel; manual-optimization methods average gradients in
  ``ctx.backward_step``. Contrastive losses gather embeddings, so the loss equals the one-process
  loss on the same global batch (``tests/test_ddp.py``).

Fine-tuning: :mod:`stainshift.train.finetune`; pretraining entry point: :mod:`stainshift.train.pretrain`.
"""
from __future__ import annotations

import csv
import io
import logging
import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

import stainshift
from stainshift import atomic
from stainshift.data import EpochBatchSampler, TileDataset, make_loader
from stainshift.methods import Method, StepContext
from stainshift.models import count_parameters
from stainshift.train.checkpoint import (
    atomic_save,
    load,
    package_digest,
    rng_state,
    set_rng_state,
    run_fingerprint,
)
from stainshift.train.runtime import init_distributed, select_device

log = logging.getLogger("stainshift.train")


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or inf; the message names method, epoch and step."""


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    atomic.write_text(path, buf.getvalue())


def effective_epochs(cfg: dict[str, Any], steps_per_epoch: int) -> int:
    """``cfg['epochs']``, raised to ceil(min_steps / steps_per_epoch) when ``cfg['min_steps']`` is set.

    A budget in optimizer steps for sources of very different sizes: with epochs alone, a center
    with a quarter of the tiles gets a quarter of the updates (the mitosis example's small scanner
    domains: 4-6 steps per epoch against TUPAC16's 18)."""
    epochs = int(cfg["epochs"])
    min_steps = cfg.get("min_steps")
    if min_steps and steps_per_epoch > 0:
        need = -(-int(min_steps) // steps_per_epoch)
        if need > epochs:
            log.info("min_steps %d: %d epochs of %d steps instead of %d", int(min_steps), need, steps_per_epoch, epochs)
            return need
    return epochs


def fit(method: Method, dataset: TileDataset, cfg: dict[str, Any], out_dir: str | os.PathLike, *,
        device: torch.device | None = None, callbacks: Sequence[Callable[[int, dict[str, Any]], None]] = (),
        progress: bool = True) -> list[dict[str, Any]]:
    """Train ``method`` on ``dataset`` for ``cfg['epochs']``; resume from ``out_dir/checkpoints/last.pt``.

    cfg keys: ``epochs``, ``min_steps`` (:func:`effective_epochs`), ``batch_size`` (global), ``seed``, ``num_workers``, ``grad_clip``
    (null = off), ``amp`` (true: fp16 on CUDA / false), ``amp_dtype`` (float16 | bfloat16),
    ``channels_last``, ``sync_bn`` (CUDA DDP), ``tiles_per_slide`` (slide-balanced methods),
    ``resume`` (default true). ``callbacks(epoch, row)`` run after each epoch's checkpoint.
    Returns the per-epoch metric rows (also in ``out_dir/metrics.csv``).
    """
    out_dir = Path(out_dir)
    ckpt_dir = out_dir / "checkpoints"
    device = device or select_device(cfg.get("device", "auto"))
    rank, world = init_distributed(device)
    cuda = device.type == "cuda"
    seed = int(cfg.get("seed", 0))
    batch_size = int(cfg["batch_size"])
    if batch_size > len(dataset):
        new = max(world, (len(dataset) // world) * world)
        log.warning("batch_size %d > %d tiles: using %d", batch_size, len(dataset), new)
        batch_size = new
    sampler = EpochBatchSampler(
        len(dataset), batch_size, seed=seed, rank=rank, world_size=world,
        slide_ids=dataset.slides if type(method).slide_balanced else None,
        tiles_per_slide=int(cfg.get("tiles_per_slide", 2)),
    )
    loader = make_loader(dataset, sampler, int(cfg.get("num_workers", 0)), pin_memory=cuda)
    steps_per_epoch = len(sampler)
    epochs = effective_epochs(cfg, steps_per_epoch)

    method.to(device)
    if cuda and cfg.get("channels_last", True):
        method.to(memory_format=torch.channels_last)
    model: nn.Module = method
    if world > 1 and type(method).automatic_optimization:
        if cuda and cfg.get("sync_bn", True):
            model = nn.SyncBatchNorm.convert_sync_batchnorm(method)
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if cuda else None,
            find_unused_parameters=bool(cfg.get("find_unused_parameters", False)))
    elif world > 1:  # manual optimization: same start weights on every rank, grads averaged in ctx
        for t in list(method.parameters()) + list(method.buffers()):
            dist.broadcast(t.data, 0)

    built = method.configure_optimizers(steps_per_epoch, epochs)
    optimizers = {k: v[0] for k, v in built.items()}
    schedulers = {k: v[1] for k, v in built.items() if v[1] is not None}
    amp = bool(cfg.get("amp", True)) and cuda
    amp_dtype = torch.bfloat16 if str(cfg.get("amp_dtype", "float16")) == "bfloat16" else torch.float16
    scaler = torch.amp.GradScaler(device.type, enabled=amp and amp_dtype == torch.float16)
    params = {k: [p for g in opt.param_groups for p in g["params"]] for k, opt in optimizers.items()}
    grad_clip = cfg.get("grad_clip")
    ctx = StepContext(device=device, amp=amp, amp_dtype=amp_dtype, rank=rank, world_size=world,
                      grad_clip=float(grad_clip) if grad_clip else None, optimizers=optimizers,
                      schedulers=schedulers, scaler=scaler, params=params)

    history: list[dict[str, Any]] = []
    start_epoch = 0
    last = ckpt_dir / "last.pt"
    threads = torch.get_num_threads() if not cuda else 0  # CPU reductions depend on the thread count
    code = package_digest()
    fingerprint = run_fingerprint(cfg, dataset.paths, type(method).name, world, code=code, threads=threads)
    run_info = {"threads": threads, "world_size": world, "code": code}
    state = load(last, map_location=device) if cfg.get("resume", True) and last.exists() else None
    if state is not None and state.get("fingerprint") != fingerprint:
        if rank == 0:
            old = state.get("run_info") or {}
            changed = [f"{k} {old[k]} → {v}" for k, v in run_info.items() if k in old and old[k] != v]
            log.warning("%s was written by another %s: starting from scratch (resuming would mix two runs)", last,
                        ", ".join(changed) if changed else "config / store set / world size / code version")
        state = None
    if state is not None:
        method.load_state_dict(state["method"])
        for k, opt in optimizers.items():
            opt.load_state_dict(state["optimizers"][k])
        for k, sch in schedulers.items():
            sch.load_state_dict(state["schedulers"][k])
        scaler.load_state_dict(state["scaler"])
        sampler.load_state_dict(state["sampler"])
        rng = state["rng"]
        set_rng_state(rng[rank] if rank < len(rng) else rng[0])
        history = list(state["history"])
        start_epoch = int(state["epoch"]) + 1
        ctx.step = int(state["step"])
        if rank == 0:
            log.info("resumed from %s: epoch %d of %d done", last, start_epoch, epochs)
    if rank == 0:
        log.info("method %s: %d trainable parameters, %d tiles, global batch %d × %d steps/epoch, "
                 "world size %d, device %s, AMP %s", type(method).name, count_parameters(method), len(dataset),
                 batch_size, steps_per_epoch, world, device, amp)

    for epoch in range(start_epoch, epochs):
        sampler.set_epoch(epoch)
        ctx.epoch = epoch
        model.train()
        sums: dict[str, float] = defaultdict(float)
        t0 = time.perf_counter()
        bar = tqdm(loader, desc=f"{type(method).name} epoch {epoch + 1}/{epochs}", leave=False,
                   disable=not progress or rank != 0, mininterval=2.0)
        for batch in bar:
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            if cuda and cfg.get("channels_last", True):
                batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)
            out = _train_step(model, method, batch, ctx)
            for key, value in out.items():
                sums[key] += float(value)
            ctx.step += 1
            bar.set_postfix(loss=f"{float(out['loss']):.4f}")
        seconds = time.perf_counter() - t0
        means = {k: v / max(1, steps_per_epoch) for k, v in sums.items()}
        if world > 1:
            keys = sorted(means)
            t = torch.tensor([means[k] for k in keys], dtype=torch.float64, device=device)
            dist.all_reduce(t)
            means = dict(zip(keys, (t / world).tolist()))
        row = {"epoch": epoch + 1, **means,
               **{f"lr_{k}": opt.param_groups[0]["lr"] for k, opt in optimizers.items()},
               "images": steps_per_epoch * batch_size, "seconds": round(seconds, 3), "images_per_s": round(steps_per_epoch * batch_size / max(seconds, 1e-9), 2)}
        history.append(row)
        method.on_epoch_end(epoch)
        rng_states = [rng_state()]
        if world > 1:
            rng_states = [None] * world
            dist.all_gather_object(rng_states, rng_state())
        if rank == 0:
            atomic_save({
                "epoch": epoch, "step": ctx.step, "method": method.state_dict(),
                "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
                "schedulers": {k: s.state_dict() for k, s in schedulers.items()},
                "scaler": scaler.state_dict(), "sampler": sampler.state_dict(), "rng": rng_states,
                "history": history, "fingerprint": fingerprint, "run_info": run_info,
                "software_version": stainshift.__version__,
            }, last)
            _write_csv(out_dir / "metrics.csv", history)
            log.info("epoch %d/%d %s", epoch + 1, epochs,
                     " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
        if world > 1:
            dist.barrier()
        for cb in callbacks:
            cb(epoch, row)
    if rank == 0 and history:  # also after a resume that found every epoch done
        _write_csv(out_dir / "metrics.csv", history)
    return history


def _train_step(model: nn.Module, method: Method, batch: dict[str, torch.Tensor], ctx: StepContext) -> dict[str, float]:
    automatic = type(method).automatic_optimization
    if automatic:
        for opt in ctx.optimizers.values():
            opt.zero_grad(set_to_none=True)
    out = model(batch, ctx)
    if "loss" not in out:
        raise KeyError(f"method '{type(method).name}': training_step must return a dict with key 'loss'")
    loss = out["loss"]
    finite = torch.isfinite(loss.detach()).to(torch.float32)
    if ctx.distributed:  # every rank stops together
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    if not bool(finite):
        raise NonFiniteLossError(
            f"method '{type(method).name}': non-finite loss ({float(loss.detach())}) at epoch {ctx.epoch + 1}, "
            f"step {ctx.step}; stopping (last good checkpoint kept). Lower the learning rate, set "
            f"grad_clip, or check the input tiles.")
    if automatic:
        scaler = ctx.scaler
        scaled = scaler.scale(loss) if scaler is not None and scaler.is_enabled() else loss
        scaled.backward()
        if scaler is not None and scaler.is_enabled():
            for opt in ctx.optimizers.values():
                scaler.unscale_(opt)
        if ctx.grad_clip:
            torch.nn.utils.clip_grad_norm_([p for ps in ctx.params.values() for p in ps], ctx.grad_clip)
        for opt in ctx.optimizers.values():
            if scaler is not None and scaler.is_enabled():
                scaler.step(opt)
            else:
                opt.step()
        if scaler is not None and scaler.is_enabled():
            scaler.update()
        for sch in ctx.schedulers.values():
            sch.step()
    return {k: float(v.detach()) if torch.is_tensor(v) else float(v) for k, v in out.items()}
