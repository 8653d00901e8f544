"""Figures of seed 004's experiment: the stain-transfer montage, segmentation overlays, InfoGAN samples."""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from stainshift.plots import plt, save_figure

if TYPE_CHECKING:
    from stainshift.nuclei.experiment import Fields

#: outline colours: ground truth, prediction
GT_RGB = (0, 200, 0)
PRED_RGB = (255, 230, 0)  # yellow: visible on haematoxylin and eosin alike


def _show_fields(fields: Fields, k: int = 3) -> list[int]:
    """Up to ``k`` test fields, one per center, unseen centers first (the shift the figure is about)."""
    picked, seen = [], set()
    for i in sorted(fields.where("test"), key=lambda i: fields.centers[i] == fields.train_center):
        if fields.centers[i] not in seen:
            picked.append(i)
            seen.add(fields.centers[i])
    return picked[:k]


SEGMENTATION_VIEW = 256  # px of a field shown per segmentation panel


def _crop(img: np.ndarray, side: int = 512) -> np.ndarray:
    return img[:side, :side]


def transfer_montage(fields: Fields, normalized: dict[str, Fields], path: str | os.PathLike) -> Path:
    """Rows: test fields (one per center); columns: each normalization (``none`` = as scanned), then
    the train center's reference field. Near-white glass that a method coloured is what seed 004's
    Fig. 3 shows for the SVD method."""
    from stainshift.nuclei.experiment import reference_field

    rows = _show_fields(fields)
    ref = reference_field(fields)
    cols = list(normalized) + ["reference"]
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(2.4 * len(cols), 2.5 * len(rows) + 0.6), squeeze=False)
    for r, i in enumerate(rows):
        for c, name in enumerate(cols):
            ax = axes[r][c]
            img = fields.images[ref] if name == "reference" else normalized[name].images[i]
            ax.imshow(_crop(img))
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title("as scanned" if name == "none" else name if name != "reference" else
                             f"target style\n{fields.names[ref]}", fontsize=9)
            if c == 0:
                ax.set_ylabel(f"{fields.centers[i]}\n{fields.names[i]}", fontsize=8)
    fig.suptitle(f"Stain transfer to {fields.train_center}'s style ({fields.dataset} nuclei fields)", fontsize=10)
    return save_figure(fig, path)


def _outline(img: np.ndarray, inst: np.ndarray, rgb: tuple[int, int, int]) -> np.ndarray:
    from skimage.segmentation import find_boundaries

    out = img.copy()
    out[find_boundaries(inst, mode="inner")] = rgb
    return out


def segmentation_figure(fields_by_norm: Sequence[Fields], model_paths: Sequence[str | os.PathLike],
                        path: str | os.PathLike, *, patch: int) -> Path:
    """One unseen test field under each normalization: ground-truth outlines (green) and the U-Net's
    instances (yellow), and the threshold baseline's on the un-normalized field; the top-left
    ``SEGMENTATION_VIEW`` px, so one-pixel outlines stay visible on large fields."""
    from stainshift.nuclei.segmentation import (
        instances_from_probability,
        load_unet,
        predict_foreground,
        threshold_baseline,
    )

    first = fields_by_norm[0]
    i = _show_fields(first, 1)[0]
    panels = []
    for f, mp in zip(fields_by_norm, model_paths):
        model, _ = load_unet(mp)
        img = f.images[i]
        inst = instances_from_probability(predict_foreground(model, img, patch=patch))
        panels.append((f"U-Net, {f.meta.get('normalization', '?')}", _outline(_outline(img, f.instances[i], GT_RGB),
                                                                              inst, PRED_RGB)))
    _, th_inst = threshold_baseline(first.images[i])
    panels.append((f"threshold, {first.meta.get('normalization', '?')}",
                   _outline(_outline(first.images[i], first.instances[i], GT_RGB), th_inst, PRED_RGB)))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 4.0), squeeze=False)
    for ax, (title, img) in zip(axes[0], panels):
        ax.imshow(_crop(img, SEGMENTATION_VIEW), interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.set_xticks([]), ax.set_yticks([])
    fig.suptitle(f"{first.names[i]} ({first.centers[i]}, trained on {first.train_center}): "
                 "green = ground truth, yellow = predicted nuclei", fontsize=9)
    return save_figure(fig, path)


def class_samples_figure(generated: np.ndarray, real_by_class: dict[str, np.ndarray], path: str | os.PathLike,
                         code_names: Sequence[str] | None = None, iterations: int | None = None) -> Path:
    """Left: InfoGAN samples, one column per code c (rows share z, seed 004 Fig. 7); right: real
    crops of each ground-truth class (seed 004 Fig. 8)."""
    n_codes, n = generated.shape[:2]
    n_cls = len(real_by_class)
    fig, axes = plt.subplots(n, n_codes + 1 + n_cls, figsize=(1.1 * (n_codes + 1 + n_cls), 1.1 * n + 0.8),
                             squeeze=False)
    for r in range(n):
        for c in range(n_codes + 1 + n_cls):
            ax = axes[r][c]
            ax.set_xticks([]), ax.set_yticks([])
            ax.axis("off")
            if c < n_codes:
                ax.imshow(generated[c, r])
                if r == 0:
                    ax.set_title(code_names[c] if code_names else f"code {c}", fontsize=7)
            elif c > n_codes:
                name = list(real_by_class)[c - n_codes - 1]
                crops = real_by_class[name]
                if r < len(crops):
                    ax.imshow(crops[r])
                if r == 0:
                    ax.set_title(f"real:\n{name}", fontsize=7)
    trained = f" after {iterations:,} iterations (seed 004: 70,000)" if iterations else ""
    fig.suptitle(f"InfoGAN samples per code{trained} (rows share z) | real nuclei per class", fontsize=9)
    return save_figure(fig, path)
