"""``lmc`` (seed 003): two H&E-scaled views, Barlow Twins (λ = 0.005), ViT-tiny, AdamW + WSA schedule."""
from __future__ import annotations

from typing import Any

import torch

from stainshift.augment import build_views
from stainshift.methods.base import Method, StepContext, check_chance, check_decrease, register_method
from stainshift.methods.losses import barlow_twins_terms, embedding_spread, gather
from stainshift.models import build_encoder, mlp
from stainshift.train.config import METHOD_SETTINGS

#: the Barlow Twins loss must end below this fraction of its first epoch's value
BT_DECREASE_FRACTION = 0.8
#: the invariance term Σ(1 − C_ii)² must end below this fraction of d (its value for independent views)
BT_INVARIANCE_FRACTION = 0.5


@register_method("lmc")
class LMC(Method):
    """Latent manifold compaction: two views with H&E scaled by α, β ~ U[0.5, 2] + Barlow Twins,
    L = Σ_i (1 − C_ii)² + λ Σ_{i≠j} C_ij² on the projections (seed 003).

    cfg keys: ``encoder`` (seed: ViT-tiny; any registered arch, e.g. a ResNet for CPU budgets),
    ``views`` (:class:`stainshift.augment.HEViews` kwargs; flips / rot90 are off in the seed),
    ``lambd`` (0.005), ``proj_dim``, ``proj_hidden``, ``proj_layers`` (projector Linear-BN-ReLU …
    Linear; ``proj_bn``). Under DDP the cross-correlation uses the gathered global batch. The seed
    gives no projector; the Barlow Twins reference uses a 3-layer 8192-wide one — the default here
    is 2 layers of 2048 (configurable). Logged per step: ``loss``, ``loss_on`` (invariance term)
    with ``loss_on_chance`` = d, ``loss_off`` (λ × redundancy term), ``emb_std``, ``proj_std``.
    """

    settings = METHOD_SETTINGS["lmc"]  # seed defaults, supervised: stainshift.train.config

    def __init__(self, cfg: dict[str, Any], num_classes: int) -> None:
        super().__init__(cfg, num_classes)
        self.encoder = build_encoder(cfg["encoder"])
        d = self.encoder.out_dim
        self.projector = mlp(d, int(cfg.get("proj_hidden", 2048)), int(cfg.get("proj_dim", 2048)),
                             layers=int(cfg.get("proj_layers", 2)), bn=bool(cfg.get("proj_bn", True)))
        self.views = build_views("he", int(cfg["image_size"]), cfg.get("views"))
        self.lambd = float(cfg.get("lambd", 0.005))

    def training_step(self, batch: dict[str, torch.Tensor], ctx: StepContext) -> dict[str, torch.Tensor]:
        """Barlow Twins loss between two H&E-scaled views (seed 003), with its terms and collapse statistics."""
        images = batch["image"]
        x1, x2 = self.views(images), self.views(images)
        with ctx.autocast():
            h1 = self.encoder(x1)
            z1 = self.projector(h1)
            z2 = self.projector(self.encoder(x2))
        z1, z2 = gather(z1.float()), gather(z2.float())
        on_diag, off_diag = barlow_twins_terms(z1, z2)
        loss = on_diag + self.lambd * off_diag
        return {"loss": loss, "loss_on": on_diag.detach(), "loss_on_chance": torch.tensor(float(z1.shape[1])),
                "loss_off": (self.lambd * off_diag).detach(), "emb_std": embedding_spread(h1),
                "proj_std": embedding_spread(z1)}

    @classmethod
    def learning_rules(cls, history: list[dict[str, Any]]) -> list[str]:
        """Base collapse rule, plus: the loss did not fall below ``BT_DECREASE_FRACTION`` = 0.8 × its
        first epoch, or the invariance term Σ(1 − C_ii)² is still ≥ ``BT_INVARIANCE_FRACTION`` = 0.5
        × d (d = its value for unrelated views) at the last epoch."""
        return (super().learning_rules(history) + check_decrease(history, "loss", BT_DECREASE_FRACTION)
                + check_chance(history, "loss_on", "loss_on_chance", BT_INVARIANCE_FRACTION))
