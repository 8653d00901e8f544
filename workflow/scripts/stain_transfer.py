"""Rule `train_stain_transfer`: seed 004's stain-transfer CNN for one `neural` normalization target, trained
on tiles of the target's own store (stainshift.stain.targets.style_tiles, stainshift.stain.neural)."""

import logging

import pandas as pd
import torch

from stainshift.atomic import write_csv
from stainshift.joblog import job_logging, job_name
from stainshift.stain.neural import save_stain_transfer, train_stain_transfer
from stainshift.stain.targets import read_targets, style_tiles
from stainshift.train import select_device

sm = snakemake  # noqa: F821
job_logging(sm.log[0], job_name(sm.rule, sm.wildcards))
log = logging.getLogger("stainshift.stain_transfer")
torch.set_num_threads(max(1, sm.threads))
cfg = sm.params.cfg
entry = {t["id"]: t for t in read_targets(sm.input.targets)}[sm.wildcards.target]
tiles, labels = style_tiles(entry, n=int(cfg["tiles"]), tile=int(cfg["tile"]), seed=int(cfg["seed"]))
weight = float(cfg["class_weight"])
log.info("target %s (%s): %d style tiles of %d px from %s; class term %s", entry["id"], entry.get("center"),
         len(tiles), tiles.shape[1], entry["path"],
         f"on (tile labels, weight {weight:g})" if labels is not None and weight > 0 else "off (no tile labels or weight 0)")
model, history = train_stain_transfer(tiles, labels if weight > 0 else None, epochs=int(cfg["epochs"]),
                                      batch_size=int(cfg["batch_size"]), class_weight=weight,
                                      width=float(cfg["width"]), seed=int(cfg["seed"]),
                                      device=select_device("auto"), log=log.info)
save_stain_transfer(model, sm.output.model, {"target": entry})
write_csv(sm.output.history, pd.DataFrame(history), index=False)
