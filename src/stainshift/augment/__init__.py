"""stainshift.augment: every augmentation in one package.

- :mod:`stainshift.augment.views` — the training views of every method (kornia; one padding rule,
  one crop definition, one geometric draw replayed on several batches of the same samples).
- :mod:`stainshift.augment.he` — H&E-space scaling (seed 003): numpy / torch on uint8 tiles
  (:func:`he_augment`, also behind the re-staining curve) and the views' batch wrapper (:func:`he_scale`).
"""
from __future__ import annotations

from stainshift.augment.he import he_augment, he_scale
from stainshift.augment.views import (
    JITTER,
    VIEWS,
    BaselineAug,
    ColorJitter,
    HEViews,
    RandomRot90,
    SimCLRViews,
    Views,
    build_views,
    to_float,
)

__all__ = [
    "JITTER",
    "VIEWS",
    "BaselineAug",
    "ColorJitter",
    "HEViews",
    "RandomRot90",
    "SimCLRViews",
    "Views",
    "build_views",
    "he_augment",
    "he_scale",
    "to_float",
]
