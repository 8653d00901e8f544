"""Nuclei segmentation metrics: pixel-level (seed 004 §3.2) and object-level (AJI, PQ, object Dice).

Pixel level (seed 004 evaluates "pixel-wise sensitivity, specificity, Dice score and Jaccard
similarity"; its appendix with the definitions is not in the seed text, these are the standard
ones). From the confusion counts TP, FP, FN, TN of predicted vs true nucleus pixels:

- sensitivity = TP / (TP + FN), specificity = TN / (TN + FP),
- Dice = 2·TP / (2·TP + FP + FN), Jaccard = TP / (TP + FP + FN).

An empty denominator (0/0: nothing to find, or nothing to get wrong) scores 1.0 — e.g. Dice of
an empty prediction on an empty truth is 1 — so no NaN and no warning. Scores over several images
are *pooled*: sum the counts (:func:`sum_counts`), then score.

Object level, from instance label images (0 = background, any positive ids, not necessarily
consecutive), all from one sparse contingency table of (true id, pred id) pixel pairs
(``np.unique`` over pair codes of the foreground pixels; no per-object loop over the image):

- PQ (Kirillov et al. 2019, "Panoptic segmentation"; nuclei: Graham et al. 2019, HoVer-Net):
  a true and a predicted object match when IoU > 0.5 (matches are then unique);
  DQ = TP / (TP + FP/2 + FN/2), SQ = Σ IoU(matches) / TP, PQ = DQ·SQ. Equal to MONAI's
  ``compute_panoptic_quality`` (up to its 1e-6 smoothing; checked in the tests), which is not
  used here because it builds one full-image mask per instance (≈ 12 GB for a 1500² field with
  1300 nuclei) and loops over objects.
- AJI (Kumar et al. 2017, IEEE TMI 36(7)): for each true object G_i the predicted object S_j with
  the highest IoU (ties: the smaller id) adds |G_i ∩ S_j| to C and |G_i ∪ S_j| to U; a true
  object overlapping no prediction adds |G_i| to U; every predicted object never chosen adds |S_k|
  to U; AJI = C / U. A prediction may be chosen by several true objects (the original definition,
  not AJI+ of Graham et al.). No library we use implements AJI, so it is written here.
- Object Dice (Sirinukunwattana et al. 2017, GlaS challenge, MedIA 35):
  ½·[Σ_i γ_i·Dice(G_i, S*(G_i)) + Σ_j σ_j·Dice(G*(S_j), S_j)], γ_i = |G_i| / Σ|G|,
  σ_j = |S_j| / Σ|S|, where S*(G_i) is the prediction with the largest overlap with G_i (Dice 0
  if none; ties: the smaller id) and G*(S_j) likewise.

Empty cases: both images without objects score 1 everywhere; objects on one side only score 0.
:func:`object_counts` returns sums that pool over images like the pixel counts.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

__all__ = [
    "OBJECT_SCORES",
    "PIXEL_SCORES",
    "object_counts",
    "object_scores",
    "object_scores_from_counts",
    "pixel_counts",
    "pixel_scores",
    "sum_counts",
]

PIXEL_SCORES = ("sensitivity", "specificity", "dice", "jaccard")
OBJECT_SCORES = ("aji", "pq", "dq", "sq", "object_dice")


def _ratio(num: float, den: float) -> float:
    """num / den, with 0/0 := 1.0 (see the module docstring)."""
    return 1.0 if den == 0 else float(num) / float(den)


def pixel_counts(pred_fg: np.ndarray, true_fg: np.ndarray) -> dict[str, int]:
    """Confusion counts ``tp, fp, fn, tn`` of two binary masks (nonzero = nucleus)."""
    pred = np.asarray(pred_fg) != 0
    true = np.asarray(true_fg) != 0
    if pred.shape != true.shape:
        raise ValueError(f"pixel_counts: shapes differ, pred {pred.shape} vs true {true.shape}")
    tp = int(np.count_nonzero(pred & true))
    n_pred, n_true = int(np.count_nonzero(pred)), int(np.count_nonzero(true))
    fp, fn = n_pred - tp, n_true - tp
    return {"tp": tp, "fp": fp, "fn": fn, "tn": int(pred.size) - tp - fp - fn}


def pixel_scores(counts: Mapping[str, int]) -> dict[str, float]:
    """Sensitivity, specificity, Dice, Jaccard of confusion counts (formulas: module docstring)."""
    tp, fp, fn, tn = (int(counts[k]) for k in ("tp", "fp", "fn", "tn"))
    return {"sensitivity": _ratio(tp, tp + fn), "specificity": _ratio(tn, tn + fp),
            "dice": _ratio(2 * tp, 2 * tp + fp + fn), "jaccard": _ratio(tp, tp + fp + fn)}


def sum_counts(counts: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """Key-wise sum of count dicts (pooling over images)."""
    out: dict[str, float] = {}
    for c in counts:
        for k, v in c.items():
            out[k] = out.get(k, 0) + v
    return out


def _contingency(pred_inst: np.ndarray, true_inst: np.ndarray):
    """Areas of every true / pred object and the overlapping (true, pred) pairs with their intersections.

    Returns ``(area_t, area_p, t, p, inter)``: ``area_t`` (n_true,), ``area_p`` (n_pred,); pair
    arrays index objects 0..n-1 in increasing label order.
    """
    pred = np.asarray(pred_inst)
    true = np.asarray(true_inst)
    if pred.shape != true.shape:
        raise ValueError(f"object metrics: shapes differ, pred {pred.shape} vs true {true.shape}")
    for name, arr in (("pred", pred), ("true", true)):
        if not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"object metrics: {name} must be an integer label image, got {arr.dtype}")
        if arr.size and arr.min() < 0:
            raise ValueError(f"object metrics: {name} has negative labels")
    # consecutive indices: 0 = background, 1..n = objects
    t_ids, t_idx = np.unique(true.ravel(), return_inverse=True)
    p_ids, p_idx = np.unique(pred.ravel(), return_inverse=True)
    if t_ids[0] != 0:
        t_idx = t_idx + 1
    if p_ids[0] != 0:
        p_idx = p_idx + 1
    n_t = int(t_idx.max(initial=0))
    n_p = int(p_idx.max(initial=0))
    area_t = np.bincount(t_idx, minlength=n_t + 1)[1:].astype(np.int64)
    area_p = np.bincount(p_idx, minlength=n_p + 1)[1:].astype(np.int64)
    both = (t_idx > 0) & (p_idx > 0)
    codes = t_idx[both].astype(np.int64) * (n_p + 1) + p_idx[both]
    pair, inter = np.unique(codes, return_counts=True)
    return area_t, area_p, pair // (n_p + 1) - 1, pair % (n_p + 1) - 1, inter.astype(np.int64)


def _best(owner: np.ndarray, other: np.ndarray, value: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each ``owner`` with any pair: the pair index maximising ``value`` (ties: smaller ``other``)."""
    order = np.lexsort((other, -value, owner))
    owners = owner[order]
    first = np.ones(len(order), bool)
    first[1:] = owners[1:] != owners[:-1]
    return owners[first], order[first]


