"""Method settings: the merged config of one method (seed defaults ← pretrain.defaults ←
pretrain.<method>) and the parse-time check of every key and type."""
from __future__ import annotations

import copy
from typing import Any

from stainshift.methods import get_method_class


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
LOOP_KEYS = ("encoder", "epochs", "min_steps", "batch_size", "device", "num_workers", "resume", "deterministic",
             "find_unused_parameters", "num_classes", "init", "optimizers")


def method_settings(method: str) -> dict[str, Any]:
    """Every setting ``pretrain.<method>`` accepts → its default (None where there is none)."""
    from stainshift.methods.base import OPTIMIZER_KEYS

    cls = get_method_class(method)
    known: dict[str, Any] = dict.fromkeys((*LOOP_KEYS, *OPTIMIZER_KEYS))
    return {**known, **cls.base_defaults, **cls.seed_defaults}


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
