"""Rule `finetune`: one classifier head per train center (each center alone and "all" pooled).

linear mode: a linear probe on the frozen embeddings of the center's training stores (from the
`embed` rule); full mode: encoder + head fine-tuned on the tiles. The best epoch is chosen on the
validation stores (split `finetune.val_split`) of the same center(s). Writes
{R}/models/{method}/{train_center}/head.pt and finetune_metrics.csv (every epoch of every center).
"""

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from stainshift.embeddings import RAW, read_embeddings
from stainshift.train import (finetune_full, finetune_linear, load_encoder, save_head, select_device)

smk = snakemake  # type: ignore[name-defined]  # noqa: F821
logging.basicConfig(filename=smk.log[0], filemode="w", level=logging.INFO,
                    format="%(asctime)s %(levelname)s %(name)s: %(message)s")
log = logging.getLogger("stainshift.finetune")
torch.set_num_threads(max(1, smk.threads))
cfg = dict(smk.params.cfg)
mode = cfg.get("mode", "linear")
val_split = cfg.get("val_split", "val")
method = smk.wildcards.method
manifest = pd.read_csv(smk.input.embeddings, dtype={"store": str, "center": str, "split": str})
raw = manifest[manifest["variant_method"] == RAW]


def rows_for(center: str, split: str) -> pd.DataFrame:
    sel = raw[raw["split"] == split]
    return sel if center == "all" else sel[sel["center"] == center]


def stack(rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    feats, labels = [], []
    for path in rows["path"]:
        e = read_embeddings(path)
        feats.append(e["features"])
        labels.append(e["label"])
    if not feats:
        return np.zeros((0, 1), np.float32), np.zeros(0, np.int64)
    return np.concatenate(feats), np.concatenate(labels)


all_train_x, all_train_y = stack(raw[raw["split"] == "train"])
num_classes = int(cfg.get("num_classes") or max(2, int(all_train_y.max()) + 1 if (all_train_y >= 0).any() else 2))
device = select_device(cfg.get("device", "auto"))
encoder = load_encoder(smk.input.encoder, device) if mode == "full" else None
metric_rows = []
for center, head_path in zip(smk.params.centers, smk.output.heads):
    train_rows, val_rows = rows_for(center, "train"), rows_for(center, val_split)
    if train_rows.empty:
        raise ValueError(f"finetune: no training stores for train center '{center}' (key finetune.train_centers)")
    if mode == "linear":
        tx, ty = stack(train_rows)
        vx, vy = stack(val_rows)
        if vx.shape[1] != tx.shape[1]:
            vx = np.zeros((0, tx.shape[1]), np.float32)
        module, rows = finetune_linear(tx, ty, vx, vy, num_classes, cfg)
    else:
        module, rows = finetune_full(encoder, list(train_rows["source"]), list(val_rows["source"]), num_classes, cfg, device)
    best = max(rows, key=lambda r: (r["val_metric"] if np.isfinite(r["val_metric"]) else -np.inf))
    save_head(head_path, module, mode=mode, num_classes=num_classes, method=method, train_center=center,
              best_epoch=int(best["epoch"]), val_metric=float(best["val_metric"]), select=cfg.get("select", "balanced_accuracy"),
              train_stores=list(train_rows["store"]), val_stores=list(val_rows["store"]))
    log.info("%s / %s: %s head, best epoch %d, val %s = %.4f (%d train stores, %d val stores)", method, center, mode,
             best["epoch"], cfg.get("select", "balanced_accuracy"), best["val_metric"], len(train_rows), len(val_rows))
    metric_rows += [{"train_center": center, "mode": mode, **r} for r in rows]
out = Path(smk.output.metrics)
tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
pd.DataFrame(metric_rows).to_csv(tmp, index=False)
os.replace(tmp, out)
