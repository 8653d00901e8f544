"""Stain-normalization latent embedding (seed 000) and its contrastive variant "Ours(c)".

Seed 000 (Tiard et al., "stain normalization latent embedding"), Sec. II and III-A:

* per batch X (B images) pick a reference x_r ∈ X and a normalizer g ∈ {Macenko, Reinhard,
  Vahadane} (equal probabilities by default); X̄ = g(X, x_r).
* positives S_p = {(x_i, x̄_i)}; negatives S_n = {(x_i, x_j)} ∪ {(x_i, x̄_j)}, j ≠ i — i.e.
  2(B−1) negatives per anchor x_i (the text says "cardinality B²"; the set it defines has
  2B(B−1) pairs over the batch).
* Eq. 1:  ℓ_c = −Σ_i log[ exp(sim(f^l(x_i), f^l(x̄_i))/τ) / Σ_{(x_i,x_j)∈S_n} exp(sim(f^l(x_i), f^l(x_j))/τ) ],
  sim = cosine on the flattened layer-l embedding f^l ∈ R^{h×w×M}, τ = 0.70. The positive is
  *not* in the denominator (unlike NT-Xent), so ℓ_c can be negative.
* Eq. 3:  ℓ_e = 1/(2B) (Σ_i CE(f(x_i), y_i) + Σ_i CE(f(x̄_i), y_i)).
* Eq. 4:  ℓ = w_c ℓ_c + w_e ℓ_e, w_c = w_e = 1.
* Narrow ResNet18 (32/64/128/256/256 filters, leaky ReLU), FC 256 → 512 → logits; Adam
  (β = 0.9, 0.999), lr 1e-4 → 1e-5 after 35 of 60 epochs, batch 20; augmentations each with
  p = 0.5: h/v flips, rotation ±20°, Gaussian noise σ = 0.08, crops up to 90 % of the side.
* "Ours(c)" (Sec. III): "we transform both batches ... through different normalization functions
  with respect to different targets" and train with a contrastive (NT-Xent) objective instead of
  the raw-anchored ℓ_c: here g₂ ≠ g₁ and x_r₂ ≠ x_r₁ whenever the candidates allow.

Reduction of ℓ_c (our choice, ``contrastive_reduction: mean``): Eq. 1 is written as a sum over the
B anchors while Eq. 3 is a mean, so with w_c = w_e = 1 the sum weighs the embedding term B times
the per-sample CE (B = 20: ℓ_c ≈ 20 · log 38 ≈ 73 at chance against ℓ_e ≈ 0.5) and the label signal
is lost (measured: docs/methods.md). We take the mean over anchors — the same as the sum with
w_c = 1/B — so both terms are per-sample averages and w_c = w_e = 1 weighs them equally at any
batch size. ``contrastive_reduction: sum`` restores the literal Eq. 1.

The Discussion notes the negatives' memory grows as B²; ``num_negatives`` samples a fixed number
of negatives per anchor (uniformly, without replacement) instead of all 2(B−1). Here the B × 2B
cosine matrix comes from one matrix product of the normalised embeddings (B·2B scalars, no
per-pair tensors), so memory is dominated by the 2B layer-l maps themselves; sampling is offered
as the paper's mitigation of the objective, not needed for memory at the demo's sizes.

Augmentations: :class:`stainshift.augment.BaselineAug` (the seed's set, the same as ``baseline``)
applied to [X; X̄] with one geometric draw, so x_i and x̄_i stay the same sample.

Step-time note: X̄ is computed once per step by the stain library (numpy path for CPU batches,
torch path on the batch's GPU); the seconds spent are logged per step as ``norm_s`` in the
pretrain ``metrics.csv`` so the normalization share of the step time is visible in every run.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from stainshift.augment import build_views
from stainshift.methods.base import (CE_CHANCE_FRACTION, CONTRASTIVE_CHANCE_MARGIN, Method, StepContext, check_chance,
                                     class_weights, register_method)
from stainshift.methods.losses import (embedding_spread, gather, label_entropy, latent_embedding_chance,
                                       latent_embedding_loss, latent_positive_accuracy, nt_xent, nt_xent_chance,
                                       paired_ce_loss, positive_accuracy)
from stainshift.models import Classifier, build_encoder, build_head
from stainshift.train.config import METHOD_SETTINGS

__all__ = [
    "LayerTap",
    "StainBatchNormalizer",
    "StainEmbedMethod",
    "StainEmbedContrastiveMethod",
]


# --------------------------------------------------------------------------------------------
# Layer-l embedding
# --------------------------------------------------------------------------------------------
class LayerTap:
    """Capture the output of ``model.get_submodule(layer)`` during forward (seed 000's f^l).

    Use as ``with LayerTap(model, "layer4") as tap: logits = model(x); z = tap.output``. The
    hook keeps the graph (gradients flow into ℓ_c) and is removed on exit.
    """

    def __init__(self, model: nn.Module, layer: str) -> None:
        try:
            self.module = model.get_submodule(layer)
        except AttributeError as err:
            names = [n for n, _ in model.named_modules() if n]
            raise ValueError(f"embedding layer {layer!r} not found in {type(model).__name__}; "
                             f"available: {names[:40]}") from err
        self.output: Tensor | None = None
        self._handle: torch.utils.hooks.RemovableHandle | None = None

    def _hook(self, _module: nn.Module, _inputs: tuple, output: Tensor) -> None:
        self.output = output[0] if isinstance(output, (tuple, list)) else output

    def __enter__(self) -> "LayerTap":
        self._handle = self.module.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def pop(self) -> Tensor:
        """Return the captured output and clear it (raises if the layer did not run)."""
        if self.output is None:
            raise RuntimeError("the tapped layer did not run in the last forward pass")
        out, self.output = self.output, None
        return out


# --------------------------------------------------------------------------------------------
# Batched stain normalization of a batch to one of its own images
# --------------------------------------------------------------------------------------------
NormalizerFactory = Callable[[str], object]


def _default_factory(name: str) -> object:
    from stainshift.stain import get_normalizer  # issue 4's library; imported lazily

    return get_normalizer(name)


@dataclass
class StainBatchNormalizer:
    """X̄ = g(X, x_r): fit g on one image of the batch, transform the whole batch (seed 000).

    ``methods`` / ``probs``: the candidate normalizers g and their draw probabilities (equal by
    default). Works on uint8 (N, H, W, 3) on the batch's device; the normalizers come from
    ``stainshift.stain.get_normalizer`` (``factory`` can replace it, e.g. in tests). A normalizer
    that fails on a degenerate reference (e.g. a blank tile) is retried with the next
    reference; after ``max_tries`` the raw batch is returned and ``last_failed`` is set.
    ``backend``: ``auto`` runs the stain library's numpy path for CPU batches (measured faster on
    CPU) and its torch path on GPU batches; ``numpy`` / ``torch`` force one.
    """

    methods: Sequence[str] = ("macenko", "reinhard", "vahadane")
    probs: Sequence[float] | None = None
    max_tries: int = 3
    backend: str = "auto"
    factory: NormalizerFactory = _default_factory
    last_method: str | None = field(default=None, init=False)
    last_reference: int | None = field(default=None, init=False)
    last_failed: bool = field(default=False, init=False)
    _cache: dict = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.methods:
            raise ValueError("stain_embed needs at least one normalization method")
        if self.backend not in ("auto", "numpy", "torch"):
            raise ValueError(f"stain backend must be auto, numpy or torch, got {self.backend!r}")
        if self.probs is not None:
            if len(self.probs) != len(self.methods) or min(self.probs) < 0 or sum(self.probs) <= 0:
                raise ValueError(f"probs {list(self.probs)} do not match methods {list(self.methods)}")

    def _backend_input(self, batch_u8: Tensor) -> Tensor | np.ndarray:
        """The batch in the array type the normalizers should run on (see ``backend``)."""
        use_numpy = self.backend == "numpy" or (self.backend == "auto" and batch_u8.device.type == "cpu")
        return batch_u8.cpu().numpy() if use_numpy else batch_u8

    def _normalizer(self, name: str) -> object:
        if name not in self._cache:
            self._cache[name] = self.factory(name)
        return self._cache[name]

    def draw(self, batch_size: int, generator: torch.Generator | None = None,
             exclude: int | None = None, exclude_method: str | None = None) -> tuple[str, int]:
        """Draw (method name, reference index ≠ ``exclude``, method ≠ ``exclude_method`` when
        another candidate has a positive probability) with the given generator."""
        p = torch.tensor(self.probs if self.probs is not None else [1.0] * len(self.methods), dtype=torch.float64)
        if exclude_method in self.methods:
            other = p.clone()
            other[list(self.methods).index(exclude_method)] = 0.0
            p = other if float(other.sum()) > 0 else p
        m = int(torch.multinomial(p / p.sum(), 1, generator=generator))
        choices = [i for i in range(batch_size) if i != exclude] or list(range(batch_size))
        r = choices[int(torch.randint(len(choices), (1,), generator=generator))]
        return self.methods[m], r

    def __call__(self, batch_u8: Tensor, generator: torch.Generator | None = None,
                 exclude: int | None = None, exclude_method: str | None = None) -> Tensor:
        """Normalize ``batch_u8`` (N, H, W, 3) uint8 to a random member of itself (see :meth:`draw`)."""
        n = batch_u8.shape[0]
        self.last_failed = False
        for _ in range(self.max_tries):
            name, r = self.draw(n, generator, exclude, exclude_method)
            g = self._normalizer(name)
            data = self._backend_input(batch_u8)
            try:
                g.fit(data[r])
                out = g.transform(data)
            except (ValueError, RuntimeError, torch.linalg.LinAlgError):
                continue
            out = torch.as_tensor(out, device=batch_u8.device)
            self.last_method, self.last_reference = name, r
            return out
        self.last_method, self.last_reference, self.last_failed = None, None, True
        return batch_u8.clone()


# --------------------------------------------------------------------------------------------
# The registered methods
# --------------------------------------------------------------------------------------------

DEFAULT_ENCODER = {"arch": "resnet18_narrow"}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _StainEmbedBase(Method):
    """Shared parts of ``stain_embed`` and ``stain_embed_c``: encoder, FC head, normalizer, views.

    Config keys (``pretrain.<method>``): ``encoder`` (spec, default narrow ResNet18), ``head_hidden``
    (512: the head is ``build_head({"kind": "mlp", ...})``, Linear → leaky ReLU → Linear), ``tau``
    (0.70), ``w_c`` / ``w_e`` (1.0), ``embed_layer`` (module path of f^l inside the method, default
    ``encoder.stages.3`` = last residual stage; ``encoder`` = the pooled feature),
    ``num_negatives`` (null = all 2(B−1)), ``contrastive_reduction`` (mean | sum, see the module
    docstring), ``stain_methods`` / ``stain_probs`` / ``stain_backend`` (auto | numpy | torch),
    ``views`` (:class:`stainshift.augment.BaselineAug` kwargs; one geometric draw for both batches).
    Under DDP the embeddings are gathered so ℓ_c sees the global batch (each rank normalizes its
    own shard to its own reference).
    Logged per step: ``loss``, ``loss_c`` with ``loss_c_chance``, ``loss_e`` with ``ce_chance``
    (label entropy of the batch), ``pos_acc``, ``emb_std`` (pooled features), ``proj_std``
    (flattened f^l), ``norm_s`` (normalization seconds), ``norm_failed``.
    """

    settings = METHOD_SETTINGS["stain_embed"]  # seed defaults, supervised: stainshift.train.config

    def __init__(self, cfg: dict, num_classes: int) -> None:
        super().__init__(cfg, num_classes)
        self.encoder = build_encoder(cfg.get("encoder") or DEFAULT_ENCODER)
        # seed 000: "two fully connected layers of 256 and 512 neurons" map the 256-d code to logits
        self.head = build_head({"kind": "mlp", "in_dim": self.encoder.out_dim, "hidden": int(cfg.get("head_hidden", 512)),
                                "num_classes": max(int(num_classes), 1), "act": "leaky_relu"})
        self.tau = float(cfg.get("tau", 0.70))
        self.w_c = float(cfg.get("w_c", 1.0))
        self.w_e = float(cfg.get("w_e", 1.0))
        self.ce_weight = class_weights(cfg, num_classes)
        self.embed_layer = str(cfg.get("embed_layer", "encoder.stages.3"))
        self.num_negatives = cfg.get("num_negatives")
        self.reduction = str(cfg.get("contrastive_reduction", "mean"))
        if self.reduction not in ("mean", "sum"):
            raise ValueError(f"contrastive_reduction must be 'mean' or 'sum', got {self.reduction!r}")
        self.views = build_views("baseline", int(cfg["image_size"]), cfg.get("views"))
        self.normalizer = StainBatchNormalizer(
            methods=tuple(cfg.get("stain_methods", ("macenko", "reinhard", "vahadane"))),
            probs=cfg.get("stain_probs"),
            backend=str(cfg.get("stain_backend", "auto")),
        )
        LayerTap(self, self.embed_layer)  # fail at build time on a bad layer name

    def _normalize(self, raw_u8: Tensor, exclude: int | None = None,
                   exclude_method: str | None = None) -> tuple[Tensor, int | None, str | None]:
        """X̄ = g(X, x_r) on (B, 3, H, W) uint8 → (uint8 batch, reference index, method name)."""
        out = self.normalizer(raw_u8.permute(0, 2, 3, 1), generator=None, exclude=exclude,
                              exclude_method=exclude_method)
        return out.permute(0, 3, 1, 2), self.normalizer.last_reference, self.normalizer.last_method

    def _forward_pair(self, a: Tensor, b: Tensor, ctx: StepContext) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """One forward pass over [a; b]: logits and layer-l embeddings of both halves, pooled features."""
        n = a.shape[0]
        with LayerTap(self, self.embed_layer) as tap, ctx.autocast():
            h = self.encoder(torch.cat([a, b], 0))
            logits = self.head(h)
            z = tap.pop()
        return logits[:n], logits[n:], z[:n], z[n:], h

    def _log(self, loss: Tensor, l_c: Tensor, l_c_chance: float, l_e: Tensor, labels: Tensor, pos_acc: Tensor,
             h: Tensor, z: Tensor, t_norm: float) -> dict[str, Tensor]:
        return {"loss": loss, "loss_c": l_c.detach(), "loss_c_chance": torch.tensor(l_c_chance),
                "loss_e": l_e.detach(), "ce_chance": label_entropy(labels, self.num_classes, weight=self._weight(h)), "pos_acc": pos_acc,
                "emb_std": embedding_spread(h), "proj_std": embedding_spread(z), "norm_s": torch.tensor(t_norm),
                "norm_failed": torch.tensor(float(self.normalizer.last_failed))}

    def _weight(self, like: Tensor) -> Tensor | None:
        """ℓ_e's class weights (``class_weight``) on ``like``'s device, or None."""
        return None if self.ce_weight is None else self.ce_weight.to(like.device)

    def native_classifier(self) -> nn.Module:
        """Seed 000's downstream: the encoder with the FC head trained end to end by ℓ_e."""
        return Classifier(self.encoder, self.num_classes, head=self.head)

    @classmethod
    def learning_rules(cls, history: list[dict]) -> list[str]:
        """Base collapse rule, plus: ``loss_e`` not below ``CE_CHANCE_FRACTION`` = 0.95 × the label
        entropy of the batches (``ce_chance``, the CE of predicting the class frequencies), and
        ``loss_c`` within ``CONTRASTIVE_CHANCE_MARGIN`` = 2 % of its chance level (``loss_c_chance``)."""
        return (super().learning_rules(history) + check_chance(history, "loss_e", "ce_chance", CE_CHANCE_FRACTION)
                + check_chance(history, "loss_c", "loss_c_chance", 1.0 - CONTRASTIVE_CHANCE_MARGIN))


