"""Neural stain transfer (seed 004 §3.1): a CNN re-colours the lightness of an image in one lab's style.

Seed 004 (Yuan & Suh, "Neural stain normalization ...") casts stain normalization as colorization
after Iizuka et al. 2016 ("Let there be color!"): a network is trained on tiles of ONE target stain
style to predict their colour from their grayscale; applied to a tile of any other lab it keeps
that tile's lightness and paints the target lab's colours on it. Here:

* grayscale = CIE L* (``kornia.color.rgb_to_lab``, sRGB/D65) scaled to [0, 1] (``L / 100``);
* the network predicts the CIE a*, b* chroma channels, normalised as ``ab / AB_SCALE``
  (``AB_SCALE = 128``, a tanh output, so |a*|, |b*| < 128);
* output image = ``lab_to_rgb(L_source, a*_pred, b*_pred)`` (out-of-gamut values clipped);
* loss = ``mse(ab_pred / 128, ab_true / 128) + class_weight * cross_entropy(logits, tile label)``
  (seed 004: the classification share of the loss was varied from 1/30 to 1/300; the default
  ``class_weight = 1/100`` is inside that range); without labels the class term is off;
* optimiser: Adadelta, lr 1.0, rho 0.9, eps 1e-6, no weight decay, batch 64 (seed 004).

As a :class:`~stainshift.stain._common.Normalizer` (``name = "neural"``) the trained model IS the
fitted state: ``fit(target)`` does not learn (see :meth:`NeuralStainTransfer.fit`). Near-white
glass is blended back to the source by the same background weight as the other normalizers, so
glass stays glass (seed 004 Fig. 3: the SVD method paints white glass with hematoxylin).

Why one module of this size: seed 004's colorization CNN, its training loop and its ``Normalizer``
share the L*a*b* conversion and the checkpoint format; the three are one method.
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import kornia
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..atomic import atomic_path
from ._common import Normalizer, as_batch, blend_torch, min_tissue_torch, weight_torch

logger = logging.getLogger(__name__)

#: a*, b* are predicted as ``ab / AB_SCALE`` (tanh output in (-1, 1)).
AB_SCALE = 128.0
#: Input sides must be multiples of this (three stride-2 convolutions, three x2 upsamplings).
SIDE_MULTIPLE = 8
#: ``format`` entry of a checkpoint written by :func:`save_stain_transfer`.
CHECKPOINT_FORMAT = "stainshift.neural_stain_transfer/1"
CHECKPOINT_KEYS = ("format", "state_dict", "config", "meta")


# ----------------------------------------------------------------------------- the network
def _ch(c: int, width: float) -> int:
    return max(4, round(c * width))


def _conv(c_in: int, c_out: int, stride: int = 1, kernel: int = 3) -> nn.Sequential:
    """conv (same padding) + BatchNorm + ReLU."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class ColorizationNet(nn.Module):
    """Iizuka-style colorization CNN of seed 004 §3.1: L (N,1,H,W) in [0,1] -> (ab/128 (N,2,H,W), logits).

    Channel counts at ``width=1`` (Iizuka et al. 2016, Table 1), every conv 3x3 + BN + ReLU:

    * encoder (seed: "8 convolutional layers", stride-2 convs instead of pooling), 224 px ->
      28x28x256: low-level 64/2, 128, 128/2, 256, 256/2, 512; mid-level 512, 256;
    * global branch on the low-level features: convs 512/2, 512, 512/2, 512, adaptive average
      pooling to 7x7 (the identity at 224 px, where Iizuka's map is 7x7), FC 1024, FC 512, FC 256
      (the global vector); class head FC 256 -> FC ``n_classes`` from the 512-d layer
      (``n_classes=0``: no head, logits ``None``);
    * fusion: the 256-d vector tiled over the H/8 x W/8 map, concatenated, 1x1 conv to 256;
    * decoder: 128, x2 nearest upsampling, 64, 64, x2, 32, x2, then a 3x3 conv to 2 channels + tanh.

    ``width`` multiplies every channel count (at least 4). Any side divisible by 8 works.
    Deviations from Iizuka / seed 004: the global branch sees the same input as the encoder (Iizuka
    feeds it a copy rescaled to 224 px) and adaptive pooling lets it take any size; the fully
    connected layers have no BatchNorm (so batches of one sample train); the decoder's last
    upsampling comes before the output conv, which then works at full resolution.
    """

    def __init__(self, width: float = 1.0, n_classes: int = 0) -> None:
        super().__init__()
        if width <= 0:
            raise ValueError(f"width must be > 0, got {width}")
        if n_classes < 0:
            raise ValueError(f"n_classes must be >= 0, got {n_classes}")
        self.width = float(width)
        self.n_classes = int(n_classes)
        c = partial(_ch, width=width)
        self.low = nn.Sequential(
            _conv(1, c(64), 2), _conv(c(64), c(128)), _conv(c(128), c(128), 2),
            _conv(c(128), c(256)), _conv(c(256), c(256), 2), _conv(c(256), c(512)),
        )
        self.mid = nn.Sequential(_conv(c(512), c(512)), _conv(c(512), c(256)))
        self.global_conv = nn.Sequential(
            _conv(c(512), c(512), 2), _conv(c(512), c(512)), _conv(c(512), c(512), 2), _conv(c(512), c(512)),
            nn.AdaptiveAvgPool2d(7), nn.Flatten(),
        )
        self.global_fc = nn.Sequential(
            nn.Linear(c(512) * 49, c(1024)), nn.ReLU(inplace=True),
            nn.Linear(c(1024), c(512)), nn.ReLU(inplace=True),
        )
        self.global_out = nn.Sequential(nn.Linear(c(512), c(256)), nn.ReLU(inplace=True))
        self.classifier = (
            nn.Sequential(nn.Linear(c(512), c(256)), nn.ReLU(inplace=True), nn.Linear(c(256), n_classes))
            if n_classes else None
        )
        self.fusion = _conv(2 * c(256), c(256), kernel=1)
        self.decoder = nn.Sequential(
            _conv(c(256), c(128)), nn.Upsample(scale_factor=2, mode="nearest"),
            _conv(c(128), c(64)), _conv(c(64), c(64)), nn.Upsample(scale_factor=2, mode="nearest"),
            _conv(c(64), c(32)), nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(c(32), 2, 3, padding=1), nn.Tanh(),
        )

    def forward(self, lightness: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Predict a*b* (and class logits when the class head is on) from L* (sides multiples of the stride)."""
        h, w = lightness.shape[-2:]
        if h % SIDE_MULTIPLE or w % SIDE_MULTIPLE:
            raise ValueError(f"ColorizationNet: input sides must be multiples of {SIDE_MULTIPLE}, got {h}x{w}")
        low = self.low(lightness)
        mid = self.mid(low)
        g512 = self.global_fc(self.global_conv(low))
        g = self.global_out(g512)
        tiled = g[:, :, None, None].expand(-1, -1, mid.shape[2], mid.shape[3])
        ab = self.decoder(self.fusion(torch.cat([mid, tiled], dim=1)))
        logits = self.classifier(g512) if self.classifier is not None else None
        return ab, logits


# ----------------------------------------------------------------------------- colour conversion
def rgb_uint8_to_lab(batch: torch.Tensor) -> torch.Tensor:
    """CIE Lab (N,3,H,W) float32 (L in [0,100]) of uint8 RGB (N,H,W,3), via kornia."""
    return kornia.color.rgb_to_lab(batch.permute(0, 3, 1, 2).float() / 255.0)


def lab_to_rgb_float(lab: torch.Tensor) -> torch.Tensor:
    """Float RGB (N,H,W,3) in [0,255] of Lab (N,3,H,W); out-of-gamut values clipped (kornia)."""
    return kornia.color.lab_to_rgb(lab, clip=True).permute(0, 2, 3, 1) * 255.0


def _pad_to_multiple(x: torch.Tensor) -> torch.Tensor:
    """Pad (N,C,H,W) at the bottom/right to sides divisible by 8: reflect, replicate when too small."""
    h, w = x.shape[-2:]
    ph, pw = -h % SIDE_MULTIPLE, -w % SIDE_MULTIPLE
    if not (ph or pw):
        return x
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


def predict_ab(model: ColorizationNet, lab: torch.Tensor) -> torch.Tensor:
    """Predicted a*, b* (N,2,H,W), in Lab units, for the L channel of ``lab`` (N,3,H,W), any H, W."""
    h, w = lab.shape[-2:]
    ab_norm, _ = model(_pad_to_multiple(lab[:, :1] / 100.0))
    return ab_norm[..., :h, :w] * AB_SCALE


# ----------------------------------------------------------------------------- training
def _dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """One of the 8 flips/rotations of (n,C,H,W): rot90 ``k % 4`` times, then a horizontal flip if ``k >= 4``."""
    x = torch.rot90(x, k % 4, dims=(2, 3))
    return torch.flip(x, dims=(3,)) if k >= 4 else x


def _augment(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Random flip/rot90 per sample (rotations by 90/270 degrees only for square tiles)."""
    square = x.shape[2] == x.shape[3]
    ks = rng.integers(0, 8, size=x.shape[0]) if square else rng.choice([0, 2, 4, 6], size=x.shape[0])
    out = torch.empty_like(x)
    for k in np.unique(ks):
        idx = torch.as_tensor(np.nonzero(ks == k)[0], device=x.device)
        out[idx] = _dihedral(x[idx], int(k))
    return out


def _check_labels(labels: np.ndarray | None, n: int) -> np.ndarray | None:
    """int64 (N,) labels (-1 = unknown), or None when no tile has a label."""
    if labels is None:
        return None
    y = np.asarray(labels)
    if y.shape != (n,):
        raise ValueError(f"labels: expected shape ({n},), got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise TypeError(f"labels: expected integers (-1 = unknown), got dtype {y.dtype}")
    if y.size and y.min() < -1:
        raise ValueError(f"labels: values must be >= -1 (-1 = unknown), got {int(y.min())}")
    return y.astype(np.int64) if (y >= 0).any() else None


def train_stain_transfer(
    tiles: np.ndarray,
    labels: np.ndarray | None,
    *,
    epochs: int,
    batch_size: int = 64,
    class_weight: float = 1 / 100,
    width: float = 1.0,
    lr: float = 1.0,
    rho: float = 0.9,
    eps: float = 1e-6,
    seed: int = 0,
    device: str | torch.device = "cpu",
    augment: bool = True,
    log: Callable[[str], None] | None = None,
) -> tuple[ColorizationNet, list[dict[str, Any]]]:
    """Train a :class:`ColorizationNet` on tiles of ONE target stain style (seed 004 §3.1).

    ``tiles``: uint8 (N,H,W,3), H and W multiples of 8; ``labels``: int (N,) tile classes, -1 =
    unknown, or None. Loss per batch = ``mse(ab_pred/128, ab/128) + class_weight * CE(logits, y)``
    over the labelled tiles of the batch; with no labels (None or all -1) the class term is off
    and the net has no class head. Adadelta(lr, rho, eps, weight_decay=0) as in seed 004;
    ``augment``: a random flip/rot90 per tile. Deterministic for a seed on CPU (init under
    ``torch.manual_seed(seed)`` in a forked RNG, shuffling/augmentation from
    ``numpy.random.default_rng(seed)``). Returns ``(model in eval mode, history)``, one history
    row per epoch: ``epoch``, ``mse``, ``ce`` (None without labels), ``seconds``.
    """
    def say(msg: str) -> None:
        logger.info(msg)
        if log is not None:
            log(msg)

    x = np.asarray(tiles)
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3 or x.shape[0] == 0:
        raise ValueError(f"tiles: expected uint8 (N, H, W, 3) with N >= 1, got {x.dtype} {x.shape}")
    if x.shape[1] % SIDE_MULTIPLE or x.shape[2] % SIDE_MULTIPLE:
        raise ValueError(f"tiles: sides must be multiples of {SIDE_MULTIPLE} (crop them), got {x.shape[1]}x{x.shape[2]}")
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs}, {batch_size}")
    y = _check_labels(labels, len(x))
    if y is None:
        say("neural stain transfer: no tile labels, classification loss off (loss = mse)")
    n_classes = int(y.max()) + 1 if y is not None else 0
    device = torch.device(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ColorizationNet(width=width, n_classes=n_classes).to(device)
    rng = np.random.default_rng(seed)
    y_t = torch.as_tensor(y, device=device) if y is not None else None
    opt = torch.optim.Adadelta(model.parameters(), lr=lr, rho=rho, eps=eps, weight_decay=0.0)
    history: list[dict[str, Any]] = []
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        model.train()
        sums = {"mse": 0.0, "ce": 0.0, "n": 0, "n_ce": 0}
        order = rng.permutation(len(x))
        for start in range(0, len(x), batch_size):
            sel = order[start : start + batch_size]
            idx = torch.as_tensor(sel, device=device)
            with torch.no_grad():  # Lab per batch: memory O(batch), not O(N)
                batch = rgb_uint8_to_lab(torch.from_numpy(x[sel]).to(device))
            if augment:
                batch = _augment(batch, rng)
            ab_norm, logits = model(batch[:, :1] / 100.0)
            mse = F.mse_loss(ab_norm, batch[:, 1:] / AB_SCALE)
            loss = mse
            if y_t is not None:
                yb = y_t[idx]
                known = yb >= 0
                if bool(known.any()):
                    ce = F.cross_entropy(logits[known], yb[known])
                    loss = mse + class_weight * ce
                    sums["ce"] += float(ce.detach()) * int(known.sum())
                    sums["n_ce"] += int(known.sum())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sums["mse"] += float(mse.detach()) * len(idx)
            sums["n"] += len(idx)
        row = {
            "epoch": epoch,
            "mse": sums["mse"] / sums["n"],
            "ce": sums["ce"] / sums["n_ce"] if sums["n_ce"] else None,
            "seconds": time.perf_counter() - t0,
        }
        history.append(row)
        ce_txt = f"{row['ce']:.4f}" if row["ce"] is not None else "off"
        say(f"neural stain transfer: epoch {epoch}/{epochs} mse {row['mse']:.5f} ce {ce_txt} ({row['seconds']:.1f} s)")
    return model.eval(), history


# ----------------------------------------------------------------------------- checkpoints
def save_stain_transfer(model: ColorizationNet, path: str | Path, meta: dict[str, Any]) -> Path:
    """Write ``{"format", "state_dict", "config": {width, n_classes}, "meta"}`` atomically (torch.save).

    ``meta`` (e.g. target style, tile size, history) must be JSON-serialisable so that
    :func:`load_stain_transfer` can read it with ``weights_only=True``.
    """
    try:
        meta = json.loads(json.dumps(meta))
    except TypeError as exc:
        raise TypeError(f"save_stain_transfer: meta must be JSON-serialisable ({exc})") from None
    payload = {
        "format": CHECKPOINT_FORMAT,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "config": {"width": model.width, "n_classes": model.n_classes},
        "meta": meta,
    }
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(payload, tmp)
    return Path(path)


def load_stain_transfer(path: str | Path, device: str | torch.device = "cpu") -> NeuralStainTransfer:
    """A ready :class:`NeuralStainTransfer` from a :func:`save_stain_transfer` checkpoint.

    Raises FileNotFoundError / ValueError naming ``path`` and what is wrong.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such stain-transfer checkpoint")
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # any unreadable file gets the same message
        raise ValueError(f"{path}: not a stain-transfer checkpoint (torch.load failed: {exc})") from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        found = sorted(payload) if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(
            f"{path}: not a stain-transfer checkpoint (expected format {CHECKPOINT_FORMAT!r}; found {found})"
        )
    missing = [k for k in CHECKPOINT_KEYS if k not in payload]
    cfg = payload.get("config", {})
    missing += [f"config.{k}" for k in ("width", "n_classes") if k not in cfg]
    if missing:
        raise ValueError(f"{path}: stain-transfer checkpoint lacks {missing}")
    model = ColorizationNet(width=float(cfg["width"]), n_classes=int(cfg["n_classes"]))
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise ValueError(f"{path}: weights do not fit ColorizationNet{(cfg['width'], cfg['n_classes'])}: {exc}") from exc
    return NeuralStainTransfer(model.to(device).eval(), meta=payload["meta"], device=device)


# ----------------------------------------------------------------------------- the normalizer
@dataclass
class NeuralParams:
    """The fitted state of a neural normalizer: the model's configuration and its metadata."""

    width: float
    n_classes: int
    meta: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Width, class count and provenance as a JSON-ready dict."""
        return {"width": self.width, "n_classes": self.n_classes, "meta": self.meta}


class NeuralStainTransfer(Normalizer):
    """Stain normalizer from a trained :class:`ColorizationNet` (seed 004 §3.1).

    ``transform``: per image, Lab of the source; a*, b* predicted from its L (reflect-padded to
    sides divisible by 8, cropped back); ``out = lab_to_rgb(L, a*, b*)``; then, as in the other
    normalizers, ``out = src + w * (out - src)`` with the near-white weight ``w`` of
    :func:`~stainshift.stain._common.background_weight_lut` (0 where every channel has OD < beta,
    i.e. glass stays exactly as it was). Images with fewer tissue pixels (``w > 0``) than the
    normalizers' minimum come back unchanged and flagged in ``last_flags``. Chunks of
    ``chunk_size`` images run under ``torch.inference_mode()``; torch inputs run on their own
    device (the model moves there), numpy inputs on ``device``. ``blend_background=False`` returns
    the raw CNN output everywhere (an ablation of seed 004's claim that the CNN itself leaves
    glass white; never flags).
    """

    name = "neural"

    def __init__(
        self,
        model: ColorizationNet | None = None,
        *,
        meta: dict[str, Any] | None = None,
        device: str | torch.device = "cpu",
        io: float = 240.0,
        beta: float = 0.15,
        chunk_size: int = 64,
        blend_background: bool = True,
    ) -> None:
        super().__init__()
        self.device = torch.device(device)
        self.io = float(io)
        self.beta = float(beta)
        self.chunk_size = int(chunk_size)
        self.blend_background = bool(blend_background)
        self.model = model.to(self.device).eval() if model is not None else None
        if model is not None:
            self.params = NeuralParams(model.width, model.n_classes, dict(meta or {}))
        self._warned_fit = False

    def fit(self, target: Any) -> NeuralStainTransfer:
        """No-op for a loaded model (its style is fixed by training); raises without a model.

        A neural normalizer learns its target style from many tiles of that style
        (:func:`train_stain_transfer`) and is loaded with :func:`load_stain_transfer`; the single
        ``target`` image is only validated and otherwise ignored (logged once).
        """
        as_batch(target, "target")
        if self.model is None:
            raise RuntimeError(
                "neural: fit() cannot learn a stain style from one image; train a model on tiles of "
                "the target style with stainshift.stain.neural.train_stain_transfer, save it with "
                "save_stain_transfer and load it with load_stain_transfer(path)"
            )
        if not self._warned_fit:
            logger.warning(
                "neural: fit() ignores its target image; the style is the trained model's (meta %s)", self.params.meta
            )
            self._warned_fit = True
        return self

    def transform(self, batch: Any) -> Any:
        """Re-colour ``batch`` in the trained target style (a model must be loaded)."""
        if self.model is None:
            raise RuntimeError("neural: no model; load one with stainshift.stain.neural.load_stain_transfer(path)")
        return super().transform(batch)

    def _transform_np(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out, flags = self._run(torch.from_numpy(np.ascontiguousarray(batch)).to(self.device))
        return out.cpu().numpy(), flags.cpu().numpy()

    def _transform_torch(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._run(batch)

    def _run(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if next(self.model.parameters()).device != batch.device:
            self.model.to(batch.device)
        outs, flags = [], []
        with torch.inference_mode():
            for start in range(0, batch.shape[0], self.chunk_size):
                out, flag = self._chunk(batch[start : start + self.chunk_size])
                outs.append(out)
                flags.append(flag)
        return torch.cat(outs), torch.cat(flags)

    def _chunk(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = src.shape[0]
        lab = rgb_uint8_to_lab(src)
        ab = predict_ab(self.model, lab)
        rgb = lab_to_rgb_float(torch.cat([lab[:, :1], ab], dim=1))
        flat = src.reshape(n, -1, 3)
        rgb = rgb.reshape(n, -1, 3)
        rgb = torch.where(torch.isfinite(rgb), rgb, flat.float())
        if not self.blend_background:
            raw = rgb.clamp(0, 255).round().to(torch.uint8).reshape(src.shape)
            return raw, torch.zeros(n, dtype=torch.bool, device=src.device)
        weight = weight_torch(flat, self.io, self.beta)
        flag = (weight > 0).sum(dim=1) < min_tissue_torch(flat.shape[1])
        weight = weight * (~flag)[:, None].to(weight.dtype)
        return blend_torch(flat, rgb, weight).reshape(src.shape), flag


__all__ = [
    "AB_SCALE",
    "ColorizationNet",
    "NeuralParams",
    "NeuralStainTransfer",
    "lab_to_rgb_float",
    "load_stain_transfer",
    "predict_ab",
    "rgb_uint8_to_lab",
    "save_stain_transfer",
    "train_stain_transfer",
]
