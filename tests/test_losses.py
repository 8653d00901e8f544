"""Losses and optimizers against direct formulas on small tensors."""
from __future__ import annotations

import math

import pytest
import torch

from stainshift.methods.base import LARS, build_optimizer, build_scheduler, lr_factor
from stainshift.methods.losses import barlow_twins, barlow_twins_terms, nt_xent

torch.set_num_threads(1)


def nt_xent_loop(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> float:
    """Chen et al. 2020a, Eq. 1, summed over all 2N anchors and divided by 2N."""
    z = torch.cat([z1, z2]).double()
    n2 = len(z)
    n = n2 // 2
    sim = lambda a, b: float(a @ b / (a.norm() * b.norm()))  # noqa: E731
    total = 0.0
    for i in range(n2):
        j = (i + n) % n2
        num = math.exp(sim(z[i], z[j]) / tau)
        den = sum(math.exp(sim(z[i], z[k]) / tau) for k in range(n2) if k != i)
        total += -math.log(num / den)
    return total / n2


def barlow_loop(z1: torch.Tensor, z2: torch.Tensor, lambd: float) -> float:
    """Zbontar et al. 2021 Eq. 1 with C_ij = Σ_b z1_bi z2_bj / sqrt(Σ z1_bi²) sqrt(Σ z2_bj²) of centred z."""
    a = (z1 - z1.mean(0)).double()
    b = (z2 - z2.mean(0)).double()
    d = a.shape[1]
    loss = 0.0
    for i in range(d):
        for j in range(d):
            c = float((a[:, i] * b[:, j]).sum() / (a[:, i].pow(2).sum().sqrt() * b[:, j].pow(2).sum().sqrt()))
            loss += (1 - c) ** 2 if i == j else lambd * c**2
    return loss


@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_nt_xent_matches_formula(tau: float) -> None:
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    assert float(nt_xent(z1, z2, tau)) == pytest.approx(nt_xent_loop(z1, z2, tau), rel=1e-5)


def test_nt_xent_prefers_aligned_views() -> None:
    z = torch.randn(8, 16, generator=torch.Generator().manual_seed(1))
    assert float(nt_xent(z, z + 0.01 * torch.randn_like(z), 0.1)) < float(nt_xent(z, torch.randn_like(z), 0.1))


def test_barlow_twins_matches_formula() -> None:
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(9, 4, generator=g), torch.randn(9, 4, generator=g)
    assert float(barlow_twins(z1, z2, 0.005, eps=0.0)) == pytest.approx(barlow_loop(z1, z2, 0.005), rel=1e-5)
    # identical, decorrelated views → C = I → zero loss
    q, _ = torch.linalg.qr(torch.randn(16, 4, generator=g).double())
    q = (q - q.mean(0)).float()
    assert float(barlow_twins(q, q, 0.005)) < 0.3


def test_barlow_twins_terms() -> None:
    g = torch.Generator().manual_seed(3)
    z1, z2 = torch.randn(64, 8, generator=g), torch.randn(64, 8, generator=g)
    on, off = barlow_twins_terms(z1, z2)
    assert float(barlow_twins(z1, z2, 0.01)) == pytest.approx(float(on + 0.01 * off), rel=1e-6)
    assert 6.0 < float(on) < 10.0  # unrelated views: Σ(1 − C_ii)² ≈ d = 8
    on_same, _ = barlow_twins_terms(z1, z1)
    assert float(on_same) < 1e-6


def test_lars_step_matches_formula() -> None:
    w = torch.nn.Parameter(torch.tensor([[3.0, 4.0]]))  # ‖w‖ = 5
    b = torch.nn.Parameter(torch.tensor([1.0]))
    opt = LARS([w, b], lr=0.1, momentum=0.0, weight_decay=0.01, trust_coefficient=0.001)
    w.grad = torch.tensor([[0.0, 1.0]])
    b.grad = torch.tensor([0.5])
    g = torch.tensor([[0.0, 1.0]]) + 0.01 * torch.tensor([[3.0, 4.0]])
    expected_w = torch.tensor([[3.0, 4.0]]) - 0.1 * 0.001 * 5.0 / g.norm() * g
    opt.step()
    assert torch.allclose(w.detach(), expected_w, atol=1e-7)
    assert torch.allclose(b.detach(), torch.tensor([1.0 - 0.1 * 0.5]))  # 1-D: plain SGD, no decay


def test_simclr_lr_scaling_and_unknown_optimizer() -> None:
    p = [torch.nn.Parameter(torch.zeros(2, 2))]
    opt = build_optimizer(p, {"optimizer": "lars", "lr": 0.3, "lr_scale_batch": True, "batch_size": 512})
    assert opt.param_groups[0]["lr"] == pytest.approx(0.6)
    with pytest.raises(ValueError, match="optimizer"):
        build_optimizer(p, {"optimizer": "rmsprop"})


def test_schedules() -> None:
    # LMC: warm-up → stable 1e-4 → anneal to 1e-7
    p = [torch.nn.Parameter(torch.zeros(1))]
    ocfg = {"optimizer": "adamw", "lr": 1e-4, "schedule": "wsa", "warmup_epochs": 1, "final_lr": 1e-7,
            "anneal_fraction": 0.5}
    opt = build_optimizer(p, ocfg)
    sch = build_scheduler(opt, ocfg, steps_per_epoch=4, epochs=4)
    lrs = []
    for _ in range(16):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sch.step()
    assert lrs[0] == pytest.approx(2.5e-5) and lrs[3] == pytest.approx(1e-4)
    assert lrs[4:8] == [pytest.approx(1e-4)] * 4
    assert lrs[8] == pytest.approx(1e-4) and lrs[-1] < 1e-5
    assert lr_factor("wsa", 10**6, 10**6, 0, final_ratio=1e-3) == pytest.approx(1e-3)
    # seed 000: ×0.1 after 35 of 60 epochs
    assert lr_factor("step", 34, 60, 0, milestones=[35]) == 1.0
    assert lr_factor("step", 35, 60, 0, milestones=[35]) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="schedule"):
        lr_factor("linear", 0, 10, 0)
