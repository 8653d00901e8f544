"""stainshift.metrics: hand-computed values, scikit-learn / POT / croma where they overlap."""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from stainshift.metrics import batch_effect as be
from stainshift.metrics import bootstrap as bs
from stainshift.metrics import cross_center as cc
from stainshift.metrics import robustness as rob
from stainshift.metrics import variants as va


# ---------------------------------------------------------------- cross-center metrics
def test_hand_computed_binary_cell():
    y = np.array([0, 0, 1, 1, 1])
    p1 = np.array([0.1, 0.6, 0.4, 0.8, 0.9])
    proba = np.stack([1 - p1, p1], 1)
    yhat = (p1 > 0.5).astype(int)  # [0,1,0,1,1]
    assert cc.accuracy(y, yhat) == pytest.approx(3 / 5)
    assert cc.balanced_accuracy(y, yhat) == pytest.approx((1 / 2 + 2 / 3) / 2)
    # pairs (pos, neg): 0.4>0.1 yes, 0.4>0.6 no, 0.8, 0.9 beat both -> 5/6
    assert cc.auc(y, proba) == pytest.approx(5 / 6)
    # F1 class0: tp=1 fp=1 fn=1 -> 0.5; class1: tp=2 fp=1 fn=1 -> 4/6
    assert cc.macro_f1(y, yhat) == pytest.approx((0.5 + 4 / 6) / 2)
    # Cohen kappa: po=0.6, pe = (2/5)(2/5) + (3/5)(3/5) = 0.52 -> (0.6-0.52)/0.48
    assert cc.quadratic_weighted_kappa(y, yhat) == pytest.approx(0.08 / 0.48)


def test_auc_ties_use_midranks():
    y = np.array([0, 1, 0, 1])
    s = np.array([0.5, 0.5, 0.2, 0.9])
    assert cc.auc(y, s) == pytest.approx(skm.roc_auc_score(y, s)) == pytest.approx(0.875)


@pytest.mark.parametrize("n_classes", [2, 3, 5])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_sklearn(n_classes, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, 300)
    logits = rng.normal(size=(300, n_classes)) + 1.5 * np.eye(n_classes)[y]
    proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    yhat = proba.argmax(1)
    assert cc.accuracy(y, yhat) == pytest.approx(skm.accuracy_score(y, yhat))
    assert cc.balanced_accuracy(y, yhat) == pytest.approx(skm.balanced_accuracy_score(y, yhat))
    assert cc.macro_f1(y, yhat) == pytest.approx(skm.f1_score(y, yhat, average="macro"))
    assert cc.quadratic_weighted_kappa(y, yhat) == pytest.approx(skm.cohen_kappa_score(y, yhat, weights="quadratic"))
    ref_auc = skm.roc_auc_score(y, proba[:, 1]) if n_classes == 2 else skm.roc_auc_score(y, proba, multi_class="ovr")
    assert cc.auc(y, proba) == pytest.approx(ref_auc)


def test_undefined_cases_are_nan_not_errors():
    y = np.zeros(5, dtype=int)
    proba = np.tile([0.7, 0.3], (5, 1))
    assert np.isnan(cc.auc(y, proba))
    assert np.isnan(cc.quadratic_weighted_kappa(y, np.zeros(5, dtype=int)))
    assert cc.accuracy(y, np.zeros(5, dtype=int)) == 1.0
    assert np.isnan(cc.accuracy(np.array([], int), np.array([], int)))


def _preds_frame(acc: dict[tuple[str, str], float], n: int = 40, seed: int = 0) -> pd.DataFrame:
    """Predictions whose accuracy per (train, test) is exactly acc[(train, test)]."""
    rng = np.random.default_rng(seed)
    rows = []
    for (train, test), a in acc.items():
        y = np.arange(n) % 2
        right = np.zeros(n, bool)
        right[rng.permutation(n)[: int(round(a * n))]] = True
        yhat = np.where(right, y, 1 - y)
        p1 = np.where(yhat == 1, 0.8, 0.2)
        rows.append(pd.DataFrame(dict(train=train, test=test, label=y, p0=1 - p1, p1=p1,
                                      slide=[f"{test}_s{i % 8}" for i in range(n)])))
    return pd.concat(rows, ignore_index=True)


