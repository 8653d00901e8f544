"""Training views of every method: batched kornia pipelines (on the batch's device).

Inputs are uint8 (or float [0, 1]) (B, 3, H, W) batches from :mod:`stainshift.data`; outputs are
float32 (B, 3, H, W) in [0, 1], the encoders' input convention (:mod:`stainshift.models`).

:class:`Views` is the single pipeline. Its rules, the same for every method:

- **geometry** (one draw shared by every view passed in one call): horizontal / vertical flips,
  rot90, rotation by an angle in [−``rotation``, ``rotation``]° with **reflection padding**, and a
  **square crop** whose side is a fraction in [``crop_min``, ``crop_max``] of the tile side (area
  in [crop_min², crop_max²], sampled uniformly in area by kornia's ``RandomResizedCrop`` with
  aspect ratio 1) resized back to ``size``;
- **photometric** (drawn independently per view): H&E-space scaling (seed 003, uint8 input),
  colour jitter, grayscale, Gaussian blur, additive Gaussian noise; the output is clamped to [0, 1].

``views(x, x_bar, ...)`` augments several batches of the *same* samples with one geometric draw
(seed 000: x_i and its normalized x̄_i stay the same sample) and independent noise per view;
``forward(x)`` augments one batch. The presets below are the seeds' sets; each method adds only what
its seed adds (stain normalization for ``stain_embed``, H&E scaling for ``lmc``):

- :class:`BaselineAug` — seed 000 (``baseline``, ``stain_embed``/``stain_embed_c``, full
  fine-tuning), p = 0.5 each: h/v flips, rotation ±20°, Gaussian noise σ = 0.08, crop ≥ 90 % of the side.
- :class:`SimCLRViews` — seed 001 (``simclr``; SimCLR-style views of ``sassl``): crop of area
  ``crop_scale`` (0.15–1; square: side √0.15 = 0.39 to 1), rot90, flips, colour jitter
  light/medium/heavy with p = 0.8, blur p = 0.5 with σ ~ U[0.1, 2] and kernel 0.1 × side (odd).
- :class:`HEViews` — seed 003 (``lmc``): H&E scaling α, β ~ U[0.5, 2] of each view
  (:func:`stainshift.augment.he_augment`); optional flips, rot90 and crop (not in the seed).
Every transform can be switched off (``p: 0``), e.g. for deterministic tests.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import kornia.augmentation as K
import torch
from torch import nn

from stainshift.augment.he import he_scale

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


def _odd(k: float) -> int:
    k = max(3, int(k))
    return k if k % 2 else k + 1


class ColorJitter(nn.Module):
    """Colour jitter with probability ``p`` per image: kornia's brightness / contrast / saturation
    (random order), then a hue rotation by h ~ U[−hue, hue] of a full turn.

    The hue step rotates the chroma plane of YUV (one 3 × 3 matrix per image, the linear form of a
    hue shift): kornia's HSV hue adjustment took 0.7 s per 64 tiles of 128 px on 2 CPU cores,
    more than the ResNet step itself; the matrix takes 0.01 s.
    """

    _RGB2YUV = ((0.299, 0.587, 0.114), (-0.14713, -0.28886, 0.436), (0.615, -0.51499, -0.10001))

    def __init__(self, brightness: float, contrast: float, saturation: float, hue: float, p: float) -> None:
        super().__init__()
        self.bcs = K.ColorJitter(brightness, contrast, saturation, 0.0, p=1.0) if max(brightness, contrast, saturation) > 0 else None
        self.hue, self.p = float(hue), float(p)
        rgb2yuv = torch.tensor(self._RGB2YUV)
        self.register_buffer("rgb2yuv", rgb2yuv, persistent=False)
        self.register_buffer("yuv2rgb", torch.linalg.inv(rgb2yuv), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Jitter brightness / contrast / saturation, then rotate hue per image; output clamped to [0, 1]."""
        n = x.shape[0]
        y = self.bcs(x).clamp(0.0, 1.0) if self.bcs is not None else x
        if self.hue > 0:
            angle = (torch.rand(n, device=x.device) * 2 - 1) * self.hue * 2 * math.pi
            rot = torch.zeros(n, 3, 3, device=x.device, dtype=x.dtype)
            rot[:, 0, 0] = 1.0
            rot[:, 1, 1], rot[:, 1, 2] = angle.cos(), -angle.sin()
            rot[:, 2, 1], rot[:, 2, 2] = angle.sin(), angle.cos()
            mat = self.yuv2rgb.to(x.dtype) @ rot @ self.rgb2yuv.to(x.dtype)
            y = torch.einsum("bij,bjhw->bihw", mat, y)
        keep = torch.rand(n, device=x.device) >= self.p
        return torch.where(keep.view(-1, 1, 1, 1), x, y)


