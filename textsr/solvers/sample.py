"""The one sampling loop: every solver, every backend, every cascade stage goes through ``sample``.

Particle solvers (``cfg.takes_particles``, e.g. TDS) run through the same loop: each of the B samples is
its own system of ``cfg.particles`` particles, the ``B * N`` particles go through the denoiser in chunks of
at most ``max_rows`` (``chunks.py``: memory flat in N), and the loop does the bookkeeping
(``smc.ParticleSystem``): log-weights, ESS, systematic resampling, the evidence estimate and the final draw of
one particle per sample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, cast

import torch

from ..denoiser import Denoiser
from ..schedule import NoiseSchedule, travel_schedule
from ..solver_registry import step_function
from .base import Noise, Problem, SolverConfig, StepCallback, StepInfo
from .smc import ParticleKernel, ParticleSystem, repeat_cond, take


@dataclass
class SampleResult:
    x: torch.Tensor  # final samples (B, *in_shape)
    timesteps: list[int]
    transitions: int  # denoiser steps + re-noising jumps
    #: the steps of the grid the run was laid on (``steps``, or fewer where the schedule clamps it); a
    #: particle solver that ends early (TDS: before t = 0) visits one timestep less
    grid_steps: int = 0
    #: particle solvers: per-sample estimate of log Z = log p(y | cond) (B,) float64 under the sampled
    #: (discretised) model; None for the other solvers.  Z_hat is unbiased for Z; over K independent
    #: samples, ``logsumexp(log Z_k) - log K`` is the unbiased combination.
    log_evidence: torch.Tensor | None = None
    #: particle solvers: ESS of each sample's particles after every reweighting (steps + 1, B)
    ess: torch.Tensor | None = None
    particles: int = 1
    resamples: torch.Tensor | None = None  # (B,) number of resampling events per sample


def solver_timesteps(schedule: NoiseSchedule, cfg: SolverConfig) -> list[int]:
    """The timesteps ``cfg`` visits, first to last (the last step then goes to ``t = -1``): the grid
    (``grid_timesteps``) as the solver trims it (``SolverConfig.trim_timesteps``)."""
    return cfg.trim_timesteps(grid_timesteps(schedule, cfg))


def grid_timesteps(schedule: NoiseSchedule, cfg: SolverConfig) -> list[int]:
    """The grid of ``cfg``'s steps on ``schedule``, first to last.

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
    max_rows: int | None = None,
) -> SampleResult:
    """Run ``cfg``'s solver from the first timestep to t = -1; one batch item per generator in ``noise``.

    ``problem.y`` may have batch 1 (shared by all samples) or one row per sample.  For a particle solver
    ``x_T`` (if given) holds all ``B * N`` particles, sample k's in rows ``k N .. k N + N - 1``, and the
    denoiser sees at most ``max_rows`` of them per call (None: all at once; the results are the same).
    """
    step = step_function(cfg)
    B = len(noise)
    y = problem.y
    if y.shape[0] not in (1, B):
        raise ValueError(f"y has batch {y.shape[0]}; expected 1 or the number of samples ({B})")
    y = y.to(device=noise.device, dtype=noise.dtype).expand(B, *y.shape[1:])
    N, system = 1, None
    if cfg.takes_particles:  # B systems of N particles, flat (B * N, ...)
        pcfg: Any = cfg  # a particle solver's config carries particles and resample_threshold
        N = int(pcfg.particles)
        system = ParticleSystem(B, N, pcfg.resample_threshold(y[0].numel()), noise)
        noise, cond = noise.particles(N), repeat_cond(cond, B, N)
        y = y.repeat_interleave(N, 0)
    problem = Problem(problem.operator, y, problem.sigma_y)
    sch = den.schedule
    grid = grid_timesteps(sch, cfg)
    ts = cfg.trim_timesteps(grid)
    plan = travel_schedule(ts, cfg.travel_length, cfg.travel_repeat)
    x = initial_state(den, problem, cfg, ts[0], noise, x_T)
    x0, state = x, None
    kernel = cast(ParticleKernel, step)  # a particle solver registers a ParticleKernel
    if system is not None:
        log_w0, state = kernel.init(den, problem, x, ts, cond, cfg, noise, max_rows)
        system.reweight(log_w0)
        x, x0, state = _resample(system, x, x0, state)
    grad_ctx = torch.no_grad if not cfg.needs_grad else torch.enable_grad
    for i, (t, t_next) in enumerate(plan):
        if t_next > t:  # time-travel: re-noise the corrected clean estimate back to t_next
            abar = sch.abar(t_next)
            x = math.sqrt(abar) * x0 + math.sqrt(1.0 - abar) * noise.like(x0)
        else:
            with grad_ctx():
                if system is None:
                    res = step(den, problem, x, t, t_next, cond, cfg, noise)
                else:
                    res = kernel(den, problem, x, t, t_next, cond, cfg, noise, state)
            x, x0 = res.x_next.detach(), res.x0.detach()
            if system is not None:
                if res.log_weight is None:
                    raise TypeError(f"the particle solver {cfg.name!r} returned no incremental weights")
                state = res.state
                system.reweight(res.log_weight)
                if t_next != -1:
                    x, x0, state = _resample(system, x, x0, state)
        if callback is not None:
            callback(_info(stage, i, len(plan), t, t_next, x, x0, system))
    if system is None:
        return SampleResult(x=x, timesteps=ts, transitions=len(plan), grid_steps=len(grid))
    pick = system.draw().to(x.device)  # one particle per sample from the final weights
    return SampleResult(x=x[pick], timesteps=ts, transitions=len(plan), grid_steps=len(grid),
                        log_evidence=system.log_z.clone(),
                        ess=torch.stack(system.ess_history), particles=N, resamples=system.resamples.clone())


def _resample(system: ParticleSystem, x: torch.Tensor, x0: torch.Tensor, state: Any):
    idx = system.resample()
    if idx is None:
        return x, x0, state
    rows = x.shape[0]
    return take(x, idx, rows), take(x0, idx, rows), take(state, idx, rows)


def _info(stage: str, i: int, total: int, t: int, t_next: int, x: torch.Tensor, x0: torch.Tensor,
          system: ParticleSystem | None) -> StepInfo:
    if system is None:
        return StepInfo(stage=stage, index=i, total=total, t=t, t_next=t_next, x=x, x0=x0)
    best = system.best().to(x.device)  # previews show each sample's heaviest particle
    return StepInfo(stage=stage, index=i, total=total, t=t, t_next=t_next, x=x[best], x0=x0[best],
                    ess=system.ess_history[-1].clone(), particles=system.N)
