"""The evaluate and summarize stages as library calls (thin glue over :mod:`stainshift.metrics`): runs' predictions, embeddings and training
summaries → tidy long metric tables.

A *run* is one (method, source, replicate seed) (:mod:`stainshift.protocol`). Inputs are the
formats owned by :mod:`stainshift.embeddings` (the per-run predictions CSV and HDF5 embeddings)
and the runs' ``train_summary.json``. Every output is a long frame with the columns
:data:`COLUMNS`; a number is the mean over replicate seeds with a hierarchical (seed × test
unit) bootstrap CI (:mod:`.bootstrap`). ``kind`` says what a row is:

=============== ========================== =================================================
kind            test                       value
=============== ========================== =================================================
cell            test center                metric of the source's models on that center
unseen_mean     ``unseen_mean``            mean over the test centers the source never saw
seen_mean       ``seen_mean``              mean over the test centers the source saw
drop            ``drop``                   seen_mean − unseen_mean
headline        in_center | unseen | drop  mean over the ``center``-kind sources (seed 000
                                           Table IV: train on one center, test on the others)
loco            held-out center            a ``loco`` source on the one center it left out
loco_mean       ``mean``                   mean of the ``loco`` rows (WILDS / seed 003)
test_unseen     test center                mean over the sources that never saw that center (a
                                           test-only center: every source; ``note`` says so)
prediction_share test center               per source: share of tiles given the most frequent
                                           predicted class (near-constant head check; no CI)
chance          test center                what an image-blind model scores (majority class)
class_share     test center                share of its labelled test tiles in class c (``class_c``)
variant         variant name               accuracy on one normalized variant (unseen centers)
variant_summary ``over_variants``          mean ± std over variants, cross-stain consistency
restain         strength ``0`` … ``1``     unseen-center metric on the test tiles re-stained in H&E
                                           space at that strength (0 = raw; stain.variants)
restain_area    ``area``                   mean of the restain curve over [0, 1] (trapezoid)
w2, ri,         center pair, ``all``,      latent batch effect of the encoders (raw test
tightness       center                     embeddings), mean over seeds
learning        ``train``                  per run: did it learn, budget, first/final losses
paired          ``vs_{reference}``         method − reference, paired by seed and test units
=============== ========================== =================================================

``seen`` is True for a cell whose test center entered the run's encoder or head
(``encoder_centers`` / ``head_centers`` of the predictions); headline numbers use unseen cells.
"""
from __future__ import annotations

from .. import cross_center as cc  # noqa: F401  (tests and scripts reach the metric functions as pl.cc)
from .cells import NEAR_CONSTANT_SHARE, cross_center
from .common import (
    COLUMNS,
    ENCODER,
    HEADLINE_SOURCE,
    LOCO_SOURCE,
    PROTOCOLS,
    VALTHR,
    EvalConfig,
    frame,
    is_raw,
    is_restain,
    read_table,
    row,
    write_csv_atomic,
)
from .embedding_rows import (
    EmbeddingSet,
    attach_tile_groups,
    batch_effect,
    evaluation_embedding_paths,
    load_embedding_set,
    raw_labelled,
    ri_groups,
    run_batch_effect,
    subsample_for_map,
)
from .learning import LEARNING_SCALARS, learning_table, read_train_summary
from .paired import PAIRED, compare_methods
from .runs import (
    RunScores,
    SourceInfo,
    active_metrics,
    mark_seen,
    normalize_predictions,
    run_scores,
    seen_centers,
    source_aggregates,
    source_infos,
)
from .variant_rows import RESTAIN_METRICS, restain_curve, variant_robustness

__all__ = [
    "COLUMNS",
    "ENCODER",
    "EmbeddingSet",
    "EvalConfig",
    "HEADLINE_SOURCE",
    "LEARNING_SCALARS",
    "LOCO_SOURCE",
    "NEAR_CONSTANT_SHARE",
    "PAIRED",
    "PROTOCOLS",
    "RESTAIN_METRICS",
    "RunScores",
    "SourceInfo",
    "VALTHR",
    "active_metrics",
    "attach_tile_groups",
    "batch_effect",
    "compare_methods",
    "cross_center",
    "evaluation_embedding_paths",
    "frame",
    "is_raw",
    "is_restain",
    "learning_table",
    "load_embedding_set",
    "mark_seen",
    "normalize_predictions",
    "raw_labelled",
    "read_table",
    "read_train_summary",
    "restain_curve",
    "ri_groups",
    "row",
    "run_batch_effect",
    "run_scores",
    "seen_centers",
    "source_aggregates",
    "source_infos",
    "subsample_for_map",
    "variant_robustness",
    "write_csv_atomic",
]
