"""evaluate_method rule: every run of one method (predictions, embeddings, training summary) ->
cross_center.csv, variants.csv, batch_effect.csv, learning.csv and the method's figures
(thin adapter over stainshift.metrics.pipeline / stainshift.plots)."""
import logging

import pandas as pd

from stainshift import plots
from stainshift.embeddings import read_predictions
from stainshift.metrics import pipeline as pl
from stainshift.joblog import job_logging, job_name

sm = snakemake  # noqa: F821  (injected by Snakemake)
job_logging(sm.log[0], job_name(sm.rule, sm.wildcards))
log = logging.getLogger("evaluate")

method = sm.wildcards.method
cfg = pl.EvalConfig.from_config(sm.params.evaluate)
sources = sm.params.sources
runs = [(str(src), int(seed)) for src, seed in sm.params.runs]  # same order as the per-run inputs

# per-tile slide and patient come with the predictions (crop sets: the crop's source slide / patient)
preds = pl.normalize_predictions(pd.concat([read_predictions(p) for p in sm.input.predictions], ignore_index=True))
log.info("%s: %d prediction rows from %d runs, protocols %s, test centers %s", method, len(preds), len(runs),
         sorted(preds["protocol"].unique()), sorted(preds["test"].unique()))

cross = pl.cross_center(preds, method, cfg, sources)
pl.write_csv_atomic(cross, sm.output.cross_center)
pl.write_csv_atomic(pl.variant_robustness(preds, method, cfg, sources), sm.output.variants)
pl.write_csv_atomic(pl.restain_curve(preds, method, cfg, sources), sm.output.restain)
pl.write_csv_atomic(pl.learning_table(map(pl.read_train_summary, sm.input.summaries), method, sources),
                    sm.output.learning)

# Embeddings: per source, its seeds' raw test stores and their variants (as listed by the per-store
# manifests of rule predict_store), loaded one source at a time.
by_store = pd.concat([pd.read_csv(p, dtype=str) for p in sm.input.manifests], ignore_index=True)
manifests = {(src, seed): by_store[(by_store["run_source"] == src) & (by_store["seed"].astype(int) == seed)]
             for src, seed in runs}
tile_groups = preds[pl.is_raw(preds)]
batch = []
for src in dict.fromkeys(s for s, _ in runs):
    embs = {}
    for seed in [k for s, k in runs if s == src]:
        paths = pl.evaluation_embedding_paths(manifests[(src, seed)])
        embs[(src, seed)] = pl.attach_tile_groups(pl.load_embedding_set(paths, cfg.latent_max_tiles, cfg.seed),
                                                  tile_groups)
    log.info("%s/%s: embeddings of %d seeds", method, src, len(embs))
    batch.append(pl.batch_effect(embs, method, cfg, sources))
pl.write_csv_atomic(pd.concat(batch, ignore_index=True), sm.output.batch_effect)

plots.cross_center_heatmap(cross, sm.output.heatmap, title=f"{method}: cross-center table (rows: training source; "
                           f"mean over {preds['seed'].nunique()} seed(s))")
raw = preds[pl.is_raw(preds)]
plots.roc_curves(raw[~pl.mark_seen(raw)], sm.output.roc, class_names=sm.params.class_names,
                 title=f"{method}: ROC per test center, sources that never saw it (pooled over seeds)")
map_source, map_seed = runs[0]
emb = pl.load_embedding_set(pl.evaluation_embedding_paths(manifests[runs[0]]),
                            cfg.latent_max_tiles, cfg.seed)
f, m = pl.subsample_for_map(emb, cfg.map_max_points, cfg.seed)
plots.embedding_map(f, m["center"], m["label"], sm.output.embedding_map, kind=cfg.embedding_map, seed=cfg.seed,
                    class_names=sm.params.class_names,
                    title=f"{method}: {cfg.embedding_map.upper()} of raw test embeddings "
                          f"(encoder of source {map_source}, seed {map_seed})")
log.info("done")
