"""Losses of the built-in methods, written as the papers state them, learning diagnostics, and a
gather for DDP.

Under DDP every rank computes the loss on the *global* batch: :func:`gather` concatenates the
ranks' embeddings with a differentiable all-gather (gradients flow back to the owning rank), so
the loss value equals the one-process loss on the same global batch.
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F


def gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` over DDP ranks along dim 0 (rank order), differentiably; identity otherwise."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x.contiguous()), 0)


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


@torch.no_grad()
def embedding_spread(z: torch.Tensor) -> torch.Tensor:
    """Collapse statistic: √d · mean_k std_b(ẑ_bk) of the L2-normalised embeddings ẑ = z/‖z‖ (B, d).

    ≈ 1 for embeddings spread isotropically over the sphere, → 0 when every sample maps to the same
    direction (SimSiam, Chen & He 2021, Fig. 2 — the std of the ℓ2-normalised output; here × √d).
    Non-negative features (ReLU + pooling) sit lower (~0.2–0.5) without being collapsed.
    """
    z = F.normalize(z.detach().flatten(1).float(), dim=1)
    if z.shape[0] < 2:
        return torch.zeros((), device=z.device)
    return z.std(0).mean() * math.sqrt(z.shape[1])


def barlow_twins_terms(z1: torch.Tensor, z2: torch.Tensor, eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ_i (1 − C_ii)², Σ_{i≠j} C_ij²) of the Barlow Twins cross-correlation C.

    C = z̃1ᵀ z̃2 / N with z̃ = (z − mean) / std over the batch (biased std, as in the reference
    implementation). Invariance term: 0 for identical standardised views, ≈ d for independent ones.
    """
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


@torch.no_grad()
def label_entropy(labels: torch.Tensor, num_classes: int, ignore_index: int = -1) -> torch.Tensor:
    """Chance level of a cross-entropy: H(p̂) = −Σ_c p̂_c log p̂_c (nats), p̂ the label frequencies
    of the batch — the CE of the best constant predictor (≤ log C; 0 for a one-class batch)."""
    y = labels[labels != ignore_index]
    if y.numel() == 0:
        return torch.zeros((), device=labels.device)
    p = torch.bincount(y, minlength=num_classes).float() / y.numel()
    p = p[p > 0]
    return -(p * p.log()).sum()
