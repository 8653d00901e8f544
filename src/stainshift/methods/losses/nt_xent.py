"""NT-Xent (SimCLR, seed 001; seed 000's "Ours(c)"), its chance level and the positive-pair accuracy.

ℓ(i, j) = −log exp(sim(z_i, z_j)/τ) / Σ_{k≠i} exp(sim(z_i, z_k)/τ) over the 2N views of N images.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _pair_logits(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(2N × 2N cosine logits / τ with −inf on the diagonal, index of each anchor's positive)."""
    z = F.normalize(torch.cat([z1.flatten(1), z2.flatten(1)], 0).float(), dim=1)
    n = z1.shape[0]
    logits = z @ z.t() / temperature
    logits.fill_diagonal_(float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return logits, targets


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """NT-Xent (SimCLR, seed 001; seed 000's "Ours(c)") over 2N views; mean over all 2N anchors.

    ℓ(i, j) = −log exp(sim(z_i, z_j)/τ) / Σ_{k≠i} exp(sim(z_i, z_k)/τ), sim = cosine on the flattened
    embeddings; positive j is the other view of the same image; the 2(N−1) other views are the
    negatives. Chance level (all similarities equal): log(2N − 1), see :func:`nt_xent_chance`.
    """
    if z1.shape != z2.shape:
        raise ValueError(f"nt_xent: the two views' embeddings differ in shape: {tuple(z1.shape)} vs {tuple(z2.shape)}")
    if not temperature > 0:
        raise ValueError(f"nt_xent: temperature must be > 0, got {temperature}")
    logits, targets = _pair_logits(z1, z2, temperature)
    return F.cross_entropy(logits, targets)


def nt_xent_chance(n: int) -> float:
    """NT-Xent of an encoder that cannot tell the positive from the 2N − 2 negatives: log(2N − 1)."""
    return math.log(2 * n - 1)


@torch.no_grad()
def positive_accuracy(z1: torch.Tensor, z2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(share of the 2N anchors whose positive is strictly the most similar of its 2N − 1
    candidates, mean rank of the positive among them: 1 = best, ≈ N at chance, 2N − 1 when every
    candidate ties — ties count against the positive, so a collapse scores 0). Chance accuracy:
    1/(2N − 1)."""
    logits, targets = _pair_logits(z1.detach(), z2.detach(), 1.0)
    pos = logits.gather(1, targets[:, None])
    rank = (logits >= pos).float().sum(1)  # the positive itself and every candidate at least as close
    return (rank == 1).float().mean(), rank.mean()
