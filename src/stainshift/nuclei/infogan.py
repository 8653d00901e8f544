"""InfoGAN with a Wasserstein critic and gradient penalty for unsupervised nucleus classes (seed 004 §3.3).

After Chen et al. 2016 (InfoGAN) and Hu et al. 2018 (cell-level InfoGAN with WGAN-GP), as seed 004
uses it: the generator G(z, c) takes noise z (16-dim, N(0, I)) and a categorical code c (3 or 5
classes, uniform, one-hot); a shared discriminator trunk D feeds two heads, the critic D_D (a
scalar, no sigmoid) and the auxiliary head D_Q (logits over codes). Nucleus classes of real crops
are argmax_c D_Q(D(x)).

Losses per generator iteration (``n_critic`` critic steps, then one generator step):

- critic:   L_D = E[D_D(x̃)] − E[D_D(x)] + λ_GP · GP + λ_I · L_I, with x̃ = G(z, c) (detached);
- generator: L_G = −E[D_D(x̃)] + λ_I · L_I;
- L_I = −E log Q(c | G(z, c)) (cross-entropy); I(c; G(z, c)) ≥ H(c) − L_I (Chen et al. 2016, Eq. 4).

Parameters and optimizers (Adam, betas (0.5, 0.9) as Gulrajani et al. 2017), seed 004's rates:

- ``opt_d`` (lr_d = 1e-4): trunk + critic head, stepped on L_D. The trunk also receives the info
  loss's gradient: as in Chen et al., Q shares all convolutional layers with D, so the features
  that separate codes are learned, not just read off the critic's features by a probe.
- ``opt_q`` (lr_q = 2e-4): the Q head, stepped with the critic steps on L_I of generated images.
- ``opt_g`` (lr_g = 1e-4): the generator, stepped on L_G (the info term pushes G to make the code
  recoverable; D and Q are not stepped in the generator step).

The critic path has no batch norm (the gradient penalty is per sample, Gulrajani et al. 2017 §4):
the trunk uses layer norm over (C, H, W) (``GroupNorm(1, C)``). The generator uses batch norm.
Images are scaled to [−1, 1] (generator output tanh). Augmentation (seed 004): random horizontal
flip and rot90 of the real crops.

Deviation from seed 004: its Eq. 2 writes the penalty as E(‖∇D‖ − 1) without the square; this
module follows Gulrajani et al. 2017, E[(‖∇_x̂ D(x̂)‖₂ − 1)²] — the unsquared form rewards
gradient norms below 1 without bound.
"""
from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stainshift.atomic import atomic_path

__all__ = [
    "Discriminator",
    "Generator",
    "InfoGAN",
    "from_unit",
    "gradient_penalty",
    "info_loss",
    "load_infogan",
    "predict_codes",
    "sample_grid",
    "save_infogan",
    "to_unit",
    "train_infogan",
]

logger = logging.getLogger(__name__)


