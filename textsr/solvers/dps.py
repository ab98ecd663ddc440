"""DPS (Chung, Kim, McCann, Klasky & Ye, "Diffusion Posterior Sampling for General Noisy Inverse
Problems", ICLR 2023, Alg. 1).

Take the normal ancestral step ``x_s'`` from ``(x0_hat, eps)`` and then
``x_s = x_s' - zeta * grad_{x_t} || y - A x0_hat(x_t) ||`` (gradient through the denoiser).  The norm is
per sample (never over the batch), non-squared: the paper's ``zeta_t = zeta' / ||y - A x0_hat||`` with
the squared norm is the same step up to a factor 2.  Defaults: DDPM ancestral steps, zeta = 0.3 (the
paper's 4x SR setting, 1000 steps); the text-guided SR paper's code used 0.5 with 250 + 100 steps and
``step_kind="ddpm"`` (which, without a learned variance, is the same step as ``"ddim"`` at eta = 1: the
posterior mean written with ``x_t`` instead of ``eps``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ..denoiser import Denoiser
from .base import Noise, Problem, SolverConfig, StepKind, StepResult
from .step import diffusion_step


@dataclass(frozen=True)
class DPSConfig(SolverConfig):
    steps: int = 1000
    eta: float = 1.0
    step_kind: StepKind = "ddim"
    zeta: float = 0.3
    name = "dps"
    needs_grad = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if not math.isfinite(self.zeta) or self.zeta < 0:
            raise ValueError(f"DPS step size zeta must be a finite number >= 0, got {self.zeta}")


def per_sample_norm(r: torch.Tensor) -> torch.Tensor:
    return r.flatten(1).norm(dim=1)


def detached(v: torch.Tensor | None) -> torch.Tensor | None:
    return None if v is None else v.detach()


def dps_step(den: Denoiser, problem: Problem, x_t: torch.Tensor, t: int, t_next: int,
             cond: Any, cfg: DPSConfig, noise: Noise) -> StepResult:
    A, y = problem.operator, problem.y
    with torch.enable_grad():
        x_in = x_t.detach().requires_grad_(True)
        pred = den(x_in, t, cond)
        # || y - A x0_hat(x_t) || per sample; the sum decouples the batch items' gradients
        loss = per_sample_norm(y - A.A(pred.x0)).sum()
        (grad,) = torch.autograd.grad(loss, x_in)
    x0_hat, eps, v = pred.x0.detach(), pred.eps.detach(), detached(pred.v)
    sch = den.schedule
    x_s = diffusion_step(x0_hat, x_t, eps, v, sch.abar(t), sch.abar(t_next), cfg, noise)
    x_s = x_s - cfg.zeta * grad  # Alg. 1, line 7
    return StepResult(x_next=x_s, x0_hat=x0_hat, x0=x0_hat)
