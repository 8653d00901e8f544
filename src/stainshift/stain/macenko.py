"""Macenko stain normalization (SVD/eigen-decomposition of optical density, angle percentiles).

Macenko et al., ISBI 2009 ("A method for normalizing histology slides for quantitative
analysis"); the SVD baseline of seed 004. Defaults match torchstain 1.4 (Io=240, beta=0.15,
alpha=1, 99th-percentile max concentration): tissue pixels are those with summed OD >= 3 beta
(torchstain: OD >= beta in every channel, available as ``tissue_rule="all"``); the plane of the two leading eigenvectors of their OD covariance holds both stains; the
alpha / 100-alpha percentiles of the pixel angles in that plane give the H and E unit vectors
(H = the one with the larger red OD). Differences to torchstain, by design: the 99th-percentile
concentrations are taken over tissue pixels only, near-white pixels are blended back to the input
(white stays white), and degenerate tiles fall back to the identity with a flag.

numpy arrays and CPU tensors run per image through ``kernels`` (exact percentiles by partition,
the map as a per-image power table); CUDA tensors run the whole batch at once in torch (masked
sort percentiles, batched eigh).
"""
from __future__ import annotations

import numpy as np
import torch

from . import kernels
from ._common import (
    Normalizer,
    StainParams,
    background_weight_line,
    background_weight_lut,
    blend_torch,
    enough_tissue,
    masked_percentile_torch,
    min_tissue_torch,
    od_lut,
    percentiles_np,
    target_error,
    weight_torch,
)

#: Which pixels estimate the stains: "all" = OD >= beta in every channel (torchstain), "any" = in
#: at least one channel, "sum" = OD_R + OD_G + OD_B >= 3 beta (default: keeps pale eosin, whose
#: red OD is small, and drops JPEG noise on glass, which "any" lets in).
TISSUE_RULES = ("sum", "all", "any")

#: |cos| between the two estimated stain vectors above which an estimate counts as single-stain.
DEGENERATE_COS = 0.995


def tissue_threshold(io: float, beta: float) -> int:
    """Largest uint8 value whose OD is still >= beta (pixel is tissue iff every channel <= it)."""
    lut = od_lut(io)
    ok = np.nonzero(lut >= np.float32(beta))[0]
    return int(ok.max()) if ok.size else -1


# ----------------------------------------------------------------------------- numpy, one image
def _order_and_sign(v1: np.ndarray, v2: np.ndarray) -> np.ndarray:
    """(2,3) with H (larger red OD) first, each row pointing into the positive octant."""
    he = np.stack([v1, v2]) if v1[0] > v2[0] else np.stack([v2, v1])
    he *= np.where(he.sum(axis=1, keepdims=True) < 0, -1.0, 1.0)
    he /= np.linalg.norm(he, axis=1, keepdims=True)
    return he


def macenko_vectors_np(od_tissue: np.ndarray, alpha: float, cov: np.ndarray | None = None) -> np.ndarray:
    """H and E unit OD vectors (2,3) from tissue OD pixels (n,3) (float32/64).

    ``cov``: their covariance when already known (``kernels.tissue_od`` computes it on the fly).
    """
    if cov is None:
        mean = od_tissue.mean(axis=0, dtype=np.float64)
        cen = od_tissue - mean.astype(od_tissue.dtype)
        cov = (cen.T @ cen).astype(np.float64) / max(len(od_tissue) - 1, 1)
    _, vecs = np.linalg.eigh(cov)
    plane = vecs[:, 1:3].astype(od_tissue.dtype)
    that = od_tissue @ plane
    phi = np.arctan2(that[:, 1], that[:, 0])
    lo, hi = percentiles_np(phi, [alpha, 100.0 - alpha])
    v_min = vecs[:, 1:3] @ np.array([np.cos(lo), np.sin(lo)])
    v_max = vecs[:, 1:3] @ np.array([np.cos(hi), np.sin(hi)])
    return _order_and_sign(v_min, v_max)


def concentrations_np(od: np.ndarray, stain_matrix: np.ndarray) -> np.ndarray:
    """Least-squares concentrations (P,2) of OD pixels (P,3) for a (2,3) stain matrix."""
    pinv = np.linalg.pinv(np.asarray(stain_matrix, dtype=np.float64)).astype(od.dtype)  # (3,2)
    return od @ pinv


def valid_estimate(he: np.ndarray, max_c: np.ndarray) -> bool:
    """Finite, two distinct stains, positive max concentrations."""
    if not (np.all(np.isfinite(he)) and np.all(np.isfinite(max_c))):
        return False
    return bool(abs(float(he[0] @ he[1])) < DEGENERATE_COS and np.all(max_c > 1e-6))


