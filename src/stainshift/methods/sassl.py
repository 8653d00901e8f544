"""SASSL: stain-adaptive self-supervised learning (seed 002, Sec. 3.1–3.2).

An SSL base (SimSiam by default; SimCLR, BYOL, MoCo v2 selectable) produces the projections
S1, S2 of two views. A stain discriminator D (linear + LeakyReLU layers with a residual
shortcut after the last LeakyReLU) maps them to l1, l2; the stain affinity matrix is
A = l1 l2ᵀ (N × N) and the relation matrix R has r_ij = 1 iff patches i and j come from the
same WSI (each WSI is one "stain"; the diagonal — two views of one patch — is always 1).

How the garbled Eqs. 4–6 are read here
--------------------------------------
The extracted text reads ``min , max L_sal(G, D) + L_ssl(G)`` over ``θG, θD / θD`` and then
    L_G = L_ssl − ||(1−R)A||₁/||1−R||₁ − ||RA||₁/||R||₁  ( "= L_ssl − ||A||₁/N²" ),
    L_D = ||(1−R)A||₁/||1−R||₁ − ||RA||₁/||R||₁ .
The fraction bars were lost: the numerators ``||(1−R)A||₁ ||RA||₁ ||A||₁`` and the
denominators ``||(1−R)||₁ − ||R||₁ ... N²`` sit on separate lines, which pins the two minus signs
of L_G to *both* fractions. We therefore implement, with (1−R)A and RA element-wise masks and
||·||₁ the entry sum (the mean affinity over each pair set):
    a_diff = Σ (1−R)⊙A / Σ(1−R)   (pairs from different slides),
    a_same = Σ R⊙A / Σ R          (pairs from the same slide),
    L_D = a_diff − a_same                     — D is minimised over θ_D,
    L_G = L_ssl − λ_adv (a_diff + a_same)     — the encoder (G) is minimised over θ_G.
Why: the prose states exactly this — for D "the affinity of different source patches is
suppressed, and the affinity of homologous patches is improved"; for G "all the values in the
affinity matrix A should be as large as possible so that the discriminator cannot discriminate",
i.e. ||A||₁/N² (equal to a_diff + a_same up to the weighting of the two pair sets, which we keep
balanced as in the fractions). On the stain term — the different-slide affinity a_diff — G and D
pull in opposite directions; this is the min–max of Eq. 4. Training alternates: one D step on
detached projections, then one G step with D frozen ("G and D trained alternately").
``adv_mode = "reversal"`` offers the textbook GAN reading of Eq. 4 instead (L_G = L_ssl − λ L_D),
and ``adv_mode = "gap"`` makes the two pair means equal without rewarding either's level,
L_adv = (a_same − a_diff)².

The ``paper`` reading rewards G for raising *every* affinity, and the maximum is reached when all
projections map to one point after D: a collapse. SimSiam's own loss is minimal at that collapse
too (its stop-gradient only slows the way there), so nothing pushes back. Measured on TUPAC16
crops (docs/methods.md): with λ_adv = 1 the same- and other-slide affinities both rose to 0.93 and
the probe stayed near chance. ``seed_defaults`` keep the literal reading (``paper``); the CPU-budget
configs use ``gap``, which the learning check does not flag. With a single slide in the batch (R all ones) or no slide pair (R = I) one of
the pair sets is empty and D cannot be trained: both adversarial terms are then skipped
(``adv_active`` = 0 in the log) instead of pushing every affinity up.

A = l1 l2ᵀ is unbounded for raw vectors (D could scale its output without limit), so by default
l1, l2 are L2-normalised first (``affinity: cosine``, a_ij ∈ [−1, 1]); ``affinity: dot`` keeps
the raw product.

Why one module of this size: seed 002 is one method — its SSL bases (SimSiam, SimCLR, BYOL, MoCo),
the stain discriminator and the alternating update — whose losses live in
:mod:`stainshift.methods.losses`.
"""
from __future__ import annotations