def test_cross_center_table_marks_in_center_and_headline():
    acc = {("a", "a"): 0.9, ("a", "b"): 0.6, ("a", "c"): 0.7,
           ("b", "a"): 0.5, ("b", "b"): 0.95, ("b", "c"): 0.55,
           ("all", "a"): 0.8, ("all", "b"): 0.85, ("all", "c"): 0.75}
    preds = _preds_frame(acc)
    preds = pd.concat([preds, pd.DataFrame(dict(train="a", test="a", label=[-1], p0=[0.5], p1=[0.5], slide=["x"]))])
    t = cc.cross_center_table(preds)
    cell = t[(t.metric == "accuracy") & (t.test != cc.OFF_DIAGONAL)].set_index(["train", "test"])
    for key, a in acc.items():
        assert cell.loc[key, "value"] == pytest.approx(a)
        assert cell.loc[key, "in_center"] == (key[0] == key[1])
        assert cell.loc[key, "n"] == 40  # the label -1 tile is ignored
    head = t[(t.test == cc.OFF_DIAGONAL) & (t.metric == "accuracy")].set_index("train")["value"]
    assert head["a"] == pytest.approx((0.6 + 0.7) / 2)
    assert head["b"] == pytest.approx((0.5 + 0.55) / 2)
    assert "all" not in head.index  # trained on every center: no off-diagonal
    w = cc.wide_table(t, "accuracy")
    assert w.loc["b", "c"] == pytest.approx(0.55)
    assert set(t.metric) == set(cc.METRICS)


# ---------------------------------------------------------------- bootstrap
def test_bootstrap_ci_covers_point_estimate_and_is_seeded():
    rng = np.random.default_rng(0)
    x = rng.normal(1.0, 1.0, 200)
    groups = np.repeat(np.arange(20), 10)
    stat = lambda idx: float(x[idx].mean())
    r1 = bs.bootstrap_ci(stat, len(x), groups=groups, n_boot=300, seed=3)
    r2 = bs.bootstrap_ci(stat, len(x), groups=groups, n_boot=300, seed=3)
    assert r1 == r2
    assert r1.ci_low < r1.value < r1.ci_high
    assert r1.unit == "slide" and r1.n_valid == 300
    # the 95 % interval of a mean of 200 N(1,1) is about ±0.14 wide on each side
    assert 0.05 < r1.ci_high - r1.ci_low < 0.8


def test_cluster_bootstrap_resamples_whole_slides_within_strata():
    groups = np.repeat(["s0", "s1", "s2", "t0", "t1"], 3)
    strata = np.array(["A"] * 9 + ["B"] * 6)
    units = bs._index_sets(len(groups), groups, strata)
    idx = bs.resample(units, np.random.default_rng(0))
    assert len(idx) == 15  # equal-size slides: same total
    drawn = pd.Series(groups[idx]).value_counts()
    assert (drawn % 3 == 0).all()  # every slide comes whole
    assert (strata[idx] == "A").sum() == 9 and (strata[idx] == "B").sum() == 6


def test_slide_bootstrap_is_wider_than_tile_bootstrap_for_clustered_data():
    rng = np.random.default_rng(1)
    slide_effect = np.repeat(rng.normal(0, 1.0, 10), 30)
    x = slide_effect + rng.normal(0, 0.1, 300)
    groups = np.repeat(np.arange(10), 30)
    stat = lambda idx: float(x[idx].mean())
    wide = bs.bootstrap_ci(stat, 300, groups=groups, n_boot=300, seed=0)
    narrow = bs.bootstrap_ci(stat, 300, groups=None, n_boot=300, seed=0)
    assert (wide.ci_high - wide.ci_low) > 3 * (narrow.ci_high - narrow.ci_low)


