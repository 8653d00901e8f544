"""Nuclei: segmentation (seed 004 §3.2), its metrics, and the nuclei data sets."""
from __future__ import annotations

__all__ = ["datasets", "seg_metrics", "segmentation"]
