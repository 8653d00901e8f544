"""The pretraining-method interface, its registry, optimizers (incl. LARS) and LR schedules.

A *method* is an ``nn.Module`` that owns its encoder, its heads, its views and its loss. The shared
loop in :mod:`stainshift.train` drives every method the same way:

    method = build_method("simclr", cfg, num_classes)          # cfg: merged pretrain config
    opts = method.configure_optimizers(steps_per_epoch, epochs) # {"main": (optimizer, scheduler)}
    for batch in loader:                                        # batch dict, see below
        out = method(batch, ctx)   # == method.training_step(batch, ctx), called through DDP if any
        # automatic optimization: loop does backward(out["loss"]), clip, step, sched.step()
    encoder = method.export_encoder()                           # saved as models/{method}/encoder.pt

**Batch dict** (all tensors already on ``ctx.device``):
``image`` uint8 (B, 3, H, W); ``label`` int64 (B,) (−1 = unknown); ``slide`` int64 (B,) slide id
(index into ``TileDataset.slide_ids``); ``center`` int64 (B,) (index into ``TileDataset.centers``);
``index`` int64 (B,) tile index inside its store; ``store`` int64 (B,) store index.
Use :func:`stainshift.augment.to_float` to get float images in [0, 1]; encoders take float [0, 1]
images (they normalise internally).

**Subclass contract**
- class attributes: ``supervised`` (needs labels ≥ 0; the loop skips unlabelled tiles' loss via
  ``ignore_index=-1`` in the method itself), ``slide_balanced`` (ask the loop for the
  slide-balanced sampler: ≥ ``tiles_per_slide`` tiles per slide per batch), ``automatic_optimization``.
- ``__init__(cfg, num_classes)``: build ``self.encoder`` with :func:`stainshift.models.build_encoder`
  (it carries ``.spec`` and ``.out_dim``) and any heads.
- ``training_step(batch, ctx) -> dict``: returns ``{"loss": scalar tensor, **other scalars to log}``.
  With ``automatic_optimization = True`` the loop back-propagates ``loss`` through the single or
  several optimizers (all are stepped). With ``automatic_optimization = False`` (e.g. SASSL's
  adversarial min–max) the method does its own updates inside ``training_step`` with
  ``ctx.backward_step(loss, "name")`` (AMP scaling, gradient all-reduce under DDP, clipping,
  optimizer step, scheduler step, zero_grad — in that order) and returns its scalars for logging;
  ``"loss"`` is still required (the NaN/inf guard checks it).
- ``optimizer_params() -> {name: params or param-groups}``: default ``{"main": all parameters}``;
  override to get several optimizers (e.g. ``{"encoder": ..., "disc": ...}``). Per-optimizer settings
  come from ``cfg["optimizers"][name]`` merged over the method's top-level optimizer keys.
- ``export_encoder() -> nn.Module``: the module saved as the pretrained encoder (default
  ``self.encoder``); it must have ``.spec`` (a dict accepted by ``build_encoder``) and ``.out_dim``.
- optional ``on_epoch_end(epoch)``.
- ``learning_check(history) -> list[str]``: the reasons a finished run did not learn (empty list =
  learned), from the per-epoch rows of :func:`stainshift.train.fit`; override ``learning_rules``
  to add a method's rules. Each method logs its loss terms, their chance levels (``*_chance``) and
  the collapse statistic ``emb_std`` (see :func:`stainshift.methods.losses.embedding_spread`) per
  step so the rules can be checked.
- ``native_classifier() -> nn.Module | None``: the method's own end-to-end-trained classifier
  (seed 000's models: :class:`stainshift.models.Classifier` with the method's head), else None.
- ``settings``: a built-in method's entry of :data:`stainshift.train.config.METHOD_SETTINGS` — the
  seed paper's parameters (DESIGN.md "Methods") and ``supervised``; the config overlays the
  parameters (:func:`stainshift.train.method_config`: seed_defaults ← ``pretrain.defaults`` ←
  ``pretrain.<name>``). They live there, torch-free, because the workflow reads them at parse time.

Register with ``@register_method("name")``; ``build_method(name, cfg, num_classes)`` instantiates.

Why one module of this size: the method contract (``Method``, ``StepContext``), its learning checks,
optimizers (LARS) and schedulers are used together by every method and by the loop; apart, each
method would import four modules for one contract.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable

import torch
import torch.distributed as dist
from torch import nn

from stainshift.train.config import METHOD_SETTINGS, OPTIMIZER_KEYS, MethodSettings

_REGISTRY: dict[str, type["Method"]] = {}


def register_method(name: str) -> Callable[[type["Method"]], type["Method"]]:
    """Class decorator: register a :class:`Method` subclass under ``name``."""

    def deco(cls: type[Method]) -> type[Method]:
        if name in METHOD_SETTINGS and cls.settings is not METHOD_SETTINGS[name]:
            raise ValueError(f"method '{name}' is built in: its class must set settings = METHOD_SETTINGS['{name}']")
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"method '{name}' is already registered by {_REGISTRY[name].__qualname__}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def available_methods() -> list[str]:
    """Names of all registered methods (importing stainshift.methods registers the built-ins)."""
    return sorted(_REGISTRY)


def get_method_class(name: str) -> type["Method"]:
    """The registered class for ``name``; the error lists what is available."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown method '{name}'; registered: {', '.join(available_methods()) or '(none)'}")
    return _REGISTRY[name]