class Generator(nn.Module):
    """G(z, c): [z, one-hot(c)] → Linear → (4w, s/8, s/8) → 3 × (ConvTranspose 4×4/2, BN, ReLU) → tanh.

    ``size`` must be a multiple of 8 (40 → 5 → 10 → 20 → 40)."""

    def __init__(self, z_dim: int = 16, n_codes: int = 3, size: int = 40, width: int = 64) -> None:
        super().__init__()
        if size % 8:
            raise ValueError(f"generator size must be a multiple of 8, got {size}")
        if z_dim < 1 or n_codes < 2:
            raise ValueError(f"need z_dim >= 1 and n_codes >= 2, got z_dim={z_dim}, n_codes={n_codes}")
        self.z_dim, self.n_codes, self.size, self.width = z_dim, n_codes, size, width
        self.base = size // 8
        self.fc = nn.Sequential(nn.Linear(z_dim + n_codes, 4 * width * self.base**2, bias=False),
                                nn.BatchNorm1d(4 * width * self.base**2), nn.ReLU(inplace=True))

        def up(cin: int, cout: int) -> list[nn.Module]:
            return [nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        self.net = nn.Sequential(*up(4 * width, 2 * width), *up(2 * width, width),
                                 nn.ConvTranspose2d(width, 3, 4, 2, 1), nn.Tanh())

    def forward(self, z: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Images in [−1, 1], shape (B, 3, size, size), for noise ``z`` (B, z_dim) and int ``codes`` (B,)."""
        h = self.fc(torch.cat([z, F.one_hot(codes, self.n_codes).to(z.dtype)], dim=1))
        return self.net(h.view(-1, 4 * self.width, self.base, self.base))


class Discriminator(nn.Module):
    """Shared trunk D (3 × Conv 4×4/2 + layer norm + leaky ReLU), critic head D_D (scalar), Q head D_Q (logits)."""

    def __init__(self, n_codes: int = 3, size: int = 40, width: int = 64) -> None:
        super().__init__()
        if size % 8:
            raise ValueError(f"discriminator size must be a multiple of 8, got {size}")

        def down(cin: int, cout: int, norm: bool) -> list[nn.Module]:
            layers: list[nn.Module] = [nn.Conv2d(cin, cout, 4, 2, 1)]
            if norm:
                layers.append(nn.GroupNorm(1, cout))
            return [*layers, nn.LeakyReLU(0.2, inplace=True)]

        self.trunk = nn.Sequential(*down(3, width, False), *down(width, 2 * width, True),
                                   *down(2 * width, 4 * width, True), nn.Flatten())
        feat = 4 * width * (size // 8) ** 2
        self.critic = nn.Linear(feat, 1)
        self.q_head = nn.Sequential(nn.Linear(feat, 128), nn.LeakyReLU(0.2, inplace=True), nn.Linear(128, n_codes))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(critic scores (B,), code logits (B, n_codes)) of images in [−1, 1]."""
        h = self.trunk(x)
        return self.critic(h).squeeze(1), self.q_head(h)

    def critic_score(self, x: torch.Tensor) -> torch.Tensor:
        """D_D(D(x)), shape (B,)."""
        return self.critic(self.trunk(x)).squeeze(1)


class InfoGAN(nn.Module):
    """Generator + discriminator, with the hyper-parameters that rebuild them in ``config``."""

    def __init__(self, z_dim: int = 16, n_codes: int = 3, size: int = 40, width: int = 64) -> None:
        super().__init__()
        self.config = {"z_dim": z_dim, "n_codes": n_codes, "size": size, "width": width}
        self.generator = Generator(z_dim, n_codes, size, width)
        self.discriminator = Discriminator(n_codes, size, width)

    @property
    def z_dim(self) -> int:
        """Length of the noise vector z."""
        return self.config["z_dim"]

    @property
    def n_codes(self) -> int:
        """Number of categories of the latent code c (the nucleus classes to discover)."""
        return self.config["n_codes"]


def to_unit(crops: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) → float (N, 3, H, W) in [−1, 1]."""
    crops = np.asarray(crops)
    if crops.ndim != 4 or crops.shape[-1] != 3 or crops.dtype != np.uint8:
        raise ValueError(f"crops must be uint8 (N, H, W, 3), got {crops.dtype} {crops.shape}")
    return torch.from_numpy(crops).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def from_unit(x: torch.Tensor) -> np.ndarray:
    """float (N, 3, H, W) in [−1, 1] → uint8 (N, H, W, 3)."""
    return ((x.detach().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def gradient_penalty(critic_fn: Callable[[torch.Tensor], torch.Tensor], real: torch.Tensor, fake: torch.Tensor,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """GP = E_x̂[(‖∇_x̂ D(x̂)‖₂ − 1)²], x̂ = εx + (1 − ε)x̃, ε ~ U[0, 1] per sample (Gulrajani et al.
    2017, Eq. 3).

    ``critic_fn`` maps (B, ...) to (B,) or (B, 1); the norm is over all non-batch dims. The graph
    is kept (``create_graph``) so the penalty can be back-propagated. Seed 004's Eq. 2 omits the
    square; this follows Gulrajani et al."""
    if real.shape != fake.shape:
        raise ValueError(f"real {tuple(real.shape)} and fake {tuple(fake.shape)} differ in shape")
    eps_shape = (real.shape[0],) + (1,) * (real.dim() - 1)
    eps = torch.rand(eps_shape, generator=generator, device=real.device, dtype=real.dtype)
    x_hat = (eps * real.detach() + (1 - eps) * fake.detach()).requires_grad_(True)
    scores = critic_fn(x_hat)
    (grad,) = torch.autograd.grad(scores.sum(), x_hat, create_graph=True)
    norm = torch.sqrt(grad.flatten(1).pow(2).sum(1) + 1e-12)
    return (norm - 1).pow(2).mean()


def info_loss(q_logits: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """L_I = −E log Q(c | G(z, c)) = cross-entropy of the code logits at the true codes.

    The InfoGAN variational bound (Chen et al. 2016, Eq. 4) is I(c; G(z, c)) ≥ H(c) − L_I, with
    H(c) = log K for a uniform code over K classes; minimising L_I maximises the bound."""
    return F.cross_entropy(q_logits, codes)


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random horizontal flip and rot90 (k ∈ {0, 1, 2, 3}) per sample (seed 004's rotations)."""
    n = x.shape[0]
    flip = torch.rand(n, generator=gen, device=x.device) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    k = torch.randint(0, 4, (n,), generator=gen, device=x.device)
    rots = torch.stack([torch.rot90(x, r, (2, 3)) for r in range(4)])
    return rots[k, torch.arange(n, device=x.device)]


def train_infogan(crops: np.ndarray, *, n_codes: int = 3, z_dim: int = 16, iterations: int = 1000,
                  batch_size: int = 64, n_critic: int = 5, gp_weight: float = 10.0, info_weight: float = 1.0,
                  lr_g: float = 1e-4, lr_d: float = 1e-4, lr_q: float = 2e-4,
                  betas: tuple[float, float] = (0.5, 0.9), augment: bool = True, width: int = 64,
                  log_every: int = 50, seed: int = 0, log: Callable[[str], None] | None = None,
                  device: str | torch.device = "cpu") -> tuple[InfoGAN, list[dict[str, float]]]:
    """Train an InfoGAN-WGAN-GP on uint8 crops (N, s, s, 3); return (model in eval mode, history).

    One iteration = ``n_critic`` critic/Q steps + one generator step (see the module docstring).
    ``history`` has one row per ``log_every`` iterations (and the last): the means over those
    iterations' critic steps of ``critic_loss`` (L_D without the info term), ``wasserstein``
    (E D(x) − E D(x̃), the W estimate), ``gp``, ``info_loss`` (of the critic steps), and
    ``g_loss``, plus ``iteration`` and ``seconds`` since the start. ``log`` (and the module
    logger) get each row as a one-line message. Seeded: initialisation under
    ``torch.manual_seed(seed)`` in a forked RNG, and all sampling from a ``torch.Generator(seed)``
    — two CPU runs with one seed give the same history.
    """
    if iterations < 1 or batch_size < 2 or n_critic < 1:
        raise ValueError(f"need iterations >= 1, batch_size >= 2, n_critic >= 1; got {iterations}, "
                         f"{batch_size}, {n_critic}")
    data = to_unit(crops)
    n, _, height, width_px = data.shape
    if height != width_px:
        raise ValueError(f"crops must be square, got {height}x{width_px}")
    if n < 2:
        raise ValueError(f"need at least 2 crops, got {n}")
    device = torch.device(device)
    data = data.to(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = InfoGAN(z_dim, n_codes, height, width).to(device)
    model.train()
    g, d = model.generator, model.discriminator
    opt_g = torch.optim.Adam(g.parameters(), lr=lr_g, betas=betas)
    opt_d = torch.optim.Adam([*d.trunk.parameters(), *d.critic.parameters()], lr=lr_d, betas=betas)
    opt_q = torch.optim.Adam(d.q_head.parameters(), lr=lr_q, betas=betas)
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    batch = min(batch_size, n)

    def sample_latent(m: int) -> tuple[torch.Tensor, torch.Tensor]:
        z = torch.randn(m, z_dim, generator=gen, device=device)
        return z, torch.randint(0, n_codes, (m,), generator=gen, device=device)

    history: list[dict[str, float]] = []
    sums: dict[str, float] = {}
    count = 0
    start = time.perf_counter()
    logger.info("InfoGAN: %d crops %dx%d, %d codes, z %d, %d iterations x %d critic steps, batch %d, device %s", n,
             height, height, n_codes, z_dim, iterations, n_critic, batch, device)
    for it in range(1, iterations + 1):
        z_all, codes_all = sample_latent(n_critic * batch)
        with torch.no_grad():
            fakes = g(z_all, codes_all)  # one generator pass for the iteration's critic steps
        for step in range(n_critic):
            real = data[torch.randint(0, n, (batch,), generator=gen, device=device)]
            if augment:
                real = _augment(real, gen)
            fake, codes = fakes[step * batch:(step + 1) * batch], codes_all[step * batch:(step + 1) * batch]
            scores, logits = d(torch.cat([real, fake]))
            d_real, d_fake, q_logits = scores[:batch], scores[batch:], logits[batch:]
            wasserstein = d_real.mean() - d_fake.mean()
            gp = gradient_penalty(d.critic_score, real, fake, generator=gen)
            l_info = info_loss(q_logits, codes)
            critic_loss = -wasserstein + gp_weight * gp
            opt_d.zero_grad(set_to_none=True)
            opt_q.zero_grad(set_to_none=True)
            (critic_loss + info_weight * l_info).backward()
            opt_d.step()
            opt_q.step()
            for key, val in (("critic_loss", critic_loss), ("wasserstein", wasserstein), ("gp", gp),
                             ("info_loss", l_info)):
                sums[key] = sums.get(key, 0.0) + val.item() / n_critic
        z, codes = sample_latent(batch)
        d.requires_grad_(False)  # the generator step updates G only; skip D's parameter gradients
        d_fake, q_logits = d(g(z, codes))
        g_loss = -d_fake.mean() + info_weight * info_loss(q_logits, codes)
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()
        d.requires_grad_(True)
        sums["g_loss"] = sums.get("g_loss", 0.0) + g_loss.item()
        count += 1
        if it % log_every == 0 or it == iterations:
            row = {"iteration": float(it), **{k: v / count for k, v in sums.items()},
                   "seconds": time.perf_counter() - start}
            if not all(math.isfinite(v) for v in row.values()):
                raise FloatingPointError(f"InfoGAN training diverged at iteration {it}: {row}")
            history.append(row)
            msg = (f"InfoGAN it {it}/{iterations}: critic {row['critic_loss']:.4f} W {row['wasserstein']:.4f} "
                   f"GP {row['gp']:.4f} info {row['info_loss']:.4f} G {row['g_loss']:.4f} ({row['seconds']:.1f} s)")
            logger.info(msg)
            if log is not None:
                log(msg)
            sums, count = {}, 0
    return model.eval(), history


@torch.no_grad()
def predict_codes(model: InfoGAN, crops: np.ndarray, batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(codes int (N,), probabilities (N, n_codes)): argmax / softmax of D_Q(D(x)) on real crops."""
    model.eval()
    device = next(model.parameters()).device
    data = to_unit(crops)
    probs = [F.softmax(model.discriminator(data[i:i + batch].to(device))[1], dim=1).cpu()
             for i in range(0, len(data), batch)]
    p = torch.cat(probs).numpy() if probs else np.zeros((0, model.n_codes), dtype=np.float32)
    return p.argmax(axis=1).astype(np.int64), p


@torch.no_grad()
def sample_grid(model: InfoGAN, n_per_code: int, seed: int = 0) -> np.ndarray:
    """Generated crops uint8 (n_codes, n_per_code, s, s, 3); sample j of every code shares one z
    (seed 004 Fig. 7: z fixed along a row, the code varies)."""
    model.eval()
    device = next(model.parameters()).device
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    z = torch.randn(n_per_code, model.z_dim, generator=gen, device=device)
    k = model.n_codes
    codes = torch.arange(k, device=device).repeat_interleave(n_per_code)
    imgs = from_unit(model.generator(z.repeat(k, 1), codes))
    return imgs.reshape(k, n_per_code, *imgs.shape[1:])


def save_infogan(model: InfoGAN, path: str | os.PathLike) -> Path:
    """Write {"config", "state_dict"} with ``torch.save`` (atomically); return ``path``."""
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save({"config": dict(model.config), "state_dict": model.state_dict()}, tmp)
    return Path(path)


def load_infogan(path: str | os.PathLike, device: str | torch.device = "cpu") -> InfoGAN:
    """Rebuild an InfoGAN written by :func:`save_infogan` (``torch.load(weights_only=True)``), in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"InfoGAN checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path}: cannot be read as an InfoGAN checkpoint ({exc})") from exc
    if not isinstance(ckpt, dict) or "config" not in ckpt or "state_dict" not in ckpt:
        raise ValueError(f"{path}: not an InfoGAN checkpoint (expected keys 'config' and 'state_dict')")
    try:
        model = InfoGAN(**ckpt["config"])
        model.load_state_dict(ckpt["state_dict"])
    except (TypeError, RuntimeError) as exc:
        raise ValueError(f"{path}: InfoGAN checkpoint does not match its config ({exc})") from exc
    return model.to(device).eval()
