"""stainshift.metrics: hand-computed values, scikit-learn / POT / croma where they overlap."""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
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
    assert cc.quadratic_weighted_kappa(y, yhat, n_classes) == pytest.approx(
        skm.cohen_kappa_score(y, yhat, weights="quadratic", labels=range(n_classes)))
    ref_auc = skm.roc_auc_score(y, proba[:, 1]) if n_classes == 2 else skm.roc_auc_score(y, proba, multi_class="ovr")
    assert cc.auc(y, proba) == pytest.approx(ref_auc)


def test_undefined_cases_are_nan_not_errors():
    y = np.zeros(5, dtype=int)
    proba = np.tile([0.7, 0.3], (5, 1))
    assert np.isnan(cc.auc(y, proba))
    assert np.isnan(cc.quadratic_weighted_kappa(y, np.zeros(5, dtype=int)))
    assert cc.accuracy(y, np.zeros(5, dtype=int)) == 1.0
    assert np.isnan(cc.accuracy(np.array([], int), np.array([], int)))


def test_qwk_scores_over_every_class_of_the_task():
    """Issue 11: a missing middle class keeps its place on the ordinal scale."""
    y = [0, 1, 3, 3, 1, 0, 3]
    yhat = [0, 3, 3, 1, 1, 0, 3]
    ours = cc.quadratic_weighted_kappa(y, yhat, n_classes=4)
    assert ours == pytest.approx(skm.cohen_kappa_score(y, yhat, weights="quadratic", labels=range(4)))
    assert ours == pytest.approx(0.6585, abs=1e-4)
    assert ours != pytest.approx(skm.cohen_kappa_score(y, yhat, weights="quadratic"))  # 0.794: classes 0, 1, 3 only
    proba = np.eye(4)[yhat]  # the cell metric takes C from the width of the probability matrix
    qwk = cc.classification_metrics(y, proba, ["qwk"])[0]
    assert qwk == pytest.approx(ours)


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 6).flatmap(lambda c: st.tuples(
    st.just(c), st.lists(st.tuples(st.integers(0, c - 1), st.integers(0, c - 1)), min_size=2, max_size=40))))
def test_qwk_matches_sklearn_with_all_labels(case):
    n_classes, pairs = case
    y, yhat = np.array(pairs).T
    ours = cc.quadratic_weighted_kappa(y, yhat, n_classes=n_classes)
    if np.unique(np.concatenate([y, yhat])).size < 2:
        assert np.isnan(ours)  # a single class in truth and prediction: κ undefined
        return
    ref = skm.cohen_kappa_score(y, yhat, weights="quadratic", labels=range(n_classes))
    assert ours == pytest.approx(ref, abs=1e-9) or (np.isnan(ours) and np.isnan(ref))


def test_balanced_accuracy_at_validation_threshold():
    y = np.array([0, 0, 0, 1, 1])
    p1 = np.array([0.1, 0.3, 0.35, 0.4, 0.9])
    proba = np.stack([1 - p1, p1], 1)
    assert cc.balanced_accuracy(y, proba.argmax(1)) == pytest.approx((1 + 0.5) / 2)  # at 0.5: 0.4 missed
    assert cc.balanced_accuracy_at_threshold(y, proba, 0.38) == pytest.approx(1.0)
    assert cc.balanced_accuracy_at_threshold(y, proba, 0.3) == pytest.approx((1 / 3 + 1) / 2)  # p1 >= t
    assert np.isnan(cc.balanced_accuracy_at_threshold(y, proba, np.nan))
    assert np.isnan(cc.balanced_accuracy_at_threshold(y, np.tile([0.2, 0.3, 0.5], (5, 1)), 0.5))  # multi-class
    vals = cc.classification_metrics(y, proba, ["balanced_accuracy", "balanced_accuracy_valthr"], threshold=0.38)
    assert vals.tolist() == pytest.approx([0.75, 1.0])


def test_chance_levels():
    y = np.array([0, 0, 0, 1])
    lv = dict(zip(cc.METRICS, cc.chance_levels(y, 2)))
    assert lv["accuracy"] == 0.75 and lv["balanced_accuracy"] == 0.5 and lv["auc"] == 0.5 and lv["qwk"] == 0
    assert lv["macro_f1"] == pytest.approx(2 * 0.75 / 1.75 / 2)  # class 0: F1 = 2·3/(2·3+1), class 1: 0
    assert lv["balanced_accuracy_valthr"] == 0.5
    assert np.isnan(cc.chance_levels(np.array([0, 2]), 3, ["balanced_accuracy_valthr"])[0])


