"""Rule `finetune`: the common linear probe of one run (every method) on its source's stores.

A linear probe on the frozen embeddings of the source's training stores (from `embed`); the best
epoch is chosen on the source's validation stores, and for binary tasks a decision threshold on
P(class 1) too (stainshift.train.choose_threshold). Writes head_probe.pt and finetune_probe.csv.
"""

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from stainshift.embeddings import RAW, read_embeddings
from stainshift.protocol import join_centers
from stainshift.train import choose_threshold, finetune_linear, probabilities, save_head

smk = snakemake  # type: ignore[name-defined]  # noqa: F821
logging.basicConfig(filename=smk.log[0], filemode="w", level=logging.INFO,
                    format="%(asctime)s %(levelname)s %(name)s: %(message)s")
log = logging.getLogger("stainshift.finetune")
torch.set_num_threads(max(1, smk.threads))
meta = dict(smk.params.meta)
cfg = {**smk.params.cfg, "seed": meta["seed"]}
manifest = pd.read_csv(smk.input.manifest, dtype={"store": str, "center": str, "split": str})
raw = manifest[manifest["variant_method"] == RAW].set_index("store")


def stack(stores: list[str]) -> tuple[np.ndarray, np.ndarray]:
    missing = [s for s in stores if s not in raw.index]
    if missing:
        raise ValueError(f"{smk.input.manifest}: no embeddings of stores {missing}")
    parts = [read_embeddings(raw.loc[s, "path"]) for s in stores]
    if not parts:
        return np.zeros((0, 1), np.float32), np.zeros(0, np.int64)
    return np.concatenate([e["features"] for e in parts]), np.concatenate([e["label"] for e in parts])


train_stores, val_stores = list(smk.params.train_stores), list(smk.params.val_stores)
if not train_stores:
    raise ValueError(f"finetune: source '{meta['source']}' has no training stores")
tx, ty = stack(train_stores)
vx, vy = stack(val_stores) if val_stores else (np.zeros((0, tx.shape[1]), np.float32), np.zeros(0, np.int64))
labelled = ty[ty >= 0]
if labelled.size == 0:
    raise ValueError(f"finetune: the training stores of source '{meta['source']}' ({train_stores}) have no labelled tiles")
num_classes = int(cfg.get("num_classes") or max(2, int(labelled.max()) + 1))
module, rows = finetune_linear(tx, ty, vx, vy, num_classes, cfg)
best = max(rows, key=lambda r: (r["val_metric"] if np.isfinite(r["val_metric"]) else -np.inf))
threshold = float("nan")
if num_classes == 2:
    sel_x, sel_y = (vx, vy) if (vy >= 0).any() else (tx, ty)
    threshold = choose_threshold(sel_y, probabilities(module, sel_x, torch.device("cpu"), from_features=True)[:, 1])
centers = join_centers(raw.loc[train_stores + val_stores, "center"])
save_head(smk.output.head, module, mode="linear", num_classes=num_classes, protocol="probe", **meta,
          head_centers=centers, best_epoch=int(best["epoch"]), val_metric=float(best["val_metric"]),
          select=cfg.get("select", "balanced_accuracy"), threshold=threshold,
          train_stores=train_stores, val_stores=val_stores)
log.info("%s / %s / seed %s: probe, best epoch %d, val %s = %.4f, threshold %.3f (%d train stores, %d val stores)",
         meta["method"], meta["source"], meta["seed"], best["epoch"], cfg.get("select", "balanced_accuracy"),
         best["val_metric"], threshold, len(train_stores), len(val_stores))
out = Path(smk.output.metrics)
tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
pd.DataFrame([{"protocol": "probe", **r} for r in rows]).to_csv(tmp, index=False)
os.replace(tmp, out)
