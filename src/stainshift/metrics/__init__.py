"""Evaluation metrics of the stainshift workflow (the `evaluate` stage).

One module per family, one function per metric, each docstring giving the formula and the seed
it comes from:

* :mod:`.cross_center` — accuracy, balanced accuracy, AUC, macro-F1, QWK per (train, test) center
  and the mean off-diagonal headline (seed 000 Table IV; 002 Tables 1-7).
* :mod:`.variants` — accuracy per normalized variant, mean ± std, cross-stain consistency (000).
* :mod:`.batch_effect` — W2 between centers (Gaussian closed form and exact OT; 003 Fig. 2-3) and
  stain-variant cluster tightness (000).
* :mod:`.robustness` — k-NN robustness index, de Jong and PathoROB forms.
* :mod:`.bootstrap` — slide-level bootstrap CIs and paired tests between methods.
"""
from .batch_effect import cluster_tightness, exact_w2, gaussian_w2, gaussian_w2_from_moments, w2_between_centers
from .bootstrap import bootstrap_ci, mcnemar_test, paired_bootstrap_test, resampling_groups
from .cross_center import (
    METRICS,
    accuracy,
    auc,
    balanced_accuracy,
    classification_metrics,
    cross_center_table,
    macro_f1,
    quadratic_weighted_kappa,
)
from .robustness import robustness_index
from .variants import accuracy_per_variant, cross_stain_consistency, mean_std_over_variants

__all__ = [
    "METRICS", "accuracy", "auc", "balanced_accuracy", "bootstrap_ci", "classification_metrics",
    "cluster_tightness", "cross_center_table", "cross_stain_consistency", "exact_w2", "gaussian_w2",
    "gaussian_w2_from_moments", "macro_f1", "mcnemar_test", "mean_std_over_variants",
    "paired_bootstrap_test", "quadratic_weighted_kappa", "resampling_groups", "robustness_index",
    "accuracy_per_variant", "w2_between_centers",
]