def build_method(name: str, cfg: dict[str, Any], num_classes: int) -> "Method":
    """Instantiate the registered method ``name`` with its merged config ``cfg``."""
    return get_method_class(name)(cfg, num_classes)


@dataclass
class StepContext:
    """What a method may use inside ``training_step``: device, counters, optimizers, AMP state."""

    device: torch.device
    epoch: int = 0
    step: int = 0  # global optimizer step (counts batches)
    amp: bool = False
    amp_dtype: torch.dtype = torch.float16
    rank: int = 0
    world_size: int = 1
    grad_clip: float | None = None
    optimizers: dict[str, torch.optim.Optimizer] = field(default_factory=dict)
    schedulers: dict[str, Any] = field(default_factory=dict)
    scaler: torch.amp.GradScaler | None = None
    params: dict[str, list[nn.Parameter]] = field(default_factory=dict)

    @property
    def distributed(self) -> bool:
        """Whether the run spans more than one process (DDP)."""
        return self.world_size > 1

    def autocast(self) -> torch.autocast:
        """Autocast context for the forward pass (no-op unless AMP is on)."""
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype, enabled=self.amp)

    def backward_step(self, loss: torch.Tensor, name: str, retain_graph: bool = False) -> None:
        """Manual optimization: backward ``loss`` and update the optimizer ``name`` only.

        Scales for AMP, averages gradients over DDP ranks (manual methods are not wrapped in
        DistributedDataParallel), clips to ``grad_clip``, steps optimizer and scheduler, zeroes grads.
        Gradients accumulated on parameters of *other* optimizers are left for the caller to zero
        (call ``ctx.zero_grad(other)``).
        """
        opt = self.optimizers[name]
        params = self.params[name]
        scaler = self.scaler
        if scaler is not None and scaler.is_enabled():
            scaler.scale(loss).backward(retain_graph=retain_graph)
            scaler.unscale_(opt)
        else:
            loss.backward(retain_graph=retain_graph)
        if self.distributed:
            all_reduce_grads(params, self.world_size)
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
        if scaler is not None and scaler.is_enabled():
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        sched = self.schedulers.get(name)
        if sched is not None:
            sched.step()
        opt.zero_grad(set_to_none=True)

    def zero_grad(self, name: str) -> None:
        """Zero the gradients of optimizer ``name``'s parameters."""
        self.optimizers[name].zero_grad(set_to_none=True)


