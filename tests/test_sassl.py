"""SASSL (seed 002): relation / affinity matrices, the discriminator, the adversarial signs, batches."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from stainshift.methods.base import StepContext, build_method
from stainshift.methods.losses import (
    affinity_matrix,
    discriminator_loss,
    generator_adversarial_loss,
    pair_means,
    relation_matrix,
)
from stainshift.methods.sassl import SASSLConfig, SASSLModel, SSLBase, StainDiscriminator, sassl_step

torch.set_num_threads(1)

TINY = {"arch": "resnet18", "small_input": True, "widths": [8, 8, 8, 16, 16]}


def test_relation_matrix_hand_built() -> None:
    r = relation_matrix(["s1", "s2", "s1", "s3", "s2"])
    expected = torch.tensor([
        [1, 0, 1, 0, 0],
        [0, 1, 0, 0, 1],
        [1, 0, 1, 0, 0],
        [0, 0, 0, 1, 0],
        [0, 1, 0, 0, 1],
    ], dtype=torch.float32)
    assert torch.equal(r, expected)
    assert torch.equal(relation_matrix(torch.tensor([7, 3, 7, 9, 3])), expected)


def test_affinity_is_l1_l2_transpose_and_pair_means() -> None:
    l1, l2 = torch.randn(4, 3), torch.randn(4, 3)
    assert torch.allclose(affinity_matrix(l1, l2, normalize=False), l1 @ l2.T)
    a = affinity_matrix(l1, l2)
    assert a.shape == (4, 4) and float(a.abs().max()) <= 1 + 1e-6
    r = relation_matrix([0, 0, 1, 1])
    a_diff, a_same = pair_means(a, r)
    assert float(a_same) == pytest.approx(float(a[r.bool()].mean()), rel=1e-6)
    assert float(a_diff) == pytest.approx(float(a[~r.bool()].mean()), rel=1e-6)
    assert float(discriminator_loss(a, r)) == pytest.approx(float(a_diff - a_same), rel=1e-6)
    assert float(generator_adversarial_loss(a, r)) == pytest.approx(float(-(a_diff + a_same)), rel=1e-6)


def test_discriminator_is_residual() -> None:
    d = StainDiscriminator(6, depth=2)
    for m in d.modules():
        if isinstance(m, nn.Linear):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)
    s = torch.randn(3, 6)
    assert torch.equal(d(s), s)  # the shortcut after the last LeakyReLU


def test_trained_discriminator_affinity_matches_relation() -> None:
    """A hand-built batch whose projections carry a per-slide colour cast: D learns A ≈ R."""
    g = torch.Generator().manual_seed(0)
    slides = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    cast = torch.randn(4, 8, generator=g) * 2.0  # the "stain" of each slide
    content = torch.randn(8, 8, generator=g)  # what the tile shows
    s1 = content + cast[slides] + 0.1 * torch.randn(8, 8, generator=g)
    s2 = content + cast[slides] + 0.1 * torch.randn(8, 8, generator=g)
    r = relation_matrix(slides)
    torch.manual_seed(0)
    d = StainDiscriminator(8, depth=2)
    opt = torch.optim.Adam(d.parameters(), lr=1e-2)
    for _ in range(150):
        loss = discriminator_loss(affinity_matrix(d(s1), d(s2)), r)
        opt.zero_grad()
        loss.backward()
        opt.step()
    a = affinity_matrix(d(s1), d(s2)).detach()
    assert float(a[r.bool()].min()) > float(a[~r.bool()].max())  # the target pattern is R
    assert torch.equal((a > 0.5 * (a[r.bool()].min() + a[~r.bool()].max())).float(), r)


def _tiny_sassl(base: str = "simsiam", seed: int = 0) -> SASSLModel:
    torch.manual_seed(seed)
    enc = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 12))
    return SASSLModel(SSLBase(enc, 12, base=base, proj_dim=8, pred_dim=4, queue_size=16))


def test_adversarial_step_moves_encoder_and_discriminator_in_opposite_directions() -> None:
    g = torch.Generator().manual_seed(1)
    slides = torch.tensor([0, 0, 1, 1, 2, 2])
    x = torch.rand(6, 3, 4, 4, generator=g) + torch.rand(3, 3, 1, 1, generator=g)[slides]
    v1, v2 = x, x + 0.05 * torch.randn(x.shape, generator=g)
    r = relation_matrix(slides)

    # analytic: on the stain term (different-slide affinities) the two objectives' gradients oppose
    a = torch.randn(6, 6, requires_grad=True)
    (gd,) = torch.autograd.grad(discriminator_loss(a, r), a)
    (gg,) = torch.autograd.grad(generator_adversarial_loss(a, r), a)
    off = ~r.bool()
    assert (gd[off] > 0).all() and (gg[off] < 0).all()

    # one real step: D lowers the cross-slide affinity, the encoder (with D fixed) raises it
    model = _tiny_sassl()
    model.eval()  # freeze BN statistics so the before/after measurements see the same function

    def cross_affinity() -> float:
        with torch.no_grad():
            s1, s2, _, _ = model.ssl(v1, v2)
            return float(pair_means(model.affinity(s1, s2), r)[0])

    opt_d = torch.optim.SGD(model.discriminator.parameters(), lr=1e-2)
    opt_g = torch.optim.SGD(model.ssl.online_parameters(), lr=1e-2)
    before = cross_affinity()
    enc_before = [p.detach().clone() for p in model.ssl.online_parameters()]
    cfg = SASSLConfig(adv_weight=1.0)
    # D step only (G step with zero learning rate)
    for group in opt_g.param_groups:
        group["lr"] = 0.0
    sassl_step(model, v1, v2, slides, opt_g, opt_d, cfg)
    after_d = cross_affinity()
    assert after_d < before
    # G step only, on the stain term alone (no SSL loss): cross-slide affinity rises
    for group in opt_g.param_groups:
        group["lr"] = 1e-2
    for group in opt_d.param_groups:
        group["lr"] = 0.0
    d_before = [p.detach().clone() for p in model.discriminator.parameters()]
    model.ssl.forward = _adv_only(model.ssl.forward)  # type: ignore[method-assign]
    sassl_step(model, v1, v2, slides, opt_g, opt_d, cfg)
    after_g = cross_affinity()
    assert after_g > after_d
    assert all(torch.equal(p, q) for p, q in zip(d_before, model.discriminator.parameters()))
    assert any(not torch.equal(p, q) for p, q in zip(enc_before, model.ssl.online_parameters()))


def _adv_only(forward):  # noqa: ANN001, ANN202 - small test helper
    def wrapped(v1: torch.Tensor, v2: torch.Tensor):  # noqa: ANN202
        s1, s2, loss, h1 = forward(v1, v2)
        return s1, s2, loss * 0.0, h1

    return wrapped


@pytest.mark.parametrize("base", ["simsiam", "simclr", "byol", "moco"])
def test_each_ssl_base_runs_a_step(base: str) -> None:
    model = _tiny_sassl(base)
    model.train()
    g = torch.Generator().manual_seed(2)
    x = torch.rand(6, 3, 4, 4, generator=g)
    opt_d = torch.optim.Adam(model.discriminator.parameters(), lr=1e-3)
    opt_g = torch.optim.Adam(model.ssl.online_parameters(), lr=1e-3)
    target_before = [p.clone() for p in model.ssl.target_encoder.parameters()] if model.ssl.target_encoder else []
    queue_before = model.ssl.queue.clone() if base == "moco" else None
    out = sassl_step(model, x, x.flip(-1), [0, 0, 1, 1, 2, 2], opt_g, opt_d)
    assert all(np.isfinite(v) for v in out.values())
    assert out["same_slide_pairs"] == 6.0  # three slides × 2 tiles → 6 ordered off-diagonal pairs
    if target_before:
        assert any(not torch.equal(p, q) for p, q in zip(target_before, model.ssl.target_encoder.parameters()))
    if queue_before is not None:
        assert not torch.equal(queue_before, model.ssl.queue)


def test_slide_balanced_batches_reach_sassl_with_same_slide_pairs() -> None:
    from stainshift.data import EpochBatchSampler

    cfg = {"encoder": TINY, "image_size": 16, "tiles_per_slide": 2, "proj_dim": 16, "pred_dim": 8,
           "views": {"crop_scale": [0.5, 1.0], "blur_p": 0.0}, "optimizer": "adam", "lr": 1e-3}
    method = build_method("sassl", cfg, num_classes=2)
    assert method.slide_balanced and not method.automatic_optimization
    slide_of_tile = np.repeat(np.arange(5), [7, 3, 9, 4, 5])  # unequal slides
    sampler = EpochBatchSampler(len(slide_of_tile), 8, seed=0, slide_ids=slide_of_tile,
                                tiles_per_slide=int(cfg["tiles_per_slide"]))
    batches = list(sampler)
    assert len(batches) == len(slide_of_tile) // 8
    for b in batches:
        counts = np.bincount(slide_of_tile[b])
        assert counts[counts > 0].min() >= 2

    opts = method.configure_optimizers(steps_per_epoch=len(batches), epochs=1)
    assert set(opts) == {"encoder", "disc"}
    ctx = StepContext(device=torch.device("cpu"), optimizers={k: v[0] for k, v in opts.items()},
                      schedulers={k: v[1] for k, v in opts.items()},
                      params={k: [p for grp in v[0].param_groups for p in grp["params"]] for k, v in opts.items()})
    g = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (len(slide_of_tile), 3, 16, 16), generator=g, dtype=torch.uint8)
    enc_w = method.encoder.stages[0][0].conv1.weight.detach().clone()
    disc_w = method.model.discriminator.body[0].weight.detach().clone()
    b = torch.as_tensor(batches[0])
    out = method.training_step({"image": images[b], "slide": torch.as_tensor(slide_of_tile[b]),
                                "label": torch.zeros(8, dtype=torch.long)}, ctx)
    assert torch.isfinite(out["loss"]) and float(out["same_slide_pairs"]) >= 8  # ≥ 1 pair per slide present
    assert not torch.equal(enc_w, method.encoder.stages[0][0].conv1.weight)
    assert not torch.equal(disc_w, method.model.discriminator.body[0].weight)


def test_pretrain_through_the_loop_resumes_exactly(tmp_path) -> None:  # noqa: ANN001
    """SASSL's manual (two-optimizer) updates in the real loop; kill + resume = same weights."""
    from stainshift.train import load, method_config, pretrain
    from test_data import make_stores

    stores = make_stores(tmp_path / "stores", n_tiles=8)
    cfg = method_config({"defaults": {"epochs": 2, "batch_size": 8, "seed": 0, "num_workers": 0, "device": "cpu"},
                         "sassl": {"encoder": TINY, "proj_dim": 16, "pred_dim": 8, "tiles_per_slide": 2,
                                   "views": {"crop_scale": [0.5, 1.0], "blur_p": 0.0}}}, "sassl")
    full = pretrain("sassl", stores, cfg, tmp_path / "full", progress=False)

    def kill(epoch: int, row: dict) -> None:
        assert row["same_slide_pairs"] > 0 and {"loss_d", "loss_adv", "lr_encoder", "lr_disc"} <= set(row)
        raise KeyboardInterrupt("simulated kill after the first epoch")

    with pytest.raises(KeyboardInterrupt):
        pretrain("sassl", stores, cfg, tmp_path / "resumed", callbacks=[kill], progress=False)
    resumed = pretrain("sassl", stores, cfg, tmp_path / "resumed", progress=False)
    a, b = load(full), load(resumed)
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k


