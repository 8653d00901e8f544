"""Runs' predictions → aligned scores: provenance per source (which centers its encoder and head
saw), seen / unseen cells, and the per-(seed, cell) metric arrays every table is built from."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from stainshift.protocol import LOCO_PREFIX, split_centers

from .. import bootstrap as bs
from .. import cross_center as cc
from .common import VALTHR, EvalConfig, _nanmean, is_raw


# --------------------------------------------------------------------------- inputs
def normalize_predictions(preds: pd.DataFrame) -> pd.DataFrame:
    """Typed predictions of one or more runs: ids as strings, ``seed`` int, ``threshold`` float,
    an unknown ``patient`` replaced by the tile's slide (its own patient, as far as we know)."""
    out = preds.copy()
    for c in ("method", "source", "source_kind", "protocol", "encoder_centers", "head_centers", "store", "slide_id",
              "test", "split", "variant_method", "variant_target"):
        out[c] = out[c].fillna("").astype(str)
    out["seed"] = out["seed"].astype(np.int64)
    out["threshold"] = pd.to_numeric(out["threshold"], errors="coerce")
    patient = out["patient"].astype("string").fillna("").str.strip() if "patient" in out else pd.Series("", index=out.index)
    out["patient"] = np.where(patient.isin(["", "nan", "None"]), "slide:" + out["slide_id"], patient.astype(str))
    return out


@dataclass(frozen=True)
class SourceInfo:
    """What the tables need to know about a source: its kind and, for ``loco``, the held-out center."""

    kind: str
    held_out: str | None = None


def source_infos(preds: pd.DataFrame, sources: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, SourceInfo]:
    """Sources in table order: those of ``sources`` ({id: Source.as_dict()}, config order) that have
    predictions, then any other of the predictions (kind from ``source_kind``) sorted."""
    present = list(dict.fromkeys(preds["source"]))
    kinds = preds.drop_duplicates("source").set_index("source")["source_kind"].to_dict()
    out: dict[str, SourceInfo] = {}
    for sid, s in (sources or {}).items():
        if sid in present:
            out[sid] = SourceInfo(str(s["kind"]), s.get("held_out"))
    for sid in sorted(set(present) - set(out)):
        kind = kinds.get(sid, "")
        out[sid] = SourceInfo(kind, sid.removeprefix(LOCO_PREFIX) if kind == "loco" else None)
    return out


def seen_centers(encoder_centers: str, head_centers: str) -> set[str]:
    """Centers a run may have learnt from: its encoder's and its head's."""
    return set(split_centers(encoder_centers)) | set(split_centers(head_centers))


def mark_seen(preds: pd.DataFrame) -> pd.Series:
    """Per prediction row: was the tile's center seen by that run's encoder or head?"""
    pairs = preds[["encoder_centers", "head_centers"]].drop_duplicates()
    seen = {(e, h): seen_centers(e, h) for e, h in pairs.itertuples(index=False)}
    return pd.Series([t in seen[(e, h)] for t, e, h in zip(preds["test"], preds["encoder_centers"], preds["head_centers"])],
                     index=preds.index, dtype=bool)


# --------------------------------------------------------------------------- aligned scores
@dataclass
class RunScores:
    """The raw labelled test tiles of one protocol, aligned over every run of one method.

    ``tiles`` (N rows: store, index, test, slide_id, patient, label); ``proba`` (K, S, N, C) with
    NaN where a run did not score a tile; ``threshold`` (K, S); ``valid`` (K, N) = scored by every
    seed of that source. Sources k follow ``sources``, seeds s follow ``seeds``."""

    protocol: str
    tiles: pd.DataFrame
    sources: list[str]
    seeds: list[int]
    proba: np.ndarray
    threshold: np.ndarray
    valid: np.ndarray
    encoder_centers: list[str]
    head_centers: list[str]
    tests: list[str] = field(init=False)
    test_code: np.ndarray = field(init=False)
    labels: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.tests = list(dict.fromkeys(self.tiles["test"]))
        self.test_code = pd.Categorical(self.tiles["test"], categories=self.tests).codes.astype(np.int64)
        self.labels = self.tiles["label"].to_numpy(np.int64)

    @property
    def n_classes(self) -> int:
        """Number of classes (columns of the probabilities)."""
        return int(self.proba.shape[-1])

    def unseen(self) -> np.ndarray:
        """(K, T): test center t was seen by neither the encoder nor the head of source k."""
        return np.array([[t not in seen_centers(e, h) for t in self.tests]
                         for e, h in zip(self.encoder_centers, self.head_centers)], dtype=bool).reshape(-1, len(self.tests))

    def design(self, min_units: int) -> bs.ResamplingDesign:
        """The bootstrap design of the test tiles: test center strata, patients, slides (:func:`resampling_design`)."""
        return bs.resampling_design(self.tiles["test"], self.tiles["patient"], self.tiles["slide_id"], min_units)

    def split(self, idx: np.ndarray) -> list[np.ndarray]:
        """Resampled tile indices per test center."""
        code = self.test_code[idx]
        return [idx[code == t] for t in range(len(self.tests))]

    def cells(self, k: int, s: int, parts: Sequence[np.ndarray], metrics: Sequence[str]) -> np.ndarray:
        """(T, M) metrics of source k, seed s on the given tiles of each test center."""
        out = np.full((len(parts), len(metrics)), np.nan)
        for t, idx in enumerate(parts):
            idx = idx[self.valid[k, idx]]
            if idx.size:
                out[t] = cc.classification_metrics(self.labels[idx], self.proba[k, s, idx], metrics, self.threshold[k, s])
        return out

    def restrict(self, keys: pd.MultiIndex, sources: Sequence[str], seeds: Sequence[int]) -> "RunScores":
        """The same scores on the tiles ``keys`` (store, index), for the given sources and seeds, in that order."""
        pos = pd.Series(np.arange(len(self.tiles)), index=pd.MultiIndex.from_frame(self.tiles[["store", "index"]]))
        at = pos.reindex(keys).to_numpy(np.int64)
        ks = [self.sources.index(x) for x in sources]
        ss = [self.seeds.index(x) for x in seeds]
        return RunScores(self.protocol, self.tiles.iloc[at].reset_index(drop=True), list(sources), list(seeds),
                         self.proba[np.ix_(ks, ss)][:, :, at], self.threshold[np.ix_(ks, ss)], self.valid[ks][:, at],
                         [self.encoder_centers[k] for k in ks], [self.head_centers[k] for k in ks])


