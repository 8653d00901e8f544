"""Losses of the built-in methods, written as the papers state them, plus a gather for DDP.

Under DDP every rank computes the loss on the *global* batch: :func:`gather` concatenates the
ranks' embeddings with a differentiable all-gather (gradients flow back to the owning rank), so
the loss value equals the one-process loss on the same global batch.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` over DDP ranks along dim 0 (rank order), differentiably; identity otherwise."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x.contiguous()), 0)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """NT-Xent (SimCLR, seed 001) over 2N views; mean over all 2N anchors.

    ℓ(i, j) = −log exp(sim(z_i, z_j)/τ) / Σ_{k≠i} exp(sim(z_i, z_k)/τ), sim = cosine; positive j is
    the other view of the same image; the 2(N−1) other views are the negatives.
    """
    z = F.normalize(torch.cat([z1, z2], 0).float(), dim=1)
    n = z1.shape[0]
    logits = z @ z.t() / temperature
    logits.fill_diagonal_(float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, targets)


def barlow_twins(z1: torch.Tensor, z2: torch.Tensor, lambd: float = 0.005, eps: float = 1e-5) -> torch.Tensor:
    """Barlow Twins (LMC, seed 003): Σ_i (1 − C_ii)² + λ Σ_{i≠j} C_ij².

    C is the cross-correlation of the batch-standardised embeddings, C = z̃1ᵀ z̃2 / N with
    z̃ = (z − mean) / std over the batch (biased std, as in the reference implementation).
    """
    z1, z2 = z1.float(), z2.float()
    n = z1.shape[0]
    z1n = (z1 - z1.mean(0)) / (z1.std(0, unbiased=False) + eps)
    z2n = (z2 - z2.mean(0)) / (z2.std(0, unbiased=False) + eps)
    c = z1n.t() @ z2n / n
    on_diag = (torch.diagonal(c) - 1).pow(2).sum()
    off_diag = c.pow(2).sum() - torch.diagonal(c).pow(2).sum()
    return on_diag + lambd * off_diag
