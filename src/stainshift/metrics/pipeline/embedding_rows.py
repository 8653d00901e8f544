"""Latent batch effect of the encoders: W2 between centers, PathoROB robustness index (croma),
stain-variant cluster tightness, and the point subsample of the embedding map."""
from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from ...stain.targets import RESTAIN
from .. import batch_effect as be
from .. import bootstrap as bs
from .. import robustness as rob
from .. import variants as va
from .common import ENCODER, EvalConfig, frame, is_raw, is_restain, row

log = logging.getLogger("stainshift.metrics.pipeline")


# --------------------------------------------------------------------------- embeddings / batch effect
@dataclass
class EmbeddingSet:
    """Embeddings of several stores stacked: ``features`` (N, D) and per-row ``meta``
    (store, slide_id, patient, center, split, variant_method, variant_target, index, label)."""

    features: np.ndarray
    meta: pd.DataFrame
    n_total: int = -1   # tiles in the files before the latent subsample (-1: not subsampled)

    @property
    def subsample_note(self) -> str:
        """Report note when the rows are a subsample (``evaluate.latent_max_tiles``), else ""."""
        if self.n_total < 0 or self.n_total == len(self.features):
            return ""
        return (f"latent subsample: {len(self.features)} of {self.n_total} tiles, the same tiles of a store in "
                f"every variant (evaluate.latent_max_tiles)")


def latent_rows(paths: Sequence[str | os.PathLike], max_tiles: int | None, seed: int) -> dict[str, np.ndarray | None]:
    """Rows to read per file so that at most ~``max_tiles`` tiles are held: ceil(max_tiles / S) per
    store (S = distinct stores; a store and its variants share the draw, seeded by (seed, store)),
    all of a smaller store. ``None`` = every row. Memory of the latent metrics is then bounded by
    the key, not by the study size."""
    from stainshift.embeddings import embeddings_count

    if not max_tiles:
        return {str(p): None for p in paths}
    stores = {str(p): _store_of(p) for p in paths}
    per_store = -(-int(max_tiles) // max(1, len(set(stores.values()))))
    out: dict[str, np.ndarray | None] = {}
    for p, store in stores.items():
        n = embeddings_count(p)
        if n <= per_store:
            out[p] = None
            continue
        key = int.from_bytes(hashlib.sha256(f"{seed}:{store}".encode()).digest()[:8], "little")
        out[p] = np.sort(np.random.default_rng(key).choice(n, per_store, replace=False))
    return out


def _store_of(path: str | os.PathLike) -> str:
    """The base store of an embeddings file: ``stores/{store}.h5`` or ``stores/variants/{store}/…``."""
    parts = Path(path).parts
    if "variants" in parts:
        return parts[parts.index("variants") + 1]
    return Path(path).stem


def load_embedding_set(paths: Sequence[str | os.PathLike], max_tiles: int | None = None,
                       seed: int = 0) -> EmbeddingSet:
    """Concatenate the HDF5 embeddings of ``paths`` (features + per-tile metadata); with
    ``max_tiles`` a seeded per-store subsample (:func:`latent_rows`), ``n_total`` recording the
    tiles before it."""
    from stainshift.embeddings import embeddings_count, read_embeddings

    rows_of = latent_rows(paths, max_tiles, seed)
    n_total = sum(embeddings_count(p) for p in paths) if max_tiles else -1
    feats, metas = [], []
    for p in paths:
        e = read_embeddings(p, rows_of[str(p)])
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
    return EmbeddingSet(np.concatenate(feats), pd.concat(metas, ignore_index=True), n_total)


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
    return EmbeddingSet(emb.features, meta, emb.n_total)


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
    notes = {src: emb.subsample_note for (src, _), emb in runs.items() if emb.subsample_note}
    rows = []
    for (src, test, metric, kind, unit), sub in df.groupby(["source", "test", "metric", "kind", "unit"], sort=False):
        v = sub["value"].to_numpy(float)
        ci = _ri_ci(runs, src, cfg) if metric == "ri" and cfg.bootstrap_latent > 0 else (np.nan, np.nan, "")
        rows.append(row(method=method, protocol=ENCODER, source=src, source_kind=kinds.get(src, ""), test=test,
                        metric=metric, value=float(v.mean()), ci_low=ci[0], ci_high=ci[1],
                        seed_sd=float(v.std(ddof=1)) if len(v) > 1 else np.nan, n=int(sub["n"].max()),
                        n_seeds=len(v), kind=kind, unit=f"{unit}; bootstrap {ci[2]}" if ci[2] else unit,
                        note=notes.get(src, "")))
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
