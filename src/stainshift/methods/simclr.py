"""``simclr`` (seed 001): two random views, MLP projection, NT-Xent (τ = 0.1), LARS by default."""
from __future__ import annotations

from typing import Any

import torch

from stainshift.augment import build_views
from stainshift.methods.base import CONTRASTIVE_CHANCE_MARGIN, Method, StepContext, check_chance, register_method
from stainshift.methods.losses import embedding_spread, gather, nt_xent, nt_xent_chance, positive_accuracy
from stainshift.models import build_encoder, mlp
from stainshift.train.config import METHOD_SETTINGS


@register_method("simclr")
class SimCLR(Method):
    """SimCLR v1: encoder → 2-layer MLP projection → NT-Xent over the 2N views.

    L = 1/(2N) Σ_k −log exp(sim(z_k, z_p(k))/τ) / Σ_{m≠k} exp(sim(z_k, z_m)/τ) (Chen et al. 2020a; seed 001).
    cfg keys: ``encoder``, ``image_size``, ``views`` (:class:`stainshift.augment.SimCLRViews` kwargs),
    ``temperature`` (0.1), ``proj_hidden`` (default encoder width), ``proj_dim`` (128), ``proj_bn``
    (BatchNorm after the hidden layer, default false). Under DDP the loss uses the gathered global
    batch (negatives from every rank).
    Logged per step: ``loss``, ``loss_chance`` = log(2N − 1), ``pos_acc`` / ``pos_rank`` (the
    positive is the nearest of the 2N − 1 candidates / its rank), ``emb_std`` (encoder features)
    and ``proj_std`` (projections), see :func:`stainshift.methods.losses.embedding_spread`.
    """

    settings = METHOD_SETTINGS["simclr"]  # seed defaults, supervised: stainshift.train.config

    def __init__(self, cfg: dict[str, Any], num_classes: int) -> None:
        super().__init__(cfg, num_classes)
        self.encoder = build_encoder(cfg["encoder"])
        d = self.encoder.out_dim
        self.projector = mlp(d, int(cfg.get("proj_hidden") or d), int(cfg.get("proj_dim", 128)),
                             bn=bool(cfg.get("proj_bn", False)))
        self.views = build_views("simclr", int(cfg["image_size"]), cfg.get("views"))
        self.temperature = float(cfg.get("temperature", 0.1))

    def training_step(self, batch: dict[str, torch.Tensor], ctx: StepContext) -> dict[str, torch.Tensor]:
        """NT-Xent between the projections of two views of each image (seed 001), with positive accuracy and spread."""
        images = batch["image"]
        x1, x2 = self.views(images), self.views(images)
        with ctx.autocast():
            h = self.encoder(torch.cat([x1, x2], 0))
            z = self.projector(h)
        z1, z2 = z.float().chunk(2)
        z1, z2 = gather(z1), gather(z2)
        loss = nt_xent(z1, z2, self.temperature)
        acc, rank = positive_accuracy(z1, z2)
        return {"loss": loss, "loss_chance": torch.tensor(nt_xent_chance(z1.shape[0])), "pos_acc": acc,
                "pos_rank": rank, "emb_std": embedding_spread(h), "proj_std": embedding_spread(z)}

    @classmethod
    def learning_rules(cls, history: list[dict[str, Any]]) -> list[str]:
        """Base collapse rule, plus: NT-Xent still within ``CONTRASTIVE_CHANCE_MARGIN`` = 2 % of its
        chance level log(2N − 1) at the last epoch (the positive is not found among the negatives)."""
        return super().learning_rules(history) + check_chance(history, "loss", "loss_chance",
                                                               1.0 - CONTRASTIVE_CHANCE_MARGIN)
