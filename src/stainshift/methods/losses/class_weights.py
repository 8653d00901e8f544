"""Class weights of a cross-entropy: the one definition every supervised loss and head uses."""
from __future__ import annotations

import torch


def balanced_class_weights(counts: torch.Tensor, num_classes: int) -> torch.Tensor:
    """"Balanced" weights w_c = N / (C · N_c) from per-class counts N_c (N = Σ N_c, C = ``num_classes``);
    0 for a class with no example. With these weights every class contributes equally to
    ``F.cross_entropy(..., weight=w)`` (scikit-learn's ``class_weight="balanced"``)."""
    counts = torch.as_tensor(counts, dtype=torch.float64)[:num_classes]
    if counts.numel() < num_classes:
        counts = torch.cat([counts, counts.new_zeros(num_classes - counts.numel())])
    w = torch.where(counts > 0, counts.sum() / (num_classes * counts.clamp_min(1)), torch.zeros_like(counts))
    return w.float()
