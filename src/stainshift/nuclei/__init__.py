"""Nuclei (seed 004): segmentation (§3.2) and its metrics, nucleus crops and unsupervised classes (§3.3),
the nuclei data sets and the workflow's experiment glue."""
from __future__ import annotations

__all__ = ["classes", "cluster", "crops", "datasets", "experiment", "figures", "infogan", "report", "seg_metrics",
           "segmentation"]