# ----------------------------------------------------------------------------- torch, batched
def macenko_vectors_torch(
    od: torch.Tensor, tissue: torch.Tensor, alpha: float
) -> torch.Tensor:
    """Batched H/E vectors (N,2,3) from OD (N,P,3) and tissue mask (N,P)."""
    m = tissue.to(od.dtype)[..., None]
    n = tissue.sum(dim=1).clamp_min(2).to(torch.float64)
    mean = (od * m).sum(dim=1, dtype=torch.float64) / n[:, None]
    cen = (od - mean[:, None, :].to(od.dtype)) * m
    cov = (cen.transpose(1, 2) @ cen).double() / (n - 1)[:, None, None]
    _, vecs = torch.linalg.eigh(cov)
    plane = vecs[:, :, 1:3]  # (N,3,2) float64
    that = od @ plane.to(od.dtype)
    phi = torch.atan2(that[..., 1], that[..., 0])
    pct = masked_percentile_torch(phi, tissue, [alpha, 100.0 - alpha]).double()  # (N,2)
    dirs = torch.stack([torch.cos(pct), torch.sin(pct)], dim=1)  # (N,2 [cos,sin],2 [lo,hi])
    v = plane @ dirs  # (N,3,2): columns v_min, v_max
    v_min, v_max = v[..., 0], v[..., 1]
    h_first = (v_min[:, 0] > v_max[:, 0])[:, None]
    h = torch.where(h_first, v_min, v_max)
    e = torch.where(h_first, v_max, v_min)
    he = torch.stack([h, e], dim=1)
    he = he * torch.where(he.sum(dim=2, keepdim=True) < 0, -1.0, 1.0)
    he = he / he.norm(dim=2, keepdim=True).clamp_min(1e-12)
    return he.to(od.dtype)


def valid_estimate_torch(he: torch.Tensor, max_c: torch.Tensor) -> torch.Tensor:
    """Per image: the H/E vectors are finite, distinct (|cos| below the limit) and the max concentrations positive."""
    finite = torch.isfinite(he).all(dim=(1, 2)) & torch.isfinite(max_c).all(dim=1)
    distinct = (he[:, 0] * he[:, 1]).sum(dim=1).abs() < DEGENERATE_COS
    return finite & distinct & (max_c > 1e-6).all(dim=1)


def od_torch(flat: torch.Tensor, io: float) -> torch.Tensor:
    """OD (N,P,3) float32 from uint8 (N,P,3)."""
    return -torch.log((flat.float() + 1.0) / io)


# ----------------------------------------------------------------------------- the normalizer
def sample_stride(n_pixels: int, sample_pixels: int | None) -> int:
    """Pixel stride of the deterministic estimation subsample (1 = every pixel)."""
    if not sample_pixels or n_pixels <= sample_pixels:
        return 1
    return n_pixels // sample_pixels


def darkest_channel_np(flat: np.ndarray) -> np.ndarray:
    """min over RGB of uint8 (..., 3) without a slow axis reduction."""
    return np.minimum(np.minimum(flat[..., 0], flat[..., 1]), flat[..., 2])


