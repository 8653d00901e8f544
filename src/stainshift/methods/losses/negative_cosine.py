"""Negative cosine with a stop-gradient on the target (SimSiam; seed 002 Eq. 3)."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def negative_cosine(p: Tensor, z: Tensor) -> Tensor:
    """Seed 002 Eq. 3 / SimSiam: 1 − ⟨p, sg(z)⟩ / (‖p‖‖z‖), batch mean."""
    return 1.0 - F.cosine_similarity(p, z.detach(), dim=1).mean()