@register_method("stain_embed")
class StainEmbedMethod(_StainEmbedBase):
    """Seed 000: ℓ = w_c ℓ_c(f^l(X), f^l(X̄)) + w_e ℓ_e, X̄ = g(X, x_r) per batch (see module doc)."""

    def training_step(self, batch: dict[str, Tensor], ctx: StepContext) -> dict[str, Tensor]:
        """Seed 000: ℓ = ℓ_c(z, z̄) + ℓ_e on the raw batch and its stain-normalized copy x̄."""
        raw = batch["image"]
        _sync(raw.device)
        t0 = time.perf_counter()
        x_bar, _, _ = self._normalize(raw)
        _sync(raw.device)
        t_norm = time.perf_counter() - t0
        x, x_bar = self.views.views(raw, x_bar)
        logits, logits_bar, z, z_bar, h = self._forward_pair(x, x_bar, ctx)
        z, z_bar = gather(z.float()), gather(z_bar.float())
        l_c = latent_embedding_loss(z, z_bar, self.tau, self.num_negatives, reduction=self.reduction)
        l_e = paired_ce_loss(logits, logits_bar, batch["label"], weight=self._weight(logits))
        loss = self.w_c * l_c + self.w_e * l_e
        chance = latent_embedding_chance(z.shape[0], self.num_negatives, self.reduction)
        return self._log(loss, l_c, chance, l_e, batch["label"], latent_positive_accuracy(z, z_bar), h, z, t_norm)


