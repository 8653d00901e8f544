"""Snakemake adapter for the nuclei rules of seed 004 (workflow/rules/nuclei.smk; stainshift.nuclei.experiment)."""

import logging

import numpy as np
import pandas as pd
import torch

from stainshift.atomic import write_csv
from stainshift.joblog import job_logging, job_name
from stainshift.nuclei import experiment as ex

sm = snakemake  # noqa: F821
job_logging(sm.log[0], job_name(sm.rule, sm.wildcards))
log = logging.getLogger("stainshift.nuclei")
torch.set_num_threads(max(1, sm.threads))
cfg = sm.params.cfg


def progress(msg: str) -> None:
    log.info(msg)


if sm.rule == "nuclei_fields":
    if sm.wildcards.dataset == "synthetic":
        s = cfg["synthetic"]
        fields = ex.synthetic_fields(list(sm.params.centers), train_center=s.get("train_center"),
                                     n_train=int(s["fields"]["train"]), n_test=int(s["fields"]["test"]),
                                     size=int(s["size"]), mpp=float(s["mpp"]), seed=int(s["seed"]))
    else:
        h = cfg["hgsc"]
        fields = ex.hgsc_fields(h["path"], train_rows=float(h["train_rows"]),
                                restain_targets=list(h.get("restain_targets") or []))
    ex.write_fields(sm.output.fields, fields)
    log.info("%s: %d fields (%s), train center %s", sm.wildcards.dataset, len(fields),
             ", ".join(f"{c}/{s}" for c, s in sorted(set(zip(fields.centers, fields.splits)))), fields.train_center)

elif sm.rule == "nuclei_stain_transfer":
    from stainshift.stain.neural import save_stain_transfer, train_stain_transfer
    from stainshift.train import select_device

    st = sm.params.stain_transfer
    fields = ex.read_fields(sm.input.fields)
    tiles, labels = ex.stain_transfer_tiles(fields, tile=int(st["tile"]), n=int(st["tiles"]), seed=int(st["seed"]))
    weight = float(st["class_weight"])
    log.info("stain transfer to %s's style: %d tiles of %d px, tissue class (tumour nuclei present) share %.2f, "
             "class weight %g", fields.train_center, len(tiles), st["tile"], labels.mean(), weight)
    model, history = train_stain_transfer(
        tiles, labels if weight > 0 else None, epochs=int(st["epochs"]), batch_size=int(st["batch_size"]),
        class_weight=weight, width=float(st["width"]), seed=int(st["seed"]),
        device=select_device("auto"), log=progress)
    save_stain_transfer(model, sm.output.model, {"dataset": fields.dataset, "style": fields.train_center,
                                                 "fields": fields.where("train", fields.train_center)})
    write_csv(sm.output.history, pd.DataFrame(history), index=False)

elif sm.rule == "nuclei_normalize":
    from stainshift.nuclei.figures import transfer_montage

    fields = ex.read_fields(sm.input.fields)
    model = sm.input.get("model")
    normalized = {}
    for method, out in zip(sm.params.normalizations, sm.output.normalized):
        normalized[method] = ex.normalize_fields(fields, method, model_path=model)
        ex.write_fields(out, normalized[method])
        log.info("%s: fields under %s -> %s", fields.dataset, method, out)
    scores = ex.transfer_score_rows(fields, normalized)
    write_csv(sm.output.scores, scores, index=False)
    transfer_montage(fields, normalized, sm.output.montage)

elif sm.rule == "nuclei_segment":
    from stainshift.nuclei.segmentation import save_unet

    seg = cfg["segmentation"]
    fields = ex.read_fields(sm.input.fields)
    model, history = ex.train_segmenter(fields, seg, log_fn=progress)
    save_unet(model, sm.output.model, {"dataset": fields.dataset, "normalization": sm.wildcards.norm,
                                       "train_center": fields.train_center})
    write_csv(sm.output.history, pd.DataFrame(history), index=False)
    rows = ex.segmentation_rows(fields, model, patch=int(seg["patch"]))
    write_csv(sm.output.rows, rows, index=False)
    log.info("U-Net (%s) on %d test fields: mean Dice %.3f (threshold baseline %.3f)", sm.wildcards.norm,
             rows["field"].nunique(), rows.loc[rows.model == "unet", "dice"].mean(),
             rows.loc[rows.model == "threshold", "dice"].mean())

elif sm.rule == "nuclei_segment_summary":
    from stainshift.nuclei.figures import segmentation_figure

    rows = pd.concat([pd.read_csv(p) for p in sm.input.rows], ignore_index=True)
    by_domain = ex.segmentation_table(rows, n_boot=int(sm.params.bootstrap), seed=int(sm.params.seed))
    by_center = ex.segmentation_table(rows, by=("dataset", "normalization", "model", "center"),
                                      n_boot=int(sm.params.bootstrap), seed=int(sm.params.seed))
    write_csv(sm.output.table, pd.concat([by_domain, by_center], ignore_index=True), index=False)
    segmentation_figure([ex.read_fields(p) for p in sm.input.fields], list(sm.input.models), sm.output.figure,
                        patch=int(cfg["segmentation"]["patch"]))

elif sm.rule == "nuclei_crops":
    from stainshift.store import store_path, write_manifest, write_store

    fields = ex.read_fields(sm.input.fields)
    size = int(cfg["classes"]["crop"])
    for split, manifest, table in (("train", sm.output.train, sm.output.train_table),
                                   ("test", sm.output.test, sm.output.test_table)):
        out = store_path(manifest)
        crops, labels, rows = ex.class_crops(fields, split, size)
        attrs = {"kind": "nuclei", "dataset": fields.dataset, "split": split, "class_names": list(fields.class_names),
                 "normalization": fields.meta.get("normalization"), "crop_size": size,
                 "fields": sorted(set(rows["field"])) if len(rows) else [],
                 "coords": "nucleus centroid (x, y) in its field's pixels; field and center per crop in the csv beside"}
        coords = rows[["x", "y"]].round().to_numpy(np.int64) if len(rows) else np.zeros((0, 2), np.int64)
        ones = np.ones(len(crops), np.float32)
        write_store(out, crops, coords=coords, tissue_fraction=ones, label=labels, label_fraction=ones,
                    attrs=attrs, codec="zstd")
        write_csv(table, rows, index=False)
        write_manifest(out)
        log.info("%s %s: %d nucleus crops of %d px, classes %s", fields.dataset, split, len(crops), size,
                 np.bincount(labels[labels >= 0], minlength=len(fields.class_names)).tolist())

elif sm.rule == "nuclei_classes":
    from stainshift.nuclei.classes import run_classes
    from stainshift.store import store_path

    encoder = list(sm.input.get("encoder") or [])  # [] = an untrained ResNet-18 (classes.encoder: random)
    run_classes(train_store=store_path(sm.input.train), test_store=store_path(sm.input.test),
                encoder_path=encoder[0] if encoder else None, cfg=cfg["classes"], out_scores=sm.output.scores,
                out_assignments=sm.output.assignments, out_samples=sm.output.samples, out_model=sm.output.model,
                log_fn=progress)
else:  # pragma: no cover
    raise ValueError(f"nuclei.py: unknown rule {sm.rule}")