# ---------------------------------------------------------------- bootstrap
def _mean_of(x: np.ndarray, offsets=(0.0,)):
    """statistic(seeds, idx): mean over the drawn seeds of mean(x[idx]) + offset_s."""
    return lambda seeds, idx: bs.mean_over_seeds(seeds[0], lambda s: np.array([x[idx].mean() + offsets[s]]))


def test_resampling_unit_falls_back_patient_slide_tile():
    strata = np.repeat(["a", "b", "c"], 12)
    patients = np.r_[np.repeat(np.arange(6), 2), np.repeat([10, 11], 6), np.repeat([20, 21], 6)].astype(str)
    slides = np.r_[np.arange(12), np.repeat(np.arange(6), 2) + 100, np.repeat([200, 201, 202], 4)].astype(str)
    d = bs.resampling_design(strata, patients, slides, min_units=5)
    # a: 6 patients -> patient; b: 2 patients but 6 slides -> slide; c: 2 patients, 3 slides -> tile
    assert d.unit_of == {"a": "patient", "b": "slide", "c": "tile"}
    assert d.label == "a:patient; b:slide; c:tile"
    assert [len(u) for u in d.units] == [6, 6, 12]
    assert bs.resampling_design(strata, None, None).unit_of == {"a": "tile", "b": "tile", "c": "tile"}
    # one tile per patient: resampling patients is resampling tiles, and is called so
    assert bs.resampling_design(["a"] * 6, np.arange(6), None).unit_of == {"a": "tile"}


def test_patient_draw_takes_all_its_slides_within_its_stratum():
    strata = np.array(["A"] * 12 + ["B"] * 6)
    patients = np.array(["p0"] * 4 + ["p1"] * 4 + ["p2"] * 4 + ["q0"] * 2 + ["q1"] * 2 + ["q2"] * 2)
    slides = np.array(["p0s0", "p0s0", "p0s1", "p0s1"] + ["p1s0"] * 4 + ["p2s0", "p2s1", "p2s2", "p2s3"]
                      + ["q0"] * 2 + ["q1"] * 2 + ["q2"] * 2)
    d = bs.resampling_design(strata, patients, slides, min_units=3)
    assert d.unit_of == {"A": "patient", "B": "patient"}
    rng = np.random.default_rng(0)
    for _ in range(20):
        idx = d.resample(rng)
        assert (strata[idx] == "A").sum() == 12 and (strata[idx] == "B").sum() == 6  # every stratum kept
        drawn = pd.Series(patients[idx]).value_counts()
        per_patient = pd.Series(patients).value_counts()
        assert (drawn % per_patient[drawn.index] == 0).all()  # a patient comes whole: every slide of it
        for p in drawn.index:
            assert set(slides[idx][patients[idx] == p]) == set(slides[patients == p])


def test_one_seed_is_the_plain_stratified_cluster_bootstrap():
    rng = np.random.default_rng(0)
    x = rng.normal(1.0, 1.0, 200)
    strata = np.repeat(["a", "b"], 100)
    slides = np.repeat(np.arange(20), 10).astype(str)
    d = bs.resampling_design(strata, None, slides, min_units=5)
    r = bs.hierarchical_bootstrap(_mean_of(x), 1, d, n_boot=300, seed=3)
    # by hand: 300 draws of 10 slides per stratum with the same generator
    g = np.random.default_rng(3)
    reps = [x[d.resample(g)].mean() for _ in range(300)]
    lo, hi = np.quantile(reps, [0.025, 0.975])
    assert r.value[0] == pytest.approx(x.mean())
    assert (r.ci_low[0], r.ci_high[0]) == pytest.approx((lo, hi))
    assert r.n_seeds == 1 and np.isnan(r.seed_sd[0]) and r.unit == "a:slide; b:slide"
    again = bs.hierarchical_bootstrap(_mean_of(x), 1, d, n_boot=300, seed=3)
    assert again.ci_low[0] == r.ci_low[0] and again.ci_high[0] == r.ci_high[0]  # seeded


