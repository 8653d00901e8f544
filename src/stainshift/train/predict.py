"""Features of a trained encoder for uint8 tiles (embeddings, probes, predictions)."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn


@torch.no_grad()
def encode_images(model: nn.Module, images: np.ndarray | torch.Tensor, device: torch.device,
                  batch_size: int = 128) -> np.ndarray:
    """Run ``model`` on uint8 (N, S, S, 3) tiles in batches → float32 numpy outputs."""
    model.eval()
    outs = []
    for start in range(0, len(images), batch_size):
        chunk = torch.as_tensor(np.asarray(images[start:start + batch_size])).permute(0, 3, 1, 2)
        x = chunk.to(device).float().div_(255.0)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=device.type == "cuda"):
            outs.append(model(x).float().cpu())
    dim = getattr(model, "out_dim", None)
    if not outs:
        return np.zeros((0, dim or 0), np.float32)
    return torch.cat(outs).numpy().astype(np.float32)
