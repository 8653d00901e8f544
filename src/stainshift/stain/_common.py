"""Shared machinery of the stain tools: batch/backend handling, optical density, background.

Conventions (all methods):
* images are uint8 RGB, ``(H, W, 3)`` or batches ``(N, H, W, 3)``, numpy arrays or torch tensors
  (any device); results come back with the input's type, device and shape; inputs are never
  modified.
* optical density (OD) follows torchstain: ``OD = -log((I + 1) / Io)``.
* a pixel is *background* when all three channels are light (OD < beta in every channel, i.e.
  ``I >= Io * exp(-beta) - 1``); estimation uses tissue pixels only and the output is blended
  back to the input over a soft band so white stays white without a visible seam.
* an image with too few tissue pixels (or a degenerate, single-stain estimate) falls back to the
  identity and is flagged in ``last_flags``.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, fields
from typing import Any, ContextManager

import numpy as np
import torch

#: Minimum tissue pixels an image needs for stain estimation (absolute and as a fraction).
MIN_TISSUE_PIXELS = 64
MIN_TISSUE_FRACTION = 0.01


_BLAS_CONTROLLER: Any = None


def blas_single_thread() -> ContextManager[Any]:
    """Limit BLAS to one thread: the (P,3)@(3,3) products here run 2x slower multi-threaded.

    Uses threadpoolctl (installed with scikit-learn); a no-op without it.
    """
    global _BLAS_CONTROLLER
    try:
        import threadpoolctl
    except ImportError:  # pragma: no cover - scikit-learn brings it
        return contextlib.nullcontext()
    if _BLAS_CONTROLLER is None:
        controller = threadpoolctl.ThreadpoolController().select(user_api="blas")
        multi = any(lib.get("num_threads", 1) > 1 for lib in controller.info())
        _BLAS_CONTROLLER = controller if multi else False  # False: already single-threaded
    if _BLAS_CONTROLLER is False:
        return contextlib.nullcontext()
    return _BLAS_CONTROLLER.limit(limits=1)


def is_torch(x: Any) -> bool:
    """Whether ``x`` is a torch tensor."""
    return isinstance(x, torch.Tensor)


def check_uint8_rgb(x: Any, name: str = "image") -> None:
    """Raise a clear error unless ``x`` is uint8 (H,W,3) or (N,H,W,3)."""
    dtype_ok = (x.dtype == torch.uint8) if is_torch(x) else (np.asarray(x).dtype == np.uint8)
    if not dtype_ok:
        raise TypeError(f"{name}: expected uint8 RGB, got dtype {x.dtype}")
    if x.ndim not in (3, 4) or x.shape[-1] != 3:
        raise ValueError(f"{name}: expected shape (H, W, 3) or (N, H, W, 3), got {tuple(x.shape)}")


def as_batch(x: Any, name: str = "batch") -> tuple[Any, bool]:
    """Validate and return ``(batch (N,H,W,3), was_single)``; numpy inputs become ndarrays."""
    if not is_torch(x):
        x = np.asarray(x)
    check_uint8_rgb(x, name)
    if x.ndim == 3:
        return x[None], True
    return x, False


def unbatch(x: Any, single: bool) -> Any:
    """Drop the batch axis added by :func:`as_batch` for a single image."""
    return x[0] if single else x


# ----------------------------------------------------------------------------- optical density
def od_lut(io: float) -> np.ndarray:
    """float32 lookup table uint8 -> OD = -log((I + 1) / Io)."""
    return (-np.log((np.arange(256, dtype=np.float64) + 1.0) / io)).astype(np.float32)


def background_weight_lut(io: float, beta: float) -> np.ndarray:
    """float32 table over the darkest channel value: 0 on background, 1 on tissue, linear between.

    Background: darkest channel >= Io*exp(-beta) - 1 (all channels OD < beta); full tissue below
    Io*exp(-2*beta) - 1.
    """
    hi, inv = background_weight_line(io, beta)
    v = np.arange(256, dtype=np.float64)
    return np.clip((hi - v) * inv, 0.0, 1.0).astype(np.float32)


def background_weight_line(io: float, beta: float) -> tuple[float, float]:
    """(hi, inv) of the background weight w(d) = clip((hi − d) · inv, 0, 1) of the darkest channel d
    (:func:`background_weight_lut`'s line; the kernels evaluate it per pixel instead of a table read)."""
    hi = io * np.exp(-beta) - 1.0
    lo = io * np.exp(-2.0 * beta) - 1.0
    return float(hi), float(1.0 / max(hi - lo, 1e-6))


def blend_torch(src: torch.Tensor, out_f: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """uint8 ``src + w * (out - src)``, rounded and clipped; (N,P,3) tensors, weights (N,P)."""
    res = src.float()
    res = res + weight[..., None] * (out_f - res)
    return res.clamp_(0, 255).round_().to(torch.uint8)


def weight_torch(batch_flat: torch.Tensor, io: float, beta: float) -> torch.Tensor:
    """Per-pixel tissue weight (N,P) from uint8 (N,P,3), same rule as the numpy table."""
    lut = torch.as_tensor(background_weight_lut(io, beta), device=batch_flat.device)
    return lut[batch_flat.amin(dim=-1).long()]


def enough_tissue(n_tissue: int, n_pixels: int) -> bool:
    """Whether ``n_tissue`` of ``n_pixels`` meets the minimum tissue for a stain estimate."""
    return n_tissue >= max(MIN_TISSUE_PIXELS, int(np.ceil(MIN_TISSUE_FRACTION * n_pixels)))


def min_tissue_torch(n_pixels: int) -> int:
    """Minimum tissue pixels for a stain estimate of an image of ``n_pixels``."""
    return max(MIN_TISSUE_PIXELS, int(np.ceil(MIN_TISSUE_FRACTION * n_pixels)))


# ----------------------------------------------------------------------------- percentiles
def percentiles_np(values: np.ndarray, qs: list[float]) -> np.ndarray:
    """Percentiles of a 1-D array by numpy's 'linear' rule, one ``np.partition`` for all ``qs``.

    Same values as ``np.percentile(values, qs)`` without its per-call overhead (the estimation
    subsample has only a few thousand pixels, where that overhead dominates).
    """
    n = len(values)
    pos = (n - 1) * np.asarray(qs, dtype=np.float64) / 100.0
    lo = np.floor(pos).astype(np.intp)
    hi = np.minimum(lo + 1, n - 1)
    part = np.partition(values, np.unique(np.concatenate([lo, hi])))
    return part[lo] + (pos - lo) * (part[hi] - part[lo])


def masked_percentile_torch(values: torch.Tensor, mask: torch.Tensor, qs: list[float]) -> torch.Tensor:
    """Per-row percentiles (numpy 'linear' rule) of ``values`` (N,P) over ``mask`` (N,P) -> (N, len(qs)).

    One sort per call; rows without valid entries give 0 (callers flag them separately).
    """
    big = torch.finfo(values.dtype).max
    srt, _ = torch.sort(torch.where(mask, values, torch.full_like(values, big)), dim=-1)
    n = mask.sum(dim=-1)
    q = torch.as_tensor(qs, dtype=values.dtype, device=values.device) / 100.0
    pos = (n - 1).clamp_min(0).to(values.dtype)[:, None] * q[None, :]
    lo = pos.floor().long()
    hi = pos.ceil().long()
    frac = pos - lo.to(values.dtype)
    v_lo = srt.gather(-1, lo)
    v_hi = srt.gather(-1, hi)
    out = v_lo + (v_hi - v_lo) * frac
    return torch.where((n > 0)[:, None], out, torch.zeros_like(out))


# ----------------------------------------------------------------------------- params
@dataclass
class StainParams:
    """Stain model of one image: unit OD vectors (rows H, E) and robust max concentrations."""

    stain_matrix: Any  # (2, 3) float
    max_conc: Any  # (2,) float

    def to_numpy(self) -> "StainParams":
        """The parameters as numpy arrays."""
        return StainParams(*(_np(getattr(self, f.name)) for f in fields(self)))

    def to_torch(self, device: torch.device | str) -> "StainParams":
        """The parameters as tensors on ``device``."""
        return StainParams(*(_t(getattr(self, f.name), device) for f in fields(self)))

    def as_dict(self) -> dict[str, list]:
        """The parameters as JSON-ready lists."""
        return {f.name: _np(getattr(self, f.name)).tolist() for f in fields(self)}


@dataclass
class LabParams:
    """Reinhard target: per-channel LAB mean and standard deviation over tissue pixels."""

    mean: Any  # (3,)
    std: Any  # (3,)

    def to_numpy(self) -> "LabParams":
        """The parameters as numpy arrays."""
        return LabParams(*(_np(getattr(self, f.name)) for f in fields(self)))

    def to_torch(self, device: torch.device | str) -> "LabParams":
        """The parameters as tensors on ``device``."""
        return LabParams(*(_t(getattr(self, f.name), device) for f in fields(self)))

    def as_dict(self) -> dict[str, list]:
        """The parameters as JSON-ready lists."""
        return {f.name: _np(getattr(self, f.name)).tolist() for f in fields(self)}


def _np(x: Any) -> np.ndarray:
    if is_torch(x):
        return x.detach().cpu().numpy().astype(np.float64)
    return np.asarray(x, dtype=np.float64)


def _t(x: Any, device: torch.device | str) -> torch.Tensor:
    if is_torch(x):
        return x.to(device=device, dtype=torch.float32)
    return torch.as_tensor(np.asarray(x), dtype=torch.float32, device=device)


# ----------------------------------------------------------------------------- base class
class Normalizer:
    """Base class: ``fit(target)`` -> self, ``transform(batch)`` -> same type/shape uint8.

    Subclasses implement ``_fit_np(img (H,W,3))``/``_fit_torch(img)`` returning params, and
    ``_transform_np(batch (N,H,W,3)) -> (out, flags)`` / ``_transform_torch``.
    """

    name = "base"
    params: Any
    #: CPU tensors run the fused numba kernels of the numpy path (zero-copy views), which are
    #: several times faster than torch's per-op CPU kernels; False runs the torch ops on CPU too
    #: (the code CUDA tensors always run; the tests compare the two).
    cpu_tensors_use_kernels: bool = True

    def __init__(self) -> None:
        self.params = None
        self.last_flags: Any = None

    def _on_kernels(self, x: Any) -> bool:
        return is_torch(x) and x.device.type == "cpu" and self.cpu_tensors_use_kernels

    def fit(self, target: Any) -> "Normalizer":
        """Estimate the target's parameters; raises ValueError if the target is mostly background."""
        batch, _ = as_batch(target, "target")
        if batch.shape[0] != 1:
            raise ValueError(f"target: expected one image (H, W, 3), got a batch of {batch.shape[0]}")
        img = batch[0]
        if self._on_kernels(img):
            self.params = self._fit_np(img.numpy()).to_torch(img.device)
        else:
            self.params = self._fit_torch(img) if is_torch(img) else self._fit_np(img)
        return self

    def transform(self, batch: Any) -> Any:
        """Normalize ``batch`` to the fitted target; sets ``last_flags`` (True = identity fallback)."""
        if self.params is None:
            raise RuntimeError(f"{type(self).__name__}.transform called before fit()")
        x, single = as_batch(batch)
        if x.shape[0] == 0:
            self.last_flags = x.new_zeros(0, dtype=torch.bool) if is_torch(x) else np.zeros(0, bool)
            return batch[:0] if not single else batch
        if self._on_kernels(x):
            with blas_single_thread():
                out_np, flags_np = self._transform_np(x.numpy())
            out, flags = torch.from_numpy(out_np), torch.from_numpy(flags_np)
        elif is_torch(x):
            out, flags = self._transform_torch(x)
        else:
            with blas_single_thread():
                out, flags = self._transform_np(x)
        self.last_flags = flags
        return unbatch(out, single)

    def fit_transform_torch(self, batch: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """Fit on ``reference`` and transform ``batch``, all in torch on their device."""
        if not (is_torch(batch) and is_torch(reference)):
            raise TypeError("fit_transform_torch expects torch tensors")
        return self.fit(reference).transform(batch)

    # subclasses ---------------------------------------------------------------
    def _fit_np(self, img: np.ndarray) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def _fit_torch(self, img: torch.Tensor) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def _transform_np(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover
        raise NotImplementedError

    def _transform_torch(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError


def target_error(name: str, n_tissue: int, n_pixels: int) -> ValueError:
    """The ValueError for a target image with too little tissue to fit a normalizer."""
    return ValueError(
        f"{name}: target is mostly background ({n_tissue} of {n_pixels} pixels are tissue, need "
        f">= {max(MIN_TISSUE_PIXELS, int(np.ceil(MIN_TISSUE_FRACTION * n_pixels)))}); pick a tissue tile"
    )

