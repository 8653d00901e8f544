"""Pretraining methods: one registry (``build_method``), the interface in :mod:`.base`.

Importing this package registers the built-in methods (their settings, torch-free:
:data:`stainshift.train.config.METHOD_SETTINGS`).
"""
from __future__ import annotations

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
from stainshift.methods import baseline, lmc, sassl, simclr, stain_embed  # noqa: F401  (registration)

__all__ = ["LARS", "Method", "StepContext", "available_methods", "build_method", "build_optimizer",
           "build_scheduler", "get_method_class", "register_method"]
