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

The names below are the package's public API (``from stainshift.train import pretrain``). They are
loaded on first use (``lazy_loader``): the workflow imports :mod:`stainshift.train.config` at parse
time, and that must not import torch (see that module).
"""

from __future__ import annotations

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "checkpoint": ["atomic_save", "load", "load_encoder", "package_digest", "run_fingerprint", "save_encoder",
                       "write_json"],
        "config": ["check_pretrain_config", "deep_merge", "method_config", "method_settings"],
        "loop": ["NonFiniteLossError", "fit"],
        "predict": ["encode_images"],
        "pretrain": ["DidNotLearnError", "pretrain"],
        "runtime": ["dist_info", "init_distributed", "seed_everything", "select_device"],
    },
)
