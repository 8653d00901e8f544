"""k-means baselines, Hungarian cluster→class matching and seed 004's per-class scores (§3.3, §4.2.1).

Seed 004 compares its InfoGAN's codes with k-means (3 clusters, L2) on flattened pixel vectors and
on CNN features (ResNet-152 average-pool). Clusters carry no class names, so each method's
clusters are mapped to classes by maximum agreement with the ground truth (Hungarian matching on
the contingency table) before precision / sensitivity / F1 / accuracy are computed — the usual
unsupervised-clustering accuracy. The mapping uses the labels being scored (as in seed 004): the
scores measure how well the clusters align with the classes, not a held-out classifier.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans
from torch import nn

__all__ = [
    "apply_mapping",
    "cluster_scores",
    "encoder_features",
    "hungarian_match",
    "kmeans_features",
    "kmeans_fit_predict",
    "kmeans_pixels",
    "pixel_vectors",
    "scores_table",
]

logger = logging.getLogger(__name__)


def pixel_vectors(crops: np.ndarray) -> np.ndarray:
    """Flattened RGB pixel vectors in [0, 1], float32 (N, H·W·C) (seed 004: 32·32·3 = 3072)."""
    crops = np.asarray(crops)
    if crops.ndim != 4:
        raise ValueError(f"crops must be (N, H, W, C), got shape {crops.shape}")
    return crops.reshape(len(crops), -1).astype(np.float32) / 255.0


def kmeans_pixels(crops: np.ndarray, k: int = 3, seed: int = 0, n_init: int = 10) -> np.ndarray:
    """k-means (L2) on :func:`pixel_vectors`, not standardised — plain Euclidean distance between
    images, as seed 004's baseline; cluster labels int (N,)."""
    return kmeans_features(pixel_vectors(crops), k, seed, n_init)


def kmeans_features(features: np.ndarray, k: int = 3, seed: int = 0, n_init: int = 10) -> np.ndarray:
    """k-means (L2, not standardised) on (N, D) features; cluster labels int (N,)."""
    return kmeans_fit_predict(features, features, k, seed, n_init)


def kmeans_fit_predict(train: np.ndarray, test: np.ndarray, k: int = 3, seed: int = 0,
                       n_init: int = 10) -> np.ndarray:
    """Fit k-means (L2, ``n_init`` restarts, ``random_state=seed``) on ``train`` (N, D); return the
    nearest-centre cluster of every row of ``test`` (M, D), int (M,)."""
    train, test = np.asarray(train), np.asarray(test)
    if train.ndim != 2 or len(train) < k:
        raise ValueError(f"k-means features must be (N, D) with N >= k={k}, got shape {train.shape}")
    if test.ndim != 2 or test.shape[1] != train.shape[1]:
        raise ValueError(f"k-means test features {test.shape} do not match train features {train.shape}")
    km = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit(train)
    logger.debug("k-means: k=%d on %s, inertia %.4g", k, train.shape, km.inertia_)
    return km.predict(test).astype(np.int64)


@torch.no_grad()
def encoder_features(encoder: nn.Module, crops: np.ndarray, batch: int = 256, input_size: int | None = None,
                     device: str | torch.device = "cpu") -> np.ndarray:
    """Pooled encoder features (N, D) of uint8 crops (N, H, W, 3), encoder in eval mode.

    stainshift encoders take float RGB in [0, 1] and normalise internally. Crops are fed at their
    own size unless ``input_size`` is given, then resized bilinearly (antialiased when shrinking)
    — e.g. 224 for an encoder trained on 224 px tiles, or a multiple of a ViT's patch size. The
    encoder's train/eval mode is restored afterwards."""
    crops = np.asarray(crops)
    if crops.ndim != 4 or crops.shape[-1] != 3 or crops.dtype != np.uint8:
        raise ValueError(f"crops must be uint8 (N, H, W, 3), got {crops.dtype} {crops.shape}")
    was_training = encoder.training
    encoder.eval().to(device)
    out = []
    try:
        for i in range(0, len(crops), batch):
            x = torch.from_numpy(crops[i:i + batch]).to(device).permute(0, 3, 1, 2).float().div(255.0)
            if input_size is not None and x.shape[-1] != input_size:
                x = F.interpolate(x, size=(input_size, input_size), mode="bilinear", align_corners=False,
                                  antialias=input_size < x.shape[-1])
            out.append(encoder(x).flatten(1).cpu())
    finally:
        encoder.train(was_training)
    if not out:
        raise ValueError("encoder_features: no crops")
    return torch.cat(out).numpy()


