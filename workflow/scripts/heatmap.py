"""heatmap rule: one method's predictions of one test store -> its slide heatmap or crop montage
(thin adapter over stainshift.slide_view)."""
import logging
import sys

from stainshift.slide_view import read_predictions, store_figure, tile_scores

sm = snakemake  # noqa: F821  (injected by Snakemake)
logging.basicConfig(filename=str(sm.log[0]), level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
log = logging.getLogger("heatmap")
sys.stderr = open(str(sm.log[0]), "a")

view = sm.params.view
store = sm.wildcards.store
scores = tile_scores(read_predictions(sm.input.predictions, store), store, protocol=view["protocol"], seed=view["seed"])
log.info("%s: %d tiles scored by %s", store, len(scores.table), scores.describe())
store_figure(sm.input.store, scores, sm.output.png, names=view.get("class_names"))
log.info("wrote %s", sm.output.png)
