"""export_geojson rule: one test slide's tiles + one method's scores -> QuPath GeoJSON
(thin adapter over stainshift.export)."""
import logging
import sys

from stainshift.export import export_store

sm = snakemake  # noqa: F821  (injected by Snakemake)
logging.basicConfig(filename=str(sm.log[0]), level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
log = logging.getLogger("export_geojson")
sys.stderr = open(str(sm.log[0]), "a")

view = sm.params.view
path, n, scores = export_store(sm.input.store, sm.output.geojson, predictions=sm.input.predictions,
                               protocol=view["protocol"], seed=view["seed"], names=view.get("class_names"))
log.info("wrote %d tiles to %s (scores: %s)", n, path, scores.describe() if scores else "none")
