"""The baseline: ordinary ancestral/DDIM sampling from the prior, ignoring ``y``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..denoiser import Denoiser
from ..schedule import ddim_update
from .base import Noise, Problem, SolverConfig, StepResult


@dataclass(frozen=True)
class PlainConfig(SolverConfig):
    """Defaults: DDPM ancestral steps (``step_kind="ddim"``, eta = 1), 100 steps."""

    eta: float = 1.0
    step_kind: str = "ddim"
    name = "plain"


def diffusion_step(x0: torch.Tensor, eps: torch.Tensor, abar_t: float, abar_s: float,
                   cfg: SolverConfig, noise: Noise) -> torch.Tensor:
    """The solver-independent step from (x0, eps) at t to s, as ``cfg.step_kind`` says."""
    z = noise.like(x0) if cfg.eta > 0 else None
    return ddim_update(x0, eps, abar_s, cfg.eta, z, abar_t=abar_t, kind=cfg.step_kind)


def plain_step(den: Denoiser, problem: Problem, x_t: torch.Tensor, t: int, t_next: int,
               cond: Any, cfg: PlainConfig, noise: Noise) -> StepResult:
    pred = den(x_t, t, cond)
    sch = den.schedule
    x_s = diffusion_step(pred.x0, pred.eps, sch.abar(t), sch.abar(t_next), cfg, noise)
    return StepResult(x_next=x_s, x0_hat=pred.x0, x0=pred.x0)
