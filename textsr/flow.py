"""Rectified-flow priors on the one VP sampling loop (docs/flow.md, "The flow path on the VP loop").

The flow path is ``x_s = (1 - s) x0 + s eps``, ``s`` in [0, 1] (``s = 1``: pure noise); a flow model predicts
the velocity ``v(x_s, s, c) ~ E[eps - x0 | x_s, c]``, so exactly

    x0_hat = x_s - s v,        eps_hat = x_s + (1 - s) v.

The map to the variance-preserving form every solver is written in: with ``c(s) = sqrt((1 - s)^2 + s^2)``,

    x_vp = x_s / c(s),   sqrt(abar) = (1 - s) / c(s),   sqrt(1 - abar) = s / c(s),

so ``x_vp = sqrt(abar) x0 + sqrt(1 - abar) eps``: the same clean and noise estimates, another scale.  A solver
steps ``x_vp`` from ``abar(s)`` to ``abar(s')`` and the result is ``x_{s'} = c(s') x_vp'``; at ``s' = 0`` the two
coincide (``c(0) = 1``), so the loop's final sample is the flow's.  No solver has a flow copy of itself:

* ``FlowSchedule``: the VP schedule of a flow grid (the scheduler's own sigmas, shift included), one
  timestep index per grid level; ``sigma(t)`` gives the level back.  ``s = 1`` is ``abar = 0`` (zero terminal
  SNR, which ``NoiseSchedule`` accepts at its noisiest index): the DDIM/DDNM/DPS steps are exact there
  (``x_t = eps``, ``eps_hat = x_t``, no division by ``sqrt(abar_t)``); a solver whose step needs Tweedie's
  gain ``(1 - abar_t) / sqrt(abar_t)`` (``SolverConfig.starts_at_zero_snr``) starts at the grid's first level
  below 1 instead (``for_solver``): the model's time input is never changed.
* ``FlowDenoiser``: a velocity model as a ``Denoiser``: ``x_vp -> x_s = c x_vp -> v -> Prediction(x0_hat,
  eps_hat)``.
* ``scheduler_levels``: a diffusers ``FlowMatchEulerDiscreteScheduler``'s grid for ``steps`` steps (its
  ``set_timesteps`` with the resolution-dependent ``mu`` where the model uses one), built per run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch

from .denoiser import Prediction
from .schedule import NoiseSchedule


# ------------------------------------------------------------------------------------------------
# the map between the flow path and the VP form
# ------------------------------------------------------------------------------------------------
def flow_scale(s: float) -> float:
    """``c(s) = sqrt((1 - s)^2 + s^2)``: ``x_s = c(s) x_vp``."""
    return math.hypot(1.0 - s, s)


def abar_of(s: float) -> float:
    """``abar(s) = (1 - s)^2 / c(s)^2`` (1 at s = 0, 0 at s = 1)."""
    return (1.0 - s) ** 2 / ((1.0 - s) ** 2 + s**2)


def flow_time(abar: float) -> float:
    """The inverse map: the flow level ``s`` of a VP level ``abar`` (``s / (1 - s) = sqrt((1 - abar) / abar)``)."""
    a, b = math.sqrt(abar), math.sqrt(max(1.0 - abar, 0.0))
    return b / (a + b)


# ------------------------------------------------------------------------------------------------
# the schedule
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FlowSchedule(NoiseSchedule):
    """The VP schedule of a flow grid: timestep ``t`` is the level ``sigmas[t]`` (``t = 0``: the least noisy;
    ``t = -1``: the clean image, ``s = 0``) with ``abar_t = abar(sigmas[t])``.  Build it with ``from_levels``."""

    sigmas: tuple[float, ...] = field(default=())

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.sigmas) != self.T:
            raise ValueError(f"a FlowSchedule needs one level per timestep: {len(self.sigmas)} levels, T = {self.T}")

    @classmethod
    def from_levels(cls, levels: Sequence[float], name: str = "flow") -> FlowSchedule:
        """The schedule of a sampler visiting ``levels`` (first = noisiest), strictly decreasing in (0, 1]."""
        lv = [float(s) for s in levels]
        if not lv:
            raise ValueError("a flow grid needs at least one level")
        if not all(0.0 < s <= 1.0 for s in lv) or any(b >= a for a, b in zip(lv, lv[1:])):
            raise ValueError(f"flow levels must be strictly decreasing in (0, 1], got {lv}")
        sig = tuple(reversed(lv))
        return cls(tuple(abar_of(s) for s in sig), name=name, sigmas=sig)

    def sigma(self, t: int) -> float:
        """The flow level ``s`` of timestep ``t`` (``t = -1``: 0, the clean image)."""
        if t == -1:
            return 0.0
        if not 0 <= t < self.T:
            raise ValueError(f"timestep {t} outside [0, {self.T - 1}]")
        return self.sigmas[t]

    @property
    def levels(self) -> list[float]:
        """The grid, first (noisiest) to last."""
        return list(reversed(self.sigmas))

    def for_solver(self, cfg: Any) -> FlowSchedule:
        """This grid for solver ``cfg``: without its pure-noise level when the solver cannot step from there
        (``cfg.starts_at_zero_snr()`` is False): it then starts at the next level, as VP samplers start at
        ``abar_T > 0``."""
        if not self.zero_terminal_snr or cfg.starts_at_zero_snr():
            return self
        if self.T < 2:
            raise ValueError(f"solver {cfg.name!r} cannot start at pure noise (s = 1) and this one-level grid has no "
                             "other level; use 2 or more steps")
        return FlowSchedule.from_levels(self.levels[1:], name=self.name)


# ------------------------------------------------------------------------------------------------
# the denoiser
# ------------------------------------------------------------------------------------------------
@runtime_checkable
class VelocityModel(Protocol):
    """``v(x_s, s, cond)``: a flow model's velocity on the flow path (guidance inside), differentiable in x_s."""

    def __call__(self, x_s: torch.Tensor, s: float, cond: Any = None) -> torch.Tensor: ...


