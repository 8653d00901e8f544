"""stainshift.train: everything that trains or runs a model, one module per step of a run.

=================  ===========================================================================
module             what it owns
=================  ===========================================================================
``config``         merged method settings (seed defaults ← ``pretrain.defaults`` ← per method), key checks
``runtime``        seeds, devices, torchrun's process group
``loop``           :func:`fit`: the shared training loop (AMP, resume, DDP, per-epoch metrics)
``checkpoint``     atomic torch saves, ``weights_only`` loads, RNG states, resume fingerprint, ``encoder.pt``
``pretrain``       :func:`pretrain`: method → loop → learning check → ``encoder.pt`` + summary
``finetune``       linear probes, native heads, full fine-tuning, thresholds, predictions
``predict``        :func:`encode_images`: features of uint8 tiles
=================  ===========================================================================

The names below are the package's public API (``from stainshift.train import pretrain``).
"""
from __future__ import annotations

from stainshift.train.checkpoint import (
    atomic_save,
    load,
    load_encoder,
    package_digest,
    run_fingerprint,
    save_encoder,
    write_json,
)
from stainshift.train.config import check_pretrain_config, deep_merge, method_config, method_settings
from stainshift.train.loop import NonFiniteLossError, fit
from stainshift.train.predict import encode_images
from stainshift.train.pretrain import DidNotLearnError, pretrain
from stainshift.train.runtime import dist_info, init_distributed, seed_everything, select_device

__all__ = [
    "DidNotLearnError",
    "NonFiniteLossError",
    "atomic_save",
    "check_pretrain_config",
    "deep_merge",
    "dist_info",
    "encode_images",
    "fit",
    "init_distributed",
    "load",
    "load_encoder",
    "method_config",
    "method_settings",
    "package_digest",
    "pretrain",
    "run_fingerprint",
    "save_encoder",
    "seed_everything",
    "select_device",
    "write_json",
]
