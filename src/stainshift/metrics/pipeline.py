"""The evaluate and summarize stages as library calls: runs' predictions, embeddings and training
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

import json
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from stainshift.atomic import write_csv
from stainshift.protocol import LOCO_PREFIX, join_centers, split_centers

from . import batch_effect as be
from . import bootstrap as bs
from . import cross_center as cc
from . import robustness as rob
from . import variants as va
from ..stain.variants import RESTAIN, restain_strength

log = logging.getLogger(__name__)

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
    l2_normalize: bool = True
    ri_k: Sequence[int] = (1, 3, 5, 7, 9, 11, 15, 21, 31)
    embedding_map: str = "umap"        # umap | tsne | pca
    map_max_points: int = 2000
    metrics: Sequence[str] = field(default_factory=lambda: list(cc.METRICS))

    @classmethod
    def from_config(cls, section: Mapping[str, Any] | None) -> "EvalConfig":
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
    return pd.DataFrame(list(rows), columns=COLUMNS)


def _nanmean(a: np.ndarray, axis: int | None = None) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slice -> NaN, said by the value
        return np.nanmean(a, axis=axis)


def is_raw(df: pd.DataFrame) -> pd.Series:
    return df["variant_method"].astype(str).isin([va.RAW, "", "nan", "none"])


def is_restain(df: pd.DataFrame) -> pd.Series:
    """Rows of re-stained variants (the robustness curve), not of stain-normalized ones."""
    return df["variant_method"].astype(str) == RESTAIN


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
        return int(self.proba.shape[-1])

    def unseen(self) -> np.ndarray:
        """(K, T): test center t was seen by neither the encoder nor the head of source k."""
        return np.array([[t not in seen_centers(e, h) for t in self.tests]
                         for e, h in zip(self.encoder_centers, self.head_centers)], dtype=bool).reshape(-1, len(self.tests))

    def design(self, min_units: int) -> bs.ResamplingDesign:
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


# --------------------------------------------------------------------------- cross-center
def cross_center(preds: pd.DataFrame, method: str, cfg: EvalConfig,
                 sources: Mapping[str, Mapping[str, Any]] | None = None) -> pd.DataFrame:
    """The cross-center tables of one method (module docstring: kinds cell, unseen_mean,
    seen_mean, drop, headline, loco, loco_mean, chance), per protocol, from one joint bootstrap
    per protocol: every replicate draws the seeds of each source independently (one stream per
    source) and the patients/slides/tiles of every test center once for all sources."""
    preds = normalize_predictions(preds)
    infos = source_infos(preds, sources)
    rows: list[dict[str, Any]] = []
    for protocol in PROTOCOLS:
        scores = run_scores(preds, protocol, list(infos))
        if scores is not None:
            rows += _protocol_rows(scores, method, cfg, infos)
    rows += _chance_rows(preds, method, cfg)
    return frame(rows)


def _protocol_rows(scores: RunScores, method: str, cfg: EvalConfig, infos: Mapping[str, SourceInfo]) -> list[dict]:
    metrics = active_metrics(cfg, scores.n_classes)
    K, T, M, S = len(scores.sources), len(scores.tests), len(metrics), len(scores.seeds)
    unseen = scores.unseen()
    centers_k = [k for k, src in enumerate(scores.sources) if infos[src].kind == "center"]
    loco_kt = [(k, scores.tests.index(infos[src].held_out)) for k, src in enumerate(scores.sources)
               if infos[src].kind == "loco" and infos[src].held_out in scores.tests]

    def statistic(seeds: np.ndarray, idx: np.ndarray) -> np.ndarray:
        parts = scores.split(idx)
        cells = np.stack([bs.mean_over_seeds(seeds[k], lambda s, k=k: scores.cells(k, s, parts, metrics).ravel())
                          .reshape(T, M) for k in range(K)])
        agg = source_aggregates(cells, unseen)
        head = _nanmean(agg[:, centers_k], axis=1) if centers_k else np.full((3, M), np.nan)
        loco = _nanmean(np.stack([cells[k, t] for k, t in loco_kt]), axis=0) if loco_kt else np.full(M, np.nan)
        per_test = _nanmean(np.where(unseen[:, :, None], cells, np.nan), axis=0)  # (T, M) over sources that never saw t
        return np.concatenate([cells.ravel(), agg.ravel(), head[[1, 0, 2]].ravel(), loco, per_test.ravel()])

    design = scores.design(cfg.min_units)
    r = bs.hierarchical_bootstrap(statistic, S, design, cfg.bootstrap, cfg.ci, cfg.seed, n_streams=K)
    fields = {f: getattr(r, f) for f in ("value", "ci_low", "ci_high", "seed_sd")}
    at = iter(range(r.value.size))
    common = dict(method=method, protocol=scores.protocol, n_seeds=S)
    n_valid = np.stack([[int(scores.valid[k, scores.test_code == t].sum()) for t in range(T)] for k in range(K)])

    def stats(j: int) -> dict[str, float]:
        return {f: float(v[j]) for f, v in fields.items()}

    rows = []
    cell_stats = {}
    for k, src in enumerate(scores.sources):
        prov = dict(source=src, source_kind=infos[src].kind, encoder_centers=scores.encoder_centers[k],
                    head_centers=scores.head_centers[k])
        for t, test in enumerate(scores.tests):
            for m in metrics:
                j = next(at)
                cell_stats[(k, t, m)] = stats(j)
                rows.append(row(**common, **prov, **stats(j), test=test, metric=m, n=n_valid[k, t], kind="cell",
                                unit=design.unit_of[test], seen=not unseen[k, t]))
    for name, seen in (("unseen_mean", False), ("seen_mean", True), ("drop", np.nan)):
        for k, src in enumerate(scores.sources):
            prov = dict(source=src, source_kind=infos[src].kind, encoder_centers=scores.encoder_centers[k],
                        head_centers=scores.head_centers[k])
            used = n_valid[k][unseen[k] if name == "unseen_mean" else ~unseen[k] if name == "seen_mean" else slice(None)]
            for m in metrics:
                j = next(at)
                if np.isfinite(r.value[j]):
                    rows.append(row(**common, **prov, **stats(j), test=name, metric=m, n=int(used.sum()), kind=name,
                                    unit=design.label, seen=seen))
    for name, seen in (("in_center", True), ("unseen", False), ("drop", np.nan)):
        for m in metrics:
            j = next(at)
            if centers_k:
                rows.append(row(**common, **stats(j), source=HEADLINE_SOURCE, source_kind="center", test=name, metric=m,
                                n=len(scores.tiles), kind="headline", unit=design.label, seen=seen,
                                note=f"mean over {len(centers_k)} single-center sources"))
    for m in metrics:
        j = next(at)
        if loco_kt:
            rows.append(row(**common, **stats(j), source=LOCO_SOURCE, source_kind="loco", test="mean", metric=m,
                            n=int(sum(n_valid[k, t] for k, t in loco_kt)), kind="loco_mean", unit=design.label,
                            seen=False, note=f"mean over {len(loco_kt)} held-out centers"))
    for k, t in loco_kt:
        src, test = scores.sources[k], scores.tests[t]
        for m in metrics:
            rows.append(row(**common, **cell_stats[(k, t, m)], source=src, source_kind="loco", test=test, metric=m,
                            n=n_valid[k, t], kind="loco", unit=design.unit_of[test], seen=not unseen[k, t],
                            encoder_centers=scores.encoder_centers[k], head_centers=scores.head_centers[k]))
    for t, test in enumerate(scores.tests):
        blind = [scores.sources[k] for k in range(K) if unseen[k, t]]
        for m in metrics:
            j = next(at)
            if blind:
                rows.append(row(**common, **stats(j), source="unseen_by", test=test, metric=m, kind="test_unseen",
                                n=int(sum(n_valid[k, t] for k in range(K) if unseen[k, t])), unit=design.unit_of[test],
                                seen=False, note=("test-only: no model saw this center; " if len(blind) == K else "")
                                + f"mean over the {len(blind)} source(s) that never saw it: {', '.join(blind)}"))
    return rows + _prediction_share_rows(scores, method)


#: a head predicting one class for at least this share of a test center's tiles is flagged near-constant
NEAR_CONSTANT_SHARE = 0.95


def _prediction_share_rows(scores: RunScores, method: str) -> list[dict]:
    """Per (source, test center): the share of tiles given the most frequent predicted class
    (argmax, pooled over seeds; no CI) — a near-constant head scores chance-level balanced
    accuracy whatever its accuracy; ``note`` names that class."""
    rows = []
    for k, src in enumerate(scores.sources):
        for t, test in enumerate(scores.tests):
            idx = np.flatnonzero((scores.test_code == t) & scores.valid[k])
            if not idx.size:
                continue
            pred = scores.proba[k][:, idx].argmax(axis=-1).ravel()
            counts = np.bincount(pred, minlength=scores.n_classes)
            rows.append(row(method=method, protocol=scores.protocol, source=src, test=test, metric="majority_prediction_share",
                            value=float(counts.max() / counts.sum()), n=int(idx.size), n_seeds=len(scores.seeds),
                            kind="prediction_share", encoder_centers=scores.encoder_centers[k],
                            head_centers=scores.head_centers[k], note=f"class {int(counts.argmax())}"))
    return rows


def _chance_rows(preds: pd.DataFrame, method: str, cfg: EvalConfig) -> list[dict]:
    """Per test center: chance level of each metric on its raw labelled test tiles."""
    raw = preds[is_raw(preds) & (preds["label"] >= 0)].drop_duplicates(["store", "index"])
    n_classes = len(cc.proba_columns(preds))
    metrics = active_metrics(cfg, n_classes)
    rows = []
    for test, sub in raw.groupby("test", sort=True):
        levels = cc.chance_levels(sub["label"].to_numpy(), n_classes, metrics)
        for m, v in zip(metrics, levels):
            rows.append(row(method=method, test=test, metric=m, value=v, n=len(sub), kind="chance",
                            note="majority class" if m in ("accuracy", "macro_f1") else ""))
        counts = np.bincount(sub["label"].to_numpy(np.int64), minlength=n_classes)
        for c, k in enumerate(counts):
            rows.append(row(method=method, test=test, metric=f"class_{c}", value=k / max(counts.sum(), 1), n=int(k),
                            kind="class_share"))
    return rows


# --------------------------------------------------------------------------- variants
def variant_robustness(preds: pd.DataFrame, method: str, cfg: EvalConfig,
                       sources: Mapping[str, Mapping[str, Any]] | None = None) -> pd.DataFrame:
    """Per (protocol, source), on the test tiles of the centers the source never saw (all test
    tiles, ``seen`` = True, for a source that saw every test center): accuracy on every variant
    (raw + each normalization method/target), mean ± std over variants (000 BRACS70),
    cross-stain consistency in all variants and in ≥ k = ⌈share·V⌉ of them (000 supplement) and
    the share of those consistent tiles that are right. Mean over seeds, hierarchical CIs."""
    preds = normalize_predictions(preds)
    preds = preds[(preds["label"] >= 0) & ~is_restain(preds)]
    preds = preds.assign(seen=mark_seen(preds))
    infos = source_infos(preds, sources)
    rows: list[dict[str, Any]] = []
    for protocol in PROTOCOLS:
        for src, info in infos.items():
            sub = preds[(preds["protocol"] == protocol) & (preds["source"] == src)]
            if sub.empty:
                continue
            seen = bool(sub["seen"].all())
            rows += _variant_rows(sub if seen else sub[~sub["seen"]], method, protocol, src, info, seen, cfg)
    return frame(rows)


def _variant_rows(sub: pd.DataFrame, method: str, protocol: str, src: str, info: SourceInfo, seen: bool,
                  cfg: EvalConfig) -> list[dict]:
    sub = sub.assign(variant=[va.variant_name(m, t) for m, t in zip(sub["variant_method"], sub["variant_target"])])
    seeds = sorted(sub["seed"].unique().tolist())
    piv = sub.pivot_table(index=["store", "index"], columns=["seed", "variant"], values="pred", aggfunc="first")
    piv = piv.dropna(axis=0, how="any")
    if piv.empty:
        return []
    names = sorted({v for _, v in piv.columns}, key=lambda v: (v != va.RAW, v))
    if not all((sd, v) in piv.columns for sd in seeds for v in names):
        raise ValueError(f"{method}/{protocol}/{src}: variants differ between seeds")
    mats = np.stack([np.stack([piv[(sd, v)].to_numpy(np.int64) for v in names]) for sd in seeds])  # (S, V, N)
    tiles = sub.drop_duplicates(["store", "index"]).set_index(["store", "index"]).loc[piv.index].reset_index()
    y = tiles["label"].to_numpy(np.int64)
    k = va.min_agree_from_share(len(names), cfg.consistency_share)
    summary_names = ["accuracy_mean", "accuracy_std", "consistency_all", f"consistency_ge_{k}", f"consistent_ge_{k}_correct"]

    def per_seed(s: int, idx: np.ndarray) -> np.ndarray:
        mat, yy = mats[s][:, idx], y[idx]
        acc = np.mean(mat == yy[None], axis=1)
        return np.concatenate([acc, [acc.mean(), va.mean_std_over_variants(acc)[1], va.cross_stain_consistency(mat),
                                     va.cross_stain_consistency(mat, k), va.consistent_and_correct(mat, yy, k)]])

    design = bs.resampling_design(tiles["test"], tiles["patient"], tiles["slide_id"], cfg.min_units)
    r = bs.hierarchical_bootstrap(lambda seeds, idx: bs.mean_over_seeds(seeds[0], lambda s: per_seed(s, idx)),
                                  len(seeds), design, cfg.bootstrap, cfg.ci, cfg.seed)
    common = dict(method=method, protocol=protocol, source=src, source_kind=info.kind, n=len(y), n_seeds=len(seeds),
                  unit=design.label, seen=seen, encoder_centers=sub["encoder_centers"].iloc[0],
                  head_centers=sub["head_centers"].iloc[0],
                  note="" if seen else f"unseen test centers: {', '.join(dict.fromkeys(tiles['test']))}")
    rows = []
    for j, name in enumerate(names + summary_names):
        kind, test, metric = ("variant", name, "accuracy") if j < len(names) else ("variant_summary", "over_variants", name)
        rows.append(row(**common, test=test, metric=metric, kind=kind, value=r.value[j], ci_low=r.ci_low[j],
                        ci_high=r.ci_high[j], seed_sd=r.seed_sd[j]))
    rows.append(row(**common, test="over_variants", metric="n_variants", value=len(names), kind="variant_summary"))
    return rows


# --------------------------------------------------------------------------- stain-robustness curve
RESTAIN_METRICS = ("accuracy", "balanced_accuracy", "auc")


def restain_curve(preds: pd.DataFrame, method: str, cfg: EvalConfig,
                  sources: Mapping[str, Mapping[str, Any]] | None = None) -> pd.DataFrame:
    """The stain-robustness curve of one method, per protocol: the headline unseen-center metric
    (mean over the single-center sources' unseen centers; over every source's when there is none)
    on the raw test tiles (strength 0) and on the same tiles re-stained at each strength, and the
    area under it (trapezoid over [0, max strength], divided by that width: a mean metric).
    One joint hierarchical bootstrap per protocol (seeds × test units, the same draw for every
    strength), so the curve's CIs and the area's CI come from the same resamples."""
    preds = normalize_predictions(preds)
    restained = preds[is_restain(preds)]
    if restained.empty:
        return frame([])
    infos = source_infos(preds, sources)
    levels = sorted(restained["variant_target"].astype(str).unique(), key=restain_strength)
    strengths = [0.0] + [restain_strength(x) for x in levels]
    base = preds[is_raw(preds)]
    rows: list[dict[str, Any]] = []
    for protocol in PROTOCOLS:
        raw_scores = run_scores(base, protocol, list(infos))
        if raw_scores is None:
            continue
        curve = [raw_scores]
        for level in levels:
            one = restained[restained["variant_target"].astype(str) == level].assign(variant_method=va.RAW,
                                                                                    variant_target=va.RAW)
            scores = run_scores(one, protocol, raw_scores.sources)
            if scores is None or not scores.tiles[["store", "index"]].equals(raw_scores.tiles[["store", "index"]]):
                raise ValueError(f"{method}/{protocol}: the re-stained tiles ({level}) are not the raw test tiles")
            curve.append(scores)
        rows += _restain_rows(curve, strengths, method, cfg, infos)
    return frame(rows)


def _restain_rows(curve: Sequence[RunScores], strengths: Sequence[float], method: str, cfg: EvalConfig,
                  infos: Mapping[str, SourceInfo]) -> list[dict]:
    first = curve[0]
    metrics = [m for m in RESTAIN_METRICS if m in active_metrics(cfg, first.n_classes)]
    K, T, M, S, L = len(first.sources), len(first.tests), len(metrics), len(first.seeds), len(curve)
    unseen = first.unseen()
    centers_k = [k for k, src in enumerate(first.sources) if infos[src].kind == "center"] or list(range(K))
    x = np.asarray(strengths, float)
    width = float(x[-1] - x[0]) or 1.0

    def statistic(seeds: np.ndarray, idx: np.ndarray) -> np.ndarray:
        parts = first.split(idx)
        values = np.empty((L, M))
        for level, scores in enumerate(curve):
            cells = np.stack([bs.mean_over_seeds(seeds[k], lambda s, k=k: scores.cells(k, s, parts, metrics).ravel())
                              .reshape(T, M) for k in range(K)])
            values[level] = _nanmean(source_aggregates(cells, unseen)[0][centers_k], axis=0)
        area = np.trapezoid(values, x, axis=0) / width if L > 1 else values[0]
        return np.concatenate([values.ravel(), area])

    design = first.design(cfg.min_units)
    r = bs.hierarchical_bootstrap(statistic, S, design, cfg.bootstrap, cfg.ci, cfg.seed, n_streams=K)
    used = [k for k in centers_k if unseen[k].any()]
    common = dict(method=method, protocol=first.protocol, source=HEADLINE_SOURCE if len(used) and all(
        infos[first.sources[k]].kind == "center" for k in centers_k) else "all", n_seeds=S, unit=design.label,
        seen=False, n=int(sum(first.valid[k, np.isin(first.test_code, np.flatnonzero(unseen[k]))].sum() for k in used)))
    rows = []
    for j in range(L * M):
        level, m = divmod(j, M)
        lo, hi = (1.0 - 0.5 * strengths[level], 1.0 + strengths[level])
        rows.append(row(**common, test=f"{strengths[level]:g}", metric=metrics[m], kind="restain",
                        value=r.value[j], ci_low=r.ci_low[j], ci_high=r.ci_high[j], seed_sd=r.seed_sd[j],
                        note="raw test tiles" if level == 0 else f"alpha, beta in [{lo:g}, {hi:g}]"))
    for m in range(M):
        j = L * M + m
        rows.append(row(**common, test="area", metric=metrics[m], kind="restain_area", value=r.value[j],
                        ci_low=r.ci_low[j], ci_high=r.ci_high[j], seed_sd=r.seed_sd[j],
                        note=f"mean over strengths 0-{strengths[-1]:g} (trapezoid)"))
    return rows


# --------------------------------------------------------------------------- embeddings / batch effect
@dataclass
class EmbeddingSet:
    """Embeddings of several stores stacked: ``features`` (N, D) and per-row ``meta``
    (store, slide_id, patient, center, split, variant_method, variant_target, index, label)."""

    features: np.ndarray
    meta: pd.DataFrame


def load_embedding_set(paths: Sequence[str | os.PathLike]) -> EmbeddingSet:
    from stainshift.embeddings import read_embeddings

    feats, metas = [], []
    for p in paths:
        e = read_embeddings(p)
        a = e["attrs"]
        n = len(e["features"])
        feats.append(np.asarray(e["features"], dtype=np.float32))
        metas.append(pd.DataFrame({
            "store": str(a.get("store", Path(p).stem)), "slide_id": str(a.get("slide_id", a.get("store", ""))),
            "patient": str(a.get("patient", "") or ""), "center": str(a.get("center", "")), "split": str(a.get("split", "")),
            "variant_method": str(a.get("variant_method", va.RAW) or va.RAW),
            "variant_target": str(a.get("variant_target", va.RAW) or va.RAW),
            "index": np.asarray(e["index"], np.int64), "label": np.asarray(e["label"], np.int64)}, index=range(n)))
    if not feats:
        return EmbeddingSet(np.zeros((0, 0), np.float32), pd.DataFrame())
    return EmbeddingSet(np.concatenate(feats), pd.concat(metas, ignore_index=True))


def evaluation_embedding_paths(manifest: pd.DataFrame, split: str = "test") -> list[str]:
    """Embedding files to evaluate from a run's embedding ``manifest.csv`` (path, store, split,
    center, variant_method, variant_target, ...): the raw stores of the test split and every
    variant of them (the run's own train/val stores are left out)."""
    raw = manifest["variant_method"].fillna(va.RAW).isin([va.RAW, ""])
    test_stores = set(manifest.loc[raw & (manifest["split"] == split), "store"])
    keep = manifest["store"].isin(test_stores) & (manifest["variant_method"].astype(str) != RESTAIN)
    return sorted(manifest.loc[keep, "path"].astype(str))


def attach_tile_groups(emb: EmbeddingSet, preds: pd.DataFrame | None) -> EmbeddingSet:
    """Per-tile slide and patient ids from the predictions table (crop sets carry a crop's source
    slide there, the embeddings only the store's), else the store's attrs."""
    if preds is None or preds.empty:
        return emb
    tiles = preds.drop_duplicates(["store", "index"]).set_index(["store", "index"])
    idx = pd.MultiIndex.from_arrays([emb.meta["store"], emb.meta["index"]])
    meta = emb.meta.copy()
    for col in ("slide_id", "patient"):
        if col in tiles:
            found = tiles[col].astype(str).reindex(idx).to_numpy()
            meta[col] = np.where(pd.isna(found), meta[col].to_numpy(), found)
    return EmbeddingSet(emb.features, meta)


def raw_labelled(emb: EmbeddingSet) -> tuple[np.ndarray, pd.DataFrame]:
    """Raw (not normalized), labelled test embeddings sorted by (store, index)."""
    meta = emb.meta
    keep = is_raw(meta).to_numpy() & (meta["label"].to_numpy() >= 0)
    m = meta[keep].sort_values(["store", "index"], kind="stable")
    return emb.features[m.index.to_numpy()], m.reset_index(drop=True)


def ri_groups(meta: pd.DataFrame) -> tuple[np.ndarray, str]:
    """Independence groups for the robustness index: slides when every center has ≥ 2 of them
    ("slide-excluded"); else every tile its own group ("self-excluded": with one slide per center,
    excluding same-slide neighbours would exclude every same-center neighbour, OS ≡ 0, RI ≡ 1)."""
    if (meta.groupby("center")["slide_id"].nunique() >= 2).all():
        return meta["slide_id"].astype(str).to_numpy(), "slide-excluded"
    return np.array([f"tile{i}" for i in range(len(meta))]), "self-excluded"


def run_batch_effect(emb: EmbeddingSet, cfg: EvalConfig) -> list[dict[str, Any]]:
    """One run's encoder on its raw test embeddings: W2 between every pair of centers (Gaussian and
    exact, overall and per class; 003 Fig. 2) and their mean over pairs; the PathoROB robustness
    index (value, k, support); stain-variant cluster tightness (000). Rows without run columns."""
    rows = []
    f, m = raw_labelled(emb)
    if len(m) >= 2 and m["center"].nunique() >= 2:
        w2 = be.w2_between_centers(f, m["center"], m["label"], cfg.w2_max_samples, cfg.seed, cfg.l2_normalize)
        for r in w2.itertuples():
            name = f"w2_{r.estimator}" + ("" if r.subset == "all" else f"[{r.subset}]")
            rows.append(row(test=f"{r.center_a}~{r.center_b}", metric=name, value=r.value, n=r.n_a + r.n_b, kind="w2"))
        for (est, subset), sub in w2.groupby(["estimator", "subset"]):
            name = f"w2_{est}" + ("" if subset == "all" else f"[{subset}]")
            rows.append(row(test="mean_pairs", metric=name, value=sub["value"].mean(), n=len(sub), kind="w2"))
        ks = [k for k in cfg.ri_k if k < len(m)]
        if ks and m["label"].nunique() >= 2:
            groups, how = ri_groups(m)
            ri = rob.robustness_index(f, m["label"].to_numpy(), m["center"].to_numpy(), groups, ks)
            for name in ("value", "k", "support"):
                rows.append(row(test="all", metric="ri" if name == "value" else f"ri_{name}", value=getattr(ri, name),
                                n=ri.n, kind="ri", unit=how))
    return rows + _tightness_rows(emb, cfg)


def _tightness_rows(emb: EmbeddingSet, cfg: EvalConfig) -> list[dict[str, Any]]:
    meta = emb.meta
    if meta.empty:
        return []
    raw = is_raw(meta).to_numpy()
    var = ~raw & ~is_restain(meta).to_numpy()
    if not var.any():
        return []
    per_center: dict[str, list[dict[str, float]]] = {}
    weights: dict[str, list[int]] = {}
    for store, smeta in meta[raw].groupby("store"):
        r_idx = smeta.index.to_numpy()
        vm = meta[var & (meta["store"] == store).to_numpy()]
        if vm.empty:
            continue
        order = pd.Series(np.arange(len(r_idx)), index=smeta["index"].to_numpy())
        stacks = []
        for _, one in vm.groupby(["variant_method", "variant_target"]):
            pos = order.reindex(one["index"].to_numpy())
            if pos.isna().any() or len(one) != len(r_idx):
                continue
            arr = np.empty((len(r_idx), emb.features.shape[1]), np.float64)
            arr[pos.to_numpy(dtype=int)] = emb.features[one.index.to_numpy()]
            stacks.append(arr)
        if not stacks:
            continue
        t = be.cluster_tightness(emb.features[r_idx], np.stack(stacks), l2=cfg.l2_normalize)
        center = str(smeta["center"].iloc[0])
        per_center.setdefault(center, []).append(t)
        weights.setdefault(center, []).append(len(r_idx))
    out = []
    everything: list[tuple[dict[str, float], float]] = []
    for center, ts in per_center.items():
        w = np.asarray(weights[center], float)
        for key in ts[0]:
            out.append(row(test=center, metric=f"tightness_{key}", value=float(np.average([t[key] for t in ts], weights=w)),
                           n=int(w.sum()), kind="tightness"))
        everything += list(zip(ts, w))
    if everything:
        w = np.asarray([x[1] for x in everything])
        for key in everything[0][0]:
            out.append(row(test="all", metric=f"tightness_{key}",
                           value=float(np.average([x[0][key] for x in everything], weights=w)), n=int(w.sum()),
                           kind="tightness"))
    return out


def batch_effect(runs: Mapping[tuple[str, int], EmbeddingSet], method: str, cfg: EvalConfig,
                 sources: Mapping[str, Mapping[str, Any]] | None = None) -> pd.DataFrame:
    """Per source, the mean over its seeds of every :func:`run_batch_effect` row (``seed_sd``: sd
    over seeds). With ``cfg.bootstrap_latent`` > 0 the robustness index gets a hierarchical CI
    (seeds × test units, each seed's k kept fixed)."""
    per_run = []
    for (src, seed), emb in runs.items():
        per_run += [dict(r, source=src, seed=seed) for r in run_batch_effect(emb, cfg)]
    if not per_run:
        return frame([])
    df = pd.DataFrame(per_run)
    kinds = {sid: str(s["kind"]) for sid, s in (sources or {}).items()}
    rows = []
    for (src, test, metric, kind, unit), sub in df.groupby(["source", "test", "metric", "kind", "unit"], sort=False):
        v = sub["value"].to_numpy(float)
        ci = _ri_ci(runs, src, cfg) if metric == "ri" and cfg.bootstrap_latent > 0 else (np.nan, np.nan, "")
        rows.append(row(method=method, protocol=ENCODER, source=src, source_kind=kinds.get(src, ""), test=test,
                        metric=metric, value=float(v.mean()), ci_low=ci[0], ci_high=ci[1],
                        seed_sd=float(v.std(ddof=1)) if len(v) > 1 else np.nan, n=int(sub["n"].max()),
                        n_seeds=len(v), kind=kind, unit=f"{unit}; bootstrap {ci[2]}" if ci[2] else unit))
    return frame(rows)


def _ri_ci(runs: Mapping[tuple[str, int], EmbeddingSet], src: str, cfg: EvalConfig) -> tuple[float, float, str]:
    """Hierarchical CI of the mean-over-seeds robustness index of one source (NaN when the
    seeds' test embeddings are not the same tiles)."""
    sets = [raw_labelled(emb) for (s, _), emb in sorted(runs.items()) if s == src]
    keys = [m[["store", "index"]].to_numpy().tolist() for _, m in sets]
    if any(k != keys[0] for k in keys[1:]):
        log.warning("%s: seeds embed different test tiles; no robustness-index CI", src)
        return np.nan, np.nan, ""
    meta = sets[0][1]
    groups, _ = ri_groups(meta)
    labels, centers = meta["label"].to_numpy(), meta["center"].to_numpy()
    ks = [k for k in cfg.ri_k if k < len(meta)]
    chosen = [rob.robustness_index(f, labels, centers, groups, ks).k for f, _ in sets]

    def per_seed(s: int, idx: np.ndarray) -> float:
        return rob.robustness_index(sets[s][0][idx], labels[idx], centers[idx], groups[idx], [chosen[s]]).value

    design = bs.resampling_design(centers, meta["patient"].replace("", np.nan).fillna("slide:" + meta["slide_id"]),
                                  meta["slide_id"], cfg.min_units)
    r = bs.hierarchical_bootstrap(lambda seeds, idx: bs.mean_over_seeds(seeds[0], lambda s: per_seed(s, idx)),
                                  len(sets), design, cfg.bootstrap_latent, cfg.ci, cfg.seed)
    return float(r.ci_low[0]), float(r.ci_high[0]), design.label


def subsample_for_map(emb: EmbeddingSet, max_points: int, seed: int) -> tuple[np.ndarray, pd.DataFrame]:
    """Raw test embeddings (at most ``max_points``, seeded) for the 2-D map."""
    raw = is_raw(emb.meta).to_numpy()
    f, m = emb.features[raw], emb.meta[raw].reset_index(drop=True)
    if len(m) <= max_points:
        return f, m
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(len(m), size=max_points, replace=False))
    return f[keep], m.iloc[keep].reset_index(drop=True)