def test_resampling_groups_falls_back_to_tiles():
    assert bs.resampling_groups(None) is None
    assert bs.resampling_groups(["a"] * 10, min_groups=2) is None
    g = bs.resampling_groups(list("abcdefabcdef"), strata=[0] * 6 + [1] * 6, min_groups=3)
    assert g is not None and len(g) == 12
    assert bs.resampling_groups(list("abcdefabcaaa"), strata=[0] * 6 + [1] * 6, min_groups=4) is None


def test_paired_test_detects_a_real_difference_and_not_a_null_one():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 400)
    a = np.where(rng.random(400) < 0.85, y, 1 - y)
    b = np.where(rng.random(400) < 0.65, y, 1 - y)
    groups = np.repeat(np.arange(40), 10)
    acc = lambda pred: (lambda idx: float(np.mean(pred[idx] == y[idx])))
    r = bs.paired_bootstrap_test(acc(a), acc(b), 400, groups=groups, n_boot=400, seed=0)
    assert r.diff == pytest.approx(np.mean(a == y) - np.mean(b == y))
    assert r.ci_low > 0 and r.p_value < 0.01
    null = bs.paired_bootstrap_test(acc(a), acc(a), 400, groups=groups, n_boot=100, seed=0)
    assert null.diff == 0 and null.p_value == 1.0
    # McNemar: b=#(A right, B wrong), c=#(A wrong, B right)
    ca, cb = np.array([1, 1, 1, 1, 0, 1], bool), np.array([0, 0, 0, 1, 0, 1], bool)
    assert bs.mcnemar_test(ca, cb) == pytest.approx(0.25)  # b=3, c=0: 2 * 0.5**3
    assert bs.mcnemar_test(ca, ca) == 1.0


# ---------------------------------------------------------------- variants
def test_variant_accuracy_and_consistency_hand_computed():
    y = np.array([0, 1, 1, 0])
    preds = {"raw": np.array([0, 1, 1, 0]), "reinhard/t1": np.array([0, 1, 0, 0]), "macenko/t2": np.array([1, 1, 0, 0])}
    acc = va.accuracy_per_variant(y, preds)
    assert acc == {"raw": 1.0, "reinhard/t1": 0.75, "macenko/t2": 0.5}
    m, s = va.mean_std_over_variants(acc)
    assert m == pytest.approx(0.75) and s == pytest.approx(0.25)
    mat = np.stack(list(preds.values()))
    assert va.cross_stain_consistency(mat) == pytest.approx(2 / 4)  # tiles 1 and 3
    assert va.cross_stain_consistency(mat, min_agree=2) == 1.0
    assert va.consistent_and_correct(mat, y) == 1.0
    assert va.consistent_and_correct(mat, y, min_agree=2) == pytest.approx(3 / 4)  # tile 2 modal 0, true 1
    assert va.min_agree_from_share(70, 65 / 70) == 65
    assert va.min_agree_from_share(3, 0.9) == 3 and va.min_agree_from_share(3, 0.0) == 1
    assert va.variant_name(None, None) == "raw" and va.variant_name("macenko", "t3") == "macenko/t3"
    assert va.mean_std_over_variants([0.5]) == (0.5, 0.0)


