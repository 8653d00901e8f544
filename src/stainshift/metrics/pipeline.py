"""The evaluate stage as library calls: predictions table + embeddings → tidy long metric tables.

Inputs are the formats owned by :mod:`stainshift.embeddings` (the predictions CSV of a method and
its HDF5 embeddings). Outputs are long frames with one row per
``(method, train, test, metric, value, ci_low, ci_high)`` plus ``n``, ``kind`` and ``unit``
columns:

* cross-center (``kind`` = cell | mean_off_diagonal | drop): raw test stores only;
* variants (``kind`` = variant | summary): every normalized variant of the test stores and raw;
* batch effect (``kind`` = w2 | ri | tightness): encoder embeddings of the raw test stores
  (``train`` = "encoder": no fine-tuned head is involved).
"""
from __future__ import annotations

import logging
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from . import batch_effect as be
from . import bootstrap as bs
from . import cross_center as cc
from . import robustness as rob
from . import variants as va

log = logging.getLogger(__name__)

COLUMNS = ["method", "train", "test", "metric", "value", "ci_low", "ci_high", "n", "kind", "unit"]
ENCODER = "encoder"


@dataclass
class EvalConfig:
    """The ``evaluate:`` section of the workflow config (defaults = the demo's)."""

    bootstrap: int = 200
    bootstrap_latent: int = 0          # replicates for the robustness-index CI (0 = no CI)
    seed: int = 0
    ci: float = 0.95
    min_slides: int = 5                # fewer slides per test center -> resample tiles
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
    """``df.to_csv`` through a temporary file + os.replace."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        df.to_csv(tmp, index=False, float_format="%.6g")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _rows(method: str, train: str, test: str, metric: str, value: float, lo: float = np.nan, hi: float = np.nan,
          n: int = 0, kind: str = "", unit: str = "") -> dict[str, Any]:
    return dict(method=method, train=train, test=test, metric=metric, value=float(value), ci_low=float(lo),
                ci_high=float(hi), n=int(n), kind=kind, unit=unit)


def is_raw(df: pd.DataFrame) -> pd.Series:
    return df["variant_method"].astype(str).isin([va.RAW, "", "nan", "none"])


# --------------------------------------------------------------------------- cross-center
def _groups_for(df: pd.DataFrame, cfg: EvalConfig, strata: np.ndarray | None = None) -> np.ndarray | None:
    slides = df["slide_id"].astype(str).to_numpy() if "slide_id" in df else None
    return bs.resampling_groups(slides, strata, cfg.min_slides)


def cross_center(preds: pd.DataFrame, method: str, cfg: EvalConfig) -> pd.DataFrame:
    """Cross-center cells with slide-bootstrap CIs, the mean off-diagonal headline per train center
    (000 Table IV) and the cross-center drop = in-center − mean off-diagonal, each with a CI from
    a bootstrap stratified by test center (same resampled tiles for the whole row)."""
    raw = preds[is_raw(preds) & (preds["label"] >= 0)].reset_index(drop=True)
    pcols = cc.proba_columns(raw)
    rows = []
    for (train, test), sub in raw.groupby(["train", "test"], sort=True):
        y = sub["label"].to_numpy()
        p = sub[pcols].to_numpy(dtype=np.float64)
        yhat = p.argmax(1)
        groups = _groups_for(sub, cfg)
        for m in cfg.metrics:
            f = cc.METRIC_FUNCS[m]
            r = bs.bootstrap_ci(lambda idx: f(y[idx], p[idx], yhat[idx]), len(y), groups=groups,
                                n_boot=cfg.bootstrap, ci=cfg.ci, seed=cfg.seed)
            rows.append(_rows(method, train, test, m, r.value, r.ci_low, r.ci_high, len(y),
                              "cell" if train != test else "in_center", r.unit))
    tests = sorted(raw["test"].unique())
    for train, sub in raw.groupby("train", sort=True):
        if train not in tests or len(tests) < 2:
            continue
        strata = sub["test"].to_numpy()
        y = sub["label"].to_numpy()
        p = sub[pcols].to_numpy(dtype=np.float64)
        yhat = p.argmax(1)
        groups = _groups_for(sub, cfg, strata)
        for m in cfg.metrics:
            f = cc.METRIC_FUNCS[m]

            def off(idx, f=f):
                vals = [f(y[idx][strata[idx] == t], p[idx][strata[idx] == t], yhat[idx][strata[idx] == t])
                        for t in tests if t != train]
                return float(np.nanmean(vals)) if np.isfinite(vals).any() else np.nan

            def drop(idx, f=f, off=off):
                s = strata[idx]
                return f(y[idx][s == train], p[idx][s == train], yhat[idx][s == train]) - off(idx)

            r = bs.bootstrap_ci(off, len(y), groups=groups, strata=strata, n_boot=cfg.bootstrap, ci=cfg.ci, seed=cfg.seed)
            rows.append(_rows(method, train, cc.OFF_DIAGONAL, m, r.value, r.ci_low, r.ci_high,
                              int((strata != train).sum()), "mean_off_diagonal", r.unit))
            r = bs.bootstrap_ci(drop, len(y), groups=groups, strata=strata, n_boot=cfg.bootstrap, ci=cfg.ci, seed=cfg.seed)
            rows.append(_rows(method, train, cc.DROP, m, r.value, r.ci_low, r.ci_high, len(y), "drop", r.unit))
    return pd.DataFrame(rows, columns=COLUMNS)


# --------------------------------------------------------------------------- variants
def variant_matrix(preds: pd.DataFrame, train: str) -> tuple[pd.DataFrame, dict[str, np.ndarray], np.ndarray]:
    """Predictions of one head aligned over variants: tiles present in every variant
    (keyed by store, index), returns (tile table, {variant: pred}, labels)."""
    sub = preds[(preds["train"] == train) & (preds["label"] >= 0)].copy()
    sub["variant"] = [va.variant_name(m, t) for m, t in zip(sub["variant_method"].astype(str), sub["variant_target"].astype(str))]
    piv = sub.pivot_table(index=["store", "index"], columns="variant", values="pred", aggfunc="first")
    piv = piv.dropna(axis=0, how="any")
    tiles = sub.drop_duplicates(["store", "index"]).set_index(["store", "index"]).loc[piv.index].reset_index()
    preds_by_v = {v: piv[v].to_numpy(dtype=np.int64) for v in piv.columns}
    return tiles, preds_by_v, tiles["label"].to_numpy()


def variant_robustness(preds: pd.DataFrame, method: str, cfg: EvalConfig) -> pd.DataFrame:
    """Per train center: accuracy on every variant (raw + each method/target) of the pooled test
    tiles, mean ± std over variants (000 BRACS70), cross-stain consistency in all variants and in
    ≥ k = ⌈share·V⌉ of them (000 supplement) and the share of those consistent tiles that are right.
    CIs: bootstrap over slides (or tiles) stratified by test center."""
    rows = []
    for train in sorted(preds["train"].unique()):
        tiles, pv, y = variant_matrix(preds, train)
        if len(tiles) == 0 or not pv:
            continue
        names = sorted(pv, key=lambda v: (v != va.RAW, v))
        mat = np.stack([pv[v] for v in names])
        k = va.min_agree_from_share(len(names), cfg.consistency_share)
        strata = tiles["test"].to_numpy()
        groups = _groups_for(tiles, cfg, strata)
        boot = dict(groups=groups, strata=strata, n_boot=cfg.bootstrap, ci=cfg.ci, seed=cfg.seed)
        for i, v in enumerate(names):
            r = bs.bootstrap_ci(lambda idx, i=i: float(np.mean(mat[i, idx] == y[idx])), len(y), **boot)
            rows.append(_rows(method, train, v, "accuracy", r.value, r.ci_low, r.ci_high, len(y), "variant", r.unit))
        stats: dict[str, Callable[[np.ndarray], float]] = {
            "accuracy_mean": lambda idx: float(np.mean(mat[:, idx] == y[idx][None])),
            "accuracy_std": lambda idx: va.mean_std_over_variants(np.mean(mat[:, idx] == y[idx][None], axis=1))[1],
            "consistency_all": lambda idx: va.cross_stain_consistency(mat[:, idx]),
            f"consistency_ge_{k}": lambda idx: va.cross_stain_consistency(mat[:, idx], k),
            f"consistent_ge_{k}_correct": lambda idx: va.consistent_and_correct(mat[:, idx], y[idx], k),
        }
        for name, f in stats.items():
            r = bs.bootstrap_ci(f, len(y), **boot)
            rows.append(_rows(method, train, "over_variants", name, r.value, r.ci_low, r.ci_high, len(y), "summary", r.unit))
        rows.append(_rows(method, train, "over_variants", "n_variants", len(names), n=len(y), kind="summary"))
    return pd.DataFrame(rows, columns=COLUMNS)


# --------------------------------------------------------------------------- embeddings / batch effect
@dataclass
class EmbeddingSet:
    """Embeddings of several stores stacked: ``features`` (N, D) and per-row ``meta``
    (store, slide_id, center, split, variant_method, variant_target, index, label)."""

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
            "center": str(a.get("center", "")), "split": str(a.get("split", "")),
            "variant_method": str(a.get("variant_method", va.RAW) or va.RAW),
            "variant_target": str(a.get("variant_target", va.RAW) or va.RAW),
            "index": np.asarray(e["index"], np.int64), "label": np.asarray(e["label"], np.int64)}, index=range(n)))
    if not feats:
        return EmbeddingSet(np.zeros((0, 0), np.float32), pd.DataFrame())
    return EmbeddingSet(np.concatenate(feats), pd.concat(metas, ignore_index=True))


def crop_groups(store_paths: Mapping[str, str | os.PathLike]) -> pd.DataFrame:
    """Per-tile source groups (slides) of crop-set stores: the ``crop_groups`` attr written by
    :mod:`stainshift.cropsets` (one entry per tile). Rows (store, index, slide_id); slide stores
    (one slide per store, no such attr) contribute nothing."""
    from stainshift.store import PatchStore

    frames = []
    for store, path in store_paths.items():
        if not Path(path).exists():
            continue
        groups = PatchStore.open(path).attrs.get("crop_groups")
        if not groups:
            continue
        frames.append(pd.DataFrame({"store": store, "index": np.arange(len(groups), dtype=np.int64),
                                    "slide_id": [f"{store}:{g}" if str(g).startswith("crop") else str(g) for g in groups]}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["store", "index", "slide_id"])


def with_tile_groups(preds: pd.DataFrame, groups: pd.DataFrame) -> pd.DataFrame:
    """``preds`` with ``slide_id`` replaced by the per-tile group where one is known."""
    if groups.empty:
        return preds
    key = groups.set_index(["store", "index"])["slide_id"]
    found = key.reindex(pd.MultiIndex.from_arrays([preds["store"].astype(str), preds["index"].astype(np.int64)])).to_numpy()
    out = preds.copy()
    out["slide_id"] = np.where(pd.isna(found), out["slide_id"].astype(str).to_numpy(), found)
    return out


def evaluation_embedding_paths(manifest: pd.DataFrame, preds: pd.DataFrame | None = None,
                               split: str = "test") -> list[str]:
    """Embedding files to evaluate from the embed rule's ``manifest.csv`` (path, store, split,
    center, variant_method, variant_target, ...): raw stores of the test split and every variant
    of them (only stores that the predictions table scores, when given)."""
    m = manifest.copy()
    raw = m["variant_method"].fillna(va.RAW).isin([va.RAW, ""])
    test_stores = set(m.loc[raw & (m["split"] == split), "store"])
    if preds is not None and len(preds):
        test_stores &= set(preds["store"].astype(str))
    keep = m["store"].isin(test_stores)
    return sorted(m.loc[keep, "path"].astype(str))


def attach_tile_slides(emb: EmbeddingSet, preds: pd.DataFrame | None) -> EmbeddingSet:
    """Per-tile slide ids from the predictions table (crop sets carry source slides there), else
    the store's slide_id attr."""
    if preds is None or "slide_id" not in preds:
        return emb
    key = preds.drop_duplicates(["store", "index"]).set_index(["store", "index"])["slide_id"].astype(str)
    idx = pd.MultiIndex.from_arrays([emb.meta["store"], emb.meta["index"]])
    found = key.reindex(idx).to_numpy()
    meta = emb.meta.copy()
    meta["slide_id"] = np.where(pd.isna(found), meta["slide_id"].to_numpy(), found)
    return EmbeddingSet(emb.features, meta)


