"""InfoGAN-WGAN-GP (seed 004 §3.3): gradient penalty and info loss against direct formulas, shapes,
seeded determinism of a few training iterations, sample grid, checkpoint round trip."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stainshift.nuclei.infogan import (Discriminator, Generator, _augment, gradient_penalty, info_loss,
                                       load_infogan, predict_codes, sample_grid, save_infogan, train_infogan)

torch.set_num_threads(1)


def test_gradient_penalty_of_a_linear_critic_is_norm_minus_one_squared() -> None:
    torch.manual_seed(0)
    w = torch.randn(3, 4, 4) * 0.3
    real, fake = torch.randn(5, 3, 4, 4), torch.randn(5, 3, 4, 4)
    gp = gradient_penalty(lambda x: (x * w).flatten(1).sum(1), real, fake)
    assert gp.item() == pytest.approx((w.norm().item() - 1) ** 2, rel=1e-5)


def test_gradient_penalty_of_a_nonlinear_critic_matches_autograd() -> None:
    torch.manual_seed(0)
    critic = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    real, fake = torch.randn(6, 3, 2, 2), torch.randn(6, 3, 2, 2)
    gp = gradient_penalty(critic, real, fake, generator=torch.Generator().manual_seed(7))
    eps = torch.rand(6, 1, 1, 1, generator=torch.Generator().manual_seed(7))
    expected = []
    for i in range(6):  # per sample, independently of the batch
        x_hat = (eps[i] * real[i] + (1 - eps[i]) * fake[i]).unsqueeze(0).requires_grad_(True)
        (grad,) = torch.autograd.grad(critic(x_hat).sum(), x_hat)
        expected.append((grad.norm() - 1) ** 2)
    assert gp.item() == pytest.approx(torch.stack(expected).mean().item(), rel=1e-5)
    gp.backward()  # differentiable w.r.t. the critic's weights (the output bias does not enter ∇_x D)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in list(critic.parameters())[:-1])


def test_info_loss_is_minus_mean_log_softmax_at_the_codes() -> None:
    torch.manual_seed(0)
    logits, codes = torch.randn(10, 5), torch.randint(0, 5, (10,))
    expected = -F.log_softmax(logits, dim=1)[torch.arange(10), codes].mean()
    assert info_loss(logits, codes).item() == pytest.approx(expected.item(), rel=1e-6)


def test_generator_and_discriminator_shapes() -> None:
    torch.manual_seed(0)
    g, d = Generator(z_dim=16, n_codes=3, size=40, width=8), Discriminator(n_codes=3, size=40, width=8)
    x = g(torch.randn(4, 16), torch.tensor([0, 1, 2, 0]))
    assert x.shape == (4, 3, 40, 40) and x.min() >= -1 and x.max() <= 1
    scores, logits = d(x)
    assert scores.shape == (4,) and logits.shape == (4, 3)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in d.modules())
    with pytest.raises(ValueError, match="multiple of 8"):
        Generator(size=36)


def test_augment_only_flips_and_rotates() -> None:
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    out = _augment(x, torch.Generator().manual_seed(0))
    for a, b in zip(x, out):  # b is one of the 8 dihedral transforms of a
        variants = [torch.rot90(v, r, (1, 2)) for v in (a, a.flip(-1)) for r in range(4)]
        assert any(torch.equal(b, v) for v in variants)


def _crops(n: int = 24, size: int = 16) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_training_is_seeded_finite_and_predicts_codes(tmp_path) -> None:
    kw = dict(n_codes=3, iterations=3, batch_size=8, n_critic=2, width=4, log_every=2, seed=3)
    msgs: list[str] = []
    model, hist = train_infogan(_crops(), log=msgs.append, **kw)
    _, hist2 = train_infogan(_crops(), **kw)
    assert [r["iteration"] for r in hist] == [2.0, 3.0] and len(msgs) == 2 and "GP" in msgs[0]
    keys = ("critic_loss", "wasserstein", "gp", "info_loss", "g_loss")
    assert all(np.isfinite(r[k]) for r in hist for k in keys)
    assert [[r[k] for k in keys] for r in hist] == [[r[k] for k in keys] for r in hist2]
    codes, probs = predict_codes(model, _crops(10))
    assert codes.shape == (10,) and probs.shape == (10, 3) and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert np.array_equal(codes, probs.argmax(1))
    grid = sample_grid(model, 4, seed=1)
    assert grid.shape == (3, 4, 16, 16, 3) and grid.dtype == np.uint8
    assert np.array_equal(grid, sample_grid(model, 4, seed=1))
    path = save_infogan(model, tmp_path / "gan.pt")
    again = load_infogan(path)
    assert again.config == model.config
    assert np.array_equal(predict_codes(again, _crops(10))[1], probs)


def test_load_infogan_errors_name_the_path(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_infogan(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    torch.save({"weights": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="bad.pt"):
        load_infogan(bad)