# ---------------------------------------------------------------- W2
def test_gaussian_w2_known_gaussians():
    # 1-D: W2² = (μ1 − μ2)² + (σ1 − σ2)²
    assert be.gaussian_w2_from_moments([0.0], [[4.0]], [3.0], [[1.0]]) == pytest.approx(np.sqrt(9 + 1))
    # commuting (diagonal) covariances: W2² = ‖Δμ‖² + Σ (√a_i − √b_i)²
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 4.0, 1.0])
    exp = np.sqrt(1.0 + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum())
    assert be.gaussian_w2_from_moments(np.zeros(3), np.diag(a), np.array([1.0, 0, 0]), np.diag(b)) == pytest.approx(exp)
    # full covariances: POT's Bures-Wasserstein distance
    import ot

    rng = np.random.default_rng(0)
    for _ in range(3):
        la, lb = rng.normal(size=(4, 4)), rng.normal(size=(4, 4))
        ca, cb = la @ la.T + 0.1 * np.eye(4), lb @ lb.T + 0.1 * np.eye(4)
        ma, mb = rng.normal(size=4), rng.normal(size=4)
        ref = float(ot.gaussian.bures_wasserstein_distance(ma, mb, ca, cb))
        assert be.gaussian_w2_from_moments(ma, ca, mb, cb) == pytest.approx(ref, rel=1e-6)


def test_w2_of_a_set_with_itself_is_zero_and_shift_is_recovered():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 5))
    assert be.gaussian_w2(x, x) == pytest.approx(0.0, abs=1e-6)
    assert be.exact_w2(x, x, max_samples=200, seed=4) == pytest.approx(0.0, abs=1e-6)  # sqrt of round-off
    y = x + np.array([2.0, 0, 0, 0, 0])
    assert be.gaussian_w2(x, y) == pytest.approx(2.0, rel=1e-6)
    assert be.exact_w2(x, y, max_samples=None) == pytest.approx(2.0, rel=1e-6)


def test_exact_w2_matches_sorted_matching_in_1d_and_gaussian_on_large_samples():
    rng = np.random.default_rng(2)
    x, y = rng.normal(0, 1, (150, 1)), rng.normal(1, 2, (150, 1))
    ref = np.sqrt(np.mean((np.sort(x[:, 0]) - np.sort(y[:, 0])) ** 2))
    assert be.exact_w2(x, y, max_samples=None) == pytest.approx(ref, rel=1e-9)
    big_x, big_y = rng.normal(0, 1, (800, 2)), rng.normal([1.0, 0.0], [1.0, 2.0], (800, 2))
    truth = np.sqrt(1.0 + 1.0)  # Δμ = 1, σ: (1→1), (1→2)
    assert be.gaussian_w2(big_x, big_y) == pytest.approx(truth, rel=0.08)
    assert be.exact_w2(big_x, big_y, max_samples=800) == pytest.approx(truth, rel=0.15)


def test_w2_between_centers_overall_and_per_class():
    rng = np.random.default_rng(3)
    lab = np.tile([0, 1], 60)
    cen = np.repeat(["a", "b", "c"], 40)
    f = rng.normal(size=(120, 6)) + 3.0 * lab[:, None] * np.eye(6)[0] + (cen == "c")[:, None] * 2.0 * np.eye(6)[1]
    df = be.w2_between_centers(f, cen, lab, max_samples=50, seed=0, l2=False)
    assert set(df.subset) == {"all", "class_0", "class_1"} and set(df.estimator) == {"gaussian", "exact"}
    assert len(df) == 3 * 3 * 2
    g = df[(df.estimator == "gaussian") & (df.subset == "all")].set_index(["center_a", "center_b"])["value"]
    assert g[("a", "c")] > 1.5 > g[("a", "b")]  # c is the shifted center


# ---------------------------------------------------------------- cluster tightness
def test_cluster_tightness_hand_computed():
    raw = np.array([[1.0, 0.0], [0.0, 2.0]])
    var = np.array([[[1.0, 1.0], [0.0, 2.0]], [[1.0, -1.0], [0.0, 2.0]]])  # (V=2, N=2, D=2)
    t = be.cluster_tightness(raw, var, l2=False)
    # tile 0: centroid (1,0) = raw, each variant 1 away; tile 1: all identical
    assert t["intra_distance"] == pytest.approx(0.5)
    assert t["centroid_to_raw"] == pytest.approx(0.0)
    assert t["raw_variant_cosine"] == pytest.approx((2 * np.cos(np.pi / 4) + 2 * 1.0) / 4)
    with pytest.raises(ValueError):
        be.cluster_tightness(raw, var[:, :1])


