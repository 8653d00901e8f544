"""Vahadane stain normalization: sparse non-negative dictionary learning on optical density.

Vahadane et al., IEEE TMI 2016 (SNMF). StainTools calls SPAMS ``trainDL(K=2, lambda1=0.1,
posAlpha, posD)`` "for 1 second" (non-deterministic, and SPAMS does not build here). This is a
deterministic equivalent with a FIXED iteration count:

* data: tissue OD pixels (summed OD >= 3 beta, see ``macenko.TISSUE_RULES``), at most
  ``dl_pixels`` of them (a fixed stride);
* init: the Macenko vectors of the same pixels (deterministic, already close);
* ``n_iter`` alternations of (a) the exact non-negative lasso codes
  ``min_c 1/2 ||v - c D||^2 + lambda ||c||_1, c >= 0`` — with two atoms solved in closed form per
  pixel (both-active solution if feasible, else the better single-atom one) — and (b) one block
  coordinate-descent sweep over the atoms with projection onto ``{d >= 0, ||d|| <= 1}`` (Mairal
  et al. 2010, the update SPAMS uses);
* H = the atom with the larger red OD; rows normalised.

Concentrations for the transform use the same closed-form non-negative lasso with
``lambda = 0.01`` (StainTools' ``get_concentrations``), max concentrations the 99th percentile
over tissue. On CPU the iterations and the map are numba kernels (``kernels.dictionary_learning``,
``nn_lasso_od_map``); CUDA tensors run the same iterations batched in torch.
"""
from __future__ import annotations

import numpy as np
import torch

from . import kernels
from ._common import StainParams
from .macenko import StainNormalizer, macenko_vectors_np, macenko_vectors_torch


# ----------------------------------------------------------------------------- numpy
def order_rows(d: np.ndarray) -> np.ndarray:
    """Unit-normalize the two stain rows and order them H first (larger red OD)."""
    d = d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12)
    return d if d[0, 0] >= d[1, 0] else d[::-1].copy()