def hungarian_match(pred_clusters: np.ndarray, true_labels: np.ndarray, n_clusters: int,
                    n_classes: int) -> dict[int, int]:
    """Mapping {cluster: class} for every cluster 0..n_clusters−1 that maximises agreements with
    the true labels (apply it with :func:`apply_mapping`).

    Contingency C[k, j] = #{pred = k, true = j} (true labels < 0 ignored); the Hungarian algorithm
    (``linear_sum_assignment(C, maximize=True)``) assigns distinct clusters to distinct classes.
    With more clusters than classes (e.g. 5 codes, 3 classes) the clusters left over are mapped to
    their majority class (several clusters may then share a class; every class keeps one cluster).
    A left-over cluster with no members maps to class 0 (it labels nothing). With fewer clusters
    than classes, some classes are never predicted."""
    pred = np.asarray(pred_clusters, dtype=np.int64)
    true = np.asarray(true_labels, dtype=np.int64)
    if pred.shape != true.shape:
        raise ValueError(f"pred_clusters {pred.shape} and true_labels {true.shape} differ in shape")
    ok = true >= 0
    pred, true = pred[ok], true[ok]
    if pred.size and (pred.min() < 0 or pred.max() >= n_clusters):
        raise ValueError(f"cluster ids must lie in [0, {n_clusters}), got [{pred.min()}, {pred.max()}]")
    if true.size and true.max() >= n_classes:
        raise ValueError(f"class labels must lie in [0, {n_classes}), got max {true.max()}")
    table = np.zeros((n_clusters, n_classes), dtype=np.int64)
    np.add.at(table, (pred, true), 1)
    rows, cols = linear_sum_assignment(table, maximize=True)
    mapping = table.argmax(axis=1)
    mapping[rows] = cols
    return {int(c): int(m) for c, m in enumerate(mapping)}


def apply_mapping(pred_clusters: np.ndarray, mapping: dict[int, int]) -> np.ndarray:
    """Class labels int (N,) of cluster labels under a :func:`hungarian_match` mapping."""
    pred = np.asarray(pred_clusters, dtype=np.int64)
    missing = set(np.unique(pred).tolist()) - set(mapping)
    if missing:
        raise KeyError(f"clusters {sorted(missing)} have no class in the mapping")
    lut = np.zeros(max(mapping) + 1, dtype=np.int64)
    lut[list(mapping)] = list(mapping.values())
    return lut[pred]