def all_reduce_grads(params: Iterable[nn.Parameter], world_size: int) -> None:
    """Average gradients over ranks (one flattened all-reduce)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world_size
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset : offset + n].view_as(g))
        offset += n


class Method(nn.Module):
    """Base class of pretraining methods (see the module docstring for the full contract)."""

    name: ClassVar[str] = "method"
    #: a built-in method's entry of :data:`stainshift.train.config.METHOD_SETTINGS` (its seed
    #: defaults and ``supervised``, kept torch-free for the workflow's parse time)
    settings: ClassVar[MethodSettings] = MethodSettings()
    supervised: ClassVar[bool] = False  # set from ``settings`` by __init_subclass__
    slide_balanced: ClassVar[bool] = False
    automatic_optimization: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "settings" in cls.__dict__:
            cls.supervised = cls.settings.supervised

    def __init__(self, cfg: dict[str, Any], num_classes: int) -> None:
        super().__init__()
        self.cfg = dict(cfg)
        self.num_classes = int(num_classes)

    # -- to implement -------------------------------------------------------------------------
    def training_step(self, batch: dict[str, torch.Tensor], ctx: StepContext) -> dict[str, torch.Tensor]:
        """Compute the loss for one batch; return ``{"loss": tensor, ...}``."""
        raise NotImplementedError(f"{type(self).__name__}.training_step")

    # -- defaults -----------------------------------------------------------------------------
    def forward(self, batch: dict[str, torch.Tensor], ctx: StepContext) -> dict[str, torch.Tensor]:
        """Alias of ``training_step`` so a DistributedDataParallel wrapper can drive it."""
        return self.training_step(batch, ctx)

    def optimizer_params(self) -> dict[str, Any]:
        """Parameters per optimizer name; override for several optimizers."""
        return {"main": [p for p in self.parameters() if p.requires_grad]}

    def configure_optimizers(self, steps_per_epoch: int, epochs: int) -> dict[str, tuple[torch.optim.Optimizer, Any]]:
        """Build ``{name: (optimizer, per-step scheduler)}`` from ``cfg`` (see :func:`optimizer_config`)."""
        out = {}
        for name, params in self.optimizer_params().items():
            ocfg = optimizer_config(self.cfg, name)
            opt = build_optimizer(params, ocfg)
            out[name] = (opt, build_scheduler(opt, ocfg, steps_per_epoch, epochs))
        return out

    def export_encoder(self) -> nn.Module:
        """The module saved as the pretrained encoder (must carry ``.spec`` and ``.out_dim``)."""
        return self.encoder  # type: ignore[attr-defined]

    def on_epoch_end(self, epoch: int) -> None:  # noqa: B027 - optional hook
        """Optional hook after every epoch."""

    def native_classifier(self) -> nn.Module | None:
        """The classifier this method trained end to end (encoder + its own head), or None.

        Supervised seed-000 methods override it; self-supervised methods have none (their
        downstream is a probe or fine-tuning on the exported encoder).
        """
        return None

    @classmethod
    def learning_check(cls, history: list[dict[str, Any]]) -> list[str]:
        """Reasons the run did not learn, from :func:`stainshift.train.fit`'s per-epoch rows; an
        empty list means it learned.

        A run that saw fewer than :data:`MIN_JUDGED_IMAGES` = 1,000 training images in all (the
        rows' ``images``) is too short to judge — a loss at chance after a few steps says nothing
        about the recipe — and gets no reasons. Otherwise the method's :meth:`learning_rules` apply.
        """
        if any("images" in row for row in history):
            if sum(float(row.get("images", 0)) for row in history) < MIN_JUDGED_IMAGES:
                return []
        return cls.learning_rules(history)

    @classmethod
    def learning_rules(cls, history: list[dict[str, Any]]) -> list[str]:
        """The rules of :meth:`learning_check`. Base rule (every method): the encoder features
        collapsed — the last epoch's ``emb_std`` (√d · mean per-dimension std of the L2-normalised
        features, :func:`stainshift.methods.losses.embedding_spread`) is below
        :data:`COLLAPSE_THRESHOLD` = 0.05 (random and trained ResNets give 0.3–0.7 on H&E crops; a
        collapsed encoder → 0). Subclasses extend it with their loss rules."""
        return check_collapse(history, "emb_std", COLLAPSE_THRESHOLD)


# ---------------------------------------------------------------------------------------------
# learning checks (rules over the per-epoch history rows of stainshift.train.fit)
# ---------------------------------------------------------------------------------------------
#: runs with fewer training images in all are not judged by learning_check
MIN_JUDGED_IMAGES = 1000
#: ``emb_std`` / ``proj_std`` below this = collapse (1 = isotropic spread, 0 = one point)
COLLAPSE_THRESHOLD = 0.05
#: a contrastive loss within this fraction of its chance level log(2N − 1) did not learn
CONTRASTIVE_CHANCE_MARGIN = 0.02
#: a cross-entropy above this fraction of its chance level (label entropy) did not learn
CE_CHANCE_FRACTION = 0.95


def _last(history: list[dict[str, Any]], key: str) -> float | None:
    """The last epoch's finite value of ``key`` (None when absent)."""
    if not history or key not in history[-1]:
        return None
    value = float(history[-1][key])
    return value if math.isfinite(value) else None


