"""Seeds, devices and torchrun's process group."""
from __future__ import annotations

import logging
import os
import random

import numpy as np
import torch
import torch.distributed as dist

log = logging.getLogger("stainshift.train")


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def dist_info() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment (0, 1, 0 without it)."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


def init_distributed(device: torch.device) -> tuple[int, int]:
    """Join the process group when launched with torchrun (NCCL on CUDA, gloo on CPU)."""
    rank, world, _ = dist_info()
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return rank, world


def select_device(preference: str = "auto") -> torch.device:
    """``auto`` → CUDA (this rank's local GPU) when available, else CPU (logged); ``cpu``; ``cuda``."""
    _, _, local = dist_info()
    if preference == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        torch.cuda.set_device(local % torch.cuda.device_count())
        return torch.device("cuda", local % torch.cuda.device_count())
    if preference == "cuda":
        raise RuntimeError("device 'cuda' requested (key 'device') but no CUDA device is available")
    log.info("no CUDA device available: training on CPU")
    return torch.device("cpu")
