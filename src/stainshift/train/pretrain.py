"""Pretraining entry point: build the method, run :func:`stainshift.train.loop.fit`, check that it
learnt, write ``encoder.pt`` and ``train_summary.json``."""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.distributed as dist

from stainshift.data import TileDataset
from stainshift.methods import build_method, get_method_class
from stainshift.train.checkpoint import save_encoder, write_json
from stainshift.train.loop import fit
from stainshift.train.runtime import init_distributed, seed_everything, select_device

log = logging.getLogger("stainshift.train")


class DidNotLearnError(RuntimeError):
    """Pretraining finished but the method's :meth:`learning_check` found it did not learn."""


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
    if cls.supervised and cfg.get("class_weight") not in (None, "none"):
        # the training tiles' label counts: class_weight: balanced weighs the CE by n / (C n_c)
        labelled = dataset.labels[dataset.labels >= 0]
        cfg["class_counts"] = np.bincount(labelled, minlength=num_classes)[:num_classes].tolist()
        meta["class_counts"] = cfg["class_counts"]
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
        epochs = int(history[-1]["epoch"]) if history else int(cfg["epochs"])  # min_steps may raise it
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
