"""Rule `finetune_run`: one run's heads — the common linear probe and, where the method has one, its
own seed downstream (stainshift.train.finetune), chosen on the source's val stores. Writes heads.pt and
finetune.csv; rule `predict_store` scores the test stores with them."""

import logging

import pandas as pd
import torch

from stainshift.atomic import write_csv
from stainshift.train.finetune import fit_native, fit_probe, save_heads
from stainshift.train import load, select_device
from stainshift.joblog import job_logging, job_name

smk = snakemake  # type: ignore[name-defined]  # noqa: F821
job_logging(smk.log[0], job_name(smk.rule, smk.wildcards))
log = logging.getLogger("stainshift.train.finetune")
torch.set_num_threads(max(1, smk.threads))
meta = dict(smk.params.meta)
cfg = {**smk.params.cfg, "seed": meta["seed"]}
device = select_device(cfg.get("device", "auto"))
manifest = pd.read_csv(smk.input.manifest, dtype={"store": str, "center": str, "split": str, "variant_target": str})
train_ids, val_ids = list(smk.params.train_stores), list(smk.params.val_stores)
train_paths, val_paths = list(smk.params.train_paths), list(smk.params.val_paths)
head_meta = {**meta, "head_centers": meta["centers"], "train_stores": train_paths, "val_stores": val_paths}

external = "external" in load(smk.input.encoder)  # a frozen external encoder learnt from none of our centers
probe, rows = fit_probe(manifest, train_ids, val_ids, cfg)
heads = {"probe": {**probe, **head_meta, "protocol": "probe", "encoder_centers": "" if external else meta["centers"]}}
log.info("%s / %s / seed %s: probe, best epoch %d, val %s = %.4f, threshold %.3f", meta["method"], meta["source"],
         meta["seed"], probe["best_epoch"], probe["select"], probe["val_metric"], probe["threshold"])
table = [{"protocol": "probe", **r} for r in rows]
if smk.params.downstream:
    native, rows = fit_native(smk.params.downstream, smk.input.encoder, train_paths, val_paths,
                              cfg, device, seed=int(meta["seed"]))
    heads["native"] = {**native, **head_meta, "protocol": "native"}
    log.info("native (%s): val balanced accuracy %.4f, threshold %.3f", smk.params.downstream, native["val_metric"],
             native["threshold"])
    table += [{"protocol": "native", "downstream": smk.params.downstream, **r} for r in rows]
save_heads(smk.output.heads, heads)
write_csv(smk.output.metrics, pd.DataFrame(table), index=False)
