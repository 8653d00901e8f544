"""summarize rule: every method's tables side by side -> {R}/metrics/summary.csv (+ paired tests
against the reference method) and the accuracy-across-variants figure."""
import logging
import sys

import pandas as pd

from stainshift.embeddings import read_predictions
from stainshift.metrics import pipeline as pl
from stainshift import plots

sm = snakemake  # noqa: F821
logging.basicConfig(filename=str(sm.log[0]), level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
sys.stderr = open(str(sm.log[0]), "a")
cfg = pl.EvalConfig.from_config(sm.params.evaluate)

tables = [pd.read_csv(p, dtype={"train": str, "test": str}) for p in
          list(sm.input.cross_center) + list(sm.input.variants) + list(sm.input.batch_effect)]
preds = {m: read_predictions(p) for m, p in zip(sm.params.methods, sm.input.predictions)}
paired = pl.compare_methods(preds, cfg)
summary = pd.concat(tables + [paired], ignore_index=True)[pl.COLUMNS]
pl.write_csv_atomic(summary, sm.output.summary)
variants = summary[summary["kind"] == "variant"]
plots.variant_accuracy_plot(variants, sm.output.variant_plot)
logging.info("summary: %d rows, %d methods", len(summary), len(preds))
