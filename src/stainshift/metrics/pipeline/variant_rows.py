"""Normalized-variant rows (accuracy per variant, mean ± std, cross-stain consistency) and the
stain-robustness curve (metric vs H&E re-staining strength, and its area)."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from ...stain.targets import restain_strength
from .. import bootstrap as bs
from .. import variants as va
from .common import HEADLINE_SOURCE, PROTOCOLS, EvalConfig, _nanmean, frame, is_raw, is_restain, row
from .runs import (
    RunScores,
    SourceInfo,
    active_metrics,
    mark_seen,
    normalize_predictions,
    run_scores,
    source_aggregates,
    source_infos,
)


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