def _scores_from_confusion(conf: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-class precision, sensitivity, F1 (0 where undefined) and accuracy from confusion
    matrices (..., K, K) with rows = true, columns = predicted."""
    tp = np.diagonal(conf, axis1=-2, axis2=-1).astype(np.float64)
    pred_pos = conf.sum(axis=-2)
    true_pos = conf.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(pred_pos > 0, tp / pred_pos, 0.0)
        sensitivity = np.where(true_pos > 0, tp / true_pos, 0.0)
        denom = precision + sensitivity
        f1 = np.where(denom > 0, 2 * precision * sensitivity / denom, 0.0)
        accuracy = tp.sum(-1) / conf.sum(axis=(-2, -1))
    return precision, sensitivity, f1, accuracy


def cluster_scores(true: np.ndarray, pred_mapped: np.ndarray, class_names: Sequence[str], *,
                   groups: np.ndarray | None = None, n_boot: int = 1000, ci: float = 0.95,
                   seed: int = 0) -> dict[str, Any]:
    """Seed 004's scores of class predictions (labels 0..K−1; true < 0 ignored).

    Per class: precision TP/(TP+FP), sensitivity TP/(TP+FN), F1 = 2PS/(P+S) (0 where undefined,
    as sklearn's ``zero_division=0``); overall accuracy; macro F1 (mean over the K classes);
    confusion matrix (rows true, columns predicted). Percentile bootstrap CIs (``n_boot``
    resamples, ``numpy.random.default_rng(seed)``) for accuracy and macro F1 resample nuclei with
    replacement, or whole groups (e.g. images) when ``groups`` is given — the cluster→class
    mapping is held fixed, so the CI covers the scoring sample, not the clustering."""
    true = np.asarray(true, dtype=np.int64)
    pred = np.asarray(pred_mapped, dtype=np.int64)
    k = len(class_names)
    if true.shape != pred.shape:
        raise ValueError(f"true {true.shape} and pred_mapped {pred.shape} differ in shape")
    ok = true >= 0
    if groups is not None:
        groups = np.asarray(groups)
        if groups.shape != true.shape:
            raise ValueError(f"groups {groups.shape} and true {true.shape} differ in shape")
        groups = groups[ok]
    true, pred = true[ok], pred[ok]
    if not true.size:
        raise ValueError("cluster_scores: no labelled items")
    if true.max() >= k or pred.min() < 0 or pred.max() >= k:
        raise ValueError(f"labels and predictions must lie in [0, {k}) for {k} class names")
    if not 0 < ci < 1:
        raise ValueError(f"ci must lie in (0, 1), got {ci}")
    cell = true * k + pred
    conf = np.bincount(cell, minlength=k * k).reshape(k, k)
    precision, sensitivity, f1, accuracy = _scores_from_confusion(conf)
    # Bootstrap: per-unit confusion counts (unit = nucleus or group), resampled unit counts @ units.
    unit = np.arange(len(true)) if groups is None else np.unique(groups, return_inverse=True)[1]
    n_units = int(unit.max()) + 1
    unit_conf = np.bincount(unit * k * k + cell, minlength=n_units * k * k).reshape(n_units, k * k)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_units, size=(n_boot, n_units)) + n_units * np.arange(n_boot)[:, None]
    weights = np.bincount(draws.ravel(), minlength=n_boot * n_units).reshape(n_boot, n_units)
    boot_conf = (weights @ unit_conf).reshape(n_boot, k, k)
    _, _, boot_f1, boot_acc = _scores_from_confusion(boot_conf)
    q = [(1 - ci) / 2, 1 - (1 - ci) / 2]
    return {
        "classes": list(class_names),
        "precision": precision.tolist(), "sensitivity": sensitivity.tolist(), "f1": f1.tolist(),
        "support": conf.sum(axis=1).tolist(),
        "accuracy": float(accuracy), "accuracy_ci": [float(v) for v in np.quantile(boot_acc, q)],
        "macro_f1": float(f1.mean()), "macro_f1_ci": [float(v) for v in np.quantile(boot_f1.mean(axis=1), q)],
        "confusion": conf.tolist(), "n": len(true), "n_boot": int(n_boot), "ci": float(ci),
        "resampled": "nuclei" if groups is None else f"groups ({n_units})",
    }


def scores_table(results: dict[str, dict[str, Any]], digits: int = 1) -> pd.DataFrame:
    """Seed 004's tables in one frame: one row per method (column ``method``); per-class precision / sensitivity / F1
    as "c1/c2/c3" in %, accuracy and macro F1 in % with their bootstrap CI (all results must share
    the class names and the CI level)."""
    if not results:
        raise ValueError("scores_table: no results")
    classes = next(iter(results.values()))["classes"]
    names = "/".join(classes)

    def pct(v: float) -> str:
        return f"{100 * v:.{digits}f}"

    level = next(iter(results.values()))["ci"]
    rows = []
    for method, res in results.items():
        if res["classes"] != classes or res["ci"] != level:
            raise ValueError(f"scores_table: {method} has classes {res['classes']} / CI {res['ci']}, expected "
                             f"{classes} / {level}")
        rows.append({
            "method": method,
            f"Precision (%) {names}": "/".join(pct(v) for v in res["precision"]),
            f"Sensitivity (%) {names}": "/".join(pct(v) for v in res["sensitivity"]),
            f"F1 (%) {names}": "/".join(pct(v) for v in res["f1"]),
            f"Accuracy (%) [{100 * level:g} % CI]": f"{pct(res['accuracy'])} [{pct(res['accuracy_ci'][0])}, "
                                                    f"{pct(res['accuracy_ci'][1])}]",
            f"Macro F1 (%) [{100 * level:g} % CI]": f"{pct(res['macro_f1'])} [{pct(res['macro_f1_ci'][0])}, "
                                                f"{pct(res['macro_f1_ci'][1])}]",
        })
    return pd.DataFrame(rows)
