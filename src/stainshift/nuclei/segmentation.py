"""Nuclei segmentation: seed 004's U-Net (§3.2), whole-image inference, instances, a classical baseline.

**Network** (:func:`build_unet`). Seed 004: "4 layers of downsampling and 4 symmetrical layers of
upsampling, bringing images of original pixel size 144×144 down to 512 channels of 9×9 […]. Each
layer consists of 2 convolution operations and a maxpool operation followed by ReLU. Skip
connections concatenate the equivalently sized downsampled images with each up-sampling layer",
trained with Adam at lr 1e-4. The default ``arch="basic"`` is MONAI's ``BasicUNet`` with features
(b, 2b, 4b, 8b, 16b, b), ReLU: two 3×3 convs per level, 2×2 max-pooling between levels, 2×2
transposed-conv upsampling, skip concatenation — for base b = 32 and a 144² input the bottleneck
is 512 channels at 9×9, exactly the seed's shape. Deviations: every conv is followed by instance
normalization (the seed names no normalization; instance norm does not depend on the batch, so
whole-image inference with overlapping windows is batch-independent). ``arch="strided"`` is
MONAI's ``UNet`` (channels (b…16b), strides (2, 2, 2, 2), ``num_res_units=0``): same bottleneck
(16b channels at 9×9), but it downsamples with one *strided* 3×3 conv per level instead of two
convs + max-pool, has no full-resolution conv before the first downsampling and PReLU
activations — a cheaper, less seed-faithful variant.

**Training** (:func:`train_unet`). Inputs are uint8 RGB scaled to [0, 1] (``x / 255``, no
per-channel standardization: the instance norms re-centre every feature map). Loss: MONAI
``DiceCELoss`` (softmax over 2 classes; Dice on the nucleus channel over the whole batch + cross
entropy; the seed names no loss). Why: nuclei cover 5–20 % of the pixels, so cross entropy alone
favours background at a 0.5 threshold, while the Dice term optimizes the reported metric
directly; the CE term keeps the per-pixel probabilities usable for thresholding; batch-level Dice
avoids the undefined Dice of patches without nuclei. Adam, lr 1e-4 (seed). Augmentation: the 8
flips/rotations of the square (rot90 by odd multiples only for square patches). Seeded: model
init under ``seed`` (in a forked RNG, global state untouched), shuffling and augmentation from a
``torch.Generator``; the same call gives identical weights on CPU.

**Instances** (:func:`split_touching`): foreground → fill holes → drop objects < ``min_area`` →
distance transform → markers = the h-maxima (height ``h`` px) of the smoothed distance, one per
connected maximum → watershed of −distance inside the foreground. A plateau (the flat distance
ridge of an elongated nucleus) is a single maximum, so elongated nuclei are not over-split.

**Baseline** (:func:`threshold_baseline`): the hematoxylin channel of Ruifrok–Johnston colour
deconvolution (``skimage.color.rgb2hed``, seed 004 ref. [10]), Gaussian σ = 1, Otsu threshold,
opening with a disk of radius 1, then :func:`split_touching`.
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage as ndi
from torch import nn

import stainshift
from stainshift.atomic import atomic_path
from stainshift.nuclei.seg_metrics import pixel_counts, pixel_scores, sum_counts

__all__ = [
    "ARCHS",
    "build_unet",
    "instances_from_probability",
    "load_unet",
    "predict_foreground",
    "save_unet",
    "split_touching",
    "threshold_baseline",
    "train_unet",
]

logger = logging.getLogger(__name__)

ARCHS = ("basic", "strided")


def build_unet(base_channels: int = 32, in_channels: int = 3, out_channels: int = 2, arch: str = "basic") -> nn.Module:
    """Seed 004's 4-down / 4-up U-Net with ``base_channels`` b (bottleneck 16b channels at input/16).

    ``arch="basic"``: MONAI ``BasicUNet`` (2 convs + max-pool per level, the seed's block);
    ``arch="strided"``: MONAI ``UNet`` (one strided conv per level). The build arguments are kept
    in ``model.spec`` (used by :func:`save_unet`).
    """
    from monai.networks.nets import BasicUNet, UNet

    b = int(base_channels)
    if b < 1:
        raise ValueError(f"base_channels must be >= 1, got {base_channels}")
    if arch == "basic":
        model = BasicUNet(spatial_dims=2, in_channels=in_channels, out_channels=out_channels,
                          features=(b, 2 * b, 4 * b, 8 * b, 16 * b, b), act="relu")
    elif arch == "strided":
        model = UNet(spatial_dims=2, in_channels=in_channels, out_channels=out_channels,
                     channels=(b, 2 * b, 4 * b, 8 * b, 16 * b), strides=(2, 2, 2, 2), num_res_units=0)
    else:
        raise ValueError(f"unknown U-Net arch {arch!r}; choose one of {ARCHS}")
    model.spec = {"arch": arch, "base_channels": b, "in_channels": int(in_channels), "out_channels": int(out_channels)}
    return model


def _to_input(images: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 (N, H, W, 3) → float (N, 3, H, W) in [0, 1] on ``device``."""
    if isinstance(images, np.ndarray):  # read-only arrays (PIL, slices of them) are copied, not aliased
        images = torch.from_numpy(np.require(images, requirements="W"))
    x = images.to(device)
    return x.permute(0, 3, 1, 2).float().div_(255.0)


def _augment(x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A random element of the dihedral group per sample of x (N, C, H, W) and y (N, H, W): flip, then k·90°."""
    square = x.shape[-1] == x.shape[-2]
    flips = torch.randint(0, 2, (len(x),), generator=gen).tolist()
    turns = torch.randint(0, 4 if square else 2, (len(x),), generator=gen).tolist()
    xs, ys = [], []
    for i, (f, k) in enumerate(zip(flips, turns)):
        xi, yi = x[i], y[i]
        if f:
            xi, yi = xi.flip(-1), yi.flip(-1)
        k = k if square else 2 * k
        xs.append(torch.rot90(xi, k, (-2, -1)))
        ys.append(torch.rot90(yi, k, (-2, -1)))
    return torch.stack(xs), torch.stack(ys)


@torch.no_grad()
def _val_dice(model: nn.Module, X: np.ndarray, Y: np.ndarray, batch_size: int, device: torch.device) -> float:
    """Pooled pixel Dice of ``argmax`` predictions on (X, Y)."""
    model.eval()
    counts = sum_counts(pixel_counts(model(_to_input(X[s:s + batch_size], device)).argmax(1).cpu().numpy(),
                                     Y[s:s + batch_size]) for s in range(0, len(X), batch_size))
    model.train()
    return pixel_scores(counts)["dice"]


def train_unet(images: np.ndarray, masks: np.ndarray, *, epochs: int, batch_size: int = 16, lr: float = 1e-4,
               base_channels: int = 32, arch: str = "basic", seed: int = 0, augment: bool = True,
               val: tuple[np.ndarray, np.ndarray] | None = None, log: Callable[[str], None] | None = None,
               device: str | torch.device = "cpu") -> tuple[nn.Module, list[dict[str, Any]]]:
    """Train :func:`build_unet` on uint8 ``images`` (N, H, W, 3) and binary ``masks`` (N, H, W).

    Adam (``lr``, seed 004: 1e-4), DiceCE loss, dihedral augmentation (module docstring). One
    epoch = one shuffled pass over the N patches. ``history``: one dict per epoch with ``epoch``,
    ``loss`` (mean over batches), ``val_dice`` (pooled pixel Dice on ``val``, None without it) and
    ``seconds``. ``log`` receives a one-line summary per epoch. Returns the model in eval mode.
    """
    from monai.losses import DiceCELoss

    images, masks = np.asarray(images), np.asarray(masks)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
    if masks.shape != images.shape[:3]:
        raise ValueError(f"masks shape {masks.shape} != images shape {images.shape[:3]}")
    if len(images) == 0 or epochs < 1:
        raise ValueError(f"train_unet needs patches and epochs >= 1 (got {len(images)} patches, {epochs} epochs)")
    device = torch.device(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_unet(base_channels, arch=arch).to(device)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True)
    X = torch.from_numpy(np.require(images, requirements="W"))
    Y = torch.from_numpy((masks != 0).astype(np.int64))
    history: list[dict[str, Any]] = []
    model.train()
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        order = torch.randperm(len(X), generator=gen)
        total, n_batches = 0.0, 0
        for s in range(0, len(X), batch_size):
            idx = order[s:s + batch_size]
            x, y = _to_input(X[idx], device), Y[idx].to(device)
            if augment:
                x, y = _augment(x, y, gen)
            loss = loss_fn(model(x), y.unsqueeze(1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach())
            n_batches += 1
        val_dice = _val_dice(model, val[0], np.asarray(val[1]) != 0, batch_size, device) if val is not None else None
        row = {"epoch": epoch, "loss": total / n_batches, "val_dice": val_dice, "seconds": time.perf_counter() - t0}
        history.append(row)
        msg = (f"U-Net epoch {epoch}/{epochs}: loss {row['loss']:.4f}"
               + (f", val Dice {val_dice:.3f}" if val_dice is not None else "") + f" ({row['seconds']:.1f} s)")
        logger.info(msg)
        if log is not None:
            log(msg)
    return model.eval(), history


@torch.no_grad()
def predict_foreground(model: nn.Module, image: np.ndarray, patch: int = 144, overlap: float = 0.25,
                       batch_size: int = 16) -> np.ndarray:
    """Nucleus probability (float32, H×W) of a uint8 RGB image of any size.

    MONAI ``sliding_window_inference``: ``patch``² windows overlapping by ``overlap``, Gaussian
    blending (window borders weigh less), images smaller than a window padded with white (1.0);
    the softmax probability of class 1 is blended.
    """
    from monai.inferers import sliding_window_inference

    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    x = _to_input(image[None], device)
    prob = sliding_window_inference(x, roi_size=(patch, patch), sw_batch_size=batch_size,
                                    predictor=lambda t: torch.softmax(model(t), 1)[:, 1:2], overlap=overlap,
                                    mode="gaussian", padding_mode="constant", cval=1.0)
    model.train(was_training)
    return prob[0, 0].float().cpu().numpy().astype(np.float32)


def split_touching(fg: np.ndarray, *, min_area: int = 20, h: float = 1.0, sigma: float = 1.0) -> np.ndarray:
    """Instance labels (int32, 1..n) of a binary nucleus mask; touching nuclei split by watershed.

    Fill holes, drop components < ``min_area`` px, distance transform smoothed by a Gaussian
    (``sigma`` px), markers = connected h-maxima of height ``h`` px, watershed of −distance in the
    mask; objects < ``min_area`` px after the split are dropped too.
    """
    from skimage.morphology import h_maxima, remove_small_objects
    from skimage.segmentation import relabel_sequential, watershed

    fg = ndi.binary_fill_holes(np.asarray(fg) != 0)
    fg = remove_small_objects(fg, max_size=max(int(min_area) - 1, 0))
    if not fg.any():
        return np.zeros(fg.shape, np.int32)
    dist = ndi.distance_transform_edt(fg)
    if sigma > 0:
        dist = ndi.gaussian_filter(dist, sigma) * fg
    markers, _ = ndi.label(h_maxima(dist, h) & fg)
    labels = watershed(-dist, markers, mask=fg)
    # a component without a marker (flat, thin) keeps its connected-component label
    orphans, _ = ndi.label(fg & (labels == 0))
    labels = np.where(orphans > 0, orphans + labels.max(), labels)
    sizes = np.bincount(labels.ravel())
    labels[sizes[labels] < min_area] = 0
    return relabel_sequential(labels)[0].astype(np.int32)


def instances_from_probability(prob: np.ndarray, threshold: float = 0.5, *, min_area: int = 20, h: float = 1.0,
                               sigma: float = 1.0) -> np.ndarray:
    """Instances (int32) of ``prob >= threshold`` by :func:`split_touching`."""
    return split_touching(np.asarray(prob) >= threshold, min_area=min_area, h=h, sigma=sigma)


def threshold_baseline(image: np.ndarray, *, min_area: int = 20, h: float = 1.0,
                       sigma: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Classical nuclei segmentation: hematoxylin (``rgb2hed``) → Gaussian σ=1 → Otsu → opening → split.

    Returns ``(fg, instances)``: ``fg`` bool = ``instances > 0``; ``instances`` int32.
    """
    from skimage.color import rgb2hed
    from skimage.filters import threshold_otsu
    from skimage.morphology import disk

    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"image must be RGB (H, W, 3), got shape {image.shape}")
    hema = ndi.gaussian_filter(rgb2hed(image)[..., 0], 1.0)
    fg = hema > threshold_otsu(hema) if np.ptp(hema) > 0 else np.zeros(hema.shape, bool)
    fg = ndi.binary_opening(fg, structure=disk(1))
    inst = split_touching(fg, min_area=min_area, h=h, sigma=sigma)
    return inst > 0, inst


def save_unet(model: nn.Module, path: str | os.PathLike, meta: Mapping[str, Any] | None = None) -> Path:
    """Write ``{spec, state_dict, software_version, meta}`` to ``path`` atomically (``meta``: plain
    numbers / strings / lists / dicts, loadable with ``weights_only=True``)."""
    spec = getattr(model, "spec", None)
    if not isinstance(spec, dict):
        raise ValueError("save_unet: the model has no .spec (build it with build_unet)")
    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save({"spec": spec, "state_dict": state, "software_version": stainshift.__version__,
                    "meta": dict(meta or {})}, tmp)
    return path


def load_unet(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a :func:`save_unet` file: ``(model in eval mode on device, meta)``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"U-Net file {path} not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"{path}: not a readable U-Net file ({err})") from err
    if not isinstance(state, dict) or "spec" not in state or "state_dict" not in state:
        raise ValueError(f"{path}: not a U-Net file (keys 'spec' and 'state_dict' expected)")
    model = build_unet(**state["spec"])
    try:
        model.load_state_dict(state["state_dict"])
    except RuntimeError as err:
        raise ValueError(f"{path}: weights do not fit the U-Net spec {state['spec']}: {err}") from err
    return model.to(device).eval(), dict(state.get("meta") or {})
