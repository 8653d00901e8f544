"""summarize rule: every method's tables side by side -> {R}/metrics/summary.csv, plus the paired
comparisons of every method with evaluate.reference (seed-paired hierarchical bootstrap) and the
accuracy-across-variants figure."""
import logging

import pandas as pd

from stainshift import plots
from stainshift.embeddings import read_predictions
from stainshift.metrics import pipeline as pl
from stainshift.joblog import job_logging, job_name

sm = snakemake  # noqa: F821
job_logging(sm.log[0], job_name(sm.rule, sm.wildcards))
cfg = pl.EvalConfig.from_config(sm.params.evaluate)

tables = [pl.read_table(p) for p in list(sm.input.cross_center) + list(sm.input.variants) + list(sm.input.restain)
          + list(sm.input.batch_effect) + list(sm.input.learning)]
raw = []
for path in sm.input.predictions:
    p = read_predictions(path)
    raw.append(p[pl.is_raw(p)])  # the paired tests score raw test tiles
raw = pd.concat(raw, ignore_index=True)
preds = {m: raw[raw["method"] == m] for m in sm.params.methods if (raw["method"] == m).any()}
paired = pl.compare_methods(preds, cfg, sm.params.sources)
summary = pd.concat(tables + [paired], ignore_index=True)[pl.COLUMNS]
pl.write_csv_atomic(summary, sm.output.summary)
plots.variant_accuracy_plot(summary[summary["kind"] == "variant"], sm.output.variant_plot)
plots.restain_curve_plot(summary, sm.output.restain_plot)
logging.info("summary: %d rows, %d methods, %d paired rows", len(summary), len(preds), len(paired))