class RandomRot90(nn.Module):
    """Rotate each image by k · 90°, k ~ U{0, 1, 2, 3} (exact index permutation, square images;
    kornia's ``RandomRotation90`` resamples through a warp and took 10× longer on CPU)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Rotate each image by k × 90°, k ~ U{0, 1, 2, 3} per image."""
        k = torch.randint(0, 4, (x.shape[0],), device=x.device)
        out = x.clone()
        for turns in (1, 2, 3):
            sel = k == turns
            if bool(sel.any()):
                out[sel] = torch.rot90(x[sel], turns, dims=(-2, -1))
        return out


class Views(nn.Module):
    """Shared geometry + per-view photometric augmentation (see the module docstring for the rules).

    Probabilities: ``flip_p`` (each axis), ``rotation_p``, ``crop_p``, ``jitter_p``, ``grayscale_p``,
    ``blur_p``, ``noise_p``, ``he_p``; ``rot90`` draws k ∈ {0, 1, 2, 3} uniformly. A transform with
    probability 0 (or a zero range) is not built.
    """

    def __init__(self, size: int, *, flip_p: float = 0.0, rot90: bool = False, rotation: float = 0.0,
                 rotation_p: float = 0.0, crop_min: float = 1.0, crop_max: float = 1.0, crop_p: float = 0.0,
                 jitter: str = "none", jitter_p: float = 0.0, grayscale_p: float = 0.0, blur_p: float = 0.0,
                 blur_sigma: Sequence[float] = (0.1, 2.0), blur_kernel_frac: float = 0.1, noise_std: float = 0.0,
                 noise_p: float = 0.0, he_p: float = 0.0, alpha_range: Sequence[float] = (0.5, 2.0),
                 beta_range: Sequence[float] = (0.5, 2.0)) -> None:
        super().__init__()
        if jitter not in JITTER:
            raise ValueError(f"view 'jitter' must be one of {sorted(JITTER)}, got '{jitter}'")
        if not 0 < crop_min <= crop_max <= 1:
            raise ValueError(f"crop side fractions must satisfy 0 < crop_min <= crop_max <= 1, got {crop_min}, {crop_max}")
        self.size = int(size)
        self.he_p, self.alpha_range, self.beta_range = float(he_p), tuple(alpha_range), tuple(beta_range)
        geo: list[nn.Module] = []
        if flip_p > 0:
            geo += [K.RandomHorizontalFlip(p=flip_p), K.RandomVerticalFlip(p=flip_p)]
        if rot90:
            geo.append(RandomRot90())
        if rotation > 0 and rotation_p > 0:
            geo.append(K.RandomAffine(degrees=rotation, padding_mode="reflection", p=rotation_p))
        if crop_p > 0 and crop_min < 1:
            geo.append(K.RandomResizedCrop((self.size, self.size), scale=(crop_min**2, crop_max**2), ratio=(1.0, 1.0),
                                           p=crop_p, cropping_mode="resample"))
        photo: list[nn.Module] = []
        if jitter != "none" and jitter_p > 0:
            photo.append(ColorJitter(*JITTER[jitter], p=jitter_p))
        if grayscale_p > 0:
            photo.append(K.RandomGrayscale(p=grayscale_p))
        if blur_p > 0:
            photo.append(K.RandomGaussianBlur(_odd(blur_kernel_frac * self.size), tuple(blur_sigma), p=blur_p))
        if noise_std > 0 and noise_p > 0:
            photo.append(K.RandomGaussianNoise(mean=0.0, std=noise_std, p=noise_p))
        self.geometric = nn.Sequential(*geo)
        self.photometric = nn.Sequential(*photo)

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        if self.he_p > 0:
            images = he_scale(images, self.alpha_range, self.beta_range, self.he_p)
        x = to_float(images)
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = nn.functional.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False,
                                          antialias=True)
        return x

    def views(self, *batches: torch.Tensor) -> list[torch.Tensor]:
        """Augment batches of the same samples: one geometric draw for all, photometric per view."""
        if not batches:
            raise ValueError("views() needs at least one batch")
        xs = [self._prepare(b) for b in batches]
        stacked = self.geometric(torch.cat(xs, dim=1)) if len(self.geometric) else torch.cat(xs, dim=1)
        out = []
        for v in stacked.split(3, dim=1):
            v = self.photometric(v) if len(self.photometric) else v
            out.append(v.clamp(0.0, 1.0))
        return out

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """One augmented view of ``images``."""
        return self.views(images)[0]


