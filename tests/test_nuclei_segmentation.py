"""Seed 004 nuclei segmentation: metrics (known values, invariants, MONAI parity), the U-Net, the
instance split, the threshold baseline, the data sets. The trained-net tests use tiny nets on
64 px synthetic fields, one torch thread (two threads on a shared 2-core machine oversubscribe)."""
from __future__ import annotations

import warnings
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import ndimage as ndi
from skimage.draw import disk, ellipse, line

from stainshift.nuclei.datasets import NucleiImage, load_hgsc, random_crops, tile_pairs
from stainshift.nuclei.seg_metrics import (OBJECT_SCORES, PIXEL_SCORES, object_counts, object_scores, pixel_counts,
                                           pixel_scores, sum_counts)
from stainshift.nuclei.segmentation import (build_unet, instances_from_probability, load_unet,
                                            predict_foreground, save_unet, split_touching, threshold_baseline,
                                            train_unet)

# Ruifrok & Johnston optical densities (RGB) of hematoxylin and eosin
HEMA = np.array([0.65, 0.70, 0.29])
EOSIN = np.array([0.07, 0.99, 0.11])


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def he_field(seed: int, size: int = 64, n_nuclei: int = 6, n_fibres: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """A Beer–Lambert H&E field: pink stroma, ``n_nuclei`` hematoxylin ellipses (instances, later ones
    on top) and ``n_fibres`` 3 px wide straight fibres as dark (hematoxylin-rich) as the nuclei —
    colour alone cannot tell them apart, shape can. Per-field stain strength ×0.7–1.3."""
    rng = np.random.default_rng(seed)
    h = np.full((size, size), 0.05)
    e = np.full((size, size), 0.35)
    inst = np.zeros((size, size), np.int32)
    for k in range(1, n_nuclei + 1):
        rr, cc = ellipse(rng.uniform(0, size), rng.uniform(0, size), rng.uniform(3, 6), rng.uniform(3, 6),
                         shape=(size, size), rotation=rng.uniform(0, np.pi))
        inst[rr, cc] = k
    fibre = np.zeros((size, size), bool)
    for _ in range(n_fibres):
        r0, c0, r1, c1 = rng.integers(0, size, 4)
        fibre[line(r0, c0, r1, c1)] = True
    fibre = ndi.binary_dilation(fibre) & (inst == 0)
    h[fibre], e[fibre] = rng.uniform(0.5, 0.8), 0.6
    h[inst > 0], e[inst > 0] = rng.uniform(0.5, 0.9), 0.1
    od = (h * rng.uniform(0.7, 1.3))[..., None] * HEMA + e[..., None] * EOSIN + rng.normal(0, 0.04, (size, size, 3))
    return np.clip(255 * np.exp(-od), 0, 255).astype(np.uint8), inst


# ------------------------------------------------------------------------------------------------
# pixel metrics
# ------------------------------------------------------------------------------------------------
def test_pixel_counts_and_scores_known_values():
    true = np.zeros((4, 5), bool)
    true[0, :4] = True                      # 4 true pixels
    pred = np.zeros((4, 5), bool)
    pred[0, 2:5] = True                     # 3 predicted, 2 of them right
    c = pixel_counts(pred, true)
    assert c == {"tp": 2, "fp": 1, "fn": 2, "tn": 15}
    s = pixel_scores(c)
    assert s["sensitivity"] == pytest.approx(2 / 4)
    assert s["specificity"] == pytest.approx(15 / 16)
    assert s["dice"] == pytest.approx(4 / 7)
    assert s["jaccard"] == pytest.approx(2 / 5)
    # pooling sums counts (not a mean of per-image scores)
    pooled = pixel_scores(sum_counts([c, pixel_counts(true, true)]))
    assert pooled["dice"] == pytest.approx((4 + 8) / (7 + 8))


def test_pixel_scores_empty_denominators_are_one_without_warnings():
    empty = np.zeros((3, 3), bool)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert pixel_scores(pixel_counts(empty, empty)) == dict.fromkeys(PIXEL_SCORES, 1.0)
        full = pixel_scores(pixel_counts(~empty, ~empty))
    assert full["specificity"] == 1.0 and full["dice"] == 1.0
    with pytest.raises(ValueError, match="shapes differ"):
        pixel_counts(empty, np.zeros((2, 2)))


masks = arrays(np.bool_, (6, 7))


@settings(max_examples=60, deadline=None)
@given(masks, masks)
def test_pixel_scores_bounded_and_dice_symmetric(a, b):
    s_ab, s_ba = pixel_scores(pixel_counts(a, b)), pixel_scores(pixel_counts(b, a))
    assert all(0.0 <= v <= 1.0 for v in s_ab.values())
    assert s_ab["dice"] == pytest.approx(s_ba["dice"]) and s_ab["jaccard"] == pytest.approx(s_ba["jaccard"])
    # Jaccard = Dice / (2 - Dice)
    assert s_ab["jaccard"] == pytest.approx(s_ab["dice"] / (2 - s_ab["dice"]))


# ------------------------------------------------------------------------------------------------
# object metrics
# ------------------------------------------------------------------------------------------------
def _boxes(shape, boxes) -> np.ndarray:
    out = np.zeros(shape, np.int32)
    for label, (r0, r1, c0, c1) in boxes.items():
        out[r0:r1, c0:c1] = label
    return out


def test_object_scores_hand_computed():
    true = _boxes((10, 10), {1: (0, 4, 0, 4), 2: (6, 8, 6, 8)})                        # 16 and 4 px
    pred = _boxes((10, 10), {1: (0, 4, 0, 3), 2: (0, 4, 3, 5), 3: (6, 8, 6, 9), 4: (9, 10, 0, 2)})  # 12, 8, 6, 2
    s = object_scores(pred, true)
    # IoU: (G1,S1) 12/16, (G1,S2) 4/20, (G2,S3) 4/6 → matches (>0.5): G1-S1, G2-S3; FP: S2, S4
    dq, sq = Fraction(2, 2 + 1), (Fraction(3, 4) + Fraction(2, 3)) / 2
    assert s["dq"] == pytest.approx(float(dq)) and s["sq"] == pytest.approx(float(sq))
    assert s["pq"] == pytest.approx(float(dq * sq))
    # AJI: C = 12 + 4, U = 16 + 6 + |S2| + |S4| = 32
    assert s["aji"] == pytest.approx(0.5)
    d_true = Fraction(16, 20) * Fraction(24, 28) + Fraction(4, 20) * Fraction(8, 10)
    d_pred = (12 * Fraction(24, 28) + 8 * Fraction(8, 24) + 6 * Fraction(8, 10) + 0) / 28
    assert s["object_dice"] == pytest.approx(float((d_true + d_pred) / 2))


def test_aji_counts_a_merged_prediction_twice_and_pq_needs_iou_above_half():
    true = _boxes((2, 4), {1: (0, 2, 0, 2), 2: (0, 2, 2, 4)})
    pred = _boxes((2, 4), {7: (0, 2, 0, 4)})
    s = object_scores(pred, true)
    assert s["aji"] == pytest.approx(8 / 16)          # both true nuclei pick the merged one (Kumar et al.)
    assert s["pq"] == 0.0 and s["dq"] == 0.0          # IoU exactly 0.5 is not a match


def test_object_scores_identical_disjoint_empty():
    true = _boxes((12, 12), {3: (0, 4, 0, 4), 9: (5, 9, 5, 9), 10: (10, 12, 0, 5)})
    assert object_scores(true, true) == dict.fromkeys(OBJECT_SCORES, 1.0)
    disjoint = _boxes((12, 12), {1: (0, 4, 5, 9), 2: (5, 9, 0, 4)})
    assert all(v == 0.0 for v in object_scores(disjoint, true).values())
    empty = np.zeros((12, 12), np.int32)
    assert object_scores(empty, empty) == dict.fromkeys(OBJECT_SCORES, 1.0)
    assert all(v == 0.0 for v in object_scores(empty, true).values())
    assert all(v == 0.0 for v in object_scores(true, empty).values())
    with pytest.raises(ValueError, match="integer label"):
        object_scores(true.astype(float), true)


labels = arrays(np.int32, (7, 8), elements=st.integers(0, 5))


@settings(max_examples=60, deadline=None)
@given(labels, labels)
def test_object_scores_bounded_symmetric_and_label_invariant(a, b):
    s = object_scores(a, b)
    assert all(0.0 <= v <= 1.0 + 1e-12 for v in s.values())
    r = object_scores(b, a)  # PQ, DQ, SQ and object Dice are symmetric (AJI is not)
    for k in ("pq", "dq", "sq", "object_dice"):
        assert s[k] == pytest.approx(r[k])
    renamed = np.array([0, 3, 7, 20, 21, 40])[a]      # other ids in the same order (ties go to the smaller id)
    assert object_scores(renamed, b) == pytest.approx(s)


@settings(max_examples=40, deadline=None)
@given(labels, labels)
def test_pq_counts_match_monai(a, b):
    from monai.metrics import compute_panoptic_quality

    c = object_counts(a, b)
    ref = compute_panoptic_quality(torch.from_numpy(a), torch.from_numpy(b), output_confusion_matrix=True)
    assert (c["tp"], c["fp"], c["fn"]) == tuple(int(v) for v in ref[:3])
    assert c["iou_sum"] == pytest.approx(float(ref[3]), abs=1e-5)
    if c["tp"] + c["fp"] + c["fn"]:
        assert object_scores(a, b)["pq"] == pytest.approx(float(compute_panoptic_quality(
            torch.from_numpy(a), torch.from_numpy(b))), abs=1e-5)


def test_object_counts_pool_over_images():
    a = _boxes((6, 6), {1: (0, 3, 0, 3)})
    b = _boxes((6, 6), {1: (0, 3, 0, 2)})
    pooled = sum_counts([object_counts(a, a), object_counts(b, a)])
    assert pooled["tp"] == 2 and pooled["n_true"] == 2
    assert pooled["aji_inter"] == 9 + 6 and pooled["aji_union"] == 9 + 9


# ------------------------------------------------------------------------------------------------
# network, inference, instances, baseline
# ------------------------------------------------------------------------------------------------
def _bottleneck(model: torch.nn.Module, arch: str) -> torch.nn.Module:
    if arch == "basic":
        return model.down_4
    return model.model[1].submodule[1].submodule[1].submodule[1].submodule


@pytest.mark.parametrize("arch,base", [("basic", 32), ("strided", 4)])
def test_unet_shapes_follow_seed_004(arch, base):
    model = build_unet(base, arch=arch).eval()
    seen = {}
    _bottleneck(model, arch).register_forward_hook(lambda m, i, o: seen.update(shape=tuple(o.shape)))
    with torch.no_grad():
        out = model(torch.zeros(1, 3, 144, 144))
    assert out.shape == (1, 2, 144, 144)
    assert seen["shape"] == (1, 16 * base, 9, 9)      # base 32: 512 channels at 9×9 (seed 004 §3.2)
    assert model.spec == {"arch": arch, "base_channels": base, "in_channels": 3, "out_channels": 2}
    with pytest.raises(ValueError, match="unknown U-Net arch"):
        build_unet(4, arch="resnet")


@pytest.mark.parametrize("shape", [(300, 250), (50, 70)])
def test_predict_foreground_any_size(shape):
    model = build_unet(2, arch="strided")
    image = np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8)
    prob = predict_foreground(model, image, patch=144, overlap=0.25)
    assert prob.shape == shape and prob.dtype == np.float32
    assert np.isfinite(prob).all() and prob.min() >= 0 and prob.max() <= 1
    assert model.training                             # predicts in eval mode, then restores the mode


