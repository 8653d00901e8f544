"""``simclr`` (seed 001): two random views, MLP projection, NT-Xent (τ = 0.1), LARS by default."""
from __future__ import annotations

from typing import Any

import torch

from stainshift.augment import build_views
from stainshift.methods.base import Method, StepContext, register_method
from stainshift.methods.losses import gather, nt_xent
from stainshift.models import build_encoder, mlp


@register_method("simclr")
class SimCLR(Method):
    """SimCLR v1: encoder → 2-layer MLP projection (no BN, as in Chen et al. 2020a) → NT-Xent.

    cfg keys: ``encoder``, ``image_size``, ``views`` (SimCLRViews kwargs), ``temperature`` (0.1),
    ``proj_hidden`` (default encoder width), ``proj_dim`` (128). Under DDP the loss uses the
    gathered global batch (negatives from every rank).
    """

    # seed 001: ResNet18, batch 256–512, LARS lr 0.3×bs/256, wd 1e-6, τ 0.1; crop scale min 0.15,
    # strong ("heavy") jitter, blur p 0.5. Warm-up 10 epochs + cosine as in Chen et al. 2020a.
    seed_defaults = {
        "encoder": {"arch": "resnet18"}, "epochs": 100, "batch_size": 256, "optimizer": "lars", "lr": 0.3,
        "lr_scale_batch": True, "weight_decay": 1e-6, "momentum": 0.9, "schedule": "cosine",
        "warmup_epochs": 10, "temperature": 0.1, "proj_dim": 128, "proj_hidden": None,
        "views": {"crop_scale": [0.15, 1.0], "jitter": "heavy", "jitter_p": 0.8, "blur_p": 0.5,
                  "blur_sigma": [0.1, 2.0], "blur_kernel_frac": 0.1, "flip_p": 0.5, "rot90": True},
    }

    def __init__(self, cfg: dict[str, Any], num_classes: int) -> None:
        super().__init__(cfg, num_classes)
        self.encoder = build_encoder(cfg["encoder"])
        d = self.encoder.out_dim
        self.projector = mlp(d, int(cfg.get("proj_hidden") or d), int(cfg.get("proj_dim", 128)))
        self.views = build_views("simclr", int(cfg["image_size"]), cfg.get("views"))
        self.temperature = float(cfg.get("temperature", 0.1))

    def training_step(self, batch: dict[str, torch.Tensor], ctx: StepContext) -> dict[str, torch.Tensor]:
        images = batch["image"]
        x1, x2 = self.views(images), self.views(images)
        with ctx.autocast():
            z = self.projector(self.encoder(torch.cat([x1, x2], 0)))
        z1, z2 = z.float().chunk(2)
        loss = nt_xent(gather(z1), gather(z2), self.temperature)
        return {"loss": loss}