class BaselineAug(Views):
    """Seed 000's set (each with probability ``p``): h/v flips, rotation ±``rotation``° (reflection
    padding), square crop of side ≥ ``crop_min`` resized back, Gaussian noise σ = ``noise_std``;
    ``rot90`` (off in the seed) adds a random multiple of 90°."""

    def __init__(self, size: int, p: float = 0.5, rotation: float = 20.0, noise_std: float = 0.08,
                 crop_min: float = 0.9, rot90: bool = False) -> None:
        super().__init__(size, flip_p=p, rot90=rot90, rotation=rotation, rotation_p=p, crop_min=crop_min, crop_p=p,
                         noise_std=noise_std, noise_p=p)


class SimCLRViews(Views):
    """Seed 001's view (call once per view): square crop of area in ``crop_scale`` (always), rot90,
    flips, colour jitter ``jitter`` with ``jitter_p``, grayscale, Gaussian blur."""

    def __init__(self, size: int, crop_scale: Sequence[float] = (0.15, 1.0), jitter: str = "medium",
                 jitter_p: float = 0.8, grayscale_p: float = 0.0, blur_p: float = 0.5,
                 blur_sigma: Sequence[float] = (0.1, 2.0), blur_kernel_frac: float = 0.1, flip_p: float = 0.5,
                 rot90: bool = True) -> None:
        lo, hi = (math.sqrt(float(a)) for a in crop_scale)
        super().__init__(size, flip_p=flip_p, rot90=rot90, crop_min=lo, crop_max=hi, crop_p=1.0, jitter=jitter,
                         jitter_p=jitter_p, grayscale_p=grayscale_p, blur_p=blur_p, blur_sigma=blur_sigma,
                         blur_kernel_frac=blur_kernel_frac)


class HEViews(Views):
    """Seed 003's view: H&E scaling (α ∈ ``alpha_range``, β ∈ ``beta_range``) with probability
    ``he_p``; our additions, off in the seed's defaults: flips, rot90 and a square crop of area in
    ``crop_scale`` (as :class:`SimCLRViews`)."""

    def __init__(self, size: int, alpha_range: Sequence[float] = (0.5, 2.0), beta_range: Sequence[float] = (0.5, 2.0),
                 flip_p: float = 0.0, rot90: bool = False, he_p: float = 1.0,
                 crop_scale: Sequence[float] = (1.0, 1.0)) -> None:
        lo, hi = (math.sqrt(float(a)) for a in crop_scale)
        super().__init__(size, flip_p=flip_p, rot90=rot90, crop_min=lo, crop_max=hi, crop_p=1.0, he_p=he_p,
                         alpha_range=alpha_range, beta_range=beta_range)


VIEWS = {"baseline": BaselineAug, "simclr": SimCLRViews, "he": HEViews}


def build_views(kind: str, size: int, cfg: dict[str, Any] | None) -> Views:
    """Views by name (``baseline`` | ``simclr`` | ``he``) with keyword settings ``cfg``."""
    if kind not in VIEWS:
        raise ValueError(f"unknown views '{kind}' (expected {', '.join(VIEWS)})")
    try:
        return VIEWS[kind](int(size), **dict(cfg or {}))
    except TypeError as err:
        raise TypeError(f"views '{kind}': {err} (key 'views')") from err
