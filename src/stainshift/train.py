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

Fine-tuning and prediction live in :mod:`stainshift.finetune`.
"""
from __future__ import annotations

import copy
import csv
import hashlib
import io
import json
import logging
import os
import random
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

import stainshift
from stainshift import atomic
from stainshift.data import EpochBatchSampler, TileDataset, make_loader
from stainshift.methods import Method, StepContext, build_method, get_method_class
from stainshift.models import build_encoder, count_parameters

log = logging.getLogger("stainshift.train")


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or inf; the message names method, epoch and step."""


# ---------------------------------------------------------------------------------------------
# config, seeds, devices, distributed
# ---------------------------------------------------------------------------------------------
def deep_merge(base: dict[str, Any], extra: dict[str, Any] | None) -> dict[str, Any]:
    """A new dict: ``base`` overlaid recursively by ``extra``."""
    out = copy.deepcopy(base)
    for key, value in (extra or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def method_config(pretrain_cfg: dict[str, Any], method: str) -> dict[str, Any]:
    """Merged settings of one method: base defaults ← the method's ``seed_defaults`` (seed paper)
    ← ``pretrain.defaults`` ← ``pretrain.<method>``; top-level ``pretrain.device`` /
    ``num_workers`` apply unless the method block sets them. The run's replicate seed
    (``pretrain.seeds``) is set by the caller.
    """
    cls = get_method_class(method)
    block = pretrain_cfg.get(method) or {}
    cfg: dict[str, Any] = {}
    for layer in (cls.base_defaults, cls.seed_defaults, pretrain_cfg.get("defaults") or {}, block):
        enc = layer.get("encoder")
        if enc is not None:  # an encoder of another arch replaces the spec instead of merging into it
            enc = {"arch": enc} if isinstance(enc, str) else dict(enc)
            prev = cfg.get("encoder") or {}
            if "arch" in enc and enc["arch"] != prev.get("arch"):
                cfg["encoder"] = {}
        cfg = deep_merge(cfg, {**layer, **({"encoder": enc} if enc is not None else {})})
    for key in ("device", "num_workers"):
        if key in pretrain_cfg and key not in block:
            cfg[key] = pretrain_cfg[key]
    for key in ("encoder", "epochs", "batch_size"):
        if key not in cfg:
            raise KeyError(f"pretrain config for method '{method}' lacks key '{key}' "
                           f"(set pretrain.defaults.{key} or pretrain.{method}.{key})")
    return cfg


#: settings the loop, data and encoder read for every method, beyond the methods' own defaults
LOOP_KEYS = ("encoder", "epochs", "batch_size", "device", "num_workers", "resume", "deterministic",
             "find_unused_parameters", "num_classes", "init", "optimizers")


def method_settings(method: str) -> dict[str, Any]:
    """Every setting ``pretrain.<method>`` accepts → its default (None where there is none)."""
    from stainshift.methods.base import OPTIMIZER_KEYS

    cls = get_method_class(method)
    known: dict[str, Any] = dict.fromkeys((*LOOP_KEYS, *OPTIMIZER_KEYS))
    return {**known, **cls.base_defaults, **cls.seed_defaults}


def _type_problem(key: str, value: Any, default: Any) -> str | None:
    """Why ``value`` cannot stand where ``default`` is (None if it can)."""
    if value is None or default is None:
        return None
    if key == "encoder":
        return None if isinstance(value, (str, dict)) else "an arch name or a spec mapping"
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "true or false"
    if isinstance(default, int):
        return None if isinstance(value, int) and not isinstance(value, bool) else "an integer"
    if isinstance(default, float):
        return None if isinstance(value, (int, float)) and not isinstance(value, bool) else "a number"
    for kind, word in ((str, "a string"), ((list, tuple), "a list"), (dict, "a mapping")):
        if isinstance(default, kind):
            return None if isinstance(value, kind) else word
    return None


def check_pretrain_config(pretrain_cfg: dict[str, Any]) -> None:
    """Parse-time check of ``pretrain.defaults`` and every ``pretrain.<method>`` block: an unknown
    setting (with the nearest known name) or a value of the wrong type raises ConfigError naming the
    key — a typo such as ``epoch: 3`` would otherwise be ignored and train with the default."""
    import difflib

    from stainshift.methods import available_methods
    from stainshift.validation import ConfigError

    per_method = {m: method_settings(m) for m in available_methods() if not m.startswith("_")}
    union: dict[str, Any] = {}
    for settings in per_method.values():
        for k, v in settings.items():
            union[k] = v if union.get(k) is None else union[k]
    blocks = {"defaults": union, **per_method}
    problems = []
    for block, settings in blocks.items():
        for key, value in (pretrain_cfg.get(block) or {}).items():
            where = f"pretrain.{block}.{key}"
            if key not in settings:
                near = difflib.get_close_matches(key, list(settings), n=1)
                hint = f" (did you mean '{near[0]}'?)" if near else ""
                scope = "any method" if block == "defaults" else f"method '{block}'"
                problems.append(f"  - key '{where}': not a setting of {scope}{hint}")
                continue
            want = _type_problem(key, value, settings[key])
            if want:
                problems.append(f"  - key '{where}': {value!r} should be {want}")
    if problems:
        raise ConfigError("invalid config:\n" + "\n".join(problems))


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def dist_info() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment (0, 1, 0 without it)."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


def init_distributed(device: torch.device) -> tuple[int, int]:
    """Join the process group when launched with torchrun (NCCL on CUDA, gloo on CPU)."""
    rank, world, _ = dist_info()
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return rank, world


def select_device(preference: str = "auto") -> torch.device:
    """``auto`` → CUDA (this rank's local GPU) when available, else CPU (logged); ``cpu``; ``cuda``."""
    _, _, local = dist_info()
    if preference == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        torch.cuda.set_device(local % torch.cuda.device_count())
        return torch.device("cuda", local % torch.cuda.device_count())
    if preference == "cuda":
        raise RuntimeError("device 'cuda' requested (key 'device') but no CUDA device is available")
    log.info("no CUDA device available: training on CPU")
    return torch.device("cpu")


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """torch.save to ``path`` atomically (:mod:`stainshift.atomic`: no half-written files)."""
    path = Path(path)
    try:
        with atomic.atomic_path(path) as tmp:
            torch.save(obj, tmp)
    except (OSError, RuntimeError) as err:  # torch reports a full disk as "iostream error" without a path
        raise OSError(f"could not write {path}: {err}. Check free space and write permission in {path.parent}; "
                      f"the previous {path.name} (if any) is unchanged.") from err


def load(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """torch.load with ``weights_only=True`` (checkpoints hold tensors, numbers, strings, lists)."""
    return torch.load(path, map_location=map_location, weights_only=True)


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": list(_flatten_py_state(random.getstate())),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _flatten_py_state(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    npst = state["numpy"]
    np.random.set_state(("MT19937", npst["key"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"],
                         npst["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    atomic.write_text(path, buf.getvalue())


# ---------------------------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------------------------
def fit(method: Method, dataset: TileDataset, cfg: dict[str, Any], out_dir: str | os.PathLike, *,
        device: torch.device | None = None, callbacks: Sequence[Callable[[int, dict[str, Any]], None]] = (),
        progress: bool = True) -> list[dict[str, Any]]:
    """Train ``method`` on ``dataset`` for ``cfg['epochs']``; resume from ``out_dir/checkpoints/last.pt``.

    cfg keys: ``epochs``, ``batch_size`` (global), ``seed``, ``num_workers``, ``grad_clip``
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
    epochs = int(cfg["epochs"])
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
        _set_rng_state(rng[rank] if rank < len(rng) else rng[0])
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
        rng_states = [_rng_state()]
        if world > 1:
            rng_states = [None] * world
            dist.all_gather_object(rng_states, _rng_state())
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


def package_digest(root: str | os.PathLike | None = None) -> str:
    """SHA-256 (16 hex) of every ``.py`` file of the installed stainshift package (or ``root``):
    any change on the training path — methods, models, augmentations, stain, data, store — makes a
    checkpoint of an older code version unusable for resume."""
    root = Path(root) if root is not None else Path(stainshift.__file__).parent
    digest = hashlib.sha256()
    for f in sorted(root.rglob("*.py")):
        digest.update(str(f.relative_to(root)).encode())
        digest.update(f.read_bytes())
    return digest.hexdigest()[:16]


def run_fingerprint(cfg: dict[str, Any], stores: Sequence[str], method: str, world_size: int, code: str = "",
                    threads: int = 0) -> str:
    """Hash of what determines a run (config minus I/O-only keys, store paths and mtimes, method,
    world size, training code, CPU thread count — float reductions differ with it): a checkpoint
    is resumed only when it matches."""
    ignore = {"resume", "num_workers", "device", "cache_mb"}
    mtimes = [Path(p).stat().st_mtime_ns if Path(p).exists() else None for p in stores]  # re-made stores → fresh run
    payload = {"cfg": {k: v for k, v in cfg.items() if k not in ignore}, "stores": list(stores), "mtimes": mtimes,
               "method": method, "world_size": world_size, "code": code, "threads": threads}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


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


# ---------------------------------------------------------------------------------------------
# pretraining entry point and the encoder file
# ---------------------------------------------------------------------------------------------
def save_encoder(encoder: nn.Module, path: str | os.PathLike, **meta: Any) -> None:
    """Write ``encoder.pt``: {spec, state_dict, out_dim, software_version, **meta} atomically.
    An encoder whose weights live in a file of its own (``weights_in_file``: external encoders)
    is stored by its spec alone (``state_dict`` empty)."""
    state = ({} if getattr(encoder, "weights_in_file", False)
             else {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()})
    atomic_save({"spec": encoder.spec, "state_dict": state, "out_dim": int(encoder.out_dim),
                 "software_version": stainshift.__version__, **meta}, path)


def load_encoder(path: str | os.PathLike, device: torch.device | str = "cpu") -> nn.Module:
    """Rebuild the encoder of ``encoder.pt`` (eval mode, on ``device``)."""
    state = load(path)
    if "spec" not in state or "state_dict" not in state:
        raise ValueError(f"{path}: not an encoder file (keys 'spec' and 'state_dict' expected)")
    enc = build_encoder(state["spec"])
    if state["state_dict"] or not getattr(enc, "weights_in_file", False):
        enc.load_state_dict(state["state_dict"])
    return enc.to(device).eval()


class DidNotLearnError(RuntimeError):
    """Pretraining finished but the method's :meth:`learning_check` found it did not learn."""


def write_json(path: Path, obj: Any) -> None:
    """JSON (indented, sorted keys) written atomically (:mod:`stainshift.atomic`)."""
    atomic.write_json(path, obj, indent=2, sort_keys=True, default=str)


def pretrain(method_name: str, stores: Sequence[str], cfg: dict[str, Any], out_dir: str | os.PathLike, *,
             meta: dict[str, Any] | None = None, on_no_learning: str = "fail",
             callbacks: Sequence[Callable[[int, dict[str, Any]], None]] = (), progress: bool = True) -> Path:
    """Pretrain ``method_name`` on ``stores`` with merged ``cfg``; write ``out_dir/encoder.pt``,
    ``metrics.csv`` and ``train_summary.json`` (budget, first/final losses, learning verdict).

    ``meta``: run provenance (source, source_kind, centers, seed, ...) copied into both files.
    After training, the method's ``learning_check(history)`` lists reasons it did not learn (loss at
    its chance level, collapsed embeddings): ``on_no_learning = "fail"`` raises
    :class:`DidNotLearnError` (the checkpoint is kept, so re-running with ``flag`` costs nothing),
    ``"flag"`` records the verdict for the report. A finished run deletes its resume checkpoint, so
    a forced re-run (``snakemake --forcerun pretrain_run``) trains from scratch. Under torchrun only
    rank 0 writes files. Returns the encoder path.
    """
    if on_no_learning not in ("fail", "flag"):
        raise ValueError(f"on_no_learning must be 'fail' or 'flag', got {on_no_learning!r}")
    out_dir = Path(out_dir)
    meta = dict(meta or {})
    device = select_device(cfg.get("device", "auto"))
    rank, world = init_distributed(device)
    torch.backends.cudnn.benchmark = device.type == "cuda" and not cfg.get("deterministic", False)
    cls = get_method_class(method_name)
    dataset = TileDataset(stores, labelled_only=cls.supervised, cache_mb=float(cfg.get("cache_mb", 512)))
    if len(dataset) == 0:
        raise ValueError(f"pretrain '{method_name}': no {'labelled ' if cls.supervised else ''}tiles in {list(stores)}")
    cfg = dict(cfg)
    if not cfg.get("image_size"):
        cfg["image_size"] = dataset.tile_size
    enc = dict(cfg["encoder"]) if isinstance(cfg["encoder"], dict) else {"arch": cfg["encoder"]}
    if str(enc.get("arch", "")).startswith("vit") and "image_size" not in enc:
        enc["image_size"] = int(cfg["image_size"])  # position-embedding grid of the tiles
    init = cfg.get("init")
    if init:  # pretrain.<method>.init: start from a state-dict file; its sha256 joins the run fingerprint
        from stainshift.external import file_sha256

        init = {"file": init} if isinstance(init, str) else dict(init)
        init["sha256"] = file_sha256(init["file"])
        enc["init"] = cfg["init"] = init
        meta["init"] = {"file": init["file"], "sha256": init["sha256"]}
    cfg["encoder"] = enc
    if cfg["image_size"] != dataset.tile_size:
        log.info("image_size %s ≠ tile size %d: views resize crops to image_size", cfg["image_size"], dataset.tile_size)
    num_classes = int(cfg.get("num_classes") or dataset.num_classes())
    seed = int(cfg.get("seed", 0))
    seed_everything(seed)  # identical initial weights on every rank
    method = build_method(method_name, cfg, num_classes)
    seed_everything(seed + 1009 * rank)  # per-rank augmentation streams
    t0 = time.perf_counter()
    history = fit(method, dataset, cfg, out_dir, device=device, callbacks=callbacks, progress=progress)
    seconds = time.perf_counter() - t0
    path = out_dir / "encoder.pt"
    if rank == 0:
        check = getattr(method, "learning_check", None)
        reasons = [str(r) for r in check(history)] if check is not None else []
        learning = {"status": "did_not_learn" if reasons else "ok", "reasons": reasons}
        epochs = int(cfg["epochs"])
        summary = {
            "method": method_name, **meta, "epochs": epochs, "tiles": len(dataset),
            "images_seen": int(sum(r.get("images", 0) for r in history)),
            "batch_size": int(cfg["batch_size"]), "num_classes": num_classes, "tile_size": dataset.tile_size,
            "train_stores": list(stores), "first": history[0] if history else {},
            "final": history[-1] if history else {}, "learning": learning, "seconds": round(seconds, 1),
        }
        for reason in reasons:
            log.warning("%s did not learn: %s", method_name, reason)
        if reasons and on_no_learning == "fail":
            raise DidNotLearnError(
                f"pretrain '{method_name}' ({meta.get('source', '')}, seed {seed}) did not learn: "
                + "; ".join(reasons) + ". Per-epoch losses: " + str(out_dir / "metrics.csv")
                + ". Fix the recipe, or set pretrain.on_no_learning: flag to report it as 'did not learn'.")
        extra: dict[str, Any] = {}
        native = getattr(method, "native_classifier", None)
        classifier = native() if native is not None else None
        if classifier is not None:
            extra["native_head"] = {"spec": classifier.head.spec,
                                    "state_dict": {k: v.detach().cpu() for k, v in classifier.head.state_dict().items()}}
        save_encoder(method.export_encoder(), path, method=method_name, epochs=epochs, num_classes=num_classes,
                     tile_size=dataset.tile_size, train_stores=list(stores), learning=learning, meta=meta,
                     final_loss=float(history[-1]["loss"]) if history else float("nan"), **extra)
        write_json(out_dir / "train_summary.json", summary)
        (out_dir / "checkpoints" / "last.pt").unlink(missing_ok=True)  # done: a forced re-run starts afresh
        log.info("wrote %s (%s)", path, learning["status"])
    if world > 1:
        dist.barrier()
    return path


# ---------------------------------------------------------------------------------------------
# features
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def encode_images(model: nn.Module, images: np.ndarray | torch.Tensor, device: torch.device,
                  batch_size: int = 128) -> np.ndarray:
    """Run ``model`` on uint8 (N, S, S, 3) tiles in batches → float32 numpy outputs."""
    model.eval()
    outs = []
    for start in range(0, len(images), batch_size):
        chunk = torch.as_tensor(np.asarray(images[start:start + batch_size])).permute(0, 3, 1, 2)
        x = chunk.to(device).float().div_(255.0)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=device.type == "cuda"):
            outs.append(model(x).float().cpu())
    dim = getattr(model, "out_dim", None)
    if not outs:
        return np.zeros((0, dim or 0), np.float32)
    return torch.cat(outs).numpy().astype(np.float32)
