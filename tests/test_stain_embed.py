"""Seed 000's stain-normalization latent embedding: ℓ_c, negatives, CE, layer taps, the methods."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stainshift.methods.base import StepContext, build_method
from stainshift.methods.losses import (
    latent_embedding_chance,
    latent_embedding_loss,
    latent_positive_accuracy,
    negative_indices,
    paired_ce_loss,
)
from stainshift.methods.stain_embed import LayerTap, StainBatchNormalizer

torch.set_num_threads(1)


def _cos(u: torch.Tensor, v: torch.Tensor) -> float:
    u, v = u.flatten().double(), v.flatten().double()
    return float(u @ v / (u.norm() * v.norm()))


def _loop_lc(z: torch.Tensor, zb: torch.Tensor, tau: float, negatives: list[list[int]] | None = None) -> float:
    """Eq. 1 written literally: −Σ_i log exp(sim(x_i, x̄_i)/τ) / Σ_{neg} exp(sim(x_i, ·)/τ)."""
    b = z.shape[0]
    cand = [z[j] for j in range(b)] + [zb[j] for j in range(b)]
    total = 0.0
    for i in range(b):
        others = [j for j in range(b) if j != i]
        neg_ids = negatives[i] if negatives is not None else others + [b + j for j in others]
        num = math.exp(_cos(z[i], zb[i]) / tau)
        den = sum(math.exp(_cos(z[i], cand[k]) / tau) for k in neg_ids)
        total += -math.log(num / den)
    return total


def test_lc_equals_loop_computation() -> None:
    g = torch.Generator().manual_seed(0)
    z, zb = torch.randn(5, 4, 3, 3, generator=g), torch.randn(5, 4, 3, 3, generator=g)  # layer-l maps h×w×M
    expected = _loop_lc(z, zb, tau=0.70)
    assert float(latent_embedding_loss(z, zb, tau=0.70)) == pytest.approx(expected, rel=1e-5)
    assert float(latent_embedding_loss(z, zb, tau=0.70, reduction="mean")) == pytest.approx(expected / 5, rel=1e-5)
    # a positive pair that coincides and far negatives give a lower loss than random
    aligned = latent_embedding_loss(z, z.clone(), tau=0.70)
    assert float(aligned) < expected


@pytest.mark.parametrize("b", [2, 3, 6])
def test_negative_set_has_paper_cardinality(b: int) -> None:
    idx = negative_indices(b)
    assert idx.shape == (b, 2 * (b - 1))  # per anchor: x_j and x̄_j for every j ≠ i
    pairs = set()
    for i in range(b):
        row = idx[i].tolist()
        assert len(set(row)) == len(row)
        assert set(row) == {j for j in range(b) if j != i} | {b + j for j in range(b) if j != i}
        pairs |= {(i, k) for k in row}
    assert len(pairs) == 2 * b * (b - 1)  # |S_n| over the batch


def test_sampled_negatives_fixed_count_and_loss() -> None:
    b, k = 6, 4
    idx = negative_indices(b, k, generator=torch.Generator().manual_seed(3))
    assert idx.shape == (b, k)
    for i in range(b):
        row = idx[i].tolist()
        assert len(set(row)) == k and i not in row and b + i not in row and all(0 <= c < 2 * b for c in row)
    g = torch.Generator().manual_seed(1)
    z, zb = torch.randn(b, 8, generator=g), torch.randn(b, 8, generator=g)
    got = latent_embedding_loss(z, zb, tau=0.7, num_negatives=k, generator=torch.Generator().manual_seed(3))
    assert float(got) == pytest.approx(_loop_lc(z, zb, 0.7, idx.tolist()), rel=1e-5)
    # asking for at least all negatives is the full set
    assert torch.equal(negative_indices(b, 100), negative_indices(b))
    with pytest.raises(ValueError):
        negative_indices(1)


def test_ours_c_nt_xent_is_the_shared_one_on_flattened_maps() -> None:
    """Ours(c) uses losses.nt_xent on the flattened layer-l maps: check it against the loop."""
    from stainshift.methods.losses import nt_xent

    g = torch.Generator().manual_seed(2)
    z1, z2 = torch.randn(4, 3, 2, generator=g), torch.randn(4, 3, 2, generator=g)
    w = torch.cat([z1.flatten(1), z2.flatten(1)])
    total = 0.0
    for k in range(8):
        p = (k + 4) % 8
        den = sum(math.exp(_cos(w[k], w[m]) / 0.7) for m in range(8) if m != k)
        total += -math.log(math.exp(_cos(w[k], w[p]) / 0.7) / den)
    assert float(nt_xent(z1, z2, 0.7)) == pytest.approx(total / 8, rel=1e-5)


def test_latent_embedding_chance_and_positive_accuracy() -> None:
    z = torch.ones(5, 4)  # every embedding identical: ℓ_c = log 2(B−1) per anchor
    assert float(latent_embedding_loss(z, z, reduction="mean")) == pytest.approx(latent_embedding_chance(5), rel=1e-6)
    assert latent_embedding_chance(5, reduction="sum") == pytest.approx(5 * math.log(8))
    assert latent_embedding_chance(5, num_negatives=3) == pytest.approx(math.log(3))
    assert float(latent_positive_accuracy(z, z)) == 0.0  # ties count against the positive
    g = torch.Generator().manual_seed(0)
    u = torch.randn(5, 16, generator=g)
    assert float(latent_positive_accuracy(u, u + 0.01 * torch.randn(5, 16, generator=g))) == 1.0


def test_paired_ce_is_mean_over_both_batches_and_ignores_unknown() -> None:
    g = torch.Generator().manual_seed(4)
    lx, lb = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    y = torch.tensor([0, 2, -1, 1])
    keep = y >= 0
    ce_sum = F.cross_entropy(lx[keep], y[keep], reduction="sum") + F.cross_entropy(lb[keep], y[keep], reduction="sum")
    expected = ce_sum / (2 * keep.sum())
    assert float(paired_ce_loss(lx, lb, y)) == pytest.approx(float(expected), rel=1e-6)
    assert float(paired_ce_loss(lx, lb, torch.full((4,), -1))) == 0.0


def test_layer_tap_captures_stage_map_with_gradient() -> None:
    from stainshift.models import build_encoder

    enc = build_encoder({"arch": "resnet18_narrow", "small_input": True})
    x = torch.rand(2, 3, 16, 16)
    with LayerTap(enc, "stages.3") as tap:
        enc(x)
        z = tap.pop()
    assert z.shape == (2, 256, 2, 2)
    z.sum().backward()
    assert enc.stages[0][0].conv1.weight.grad is not None
    with pytest.raises(ValueError, match="not found"):
        LayerTap(enc, "stages.9")


def test_views_share_geometry_between_raw_and_normalized() -> None:
    """x_i and x̄_i get one geometric draw (the seed-000 set from stainshift.augment), noise per view."""
    from stainshift.augment import BaselineAug

    torch.manual_seed(1)
    x = torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8)
    a, b = BaselineAug(16, p=1.0, noise_std=0.0).views(x, x.clone())
    assert torch.equal(a, b) and not torch.allclose(a, x.float() / 255)
    a, b = BaselineAug(16, p=1.0, rotation=0.0, crop_min=1.0, noise_std=0.08).views(x, x.clone())
    flipped = (x.float() / 255).flip(-1).flip(-2)  # p = 1: both flips, for both views
    for v in (a, b):
        assert 0.03 < float((v - flipped).std()) < 0.09  # σ = 0.08 before clipping to [0, 1]
    assert not torch.equal(a, b)  # independent noise per view


class _ShiftNormalizer:
    """Test double for a stain normalizer: moves every image's mean colour to the reference's."""

    def fit(self, ref: torch.Tensor) -> None:
        ref = torch.as_tensor(ref)
        if float(ref.float().std()) == 0.0:
            raise ValueError("blank reference")
        self.mean = ref.float().mean(dim=(0, 1))

    def transform(self, batch: torch.Tensor) -> torch.Tensor:
        f = torch.as_tensor(batch).float()
        return (f - f.mean(dim=(1, 2), keepdim=True) + self.mean).clamp(0, 255).round().to(torch.uint8)


def test_second_normalizer_differs_in_method_and_reference() -> None:
    norm = StainBatchNormalizer(methods=("a", "b", "c"), factory=lambda name: _ShiftNormalizer())
    g = torch.Generator().manual_seed(0)
    for _ in range(30):
        m, r = norm.draw(4, g, exclude=1, exclude_method="b")
        assert m != "b" and r != 1
    only = StainBatchNormalizer(methods=("a",), factory=lambda name: _ShiftNormalizer())
    assert only.draw(4, g, exclude_method="a")[0] == "a"  # no other candidate: the same method


def test_batch_normalizer_draws_reference_from_batch_and_falls_back() -> None:
    norm = StainBatchNormalizer(methods=("a", "b"), probs=(0.0, 1.0), factory=lambda name: _ShiftNormalizer())
    g = torch.Generator().manual_seed(0)
    batch = torch.randint(0, 256, (4, 8, 8, 3), generator=g, dtype=torch.uint8)
    out = norm(batch, generator=g, exclude=2)
    assert norm.last_method == "b" and norm.last_reference in (0, 1, 3)
    r = norm.last_reference
    assert out.shape == batch.shape and out.dtype == torch.uint8
    assert torch.allclose(out.float().mean(dim=(1, 2)), batch[r].float().mean(dim=(0, 1)).expand(4, 3), atol=1.0)
    blank = torch.full((3, 8, 8, 3), 200, dtype=torch.uint8)
    assert torch.equal(norm(blank, generator=g), blank) and norm.last_failed


def _batch(b: int = 6, size: int = 16, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    base = torch.tensor([180, 110, 170], dtype=torch.float32).view(1, 3, 1, 1)
    img = (base + 40 * torch.randn(b, 3, size, size, generator=g)).clamp(0, 255).to(torch.uint8)
    return {"image": img, "label": torch.tensor([0, 1] * (b // 2)), "slide": torch.arange(b) // 2}


@pytest.mark.parametrize("name", ["stain_embed", "stain_embed_c"])
def test_method_step_trains(name: str) -> None:
    torch.manual_seed(0)
    cfg = {"encoder": {"arch": "resnet18_narrow", "small_input": True, "widths": [8, 8, 16, 16, 16]},
           "image_size": 16, "head_hidden": 32, "views": {"p": 0.0}, "optimizer": "adam", "lr": 1e-3}
    method = build_method(name, cfg, num_classes=2)
    method.normalizer.factory = lambda _n: _ShiftNormalizer()
    assert method.supervised and method.export_encoder().out_dim == 16
    opt = torch.optim.Adam(method.parameters(), lr=3e-3)
    ctx = StepContext(device=torch.device("cpu"))
    batch = _batch()
    losses = []
    for _ in range(6):
        out = method.training_step(batch, ctx)
        assert torch.isfinite(out["loss"])
        assert {"loss_c", "loss_c_chance", "loss_e", "ce_chance", "pos_acc", "emb_std", "proj_std", "norm_s"} <= set(out)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(float(out["loss"].detach()))
    assert losses[-1] < losses[0]  # the normalizer's reference is redrawn each step; the loss still falls


def test_method_rejects_unknown_layer() -> None:
    with pytest.raises(ValueError, match="not found"):
        build_method("stain_embed", {"embed_layer": "encoder.nope", "image_size": 16}, num_classes=2)


def test_real_normalizers_on_real_tiles(shared_data) -> None:  # noqa: ANN001 - fixture
    """X̄ = g(X, x_r) with the stain library on real H&E crops of two scanners (AMi-Br)."""
    from PIL import Image

    def load(domain: str, k: int) -> np.ndarray:
        files = sorted((shared_data / "ami_br" / domain).glob("*/*.jpg"))[:k]
        if len(files) < k:
            pytest.skip(f"AMi-Br crops of {domain} not found under {shared_data}")
        return np.stack([np.asarray(Image.open(f).convert("RGB").resize((32, 32))) for f in files])

    batch = torch.from_numpy(np.concatenate([load("midog21_hamamatsu_xr", 5), load("tupac16", 1)]))
    ref = batch[-1].float().reshape(-1, 3).mean(0)
    for method in ("reinhard", "macenko", "vahadane"):
        outs = {}
        for backend in ("numpy", "torch"):
            norm = StainBatchNormalizer(methods=(method,), backend=backend)
            norm.draw = lambda b, generator=None, exclude=None, exclude_method=None: (method, b - 1)  # the TUPAC tile
            outs[backend] = norm(batch)
            assert not norm.last_failed and norm.last_reference == 5
        out = outs["numpy"]
        assert out.shape == batch.shape and out.dtype == torch.uint8
        assert (outs["numpy"].int() - outs["torch"].int()).abs().max() <= 1  # backends agree
        assert float((out[:-1].float() - batch[:-1].float()).abs().mean()) > 2.0  # the stain changed
        if method == "reinhard":  # colour statistics move to the reference tile's
            before = (batch[:-1].float().reshape(5, -1, 3).mean(1) - ref).norm(dim=1).mean()
            after = (out[:-1].float().reshape(5, -1, 3).mean(1) - ref).norm(dim=1).mean()
            assert float(after) < 0.6 * float(before)


def test_pretrain_through_the_loop_resumes_exactly(tmp_path) -> None:  # noqa: ANN001
    """The real loop (stainshift.train.pretrain) with the real normalizers; kill + resume = same weights."""
    from stainshift.train import load, method_config, pretrain
    from test_data import make_stores

    name = "stain_embed"
    stores = make_stores(tmp_path / "stores", n_tiles=8)
    cfg = method_config({"defaults": {"epochs": 2, "batch_size": 8, "seed": 0, "num_workers": 0, "device": "cpu"},
                         name: {"encoder": {"arch": "resnet18_narrow", "small_input": True, "widths": [4, 4, 8, 8, 8]},
                                "head_hidden": 8, "lr": 1e-3, "milestones": [1]}}, name)
    full = pretrain(name, stores, cfg, tmp_path / "full", progress=False)

    def kill(epoch: int, row: dict) -> None:
        assert row["norm_s"] >= 0.0 and np.isfinite(row["loss_c"])
        raise KeyboardInterrupt("simulated kill after the first epoch")

    with pytest.raises(KeyboardInterrupt):
        pretrain(name, stores, cfg, tmp_path / "resumed", callbacks=[kill], progress=False)
    resumed = pretrain(name, stores, cfg, tmp_path / "resumed", progress=False)
    a, b = load(full), load(resumed)
    assert a["spec"]["arch"] == "resnet18_narrow" and a["out_dim"] == 8
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