def test_non_finite_loss_skips_every_update() -> None:
    model = _tiny_sassl()
    before = [p.detach().clone() for p in model.parameters()]
    x = torch.rand(6, 3, 4, 4)
    x[0, 0, 0, 0] = float("nan")
    opt_d = torch.optim.SGD(model.discriminator.parameters(), lr=0.1)
    opt_g = torch.optim.SGD(model.ssl.online_parameters(), lr=0.1)
    out = sassl_step(model, x, x, [0, 0, 1, 1, 2, 2], opt_g, opt_d)
    assert not np.isfinite(out["loss"]) and set(out) == {"loss"}
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_adversarial_terms_skip_without_both_pair_sets() -> None:
    """One slide in the batch (R all ones): D has nothing to separate, so neither side is updated by it."""
    model = _tiny_sassl()
    x = torch.rand(6, 3, 4, 4, generator=torch.Generator().manual_seed(5))
    opt_d = torch.optim.SGD(model.discriminator.parameters(), lr=0.1)
    opt_g = torch.optim.SGD(model.ssl.online_parameters(), lr=0.1)
    d_before = [p.detach().clone() for p in model.discriminator.parameters()]
    out = sassl_step(model, x, x.flip(-1), [7] * 6, opt_g, opt_d)
    assert out["adv_active"] == 0.0 and out["loss_adv"] == 0.0 and out["loss_d"] == 0.0
    assert out["loss"] == pytest.approx(out["loss_ssl"])
    assert all(torch.equal(p, q) for p, q in zip(d_before, model.discriminator.parameters()))