def batch_effect(emb: EmbeddingSet, method: str, cfg: EvalConfig) -> pd.DataFrame:
    """W2 between every pair of centers (Gaussian and exact, overall and per class; 003 Fig. 2),
    their mean over pairs, the k-NN robustness index in both forms (with k, support and the
    k-NN balanced accuracy), and stain-variant cluster tightness (000), on raw test embeddings."""
    rows = []
    meta = emb.meta
    raw_mask = is_raw(meta).to_numpy() & (meta["label"].to_numpy() >= 0)
    f, m = emb.features[raw_mask], meta[raw_mask].reset_index(drop=True)
    if len(m) >= 2 and m["center"].nunique() >= 2:
        w2 = be.w2_between_centers(f, m["center"], m["label"], cfg.w2_max_samples, cfg.seed, cfg.l2_normalize)
        for r in w2.itertuples():
            name = f"w2_{r.estimator}" + ("" if r.subset == "all" else f"[{r.subset}]")
            rows.append(_rows(method, ENCODER, f"{r.center_a}~{r.center_b}", name, r.value, n=r.n_a + r.n_b, kind="w2"))
        for (est, subset), sub in w2.groupby(["estimator", "subset"]):
            name = f"w2_{est}" + ("" if subset == "all" else f"[{subset}]")
            rows.append(_rows(method, ENCODER, "mean_pairs", name, sub["value"].mean(), n=len(sub), kind="w2"))
        ks = [k for k in cfg.ri_k if k < len(m)]
        if ks and m["label"].nunique() >= 2:
            groups = m["slide_id"].astype(str).to_numpy()
            # With a single slide per center, excluding same-slide neighbours would exclude every
            # same-center neighbour (OS ≡ 0, RI_P ≡ 1): then only the tile itself is excluded.
            per_center = m.groupby("center")["slide_id"].nunique()
            ri_unit = "slide-excluded" if (per_center >= 2).all() else "self-excluded"
            if ri_unit == "self-excluded":
                groups = np.array([f"tile{i}" for i in range(len(m))])
            ri = rob.robustness_index(f, m["label"].to_numpy(), m["center"].to_numpy(), groups, ks)
            lo = {"pathorob": (np.nan, np.nan), "de_jong": (np.nan, np.nan)}
            unit = ri_unit
            if cfg.bootstrap_latent > 0:
                g = bs.resampling_groups(m["slide_id"].astype(str).to_numpy(), m["center"].to_numpy(), cfg.min_slides)
                # resampled copies keep their slide id, so a duplicate is never its own neighbour;
                # both forms come from the same replicates (same seed), computed once each
                memo: dict[bytes, rob.RobustnessIndexResult] = {}

                def ri_at(idx: np.ndarray) -> rob.RobustnessIndexResult:
                    key = idx.tobytes()
                    if key not in memo:
                        memo[key] = rob.robustness_index(f[idx], m["label"].to_numpy()[idx],
                                                         m["center"].to_numpy()[idx], groups[idx], [ri.k])
                    return memo[key]

                for form in lo:
                    r = bs.bootstrap_ci(
                        lambda idx, form=form: getattr(ri_at(idx), form),
                        len(m), groups=g, strata=m["center"].to_numpy(), n_boot=cfg.bootstrap_latent, ci=cfg.ci, seed=cfg.seed)
                    lo[form] = (r.ci_low, r.ci_high)
                unit = f"{ri_unit}; bootstrap {r.unit}"
            rows.append(_rows(method, ENCODER, "all", "ri_pathorob", ri.pathorob, *lo["pathorob"], ri.n, "ri", unit))
            rows.append(_rows(method, ENCODER, "all", "ri_de_jong", ri.de_jong, *lo["de_jong"], ri.n, "ri", unit))
            for name in ("k", "support", "knn_balanced_accuracy", "ss", "so", "os", "oo"):
                rows.append(_rows(method, ENCODER, "all", f"ri_{name}", getattr(ri, name), n=ri.n, kind="ri", unit=ri_unit))
    rows += [_rows(method, ENCODER, *r[1:]) for r in _tightness_rows(emb, cfg)]
    return pd.DataFrame(rows, columns=COLUMNS)


