"""Cross-center tables: per (source, test center) cells, unseen / seen means, drop, headline,
leave-one-center-out, per-test-center unseen view, near-constant heads and chance rows."""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import pandas as pd

from .. import bootstrap as bs
from .. import cross_center as cc
from .common import HEADLINE_SOURCE, LOCO_SOURCE, PROTOCOLS, EvalConfig, _nanmean, frame, is_raw, row
from .runs import (
    RunScores,
    SourceInfo,
    active_metrics,
    normalize_predictions,
    run_scores,
    source_aggregates,
    source_infos,
)


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
