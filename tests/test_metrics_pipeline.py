"""The evaluate stage's library half on a synthetic run: predictions table + embeddings files
(written with stainshift.embeddings, the format owner) → tidy long tables."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stainshift import embeddings as emb_io
from stainshift.metrics import pipeline as pl

CENTERS = ["ca", "cb", "cc"]
VARIANTS = [("raw", "raw"), ("reinhard", "t1"), ("macenko", "t2")]


def synthetic_run(root: Path, methods=("baseline", "robust"), n_slides: int = 5, tiles: int = 12, seed: int = 0) -> Path:
    """{root}/predictions/{method}.csv + {root}/embeddings/{method}/...: the baseline loses accuracy
    off its own center (stain shift), ``robust`` does not; the baseline's embeddings carry a center
    offset and move under normalization, the robust ones do not."""
    rng = np.random.default_rng(seed)
    class_dir = rng.normal(size=(2, 8)) * 2.0
    center_dir = {c: rng.normal(size=8) * 3.0 for c in CENTERS}
    for method in methods:
        shifted = method == "baseline"
        frames = []
        for ci, center in enumerate(CENTERS):
            for s in range(n_slides):
                store = f"{center}_test{s}"
                slide = store
                label = np.arange(tiles) % 2
                base = class_dir[label] + rng.normal(size=(tiles, 8))
                for vm, vt in VARIANTS:
                    jitter = rng.normal(size=(tiles, 8)) * (0.8 if shifted and vm != "raw" else 0.05)
                    feats = base + (center_dir[center] if shifted else 0) + jitter
                    emb_io.write_embeddings(
                        emb_io.embedding_path(str(root), method, store, vm, vt), feats,
                        coords=np.full((tiles, 2), -1), label=label, index=np.arange(tiles),
                        attrs=dict(method=method, store=store, slide_id=slide, center=center, split="test",
                                   variant_method=vm, variant_target=vt))
                    for train in CENTERS + ["all"]:
                        acc = 0.92 if (not shifted or train in (center, "all")) else 0.6
                        if shifted and vm != "raw":
                            acc -= 0.1
                        right = rng.random(tiles) < acc
                        pred = np.where(right, label, 1 - label)
                        p1 = np.clip(np.where(pred == 1, 0.75, 0.25) + rng.normal(0, 0.1, tiles), 0.01, 0.99)
                        probs = np.stack([1 - p1, p1], 1)
                        frames.append(emb_io.prediction_frame(
                            probs, method=method, train=train, index=np.arange(tiles), label=label,
                            meta=dict(store=store, slide_id=slide, test=center, split="test",
                                      variant_method=vm, variant_target=vt)))
        emb_io.write_predictions(root / "predictions" / f"{method}.csv", frames)
    return root


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return synthetic_run(tmp_path_factory.mktemp("synthetic_eval"))


CFG = pl.EvalConfig(bootstrap=60, bootstrap_latent=10, w2_max_samples=100)


def test_cross_center_table_shows_the_shift_with_cis(run_dir):
    preds = emb_io.read_predictions(run_dir / "predictions" / "baseline.csv")
    t = pl.cross_center(preds, "baseline", CFG)
    assert list(t.columns) == pl.COLUMNS
    acc = t[t.metric == "accuracy"]
    off = acc[acc.kind == "mean_off_diagonal"].set_index("train")
    drop = acc[acc.kind == "drop"].set_index("train")
    assert set(off.index) == set(CENTERS)
    assert (drop["ci_low"] > 0).all()  # baseline: in-center clearly better
    assert (off["ci_low"] <= off["value"]).all() and (off["value"] <= off["ci_high"]).all()
    assert (acc[acc.kind == "in_center"]["train"] == acc[acc.kind == "in_center"]["test"]).all()
    assert set(t.unit) == {"slide"}  # 5 slides per test center
    assert set(t.metric) == set(CFG.metrics)


def test_variants_and_consistency(run_dir):
    preds = emb_io.read_predictions(run_dir / "predictions" / "baseline.csv")
    v = pl.variant_robustness(preds, "baseline", CFG)
    acc = v[(v.kind == "variant") & (v.train == "all")].set_index("test")["value"]
    assert set(acc.index) == {"raw", "reinhard/t1", "macenko/t2"}
    assert acc["raw"] > acc["macenko/t2"]
    summ = v[(v.kind == "summary") & (v.train == "all")].set_index("metric")["value"]
    assert summ["accuracy_mean"] == pytest.approx(acc.mean())
    assert summ["accuracy_std"] == pytest.approx(acc.std(ddof=1))
    assert 0 <= summ["consistency_all"] <= summ["consistency_ge_3"] + 1e-12 <= 1 + 1e-12
    assert summ["n_variants"] == 3


def test_batch_effect_separates_shifted_from_robust_embeddings(run_dir):
    out = {}
    for method in ("baseline", "robust"):
        paths = sorted((run_dir / "embeddings" / method).rglob("*.h5"))
        e = pl.load_embedding_set(paths)
        assert e.features.shape == (3 * 5 * 12 * 3, 8)
        out[method] = pl.batch_effect(e, method, CFG).set_index(["test", "metric"])["value"]
    b, r = out["baseline"], out["robust"]
    assert b[("mean_pairs", "w2_gaussian")] > 2 * r[("mean_pairs", "w2_gaussian")]
    assert b[("mean_pairs", "w2_exact[class_1]")] > r[("mean_pairs", "w2_exact[class_1]")]
    assert r[("all", "ri_pathorob")] > b[("all", "ri_pathorob")]
    assert r[("all", "ri_de_jong")] > b[("all", "ri_de_jong")]
    assert b[("all", "tightness_intra_distance")] > r[("all", "tightness_intra_distance")]
    assert b[("all", "tightness_raw_variant_cosine")] < r[("all", "tightness_raw_variant_cosine")]
    assert ("ca", "tightness_centroid_to_raw") in b.index


def test_compare_methods_paired(run_dir):
    preds = {m: emb_io.read_predictions(run_dir / "predictions" / f"{m}.csv") for m in ("baseline", "robust")}
    c = pl.compare_methods(preds, CFG)
    d = c[(c.method == "robust") & (c.metric == "delta_cross_center_drop")].iloc[0]
    assert d.value < 0 and d.ci_high < 0  # robust reduces the drop
    h = c[(c.kind == "headline") & (c.metric == "cross_center_drop")].set_index("method")
    assert h.loc["baseline", "ci_low"] > 0
    p = c[(c.method == "robust") & (c.metric == "p_mcnemar_off_diagonal")]["value"].iloc[0]
    assert p < 0.05


def test_eval_config_rejects_unknown_keys():
    assert pl.EvalConfig.from_config({"bootstrap": 5}).bootstrap == 5
    with pytest.raises(ValueError, match="unknown key"):
        pl.EvalConfig.from_config({"bootstrapp": 5})


def test_crop_set_groups_replace_store_ids_for_the_bootstrap(tmp_path):
    from stainshift.store import write_store

    n = 6
    write_store(tmp_path / "set-dom-test.zarr", np.zeros((n, 8, 8, 3), np.uint8), coords=np.full((n, 2), -1),
                tissue_fraction=np.full(n, np.nan), label=np.arange(n) % 2, label_fraction=np.full(n, np.nan),
                attrs=dict(slide_id="set-dom-test", center="dom", split="test",
                           crop_groups=["s1", "s1", "s2", "s3", "crop4", "s3"]), codec="zstd")
    groups = pl.crop_groups({"set-dom-test": tmp_path / "set-dom-test.zarr", "missing": tmp_path / "nope.zarr"})
    assert groups["slide_id"].tolist() == ["s1", "s1", "s2", "s3", "set-dom-test:crop4", "s3"]
    preds = pd.DataFrame(dict(store=["set-dom-test", "set-dom-test", "other"], index=[1, 4, 0],
                              slide_id=["set-dom-test", "set-dom-test", "other"]))
    out = pl.with_tile_groups(preds, groups)
    assert out["slide_id"].tolist() == ["s1", "set-dom-test:crop4", "other"]
    assert preds["slide_id"].tolist()[0] == "set-dom-test"  # input untouched


def test_evaluation_embedding_paths_from_manifest():
    manifest = pd.DataFrame(dict(
        path=["e/a_train.h5", "e/a_test.h5", "e/variants/a_test/reinhard/t1.h5", "e/b_test.h5"],
        store=["a_train", "a_test", "a_test", "b_test"], split=["train", "test", "test", "test"],
        variant_method=["raw", "raw", "reinhard", "raw"], variant_target=["raw", "raw", "t1", "raw"]))
    assert pl.evaluation_embedding_paths(manifest) == ["e/a_test.h5", "e/b_test.h5", "e/variants/a_test/reinhard/t1.h5"]
    preds = pd.DataFrame(dict(store=["a_test"]))
    assert pl.evaluation_embedding_paths(manifest, preds) == ["e/a_test.h5", "e/variants/a_test/reinhard/t1.h5"]


def test_one_slide_per_center_excludes_only_the_tile_itself(tmp_path):
    """WSI demo: one test slide per center. Excluding same-slide neighbours would remove every
    same-center neighbour (RI_P ≡ 1 whatever the embeddings); the pipeline falls back to self-exclusion."""
    root = synthetic_run(tmp_path, methods=("baseline",), n_slides=1, tiles=30)
    e = pl.load_embedding_set(sorted((root / "embeddings" / "baseline").glob("*.h5")))
    b = pl.batch_effect(e, "baseline", pl.EvalConfig(w2_max_samples=30)).set_index("metric")
    assert b.loc["ri_pathorob", "unit"] == "self-excluded"
    # same-center neighbours exist again (with slide exclusion SS = OS = 0 by construction)
    assert b.loc["ri_ss", "value"] + b.loc["ri_os", "value"] > 0
    assert b.loc["ri_pathorob", "value"] < 1.0
