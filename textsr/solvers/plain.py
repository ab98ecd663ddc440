"""The baseline: ordinary ancestral/DDIM/DDPM sampling from the prior, ignoring ``y``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..denoiser import Denoiser
from .base import Noise, Problem, SolverConfig, StepKind, StepResult
from .step import diffusion_step


@dataclass(frozen=True)
class PlainConfig(SolverConfig):
    """Defaults: DDPM ancestral steps (``step_kind="ddim"``, eta = 1), 100 steps."""

    eta: float = 1.0
    step_kind: StepKind = "ddim"
    name = "plain"


def plain_step(den: Denoiser, problem: Problem, x_t: torch.Tensor, t: int, t_next: int,
               cond: Any, cfg: PlainConfig, noise: Noise) -> StepResult:
    pred = den(x_t, t, cond)
    sch = den.schedule
    x_s = diffusion_step(pred.x0, x_t, pred.eps, pred.v, sch.abar(t), sch.abar(t_next), cfg, noise)
    return StepResult(x_next=x_s, x0_hat=pred.x0, x0=pred.x0)