# --------------------------------------------------------------------------- learning
LEARNING_SCALARS = ("epochs", "tiles", "images_seen", "seconds")


def _centers_text(centers: str | Iterable[str] | None) -> str:
    """A run's training centers as the predictions write them (``a+b``), from the summary's joined
    string or a list."""
    if not centers:
        return ""
    return join_centers(split_centers(centers) if isinstance(centers, str) else centers)


def read_train_summary(path: str | os.PathLike) -> dict[str, Any]:
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


# --------------------------------------------------------------------------- paired comparisons
#: (metric, aggregate) pairs compared with the reference: Δ of the unseen-center mean and of the drop
PAIRED = (("accuracy", "unseen"), ("balanced_accuracy", "unseen"), ("auc", "unseen"),
          ("accuracy", "drop"), ("balanced_accuracy", "drop"))


def compare_methods(preds: Mapping[str, pd.DataFrame], cfg: EvalConfig,
                    sources: Mapping[str, Mapping[str, Any]] | None = None) -> pd.DataFrame:
    """Every method vs ``cfg.reference``, per protocol, on the sources both have (grouped: the
    ``center``-kind sources = ``each``, the ``loco`` sources = ``loco``), their common seeds and
    common raw test tiles: Δ = method − reference of the unseen-center mean (accuracy, balanced
    accuracy, AUC) and of the drop (seen − unseen; accuracy, balanced accuracy), averaged over the
    group's sources. Paired by seed (seed s of the method against seed s of the reference, the
    seeds of each source drawn once per replicate for both) and by resampled test units; CI and
    two-sided p-value from the hierarchical bootstrap. A method without ``native`` predictions
    (its seed's downstream is the frozen-feature probe) is compared by its probe (note "native = probe")."""
    ref = cfg.reference
    if ref not in preds:
        return frame([])
    preds = {m: normalize_predictions(p) for m, p in preds.items()}
    infos = source_infos(pd.concat([p[["source", "source_kind"]] for p in preds.values()]), sources)
    rows: list[dict[str, Any]] = []
    for protocol in PROTOCOLS:
        ref_scores, ref_note = _scores_or_probe(preds[ref], protocol, list(infos))
        if ref_scores is None:
            continue
        for method, p in preds.items():
            if method == ref:
                continue
            scores, note = _scores_or_probe(p, protocol, list(infos))
            if scores is None:
                continue
            notes = "; ".join(x for x in (note and f"{method}: {note}", ref_note and f"{ref}: {ref_note}") if x)
            rows += _paired_rows(method, ref, protocol, scores, ref_scores, infos, cfg, notes)
    return frame(rows)