def test_adversarial_readings() -> None:
    """paper rewards raising every affinity (collapse); reversal and gap only act on the difference."""
    r = relation_matrix([0, 0, 1, 1])
    a = torch.full((4, 4), 0.3, requires_grad=True)
    (g_paper,) = torch.autograd.grad(generator_adversarial_loss(a, r, "paper"), a)
    assert (g_paper < 0).all()  # descending raises every entry
    (g_rev,) = torch.autograd.grad(generator_adversarial_loss(a, r, "reversal"), a)
    assert float(g_rev.sum()) == pytest.approx(0.0, abs=1e-6)  # level-free: same and other pulled apart equally
    (g_gap,) = torch.autograd.grad(generator_adversarial_loss(a, r, "gap"), a)
    assert float(g_gap.abs().max()) == 0.0  # equal pair means: nothing to do, whatever the level
    with pytest.raises(ValueError, match="adv_mode"):
        generator_adversarial_loss(a, r, "nope")


def test_simclr_base_logs_its_chance_level() -> None:
    model = _tiny_sassl("simclr")
    x = torch.rand(6, 3, 4, 4, generator=torch.Generator().manual_seed(6))
    out = sassl_step(model, x, x.flip(-1), [0, 0, 1, 1, 2, 2], torch.optim.SGD(model.ssl.online_parameters(), lr=0.1),
                     torch.optim.SGD(model.discriminator.parameters(), lr=0.1))
    assert out["loss_ssl_chance"] == pytest.approx(np.log(11)) and {"emb_std", "proj_std", "affinity_std"} <= set(out)