def check_collapse(history: list[dict[str, Any]], key: str, threshold: float) -> list[str]:
    """``[reason]`` when the last epoch's spread statistic ``key`` is below ``threshold``."""
    value = _last(history, key)
    if value is not None and value < threshold:
        return [f"{key} = {value:.3g} < {threshold:g} at the last epoch: the embeddings collapsed"]
    return []


def class_weights(cfg: dict[str, Any], num_classes: int) -> torch.Tensor | None:
    """CE class weights of a supervised method: ``class_weight: balanced`` → w_c = N / (C · N_c)
    (:func:`losses.balanced_class_weights`) from ``class_counts`` (the training tiles' label counts,
    set by ``train.pretrain``); ``null`` (the seeds' plain CE) → None."""
    from stainshift.methods.losses import balanced_class_weights

    mode = cfg.get("class_weight")
    if mode in (None, "none"):
        return None
    if mode != "balanced":
        raise ValueError(f"class_weight must be null or 'balanced', got {mode!r}")
    counts = cfg.get("class_counts") or []
    if len(counts) < num_classes or sum(counts) <= 0:
        raise ValueError(f"class_weight: balanced needs class_counts for {num_classes} classes, got {list(counts)}")
    return balanced_class_weights(torch.as_tensor(counts), num_classes)


def check_chance(history: list[dict[str, Any]], key: str, chance_key: str, fraction: float) -> list[str]:
    """``[reason]`` when the last epoch's loss ``key`` ≥ ``fraction`` × its chance level ``chance_key``."""
    value, chance = _last(history, key), _last(history, chance_key)
    if value is not None and chance is not None and chance > 0 and value >= fraction * chance:
        return [f"{key} = {value:.4g} is not below {fraction:g} × its chance level {chance:.4g} "
                f"({chance_key}) at the last epoch: it did not learn"]
    return []


def check_decrease(history: list[dict[str, Any]], key: str, fraction: float) -> list[str]:
    """``[reason]`` when the last epoch's ``key`` is not below ``fraction`` × the first epoch's."""
    if len(history) < 2 or key not in history[0]:
        return []
    first, last = float(history[0][key]), _last(history, key)
    if last is not None and math.isfinite(first) and first > 0 and last >= fraction * first:
        return [f"{key} fell from {first:.4g} to {last:.4g} only, not below {fraction:g} × its first epoch"]
    return []


# ---------------------------------------------------------------------------------------------
# optimizers and schedules
# ---------------------------------------------------------------------------------------------
def optimizer_config(cfg: dict[str, Any], name: str = "main") -> dict[str, Any]:
    """The optimizer settings of optimizer ``name``: method-level keys overlaid by ``cfg['optimizers'][name]``."""
    base = {k: cfg[k] for k in OPTIMIZER_KEYS if k in cfg}
    extra = (cfg.get("optimizers") or {}).get(name) or {}
    return {**base, **extra}


def effective_lr(ocfg: dict[str, Any]) -> float:
    """``lr``, multiplied by batch_size/256 when ``lr_scale_batch`` (SimCLR's 0.3×bs/256 rule)."""
    lr = float(ocfg.get("lr", 1e-3))
    if ocfg.get("lr_scale_batch"):
        lr *= float(ocfg.get("batch_size", 256)) / 256.0
    return lr


