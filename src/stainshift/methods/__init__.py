"""Pretraining methods: one registry (``build_method``), the interface in :mod:`.base`.

Importing this package registers the built-in methods; issue-6 methods (``stain_embed``,
``stain_embed_c``, ``sassl``) register themselves from their modules, imported here when present.
"""
from __future__ import annotations

import importlib

from stainshift.methods.base import (
    LARS,
    Method,
    StepContext,
    available_methods,
    build_method,
    build_optimizer,
    build_scheduler,
    get_method_class,
    register_method,
)
from stainshift.methods import baseline, lmc, simclr  # noqa: F401  (registration)

for _optional in ("stain_embed", "sassl"):
    try:
        importlib.import_module(f"stainshift.methods.{_optional}")
    except ModuleNotFoundError as exc:  # module not written yet: only skip when it is that module itself
        if exc.name != f"stainshift.methods.{_optional}":
            raise

__all__ = ["LARS", "Method", "StepContext", "available_methods", "build_method", "build_optimizer",
           "build_scheduler", "get_method_class", "register_method"]