def _tightness_rows(emb: EmbeddingSet, cfg: EvalConfig) -> list[tuple]:
    meta = emb.meta
    if meta.empty:
        return []
    raw = is_raw(meta).to_numpy()
    var = ~raw
    if not var.any():
        return []
    out: list[tuple] = []
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
    allw = []
    for center, ts in per_center.items():
        w = np.asarray(weights[center], float)
        for key in ts[0]:
            v = float(np.average([t[key] for t in ts], weights=w))
            out.append(("", center, f"tightness_{key}", v, np.nan, np.nan, int(w.sum()), "tightness", ""))
        allw += [(t, wi) for t, wi in zip(ts, w)]
    if allw:
        w = np.asarray([x[1] for x in allw])
        for key in allw[0][0]:
            v = float(np.average([x[0][key] for x in allw], weights=w))
            out.append(("", "all", f"tightness_{key}", v, np.nan, np.nan, int(w.sum()), "tightness", ""))
    return out


def subsample_for_map(emb: EmbeddingSet, max_points: int, seed: int) -> tuple[np.ndarray, pd.DataFrame]:
    """Raw test embeddings (at most ``max_points``, seeded, stratified by center) for the 2-D map."""
    raw = is_raw(emb.meta).to_numpy()
    f, m = emb.features[raw], emb.meta[raw].reset_index(drop=True)
    if len(m) <= max_points:
        return f, m
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(len(m), size=max_points, replace=False))
    return f[keep], m.iloc[keep].reset_index(drop=True)