def vahadane_vectors_np(
    od_tissue: np.ndarray, lam: float, n_iter: int, dl_pixels: int, cov: np.ndarray | None = None
) -> np.ndarray:
    """H/E dictionary (2,3) from tissue OD pixels (n,3): Macenko start, ``n_iter`` alternations
    on at most ``dl_pixels`` of them (``kernels.dictionary_learning``)."""
    init = macenko_vectors_np(od_tissue, alpha=1.0, cov=cov)
    k = max(1, -(-len(od_tissue) // dl_pixels))
    sample = np.ascontiguousarray(od_tissue[::k], dtype=np.float64)
    return order_rows(kernels.dictionary_learning(sample, init, lam, n_iter))


# ----------------------------------------------------------------------------- torch
def nn_lasso2_torch(od: torch.Tensor, dictionary: torch.Tensor, lam: float) -> torch.Tensor:
    """Batched exact codes (N,P,2) of OD (N,P,3) for dictionaries (N,2,3)."""
    d = dictionary.double()
    gram = d @ d.transpose(1, 2)  # (N,2,2)
    g00, g01, g11 = gram[:, 0, 0], gram[:, 0, 1], gram[:, 1, 1]
    det = g00 * g11 - g01**2
    inv = torch.stack([torch.stack([g11, -g01], -1), torch.stack([-g01, g00], -1)], -2)
    inv = inv / det.clamp_min(1e-12)[:, None, None]
    b = od @ d.transpose(1, 2).to(od.dtype) - lam
    both = b @ inv.to(od.dtype)
    both = torch.where((det > 1e-12)[:, None, None], both, torch.full_like(both, -1.0))
    pos = b.clamp_min(0)
    c1 = pos[..., 0] / g00.clamp_min(1e-12)[:, None].to(od.dtype)
    c2 = pos[..., 1] / g11.clamp_min(1e-12)[:, None].to(od.dtype)
    take1 = pos[..., 0] * c1 >= pos[..., 1] * c2
    zero = torch.zeros_like(c1)
    single = torch.stack([torch.where(take1, c1, zero), torch.where(take1, zero, c2)], -1)
    feasible = (both >= 0).all(dim=-1, keepdim=True)
    return torch.where(feasible, both, single)


def vahadane_vectors_torch(
    od: torch.Tensor, tissue: torch.Tensor, lam: float, n_iter: int, dl_pixels: int
) -> torch.Tensor:
    """Batched dictionaries (N,2,3) from OD (N,P,3) over tissue (N,P), same sample as numpy."""
    init = macenko_vectors_torch(od, tissue, alpha=1.0).double()
    n = tissue.sum(dim=1)
    k = ((n + dl_pixels - 1) // dl_pixels).clamp_min(1)
    rank = tissue.long().cumsum(dim=1) - 1
    sel = tissue & (rank % k[:, None] == 0)  # at most dl_pixels per image
    # compact the selected pixels to the front (stable: same order as numpy), pad with zeros
    width = int(min(dl_pixels, od.shape[1]))
    order = torch.argsort((~sel).to(torch.int8), dim=1, stable=True)[:, :width]
    sample = od.gather(1, order[..., None].expand(-1, -1, 3))
    weight = sel.gather(1, order).to(od.dtype)[..., None]
    od = sample
    d = init
    for _ in range(n_iter):
        codes = nn_lasso2_torch(od, d, lam) * weight
        a = (codes.transpose(1, 2) @ codes).double()  # (N,2,2)
        b = (od.transpose(1, 2) @ codes).double()  # (N,3,2)
        for j in range(2):
            ajj = a[:, j, j]
            grad = b[:, :, j] - (d.transpose(1, 2) @ a[:, :, j : j + 1])[..., 0]
            u = (d[:, j] + grad / ajj.clamp_min(1e-10)[:, None]).clamp_min(0.0)
            u = u / u.norm(dim=1, keepdim=True).clamp_min(1.0)
            new = torch.where((ajj > 1e-10)[:, None], u, d[:, j])
            d = torch.stack([new, d[:, 1]], 1) if j == 0 else torch.stack([d[:, 0], new], 1)
    d = d / d.norm(dim=2, keepdim=True).clamp_min(1e-12)
    swap = (d[:, 0, 0] < d[:, 1, 0])[:, None, None]
    d = torch.where(swap, d.flip(1), d)
    return d.to(od.dtype)


class Vahadane(StainNormalizer):
    """Vahadane (sparse NMF) normalizer with a fixed iteration count (deterministic)."""

    name = "vahadane"

    def __init__(
        self,
        io: float = 240.0,
        beta: float = 0.15,
        lambda_dl: float = 0.1,
        lambda_conc: float = 0.01,
        n_iter: int = 30,
        dl_pixels: int = 4096,
        max_percentile: float = 99.0,
        sample_pixels: int | None = 8192,
        tissue_rule: str = "sum",
    ) -> None:
        super().__init__(io=io, beta=beta, max_percentile=max_percentile, sample_pixels=sample_pixels,
                         tissue_rule=tissue_rule)
        self.lambda_dl = float(lambda_dl)
        self.lambda_conc = float(lambda_conc)
        self.n_iter = int(n_iter)
        self.dl_pixels = int(dl_pixels)

    def _vectors_np(self, od_tissue: np.ndarray, cov: np.ndarray) -> np.ndarray:
        return vahadane_vectors_np(od_tissue, self.lambda_dl, self.n_iter, self.dl_pixels, cov)

    def _vectors_torch(self, od: torch.Tensor, tissue: torch.Tensor) -> torch.Tensor:
        return vahadane_vectors_torch(od, tissue, self.lambda_dl, self.n_iter, self.dl_pixels)

    def _concentrations_np(self, od: np.ndarray, he: np.ndarray) -> np.ndarray:
        codes = np.empty((len(od), 2))
        kernels.nn_lasso_codes(od, np.asarray(he, dtype=np.float64), self.lambda_conc, codes)
        return codes

    def _concentrations_torch(self, od: torch.Tensor, he: torch.Tensor) -> torch.Tensor:
        return nn_lasso2_torch(od, he, self.lambda_conc)

    def _map_np(self, u8: np.ndarray, out: np.ndarray, params: StainParams, ref: StainParams) -> None:
        kernels.nn_lasso_od_map(
            u8, out, self._od_table, np.asarray(params.stain_matrix, dtype=np.float64), self.lambda_conc,
            np.asarray(ref.max_conc, dtype=np.float64) / np.asarray(params.max_conc, dtype=np.float64),
            np.asarray(ref.stain_matrix, dtype=np.float64), self.io, *self._wline,
        )

    def _reconstruct_torch(self, od: torch.Tensor, params: StainParams, ref: StainParams) -> torch.Tensor:
        conc = nn_lasso2_torch(od, params.stain_matrix, self.lambda_conc)
        conc = conc * (ref.max_conc[None, :] / params.max_conc.clamp_min(1e-6))[:, None, :]
        return self.io * torch.exp(-(conc @ ref.stain_matrix))
