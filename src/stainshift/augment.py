"""Batched, device-agnostic views with kornia (run on the GPU when the batch is there).

Inputs are uint8 (B, 3, H, W) batches from :mod:`stainshift.data`; outputs are float (B, 3, H, W)
in [0, 1] — the encoders' input convention (:mod:`stainshift.models`).

- :class:`BaselineAug` — seed 000's augmentations, p = 0.5 each: horizontal/vertical flips,
  rotation ±20°, Gaussian noise σ = 0.08, crops keeping ≥ 90 % of the side (resized back).
- :class:`SimCLRViews` — seed 001: random resized crop (scale min 0.15; ablation best 0.01),
  rot90, flips, colour jitter light/medium/heavy with p = 0.8, blur p = 0.5 with σ ~ U[0.1, 2]
  and kernel 0.1 × side (odd).
- :class:`HEViews` — seed 003 (LMC): H&E-space scaling (α, β ~ U[0.5, 2]) by
  :func:`stainshift.stain.he_augment`, then flips and rot90.
Every transform is configurable and can be switched off (``p: 0``), e.g. for deterministic tests.
"""
from __future__ import annotations

from typing import Any

import kornia.augmentation as K
import numpy as np
import torch
from torch import nn

JITTER = {
    "none": (0.0, 0.0, 0.0, 0.0),
    "light": (0.4, 0.4, 0.4, 0.2),
    "medium": (0.8, 0.8, 0.8, 0.2),
    "heavy": (0.8, 0.8, 0.8, 0.4),
}


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) → float32 in [0, 1]; float input is returned as float32 unchanged."""
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    return images.float()


def _odd(k: int) -> int:
    k = max(3, int(k))
    return k if k % 2 else k + 1


class BaselineAug(nn.Module):
    """Seed 000 augmentations (each with probability ``p``)."""

    def __init__(self, size: int, p: float = 0.5, rotation: float = 20.0, noise_std: float = 0.08,
                 crop_min: float = 0.9) -> None:
        super().__init__()
        self.size = size
        ops: list[nn.Module] = []
        if p > 0:
            ops = [
                K.RandomHorizontalFlip(p=p),
                K.RandomVerticalFlip(p=p),
                K.RandomRotation(degrees=rotation, p=p),
                K.RandomResizedCrop((size, size), scale=(crop_min**2, 1.0), ratio=(1.0, 1.0), p=p),
                K.RandomGaussianNoise(mean=0.0, std=noise_std, p=p),
            ]
        self.ops = nn.Sequential(*ops)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.ops(to_float(images)).clamp_(0.0, 1.0)


class SimCLRViews(nn.Module):
    """One SimCLR view per call (call twice for the pair)."""

    def __init__(self, size: int, crop_scale: tuple[float, float] = (0.15, 1.0), jitter: str = "medium",
                 jitter_p: float = 0.8, grayscale_p: float = 0.0, blur_p: float = 0.5,
                 blur_sigma: tuple[float, float] = (0.1, 2.0), blur_kernel_frac: float = 0.1,
                 flip_p: float = 0.5, rot90: bool = True) -> None:
        super().__init__()
        if jitter not in JITTER:
            raise ValueError(f"simclr view 'jitter' must be one of {sorted(JITTER)}, got '{jitter}'")
        ops: list[nn.Module] = [K.RandomResizedCrop((size, size), scale=tuple(crop_scale), p=1.0)]
        if rot90:
            ops.append(K.RandomRotation90(times=(0, 3), p=1.0))
        if flip_p > 0:
            ops += [K.RandomHorizontalFlip(p=flip_p), K.RandomVerticalFlip(p=flip_p)]
        if jitter != "none" and jitter_p > 0:
            ops.append(K.ColorJitter(*JITTER[jitter], p=jitter_p))
        if grayscale_p > 0:
            ops.append(K.RandomGrayscale(p=grayscale_p))
        if blur_p > 0:
            ops.append(K.RandomGaussianBlur(_odd(blur_kernel_frac * size), tuple(blur_sigma), p=blur_p))
        self.ops = nn.Sequential(*ops)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.ops(to_float(images)).clamp_(0.0, 1.0)


class HEViews(nn.Module):
    """LMC view: H&E-space scaling of the uint8 batch, then flips / rot90 on the float batch."""

    def __init__(self, alpha_range: tuple[float, float] = (0.5, 2.0), beta_range: tuple[float, float] = (0.5, 2.0),
                 flip_p: float = 0.5, rot90: bool = True, he_p: float = 1.0) -> None:
        super().__init__()
        self.alpha_range = tuple(alpha_range)
        self.beta_range = tuple(beta_range)
        self.he_p = he_p
        ops: list[nn.Module] = []
        if rot90:
            ops.append(K.RandomRotation90(times=(0, 3), p=1.0))
        if flip_p > 0:
            ops += [K.RandomHorizontalFlip(p=flip_p), K.RandomVerticalFlip(p=flip_p)]
        self.ops = nn.Sequential(*ops)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8:
            raise TypeError("HEViews expects uint8 (B, 3, H, W) images (H&E deconvolution works on uint8 RGB)")
        if self.he_p > 0:
            from stainshift.stain import he_augment

            # he_augment works on (N, H, W, 3); draw its randomness from torch's RNG so runs are reproducible
            seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
            gen = np.random.default_rng(seed)
            hwc = images.permute(0, 2, 3, 1)
            aug = he_augment(hwc, alpha_range=self.alpha_range, beta_range=self.beta_range, rng=gen)
            aug = torch.as_tensor(aug, device=images.device).permute(0, 3, 1, 2)
            if self.he_p < 1:
                keep = torch.rand(len(images), device=images.device) >= self.he_p
                aug = torch.where(keep.view(-1, 1, 1, 1), images, aug)
            images = aug
        return self.ops(to_float(images)).clamp_(0.0, 1.0)


def build_views(kind: str, size: int, cfg: dict[str, Any] | None) -> nn.Module:
    """Views by name (``baseline`` | ``simclr`` | ``he``) with keyword settings from ``cfg``."""
    cfg = dict(cfg or {})
    if kind == "baseline":
        return BaselineAug(size, **cfg)
    if kind == "simclr":
        return SimCLRViews(size, **cfg)
    if kind == "he":
        return HEViews(**cfg)
    raise ValueError(f"unknown views '{kind}' (expected baseline, simclr or he)")