import copy
import math
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from stainshift.augment import build_views
from stainshift.methods.base import (COLLAPSE_THRESHOLD, CONTRASTIVE_CHANCE_MARGIN, Method, StepContext, check_chance,
                                     check_collapse, register_method)
from stainshift.methods import fusion as _fusion  # noqa: F401  (registers the "fused" encoder arch)
from stainshift.methods.losses import (ADV_MODES, AFFINITY_SATURATION, affinity_matrix, discriminator_loss,
                                       embedding_spread, gather, generator_adversarial_loss, has_both_pair_sets,
                                       negative_cosine, nt_xent, nt_xent_chance, pair_means, relation_matrix,
                                       slide_codes)
from stainshift.models import build_encoder, mlp
from stainshift.train.config import METHOD_SETTINGS

__all__ = [
    "StainDiscriminator",
    "SSLBase",
    "SASSLModel",
    "SASSLConfig",
    "sassl_step",
    "sassl_update",
    "SASSL",
    "SSL_BASES",
]

SSL_BASES = ("simsiam", "simclr", "byol", "moco")


# --------------------------------------------------------------------------------------------
# Stain discriminator (its losses: stainshift.methods.losses.adversarial)
# --------------------------------------------------------------------------------------------
class StainDiscriminator(nn.Module):
    """D (seed 002, Fig. 1): ``depth`` × (Linear → LeakyReLU) with a shortcut after the last one.

    l = s + h_depth, h_k = LeakyReLU(W_k h_{k−1} + b_k), h_0 = s; s is S1 or S2. The output keeps
    the input width so the residual sum is defined.
    """

    def __init__(self, dim: int, hidden: int | None = None, depth: int = 2, negative_slope: float = 0.2) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"discriminator depth must be >= 1, got {depth}")
        hidden = hidden or dim
        widths = [dim] + [hidden] * (depth - 1) + [dim]
        layers: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(a, b), nn.LeakyReLU(negative_slope)]
        self.body = nn.Sequential(*layers)

    def forward(self, s: Tensor) -> Tensor:
        """l = s + body(s) (residual MLP of seed 002's stain discriminator D)."""
        return s + self.body(s)