def run_scores(preds: pd.DataFrame, protocol: str, source_order: Sequence[str]) -> RunScores | None:
    """Align the raw labelled test predictions of ``protocol`` over the method's runs (None if it
    has none). Raises ValueError naming a (source, seed) run that is missing while others exist:
    every source must have every replicate seed for the seed-level bootstrap."""
    raw = preds[(preds["protocol"] == protocol) & is_raw(preds) & (preds["label"] >= 0)]
    if raw.empty:
        return None
    pcols = cc.proba_columns(raw)
    tiles = (raw.drop_duplicates(["store", "index"])[["store", "index", "test", "slide_id", "patient", "label"]]
             .sort_values(["test", "store", "index"], kind="stable").reset_index(drop=True))
    pos = pd.Series(np.arange(len(tiles)), index=pd.MultiIndex.from_frame(tiles[["store", "index"]]))
    present = set(raw["source"].unique())
    sources = [s for s in source_order if s in present]
    seeds = sorted(raw["seed"].unique().tolist())
    have = set(map(tuple, raw[["source", "seed"]].drop_duplicates().itertuples(index=False)))
    missing = [(src, sd) for src in sources for sd in seeds if (src, sd) not in have]
    if missing:
        raise ValueError(f"protocol {protocol!r}: no predictions for run(s) (source, seed) {missing}; "
                         f"every source needs every replicate seed {seeds}")
    proba = np.full((len(sources), len(seeds), len(tiles), len(pcols)), np.nan)
    threshold = np.full((len(sources), len(seeds)), np.nan)
    enc, head = [], []
    for k, src in enumerate(sources):
        sub = raw[raw["source"] == src]
        enc.append("+".join(sorted(set().union(*(split_centers(x) for x in sub["encoder_centers"].unique())))))
        head.append("+".join(sorted(set().union(*(split_centers(x) for x in sub["head_centers"].unique())))))
        for s, sd in enumerate(seeds):
            run = sub[sub["seed"] == sd]
            at = pos.reindex(pd.MultiIndex.from_frame(run[["store", "index"]])).to_numpy(np.int64)
            proba[k, s, at] = run[pcols].to_numpy(np.float64)
            threshold[k, s] = run["threshold"].iloc[0] if len(run) else np.nan
    valid = np.isfinite(proba).all(axis=(1, 3))
    return RunScores(protocol, tiles, sources, seeds, proba, threshold, valid, enc, head)


def active_metrics(cfg: EvalConfig, n_classes: int) -> list[str]:
    """The configured metrics; the validation-threshold balanced accuracy only for binary tasks."""
    return [m for m in cfg.metrics if m != VALTHR or n_classes == 2]


def source_aggregates(cells: np.ndarray, unseen: np.ndarray) -> np.ndarray:
    """(3, K, M) from cells (K, T, M) and the unseen mask (K, T): the mean over unseen test
    centers, the mean over seen ones, and drop = seen − unseen (NaN where a side is empty)."""
    mask = unseen[:, :, None]
    unseen_mean = _nanmean(np.where(mask, cells, np.nan), axis=1)
    seen_mean = _nanmean(np.where(~mask, cells, np.nan), axis=1)
    return np.stack([unseen_mean, seen_mean, seen_mean - unseen_mean])
