"""The one sampling loop: every solver, every backend, every cascade stage goes through ``sample``."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ..denoiser import Denoiser
from ..schedule import NoiseSchedule, travel_schedule
from ..solver_registry import step_function
from .base import Noise, Problem, SolverConfig, StepCallback, StepInfo


@dataclass
class SampleResult:
    x: torch.Tensor  # final samples (B, *in_shape)
    timesteps: list[int]
    transitions: int  # denoiser steps + re-noising jumps


def solver_timesteps(schedule: NoiseSchedule, cfg: SolverConfig) -> list[int]:
    """The timesteps ``cfg`` visits, first to last (the last step then goes to ``t = -1``).

    ``skip = k``: the ``steps``-step grid of the whole schedule without its first k timesteps (the
    paper code's ``start_time``: 250 steps, k = 100 -> 150 steps from t = 596).  Otherwise ``steps``
    steps from ``t_start = round(start T) - 1`` down to 0, the first within one stride of ``t_start``.
    """
    if cfg.skip:
        grid = schedule.timesteps(min(cfg.steps, schedule.T), cfg.spacing)
        if cfg.skip >= len(grid):
            raise ValueError(f"skip = {cfg.skip} drops every one of the {len(grid)} timesteps; use a smaller skip")
        return grid[cfg.skip:]
    t_start = max(0, min(schedule.T - 1, int(round(cfg.start * schedule.T)) - 1))
    return schedule.timesteps(min(cfg.steps, t_start + 1), cfg.spacing, t_start=t_start)


def initial_state(den: Denoiser, problem: Problem, cfg: SolverConfig, t0: int, noise: Noise,
                  x_T: torch.Tensor | None = None) -> torch.Tensor:
    """x at the first timestep: ``x_T`` if given, else z (``init="noise"``) or the warm start
    ``sqrt(abar_t0) A+ y + sqrt(1 - abar_t0) z`` (``init="pinv"``)."""
    shape = problem.operator.in_shape
    if x_T is not None:
        if tuple(x_T.shape) != (len(noise), *shape):
            raise ValueError(f"x_T has shape {tuple(x_T.shape)}, expected {(len(noise), *shape)}")
        return x_T.to(device=noise.device, dtype=noise.dtype)
    z = noise.randn(shape)
    if cfg.init == "noise":
        return z
    abar = den.schedule.abar(t0)
    return math.sqrt(abar) * problem.operator.A_pinv(problem.y) + math.sqrt(1.0 - abar) * z


def sample(
    den: Denoiser,
    problem: Problem,
    cfg: SolverConfig,
    noise: Noise,
    cond: Any = None,
    *,
    x_T: torch.Tensor | None = None,
    callback: StepCallback | None = None,
    stage: str = "",
) -> SampleResult:
    """Run ``cfg``'s solver from the first timestep to t = -1; one batch item per generator in ``noise``.

    ``problem.y`` may have batch 1 (shared by all samples) or one row per sample.
    """
    step = step_function(cfg)
    B = len(noise)
    y = problem.y
    if y.shape[0] not in (1, B):
        raise ValueError(f"y has batch {y.shape[0]}; expected 1 or the number of samples ({B})")
    y = y.to(device=noise.device, dtype=noise.dtype).expand(B, *y.shape[1:])
    problem = Problem(problem.operator, y, problem.sigma_y)
    sch = den.schedule
    ts = solver_timesteps(sch, cfg)
    plan = travel_schedule(ts, cfg.travel_length, cfg.travel_repeat)
    x = initial_state(den, problem, cfg, ts[0], noise, x_T)
    x0 = x
    grad_ctx = torch.no_grad if not cfg.needs_grad else torch.enable_grad
    for i, (t, t_next) in enumerate(plan):
        if t_next > t:  # time-travel: re-noise the corrected clean estimate back to t_next
            abar = sch.abar(t_next)
            x = math.sqrt(abar) * x0 + math.sqrt(1.0 - abar) * noise.like(x0)
        else:
            with grad_ctx():
                res = step(den, problem, x, t, t_next, cond, cfg, noise)
            x, x0 = res.x_next.detach(), res.x0.detach()
        if callback is not None:
            callback(StepInfo(stage=stage, index=i, total=len(plan), t=t, t_next=t_next, x=x, x0=x0))
    return SampleResult(x=x, timesteps=ts, transitions=len(plan))