def _scores_or_probe(preds: pd.DataFrame, protocol: str, order: list[str]) -> tuple[RunScores | None, str]:
    scores = run_scores(preds, protocol, order)
    if scores is None and protocol == "native":
        return run_scores(preds, "probe", order), "native = probe"
    return scores, ""


def _paired_rows(method: str, ref: str, protocol: str, a: RunScores, b: RunScores, infos: Mapping[str, SourceInfo],
                 cfg: EvalConfig, note: str) -> list[dict]:
    rows = []
    keys = pd.MultiIndex.from_frame(a.tiles[["store", "index"]]).intersection(
        pd.MultiIndex.from_frame(b.tiles[["store", "index"]]), sort=False)
    seeds = [s for s in a.seeds if s in b.seeds]
    if len(keys) == 0 or not seeds:
        return rows
    for group, kind in ((HEADLINE_SOURCE, "center"), (LOCO_SOURCE, "loco")):
        shared = [s for s in a.sources if s in b.sources and infos[s].kind == kind]
        if not shared:
            continue
        sa, sb = a.restrict(keys, shared, seeds), b.restrict(keys, shared, seeds)
        unseen = sa.unseen() & sb.unseen()
        metrics = list(dict.fromkeys(m for m, _ in PAIRED))
        # position of each PAIRED entry in the (aggregate, metric) matrix: aggregate 0 = unseen, 2 = drop
        wanted = [(0 if agg == "unseen" else 2, metrics.index(m)) for m, agg in PAIRED]

        def statistic(drawn: np.ndarray, idx: np.ndarray) -> np.ndarray:
            parts = sa.split(idx)
            delta = np.stack([bs.mean_over_seeds(drawn[k], lambda s, k=k: (sa.cells(k, s, parts, metrics)
                                                                            - sb.cells(k, s, parts, metrics)).ravel())
                              .reshape(len(sa.tests), len(metrics)) for k in range(len(shared))])
            agg = _nanmean(source_aggregates(delta, unseen), axis=1)  # (3, M): mean over the group's sources
            return np.array([agg[i, j] for i, j in wanted])

        design = sa.design(cfg.min_units)
        r = bs.hierarchical_bootstrap(statistic, len(seeds), design, cfg.bootstrap, cfg.ci, cfg.seed,
                                      n_streams=len(shared))
        for j, (m, agg) in enumerate(PAIRED):
            rows.append(row(method=method, protocol=protocol, source=group, source_kind=kind, test=f"vs_{ref}",
                            metric=f"delta_{agg}_{m}", value=r.value[j], ci_low=r.ci_low[j], ci_high=r.ci_high[j],
                            p_value=r.p_value[j], seed_sd=r.seed_sd[j], n=len(keys), n_seeds=len(seeds),
                            kind="paired", unit=design.label,
                            note="; ".join(x for x in (f"sources: {', '.join(shared)}", note) if x)))
    return rows