def test_split_touching_separates_two_discs():
    fg = np.zeros((40, 60), bool)
    fg[disk((20, 20), 9)] = True
    fg[disk((20, 36), 9)] = True                      # centres 16 px apart: the discs overlap
    assert ndi.label(fg)[1] == 1
    inst = split_touching(fg)
    assert inst.dtype == np.int32 and set(np.unique(inst)) == {0, 1, 2}
    assert inst[20, 20] != inst[20, 36] and (inst > 0).sum() == fg.sum()
    # an elongated nucleus (flat distance ridge) stays one object; specks below min_area vanish
    rod = np.zeros((20, 60), bool)
    rod[8:13, 5:55] = True
    rod[1, 1] = True
    assert split_touching(rod, min_area=20).max() == 1
    prob = np.where(fg, 0.9, 0.1).astype(np.float32)
    assert instances_from_probability(prob).max() == 2


def test_threshold_baseline_finds_dark_ellipses():
    image, inst = he_field(3, size=96, n_nuclei=5, n_fibres=0)
    fg, pred = threshold_baseline(image)
    assert fg.dtype == bool and pred.dtype == np.int32 and np.array_equal(fg, pred > 0)
    assert pixel_scores(pixel_counts(fg, inst > 0))["dice"] > 0.85
    assert object_scores(pred, inst)["dq"] > 0.7


