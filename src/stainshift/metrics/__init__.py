"""Evaluation metrics of the stainshift workflow (the `evaluate` stage).

One module per family, one function per metric, each docstring giving the formula and the seed
it comes from:

* :mod:`.cross_center` — accuracy, balanced accuracy (also at the validation-chosen threshold),
  AUC, macro-F1, QWK of one (source, test center) cell, and their chance levels (seed 000
  Table IV; 002 Tables 1-7).
* :mod:`.variants` — accuracy per normalized variant, mean ± std, cross-stain consistency (000).
* :mod:`.batch_effect` — W2 between centers (Gaussian closed form and exact OT; 003 Fig. 2-3) and
  stain-variant cluster tightness (000).
* :mod:`.robustness` — the PathoROB k-NN robustness index, computed by croma.
* :mod:`.bootstrap` — hierarchical (replicate seed × patient/slide/tile) bootstrap CIs and
  seed-paired comparisons between methods.
* :mod:`.pipeline` — the evaluate / summarize stages as library calls over runs.
"""
from .batch_effect import cluster_tightness, exact_w2, gaussian_w2, gaussian_w2_from_moments, w2_between_centers
from .bootstrap import BootstrapResult, ResamplingDesign, hierarchical_bootstrap, resampling_design
from .cross_center import (
    METRICS,
    accuracy,
    auc,
    balanced_accuracy,
    balanced_accuracy_at_threshold,
    chance_levels,
    classification_metrics,
    macro_f1,
    quadratic_weighted_kappa,
)
from .robustness import RobustnessIndexResult, robustness_index
from .variants import cross_stain_consistency, mean_std_over_variants

__all__ = [
    "METRICS", "BootstrapResult", "ResamplingDesign", "RobustnessIndexResult", "accuracy", "auc",
    "balanced_accuracy", "balanced_accuracy_at_threshold", "chance_levels", "classification_metrics",
    "cluster_tightness", "cross_stain_consistency", "exact_w2", "gaussian_w2", "gaussian_w2_from_moments",
    "hierarchical_bootstrap", "macro_f1", "mean_std_over_variants", "quadratic_weighted_kappa",
    "resampling_design", "robustness_index", "w2_between_centers",
]
