"""Closed-form denoisers for tests: an isotropic Gaussian prior N(mu, c^2 I) has the exact
``E[x0 | x_t] = mu + sqrt(abar) c^2 / (abar c^2 + 1 - abar) (x_t - sqrt(abar) mu)``."""

from __future__ import annotations

import math

import torch

from textsr.denoiser import Prediction
from textsr.schedule import NoiseSchedule


class GaussianDenoiser:
    def __init__(self, schedule: NoiseSchedule, mu: float | torch.Tensor = 0.0, c: float = 1.0):
        self.schedule, self.mu, self.c = schedule, mu, c

    def __call__(self, x_t, t, cond=None):
        ab = self.schedule.abar(t)
        mu = self.mu if not torch.is_tensor(self.mu) else self.mu.to(x_t)
        if cond is not None:  # a "prompt" shifts the mean: lets tests check that text changes outputs
            mu = mu + float(cond)
        k = math.sqrt(ab) * self.c**2 / (ab * self.c**2 + 1 - ab)
        x0 = mu + k * (x_t - math.sqrt(ab) * mu)
        return Prediction.from_x0(x_t, x0, ab)


class TinyNetDenoiser(torch.nn.Module):
    """A small nonlinear eps-network (random weights) for contract tests of gradient solvers."""

    def __init__(self, schedule: NoiseSchedule, channels: int = 1, seed: int = 0, learned_variance: bool = False):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.schedule = schedule
        self.learned_variance = learned_variance  # also report v in [0, 1] per element (as IF does)
        self.w1 = torch.nn.Parameter(torch.randn(8, channels, 3, 3, generator=g) * 0.3)
        self.w2 = torch.nn.Parameter(torch.randn(channels, 8, 3, 3, generator=g) * 0.3)

    def forward(self, x_t, t, cond=None):
        ab = self.schedule.abar(t)
        w1, w2 = self.w1.to(x_t.dtype), self.w2.to(x_t.dtype)
        h = torch.tanh(torch.nn.functional.conv2d(x_t, w1, padding=1) + t / 1000.0)
        eps = 0.5 * x_t * math.sqrt(1 - ab) + torch.nn.functional.conv2d(h, w2, padding=1) * 0.1
        v = torch.sigmoid(torch.nn.functional.conv2d(h, w2, padding=1)) if self.learned_variance else None
        return Prediction.from_eps(x_t, eps, ab, x0_transform=lambda x0: x0.clamp(-3, 3), v=v)