def test_ci_widens_when_seeds_disagree_and_point_is_the_seed_mean():
    rng = np.random.default_rng(1)
    x = rng.normal(0.0, 1.0, 300)
    d = bs.resampling_design(np.zeros(300), None, np.repeat(np.arange(30), 10), min_units=5)
    agree = bs.hierarchical_bootstrap(_mean_of(x, (0.0, 0.0, 0.0)), 3, d, n_boot=400, seed=0)
    disagree = bs.hierarchical_bootstrap(_mean_of(x, (-0.5, 0.0, 0.5)), 3, d, n_boot=400, seed=0)
    assert disagree.value[0] == pytest.approx(agree.value[0]) == pytest.approx(x.mean())
    assert disagree.seed_sd[0] == pytest.approx(0.5) and agree.seed_sd[0] == pytest.approx(0.0)
    width = lambda r: r.ci_high[0] - r.ci_low[0]
    assert width(disagree) > 1.5 * width(agree)


def test_cluster_bootstrap_is_wider_than_tile_bootstrap_for_clustered_data():
    rng = np.random.default_rng(1)
    x = np.repeat(rng.normal(0, 1.0, 10), 30) + rng.normal(0, 0.1, 300)
    slides = np.repeat(np.arange(10), 30)
    wide = bs.hierarchical_bootstrap(_mean_of(x), 1, bs.resampling_design(np.zeros(300), None, slides), n_boot=300)
    narrow = bs.hierarchical_bootstrap(_mean_of(x), 1, bs.resampling_design(np.zeros(300)), n_boot=300)
    assert (wide.ci_high - wide.ci_low)[0] > 3 * (narrow.ci_high - narrow.ci_low)[0]


def test_paired_comparison_pairs_by_seed():
    """Δ_s = θ^A_s − θ^B_s on the same units and seeds: a seed effect shared by A and B cancels."""
    rng = np.random.default_rng(2)
    _labels = rng.integers(0, 2, 400)  # unused; keeps the random stream of the draws below
    right_a, right_b = rng.random(400) < 0.85, rng.random(400) < 0.75
    seed_effect = np.array([-0.1, 0.0, 0.1])
    d = bs.resampling_design(np.zeros(400), None, np.repeat(np.arange(40), 10))

    def acc(right):
        return lambda s, idx: right[idx].mean() + seed_effect[s]

    def paired(seeds, idx):
        return bs.mean_over_seeds(seeds[0], lambda s: np.array([acc(right_a)(s, idx) - acc(right_b)(s, idx)]))

    r = bs.hierarchical_bootstrap(paired, 3, d, n_boot=400, seed=0)
    assert r.value[0] == pytest.approx(right_a.mean() - right_b.mean())
    assert r.ci_low[0] > 0 and r.p_value[0] < 0.01
    assert r.seed_sd[0] == pytest.approx(0.0, abs=1e-12)  # the shared seed effect cancels
    # unpaired (B's seed drawn independently) the seed effect does not cancel: a wider interval
    def unpaired(seeds, idx):
        g = np.random.default_rng(int(idx.sum()))
        b = bs.mean_over_seeds(g.integers(0, 3, 3), lambda s: np.array([acc(right_b)(s, idx)]))
        return bs.mean_over_seeds(seeds[0], lambda s: np.array([acc(right_a)(s, idx)])) - b

    u = bs.hierarchical_bootstrap(unpaired, 3, d, n_boot=400, seed=0)
    assert (u.ci_high - u.ci_low)[0] > 1.3 * (r.ci_high - r.ci_low)[0]
    null = bs.hierarchical_bootstrap(lambda seeds, idx: np.array([0.0]), 3, d, n_boot=50)
    assert null.p_value[0] == 1.0


def test_streams_draw_seeds_independently():
    """Two sources with opposite seed effects: one stream shares the draw (effects cancel in the
    mean), two streams draw independently (they do not)."""
    x = np.zeros(50)
    d = bs.resampling_design(np.zeros(50))
    effect = np.array([[-1.0, 1.0], [1.0, -1.0]])  # source k, seed s

    def stat(seeds, idx):
        return np.array([np.mean([bs.mean_over_seeds(seeds[min(k, len(seeds) - 1)], lambda s: effect[k, s] + x[idx].mean())
                                  for k in range(2)])])

    shared = bs.hierarchical_bootstrap(stat, 2, d, n_boot=200, n_streams=1)
    independent = bs.hierarchical_bootstrap(stat, 2, d, n_boot=200, n_streams=2)
    assert shared.ci_high[0] - shared.ci_low[0] == pytest.approx(0.0)
    assert independent.ci_high[0] - independent.ci_low[0] > 0.5


