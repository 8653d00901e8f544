"""Stain normalization for H&E: Reinhard, Macenko, Vahadane (H&E-space scaling: :mod:`stainshift.augment`).

All tools take uint8 RGB images ``(H, W, 3)`` or batches ``(N, H, W, 3)`` as numpy arrays or torch
tensors (any device) and return the same type, device and shape; inputs are never modified.
Background (near-white) pixels are excluded from estimation and stay white; images without a
usable estimate fall back to the identity and are flagged in ``normalizer.last_flags``.

>>> n = get_normalizer("macenko").fit(target)      # target (H,W,3) uint8
>>> out = n.transform(batch)                        # (N,H,W,3) uint8, same type/device
>>> out = n.fit_transform_torch(batch_t, ref_t)     # all in torch (GPU when the tensors are)

The names below load on first use (``lazy_loader``): the workflow's parse step imports
:mod:`stainshift.stain.targets` (the normalize plan), which must not import torch or numba.
"""
from __future__ import annotations

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "_common": ["LabParams", "Normalizer", "StainParams"],
        "macenko": ["Macenko"],
        "reinhard": ["Reinhard"],
        "vahadane": ["Vahadane"],
        "normalizers": ["METHODS", "concentrations", "get_normalizer", "stain_matrix"],
    },
)
