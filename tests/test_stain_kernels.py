"""Fused numba kernels of the normalizers (``stainshift.stain.kernels``) against float references.

* each per-pixel map against a float64 evaluation of the same formula (given the same fitted
  parameters): at most one grey level on real tiles, random pixels (hypothesis), blank and black;
* each whole normalizer (estimate + map) against the torch ops (the code CUDA runs) on CPU;
* the estimation helpers (tissue OD moments, percentiles, dictionary learning) against numpy/torch.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from stainshift.stain import get_normalizer, kernels
from stainshift.stain._common import background_weight_lut, percentiles_np
from stainshift.stain.macenko import TISSUE_RULES, Macenko
from stainshift.stain.reinhard import (
    LAB2F,
    LAB_OFFSET,
    RGB2XYZN,
    XYZN2RGB,
    Reinhard,
    affine_in_f,
    rgb_to_lab_np,
    srgb_decode_lut,
)
from stainshift.stain.vahadane import Vahadane, nn_lasso2_torch, vahadane_vectors_np, vahadane_vectors_torch

from test_stain import he_image

METHODS = ["reinhard", "macenko", "vahadane"]
_DELTA = 6.0 / 29.0


def real_tiles(data: Path, n: int = 6, size: int = 128) -> np.ndarray:
    """Tissue crops of the real torchstain / tiatoolbox H&E images in ../shared/data."""
    tiles = []
    for name in ("torchstain/source.jpg", "tiatoolbox/target_image.jpg", "torchstain/target.jpg"):
        img = np.asarray(Image.open(data / name).convert("RGB"))
        for y in range(0, img.shape[0] - size + 1, size):
            for x in range(0, img.shape[1] - size + 1, size):
                crop = img[y : y + size, x : x + size]
                if (crop.min(axis=2) < 200).mean() > 0.5:
                    tiles.append(np.ascontiguousarray(crop))
    assert len(tiles) >= n
    return np.stack(tiles[:: max(1, len(tiles) // n)][:n])


def blend_round(src: np.ndarray, rec: np.ndarray, normalizer) -> np.ndarray:
    """Reference background blend + rounding (float64) of the normalizers' convention."""
    darkest = src.min(axis=-1)
    w = background_weight_lut(normalizer.io, normalizer.beta)[darkest][..., None]
    rec = np.clip(rec, 0.0, 255.0)
    out = src + w * (rec - src.astype(np.float64))
    return np.floor(np.clip(out, 0, 255) + 0.5).astype(np.uint8)


# ----------------------------------------------------------------------------- float64 references
def reinhard_reference(img: np.ndarray, normalizer: Reinhard, src_params) -> np.ndarray:
    flat = img.reshape(-1, 3)
    mat, const = affine_in_f(src_params, normalizer.params.to_numpy())
    f = (rgb_to_lab_np(flat) - LAB_OFFSET) @ LAB2F
    h = f @ mat + const
    t = np.where(h > _DELTA, h**3, 3 * _DELTA**2 * (h - 4.0 / 29.0))
    lin = np.clip(t @ XYZN2RGB, 0.0, 1.0)
    enc = np.where(lin <= 0.0031308, 12.92 * lin, 1.055 * np.power(lin, 1 / 2.4) - 0.055) * 255.0
    return blend_round(flat, enc, normalizer).reshape(img.shape)


def macenko_reference(img: np.ndarray, normalizer: Macenko, params) -> np.ndarray:
    flat = img.reshape(-1, 3)
    mix, bias = normalizer._od_map(params, normalizer.params.to_numpy())
    rec = np.exp(np.log1p(flat.astype(np.float64)) @ mix + bias)
    return blend_round(flat, rec, normalizer).reshape(img.shape)


def vahadane_reference(img: np.ndarray, normalizer: Vahadane, params) -> np.ndarray:
    flat = img.reshape(-1, 3)
    ref = normalizer.params.to_numpy()
    od = torch.as_tensor(np.log(normalizer.io) - np.log1p(flat.astype(np.float64)))[None]
    codes = nn_lasso2_torch(od, torch.as_tensor(params.stain_matrix)[None], normalizer.lambda_conc)[0].numpy()
    codes = codes * (ref.max_conc / params.max_conc)[None, :]
    rec = normalizer.io * np.exp(-(codes @ ref.stain_matrix))
    return blend_round(flat, rec, normalizer).reshape(img.shape)


def kernel_map(method: str, img: np.ndarray, target: np.ndarray, params=None) -> tuple[np.ndarray, np.ndarray]:
    """(kernel output, float64 reference) of one image under the parameters fitted on it."""
    n = get_normalizer(method).fit(target)
    flat = np.ascontiguousarray(img).reshape(-1, 3)
    out = np.empty_like(flat)
    if method == "reinhard":
        src = params or n.stats_np(flat)[0]
        mat, const = affine_in_f(src, n.params.to_numpy())
        kernels.reinhard_map(flat, out, srgb_decode_lut(), RGB2XYZN, mat, const, XYZN2RGB, *n._wline)
        return out.reshape(img.shape), reinhard_reference(img, n, src)
    params = params or n.estimate_np(img)[0]
    n._map_np(flat, out, params, n.params.to_numpy())
    ref = (macenko_reference if method == "macenko" else vahadane_reference)(img, n, params)
    return out.reshape(img.shape), ref