class StainNormalizer(Normalizer):
    """Shared fit/transform of the stain-matrix methods (Macenko, Vahadane).

    Estimation (stain vectors, 99th-percentile concentrations) of each transformed image uses the
    tissue pixels of a fixed strided subsample of at most ``sample_pixels`` pixels (``None`` = all);
    ``fit`` estimates the target from all its pixels; the transform maps every pixel. For Macenko the map is linear in log(I + 1), so a batch is one
    batched 3x3 matmul plus one exp.
    """

    def __init__(
        self,
        io: float = 240.0,
        beta: float = 0.15,
        max_percentile: float = 99.0,
        sample_pixels: int | None = 8192,
        tissue_rule: str = "sum",
    ) -> None:
        super().__init__()
        if tissue_rule not in TISSUE_RULES:
            raise ValueError(f"tissue_rule must be one of {TISSUE_RULES}, got {tissue_rule!r}")
        self.tissue_rule = tissue_rule
        self.io = float(io)
        self.beta = float(beta)
        self.max_percentile = float(max_percentile)
        self.sample_pixels = sample_pixels
        self._log_io = float(np.log(self.io))
        self._wlut = background_weight_lut(self.io, self.beta)
        self._wline = background_weight_line(self.io, self.beta)
        self._thr = tissue_threshold(self.io, self.beta)
        # sum of the three ODs >= 3*beta  <=>  (R+1)(G+1)(B+1) <= Io^3 exp(-3 beta)
        self._prod_thr = int(np.floor(self.io**3 * np.exp(-3.0 * self.beta)))
        self._od_table = od_lut(self.io)
        # darkest channel above this value -> the pixel is in the background blend band
        self._band_lo = int(np.nonzero(self._wlut >= 1.0)[0].max()) if (self._wlut >= 1.0).any() else -1

    # hooks ----------------------------------------------------------------------
    def _vectors_np(self, od_tissue: np.ndarray, cov: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def _vectors_torch(self, od: torch.Tensor, tissue: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def _concentrations_np(self, od: np.ndarray, he: np.ndarray) -> np.ndarray:
        return concentrations_np(od, he)

    def _concentrations_torch(self, od: torch.Tensor, he: torch.Tensor) -> torch.Tensor:
        return od @ torch.linalg.pinv(he.double()).to(od.dtype)

    def _reconstruct_np(
        self, log1p: np.ndarray, params: StainParams, ref: StainParams
    ) -> np.ndarray:
        """Float RGB (P,3) of one image under the reference stains (log1p = log(I + 1))."""
        mix, bias = self._od_map(params, ref)
        rec = log1p @ mix.astype(np.float32)
        rec += bias.astype(np.float32)
        return np.exp(rec, out=rec)

    def _reconstruct_torch(
        self, od: torch.Tensor, params: StainParams, ref: StainParams
    ) -> torch.Tensor:
        mix = torch.linalg.pinv(params.stain_matrix.double()) * (
            ref.max_conc[None, None, :].double() / params.max_conc[:, None, :].double().clamp_min(1e-6)
        )
        mix = (mix @ ref.stain_matrix.double()[None]).to(od.dtype)
        return self.io * torch.exp(-(od @ mix))

    # numpy ----------------------------------------------------------------------
    def estimate_np(self, img: np.ndarray, subsample: bool = True) -> tuple[StainParams | None, int]:
        """(params or None when unusable, tissue pixels used) of one (H,W,3) image.

        ``subsample=False`` uses every pixel (``fit`` does: a target is estimated once).
        """
        flat = np.ascontiguousarray(img).reshape(-1, 3)
        stride = sample_stride(len(flat), self.sample_pixels if subsample else None)
        od_t = np.empty((len(range(0, len(flat), stride)), 3), np.float32)
        cov = np.empty((3, 3))
        n_tissue = kernels.tissue_od(flat, stride, TISSUE_RULES.index(self.tissue_rule), self._thr,
                                     self._prod_thr, self._od_table, od_t, np.empty(3), cov)
        if not enough_tissue(n_tissue, len(od_t)):
            return None, n_tissue
        od_t = od_t[:n_tissue]
        he = self._vectors_np(od_t, cov)
        if not np.all(np.isfinite(he)):
            return None, n_tissue
        conc = self._concentrations_np(od_t, he)
        max_c = np.array([percentiles_np(np.ascontiguousarray(conc[:, j]), [self.max_percentile])[0]
                          for j in range(2)])
        if not valid_estimate(he, max_c):
            return None, n_tissue
        return StainParams(he, max_c), n_tissue

    def _tissue_torch(self, sub: torch.Tensor) -> torch.Tensor:
        if self.tissue_rule == "all":
            return sub.amax(dim=-1) <= self._thr
        if self.tissue_rule == "any":
            return sub.amin(dim=-1) <= self._thr
        return (sub.int() + 1).prod(dim=-1) <= self._prod_thr

    def _fit_np(self, img: np.ndarray) -> StainParams:
        params, n_tissue = self.estimate_np(img, subsample=False)
        if params is None:
            n_sub = img.shape[0] * img.shape[1]
            if not enough_tissue(n_tissue, n_sub):
                raise target_error(self.name, n_tissue, n_sub)
            raise ValueError(f"{self.name}: target has no usable two-stain estimate (single stain?)")
        return params

    def _transform_np(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ref = self.params.to_numpy()
        n_img = len(batch)
        flat = np.ascontiguousarray(batch).reshape(n_img, -1, 3)
        out = np.empty_like(flat)
        flags = np.zeros(n_img, dtype=bool)
        for i in range(n_img):  # per image: the working set stays in cache
            params, _ = self.estimate_np(flat[i])
            if params is None:
                out[i] = flat[i]
                flags[i] = True
                continue
            self._map_np(flat[i], out[i], params, ref)
        return out.reshape(batch.shape), flags

    def _od_map(self, params: StainParams, ref: StainParams) -> tuple[np.ndarray, np.ndarray]:
        """(mix (3,3), bias (3,)) with log I' = log(I + 1) @ mix + bias: Macenko's map, linear in OD."""
        mix = np.linalg.pinv(params.stain_matrix) * (ref.max_conc / params.max_conc)[None, :]
        mix = mix @ ref.stain_matrix  # (3,3): OD_out = OD_in @ mix
        return mix, self._log_io * (1.0 - mix.sum(axis=0))

    def _map_np(self, u8: np.ndarray, out: np.ndarray, params: StainParams, ref: StainParams) -> None:
        """Write the normalized, background-blended uint8 pixels of ``u8`` (P,3) to ``out``."""
        kernels.linear_od_map(u8, out, kernels.power_table(*self._od_map(params, ref)), *self._wline)

    def _finish_np(self, flat: np.ndarray, rec: np.ndarray) -> np.ndarray:
        """Blend the background band back to the input, clip and round to uint8 (P,3)."""
        darkest = darkest_channel_np(flat)
        band = np.nonzero(darkest > self._band_lo)[0]
        if band.size:
            src = flat[band].astype(np.float32)
            w = self._wlut[darkest[band]][:, None]
            rec[band] = src + w * (rec[band] - src)
        np.minimum(rec, 255.0, out=rec)
        rec += 0.5
        return rec.astype(np.uint8)

    # torch ----------------------------------------------------------------------
    def estimate_torch(self, batch: torch.Tensor, subsample: bool = True) -> tuple[StainParams, torch.Tensor]:
        """Batched (params with (N,2,3)/(N,2) tensors, ok (N,) bool) from uint8 (N,H,W,3)."""
        n_img = batch.shape[0]
        flat = batch.reshape(n_img, -1, 3)
        sub = flat[:, :: sample_stride(flat.shape[1], self.sample_pixels if subsample else None)]
        od = od_torch(sub, self.io)
        tissue = self._tissue_torch(sub)
        n_tissue = tissue.sum(dim=1)
        he = self._vectors_torch(od, tissue)
        conc = self._concentrations_torch(od, he)
        max_c = masked_percentile_torch(
            conc.transpose(1, 2).reshape(-1, conc.shape[1]),
            tissue.repeat_interleave(2, dim=0),
            [self.max_percentile],
        ).reshape(n_img, 2)
        ok = valid_estimate_torch(he, max_c) & (n_tissue >= min_tissue_torch(sub.shape[1]))
        return StainParams(he, max_c), ok

    def _fit_torch(self, img: torch.Tensor) -> StainParams:
        params, ok = self.estimate_torch(img[None], subsample=False)
        if not bool(ok[0]):
            sub = img.reshape(-1, 3)
            n_tissue = int(self._tissue_torch(sub).sum())
            if not enough_tissue(n_tissue, sub.shape[0]):
                raise target_error(self.name, n_tissue, sub.shape[0])
            raise ValueError(f"{self.name}: target has no usable two-stain estimate (single stain?)")
        return StainParams(params.stain_matrix[0], params.max_conc[0])

    def _transform_torch(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ref = self.params.to_torch(batch.device)
        params, ok = self.estimate_torch(batch)
        flat = batch.reshape(batch.shape[0], -1, 3)
        rec = self._reconstruct_torch(od_torch(flat, self.io), params, ref)
        weight = weight_torch(flat, self.io, self.beta) * ok[:, None].to(rec.dtype)
        rec = torch.where(torch.isfinite(rec), rec, flat.float())
        out = blend_torch(flat, rec, weight)
        return out.reshape(batch.shape), ~ok


class Macenko(StainNormalizer):
    """Macenko normalizer; ``alpha`` is the angle percentile (torchstain default 1).

    ``tissue_rule="sum"`` (default) estimates from pixels whose summed OD is >= 3 beta; ``"all"`` is
    torchstain's rule (OD >= beta in every channel), which drops pale eosin-only pixels (eosin's
    red OD is small) and then misses the E vector on lightly stained tissue (the tests show it).
    """

    name = "macenko"

    def __init__(
        self,
        io: float = 240.0,
        beta: float = 0.15,
        alpha: float = 1.0,
        max_percentile: float = 99.0,
        sample_pixels: int | None = 8192,
        tissue_rule: str = "sum",
    ) -> None:
        super().__init__(io=io, beta=beta, max_percentile=max_percentile, sample_pixels=sample_pixels,
                         tissue_rule=tissue_rule)
        self.alpha = float(alpha)

    def _vectors_np(self, od_tissue: np.ndarray, cov: np.ndarray) -> np.ndarray:
        return macenko_vectors_np(od_tissue, self.alpha, cov)

    def _vectors_torch(self, od: torch.Tensor, tissue: torch.Tensor) -> torch.Tensor:
        return macenko_vectors_torch(od, tissue, self.alpha)
