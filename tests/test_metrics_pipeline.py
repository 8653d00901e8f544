"""The evaluate stage's library half on a synthetic study laid out as the workflow lays out runs
(one predictions CSV, embedding manifest and train_summary.json per (method, source, seed)) →
tidy long tables with the right shape and provenance."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stainshift import embeddings as emb_io
from stainshift.metrics import pipeline as pl
from stainshift.protocol import join_centers, parse_sources

CENTERS = ["ca", "cb", "cc"]
SOURCES = parse_sources(["each", "loco"], CENTERS)
SEEDS = [0, 1]
VARIANTS = [("raw", "raw"), ("reinhard", "t1"), ("macenko", "t2")]
# per test center: (patients, slides per patient); cc has 2 patients with 3 slides each -> slide unit
LAYOUT = {"ca": (6, 1), "cb": (6, 2), "cc": (2, 3)}
TILES_PER_SLIDE = 5


def study_tiles() -> pd.DataFrame:
    """Every raw test tile: store (one per slide), index, center, slide, patient, label."""
    rows = []
    for center, (n_pat, per_pat) in LAYOUT.items():
        for p in range(n_pat):
            for s in range(per_pat):
                store = f"{center}_p{p}_s{s}"
                for i in range(TILES_PER_SLIDE):
                    rows.append(dict(store=store, index=i, test=center, slide_id=store, patient=f"{center}_p{p}",
                                     label=(i + p) % 2))
    return pd.DataFrame(rows)


EMBEDDED = ("ca", "loco-ca")  # sources whose runs get embedding files (enough for the latent tests, and fast)


def synthetic_runs(root: Path, methods=("baseline", "robust"), seed: int = 0) -> Path:
    """Runs of two methods under the each + loco protocol with 2 replicate seeds: ``baseline``
    is right on 92 % of the tiles of the centers its source saw and 62 % of the others (and
    worse on normalized variants); ``robust`` is right on 85 % everywhere. ``baseline`` has probe
    and native rows, ``robust`` probe only (its seed's downstream is the probe). The baseline's
    embeddings carry a center offset and move under normalization, the robust ones do not (only
    the runs of the :data:`EMBEDDED` sources have embeddings). ``robust``'s run (cc, seed 1) did
    not learn."""
    rng = np.random.default_rng(seed)
    tiles = study_tiles()
    class_dir = rng.normal(size=(2, 8)) * 2.0
    center_dir = {c: rng.normal(size=8) * 3.0 for c in CENTERS}
    base = class_dir[tiles["label"]] + rng.normal(size=(len(tiles), 8))
    for method in methods:
        shifted = method == "baseline"
        for src in SOURCES.values():
            centers = join_centers(src.centers)
            for sd in SEEDS:
                frames, manifest = [], []
                run_dir = root / "embeddings" / method / src.id / f"seed{sd}"
                for protocol in (("probe", "native") if shifted else ("probe",)):
                    for vm, vt in VARIANTS:
                        seen = tiles["test"].isin(src.centers).to_numpy()
                        acc = np.where(seen | (not shifted), 0.92 if shifted else 0.85, 0.62) - (0.1 if shifted and vm != "raw" else 0)
                        right = rng.random(len(tiles)) < acc + 0.01 * sd
                        pred = np.where(right, tiles["label"], 1 - tiles["label"])
                        p1 = np.clip(np.where(pred == 1, 0.75, 0.25) + rng.normal(0, 0.1, len(tiles)), 0.01, 0.99)
                        frames.append(tiles.assign(
                            method=method, source=src.id, source_kind=src.kind, seed=sd, protocol=protocol,
                            encoder_centers=centers, head_centers=centers, split="test", variant_method=vm,
                            variant_target=vt, p0=1 - p1, p1=p1, pred=pred, threshold=0.5 + 0.02 * sd))
                for store, part in tiles.groupby("store", sort=False) if src.id in EMBEDDED else ():
                    for vm, vt in VARIANTS:
                        jitter = rng.normal(size=(len(part), 8)) * (0.8 if shifted and vm != "raw" else 0.05)
                        feats = base[part.index] + (center_dir[part["test"].iloc[0]] if shifted else 0) + jitter
                        path = run_dir / (f"{store}.h5" if vm == "raw" else f"variants/{store}/{vm}/{vt}.h5")
                        emb_io.write_embeddings(path, feats, coords=np.full((len(part), 2), -1), label=part["label"],
                                                index=part["index"], attrs=dict(
                                                    method=method, store=store, slide_id=store, center=part["test"].iloc[0],
                                                    split="test", patient=part["patient"].iloc[0],
                                                    variant_method=vm, variant_target=vt))
                        manifest.append(dict(path=str(path), store=store, source="x.zarr", slide_id=store, split="test",
                                             center=part["test"].iloc[0], variant_method=vm, variant_target=vt, n=len(part)))
                if manifest:
                    pd.DataFrame(manifest).to_csv(run_dir / "manifest.csv", index=False)
                out = root / "predictions" / method / src.id / f"seed{sd}.csv"
                out.parent.mkdir(parents=True, exist_ok=True)
                pd.concat(frames, ignore_index=True).to_csv(out, index=False)
                learnt = not (method == "robust" and src.id == "cc" and sd == 1)
                summary = dict(method=method, source=src.id, seed=sd, epochs=3, tiles=100, images_seen=300,
                               train_stores=[f"{c}_train" for c in src.centers], centers=list(src.centers),
                               first={"loss": 4.8}, final={"loss": 4.8 if not learnt else 1.0, "embedding_std": 0.2},
                               learning={"status": "ok" if learnt else "did_not_learn",
                                         "reasons": [] if learnt else ["loss stayed at log(2N-1)"]},
                               seconds=1.5)
                path = root / "models" / method / src.id / f"seed{sd}" / "train_summary.json"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(summary))
    return root


def read_method(root: Path, method: str) -> pd.DataFrame:
    return pd.concat([emb_io.read_predictions(p) for p in sorted((root / "predictions" / method).rglob("seed*.csv"))],
                     ignore_index=True)


SOURCE_DICTS = {k: s.as_dict() for k, s in SOURCES.items()}
CFG = pl.EvalConfig(bootstrap=60, w2_max_samples=60)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return synthetic_runs(tmp_path_factory.mktemp("synthetic_eval"))


@pytest.fixture(scope="module")
def cross(run_dir) -> pd.DataFrame:
    return pl.cross_center(read_method(run_dir, "baseline"), "baseline", CFG, SOURCE_DICTS)


def test_cells_have_provenance_and_seen_matches_the_source(cross):
    assert list(cross.columns) == pl.COLUMNS
    cells = cross[cross.kind == "cell"]
    assert set(cells.protocol) == {"probe", "native"}
    assert len(cells) == 2 * len(SOURCES) * len(CENTERS) * len(pl.cc.METRICS)  # binary: valthr included
    for r in cells.itertuples():
        src = SOURCES[r.source]
        assert r.seen == src.sees(r.test), r
        assert r.encoder_centers == r.head_centers == join_centers(src.centers) and r.source_kind == src.kind
    assert (cells.n_seeds == 2).all() and (cells.seed_sd >= 0).all()
    assert (cells.ci_low <= cells.value + 1e-12).all() and (cells.value <= cells.ci_high + 1e-12).all()
    units = cells.groupby("test")["unit"].first().to_dict()
    assert units == {"ca": "patient", "cb": "patient", "cc": "slide"}  # cc: 2 patients, 6 slides
    n = cells.groupby("test")["n"].first().to_dict()
    assert n == {c: p * s * TILES_PER_SLIDE for c, (p, s) in LAYOUT.items()}


def test_loco_table_one_row_per_held_out_center_and_metric(cross):
    loco = cross[(cross.kind == "loco") & (cross.protocol == "probe")]
    assert len(loco) == len(CENTERS) * len(pl.cc.METRICS)
    assert loco.groupby("metric")["test"].apply(sorted).map(tuple).unique().tolist() == [tuple(CENTERS)]
    for r in loco.itertuples():
        assert r.source == f"loco-{r.test}" and not r.seen and r.test not in r.encoder_centers.split("+")
    cells = cross[(cross.kind == "cell") & (cross.protocol == "probe")].set_index(["source", "test", "metric"])
    for r in loco.itertuples():
        assert r.value == cells.loc[(r.source, r.test, r.metric), "value"]
    mean = cross[(cross.kind == "loco_mean") & (cross.protocol == "probe")].set_index("metric")["value"]
    assert mean["accuracy"] == pytest.approx(loco[loco.metric == "accuracy"]["value"].mean())


def test_headline_unseen_mean_uses_only_unseen_cells(cross):
    probe = cross[cross.protocol == "probe"]
    cells = probe[(probe.kind == "cell") & (probe.metric == "accuracy") & (probe.source_kind == "center")]
    head = probe[(probe.kind == "headline") & (probe.metric == "accuracy")].set_index("test")
    per_source_unseen = cells[~cells.seen.astype(bool)].groupby("source")["value"].mean()
    assert head.loc["unseen", "value"] == pytest.approx(per_source_unseen.mean())
    assert head.loc["in_center", "value"] == pytest.approx(cells[cells.seen.astype(bool)]["value"].mean())
    assert head.loc["drop", "value"] == pytest.approx(head.loc["in_center", "value"] - head.loc["unseen", "value"])
    assert head.loc["drop", "ci_low"] > 0.15  # the baseline loses ~30 points on centers it never saw
    every = probe[(probe.kind == "cell") & (probe.metric == "accuracy")]
    src = probe[(probe.kind == "unseen_mean") & (probe.metric == "accuracy")].set_index("source")["value"]
    assert src.to_dict() == pytest.approx(every[~every.seen.astype(bool)].groupby("source")["value"].mean().to_dict())
    # a loco source saw the two other centers: its drop is seen − unseen as well
    drop = probe[(probe.kind == "drop") & (probe.metric == "accuracy")].set_index("source")["value"]
    assert set(drop.index) == set(SOURCES) and (drop > 0.1).all()


def test_chance_rows_per_test_center(cross):
    chance = cross[cross.kind == "chance"].set_index(["test", "metric"])["value"]
    for c in CENTERS:
        assert 0.5 <= chance[(c, "accuracy")] <= 0.6  # labels alternate within a slide
        assert chance[(c, "balanced_accuracy")] == chance[(c, "auc")] == 0.5


def test_missing_run_is_named(run_dir):
    preds = read_method(run_dir, "baseline")
    preds = preds[~((preds.source == "cb") & (preds.seed == 1))]
    with pytest.raises(ValueError, match=r"\('cb', 1\)"):
        pl.cross_center(preds, "baseline", pl.EvalConfig(bootstrap=2), SOURCE_DICTS)


def test_variants_on_unseen_centers(run_dir):
    v = pl.variant_robustness(read_method(run_dir, "baseline"), "baseline", CFG, SOURCE_DICTS)
    one = v[(v.source == "ca") & (v.protocol == "probe")]
    acc = one[one.kind == "variant"].set_index("test")["value"]
    assert set(acc.index) == {"raw", "reinhard/t1", "macenko/t2"}
    assert acc["raw"] > acc["macenko/t2"]
    assert (one.seen == False).all() and "cb, cc" in one["note"].iloc[0]  # noqa: E712
    assert (one.n == sum(p * s * TILES_PER_SLIDE for c, (p, s) in LAYOUT.items() if c != "ca")).all()
    summ = one[one.kind == "variant_summary"].set_index("metric")["value"]
    assert summ["accuracy_mean"] == pytest.approx(acc.mean())
    assert 0 <= summ["consistency_all"] <= summ["consistency_ge_3"] + 1e-12 <= 1 + 1e-12
    assert summ["n_variants"] == 3


def _runs_embeddings(root: Path, method: str) -> dict[tuple[str, int], pl.EmbeddingSet]:
    out = {}
    for src in EMBEDDED:
        for sd in SEEDS:
            manifest = pd.read_csv(root / "embeddings" / method / src / f"seed{sd}" / "manifest.csv", dtype=str)
            out[(src, sd)] = pl.load_embedding_set(pl.evaluation_embedding_paths(manifest))
    return out


def test_batch_effect_mean_over_seeds_separates_shifted_from_robust(run_dir):
    cfg = pl.EvalConfig(w2_max_samples=60, bootstrap_latent=5)
    runs = {m: _runs_embeddings(run_dir, m) for m in ("baseline", "robust")}
    out = {m: pl.batch_effect(r, m, cfg, SOURCE_DICTS) for m, r in runs.items()}
    b = out["baseline"].set_index(["source", "test", "metric"])
    r = out["robust"].set_index(["source", "test", "metric"])
    assert (out["baseline"].n_seeds == 2).all() and set(out["baseline"].protocol) == {"encoder"}
    assert b.loc[("ca", "mean_pairs", "w2_gaussian"), "value"] > 2 * r.loc[("ca", "mean_pairs", "w2_gaussian"), "value"]
    assert r.loc[("ca", "all", "ri"), "value"] > b.loc[("ca", "all", "ri"), "value"]
    ri = b.loc[("ca", "all", "ri")]
    assert ri.ci_low <= ri.value <= ri.ci_high and "bootstrap" in ri.unit
    assert {"ri_k", "ri_support"} <= set(out["baseline"].metric) and "ri_de_jong" not in set(out["baseline"].metric)
    assert b.loc[("ca", "all", "tightness_intra_distance"), "value"] > r.loc[("ca", "all", "tightness_intra_distance"), "value"]


def test_learning_rows_flag_a_run_that_did_not_learn(run_dir):
    summaries = [pl.read_train_summary(p) for p in sorted((run_dir / "models" / "robust").rglob("train_summary.json"))]
    t = pl.learning_table(summaries, "robust", SOURCE_DICTS)
    flag = t[t.metric == "did_not_learn"]
    assert len(flag) == len(SOURCES) * len(SEEDS)
    bad = flag[flag.value == 1]
    assert bad[["source", "seed"]].values.tolist() == [["cc", 1]] and "log(2N-1)" in bad["note"].iloc[0]
    assert {"epochs", "images_seen", "final_loss", "first_loss", "final_embedding_std"} <= set(t.metric)
    # the run's training centers as the predictions write them (train_summary.json: a joined string)
    by_source = flag.set_index("source")["encoder_centers"].to_dict()
    assert by_source["ca"] == "ca" and all("+" not in v or k.startswith("loco") for k, v in by_source.items())


def test_compare_methods_paired_by_seed(run_dir):
    preds = {m: read_method(run_dir, m) for m in ("baseline", "robust")}
    c = pl.compare_methods(preds, CFG, SOURCE_DICTS)
    assert set(c.method) == {"robust"} and set(c.kind) == {"paired"} and (c.n_seeds == 2).all()
    probe = c[(c.protocol == "probe") & (c.source == "each")].set_index("metric")
    assert probe.loc["delta_unseen_accuracy", "ci_low"] > 0.1  # robust: 85 % vs baseline's 62 % unseen
    assert probe.loc["delta_drop_accuracy", "ci_high"] < 0
    assert probe.loc["delta_unseen_accuracy", "p_value"] < 0.05
    assert set(c.source) == {"each", "loco"}
    native = c[c.protocol == "native"]
    assert len(native) and native["note"].str.contains("robust: native = probe").all()


def test_eval_config_rejects_unknown_keys():
    assert pl.EvalConfig.from_config({"bootstrap": 5}).bootstrap == 5
    with pytest.raises(ValueError, match="unknown key"):
        pl.EvalConfig.from_config({"min_slides": 5})


def test_evaluation_embedding_paths_leave_out_the_runs_training_stores():
    manifest = pd.DataFrame(dict(
        path=["e/a_train.h5", "e/a_test.h5", "e/variants/a_test/reinhard/t1.h5", "e/b_test.h5"],
        store=["a_train", "a_test", "a_test", "b_test"], split=["train", "test", "test", "test"],
        variant_method=["raw", "raw", "reinhard", "raw"], variant_target=["raw", "raw", "t1", "raw"]))
    assert pl.evaluation_embedding_paths(manifest) == ["e/a_test.h5", "e/b_test.h5", "e/variants/a_test/reinhard/t1.h5"]


def test_one_slide_per_center_excludes_only_the_tile_itself(run_dir):
    """WSI demo: one test slide per center. Excluding same-slide neighbours would remove every
    same-center neighbour (RI ≡ 1 whatever the embeddings); the pipeline falls back to self-exclusion."""
    emb = _runs_embeddings(run_dir, "baseline")[("ca", 0)]
    meta = emb.meta.assign(slide_id=emb.meta["center"])  # one slide per center
    rows = pl.run_batch_effect(pl.EmbeddingSet(emb.features, meta), pl.EvalConfig(w2_max_samples=30))
    ri = {r["metric"]: r for r in rows if r["kind"] == "ri"}
    assert ri["ri"]["unit"] == "self-excluded" and ri["ri"]["value"] < 1.0  # same-center neighbours count


def _restained(preds: pd.DataFrame, strength: float, right_share: float, seed: int) -> pd.DataFrame:
    """The raw rows of ``preds`` as a re-stained variant at ``strength`` with ``right_share`` of tiles right."""
    rng = np.random.default_rng(seed)
    raw = preds[pl.is_raw(preds)].copy()
    right = rng.random(len(raw)) < right_share
    pred = np.where(right, raw["label"], 1 - raw["label"])
    p1 = np.where(pred == 1, 0.8, 0.2)
    return raw.assign(variant_method="restain", variant_target=f"s{strength:g}", pred=pred, p0=1 - p1, p1=p1)


def test_restain_curve_starts_at_the_headline_and_falls_with_strength(run_dir):
    preds = read_method(run_dir, "robust")
    # re-staining costs accuracy step by step: 85 % right (raw), 75 % at s = 0.5, 55 % at s = 1
    preds = pd.concat([preds, _restained(preds, 0.5, 0.75, 1), _restained(preds, 1.0, 0.55, 2)], ignore_index=True)
    cfg = pl.EvalConfig(bootstrap=30)
    curve = pl.restain_curve(preds, "robust", cfg)
    probe = curve[(curve["protocol"] == "probe") & (curve["metric"] == "balanced_accuracy")]
    values = probe[probe["kind"] == "restain"].set_index("test")["value"]
    assert list(values.index) == ["0", "0.5", "1"] and values.is_monotonic_decreasing
    assert 0.5 < values["1"] < 0.62 and values["0"] > 0.8
    headline = pl.cross_center(preds, "robust", cfg)
    head = headline[(headline["kind"] == "headline") & (headline["test"] == "unseen")
                    & (headline["metric"] == "balanced_accuracy") & (headline["protocol"] == "probe")]
    assert values["0"] == pytest.approx(head["value"].iloc[0])  # s = 0 is the raw headline
    area = probe[probe["kind"] == "restain_area"].iloc[0]
    expected = np.trapezoid(values.to_numpy(), [0.0, 0.5, 1.0])
    assert area["value"] == pytest.approx(expected) and area["ci_low"] <= area["value"] <= area["ci_high"]
    assert (probe["ci_low"] <= probe["value"]).all() and (probe["value"] <= probe["ci_high"]).all()
    # re-stained rows never count as normalized variants
    variants = pl.variant_robustness(preds, "robust", cfg)
    assert not variants["test"].astype(str).str.startswith("restain").any()


def test_constant_head_gets_a_near_constant_share_and_is_flagged(run_dir):
    from stainshift.report import degenerate_cells

    preds = read_method(run_dir, "robust")
    const = (preds["source"] == "ca") & (preds["test"] == "cb")
    preds.loc[const, "pred"], preds.loc[const, "p1"], preds.loc[const, "p0"] = 0, 0.1, 0.9  # always class 0
    table = pl.cross_center(preds, "robust", pl.EvalConfig(bootstrap=20))
    share = table[(table["kind"] == "prediction_share") & (table["protocol"] == "probe")].set_index(["source", "test"])
    assert share.loc[("ca", "cb"), "value"] == 1.0 and share.loc[("ca", "cb"), "note"] == "class 0"
    assert share.drop(index=("ca", "cb"))["value"].max() < 0.95
    flags = degenerate_cells(table, "probe")
    assert set(map(tuple, flags[["source", "test", "flag"]].to_numpy())) == {("ca", "cb", "near-constant")}


def test_per_test_center_rows_and_a_test_only_center(run_dir):
    preds = read_method(run_dir, "robust")
    each = preds[preds["source_kind"] == "center"]
    table = pl.cross_center(each[each["source"] != "cc"], "robust", pl.EvalConfig(bootstrap=20))  # nobody trains on cc
    rows = table[(table["kind"] == "test_unseen") & (table["protocol"] == "probe")
                 & (table["metric"] == "balanced_accuracy")].set_index("test")
    assert rows.loc["cc", "note"].startswith("test-only") and "ca, cb" in rows.loc["cc", "note"]
    assert not rows.loc["ca", "note"].startswith("test-only") and rows.loc["ca", "note"].endswith("cb")
    cells = table[(table["kind"] == "cell") & (table["protocol"] == "probe") & (table["metric"] == "balanced_accuracy")]
    assert rows.loc["ca", "value"] == pytest.approx(cells[(cells["source"] == "cb") & (cells["test"] == "ca")]["value"].iloc[0])


def test_latent_subsample_bounds_tiles_and_keeps_a_stores_tiles_across_variants(tmp_path: Path) -> None:
    """evaluate.latent_max_tiles: each store gives ceil(max / S) tiles, its variants the same tiles,
    seeded (same draw twice), the rows record it; None reads everything."""
    rng = np.random.default_rng(0)
    paths = []
    for store, n in (("a_test", 300), ("b_test", 40)):
        feats = rng.normal(size=(n, 4)).astype(np.float32)
        for rel, vm in ((f"{store}.h5", "raw"), (f"variants/{store}/reinhard/t0.h5", "reinhard")):
            p = tmp_path / "stores" / rel
            emb_io.write_embeddings(p, feats, coords=np.full((n, 2), -1), label=np.arange(n) % 2,
                                    index=np.arange(n), attrs={"store": store, "center": store[0], "split": "test",
                                                               "variant_method": vm, "variant_target": "t0"})
            paths.append(str(p))
    full = pl.load_embedding_set(paths)
    assert len(full.features) == 680 and full.subsample_note == ""
    sub = pl.load_embedding_set(paths, max_tiles=100, seed=3)
    per = sub.meta.groupby(["store", "variant_method"]).size().to_dict()
    # ceil(100 / 2 stores) = 50 from a_test, all 40 of b_test, the same in the variant
    assert per == {("a_test", "raw"): 50, ("a_test", "reinhard"): 50, ("b_test", "raw"): 40, ("b_test", "reinhard"): 40}
    a = sub.meta[sub.meta.store == "a_test"]
    assert (a[a.variant_method == "raw"]["index"].to_numpy() == a[a.variant_method == "reinhard"]["index"].to_numpy()).all()
    again = pl.load_embedding_set(paths, max_tiles=100, seed=3)
    assert np.array_equal(again.meta["index"], sub.meta["index"]) and np.array_equal(again.features, sub.features)
    assert sub.n_total == 680 and "180 of 680" in sub.subsample_note
    # the rows read are the rows of the full file
    key = full.meta.set_index(["store", "variant_method", "index"]).index
    pos = key.get_indexer(sub.meta.set_index(["store", "variant_method", "index"]).index)
    assert np.array_equal(full.features[pos], sub.features)
