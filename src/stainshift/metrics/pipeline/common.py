"""Shared pieces of the metric tables: the evaluation settings, the long-table columns and row
helpers, table I/O."""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from stainshift.atomic import write_csv

from ...stain.targets import RESTAIN
from .. import cross_center as cc
from .. import variants as va

COLUMNS = ["method", "protocol", "source", "source_kind", "seed", "test", "metric", "value", "ci_low", "ci_high",
           "p_value", "seed_sd", "n", "n_seeds", "kind", "unit", "seen", "encoder_centers", "head_centers", "note"]
PROTOCOLS = ("probe", "native")
ENCODER = "encoder"            # ``protocol`` of the batch-effect rows: the frozen encoder, no head
HEADLINE_SOURCE = "each"       # ``source`` of the headline rows: the mean over center-kind sources
LOCO_SOURCE = "loco"           # ``source`` of the loco_mean / paired-loco rows
VALTHR = "balanced_accuracy_valthr"


@dataclass
class EvalConfig:
    """The ``evaluate:`` section of the workflow config (defaults = the demo's)."""

    bootstrap: int = 200
    bootstrap_latent: int = 0          # replicates for the robustness-index CI (0 = no CI)
    seed: int = 0
    ci: float = 0.95
    min_units: int = 5                 # fewer patients (then slides) per test center -> next unit
    reference: str = "baseline"        # paired tests compare every method with this one
    consistency_share: float = 0.9     # k = ceil(share * V) for "consistent in >= k variants"
    w2_max_samples: int = 500
    latent_max_tiles: int | None = None  # W2 / RI / tightness read at most ~this many tiles per run (None: all)
    l2_normalize: bool = True
    ri_k: Sequence[int] = (1, 3, 5, 7, 9, 11, 15, 21, 31)
    embedding_map: str = "umap"        # umap | tsne | pca
    map_max_points: int = 2000
    metrics: Sequence[str] = field(default_factory=lambda: list(cc.METRICS))

    @classmethod
    def from_config(cls, section: Mapping[str, Any] | None) -> "EvalConfig":
        """Settings from the config's ``evaluate`` section; unknown keys raise ValueError naming them."""
        section = dict(section or {})
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(section) - known
        if unknown:
            raise ValueError(f"evaluate: unknown key(s) {sorted(unknown)}; known: {sorted(known)}")
        return cls(**section)


def write_csv_atomic(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """``df.to_csv`` (no index, ``%.6g`` floats) written atomically (:mod:`stainshift.atomic`)."""
    return write_csv(path, df, index=False, float_format="%.6g")


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """A table written by this module (ids kept as strings)."""
    text = ["method", "protocol", "source", "source_kind", "seed", "test", "metric", "kind", "unit",
            "encoder_centers", "head_centers", "note"]
    return pd.read_csv(path, dtype={c: str for c in text}, keep_default_na=False,
                       na_values={c: ["", "nan"] for c in COLUMNS if c not in text})


def row(**values: Any) -> dict[str, Any]:
    """One output row: ``values`` plus the empty defaults of every other column."""
    out: dict[str, Any] = dict(protocol="", source="", source_kind="", seed="", test="", metric="", value=np.nan,
                               ci_low=np.nan, ci_high=np.nan, p_value=np.nan, seed_sd=np.nan, n=0, n_seeds=0,
                               kind="", unit="", seen=np.nan, encoder_centers="", head_centers="", note="")
    out.update(values)
    return out


def frame(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """A long metric table (columns :data:`COLUMNS`) from row dicts."""
    return pd.DataFrame(list(rows), columns=COLUMNS)


def _nanmean(a: np.ndarray, axis: int | None = None) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slice -> NaN, said by the value
        return np.nanmean(a, axis=axis)


def is_raw(df: pd.DataFrame) -> pd.Series:
    """Rows of un-normalized (raw) test tiles."""
    return df["variant_method"].astype(str).isin([va.RAW, "", "nan", "none"])


def is_restain(df: pd.DataFrame) -> pd.Series:
    """Rows of re-stained variants (the robustness curve), not of stain-normalized ones."""
    return df["variant_method"].astype(str) == RESTAIN
