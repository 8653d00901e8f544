"""Barlow Twins (LMC, seed 003): Σ_i (1 − C_ii)² + λ Σ_{i≠j} C_ij² of the views' cross-correlation C."""
from __future__ import annotations

import torch


def barlow_twins_terms(z1: torch.Tensor, z2: torch.Tensor, eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ_i (1 − C_ii)², Σ_{i≠j} C_ij²) of the Barlow Twins cross-correlation C.

    C = z̃1ᵀ z̃2 / N with z̃ = (z − mean) / std over the batch (biased std, as in the reference
    implementation). Invariance term: 0 for identical standardised views, ≈ d for independent ones.
    """
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"barlow_twins: need two (N, d) embeddings of one shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    z1, z2 = z1.float(), z2.float()
    n = z1.shape[0]
    z1n = (z1 - z1.mean(0)) / (z1.std(0, unbiased=False) + eps)
    z2n = (z2 - z2.mean(0)) / (z2.std(0, unbiased=False) + eps)
    c = z1n.t() @ z2n / n
    diag = torch.diagonal(c)
    return (diag - 1).pow(2).sum(), c.pow(2).sum() - diag.pow(2).sum()


def barlow_twins(z1: torch.Tensor, z2: torch.Tensor, lambd: float = 0.005, eps: float = 1e-5) -> torch.Tensor:
    """Barlow Twins (LMC, seed 003): Σ_i (1 − C_ii)² + λ Σ_{i≠j} C_ij² (see :func:`barlow_twins_terms`)."""
    on_diag, off_diag = barlow_twins_terms(z1, z2, eps)
    return on_diag + lambd * off_diag