# ---------------------------------------------------------------- variants
def test_variant_accuracy_and_consistency_hand_computed():
    y = np.array([0, 1, 1, 0])
    preds = {"raw": np.array([0, 1, 1, 0]), "reinhard/t1": np.array([0, 1, 0, 0]), "macenko/t2": np.array([1, 1, 0, 0])}
    acc = {v: float(np.mean(p == y)) for v, p in preds.items()}
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
    assert mixed.value > 0.6 > 0.1 > separated.value
    assert mixed.support > 0.5 and separated.support > 0.5
    assert mixed.n == separated.n == 144


def test_robustness_index_hand_computed_and_same_group_excluded():
    # embeddings on a circle: angles make cosine neighbours explicit
    ang = np.array([0.0, 0.1, 0.2, 1.5, 1.6, 1.7])
    f = np.stack([np.cos(ang), np.sin(ang)], 1)
    lab = np.array([0, 0, 0, 1, 1, 1])
    cen = np.array(["a", "b", "a", "b", "a", "b"])
    r = rob.robustness_index(f, lab, cen, None, k_candidates=[1])
    # nearest neighbours 0->1, 1->0/2, 2->1, 3->4, 4->3/5, 5->4: all same class, other center (SO)
    assert (r.k, r.value, r.support) == (1, 1.0, 1.0)
    # 0 and 1 in one slide, 3 and 4 in one slide: 0's nearest allowed neighbour is 2 (same center: SS),
    # 1's is 2 (SO), 3's is 5 (SS), 4's is 5 (SO), 2's is 1 (SO), 5's is 4 (SO): RI = 4/4, support 4/6
    grp = np.array(["g0", "g0", "g2", "g3", "g3", "g5"])
    r2 = rob.robustness_index(f, lab, cen, grp, k_candidates=[1])
    assert r2.value == 1.0 and r2.support == pytest.approx(4 / 6)
    with pytest.raises(ValueError, match="no k candidate"):
        rob.robustness_index(f, lab, cen, None, k_candidates=[10])


def test_robustness_index_is_croma():
    import croma

    feats, lab, cen, grp = _two_center_embeddings(True, seed=5)
    feats = feats + np.random.default_rng(9).normal(0, 1.0, feats.shape)  # neither pure biology nor pure center
    ks = [1, 3, 5, 9]
    ours = rob.robustness_index(feats, lab, cen, grp, k_candidates=ks)
    manifest = pd.DataFrame(dict(sample_id=[str(i) for i in range(len(lab))], image_path="-",
                                 label=lab.astype(str), group_id=grp, center=cen))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # croma warns when support < 100 %
        ref = croma.RI.compute(feats, manifest, confounder_column="center", k_candidates=ks)
    assert (ours.k, ours.value, ours.support) == (ref.k, pytest.approx(ref.value), pytest.approx(ref.support))
    assert 0.0 < ours.value < 1.0


def test_gaussian_w2_agrees_with_pot_and_stays_finite_where_pot_does_not() -> None:
    """POT's Bures-Wasserstein distance on the same moments: equal on full-rank covariances; with
    fewer samples than dimensions (rank-deficient Σ) POT gives NaN, ours a finite value."""
    import warnings

    import ot

    from stainshift.metrics.batch_effect import gaussian_w2

    rng = np.random.default_rng(0)
    for n, d, full_rank in ((400, 16, True), (60, 128, False)):
        x, y = rng.normal(size=(n, d)), rng.normal(size=(n, d)) + 0.3
        ours = gaussian_w2(x, y)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pot = float(ot.gaussian.bures_wasserstein_distance(x.mean(0), y.mean(0), np.cov(x, rowvar=False),
                                                               np.cov(y, rowvar=False)))
        assert np.isfinite(ours)
        if full_rank:
            assert ours == pytest.approx(pot, rel=1e-10)
        else:
            assert np.isnan(pot)
