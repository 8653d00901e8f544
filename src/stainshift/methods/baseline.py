"""``baseline``: supervised cross-entropy on the tile labels with seed 000's augmentations."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from stainshift.augment import build_views
from stainshift.methods.base import Method, StepContext, register_method
from stainshift.models import build_encoder


@register_method("baseline")
class Baseline(Method):
    """Encoder + linear classifier trained with CE (tiles with label −1 are ignored).

    cfg keys: ``encoder`` (spec), ``image_size``, ``views`` (BaselineAug kwargs), ``label_smoothing``.
    """

    supervised = True
    # seed 000 (same encoder, optimizer and augmentations as its stain-embedding model)
    seed_defaults = {
        "encoder": {"arch": "resnet18_narrow"}, "epochs": 60, "batch_size": 20, "optimizer": "adam",
        "lr": 1e-4, "schedule": "step", "milestones": [35], "gamma": 0.1, "weight_decay": 0.0,
        "views": {"p": 0.5, "rotation": 20.0, "noise_std": 0.08, "crop_min": 0.9}, "label_smoothing": 0.0,
    }

    def __init__(self, cfg: dict[str, Any], num_classes: int) -> None:
        super().__init__(cfg, num_classes)
        self.encoder = build_encoder(cfg["encoder"])
        self.head = nn.Linear(self.encoder.out_dim, num_classes)
        self.views = build_views("baseline", int(cfg["image_size"]), cfg.get("views"))
        self.label_smoothing = float(cfg.get("label_smoothing", 0.0))

    def training_step(self, batch: dict[str, torch.Tensor], ctx: StepContext) -> dict[str, torch.Tensor]:
        x = self.views(batch["image"])
        labels = batch["label"]
        with ctx.autocast():
            logits = self.head(self.encoder(x))
        valid = labels >= 0
        if not bool(valid.any()):
            # keep every parameter in the graph (DDP) while contributing nothing
            loss = logits.float().sum() * 0.0
            return {"loss": loss, "acc": torch.zeros((), device=loss.device)}
        loss = F.cross_entropy(logits.float(), labels, ignore_index=-1, label_smoothing=self.label_smoothing)
        acc = (logits.argmax(1)[valid] == labels[valid]).float().mean()
        return {"loss": loss, "acc": acc.detach()}
