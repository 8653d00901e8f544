"""Paired method comparisons: method − reference, paired by replicate seed and test units."""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import pandas as pd

from .. import bootstrap as bs
from .common import HEADLINE_SOURCE, LOCO_SOURCE, PROTOCOLS, EvalConfig, _nanmean, frame, row
from .runs import RunScores, SourceInfo, normalize_predictions, run_scores, source_aggregates, source_infos

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
