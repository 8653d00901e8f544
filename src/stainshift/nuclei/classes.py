"""Seed 004 Sec. 3.3 / 4.2 as a workflow step: unsupervised nucleus classes from crop stores.

The InfoGAN (:mod:`stainshift.nuclei.infogan`) and both k-means baselines (on pixels; on the
features of a stainshift encoder) learn from the **train** crops without labels and assign the
**test** crops; each assignment is matched to the ground-truth classes by the Hungarian algorithm
on the test crops (clustering accuracy, as seed 004 reports it) and scored per class
(:func:`stainshift.nuclei.cluster.cluster_scores`).
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from stainshift.atomic import write_csv

log = logging.getLogger(__name__)


def paired_accuracy_difference(correct: dict[str, np.ndarray], reference: str, *, n_boot: int, seed: int,
                               ci: float = 0.95) -> dict[str, dict[str, float]]:
    """acc(reference) − acc(m) for every other method m, with a paired percentile bootstrap CI: each
    replicate resamples the test nuclei once (``numpy.random.default_rng(seed)``) and scores every
    method on the same sample (matching held fixed)."""
    ref = np.asarray(correct[reference], float)
    n = len(ref)
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n)) if n_boot and n else None
    out = {}
    for m, c in correct.items():
        if m == reference:
            continue
        d = ref - np.asarray(c, float)
        rec = {"diff": float(d.mean()) if n else float("nan"), "diff_ci_low": float("nan"),
               "diff_ci_high": float("nan")}
        if idx is not None:
            boots = d[idx].mean(axis=1)
            rec["diff_ci_low"], rec["diff_ci_high"] = (float(v) for v in np.percentile(
                boots, [50 * (1 - ci), 50 * (1 + ci)]))
        out[m] = rec
    return out


def run_classes(*, train_store: str | os.PathLike, test_store: str | os.PathLike, encoder_path: str | None,
                cfg: dict[str, Any], out_scores: str | os.PathLike, out_assignments: str | os.PathLike,
                out_samples: str | os.PathLike, out_model: str | os.PathLike,
                log_fn: Callable[[str], None] | None = None) -> pd.DataFrame:
    """Train the InfoGAN, run the baselines, write the scores table, per-crop assignments, samples figure."""
    import torch

    from stainshift.models import build_encoder
    from stainshift.nuclei.cluster import (
        cluster_scores,
        encoder_features,
        hungarian_match,
        kmeans_fit_predict,
        scores_table,
    )
    from stainshift.nuclei.figures import class_samples_figure
    from stainshift.nuclei.infogan import (
        predict_codes,
        sample_grid,
        save_infogan,
        train_infogan,
    )
    from stainshift.store import PatchStore
    from stainshift.train import load_encoder, select_device

    train, test = PatchStore.open(train_store), PatchStore.open(test_store)
    x_train, x_test = train.read(np.arange(len(train))), test.read(np.arange(len(test)))
    y_test = np.asarray(test.label)
    class_names = list(test.attrs.get("class_names") or [])
    known = y_test >= 0
    if len(x_train) < 2 or not known.any():
        raise ValueError(f"{train_store} / {test_store}: too few nucleus crops ({len(x_train)} train, "
                         f"{int(known.sum())} labelled test) for the nucleus-class step")
    k, seed = int(cfg["codes"]), int(cfg["seed"])
    n_classes = len(class_names) or int(y_test.max()) + 1
    assigned: dict[str, np.ndarray] = {}

    t0 = time.perf_counter()
    model, history = train_infogan(x_train, n_codes=k, iterations=int(cfg["iterations"]),
                                   batch_size=int(cfg["batch_size"]), width=int(cfg["width"]), seed=seed, log=log_fn,
                                   device=select_device("auto"))
    save_infogan(model, out_model)
    assigned["infogan"], _ = predict_codes(model, x_test)
    log.info("InfoGAN: %d iterations on %d crops in %.1f s", cfg["iterations"], len(x_train), time.perf_counter() - t0)

    assigned["kmeans_pixels"] = kmeans_fit_predict(x_train.reshape(len(x_train), -1).astype(np.float32),
                                                   x_test.reshape(len(x_test), -1).astype(np.float32), k, seed)
    if encoder_path:
        encoder, enc_name = load_encoder(encoder_path), f"kmeans_features ({encoder_path})"
    else:
        torch.manual_seed(seed)
        encoder, enc_name = build_encoder("resnet18").eval(), "kmeans_features (untrained ResNet-18)"
    f_train, f_test = encoder_features(encoder, x_train), encoder_features(encoder, x_test)
    assigned["kmeans_features"] = kmeans_fit_predict(f_train, f_test, k, seed)

    results, rows = {}, {"index": np.flatnonzero(known), "label": y_test[known]}
    for name, pred in assigned.items():
        mapping = hungarian_match(pred[known], y_test[known], k, n_classes)
        mapped = np.array([mapping[int(c)] for c in pred[known]])
        results[name] = cluster_scores(y_test[known], mapped, class_names, n_boot=int(cfg["bootstrap"]), seed=seed)
        rows[f"{name}_cluster"], rows[f"{name}_class"] = pred[known], mapped
    table = scores_table(results)
    table["accuracy"] = [results[m]["accuracy"] for m in table["method"]]
    correct = {m: rows[f"{m}_class"] == rows["label"] for m in assigned}
    diff = paired_accuracy_difference(correct, "infogan", n_boot=int(cfg["bootstrap"]), seed=seed)
    for col, name in (("diff", "infogan_minus_acc"), ("diff_ci_low", "infogan_minus_acc_ci_low"),
                      ("diff_ci_high", "infogan_minus_acc_ci_high")):
        table[name] = [diff.get(m, {}).get(col, float("nan")) for m in table["method"]]
    table.insert(0, "n_test_crops", int(known.sum()))
    table.insert(0, "n_train_crops", len(x_train))
    table["encoder"] = [enc_name if m == "kmeans_features" else "" for m in table["method"]]
    write_csv(out_scores, table, index=False)
    write_csv(out_assignments, pd.DataFrame(rows), index=False)

    real = {name: x_test[y_test == c][:6] for c, name in enumerate(class_names)}
    code_names = []
    infogan_map = hungarian_match(assigned["infogan"][known], y_test[known], k, n_classes)
    for c in range(k):
        cls = infogan_map.get(c)
        code_names.append(f"code {c}" + (f"\n→ {class_names[cls]}" if cls is not None and cls < len(class_names) else ""))
    class_samples_figure(sample_grid(model, 6, seed=seed), real, out_samples, code_names=code_names,
                         iterations=int(cfg["iterations"]))
    return table
