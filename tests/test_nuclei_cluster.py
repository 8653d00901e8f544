"""Nucleus crops (centring, border padding, labels), k-means baselines, Hungarian matching and
seed 004's scores (against sklearn)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, precision_recall_fscore_support

from stainshift.models import build_encoder
from stainshift.nuclei.cluster import (apply_mapping, cluster_scores, encoder_features, hungarian_match,
                                       kmeans_features, kmeans_fit_predict, kmeans_pixels, scores_table)
from stainshift.nuclei.crops import concat_crops, nucleus_crops

torch.set_num_threads(1)


def _disc_image(centres: list[tuple[int, int]], radius: int = 5, shape: tuple[int, int] = (100, 120)):
    """White image with dark discs; instance ids 1..n; type of disc i = i % 3 + 1."""
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    image = np.full((*shape, 3), 240, np.uint8)
    inst, types = np.zeros(shape, np.int32), np.zeros(shape, np.uint8)
    for i, (x, y) in enumerate(centres, start=1):
        disc = (xx - x) ** 2 + (yy - y) ** 2 <= radius**2
        image[disc], inst[disc], types[disc] = 60, i, i % 3 + 1
    return image, inst, types


def test_crops_are_centred_on_the_disc() -> None:
    image, inst, types = _disc_image([(30, 40), (80, 60)])
    c = nucleus_crops(image, inst, types, size=20)
    assert c.crops.shape == (2, 20, 20, 3) and np.allclose(c.centroids, [[30, 40], [80, 60]])
    assert c.ids.tolist() == [1, 2] and c.labels.tolist() == [2, 3] and (c.area == c.area[0]).all()
    for crop in c.crops:
        dark = crop[..., 0] < 128
        rows, cols = np.nonzero(dark)
        assert rows.mean() == pytest.approx(10) and cols.mean() == pytest.approx(10)  # index size // 2
        assert np.array_equal(dark[1:, 1:], dark[1:, 1:][::-1, ::-1])  # point-symmetric about (10, 10)


def test_border_nuclei_are_padded_white_and_small_or_untyped_ones_handled() -> None:
    image, inst, types = _disc_image([(2, 3), (117, 97), (60, 50)])
    types[inst == 3] = 0  # untyped nucleus -> label -1
    inst[10, 60] = 9  # a 1-pixel instance: skipped by min_area
    c = nucleus_crops(image, inst, types, size=40)
    assert c.ids.tolist() == [1, 2, 3] and c.labels.tolist() == [2, 3, -1]
    assert (c.crops[0, :15] == 255).all() and (c.crops[0, :, :15] == 255).all()  # outside the image: white
    assert c.crops[0, 20, 20, 0] == 60 and c.crops[1, 20, 20, 0] == 60
    assert nucleus_crops(image, inst, None).labels.tolist() == [-1, -1, -1]
    both = concat_crops([c, c])
    assert len(both) == 6 and both.crops.shape == (6, 40, 40, 3)


def test_hungarian_recovers_a_permutation_exactly() -> None:
    rng = np.random.default_rng(0)
    true = rng.integers(0, 3, 200)
    perm = np.array([2, 0, 1])
    pred = perm[true]  # cluster = perm[class]
    mapping = hungarian_match(pred, true, 3, 3)
    assert mapping == {2: 0, 0: 1, 1: 2}
    mapped = apply_mapping(pred, mapping)
    assert cluster_scores(true, mapped, ["a", "b", "c"], n_boot=50)["accuracy"] == 1.0
    with pytest.raises(KeyError, match=r"\[3\]"):
        apply_mapping(np.array([0, 3]), mapping)


def test_hungarian_with_more_clusters_than_classes_and_an_empty_cluster() -> None:
    true = np.array([0] * 10 + [1] * 10 + [2] * 10)
    pred = np.array([0] * 6 + [3] * 4 + [1] * 10 + [2] * 7 + [3] * 3)  # cluster 4 is empty
    mapping = hungarian_match(pred, true, 5, 3)
    assert mapping[0] == 0 and mapping[1] == 1 and mapping[2] == 2  # one cluster per class
    assert mapping[3] == 0  # left-over cluster: its majority class
    assert set(mapping) == set(range(5)) and 0 <= mapping[4] < 3
    assert sorted(set(mapping.values())) == [0, 1, 2]
    # fewer clusters than classes: distinct classes, the smallest class unused
    m2 = hungarian_match(np.array([0, 0, 0, 1, 1, 1]), np.array([0, 0, 2, 1, 1, 2]), 2, 3)
    assert m2 == {0: 0, 1: 1}


def test_cluster_scores_match_sklearn_and_bootstrap_is_seeded() -> None:
    rng = np.random.default_rng(1)
    true = rng.integers(0, 3, 300)
    pred = np.where(rng.random(300) < 0.7, true, rng.integers(0, 3, 300))
    pred[pred == 2] = 0  # class 2 never predicted: precision 0 (zero_division=0)
    res = cluster_scores(true, pred, ["x", "y", "z"], n_boot=200, seed=4)
    p, r, f, s = precision_recall_fscore_support(true, pred, labels=[0, 1, 2], zero_division=0)
    assert np.allclose(res["precision"], p) and np.allclose(res["sensitivity"], r) and np.allclose(res["f1"], f)
    assert res["support"] == s.tolist() and res["accuracy"] == pytest.approx(accuracy_score(true, pred))
    assert res["macro_f1"] == pytest.approx(f.mean())
    assert res["accuracy_ci"][0] <= res["accuracy"] <= res["accuracy_ci"][1]
    assert res["accuracy_ci"] == cluster_scores(true, pred, ["x", "y", "z"], n_boot=200, seed=4)["accuracy_ci"]
    groups = np.arange(300) % 10
    by_group = cluster_scores(true, pred, ["x", "y", "z"], groups=groups, n_boot=200)
    assert by_group["accuracy"] == res["accuracy"] and by_group["resampled"] == "groups (10)"
    table = scores_table({"A": res, "B": by_group})
    assert table["method"].tolist() == ["A", "B"]
    assert table.loc[0, "Precision (%) x/y/z"] == "/".join(f"{100 * v:.1f}" for v in p)
    assert table.loc[0, "Accuracy (%) [95 % CI]"].startswith(f"{100 * res['accuracy']:.1f} [")


def test_kmeans_baselines_separate_two_obvious_groups_and_encoder_features() -> None:
    crops = np.concatenate([np.full((6, 8, 8, 3), 30, np.uint8), np.full((6, 8, 8, 3), 220, np.uint8)])
    crops[::2] += 5
    labels = kmeans_pixels(crops, k=2, seed=0)
    assert len(set(labels[:6])) == 1 and len(set(labels[6:])) == 1 and labels[0] != labels[6]
    assert np.array_equal(labels, kmeans_pixels(crops, k=2, seed=0))
    torch.manual_seed(0)
    enc = build_encoder({"arch": "resnet18", "width": 0.125, "small_input": True}).train()
    feats = encoder_features(enc, crops, batch=5)
    assert feats.shape == (12, enc.out_dim) and enc.training
    assert encoder_features(enc, crops, input_size=16).shape == (12, enc.out_dim)
    assert kmeans_features(feats, k=2, seed=0).shape == (12,)
    train = np.array([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [5.1, 5.0]])
    test_pred = kmeans_fit_predict(train, np.array([[4.9, 5.2], [0.2, -0.1]]), k=2, seed=0)
    assert test_pred[0] == kmeans_fit_predict(train, train, k=2, seed=0)[2] != test_pred[1]


def test_paired_accuracy_difference_is_the_accuracy_gap_with_a_paired_ci():
    from stainshift.nuclei.classes import paired_accuracy_difference

    rng = np.random.default_rng(0)
    ref = rng.random(400) < 0.7
    other = ref.copy()
    other[:40] = ~other[:40]                      # differs from ref on 40 nuclei only
    out = paired_accuracy_difference({"infogan": ref, "km": other, "same": ref.copy()}, "infogan", n_boot=300, seed=1)
    assert set(out) == {"km", "same"}
    assert out["km"]["diff"] == pytest.approx(ref.mean() - other.mean())
    assert out["km"]["diff_ci_low"] <= out["km"]["diff"] <= out["km"]["diff_ci_high"]
    # paired: identical predictions give a zero-width CI at 0 (an unpaired bootstrap would not)
    assert out["same"]["diff"] == out["same"]["diff_ci_low"] == out["same"]["diff_ci_high"] == 0