@dataclass
class FlowDenoiser:
    """A velocity model as a ``Denoiser`` on its ``FlowSchedule`` (the module docstring's map): the loop's
    ``x_t`` is ``x_vp``; ``x_s = c(s) x_vp``; ``x0_hat = x_s - s v``, ``eps_hat = x_s + (1 - s) v``."""

    velocity: VelocityModel
    schedule: FlowSchedule

    def __call__(self, x_t: torch.Tensor, t: int, cond: Any = None) -> Prediction:
        s = self.schedule.sigma(t)
        x_s = flow_scale(s) * x_t
        v = self.velocity(x_s, s, cond).to(x_t.dtype)
        return Prediction(x0=x_s - s * v, eps=x_s + (1.0 - s) * v)


@runtime_checkable
class OwnFlowGrid(Protocol):
    """A solver config that brings its own flow grid (FlowDPS): ``flow_levels(steps, sigma_min)`` gives the
    levels to visit (first = noisiest); ``sigma_min`` is the model scheduler's smallest training level."""

    def flow_levels(self, steps: int, sigma_min: float) -> list[float]: ...


def scheduler_levels(scheduler: Any, steps: int, *, mu: float | None = None,
                     sigmas: Sequence[float] | None = None) -> list[float]:
    """The levels a diffusers ``FlowMatchEulerDiscreteScheduler`` visits in ``steps`` steps: its own
    ``set_timesteps`` on a fresh copy (the scheduler keeps state), with ``mu`` (resolution-dependent shift,
    FLUX) and the pipeline's explicit ``sigmas`` where it passes them; the trailing 0 is dropped."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    fresh = type(scheduler).from_config(scheduler.config)
    kw: dict[str, Any] = {}
    if mu is not None:
        kw["mu"] = mu
    if sigmas is not None and not fresh.config.get("use_flow_sigmas", False):
        kw["sigmas"] = list(sigmas)
        fresh.set_timesteps(device="cpu", **kw)
    else:
        fresh.set_timesteps(steps, device="cpu", **kw)
    levels = [float(s) for s in fresh.sigmas.double()[:-1].tolist()]
    return levels


def scheduler_sigma_min(scheduler: Any) -> float:
    """The smallest training level of a fresh scheduler (``u_min`` of FlowDPS's grid)."""
    return float(type(scheduler).from_config(scheduler.config).sigma_min)
