"""Encoders written with torch.nn (torchvision/timm do not fit beside the pinned torch) and heads.

Every encoder takes float images in [0, 1], shape (B, 3, H, W), normalises them internally, and
returns pooled features (B, ``out_dim``). Each carries ``.spec``: the dict that rebuilds it with
:func:`build_encoder` (saved next to the weights in ``encoder.pt``).

Built-in architectures (``spec["arch"]``):
- ``resnet18`` / ``resnet34`` (basic blocks) / ``resnet50`` (bottlenecks), optional ``width``
  multiplier and ``widths`` (stem + 4 stages) for reduced models;
- ``resnet18_narrow``: seed 000's ResNet18 with 32/64/128/256/256 filters (stem 32, stages
  64/128/256/256) and leaky ReLU;
- ``vit_tiny``: ViT with 12 blocks, 3 heads, dim 192 (≈5.5 M params), CLS token, ``patch`` size
  configurable (16 for 224–256 px tiles; smaller for the demo's small tiles); ``vit_small`` /
  ``vit_base`` / ``vit_large`` the usual sizes (for weights of timm's ViTs, :mod:`stainshift.external`);
- ``external``: an encoder loaded from a local file (:mod:`stainshift.external`).
Every built-in arch takes ``mean`` / ``std`` (the input normalisation; default the H&E statistics
below). A spec may carry ``init`` (a state-dict file, :func:`stainshift.external.load_init`): the
weights the encoder starts from; it is not kept in ``.spec``.
Extra architectures can be added with ``@register_encoder("name")`` (e.g. SASSL's fused encoder).
"""
from __future__ import annotations

import copy
from typing import Any, Callable, Sequence

import torch
from torch import nn
import torch.nn.functional as F

MEAN = (0.70, 0.55, 0.70)  # rough H&E channel statistics; fixed so every consumer agrees
STD = (0.15, 0.20, 0.15)

_ENCODERS: dict[str, Callable[..., nn.Module]] = {}


def register_encoder(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register an encoder builder ``fn(**spec_without_arch) -> nn.Module``."""

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _ENCODERS[name] = fn
        return fn

    return deco


def build_encoder(spec: dict[str, Any] | str) -> nn.Module:
    """Build an encoder from ``{"arch": name, **kwargs}`` (or just a name); sets ``.spec``.

    ``spec["init"]`` (optional): start from the weights of a state-dict file
    (:func:`stainshift.external.load_init`); ``.spec`` keeps everything but ``init``."""
    spec = {"arch": spec} if isinstance(spec, str) else dict(spec)
    init = spec.pop("init", None)
    arch = spec.get("arch")
    if arch not in _ENCODERS:
        _register_plugins()
    if arch not in _ENCODERS:
        raise KeyError(f"unknown encoder arch '{arch}' (key 'encoder.arch'); known: {', '.join(sorted(_ENCODERS))}")
    kwargs = {k: v for k, v in spec.items() if k != "arch"}
    model = _ENCODERS[arch](**kwargs)
    model.spec = copy.deepcopy(spec)
    if init:
        from stainshift.external import load_init

        load_init(model, init)
    return model


def _register_plugins() -> None:
    """Import the modules that register encoders beyond this file's (SASSL's fused encoder, external)."""
    import stainshift.external  # noqa: F401
    import stainshift.methods  # noqa: F401


class InputNorm(nn.Module):
    """(x − mean) / std, by default with fixed H&E statistics (buffers, so they follow .to(device))."""

    def __init__(self, mean: Sequence[float] = MEAN, std: Sequence[float] = STD) -> None:
        super().__init__()
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"encoder mean/std need 3 values each and std > 0, got mean={mean}, std={std}")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(x − mean) / std per channel."""
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)


def _act(name: str) -> nn.Module:
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "leaky_relu":
        return nn.LeakyReLU(0.01, inplace=True)
    raise ValueError(f"unknown activation '{name}' (expected relu or leaky_relu)")