# --------------------------------------------------------------------------- paired comparisons
def _accuracy_by_cell(preds: pd.DataFrame) -> tuple[pd.DataFrame, list[str], list[str]]:
    raw = preds[is_raw(preds) & (preds["label"] >= 0)]
    raw = raw.assign(correct=(raw["pred"] == raw["label"]).astype(float))
    wide = raw.pivot_table(index=["store", "index"], columns="train", values="correct", aggfunc="first")
    info = raw.drop_duplicates(["store", "index"]).set_index(["store", "index"])[["test", "slide_id", "label"]]
    return wide.join(info), sorted(raw["train"].unique()), sorted(raw["test"].unique())


def _drop_and_off(correct: np.ndarray, test: np.ndarray, trains: list[str], tests: list[str]) -> tuple[float, float]:
    """Mean over train centers (that are test centers) of the mean off-diagonal accuracy and of
    the drop in-center − off-diagonal, from a (N, T) correctness matrix."""
    offs, drops = [], []
    acc = {te: np.nanmean(correct[test == te], axis=0) if (test == te).any() else np.full(len(trains), np.nan) for te in tests}
    for j, tr in enumerate(trains):
        if tr not in tests:
            continue
        off = np.nanmean([acc[te][j] for te in tests if te != tr])
        offs.append(off)
        drops.append(acc[tr][j] - off)
    return (float(np.nanmean(offs)) if offs else np.nan, float(np.nanmean(drops)) if drops else np.nan)


