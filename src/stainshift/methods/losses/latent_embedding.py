"""Seed 000's losses: the latent-embedding contrastive loss ℓ_c (Eq. 1), its negatives S_n, its
chance level, the positive accuracy of x_i against x̄_i, and the paired cross-entropy ℓ_e (Eq. 3)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def negative_indices(
    batch_size: int,
    num_negatives: int | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Indices of each anchor's negatives into the stacked candidates ``[z; z̄]`` (length 2B).

    Row i lists {j : j ≠ i} (the raw x_j) and {B + j : j ≠ i} (the normalized x̄_j): 2(B−1)
    entries (seed 000's S_n). With ``num_negatives = K < 2(B−1)`` each row holds K of them drawn
    uniformly without replacement (the Discussion's memory fix). Returns (B, K) int64, sorted.
    """
    if batch_size < 2:
        raise ValueError(f"the latent embedding loss needs a batch of at least 2 images, got {batch_size}")
    full = 2 * (batch_size - 1)
    cols = torch.arange(2 * batch_size, device=device)
    rows = torch.arange(batch_size, device=device)
    keep = (cols[None, :] != rows[:, None]) & (cols[None, :] != rows[:, None] + batch_size)
    idx = cols.expand(batch_size, -1)[keep].view(batch_size, full)
    if num_negatives is None or num_negatives >= full:
        return idx
    if num_negatives < 1:
        raise ValueError(f"num_negatives must be >= 1 or null, got {num_negatives}")
    scores = torch.rand(batch_size, full, generator=generator, device="cpu" if generator is not None else device)
    pick = scores.argsort(dim=1)[:, :num_negatives].to(idx.device)
    return idx.gather(1, pick).sort(dim=1).values


def _flat_normalized(z: Tensor) -> Tensor:
    return F.normalize(z.flatten(1).float(), dim=1)


def latent_embedding_loss(
    z: Tensor,
    z_bar: Tensor,
    tau: float = 0.70,
    num_negatives: int | None = None,
    generator: torch.Generator | None = None,
    reduction: str = "sum",
) -> Tensor:
    """Seed 000 Eq. 1: ℓ_c = −Σ_i [sim(z_i, z̄_i)/τ − log Σ_{n ∈ S_n(i)} exp(sim(z_i, n)/τ)].

    ``z`` / ``z_bar``: layer-l embeddings of X and X̄ (B, ...), flattened per sample; sim is the
    cosine. Negatives of anchor z_i: every z_j and z̄_j with j ≠ i (or ``num_negatives`` of
    them, see :func:`negative_indices`). ``reduction``: ``"sum"`` over anchors as in Eq. 1, or
    ``"mean"`` (Eq. 1 / B, batch-size independent).
    """
    if z.shape != z_bar.shape:
        raise ValueError(f"z and z_bar must have the same shape, got {tuple(z.shape)} and {tuple(z_bar.shape)}")
    b = z.shape[0]
    u = _flat_normalized(z)
    v = _flat_normalized(z_bar)
    pos = (u * v).sum(dim=1) / tau  # (B,)
    cand = torch.cat([u, v], dim=0)  # (2B, D)
    sim = u @ cand.T / tau  # (B, 2B)
    idx = negative_indices(b, num_negatives, generator=generator, device=z.device)
    neg = sim.gather(1, idx)  # (B, K)
    per_anchor = -(pos - torch.logsumexp(neg, dim=1))
    if reduction == "sum":
        return per_anchor.sum()
    if reduction == "mean":
        return per_anchor.mean()
    raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")


def latent_embedding_chance(batch_size: int, num_negatives: int | None = None, reduction: str = "mean") -> float:
    """ℓ_c of an encoder that maps every image to the same point: log K per anchor (K negatives,
    2(B−1) by default); × B for ``reduction="sum"``."""
    k = 2 * (batch_size - 1) if num_negatives is None else min(int(num_negatives), 2 * (batch_size - 1))
    return math.log(k) * (batch_size if reduction == "sum" else 1)


@torch.no_grad()
def latent_positive_accuracy(z: Tensor, z_bar: Tensor) -> Tensor:
    """Share of anchors x_i whose x̄_i is strictly more similar than every negative x_j, x̄_j (j ≠ i)."""
    u, v = _flat_normalized(z), _flat_normalized(z_bar)
    b = u.shape[0]
    pos = (u * v).sum(1)
    neg = (u @ torch.cat([u, v]).T).gather(1, negative_indices(b, device=u.device))
    return (pos > neg.max(1).values).float().mean()


def paired_ce_loss(logits: Tensor, logits_bar: Tensor, labels: Tensor, ignore_index: int = -1,
                   weight: Tensor | None = None) -> Tensor:
    """Seed 000 Eq. 3: ℓ_e = 1/(2B) (Σ CE(f(x_i), y_i) + Σ CE(f(x̄_i), y_i)).

    Tiles with label ``ignore_index`` (−1 = unknown in the patch store) are left out of the mean;
    a batch with no labelled tile gives 0 (kept in the graph). ``weight``: class weights (the mean
    becomes the weighted mean, as ``F.cross_entropy``).
    """
    both = torch.cat([logits, logits_bar], dim=0)
    y = torch.cat([labels, labels], dim=0)
    if not bool((y != ignore_index).any()):
        return both.sum() * 0.0
    return F.cross_entropy(both.float(), y, weight=weight, ignore_index=ignore_index)
