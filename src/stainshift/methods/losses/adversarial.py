"""SASSL's adversarial objective (seed 002, Eqs. 4–6): the relation matrix R of same-slide pairs, the
affinity matrix A of the stain discriminator's outputs, the discriminator's loss and the encoder's
adversarial term (three readings of Eq. 5)."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def slide_codes(slide_ids: Sequence[str] | Tensor) -> Tensor:
    """Map slide ids (strings or ints) to int64 codes 0..K−1 (first-seen order)."""
    if isinstance(slide_ids, Tensor):
        return torch.unique(slide_ids, return_inverse=True)[1].long()
    seen: dict = {}
    return torch.tensor([seen.setdefault(s, len(seen)) for s in slide_ids], dtype=torch.long)


def relation_matrix(slide_ids: Sequence[str] | Tensor, device: torch.device | str | None = None) -> Tensor:
    """R (seed 002): r_ij = 1 if patches i and j come from the same WSI, else 0 (float, N × N)."""
    c = slide_codes(slide_ids).to(device)
    return (c[:, None] == c[None, :]).float()


def affinity_matrix(l1: Tensor, l2: Tensor, normalize: bool = True) -> Tensor:
    """A = l1 l2ᵀ (N × N); with ``normalize`` the rows are L2-normalised first (cosine)."""
    if normalize:
        l1, l2 = F.normalize(l1.float(), dim=1), F.normalize(l2.float(), dim=1)
    return l1 @ l2.T


def pair_means(a: Tensor, r: Tensor) -> tuple[Tensor, Tensor]:
    """(a_diff, a_same) = (Σ(1−R)⊙A / Σ(1−R), ΣR⊙A / ΣR); an empty set gives 0."""
    inv = 1.0 - r
    a_diff = (inv * a).sum() / inv.sum().clamp_min(1.0)
    a_same = (r * a).sum() / r.sum().clamp_min(1.0)
    return a_diff, a_same


def discriminator_loss(a: Tensor, r: Tensor) -> Tensor:
    """Seed 002 Eq. 6: L_D = ||(1−R)A||₁/||1−R||₁ − ||RA||₁/||R||₁ (minimised by D)."""
    a_diff, a_same = pair_means(a, r)
    return a_diff - a_same


ADV_MODES = ("paper", "reversal", "gap")
#: a mean cosine affinity of different-slide pairs at or above this = the affinities saturated
AFFINITY_SATURATION = 0.9


def generator_adversarial_loss(a: Tensor, r: Tensor, mode: str = "paper") -> Tensor:
    """Adversarial part of seed 002 Eq. 5 for the encoder (added to L_ssl).

    ``paper``: −(a_diff + a_same) — raise every affinity so D cannot tell slides apart.
    ``reversal``: −L_D = a_same − a_diff — the textbook GAN min–max reading of Eq. 4.
    ``gap``: (a_same − a_diff)² — equal pair means, whatever their level.
    """
    a_diff, a_same = pair_means(a, r)
    if mode == "paper":
        return -(a_diff + a_same)
    if mode == "reversal":
        return a_same - a_diff
    if mode == "gap":
        return (a_same - a_diff).pow(2)
    raise ValueError(f"adv_mode must be one of {ADV_MODES}, got {mode!r}")


def has_both_pair_sets(r: Tensor) -> bool:
    """Whether R holds both same-slide pairs off the diagonal and different-slide pairs."""
    n = r.shape[0]
    return bool(r.sum() > n) and bool(r.sum() < n * n)