def object_counts(pred_inst: np.ndarray, true_inst: np.ndarray) -> dict[str, float]:
    """Poolable sums behind :func:`object_scores`: matched pairs ``tp`` (IoU > 0.5), ``fp``, ``fn``,
    ``iou_sum``; AJI ``aji_inter`` (C), ``aji_union`` (U); object Dice ``odice_true`` (Σ|G_i|·Dice_i),
    ``area_true`` (Σ|G|), ``odice_pred``, ``area_pred``; ``n_true``, ``n_pred``."""
    area_t, area_p, t, p, inter = _contingency(pred_inst, true_inst)
    n_t, n_p = len(area_t), len(area_p)
    union = area_t[t] + area_p[p] - inter
    iou = inter / np.maximum(union, 1)
    dice = 2.0 * inter / (area_t[t] + area_p[p])
    # PQ: IoU > 0.5 makes every match unique (two objects cannot both cover > half of the union)
    matched = iou > 0.5
    tp = int(np.count_nonzero(matched))
    # AJI: each true object takes its highest-IoU prediction
    owners, pick = _best(t, p, iou)
    aji_inter = int(inter[pick].sum())
    unmatched_true = np.ones(n_t, bool)
    unmatched_true[owners] = False
    used_pred = np.zeros(n_p, bool)
    used_pred[p[pick]] = True
    aji_union = int(union[pick].sum() + area_t[unmatched_true].sum() + area_p[~used_pred].sum())
    # object Dice: each object's partner is the largest overlap on the other side
    _, pick_t = _best(t, p, inter.astype(float))
    _, pick_p = _best(p, t, inter.astype(float))
    return {"tp": tp, "fp": n_p - tp, "fn": n_t - tp, "iou_sum": float(iou[matched].sum()),
            "aji_inter": aji_inter, "aji_union": aji_union,
            "odice_true": float((area_t[t[pick_t]] * dice[pick_t]).sum()), "area_true": int(area_t.sum()),
            "odice_pred": float((area_p[p[pick_p]] * dice[pick_p]).sum()), "area_pred": int(area_p.sum()),
            "n_true": n_t, "n_pred": n_p}


def object_scores_from_counts(counts: Mapping[str, float]) -> dict[str, float]:
    """AJI, PQ, DQ, SQ, object Dice from (pooled) :func:`object_counts` (formulas: module docstring)."""
    tp, fp, fn = counts["tp"], counts["fp"], counts["fn"]
    if counts["n_true"] == 0 and counts["n_pred"] == 0:
        return dict.fromkeys(OBJECT_SCORES, 1.0)
    dq = tp / (tp + 0.5 * fp + 0.5 * fn)
    sq = counts["iou_sum"] / tp if tp else 0.0
    if counts["area_true"] == 0 or counts["area_pred"] == 0:
        odice = 0.0
    else:
        odice = 0.5 * (counts["odice_true"] / counts["area_true"] + counts["odice_pred"] / counts["area_pred"])
    return {"aji": counts["aji_inter"] / counts["aji_union"], "pq": dq * sq, "dq": dq, "sq": sq,
            "object_dice": odice}


def object_scores(pred_inst: np.ndarray, true_inst: np.ndarray) -> dict[str, float]:
    """AJI, PQ, DQ, SQ and object Dice of one predicted vs one true instance label image."""
    return object_scores_from_counts(object_counts(pred_inst, true_inst))