def test_unet_beats_threshold_baseline_on_held_out_fields():
    """Dark fibres fool the hematoxylin threshold; the U-Net learns that nuclei are blobs."""
    train = [he_field(s) for s in range(32)]
    test = [he_field(1000 + s) for s in range(8)]
    X = np.stack([im for im, _ in train])
    Y = np.stack([m > 0 for _, m in train]).astype(np.uint8)
    model, hist = train_unet(X, Y, epochs=12, batch_size=8, lr=5e-3, base_channels=4, seed=0,
                             val=(X[:8], Y[:8]))
    assert [h["epoch"] for h in hist] == list(range(1, 13))
    assert hist[-1]["loss"] < hist[0]["loss"] and hist[-1]["val_dice"] > 0.8
    unet = pixel_scores(sum_counts(pixel_counts(predict_foreground(model, im, patch=64) >= 0.5, m > 0)
                                   for im, m in test))
    base = pixel_scores(sum_counts(pixel_counts(threshold_baseline(im)[0], m > 0) for im, m in test))
    assert unet["dice"] > base["dice"] + 0.1, (unet, base)
    assert unet["specificity"] > base["specificity"]


def test_train_unet_is_deterministic_and_logs(tmp_path):
    X = np.stack([he_field(s, size=32)[0] for s in range(4)])
    Y = np.stack([he_field(s, size=32)[1] > 0 for s in range(4)]).astype(np.uint8)
    messages = []
    runs = [train_unet(X, Y, epochs=2, batch_size=2, base_channels=2, seed=5, log=messages.append) for _ in range(2)]
    (m1, h1), (m2, h2) = runs
    for (k, v1), v2 in zip(m1.state_dict().items(), m2.state_dict().values()):
        assert torch.equal(v1, v2), k
    assert [h["loss"] for h in h1] == [h["loss"] for h in h2] and h1[0]["val_dice"] is None
    assert len(messages) == 4 and "epoch 2/2" in messages[1]
    other, _ = train_unet(X, Y, epochs=1, batch_size=2, base_channels=2, seed=6)
    assert not torch.equal(next(iter(other.state_dict().values())), next(iter(m1.state_dict().values())))
    with pytest.raises(ValueError, match="masks shape"):
        train_unet(X, Y[:, :8], epochs=1)