# ---------------------------------------------------------------- robustness index
def _two_center_embeddings(mixed: bool, seed: int = 0):
    """3 classes x 2 centers x 4 slides x 6 tiles. mixed: center has no effect on embeddings;
    separated: a center offset dominates the class signal."""
    rng = np.random.default_rng(seed)
    rows, lab, cen, grp = [], [], [], []
    class_dir = rng.normal(size=(3, 16)) * 1.0
    center_dir = rng.normal(size=(2, 16)) * (0.0 if mixed else 6.0)
    for c in range(2):
        for s in range(4):
            for k in range(3):
                x = class_dir[k] + center_dir[c] + rng.normal(size=(6, 16))
                rows.append(x)
                lab += [k] * 6
                cen += [f"c{c}"] * 6
                grp += [f"c{c}_s{s}"] * 6
    return np.concatenate(rows) + 10.0, np.array(lab), np.array(cen), np.array(grp)


def test_robustness_index_moves_the_right_way():
    mixed = rob.robustness_index(*_two_center_embeddings(True))
    separated = rob.robustness_index(*_two_center_embeddings(False))
    assert mixed.pathorob > 0.6 > 0.1 > separated.pathorob
    assert mixed.de_jong > 1.0 > separated.de_jong
    assert mixed.support > 0.5 and separated.support > 0.5
    assert mixed.ss + mixed.so + mixed.os + mixed.oo <= mixed.k * mixed.n


def test_robustness_index_hand_computed_and_same_slide_excluded():
    # 1-D-ish embeddings on a circle: angles make cosine neighbours explicit.
    ang = np.array([0.0, 0.1, 0.2, 1.5, 1.6, 1.7])
    f = np.stack([np.cos(ang), np.sin(ang)], 1)
    lab = np.array([0, 0, 0, 1, 1, 1])
    cen = np.array(["a", "b", "a", "b", "a", "b"])
    grp = np.array(["g0", "g1", "g2", "g3", "g4", "g5"])
    r = rob.robustness_index(f, lab, cen, grp, k_candidates=[1])
    # nearest neighbours: 0->1 (SO), 1->0 or 2 (tie: both SO), 2->1 (SO), 3->4 (SO), 4->3/5 (SO), 5->4 (SO)
    assert (r.k, r.so, r.os, r.ss, r.oo) == (1, 6, 0, 0, 0)
    assert r.pathorob == 1.0 and r.support == 1.0 and r.knn_balanced_accuracy == 1.0
    # same-slide exclusion: put each pair of cross-center neighbours in one slide
    grp2 = np.array(["g0", "g0", "g2", "g3", "g3", "g5"])
    neigh, valid = rob.cross_group_neighbours(f, grp2, 2)
    assert neigh[0].tolist() == [2, 3] and neigh[1].tolist() == [2, 3]
    assert (valid == 2).all()


def test_pathorob_form_matches_croma():
    croma = pytest.importorskip("croma")
    feats, lab, cen, grp = _two_center_embeddings(False, seed=5)
    feats = feats + np.random.default_rng(9).normal(0, 2.0, feats.shape)  # make it imperfect
    ks = [1, 3, 5, 9]
    ours = rob.robustness_index(feats, lab, cen, grp, k_candidates=ks)
    manifest = pd.DataFrame(dict(sample_id=[str(i) for i in range(len(lab))], image_path="-",
                                 label=lab.astype(str), group_id=grp, center=cen))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # croma warns when support < 100 %
        ref = croma.RI.compute(feats, manifest, confounder_column="center", k_candidates=ks)
    assert ours.k == ref.k
    assert ours.pathorob == pytest.approx(ref.value, abs=1e-12)
    assert ours.support == pytest.approx(ref.support)

