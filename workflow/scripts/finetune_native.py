"""Rule `finetune_native`: one run's own seed downstream, beside the common probe.

- ``end_to_end`` (seed 000: baseline, stain_embed, stain_embed_c): the classifier the method trained
  during pretraining (encoder + its head), unchanged;
- ``fusion`` (seed 002, methods in ``finetune.fusion``): full fine-tuning of a classifier on seed
  002's fusion encoder (the pretrained encoder frozen as E_g beside a trainable E_s, Eqs. 7–9),
  best epoch on the source's validation stores (settings: ``finetune.full``).
For binary tasks a decision threshold on P(class 1) is chosen on the validation stores. Writes
head_native.pt (a full classifier on images) and finetune_native.csv.
"""

import logging
import os
from pathlib import Path

import pandas as pd
import torch

from stainshift.methods.fusion import build_fusion_encoder
from stainshift.models import Classifier
from stainshift.protocol import join_centers
from stainshift.store import PatchStore
from stainshift.train import (choose_threshold, encode_images, finetune_classifier, load, load_encoder,
                              load_native_classifier, save_head, select_device, seed_everything, stack_tiles)
from stainshift.metrics.cross_center import balanced_accuracy

smk = snakemake  # type: ignore[name-defined]  # noqa: F821
logging.basicConfig(filename=smk.log[0], filemode="w", level=logging.INFO,
                    format="%(asctime)s %(levelname)s %(name)s: %(message)s")
log = logging.getLogger("stainshift.finetune")
torch.set_num_threads(max(1, smk.threads))
meta = dict(smk.params.meta)
downstream = smk.params.downstream
cfg = dict(smk.params.cfg)
full_cfg = {**cfg.get("full", {}), "seed": meta["seed"], "select": cfg.get("select", "balanced_accuracy"),
            "class_weight": cfg.get("class_weight")}
device = select_device(cfg.get("device", "auto"))
train_stores, val_stores = list(smk.input.train), list(smk.input.val)
num_classes = int(load(smk.input.encoder)["num_classes"])
rows: list[dict] = []
if downstream == "end_to_end":
    model = load_native_classifier(smk.input.encoder, device)
elif downstream == "fusion":
    seed_everything(int(meta["seed"]))
    fused = build_fusion_encoder(load_encoder(smk.input.encoder, device), init=str(cfg.get("fusion_init", "random")),
                                 seed=int(meta["seed"]))
    model, rows = finetune_classifier(Classifier(fused, num_classes), train_stores, val_stores, full_cfg, device)
else:
    raise ValueError(f"finetune_native: unknown downstream {downstream!r} for method {meta['method']}")
vimg, vlab = stack_tiles(val_stores) if val_stores else stack_tiles(train_stores)
probs = torch.softmax(torch.as_tensor(encode_images(model, vimg, device)), 1).numpy()
val_bacc = balanced_accuracy(vlab, probs.argmax(1)) if len(vlab) else float("nan")
threshold = choose_threshold(vlab, probs[:, 1]) if num_classes == 2 else float("nan")
centers = join_centers(PatchStore.open(p).attrs.get("center", "") for p in train_stores + val_stores)
save_head(smk.output.head, model.cpu(), mode="full", num_classes=num_classes, protocol="native", downstream=downstream,
          **meta, head_centers=centers, val_metric=float(val_bacc), threshold=threshold,
          train_stores=train_stores, val_stores=val_stores)
log.info("%s / %s / seed %s: native (%s), val balanced accuracy %.4f, threshold %.3f", meta["method"], meta["source"],
         meta["seed"], downstream, val_bacc, threshold)
rows = rows or [{"epoch": 0, "val_metric": val_bacc}]
out = Path(smk.output.metrics)
tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
pd.DataFrame([{"protocol": "native", "downstream": downstream, **r} for r in rows]).to_csv(tmp, index=False)
os.replace(tmp, out)