# ----------------------------------------------------------------------------- maps vs float64
@pytest.mark.parametrize("method", METHODS)
def test_kernel_maps_match_float64_reference_on_real_tiles(method: str, shared_data: Path) -> None:
    tiles = real_tiles(shared_data)
    target = he_image("center_a", seed=3)
    for tile in tiles:
        out, ref = kernel_map(method, tile, target)
        diff = np.abs(out.astype(int) - ref.astype(int))
        assert diff.max() <= 1, (method, diff.max())
        assert diff.mean() < 0.01


@settings(max_examples=25, deadline=None)
@given(pixels=arrays(np.uint8, (24, 24, 3)), method=st.sampled_from(METHODS))
def test_kernel_maps_match_float64_reference_on_any_pixels(pixels: np.ndarray, method: str) -> None:
    """Random pixels (any colour, not H&E) under the parameters of a real-looking image."""
    donor = he_image("center_b", seed=2, n=48)
    n = get_normalizer(method)
    params = n.stats_np(donor)[0] if method == "reinhard" else n.estimate_np(donor)[0]
    out, ref = kernel_map(method, pixels, he_image("center_a", seed=3, n=48), params)
    assert np.abs(out.astype(int) - ref.astype(int)).max() <= 1


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("value", [0, 245, 255])
def test_uniform_tiles_come_back_unchanged_and_flagged(method: str, value: int) -> None:
    """Blank glass, white and black tiles have no two-stain estimate: identity, flagged, no NaN."""
    n = get_normalizer(method).fit(he_image("center_a", seed=3))
    tile = np.full((2, 32, 32, 3), value, np.uint8)
    assert np.array_equal(n.transform(tile), tile)
    assert n.last_flags.tolist() == [True, True]


# ----------------------------------------------------------------------------- whole normalizers
@pytest.mark.parametrize("method", METHODS)
def test_kernels_agree_with_torch_ops_on_real_tiles(method: str, shared_data: Path) -> None:
    tiles = real_tiles(shared_data)
    target = he_image("center_a", seed=3)
    out_kernels = get_normalizer(method).fit(target).transform(tiles)
    ops = get_normalizer(method)
    ops.cpu_tensors_use_kernels = False
    out_ops = ops.fit(torch.from_numpy(target)).transform(torch.from_numpy(tiles)).numpy()
    diff = np.abs(out_kernels.astype(int) - out_ops.astype(int))
    assert diff.max() <= 2 and diff.mean() < 0.05, (diff.max(), diff.mean())


@pytest.mark.parametrize("method", METHODS)
def test_cpu_tensors_run_the_kernels(method: str) -> None:
    batch = np.stack([he_image("center_b", seed=8), he_image("center_c", seed=9)])
    target = he_image("center_a", seed=11)
    ref = get_normalizer(method).fit(target).transform(batch)
    n = get_normalizer(method).fit(torch.from_numpy(target))
    assert isinstance(n.params.mean if method == "reinhard" else n.params.stain_matrix, torch.Tensor)
    out = n.transform(torch.from_numpy(batch))
    assert isinstance(out, torch.Tensor) and out.dtype == torch.uint8
    assert np.array_equal(out.numpy(), ref)
    assert isinstance(n.last_flags, torch.Tensor) and n.last_flags.tolist() == [False, False]


# ----------------------------------------------------------------------------- estimation helpers
@settings(max_examples=40, deadline=None)
@given(values=arrays(np.float32, st.integers(1, 300), elements=st.floats(-10, 10, width=32)),
       q=st.floats(0, 100))
def test_percentiles_match_numpy(values: np.ndarray, q: float) -> None:
    ours = percentiles_np(values.copy(), [q, 100 - q])
    ref = np.percentile(values, [q, 100 - q])
    assert np.allclose(ours, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rule", TISSUE_RULES)
def test_tissue_od_moments_match_numpy(rule: str) -> None:
    img = he_image("center_c", seed=5, background=0.4)
    n = Macenko(tissue_rule=rule)
    flat = img.reshape(-1, 3)
    od = np.empty((len(flat), 3), np.float32)
    mean = np.empty(3)
    cov = np.empty((3, 3))
    k = kernels.tissue_od(flat, 1, TISSUE_RULES.index(rule), n._thr, n._prod_thr, n._od_table, od, mean, cov)
    od_all = -np.log((flat.astype(np.float64) + 1) / n.io)
    mask = {"all": (od_all >= n.beta).all(1), "any": (od_all >= n.beta).any(1), "sum": od_all.sum(1) >= 3 * n.beta}[rule]
    assert k == mask.sum()
    assert np.allclose(od[:k], od_all[mask], atol=1e-6)
    assert np.allclose(mean, od_all[mask].mean(0), atol=1e-6)
    assert np.allclose(cov, np.cov(od_all[mask].T), atol=1e-6)


def test_dictionary_learning_matches_torch(shared_data: Path) -> None:
    tiles = real_tiles(shared_data, 3)
    n = Vahadane()
    for tile in tiles:
        flat = tile.reshape(-1, 3)
        od = np.empty((len(flat), 3), np.float32)
        k = kernels.tissue_od(flat, 1, 0, n._thr, n._prod_thr, n._od_table, od, np.empty(3), np.empty((3, 3)))
        ours = vahadane_vectors_np(od[:k], n.lambda_dl, n.n_iter, n.dl_pixels)
        od_t = torch.from_numpy(od[:k].astype(np.float64))[None]
        theirs = vahadane_vectors_torch(od_t, torch.ones(1, k, dtype=torch.bool), n.lambda_dl, n.n_iter, n.dl_pixels)
        assert np.abs(ours - theirs[0].numpy()).max() < 1e-3
