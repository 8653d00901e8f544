"""Method settings: every built-in method's seed defaults, the merged config of one method (base
defaults ← seed defaults ← pretrain.defaults ← pretrain.<method>) and the parse-time check of every
key and type.

Torch-free on purpose: the Snakefile reads these when it parses (every Snakemake start, i.e. every
cluster job), and importing torch and the method modules there cost ≈ 3.5 s per start. The method
classes (:mod:`stainshift.methods`) take their ``supervised`` flag from :data:`METHOD_SETTINGS`.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

#: settings shared by every method unless overridden (loop keys, see stainshift.train.fit)
BASE_DEFAULTS: dict[str, Any] = {
    "image_size": None, "grad_clip": None, "amp": True, "amp_dtype": "float16", "channels_last": True,
    "sync_bn": True, "tiles_per_slide": 2, "num_workers": 4, "cache_mb": 512, "seed": 0, "schedule": "constant",
    "warmup_epochs": 0,
}

#: a method's optimizer settings (top level, or per optimizer under ``optimizers: {name: ...}``)
OPTIMIZER_KEYS = ("optimizer", "lr", "weight_decay", "momentum", "betas", "schedule", "warmup_epochs",
                  "final_lr", "anneal_fraction", "milestones", "gamma", "lr_scale_batch", "batch_size",
                  "trust_coefficient")


@dataclass(frozen=True)
class MethodSettings:
    """What the workflow knows of a built-in method before any model code is imported:
    ``supervised`` (trains on tile labels; its end-to-end classifier is its native downstream) and
    ``seed_defaults`` (the seed paper's parameters, DESIGN.md "Methods"; docs/methods.md)."""

    supervised: bool = False
    seed_defaults: dict[str, Any] = field(default_factory=dict)


# seed 000, Sec. II and III-A (stainshift.methods.stain_embed's docstring); the ℓ_c reduction is our reading
_STAIN_EMBED = MethodSettings(supervised=True, seed_defaults={
    "encoder": {"arch": "resnet18_narrow"}, "epochs": 60, "batch_size": 20, "optimizer": "adam",
    "betas": [0.9, 0.999], "lr": 1e-4, "schedule": "step", "milestones": [35], "gamma": 0.1,
    "weight_decay": 0.0, "views": {"p": 0.5, "rotation": 20.0, "noise_std": 0.08, "crop_min": 0.9},
    "head_hidden": 512, "tau": 0.70, "w_c": 1.0, "w_e": 1.0, "embed_layer": "encoder.stages.3",
    "num_negatives": None, "contrastive_reduction": "mean",
    "stain_methods": ["macenko", "reinhard", "vahadane"], "stain_probs": None, "stain_backend": "auto",
    "class_weight": None,
})

#: the built-in methods (``stainshift.methods`` registers a class under each name)
METHOD_SETTINGS: dict[str, MethodSettings] = {
    # seed 000 (same encoder, optimizer and augmentations as its stain-embedding model)
    "baseline": MethodSettings(supervised=True, seed_defaults={
        "encoder": {"arch": "resnet18_narrow"}, "epochs": 60, "batch_size": 20, "optimizer": "adam",
        "lr": 1e-4, "schedule": "step", "milestones": [35], "gamma": 0.1, "weight_decay": 0.0,
        "views": {"p": 0.5, "rotation": 20.0, "noise_std": 0.08, "crop_min": 0.9}, "label_smoothing": 0.0,
        "class_weight": None,
    }),
    # seed 001: ResNet18, batch 256–512, LARS lr 0.3×bs/256, wd 1e-6, τ 0.1; crop of 15–100 % of the
    # area, rot90, flips, heavy jitter (its Table 2 best), blur p 0.5. Warm-up 10 epochs + cosine as in
    # Chen et al. 2020a (seed 001 states neither).
    "simclr": MethodSettings(seed_defaults={
        "encoder": {"arch": "resnet18"}, "epochs": 100, "batch_size": 256, "optimizer": "lars", "lr": 0.3,
        "lr_scale_batch": True, "weight_decay": 1e-6, "momentum": 0.9, "schedule": "cosine",
        "warmup_epochs": 10, "temperature": 0.1, "proj_dim": 128, "proj_hidden": None, "proj_bn": False,
        "views": {"crop_scale": [0.15, 1.0], "jitter": "heavy", "jitter_p": 0.8, "blur_p": 0.5,
                  "blur_sigma": [0.1, 2.0], "blur_kernel_frac": 0.1, "flip_p": 0.5, "rot90": True},
    }),
    # seed 003: ViT-tiny (12 blocks, 3 heads, dim 192), AdamW wd 0.01, batch 32, warm-up → 1e-4 →
    # anneal to 1e-7, λ 0.005, α, β ~ U[0.5, 2] (no other augmentation stated), 256 px patches.
    "lmc": MethodSettings(seed_defaults={
        "encoder": {"arch": "vit_tiny", "patch": 16}, "epochs": 100, "batch_size": 32, "optimizer": "adamw",
        "lr": 1e-4, "weight_decay": 0.01, "schedule": "wsa", "warmup_epochs": 10, "anneal_fraction": 0.2,
        "final_lr": 1e-7, "lambd": 0.005, "proj_hidden": 2048, "proj_dim": 2048, "proj_layers": 2,
        "proj_bn": True, "views": {"alpha_range": [0.5, 2.0], "beta_range": [0.5, 2.0], "flip_p": 0.0, "rot90": False},
    }),
    # seed 002 names the backbone (ResNet50), SimSiam as the default base, 100 balanced patches
    # per WSI and same-slide pairs in every batch; it gives no optimizer settings, so the SSL side
    # takes SimSiam's (SGD 0.05 × batch/256, momentum 0.9, wd 1e-4, cosine; batch 512) and D an
    # Adam 1e-3 (our choice, a small MLP discriminator).
    "sassl": MethodSettings(seed_defaults={
        "encoder": {"arch": "resnet50"}, "epochs": 100, "batch_size": 512, "tiles_per_slide": 4,
        "optimizer": "sgd", "lr": 0.05, "lr_scale_batch": True, "momentum": 0.9, "weight_decay": 1e-4,
        "schedule": "cosine",
        "optimizers": {"disc": {"optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0, "schedule": "constant",
                                "lr_scale_batch": False}},
        "views": {"crop_scale": [0.2, 1.0], "jitter": "light", "jitter_p": 0.8, "grayscale_p": 0.2,
                  "blur_p": 0.5},
        "ssl_base": "simsiam", "proj_dim": 2048, "pred_dim": 512, "tau": None, "momentum_ema": 0.99,
        "queue_size": 4096, "disc_hidden": None, "disc_depth": 2, "adv_weight": 1.0, "adv_mode": "paper",
        "affinity": "cosine", "d_steps": 1,
    }),
    "stain_embed": _STAIN_EMBED,
    "stain_embed_c": _STAIN_EMBED,  # seed 000's "Ours(c)": the same settings, another loss
}


def builtin_methods() -> list[str]:
    """Names of the built-in methods (sorted)."""
    return sorted(METHOD_SETTINGS)


def settings_of(method: str) -> MethodSettings:
    """The built-in method's :class:`MethodSettings`; the error lists the built-in names."""
    if method not in METHOD_SETTINGS:
        raise KeyError(f"unknown method '{method}'; built-in: {', '.join(builtin_methods())}")
    return METHOD_SETTINGS[method]


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
    """Merged settings of one method: base defaults ← its ``seed_defaults`` (seed paper)
    ← ``pretrain.defaults`` ← ``pretrain.<method>``; top-level ``pretrain.device`` /
    ``num_workers`` apply unless the method block sets them. The run's replicate seed
    (``pretrain.seeds``) is set by the caller.
    """
    settings = settings_of(method)
    block = pretrain_cfg.get(method) or {}
    cfg: dict[str, Any] = {}
    for layer in (BASE_DEFAULTS, settings.seed_defaults, pretrain_cfg.get("defaults") or {}, block):
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
LOOP_KEYS = ("encoder", "epochs", "min_steps", "batch_size", "device", "num_workers", "resume", "deterministic",
             "find_unused_parameters", "num_classes", "init", "optimizers")


def method_settings(method: str) -> dict[str, Any]:
    """Every setting ``pretrain.<method>`` accepts → its default (None where there is none)."""
    known: dict[str, Any] = dict.fromkeys((*LOOP_KEYS, *OPTIMIZER_KEYS))
    return {**known, **BASE_DEFAULTS, **settings_of(method).seed_defaults}


def _type_problem(key: str, value: Any, default: Any) -> str | None:
    """Why ``value`` cannot stand where ``default`` is (None if it can)."""
    if key == "min_steps" and value is not None:
        return None if isinstance(value, int) and not isinstance(value, bool) and value > 0 else "null or a positive integer"
    if key == "class_weight" and value is not None:
        return None if value in ("none", "balanced") else "null or 'balanced'"
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

    from stainshift.validation import ConfigError

    per_method = {m: method_settings(m) for m in builtin_methods()}
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
