"""``lmc`` (seed 003): two H&E-scaled views, Barlow Twins (λ = 0.005), ViT-tiny, AdamW + WSA schedule."""
from __future__ import annotations

from typing import Any

import torch

from stainshift.augment import build_views
from stainshift.methods.base import Method, StepContext, register_method
from stainshift.methods.losses import barlow_twins, gather
from stainshift.models import build_encoder, mlp


@register_method("lmc")
class LMC(Method):
    """Latent manifold compaction: H&E-space views (α, β ~ U[0.5, 2]) + Barlow Twins.

    cfg keys: ``encoder``, ``views`` (HEViews kwargs), ``lambd`` (0.005), ``proj_dim``,
    ``proj_hidden``, ``proj_layers`` (projector Linear-BN-ReLU … Linear; ``proj_bn``). Under DDP the
    cross-correlation uses the gathered global batch. The seed gives no projector; the Barlow Twins
    reference uses a 3-layer 8192-wide one — the default here is 2 layers of 2048 (configurable).
    """

    # seed 003: ViT-tiny (12 blocks, 3 heads, dim 192), AdamW wd 0.01, batch 32, warm-up → 1e-4 →
    # anneal to 1e-7, λ 0.005, α, β ~ U[0.5, 2], 256 px patches (patch size 16).
    seed_defaults = {
        "encoder": {"arch": "vit_tiny", "patch": 16}, "epochs": 100, "batch_size": 32, "optimizer": "adamw",
        "lr": 1e-4, "weight_decay": 0.01, "schedule": "wsa", "warmup_epochs": 10, "anneal_fraction": 0.2,
        "final_lr": 1e-7, "lambd": 0.005, "proj_hidden": 2048, "proj_dim": 2048, "proj_layers": 2,
        "proj_bn": True, "views": {"alpha_range": [0.5, 2.0], "beta_range": [0.5, 2.0], "flip_p": 0.5, "rot90": True},
    }

    def __init__(self, cfg: dict[str, Any], num_classes: int) -> None:
        super().__init__(cfg, num_classes)
        self.encoder = build_encoder(cfg["encoder"])
        d = self.encoder.out_dim
        self.projector = mlp(d, int(cfg.get("proj_hidden", 2048)), int(cfg.get("proj_dim", 2048)),
                             layers=int(cfg.get("proj_layers", 2)), bn=bool(cfg.get("proj_bn", True)))
        self.views = build_views("he", int(cfg["image_size"]), cfg.get("views"))
        self.lambd = float(cfg.get("lambd", 0.005))

    def training_step(self, batch: dict[str, torch.Tensor], ctx: StepContext) -> dict[str, torch.Tensor]:
        images = batch["image"]
        x1, x2 = self.views(images), self.views(images)
        with ctx.autocast():
            z1 = self.projector(self.encoder(x1))
            z2 = self.projector(self.encoder(x2))
        loss = barlow_twins(gather(z1.float()), gather(z2.float()), self.lambd)
        return {"loss": loss}