@register_method("stain_embed_c")
class StainEmbedContrastiveMethod(_StainEmbedBase):
    """Seed 000 "Ours(c)": X̄¹ = g₁(X, x_r₁), X̄² = g₂(X, x_r₂) (r₁ ≠ r₂, g₂ ≠ g₁ when possible);
    ℓ = w_c NT-Xent(f^l(X̄¹), f^l(X̄²); τ) + w_e · 1/(2B)(Σ CE(f(x̄¹_i), y_i) + Σ CE(f(x̄²_i), y_i))."""

    def training_step(self, batch: dict[str, Tensor], ctx: StepContext) -> dict[str, Tensor]:
        """Seed 000's Ours(c): NT-Xent between two differently normalized copies of the batch, plus ℓ_e."""
        raw = batch["image"]
        _sync(raw.device)
        t0 = time.perf_counter()
        x1, r1, g1 = self._normalize(raw)
        x2, _, _ = self._normalize(raw, exclude=r1, exclude_method=g1)
        _sync(raw.device)
        t_norm = time.perf_counter() - t0
        x1, x2 = self.views.views(x1, x2)
        logits1, logits2, z1, z2, h = self._forward_pair(x1, x2, ctx)
        z1, z2 = gather(z1.float()), gather(z2.float())
        l_c = nt_xent(z1, z2, self.tau)
        l_e = paired_ce_loss(logits1, logits2, batch["label"], weight=self._weight(logits1))
        loss = self.w_c * l_c + self.w_e * l_e
        return self._log(loss, l_c, nt_xent_chance(z1.shape[0]), l_e, batch["label"], positive_accuracy(z1, z2)[0],
                         h, z1, t_norm)