class BasicBlock(nn.Module):
    """ResNet basic block: two 3×3 convolutions with a shortcut (He et al. 2016)."""
    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int, act: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.act = _act(act)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """act(bn(conv(act(bn(conv(x))))) + shortcut(x))."""
        idt = x if self.down is None else self.down(x)
        out = self.act(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act(out + idt)


class Bottleneck(nn.Module):
    """ResNet bottleneck block: 1×1 → 3×3 → 1×1 convolutions with a shortcut, expansion 4."""
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int, act: str) -> None:
        super().__init__()
        cout = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.act = _act(act)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """act(1×1 → 3×3 → 1×1 convolutions + shortcut(x))."""
        idt = x if self.down is None else self.down(x)
        out = self.act(self.bn1(self.conv1(x)))
        out = self.act(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.act(out + idt)


class ResNet(nn.Module):
    """ResNet with a configurable stem width, stage widths, depths and activation.

    ``small_input=True`` replaces the 7×7/2 stem + max-pool by a 3×3/1 stem (CIFAR-style) for
    tiles ≤ 64 px, so small demo tiles are not reduced to 1×1 before the last stage.
    ``forward_features`` returns the per-stage feature maps (for layer-l embeddings).
    """

    def __init__(self, block: type[nn.Module], depths: list[int], widths: list[int], act: str = "relu",
                 small_input: bool = False, mean: Sequence[float] = MEAN, std: Sequence[float] = STD) -> None:
        super().__init__()
        stem, *stage_widths = widths
        self.norm = InputNorm(mean, std)
        if small_input:
            self.stem = nn.Sequential(nn.Conv2d(3, stem, 3, 1, 1, bias=False), nn.BatchNorm2d(stem), _act(act))
        else:
            self.stem = nn.Sequential(nn.Conv2d(3, stem, 7, 2, 3, bias=False), nn.BatchNorm2d(stem), _act(act),
                                      nn.MaxPool2d(3, 2, 1))
        stages = []
        cin = stem
        for i, (depth, w) in enumerate(zip(depths, stage_widths)):
            blocks = []
            for j in range(depth):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(block(cin, w, stride, act))
                cin = w * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.out_dim = cin
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps after the stem and after every stage."""
        x = self.stem(self.norm(x))
        feats = [x]
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Global-average-pooled features of the last stage, (N, C)."""
        return torch.flatten(F.adaptive_avg_pool2d(self.forward_features(x)[-1], 1), 1)


def _widths(default: list[int], width: float, widths: list[int] | None) -> list[int]:
    if widths is not None:
        if len(widths) != 5:
            raise ValueError(f"encoder 'widths' must list 5 numbers (stem + 4 stages), got {widths}")
        return [int(w) for w in widths]
    return [max(1, int(round(w * width))) for w in default]


@register_encoder("resnet18")
def resnet18(width: float = 1.0, widths: list[int] | None = None, act: str = "relu", small_input: bool = False,
             mean: Sequence[float] = MEAN, std: Sequence[float] = STD) -> ResNet:
    """ResNet-18 (BasicBlock, [2, 2, 2, 2]); ``width`` scales the stage widths."""
    return ResNet(BasicBlock, [2, 2, 2, 2], _widths([64, 64, 128, 256, 512], width, widths), act, small_input, mean, std)


@register_encoder("resnet34")
def resnet34(width: float = 1.0, widths: list[int] | None = None, act: str = "relu", small_input: bool = False,
             mean: Sequence[float] = MEAN, std: Sequence[float] = STD) -> ResNet:
    """ResNet-34 (BasicBlock, [3, 4, 6, 3]); ``width`` scales the stage widths."""
    return ResNet(BasicBlock, [3, 4, 6, 3], _widths([64, 64, 128, 256, 512], width, widths), act, small_input, mean, std)


@register_encoder("resnet50")
def resnet50(width: float = 1.0, widths: list[int] | None = None, act: str = "relu", small_input: bool = False,
             mean: Sequence[float] = MEAN, std: Sequence[float] = STD) -> ResNet:
    """ResNet-50 (Bottleneck, [3, 4, 6, 3]); ``width`` scales the stage widths."""
    return ResNet(Bottleneck, [3, 4, 6, 3], _widths([64, 64, 128, 256, 512], width, widths), act, small_input, mean, std)


@register_encoder("resnet18_narrow")
def resnet18_narrow(width: float = 1.0, widths: list[int] | None = None, act: str = "leaky_relu",
                    small_input: bool = False, mean: Sequence[float] = MEAN, std: Sequence[float] = STD) -> ResNet:
    """Seed 000: ResNet18 with 32/64/128/256/256 filters and leaky ReLU (out_dim 256)."""
    return ResNet(BasicBlock, [2, 2, 2, 2], _widths([32, 64, 128, 256, 256], width, widths), act, small_input, mean,
                  std)


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """Pre-norm ViT with a CLS token and learned position embeddings (interpolated for other sizes)."""

    def __init__(self, image_size: int = 224, patch: int = 16, dim: int = 192, depth: int = 12, heads: int = 3,
                 mlp_ratio: float = 4.0, mean: Sequence[float] = MEAN, std: Sequence[float] = STD) -> None:
        super().__init__()
        if image_size % patch:
            raise ValueError(f"vit: image_size {image_size} is not a multiple of patch {patch}")
        self.norm_in = InputNorm(mean, std)
        self.patch = patch
        self.embed = nn.Conv2d(3, dim, patch, patch)
        self.grid = image_size // patch
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, 1 + self.grid**2, dim) * 0.02)
        self.blocks = nn.Sequential(*[_Block(dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.out_dim = dim
        nn.init.trunc_normal_(self.cls, std=0.02)

    def _pos(self, grid: int) -> torch.Tensor:
        if grid == self.grid:
            return self.pos
        cls_pos, patch_pos = self.pos[:, :1], self.pos[:, 1:]
        dim = patch_pos.shape[-1]
        patch_pos = patch_pos.reshape(1, self.grid, self.grid, dim).permute(0, 3, 1, 2)
        patch_pos = F.interpolate(patch_pos, size=(grid, grid), mode="bicubic", align_corners=False)
        return torch.cat([cls_pos, patch_pos.permute(0, 2, 3, 1).reshape(1, grid * grid, dim)], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The CLS token after the transformer blocks (input square, sides a multiple of the patch)."""
        if x.shape[-1] % self.patch or x.shape[-2] != x.shape[-1]:
            raise ValueError(f"vit: input {tuple(x.shape[-2:])} must be square and a multiple of patch {self.patch}")
        tokens = self.embed(self.norm_in(x)).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(len(tokens), -1, -1), tokens], 1) + self._pos(x.shape[-1] // self.patch)
        return self.norm(self.blocks(tokens))[:, 0]


@register_encoder("vit_tiny")
def vit_tiny(image_size: int = 224, patch: int = 16, dim: int = 192, depth: int = 12, heads: int = 3,
             mlp_ratio: float = 4.0, mean: Sequence[float] = MEAN, std: Sequence[float] = STD) -> ViT:
    """Seed 003's ViT-tiny: 12 blocks, 3 heads, dim 192 (≈5.5 M parameters at the defaults)."""
    return ViT(image_size, patch, dim, depth, heads, mlp_ratio, mean, std)


def _vit_size(name: str, dim: int, depth: int, heads: int) -> None:
    def build(image_size: int = 224, patch: int = 16, mean: Sequence[float] = MEAN,
              std: Sequence[float] = STD) -> ViT:
        return ViT(image_size, patch, dim, depth, heads, 4.0, mean, std)

    build.__doc__ = f"ViT-{name.split('_')[1].title()}: dim {dim}, {depth} blocks, {heads} heads (timm's sizes)."
    register_encoder(name)(build)


_vit_size("vit_small", 384, 12, 6)
_vit_size("vit_base", 768, 12, 12)
_vit_size("vit_large", 1024, 24, 16)


def mlp(in_dim: int, hidden: int, out_dim: int, layers: int = 2, bn: bool = False, last_bn: bool = False,
        act: str = "relu") -> nn.Sequential:
    """Projection head: ``layers`` linear layers with optional BatchNorm; ReLU between them."""
    mods: list[nn.Module] = []
    d = in_dim
    for _ in range(layers - 1):
        mods.append(nn.Linear(d, hidden, bias=not bn))
        if bn:
            mods.append(nn.BatchNorm1d(hidden))
        mods.append(_act(act))
        d = hidden
    mods.append(nn.Linear(d, out_dim, bias=not last_bn))
    if last_bn:
        mods.append(nn.BatchNorm1d(out_dim, affine=False))
    return nn.Sequential(*mods)


def build_head(spec: dict[str, Any]) -> nn.Module:
    """A classification head (features → logits) from its spec; sets ``.spec``.

    - ``{"kind": "linear", "in_dim": D, "num_classes": C}``: one linear layer (baseline, probes,
      full fine-tuning);
    - ``{"kind": "mlp", "in_dim": D, "hidden": H, "num_classes": C, "act": "leaky_relu"}``:
      Linear → act → Linear (seed 000's "two fully connected layers of 256 and 512 neurons").
    """
    spec = dict(spec)
    kind = spec.get("kind", "linear")
    d, c = int(spec["in_dim"]), int(spec["num_classes"])
    if kind == "linear":
        head: nn.Module = nn.Linear(d, c)
    elif kind == "mlp":
        hidden = int(spec.get("hidden", 512))
        head = nn.Sequential(nn.Linear(d, hidden), _act(str(spec.get("act", "leaky_relu"))), nn.Linear(hidden, c))
    else:
        raise ValueError(f"unknown head kind {kind!r} (expected linear or mlp)")
    head.spec = {**spec, "kind": kind}
    return head


class Classifier(nn.Module):
    """Encoder + head (linear unless ``head`` is given): what full fine-tuning trains, what a
    supervised method exports as its own classifier, and what ``predict`` runs on images."""

    def __init__(self, encoder: nn.Module, num_classes: int, head: nn.Module | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head if head is not None else build_head(
            {"kind": "linear", "in_dim": encoder.out_dim, "num_classes": num_classes})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """head(encoder(x)): class logits."""
        return self.head(self.encoder(x))


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def encoder_fingerprint(model: nn.Module) -> str:
    """Short human-readable description: arch + parameter count (for logs and HDF5 attrs)."""
    spec = getattr(model, "spec", {"arch": type(model).__name__})
    return f"{spec.get('arch')}({count_parameters(model) / 1e6:.2f}M)"


__all__ = ["build_encoder", "build_head", "register_encoder", "mlp", "Classifier", "ResNet", "ViT", "count_parameters",
           "encoder_fingerprint", "MEAN", "STD"]
