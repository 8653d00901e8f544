"""slide_view_method rule: one method's predictions -> a heatmap (slides) or score-ordered montage (crop sets)
per test store and a QuPath GeoJSON per test slide (thin adapter over stainshift.slide_view /
stainshift.export)."""
import logging

from stainshift.export import export_store
from stainshift.slide_view import read_predictions, store_figure, tile_scores
from stainshift.joblog import job_logging, job_name

sm = snakemake  # noqa: F821  (injected by Snakemake)
job_logging(sm.log[0], job_name(sm.rule, sm.wildcards))
log = logging.getLogger("slide_view")

view = sm.params.view
for store, path, png in zip(sm.params.stores, sm.params.store_paths, sm.output.pngs):
    scores = tile_scores(read_predictions(sm.input.predictions, store), store, protocol=view["protocol"], seed=view["seed"])
    log.info("%s: %d tiles scored by %s", store, len(scores.table), scores.describe())
    store_figure(path, scores, png, names=view.get("class_names"))
    log.info("wrote %s", png)
paths = dict(zip(sm.params.stores, sm.params.store_paths))
for slide, out in zip(sm.params.slides, sm.output.geojson):
    written, n, scores = export_store(paths[slide], out, predictions=sm.input.predictions, protocol=view["protocol"],
                                      seed=view["seed"], names=view.get("class_names"))
    log.info("wrote %d tiles to %s (scores: %s)", n, written, scores.describe() if scores else "none")
