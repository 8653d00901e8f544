"""evaluate rule: one method's predictions + embeddings -> cross_center.csv, variants.csv,
batch_effect.csv and its figures (thin adapter over stainshift.metrics.pipeline / stainshift.plots)."""
import logging
import sys
from pathlib import Path

import pandas as pd

from stainshift.embeddings import read_predictions
from stainshift.metrics import pipeline as pl
from stainshift import plots

sm = snakemake  # noqa: F821  (injected by Snakemake)
logging.basicConfig(filename=str(sm.log[0]), level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
log = logging.getLogger("evaluate")
sys.stderr = open(str(sm.log[0]), "a")

method = sm.wildcards.method
cfg = pl.EvalConfig.from_config(sm.params.evaluate)

preds = read_predictions(sm.input.predictions)
# crop sets: resample source slides (the store's crop_groups attr), not whole stores
stores = {Path(p).name.removesuffix(".zarr"): p for p in sm.input.tiles}
preds = pl.with_tile_groups(preds, pl.crop_groups(stores))
log.info("%s: %d prediction rows, train centers %s, test centers %s", method, len(preds),
         sorted(preds["train"].unique()), sorted(preds["test"].unique()))

cross = pl.cross_center(preds, method, cfg)
pl.write_csv_atomic(cross, sm.output.cross_center)
var = pl.variant_robustness(preds, method, cfg)
pl.write_csv_atomic(var, sm.output.variants)

# Embeddings: the raw test stores and every variant store, as listed by the embed rule's manifest.
manifest = pd.read_csv(sm.input.manifest, dtype=str)
paths = pl.evaluation_embedding_paths(manifest, preds)
emb = pl.attach_tile_slides(pl.load_embedding_set(sorted(paths)), preds)
log.info("%s: %d embeddings from %d files", method, len(emb.meta), len(paths))
pl.write_csv_atomic(pl.batch_effect(emb, method, cfg), sm.output.batch_effect)

plots.cross_center_heatmap(cross.assign(in_center=cross["train"] == cross["test"]), sm.output.heatmap,
                           title=f"{method}: cross-center table (framed: in-center)")
plots.roc_curves(preds[pl.is_raw(preds)], sm.output.roc, title=f"{method}: ROC per test center (raw test tiles)")
f, m = pl.subsample_for_map(emb, cfg.map_max_points, cfg.seed)
plots.embedding_map(f, m["center"], m["label"], sm.output.embedding_map, kind=cfg.embedding_map, seed=cfg.seed,
                    title=f"{method}: {cfg.embedding_map.upper()} of raw test embeddings")
log.info("done")
