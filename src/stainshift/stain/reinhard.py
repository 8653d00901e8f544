"""Reinhard colour transfer in CIELAB (Reinhard et al. 2001, as used for H&E by StainTools).

Each LAB channel of the tissue pixels is standardised and given the target's tissue mean and
standard deviation. Background pixels (every channel OD < beta, i.e. near white) are excluded from
the statistics and blended back to the input.

Fast path: with f = (fx, fy, fz) the CIELAB companding of XYZ, LAB is an affine map of f, so
"standardise then rescale" in LAB is one 3x3 affine map in f-space. Per pixel that is: sRGB
decoding (256-entry table), a 3x3 matrix, a cube root, a 3x3 affine map, a cube, a 3x3 matrix and
sRGB encoding — one fused numba pass per image (``kernels.reinhard_map``). The statistics of a transformed image use a fixed strided subsample of at most
``sample_pixels`` pixels; ``fit`` uses every pixel of the target.
Conversions follow skimage.color.rgb2lab (D65, 2 degree observer); the tests check that.
"""
from __future__ import annotations

import numpy as np
import torch

from ._common import (
    LabParams,
    Normalizer,
    background_weight_line,
    blend_torch,
    enough_tissue,
    min_tissue_torch,
    target_error,
    weight_torch,
)
from . import kernels
from .macenko import sample_stride, tissue_threshold

# sRGB (linear) -> XYZ, rows X, Y, Z; white point D65 (skimage's 'D65', '2').
_RGB2XYZ = np.array(
    [[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]]
)
_WHITE = np.array([0.95047, 1.0, 1.08883])
#: linear RGB -> white-normalised XYZ (row-vector convention: xyz = lin @ RGB2XYZN)
RGB2XYZN = (_RGB2XYZ / _WHITE[:, None]).T
XYZN2RGB = np.linalg.inv(RGB2XYZN)
# LAB = f @ F2LAB + LAB_OFFSET
F2LAB = np.array([[0.0, 500.0, 0.0], [116.0, -500.0, 200.0], [0.0, 0.0, -200.0]])
LAB_OFFSET = np.array([-16.0, 0.0, 0.0])
LAB2F = np.linalg.inv(F2LAB)
_DELTA = 6.0 / 29.0
_D3 = _DELTA**3


def srgb_decode_lut() -> np.ndarray:
    """sRGB → linear RGB for the 256 uint8 levels (IEC 61966-2-1), float32."""
    c = np.arange(256, dtype=np.float64) / 255.0
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4).astype(np.float32)


_DECODE = srgb_decode_lut()


def rgb_to_lab_np(flat: np.ndarray) -> np.ndarray:
    """uint8 (P,3) -> CIELAB (P,3) float64 (matches skimage.color.rgb2lab; exact companding)."""
    t = _DECODE[flat].astype(np.float64) @ RGB2XYZN
    f = np.where(t > _D3, np.cbrt(t), t / (3 * _DELTA**2) + 4.0 / 29.0)
    return f @ F2LAB + LAB_OFFSET


# ----------------------------------------------------------------------------- torch
def _decode_torch(x: torch.Tensor) -> torch.Tensor:
    c = x.float() / 255.0
    return torch.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055).pow(2.4))


def _f_torch(t: torch.Tensor) -> torch.Tensor:
    return torch.where(t > _D3, t.clamp_min(_D3).pow(1.0 / 3.0), t / (3 * _DELTA**2) + 4.0 / 29.0)


def _finv_torch(f: torch.Tensor) -> torch.Tensor:
    return torch.where(f > _DELTA, f * f * f, 3 * _DELTA**2 * (f - 4.0 / 29.0))


def _encode_torch(lin: torch.Tensor) -> torch.Tensor:
    lin = lin.clamp(0.0, 1.0)
    return 255.0 * torch.where(
        lin <= 0.0031308, 12.92 * lin, 1.055 * lin.clamp_min(0.0031308).pow(1 / 2.4) - 0.055
    )


