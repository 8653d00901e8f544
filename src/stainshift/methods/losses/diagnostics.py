"""Learning diagnostics beside the losses: a collapse statistic and the chance level of a cross-entropy."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


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


@torch.no_grad()
def label_entropy(labels: torch.Tensor, num_classes: int, ignore_index: int = -1,
                  weight: torch.Tensor | None = None) -> torch.Tensor:
    """Chance level of a cross-entropy: H(p̂) = −Σ_c p̂_c log p̂_c (nats), p̂ the label frequencies
    of the batch — the CE of the best constant predictor (≤ log C; 0 for a one-class batch).

    With class weights w (``F.cross_entropy(weight=w)``), p̂_c ∝ w_c n_c: the weighted CE of the
    best constant predictor (log C for balanced weights on a batch with the training frequencies).
    """
    y = labels[labels != ignore_index]
    if y.numel() == 0:
        return torch.zeros((), device=labels.device)
    p = torch.bincount(y, minlength=num_classes).float()
    if weight is not None:
        p = p * weight.to(p.device, torch.float32)
    p = p / p.sum()
    p = p[p > 0]
    return -(p * p.log()).sum()
