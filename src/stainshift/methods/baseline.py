"""``baseline``: supervised cross-entropy on the tile labels with seed 000's augmentations."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from stainshift.augment import build_views
from stainshift.methods.base import (CE_CHANCE_FRACTION, Method, StepContext, check_chance, class_weights,
                                     register_method)
from stainshift.methods.losses import embedding_spread, label_entropy
from stainshift.models import Classifier, build_encoder, build_head
from stainshift.train.config import METHOD_SETTINGS


@register_method("baseline")
class Baseline(Method):
    """Encoder + linear head trained with CE, L = 1/B Σ_i CE(f(aug(x_i)), y_i) (label −1 ignored).

    Seed 000's "baseline": the same encoder, optimizer and augmentations as its stain-embedding
    model, without ℓ_c. cfg keys: ``encoder`` (spec), ``image_size``, ``views``
    (:class:`stainshift.augment.BaselineAug` kwargs), ``label_smoothing``. Logged per step:
    ``loss``, ``ce_chance`` (label entropy of the batch), ``acc``, ``emb_std``.
    """

    settings = METHOD_SETTINGS["baseline"]  # seed defaults, supervised: stainshift.train.config

    def __init__(self, cfg: dict[str, Any], num_classes: int) -> None:
        super().__init__(cfg, num_classes)
        self.encoder = build_encoder(cfg["encoder"])
        self.head = build_head({"kind": "linear", "in_dim": self.encoder.out_dim, "num_classes": num_classes})
        self.views = build_views("baseline", int(cfg["image_size"]), cfg.get("views"))
        self.label_smoothing = float(cfg.get("label_smoothing", 0.0))
        self.ce_weight = class_weights(cfg, num_classes)

    def training_step(self, batch: dict[str, torch.Tensor], ctx: StepContext) -> dict[str, torch.Tensor]:
        """Cross-entropy of the encoder + head on one augmented view (seed 000's supervised baseline)."""
        x = self.views(batch["image"])
        labels = batch["label"]
        with ctx.autocast():
            h = self.encoder(x)
            logits = self.head(h)
        weight = None if self.ce_weight is None else self.ce_weight.to(logits.device)
        stats = {"ce_chance": label_entropy(labels, self.num_classes, weight=weight), "emb_std": embedding_spread(h)}
        valid = labels >= 0
        if not bool(valid.any()):
            # keep every parameter in the graph (DDP) while contributing nothing
            loss = logits.float().sum() * 0.0
            return {"loss": loss, "acc": torch.zeros((), device=loss.device), **stats}
        loss = F.cross_entropy(logits.float(), labels, weight=weight, ignore_index=-1,
                               label_smoothing=self.label_smoothing)
        acc = (logits.argmax(1)[valid] == labels[valid]).float().mean()
        return {"loss": loss, "acc": acc.detach(), **stats}

    def native_classifier(self) -> nn.Module:
        """Seed 000's downstream for its baseline: the encoder with the head trained end to end."""
        return Classifier(self.encoder, self.num_classes, head=self.head)

    @classmethod
    def learning_rules(cls, history: list[dict[str, Any]]) -> list[str]:
        """Base collapse rule, plus: CE not below ``CE_CHANCE_FRACTION`` = 0.95 × the label entropy of
        the batches (``ce_chance``: the CE of predicting the class frequencies, ≤ log C)."""
        return super().learning_rules(history) + check_chance(history, "loss", "ce_chance", CE_CHANCE_FRACTION)
