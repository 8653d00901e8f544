"""The learning table: per run, did it learn, its budget and its first / final losses."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import pandas as pd

from stainshift.protocol import join_centers, split_centers

from .common import frame, row

# --------------------------------------------------------------------------- learning
LEARNING_SCALARS = ("epochs", "tiles", "images_seen", "seconds")


def _centers_text(centers: str | Iterable[str] | None) -> str:
    """A run's training centers as the predictions write them (``a+b``), from the summary's joined
    string or a list."""
    if not centers:
        return ""
    return join_centers(split_centers(centers) if isinstance(centers, str) else centers)


def read_train_summary(path: str | os.PathLike) -> dict[str, Any]:
    """A run's ``train_summary.json`` as a dict."""
    return json.loads(Path(path).read_text())


def learning_table(summaries: Iterable[Mapping[str, Any]], method: str,
                   sources: Mapping[str, Mapping[str, Any]] | None = None) -> pd.DataFrame:
    """Per run (``train_summary.json``): ``did_not_learn`` (1 = the training flagged it; ``note``
    = the reasons), ``external`` / ``init`` (the weights file and its sha256 in ``note``: an
    external encoder, or the file a pretraining started from), the budget (epochs, training tiles, images seen, seconds) and every numeric
    first-epoch / final-epoch metric (loss terms, collapse statistics) as ``first_*`` / ``final_*``."""
    kinds = {sid: str(s["kind"]) for sid, s in (sources or {}).items()}
    rows = []
    for s in summaries:
        learning = s.get("learning") or {}
        common = dict(method=method, protocol="train", source=str(s["source"]), source_kind=kinds.get(str(s["source"]), ""),
                      seed=int(s["seed"]), test="train", kind="learning", n=int(s.get("tiles") or 0), n_seeds=1,
                      encoder_centers=_centers_text(s.get("centers")))
        status = str(learning.get("status", "ok"))
        rows.append(row(**common, metric="did_not_learn", value=float(status == "did_not_learn"),
                        note="; ".join(map(str, learning.get("reasons") or [])) or status))
        for key, provenance in (("external", s.get("external")), ("init", s.get("init"))):
            if provenance:  # an encoder read from a file / a pretraining started from one: which file, which bytes
                rows.append(row(**common, metric=key, value=1.0,
                                note=f"{provenance.get('format', 'state_dict')} {provenance.get('file')} "
                                     f"sha256 {provenance.get('sha256')}"))
        for key in LEARNING_SCALARS:
            if isinstance(s.get(key), (int, float)):
                rows.append(row(**common, metric=key, value=float(s[key])))
        for stage in ("first", "final"):
            for key, v in (s.get(stage) or {}).items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    rows.append(row(**common, metric=f"{stage}_{key}", value=float(v)))
    return frame(rows)