class LARS(torch.optim.Optimizer):
    """LARS (You et al. 2017) as used by SimCLR: SGD momentum with a layer-wise trust ratio.

    Written here because no maintained package fits beside the pinned torch (torchvision /
    lightly / timm pull another torch). Biases and 1-D parameters (norm layers) are excluded from
    weight decay and adaptation, as in SimCLR. update = lr · (g + wd·w) · η‖w‖ / ‖g + wd·w‖.
    """

    def __init__(self, params: Any, lr: float, momentum: float = 0.9, weight_decay: float = 1e-6,
                 trust_coefficient: float = 0.001, eps: float = 1e-8) -> None:
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                        trust_coefficient=trust_coefficient, eps=eps)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        """One LARS update: the per-layer trust ratio η‖w‖/‖∇w + λw‖ scales the momentum SGD step
        (You et al. 2017)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if p.ndim > 1:  # weights: decay + layer-wise adaptation
                    grad = grad.add(p, alpha=group["weight_decay"])
                    w_norm = torch.linalg.vector_norm(p)
                    g_norm = torch.linalg.vector_norm(grad)
                    trust = torch.where(
                        (w_norm > 0) & (g_norm > 0),
                        group["trust_coefficient"] * w_norm / (g_norm + group["eps"]),
                        torch.ones_like(w_norm),
                    )
                    grad = grad.mul(trust)
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.clone(grad).detach()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(grad)
                p.add_(state["momentum_buffer"], alpha=-group["lr"])
        return loss


def build_optimizer(params: Any, ocfg: dict[str, Any]) -> torch.optim.Optimizer:
    """``optimizer``: adam | adamw | sgd | lars, with ``lr`` (see :func:`effective_lr`), ``weight_decay``."""
    kind = str(ocfg.get("optimizer", "adam")).lower()
    lr = effective_lr(ocfg)
    wd = float(ocfg.get("weight_decay", 0.0))
    if kind == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd, betas=tuple(ocfg.get("betas", (0.9, 0.999))))
    if kind == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd, betas=tuple(ocfg.get("betas", (0.9, 0.999))))
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=wd, momentum=float(ocfg.get("momentum", 0.9)))
    if kind == "lars":
        return LARS(params, lr=lr, weight_decay=wd, momentum=float(ocfg.get("momentum", 0.9)),
                    trust_coefficient=float(ocfg.get("trust_coefficient", 0.001)))
    raise ValueError(f"unknown optimizer '{kind}' (key 'optimizer'; expected adam, adamw, sgd or lars)")


def lr_factor(kind: str, step: int, total: int, warmup: int, *, final_ratio: float = 0.0,
              anneal_fraction: float = 0.2, milestones: Iterable[int] = (), gamma: float = 0.1) -> float:
    """Multiplier of the base LR at optimizer step ``step`` (0-based) of ``total``.

    - ``constant``: 1 (after warm-up).
    - ``cosine``: linear warm-up, then cosine from 1 to ``final_ratio``.
    - ``step``: ×``gamma`` at each milestone step (seed 000: 1e-4 → 1e-5 after 35 of 60 epochs).
    - ``wsa``: warm-up → stable → anneal (LMC, seed 003): linear warm-up, constant, then cosine
      from 1 to ``final_ratio`` over the last ``anneal_fraction`` of steps.
    """
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    if kind == "step":
        return gamma ** sum(step >= m for m in milestones)
    if kind == "cosine":
        span = max(1, total - warmup)
        t = min(1.0, (step - warmup) / span)
        return final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * t))
    if kind == "wsa":
        anneal = max(1, int(round(anneal_fraction * total)))
        start = max(warmup, total - anneal)
        if step < start:
            return 1.0
        t = min(1.0, (step - start) / max(1, total - start))
        return final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * t))
    raise ValueError(f"unknown schedule '{kind}' (key 'schedule'; expected constant, cosine, step or wsa)")


def build_scheduler(opt: torch.optim.Optimizer, ocfg: dict[str, Any], steps_per_epoch: int,
                    epochs: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step LambdaLR from ``schedule``, ``warmup_epochs``, ``final_lr``, ``anneal_fraction``,
    ``milestones`` (epochs), ``gamma``."""
    kind = str(ocfg.get("schedule", "constant"))
    total = max(1, steps_per_epoch * epochs)
    warmup = int(round(float(ocfg.get("warmup_epochs", 0)) * steps_per_epoch))
    base = effective_lr(ocfg)
    final_ratio = float(ocfg.get("final_lr", 0.0)) / base if base > 0 else 0.0
    milestones = [int(m) * steps_per_epoch for m in ocfg.get("milestones", [])]
    kw = dict(final_ratio=final_ratio, anneal_fraction=float(ocfg.get("anneal_fraction", 0.2)),
              milestones=milestones, gamma=float(ocfg.get("gamma", 0.1)))
    lr_lambda = _LRLambda(kind, total, warmup, kw)
    return torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)


class _LRLambda:
    """Picklable LR multiplier (a closure would not survive scheduler state_dict round-trips)."""

    def __init__(self, kind: str, total: int, warmup: int, kw: dict[str, Any]) -> None:
        self.kind, self.total, self.warmup, self.kw = kind, total, warmup, kw

    def __call__(self, step: int) -> float:
        return lr_factor(self.kind, step, self.total, self.warmup, **self.kw)