def compare_methods(preds: Mapping[str, pd.DataFrame], cfg: EvalConfig) -> pd.DataFrame:
    """Every method vs ``cfg.reference`` on the same raw test tiles (inner join on store, index):
    per method the mean cross-center drop (in-center − mean off-diagonal accuracy, averaged over
    train centers) and mean off-diagonal accuracy with CIs, and the paired differences to the
    reference (paired slide bootstrap, stratified by test center: CI and p-value)."""
    rows = []
    cells = {m: _accuracy_by_cell(p) for m, p in preds.items()}
    for m, (wide, trains, tests) in cells.items():
        correct = wide[trains].to_numpy(dtype=float)
        test = wide["test"].to_numpy()
        groups = bs.resampling_groups(wide["slide_id"].astype(str).to_numpy(), test, cfg.min_slides)
        for j, name in enumerate(("mean_off_diagonal_accuracy", "cross_center_drop")):
            r = bs.bootstrap_ci(lambda idx, j=j: _drop_and_off(correct[idx], test[idx], trains, tests)[j], len(test),
                                groups=groups, strata=test, n_boot=cfg.bootstrap, ci=cfg.ci, seed=cfg.seed)
            rows.append(_rows(m, "each", "mean", name, r.value, r.ci_low, r.ci_high, len(test), "headline", r.unit))
    ref = cfg.reference
    if ref not in cells:
        return pd.DataFrame(rows, columns=COLUMNS)
    ref_wide, ref_trains, _ = cells[ref]
    for m, (wide, trains, tests) in cells.items():
        if m == ref:
            continue
        common_tr = [t for t in trains if t in ref_trains]
        ref_cols = ref_wide[common_tr].rename(columns={t: f"{t}__ref" for t in common_tr})
        joined = wide[common_tr + ["test", "slide_id"]].join(ref_cols, how="inner")
        if joined.empty:
            continue
        a = joined[common_tr].to_numpy(dtype=float)
        b = joined[[f"{t}__ref" for t in common_tr]].to_numpy(dtype=float)
        test = joined["test"].to_numpy()
        tests_j = sorted(set(test))
        groups = bs.resampling_groups(joined["slide_id"].astype(str).to_numpy(), test, cfg.min_slides)
        for j, name in enumerate(("mean_off_diagonal_accuracy", "cross_center_drop")):
            r = bs.paired_bootstrap_test(lambda idx, j=j: _drop_and_off(a[idx], test[idx], common_tr, tests_j)[j],
                                         lambda idx, j=j: _drop_and_off(b[idx], test[idx], common_tr, tests_j)[j],
                                         len(test), groups=groups, strata=test, n_boot=cfg.bootstrap, ci=cfg.ci,
                                         seed=cfg.seed)
            rows.append(_rows(m, "each", f"vs_{ref}", f"delta_{name}", r.diff, r.ci_low, r.ci_high, len(test),
                              "paired", r.unit))
            rows.append(_rows(m, "each", f"vs_{ref}", f"p_{name}", r.p_value, n=len(test), kind="paired", unit=r.unit))
        # McNemar on the pooled off-diagonal predictions of every train center
        ca, cb = [], []
        for jt, tr in enumerate(common_tr):
            off = test != tr
            ca.append(a[off, jt])
            cb.append(b[off, jt])
        p = bs.mcnemar_test(np.concatenate(ca) > 0.5, np.concatenate(cb) > 0.5)
        rows.append(_rows(m, "each", f"vs_{ref}", "p_mcnemar_off_diagonal", p, n=len(test), kind="paired", unit="tile"))
    return pd.DataFrame(rows, columns=COLUMNS)
