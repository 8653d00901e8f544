"""Seed 004's experiment as stainshift runs it: stain transfer -> nuclei segmentation across centers ->
unsupervised nucleus classes.

The workflow (``workflow/rules/nuclei.smk``) calls these functions; each writes a cached artifact:

* :class:`Fields` (``fields.npz``): H&E fields with nucleus instance and type masks, each with its
  center and split. ``synthetic`` fields come from :func:`stainshift.synth.nuclei_scene` (every
  center of the study); ``hgsc`` are the two real crops of ``nuclei_hgsc`` — the top
  ``train_rows`` share of ``hgsc_nest`` trains, its other rows and ``hgsc_stroma`` test, and each
  ``restain_targets`` image re-stains the test fields (Macenko) into an extra test "center".
* :func:`normalize_fields`: every field under one normalization to the **train center's** style —
  ``none``; ``reinhard`` / ``macenko`` / ``vahadane`` fitted to the train center's train field with
  the most tissue; ``neural`` = the stain-transfer CNN trained on the train center's train fields
  (:func:`stain_transfer_tiles`). No test field sets a target or trains a model.
* :func:`segmentation_rows`: a U-Net trained on the train center's train fields (under one
  normalization), and the classical threshold baseline, scored on every test field (seed 004
  Sec. 4.1.1: train and test under the same normalization); :func:`segmentation_table` pools
  pixel counts per (normalization, model, domain) with a bootstrap CI over test fields.
* :func:`class_crops`: 40 px nucleus crops around the ground-truth instances (seed 004 corrected its
  LoG segmentation by hand; the ground-truth instances play that role) with their type labels.
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stainshift.atomic import atomic_path

log = logging.getLogger(__name__)

NORMALIZATIONS = ("none", "reinhard", "macenko", "vahadane", "neural")
SEEN, UNSEEN = "seen", "unseen"


@dataclass(frozen=True, eq=False)
class Fields:
    """H&E fields with nucleus masks: ``images[i]`` (H, W, 3) uint8, ``instances[i]`` (H, W) int32
    (0 = background), ``types[i]`` (H, W) uint8 (0 = background, ``k`` = ``class_names[k - 1]``)."""

    images: list[np.ndarray]
    instances: list[np.ndarray]
    types: list[np.ndarray]
    names: list[str]
    centers: list[str]
    splits: list[str]
    class_names: tuple[str, ...]
    dataset: str
    train_center: str
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.images)

    def where(self, split: str | None = None, center: str | None = None) -> list[int]:
        """Indices of the fields of ``split`` and ``center`` (None = any)."""
        return [i for i in range(len(self)) if (split is None or self.splits[i] == split)
                and (center is None or self.centers[i] == center)]

    def with_images(self, images: list[np.ndarray], **meta: Any) -> Fields:
        """A copy with ``images`` replaced (e.g. normalized) and ``meta`` extended."""
        return replace(self, images=images, meta={**self.meta, **meta})


def write_fields(path: str | os.PathLike, fields: Fields) -> Path:
    """``fields.npz``: arrays ``image_i``, ``instances_i``, ``types_i`` and a JSON ``meta`` string."""
    arrays: dict[str, np.ndarray] = {}
    for i in range(len(fields)):
        arrays[f"image_{i}"] = fields.images[i]
        arrays[f"instances_{i}"] = fields.instances[i].astype(np.int32)
        arrays[f"types_{i}"] = fields.types[i].astype(np.uint8)
    meta = {"names": fields.names, "centers": fields.centers, "splits": fields.splits,
            "class_names": list(fields.class_names), "dataset": fields.dataset,
            "train_center": fields.train_center, "meta": fields.meta}
    arrays["meta"] = np.array(json.dumps(meta, default=str))
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez_compressed(tmp, **arrays)
    return Path(path)


def read_fields(path: str | os.PathLike) -> Fields:
    """Inverse of :func:`write_fields`; errors name the file."""
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            n = len(meta["names"])
            images = [z[f"image_{i}"] for i in range(n)]
            inst = [z[f"instances_{i}"] for i in range(n)]
            types = [z[f"types_{i}"] for i in range(n)]
    except (OSError, KeyError, ValueError) as exc:
        raise ValueError(f"{path}: not a stainshift nuclei fields file ({exc})") from exc
    return Fields(images, inst, types, meta["names"], meta["centers"], meta["splits"], tuple(meta["class_names"]),
                  meta["dataset"], meta["train_center"], meta.get("meta") or {})


# --------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------
def synthetic_fields(centers: Sequence[str], *, train_center: str | None, n_train: int, n_test: int, size: int,
                     mpp: float, seed: int) -> Fields:
    """``n_train`` + ``n_test`` fields of every center (:func:`stainshift.synth.nuclei_scene`)."""
    from stainshift.synth import NUCLEUS_TYPES, nuclei_scene

    if not centers:
        raise ValueError("nuclei.synthetic: no centers")
    train_center = train_center or centers[0]
    if train_center not in centers:
        raise ValueError(f"nuclei.synthetic.train_center {train_center!r} is not one of the centers {list(centers)}")
    images, inst, types, names, cs, splits = [], [], [], [], [], []
    for c in centers:
        for split, k in (("train", n_train), ("test", n_test)):
            for i in range(k):
                s = nuclei_scene(c, size=size, mpp=mpp, seed=seed, field_id=f"{split}{i}")
                images.append(s.image), inst.append(s.instances), types.append(s.types)
                names.append(f"{c}_{split}{i}"), cs.append(c), splits.append(split)
                log.info("synthetic field %s: %d nuclei", names[-1], len(np.unique(s.instances)) - 1)
    return Fields(images, inst, types, names, cs, splits, tuple(NUCLEUS_TYPES.values()), "synthetic", train_center,
                  {"size": size, "mpp": mpp, "seed": seed})


RESTAINED = "restained:"  # center prefix of test fields that are re-stained copies of other test fields


def hgsc_fields(root: str | os.PathLike, *, train_rows: float, restain_targets: Sequence[str] = ()) -> Fields:
    """The real ``nuclei_hgsc`` crops: the top ``train_rows`` of ``hgsc_nest`` train, the rest of it and
    ``hgsc_stroma`` test; each ``restain_targets`` image re-stains the test fields (Macenko fitted to
    that lab's image) into a test center of its own, named after the file."""
    from stainshift.nuclei.datasets import load_hgsc
    from stainshift.stain import get_normalizer
    from stainshift.stain.targets import load_target_image

    items = load_hgsc(root)
    images, inst, types, names, cs, splits = [], [], [], [], [], []

    def add(img: np.ndarray, ins: np.ndarray, ty: np.ndarray, name: str, center: str, split: str) -> None:
        images.append(np.ascontiguousarray(img)), inst.append(np.ascontiguousarray(ins))
        types.append(np.ascontiguousarray(ty)), names.append(name), cs.append(center), splits.append(split)

    for it in items:
        if it.name == "hgsc_nest":
            cut = int(round(it.image.shape[0] * train_rows))
            add(it.image[:cut], it.instances[:cut], it.types[:cut], f"{it.name}_top", "hgsc", "train")
            add(it.image[cut:], it.instances[cut:], it.types[cut:], f"{it.name}_bottom", "hgsc", "test")
        else:
            add(it.image, it.instances, it.types, it.name, "hgsc", "test")
    test = [i for i, s in enumerate(splits) if s == "test"]
    for spec in restain_targets:
        lab = Path(str(spec)).stem
        norm = get_normalizer("macenko").fit(load_target_image(str(spec)))
        for i in test:
            add(norm.transform(images[i]), inst[i], types[i], f"{names[i]}@{lab}", f"{RESTAINED}{lab}", "test")
    return Fields(images, inst, types, names, cs, splits, tuple(items[0].class_names), "hgsc", "hgsc",
                  {"root": str(root), "train_rows": train_rows, "restain_targets": list(restain_targets)})


# --------------------------------------------------------------------------------------------
# Stain transfer and normalization (to the train center's style)
# --------------------------------------------------------------------------------------------
def stain_transfer_tiles(fields: Fields, *, tile: int, n: int, seed: int,
                         tumour_type: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random ``tile``-px crops of the train center's train fields, and their tissue class for
    seed 004's classification term: 1 where the tile holds a nucleus of ``tumour_type`` (the
    ``neoplastic`` class), else 0."""
    idx = fields.where("train", fields.train_center)
    if not idx:
        raise ValueError(f"nuclei {fields.dataset}: the train center {fields.train_center!r} has no train fields")
    if tumour_type is None:
        tumour_type = fields.class_names.index("neoplastic") + 1 if "neoplastic" in fields.class_names else len(
            fields.class_names)
    rng = np.random.default_rng(seed)
    tiles = np.empty((n, tile, tile, 3), np.uint8)
    labels = np.empty(n, np.int64)
    for k in range(n):
        i = int(idx[rng.integers(len(idx))])
        h, w = fields.images[i].shape[:2]
        if h < tile or w < tile:
            raise ValueError(f"nuclei field {fields.names[i]} ({h}x{w}) is smaller than the stain-transfer tile {tile}")
        y, x = int(rng.integers(h - tile + 1)), int(rng.integers(w - tile + 1))
        tiles[k] = fields.images[i][y:y + tile, x:x + tile]
        labels[k] = int(np.any(fields.types[i][y:y + tile, x:x + tile] == tumour_type))
    return tiles, labels


def reference_field(fields: Fields) -> int:
    """The train center's train field with the most tissue (min channel < 220): the classical normalizers' target."""
    idx = fields.where("train", fields.train_center)
    return max(idx, key=lambda i: float((fields.images[i].min(axis=2) < 220).mean()))


def normalize_fields(fields: Fields, method: str, *, model_path: str | os.PathLike | None = None) -> Fields:
    """Every field under ``method`` (:data:`NORMALIZATIONS`) to the train center's style."""
    if method == "none":
        return fields.with_images(list(fields.images), normalization="none")
    if method == "neural":
        from stainshift.stain.neural import load_stain_transfer

        if model_path is None:
            raise ValueError("normalize_fields: 'neural' needs the stain-transfer model (model_path)")
        normalizer = load_stain_transfer(model_path)
        target = str(model_path)
    elif method in NORMALIZATIONS:
        from stainshift.stain import get_normalizer

        ref = reference_field(fields)
        normalizer = get_normalizer(method).fit(fields.images[ref])
        target = fields.names[ref]
    else:
        raise ValueError(f"unknown normalization {method!r}; known: {', '.join(NORMALIZATIONS)}")
    out = [normalizer.transform(img) for img in fields.images]
    return fields.with_images(out, normalization=method, normalization_target=target)


def transfer_score_rows(fields: Fields, normalized: dict[str, Fields]) -> pd.DataFrame:
    """Seed 004 Sec. 4.1's numbers per test field and method: colour-histogram L2 / correlation /
    Hellinger to the reference field of the train center, and the share of the field's white glass
    (min channel >= 220) a method turns non-white (the SVD failure mode)."""
    from stainshift.stain.quality import transfer_scores

    ref = fields.images[reference_field(fields)]
    rows = []
    for i in fields.where("test"):
        glass = fields.images[i].min(axis=2) >= 220
        for method, f in normalized.items():
            img = f.images[i]
            scores = transfer_scores(img, ref)
            coloured = float((img.min(axis=2)[glass] < 200).mean()) if glass.any() else float("nan")
            rows.append({"dataset": fields.dataset, "field": fields.names[i], "center": fields.centers[i],
                         "method": method, **scores, "glass_coloured": coloured})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------
# Segmentation (seed 004 Sec. 3.2 / 4.1.1)
# --------------------------------------------------------------------------------------------
def train_segmenter(fields: Fields, cfg: dict[str, Any], log_fn: Callable[[str], None] | None = None) -> tuple[Any, list]:
    """A U-Net (:func:`stainshift.nuclei.segmentation.train_unet`) on ``cfg["patches"]`` seeded random
    ``cfg["patch"]`` px windows of the train center's train fields (:func:`datasets.random_crops`)."""
    from stainshift.nuclei.datasets import NucleiImage, random_crops
    from stainshift.nuclei.segmentation import train_unet

    idx = fields.where("train", fields.train_center)
    train = [NucleiImage(fields.names[i], fields.images[i], fields.instances[i], fields.types[i],
                         fields.class_names, fields.dataset) for i in idx]
    X, Y = random_crops(train, size=int(cfg["patch"]), n=int(cfg["patches"]), seed=int(cfg["seed"]))
    log.info("U-Net %s/%s: %d patches of %d px from %d train fields of %s", fields.dataset,
             fields.meta.get("normalization"), len(X), cfg["patch"], len(idx), fields.train_center)
    return train_unet(X, Y, epochs=int(cfg["epochs"]), batch_size=int(cfg["batch_size"]), lr=float(cfg["lr"]),
                      base_channels=int(cfg["base_channels"]), seed=int(cfg["seed"]), log=log_fn)


def segmentation_rows(fields: Fields, model: Any, *, patch: int) -> pd.DataFrame:
    """Per test field: pixel counts and scores, object scores, for the U-Net and the threshold baseline."""
    from stainshift.nuclei.seg_metrics import object_scores, pixel_counts, pixel_scores
    from stainshift.nuclei.segmentation import (
        instances_from_probability,
        predict_foreground,
        threshold_baseline,
    )

    rows = []
    for i in fields.where("test"):
        img, true_inst = fields.images[i], fields.instances[i]
        prob = predict_foreground(model, img, patch=patch)
        preds = {"unet": (prob >= 0.5, instances_from_probability(prob)), "threshold": threshold_baseline(img)}
        for name, (fg, inst) in preds.items():
            counts = pixel_counts(fg, true_inst > 0)
            rows.append({"dataset": fields.dataset, "normalization": fields.meta.get("normalization", "none"),
                         "model": name, "field": fields.names[i], "center": fields.centers[i],
                         "domain": SEEN if fields.centers[i] == fields.train_center else UNSEEN,
                         **counts, **pixel_scores(counts), **object_scores(inst, true_inst)})
    return pd.DataFrame(rows)


PIXEL_COLS = ("sensitivity", "specificity", "dice", "jaccard")
OBJECT_COLS = ("aji", "pq", "object_dice")


def segmentation_table(rows: pd.DataFrame, *, by: Sequence[str] = ("dataset", "normalization", "model", "domain"),
                       n_boot: int = 200, seed: int = 0, ci: float = 0.95) -> pd.DataFrame:
    """Pooled scores per group: pixel scores from summed counts (seed 004's table), object scores as
    the mean over fields; a percentile bootstrap CI over test fields for pooled Dice."""
    from stainshift.nuclei.seg_metrics import pixel_scores

    out = []
    rng = np.random.default_rng(seed)
    lo_q, hi_q = 50 * (1 - ci), 50 * (1 + ci)
    for key, g in rows.groupby(list(by), sort=False):
        counts = {c: int(g[c].sum()) for c in ("tp", "fp", "fn", "tn")}
        rec = dict(zip(by, key if isinstance(key, tuple) else (key,)))
        rec.update(n_fields=len(g), **pixel_scores(counts), **{c: float(g[c].mean()) for c in OBJECT_COLS})
        if n_boot and len(g) > 1:
            arr = g[["tp", "fp", "fn"]].to_numpy(np.float64)
            draws = rng.integers(0, len(g), (n_boot, len(g)))
            s = arr[draws].sum(axis=1)
            dice = 2 * s[:, 0] / np.maximum(2 * s[:, 0] + s[:, 1] + s[:, 2], 1)
            rec["dice_ci_low"], rec["dice_ci_high"] = (float(v) for v in np.percentile(dice, [lo_q, hi_q]))
        else:
            rec["dice_ci_low"] = rec["dice_ci_high"] = float("nan")
        out.append(rec)
    return pd.DataFrame(out)


# --------------------------------------------------------------------------------------------
# Nucleus classes (seed 004 Sec. 3.3 / 4.2)
# --------------------------------------------------------------------------------------------
def class_crops(fields: Fields, split: str, size: int) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """Crops of every ground-truth nucleus of the ``split`` fields, their type ids (0-based class
    index, −1 unknown) and a table (field, center, x, y, label). Re-stained copies (centers
    ``restained:*``) are left out: they hold the same nuclei again, and the class scores' bootstrap
    must count each nucleus once."""
    from stainshift.nuclei.crops import nucleus_crops

    crops, labels, rows = [], [], []
    for i in fields.where(split):
        if fields.centers[i].startswith(RESTAINED):
            continue
        c = nucleus_crops(fields.images[i], fields.instances[i], fields.types[i], size=size)
        lab = np.where(c.labels > 0, c.labels - 1, -1)
        crops.append(c.crops), labels.append(lab)
        rows += [{"field": fields.names[i], "center": fields.centers[i], "x": float(x), "y": float(y), "label": int(l)}
                 for (x, y), l in zip(c.centroids, lab)]
    if not crops:
        return np.zeros((0, size, size, 3), np.uint8), np.zeros(0, np.int64), pd.DataFrame(rows)
    return np.concatenate(crops), np.concatenate(labels), pd.DataFrame(rows)
