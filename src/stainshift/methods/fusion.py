"""SASSL's downstream fusion of a frozen general encoder and a trainable special encoder.

Seed 002, Sec. 3.3, Eqs. 7–9, with E_g the SASSL-pretrained ("general") encoder, frozen, and E_s
the downstream model's own ("special") encoder, trained:

    f_g^l = E_g^l(f_g^{l−1}),                 (7)
    f_s^l = E_s^l(f_s^{l−1}) + f_g^l,         (8)   residual learning on the general feature
    f     = f_g * f_s + σ(f_s),               (9)   element-wise product, σ the logistic sigmoid

with f_g^0 = f_s^0 = the (normalised) image and l running over the stem and the residual stages
of the two (same-shaped) encoders. Eq. 9 is applied to the last stage's maps, then global
average pooling gives the (B, C) feature.

Use from fine-tuning::

    general = load_encoder("models/sassl/encoder.pt")         # any ResNet-family encoder
    enc = build_fusion_encoder(general, init="random")         # E_s fresh, E_g frozen
    model = Classifier(enc, num_classes)                       # trains E_s + head only

The fused encoder is registered as encoder arch ``"fused"`` (``spec = {"arch": "fused",
"general": <spec>, "special": <spec>}``), so ``build_encoder(enc.spec)`` rebuilds it and the
saved state dict restores both branches.
"""
from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stainshift.models import build_encoder, register_encoder

__all__ = ["FusionEncoder", "build_fusion_encoder", "encoder_layers", "finetune_encoder", "fusion_selected"]


def encoder_layers(encoder: nn.Module) -> tuple[nn.Module, list[nn.Module]]:
    """(input normalisation, [stem, stage 1, ..., stage L]) of a ResNet-family encoder."""
    stem = getattr(encoder, "stem", None)
    stages = getattr(encoder, "stages", None)
    if stem is None or stages is None:
        raise TypeError(
            f"fusion needs a stage-wise encoder with .stem and .stages (the ResNet family); "
            f"got {type(encoder).__name__} (arch {getattr(encoder, 'spec', {}).get('arch')!r})"
        )
    norm = getattr(encoder, "norm", None) or nn.Identity()
    return norm, [stem, *stages]


class FusionEncoder(nn.Module):
    """Seed 002 Eqs. 7–9: frozen E_g beside trainable E_s, per-layer residual sum, gated output."""

    def __init__(self, general: nn.Module, special: nn.Module, freeze_general: bool = True) -> None:
        super().__init__()
        self.general = general
        self.special = special
        self.freeze_general = freeze_general
        _, g_layers = encoder_layers(general)
        _, s_layers = encoder_layers(special)
        if len(g_layers) != len(s_layers):
            raise ValueError(f"general and special encoders have {len(g_layers)} vs {len(s_layers)} layers")
        self.out_dim = int(getattr(special, "out_dim"))
        if int(getattr(general, "out_dim")) != self.out_dim:
            raise ValueError(f"general out_dim {general.out_dim} != special out_dim {self.out_dim}")
        if freeze_general:
            self.general.requires_grad_(False)
            self.general.eval()
        self.spec: dict[str, Any] = {
            "arch": "fused",
            "general": copy.deepcopy(getattr(general, "spec", {})),
            "special": copy.deepcopy(getattr(special, "spec", {})),
            "freeze_general": freeze_general,
        }

    def train(self, mode: bool = True) -> "FusionEncoder":
        """Train E_s; E_g stays in eval mode (frozen BatchNorm statistics) when frozen."""
        super().train(mode)
        if self.freeze_general:
            self.general.eval()
        return self

    def forward_maps(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Final (f_g, f_s) maps after Eqs. 7–8."""
        g_norm, g_layers = encoder_layers(self.general)
        s_norm, s_layers = encoder_layers(self.special)
        f_g, f_s = g_norm(x), s_norm(x)
        for l, (e_g, e_s) in enumerate(zip(g_layers, s_layers)):
            if self.freeze_general:
                with torch.no_grad():
                    f_g = e_g(f_g)
            else:
                f_g = e_g(f_g)
            out = e_s(f_s)
            if out.shape != f_g.shape:
                raise ValueError(f"fusion layer {l}: special {tuple(out.shape)} vs general {tuple(f_g.shape)}")
            f_s = out + f_g  # Eq. 8
        return f_g, f_s

    def forward(self, x: Tensor) -> Tensor:
        """Pooled fused map f = f_g ⊙ f_s + σ(f_s) of the general and special encoders (seed 002 Eq. 9)."""
        f_g, f_s = self.forward_maps(x)
        f = f_g * f_s + torch.sigmoid(f_s)  # Eq. 9
        return torch.flatten(F.adaptive_avg_pool2d(f, 1), 1)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters that receive gradients (the special encoder; the general one too when not frozen)."""
        return [p for p in self.parameters() if p.requires_grad]


def build_fusion_encoder(general: nn.Module, init: str = "random", special_spec: dict | None = None,
                         freeze_general: bool = True, seed: int = 0) -> FusionEncoder:
    """Wrap a pretrained general encoder with a special encoder of the same architecture.

    ``init``: ``"random"`` — E_s freshly initialised (seed 002: the downstream model's own
    extractor) with ``seed``; ``"copy"`` — E_s starts as a copy of E_g. ``special_spec``
    overrides E_s's spec (must produce the same per-layer shapes).
    """
    spec = special_spec or getattr(general, "spec", None)
    if init == "copy":
        special = copy.deepcopy(general)
        special.requires_grad_(True)
    elif init == "random":
        if spec is None:
            raise ValueError("the general encoder carries no .spec; pass special_spec")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            special = build_encoder(spec)
    else:
        raise ValueError(f"fusion init must be 'random' or 'copy', got {init!r}")
    param = next(general.parameters(), None)
    if param is not None:
        special = special.to(param.device)
    return FusionEncoder(general, special, freeze_general=freeze_general)


@register_encoder("fused")
def _fused(general: dict, special: dict | None = None, freeze_general: bool = True) -> FusionEncoder:
    """Rebuild a fused encoder from its spec (weights come from the saved state dict)."""
    return FusionEncoder(build_encoder(general), build_encoder(special or general), freeze_general=freeze_general)


def fusion_selected(method: str, finetune_cfg: dict[str, Any]) -> bool:
    """Whether ``finetune.fusion`` asks for the fused encoder for ``method``.

    ``fusion: true`` fuses every method; a list (e.g. ``[sassl]``) only the named ones;
    ``false`` / absent none.
    """
    sel = finetune_cfg.get("fusion", False)
    if isinstance(sel, bool):
        return sel
    if isinstance(sel, str):
        return sel == method
    return method in set(sel or [])


def finetune_encoder(encoder: nn.Module, method: str, finetune_cfg: dict[str, Any]) -> nn.Module:
    """The encoder fine-tuning should train: the fused one (Eqs. 7–9) when selected, else ``encoder``.

    Keys: ``fusion`` (see :func:`fusion_selected`), ``fusion_init`` (random | copy), ``seed``. Only
    E_s and the head train, so a fused encoder needs full fine-tuning (the linear probe on frozen
    features would leave E_s at its initialisation).
    """
    if not fusion_selected(method, finetune_cfg):
        return encoder
    return build_fusion_encoder(encoder, init=str(finetune_cfg.get("fusion_init", "random")),
                                seed=int(finetune_cfg.get("seed", 0)))
