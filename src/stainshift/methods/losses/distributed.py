"""A differentiable all-gather for the losses under DDP.

Under DDP every rank computes the loss on the *global* batch: :func:`gather` concatenates the
ranks' embeddings with a differentiable all-gather (gradients flow back to the owning rank), so
the loss value equals the one-process loss on the same global batch.
"""
from __future__ import annotations

import torch
import torch.distributed as dist


def gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` over DDP ranks along dim 0 (rank order), differentiably; identity otherwise."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x.contiguous()), 0)