# --------------------------------------------------------------------------------------------
# SSL bases
# --------------------------------------------------------------------------------------------
class SSLBase(nn.Module):
    """The SSL framework under SASSL: projections S1, S2 of two views and the SSL loss.

    * ``simsiam`` (default): projector (3-layer MLP, BN) + predictor (bottleneck MLP);
      L = ½[D(p1, sg z2) + D(p2, sg z1)], D = 1 − cos (seed 002 Eq. 3).
    * ``simclr``: projector; NT-Xent(z1, z2) with temperature ``tau``.
    * ``byol``: online projector + predictor, EMA target encoder/projector (``momentum``);
      L = ½[D(p1, z2') + D(p2, z1')] with D = 1 − cos (2 − 2cos up to a factor 2).
    * ``moco`` (v2): EMA key encoder/projector and a queue of ``queue_size`` keys; symmetric
      InfoNCE with temperature ``tau``.
    ``encoder`` maps images to (N, feat_dim) features. S1, S2 are the online projections.
    """

    def __init__(
        self,
        encoder: nn.Module,
        feat_dim: int,
        base: str = "simsiam",
        proj_dim: int = 256,
        pred_dim: int = 64,
        tau: float | None = None,
        momentum: float = 0.99,
        queue_size: int = 1024,
    ) -> None:
        super().__init__()
        if base not in SSL_BASES:
            raise ValueError(f"unknown SSL base {base!r}; choose from {SSL_BASES}")
        self.base = base
        self.encoder = encoder
        self.momentum = momentum
        self.tau = tau if tau is not None else {"simclr": 0.1, "moco": 0.2}.get(base, 0.1)
        simsiam = base == "simsiam"  # SimSiam: 3 layers, BN on the output too; the others: 2 layers
        self.projector = mlp(feat_dim, proj_dim, proj_dim, layers=3 if simsiam else 2, bn=True, last_bn=simsiam)
        self.predictor: nn.Module | None = None
        if base in ("simsiam", "byol"):
            self.predictor = mlp(proj_dim, pred_dim, proj_dim, layers=2, bn=True)
        self.target_encoder: nn.Module | None = None
        self.target_projector: nn.Module | None = None
        if base in ("byol", "moco"):
            self.target_encoder = copy.deepcopy(encoder).requires_grad_(False)
            self.target_projector = copy.deepcopy(self.projector).requires_grad_(False)
        if base == "moco":
            self.register_buffer("queue", F.normalize(torch.randn(queue_size, proj_dim), dim=1))
            self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.proj_dim = proj_dim

    def chance(self, n: int) -> float | None:
        """L_ssl of an encoder that cannot tell the positive apart: log(2N − 1) for SimCLR,
        log(1 + K) for MoCo (K queued keys); None for SimSiam / BYOL (minimal at collapse)."""
        if self.base == "simclr":
            return nt_xent_chance(n)
        if self.base == "moco":
            return math.log(1 + self.queue.shape[0])
        return None

    def online_parameters(self) -> list[nn.Parameter]:
        """Parameters trained by the generator optimizer (not the EMA copies)."""
        mods = [self.encoder, self.projector] + ([self.predictor] if self.predictor is not None else [])
        return [p for m in mods for p in m.parameters()]

    @torch.no_grad()
    def momentum_update(self) -> None:
        """EMA θ' ← m θ' + (1 − m) θ for BYOL / MoCo targets (call after the G step)."""
        if self.target_encoder is None:
            return
        for online, target in ((self.encoder, self.target_encoder), (self.projector, self.target_projector)):
            for p, q in zip(online.parameters(), target.parameters()):
                q.mul_(self.momentum).add_(p.detach(), alpha=1 - self.momentum)
            for b, c in zip(online.buffers(), target.buffers()):
                c.copy_(b)

    @torch.no_grad()
    def _targets(self, v: Tensor) -> Tensor:
        return self.target_projector(self.target_encoder(v))

    def _moco_infonce(self, q: Tensor, k: Tensor) -> Tensor:
        q, k = F.normalize(q, dim=1), F.normalize(k, dim=1)
        pos = (q * k).sum(dim=1, keepdim=True)
        neg = q @ self.queue.clone().T  # the queue is updated in place after this forward
        logits = torch.cat([pos, neg], dim=1) / self.tau
        return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))

    @torch.no_grad()
    def _enqueue(self, k: Tensor) -> None:
        k = F.normalize(k, dim=1)
        n, size = k.shape[0], self.queue.shape[0]
        ptr = int(self.queue_ptr)
        idx = (torch.arange(n, device=k.device) + ptr) % size
        self.queue[idx] = k
        self.queue_ptr.fill_((ptr + n) % size)

    def forward(self, v1: Tensor, v2: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Return (S1, S2, L_ssl, encoder features of v1) for two views (N, 3, H, W)."""
        h1 = self.encoder(v1)
        z1, z2 = self.projector(h1), self.projector(self.encoder(v2))
        if self.base == "simsiam":
            p1, p2 = self.predictor(z1), self.predictor(z2)
            loss = 0.5 * (negative_cosine(p1, z2) + negative_cosine(p2, z1))
        elif self.base == "simclr":
            loss = nt_xent(z1, z2, self.tau)
        elif self.base == "byol":
            p1, p2 = self.predictor(z1), self.predictor(z2)
            t1, t2 = self._targets(v1), self._targets(v2)
            loss = 0.5 * (negative_cosine(p1, t2) + negative_cosine(p2, t1))
        else:  # moco v2
            k1, k2 = self._targets(v1), self._targets(v2)
            loss = 0.5 * (self._moco_infonce(z1, k2) + self._moco_infonce(z2, k1))
            if self.training:
                self._enqueue(torch.cat([k1, k2]))
        return z1, z2, loss, h1


# --------------------------------------------------------------------------------------------
# The SASSL model and its alternating adversarial step
# --------------------------------------------------------------------------------------------
@dataclass
class SASSLConfig:
    """SASSL hyper-parameters (config keys under ``pretrain.sassl``)."""

    adv_weight: float = 1.0
    adv_mode: str = "paper"  # paper | reversal | gap
    affinity: str = "cosine"  # cosine | dot
    d_steps: int = 1


class SASSLModel(nn.Module):
    """SSL base + stain discriminator D on the projections (seed 002, Fig. 1)."""

    def __init__(self, ssl: SSLBase, disc_hidden: int | None = None, disc_depth: int = 2,
                 negative_slope: float = 0.2) -> None:
        super().__init__()
        self.ssl = ssl
        self.discriminator = StainDiscriminator(ssl.proj_dim, disc_hidden, disc_depth, negative_slope)

    @property
    def encoder(self) -> nn.Module:
        """The online encoder of the SSL base (what is exported)."""
        return self.ssl.encoder

    def affinity(self, s1: Tensor, s2: Tensor, normalize: bool = True) -> Tensor:
        """A = D(S1) D(S2)ᵀ."""
        return affinity_matrix(self.discriminator(s1), self.discriminator(s2), normalize)


def sassl_update(
    model: SASSLModel,
    v1: Tensor,
    v2: Tensor,
    slide_ids: Sequence[str] | Tensor,
    step_d: Callable[[Tensor], None],
    step_g: Callable[[Tensor], None],
    cfg: SASSLConfig | None = None,
    autocast: Callable[[], AbstractContextManager] = nullcontext,
    gather_fn: Callable[[Tensor], Tensor] = lambda t: t,
) -> dict[str, Tensor]:
    """One alternating SASSL update: D step(s) on detached S1, S2, then the G step with D frozen.

    D:  minimise L_D = a_diff − a_same over θ_D (``step_d(loss)`` back-propagates and steps D).
    G:  minimise L_ssl + λ_adv · L_adv over θ_G (encoder, projector, predictor) with D frozen;
        L_adv as in :func:`generator_adversarial_loss` (``step_g(loss)`` steps the encoder side).
    Without both same- and different-slide pairs in the batch the adversarial terms are skipped
    (G minimises L_ssl alone; ``adv_active`` = 0). ``gather_fn`` concatenates S1, S2 and the slide
    ids over DDP ranks (identity on one process) so A and R cover the global batch. A non-finite
    loss skips every update (on all ranks) and is returned as ``loss`` so the training loop stops
    with its message before weights are spoiled. Returns detached scalars for logging: the loss
    terms, the pair means ``affinity_same`` / ``affinity_diff``, the affinity spread ``affinity_std``
    (std of A's entries; → 0 when every affinity is equal) and the collapse statistics
    ``emb_std`` (encoder features) and ``proj_std`` (S1).
    """
    cfg = cfg or SASSLConfig()
    normalize = cfg.affinity == "cosine"
    with autocast():
        s1, s2, l_ssl, h1 = model.ssl(v1, v2)
    l_ssl = l_ssl.float()
    if not _all_finite(l_ssl.detach()):
        return {"loss": l_ssl.detach()}
    s1, s2 = gather_fn(s1.float()), gather_fn(s2.float())
    r = relation_matrix(gather_fn(slide_codes_tensor(slide_ids, v1.device)), device=v1.device)
    active = has_both_pair_sets(r)
    l_d = torch.zeros((), device=v1.device)
    if active:
        for _ in range(max(cfg.d_steps, 1)):
            l_d = discriminator_loss(model.affinity(s1.detach(), s2.detach(), normalize), r)
            if not _all_finite(l_d.detach()):
                return {"loss": l_d.detach()}
            step_d(l_d)
    # G step against the *updated* D (alternating updates): A recomputed with D frozen
    disc = model.discriminator
    disc.requires_grad_(False)
    try:
        a = model.affinity(s1, s2, normalize)
        l_adv = generator_adversarial_loss(a, r, cfg.adv_mode) if active else torch.zeros((), device=v1.device)
        loss = l_ssl + cfg.adv_weight * l_adv
        if not _all_finite(loss.detach()):
            return {"loss": loss.detach()}
        step_g(loss)
    finally:
        disc.requires_grad_(True)
    model.ssl.momentum_update()
    a = a.detach()
    a_diff, a_same = pair_means(a, r)
    chance = model.ssl.chance(s1.shape[0])
    extra = {"loss_ssl_chance": torch.tensor(chance)} if chance is not None else {}
    return {**extra,
        "loss": loss.detach(),
        "loss_ssl": l_ssl.detach(),
        "loss_adv": l_adv.detach(),
        "loss_d": l_d.detach(),
        "affinity_diff": a_diff,
        "affinity_same": a_same,
        "affinity_std": a.std(),
        "adv_active": torch.tensor(float(active)),
        "same_slide_pairs": (r.sum() - r.shape[0]).detach(),
        "emb_std": embedding_spread(h1),
        "proj_std": embedding_spread(s1),
    }


def _all_finite(x: Tensor) -> bool:
    """Whether ``x`` is finite on every DDP rank (all ranks take the same branch)."""
    flag = torch.isfinite(x).all().to(torch.float32)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag)


def slide_codes_tensor(slide_ids: Sequence[str] | Tensor, device: torch.device | str | None = None) -> Tensor:
    """Slide ids as an int64 tensor on ``device`` (tensors kept as they are, strings coded)."""
    if isinstance(slide_ids, Tensor):
        return slide_ids.to(device=device, dtype=torch.long)
    return slide_codes(slide_ids).to(device)


def sassl_step(
    model: SASSLModel,
    v1: Tensor,
    v2: Tensor,
    slide_ids: Sequence[str] | Tensor,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer,
    cfg: SASSLConfig | None = None,
) -> dict[str, float]:
    """:func:`sassl_update` with two plain optimizers (no AMP / DDP) — for scripts and tests."""

    def make_step(opt: torch.optim.Optimizer) -> Callable[[Tensor], None]:
        def step(loss: Tensor) -> None:
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        return step

    out = sassl_update(model, v1, v2, slide_ids, make_step(opt_d), make_step(opt_g), cfg)
    return {k: float(v) for k, v in out.items()}


# --------------------------------------------------------------------------------------------
# The registered method
# --------------------------------------------------------------------------------------------
def _gather_ids(x: Tensor) -> Tensor:
    """Non-differentiable all-gather of an int tensor over DDP ranks (identity otherwise)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def _gather_any(x: Tensor) -> Tensor:
    return _gather_ids(x) if not x.is_floating_point() else gather(x)


@register_method("sassl")
class SASSL(Method):
    """Seed 002: SSL base + stain discriminator, alternating adversarial updates (see module doc).

    Config keys (``pretrain.sassl``): ``encoder`` (spec), ``image_size``, ``views`` (SimCLRViews
    kwargs; SimSiam-style by default), ``ssl_base`` (simsiam | simclr | byol | moco), ``proj_dim``,
    ``pred_dim``, ``tau``, ``momentum_ema`` (BYOL / MoCo target EMA), ``queue_size``, ``disc_hidden``, ``disc_depth``,
    ``adv_weight`` (λ_adv), ``adv_mode`` (paper | reversal | gap), ``affinity`` (cosine | dot),
    ``d_steps``, ``tiles_per_slide`` (slide-balanced batches); optimizers ``encoder`` and ``disc``
    under ``optimizers:``.
    """

    slide_balanced = True
    automatic_optimization = False
    settings = METHOD_SETTINGS["sassl"]  # seed defaults, supervised: stainshift.train.config

    def __init__(self, cfg: dict[str, Any], num_classes: int) -> None:
        super().__init__(cfg, num_classes)
        self.encoder = build_encoder(cfg.get("encoder") or {"arch": "resnet18"})
        ssl = SSLBase(
            self.encoder,
            self.encoder.out_dim,
            base=str(cfg.get("ssl_base", "simsiam")),
            proj_dim=int(cfg.get("proj_dim", 256)),
            pred_dim=int(cfg.get("pred_dim", 64)),
            tau=cfg.get("tau"),
            momentum=float(cfg.get("momentum_ema", 0.99)),
            queue_size=int(cfg.get("queue_size", 1024)),
        )
        self.model = SASSLModel(ssl, cfg.get("disc_hidden"), int(cfg.get("disc_depth", 2)))
        self.sassl_cfg = SASSLConfig(
            adv_weight=float(cfg.get("adv_weight", 1.0)),
            adv_mode=str(cfg.get("adv_mode", "paper")),
            affinity=str(cfg.get("affinity", "cosine")),
            d_steps=int(cfg.get("d_steps", 1)),
        )
        if self.sassl_cfg.adv_mode not in ADV_MODES or self.sassl_cfg.affinity not in ("cosine", "dot"):
            raise ValueError(f"sassl: adv_mode must be one of {ADV_MODES} and affinity cosine|dot, got "
                             f"{self.sassl_cfg.adv_mode!r} / {self.sassl_cfg.affinity!r}")
        self.views = build_views("simclr", int(cfg["image_size"]), cfg.get("views"))

    def optimizer_params(self) -> dict[str, Any]:
        """Two parameter groups: the encoder side and the stain discriminator (updated alternately)."""
        return {"encoder": self.model.ssl.online_parameters(), "disc": list(self.model.discriminator.parameters())}

    def training_step(self, batch: dict[str, Tensor], ctx: StepContext) -> dict[str, Tensor]:
        """One SASSL step: discriminator update on the views' stain affinities, then the SSL +
        adversarial encoder update."""
        images = batch["image"]
        v1, v2 = self.views(images), self.views(images)

        def step_d(loss: Tensor) -> None:
            ctx.backward_step(loss, "disc")

        def step_g(loss: Tensor) -> None:
            ctx.backward_step(loss, "encoder")
            ctx.zero_grad("disc")

        return sassl_update(self.model, v1, v2, batch["slide"], step_d, step_g, self.sassl_cfg,
                            autocast=ctx.autocast, gather_fn=_gather_any)

    def export_encoder(self) -> nn.Module:
        """The online encoder (the exported feature extractor)."""
        return self.encoder

    @classmethod
    def learning_rules(cls, history: list[dict[str, Any]]) -> list[str]:
        """Base collapse rule on the encoder features, plus: the projections collapsed (``proj_std``
        below ``COLLAPSE_THRESHOLD`` = 0.05, SimSiam's collapse); the discriminator's affinities
        saturated — the mean cosine affinity of *different*-slide pairs ``affinity_diff`` ≥
        ``AFFINITY_SATURATION`` = 0.9 at the last epoch, i.e. after D every patch points the same
        way (the end point of the ``paper`` reading; healthy runs on TUPAC16 ended at 0.5–0.7);
        and, for the SimCLR / MoCo bases, L_ssl within 2 % of its chance level ``loss_ssl_chance``."""
        saturated = []
        value = history[-1].get("affinity_diff") if history else None
        if value is not None and float(value) >= AFFINITY_SATURATION:
            saturated = [f"affinity_diff = {float(value):.3g} ≥ {AFFINITY_SATURATION:g} at the last epoch: the "
                         f"stain affinities saturated (every patch alike after D)"]
        return (super().learning_rules(history) + check_collapse(history, "proj_std", COLLAPSE_THRESHOLD) + saturated
                + check_chance(history, "loss_ssl", "loss_ssl_chance", 1.0 - CONTRASTIVE_CHANCE_MARGIN))