def _const(a: np.ndarray, ref: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(a, dtype=torch.float32, device=ref.device)


def rgb_to_lab_torch(flat: torch.Tensor) -> torch.Tensor:
    """uint8 (..., 3) -> CIELAB float32 (..., 3) in torch."""
    f = _f_torch(_decode_torch(flat) @ _const(RGB2XYZN, flat))
    return f @ _const(F2LAB, flat) + _const(LAB_OFFSET, flat)


def _t64(x: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    if torch.is_tensor(x):
        return x.to(device=device, dtype=torch.float64)
    return torch.as_tensor(np.asarray(x), dtype=torch.float64, device=device)


def affine_in_f(src: LabParams, dst: LabParams) -> tuple[np.ndarray, np.ndarray]:
    """(T (3,3), c (3,)) with f_out = f_in @ T + c  <=>  LAB standardised from src to dst stats."""
    scale = np.asarray(dst.std, dtype=np.float64) / np.maximum(np.asarray(src.std, dtype=np.float64), 1e-6)
    shift = np.asarray(dst.mean, dtype=np.float64) - np.asarray(src.mean, dtype=np.float64) * scale
    mat = F2LAB @ np.diag(scale) @ LAB2F
    const = (LAB_OFFSET * scale + shift - LAB_OFFSET) @ LAB2F
    return mat, const


class Reinhard(Normalizer):
    """Reinhard LAB mean/std transfer over tissue pixels (per image through ``kernels`` on CPU, batched torch ops on CUDA)."""

    name = "reinhard"

    def __init__(self, io: float = 240.0, beta: float = 0.15, sample_pixels: int | None = 8192) -> None:
        super().__init__()
        self.io = float(io)
        self.beta = float(beta)
        self.sample_pixels = sample_pixels
        self._wline = background_weight_line(self.io, self.beta)
        # tissue for the statistics: at least one channel with OD >= beta
        self._thr = tissue_threshold(self.io, self.beta)

    # numpy ----------------------------------------------------------------------
    def stats_np(self, img: np.ndarray, subsample: bool = True) -> tuple[LabParams | None, int, int]:
        """(LAB mean/std of tissue pixels or None, tissue count, sampled pixels) of one image.

        ``subsample=False`` uses every pixel (``fit`` does); else the strided ``sample_pixels`` subsample.
        """
        flat = np.ascontiguousarray(img).reshape(-1, 3)
        stride = sample_stride(len(flat), self.sample_pixels if subsample else None)
        mean_f = np.empty(3)
        scatter = np.empty((3, 3))
        n_tissue = kernels.tissue_f_moments(flat, stride, self._thr, _DECODE, RGB2XYZN, mean_f, scatter)
        n_sub = -(-len(flat) // stride)
        if not enough_tissue(n_tissue, n_sub):
            return None, n_tissue, n_sub
        # LAB is affine in f: mean_lab = mean_f @ F2LAB + offset, cov_lab = F2LAB^T cov_f F2LAB
        mean = mean_f @ F2LAB + LAB_OFFSET
        std = np.sqrt(np.clip(np.diag(F2LAB.T @ (scatter / n_tissue) @ F2LAB), 0.0, None))
        if not (np.all(np.isfinite(mean)) and np.all(std > 1e-3)):
            return None, n_tissue, n_sub
        return LabParams(mean, std), n_tissue, n_sub

    def _fit_np(self, img: np.ndarray) -> LabParams:
        params, n_tissue, n_sub = self.stats_np(img, subsample=False)
        if params is None:
            if not enough_tissue(n_tissue, n_sub):
                raise target_error(self.name, n_tissue, n_sub)
            raise ValueError(f"{self.name}: target tissue has no colour variation (flat image)")
        return params

    def _transform_np(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ref = self.params.to_numpy()
        n_img = len(batch)
        flat = np.ascontiguousarray(batch).reshape(n_img, -1, 3)
        out = np.empty_like(flat)
        flags = np.zeros(n_img, dtype=bool)
        for i in range(n_img):
            src, _, _ = self.stats_np(flat[i])
            if src is None:
                out[i] = flat[i]
                flags[i] = True
                continue
            mat, const = affine_in_f(src, ref)
            kernels.reinhard_map(flat[i], out[i], _DECODE, RGB2XYZN, mat, const, XYZN2RGB, *self._wline)
        return out.reshape(batch.shape), flags

    # torch ----------------------------------------------------------------------
    def stats_torch(self, batch: torch.Tensor, subsample: bool = True) -> tuple[LabParams, torch.Tensor]:
        """Batched LAB mean/std (N,3) of tissue pixels and ok (N,)."""
        n_img = batch.shape[0]
        flat = batch.reshape(n_img, -1, 3)
        sub = flat[:, :: sample_stride(flat.shape[1], self.sample_pixels if subsample else None)]
        tissue = sub.amin(dim=-1) <= self._thr
        n = tissue.sum(dim=1)
        lab = rgb_to_lab_torch(sub).double()
        m = tissue.double()[..., None]
        mean = (lab * m).sum(dim=1) / n.clamp_min(1)[:, None]
        var = (((lab - mean[:, None]) ** 2) * m).sum(dim=1) / n.clamp_min(1)[:, None]
        std = var.sqrt()
        ok = (n >= min_tissue_torch(sub.shape[1])) & (std > 1e-3).all(dim=1) & torch.isfinite(mean).all(dim=1)
        return LabParams(mean, std), ok

    def _fit_torch(self, img: torch.Tensor) -> LabParams:
        params, ok = self.stats_torch(img[None], subsample=False)
        if not bool(ok[0]):
            sub = img.reshape(-1, 3)
            n_tissue = int((sub.amin(dim=-1) <= self._thr).sum())
            if not enough_tissue(n_tissue, sub.shape[0]):
                raise target_error(self.name, n_tissue, sub.shape[0])
            raise ValueError(f"{self.name}: target tissue has no colour variation (flat image)")
        return LabParams(params.mean[0], params.std[0])

    def _transform_torch(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dev = batch.device
        ref_mean = _t64(self.params.mean, dev)
        ref_std = _t64(self.params.std, dev)
        src, ok = self.stats_torch(batch)
        scale = ref_std[None] / src.std.clamp_min(1e-6)  # (N,3)
        shift = ref_mean[None] - src.mean * scale
        f2lab = torch.as_tensor(F2LAB, device=dev)
        lab2f = torch.as_tensor(LAB2F, device=dev)
        off = torch.as_tensor(LAB_OFFSET, device=dev)
        mat = (f2lab[None] * scale[:, None, :]) @ lab2f  # F2LAB diag(scale) LAB2F
        const = ((off[None] * scale + shift - off[None])[:, None, :] @ lab2f)  # (N,1,3)
        flat = batch.reshape(batch.shape[0], -1, 3)
        f = _f_torch(_decode_torch(flat) @ _const(RGB2XYZN, flat))
        f = f @ mat.float() + const.float()
        rec = _encode_torch(_finv_torch(f) @ _const(XYZN2RGB, flat))
        weight = weight_torch(flat, self.io, self.beta) * ok[:, None].float()
        rec = torch.where(torch.isfinite(rec), rec, flat.float())
        return blend_torch(flat, rec, weight).reshape(batch.shape), ~ok