def test_save_load_unet_round_trip(tmp_path):
    model = build_unet(2, arch="strided")
    path = save_unet(model, tmp_path / "unet.pt", {"epochs": 3, "train": ["hgsc_nest_top"]})
    loaded, meta = load_unet(path)
    assert meta == {"epochs": 3, "train": ["hgsc_nest_top"]} and loaded.spec == model.spec
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))
    assert [p.name for p in tmp_path.iterdir()] == ["unet.pt"]     # no temporary files left
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_unet(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt"):
        load_unet(tmp_path / "junk.pt")
    with pytest.raises(ValueError, match="no .spec"):
        save_unet(torch.nn.Linear(2, 2), tmp_path / "x.pt")


# ------------------------------------------------------------------------------------------------
# data sets
# ------------------------------------------------------------------------------------------------
def _nuclei_image(h: int = 50, w: int = 70) -> NucleiImage:
    image, inst = he_field(1, size=max(h, w))
    inst = inst[:h, :w]
    return NucleiImage("f", image[:h, :w].copy(), inst.copy(), (inst > 0).astype(np.uint8), ("a",), "test")


def test_tile_pairs_cover_the_image_and_random_crops_are_seeded():
    img = _nuclei_image()
    X, Y = tile_pairs([img], size=32)
    assert X.shape == (6, 32, 32, 3) and Y.shape == (6, 32, 32) and X.dtype == Y.dtype == np.uint8
    assert np.array_equal(X[-1], img.image[-32:, -32:]) and np.array_equal(Y[-1], img.foreground[-32:, -32:])
    assert tile_pairs([img], size=32, stride=16)[0].shape[0] == 3 * 4
    a, b = random_crops([img, img], size=24, n=10, seed=3), random_crops([img, img], size=24, n=10, seed=3)
    assert a[0].shape == (10, 24, 24, 3) and np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert set(np.unique(a[1])) <= {0, 1}
    with pytest.raises(ValueError, match="smaller than the patch size"):
        tile_pairs([img], size=64)


def test_nuclei_image_validates_and_crops():
    img = _nuclei_image()
    part = img.crop(10, 30, 5, 45)
    assert part.image.shape == (20, 40, 3) and part.instances.shape == (20, 40) and part.class_names == ("a",)
    with pytest.raises(ValueError, match="instances shape"):
        NucleiImage("x", img.image, img.instances[:5], img.types, ("a",), "t")
    with pytest.raises(ValueError, match="type id 1 has no name"):
        NucleiImage("x", img.image, img.instances, img.types, (), "t")


def test_load_hgsc_names_the_missing_file(tmp_path):
    (tmp_path / "classes.csv").write_text("class_id,class_name\n1,connective\n")
    with pytest.raises(FileNotFoundError, match="hgsc_nest.jpg"):
        load_hgsc(tmp_path)
    with pytest.raises(FileNotFoundError, match="classes.csv"):
        load_hgsc(tmp_path / "nowhere")


@pytest.mark.realdata
def test_load_hgsc_real_data_matches_nuclei_csv(shared_data):
    root = shared_data / "nuclei_hgsc"
    if not (root / "nuclei.csv").is_file():
        pytest.skip(f"nuclei_hgsc not available: {root}/nuclei.csv not found")
    images = load_hgsc(root)
    table = pd.read_csv(root / "nuclei.csv")
    assert [im.name for im in images] == ["hgsc_nest", "hgsc_stroma"]
    assert images[0].class_names == ("connective", "inflammatory", "neoplastic")
    for im, expected in zip(images, (1294, 423)):
        rows = table[table["image"] == f"{im.name}.jpg"]
        assert im.n_nuclei == len(rows) == expected
        assert im.image.shape == (1500, 1500, 3) and im.instances.dtype == np.int32
        area = np.bincount(im.instances.ravel())
        assert np.array_equal(area[rows["nucleus"].to_numpy()], rows["area"].to_numpy())
