"""Table 1's flow rows (``python bench/gaussian_mixture.py --tables 1 --path flow``): the same MCGdiff problems,
seeds and reference draws as the VP rows, with every solver on the rectified-flow path (``textsr.flow``): the
exact mixture velocity (``textsr.gaussian_mixture.flow.MixtureVelocity``) on SD3's flow grid (its scheduler,
shift 3), FlowDPS on its own grid (shift 4).  The grid starts at pure noise, s = 1, so the first state N(0, I) is
exact there (the VP rows' "exact start" is not needed; PiGDM's Tweedie weighting starts one level lower,
``FlowSchedule.for_solver``).  "exact posterior velocity": the flow sampler (Euler = DDIM eta 0) on the exact
posterior's velocity, the floor any flow sampler reaches at that step count.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from textsr.flow import FlowDenoiser, FlowSchedule, OwnFlowGrid, scheduler_levels, scheduler_sigma_min
from textsr.gaussian_mixture.flow import MixtureVelocity
from textsr.solvers import make_config

#: (label, solver, options): the VP rows' defaults plus FlowDPS (its SR defaults, and a smaller step)
METHODS = [
    ("baseline (prior sampler) (flow)", "plain", {}),
    ("DDNM (flow)", "ddnm", {}),
    ("DDNM+ (flow)", "ddnm+", {}),
    ("DPS zeta=0.3 (flow)", "dps", {"zeta": 0.3}),
    ("DPS zeta=1.0 (flow)", "dps", {"zeta": 1.0}),
    ("PiGDM (tweedie, safeguard) (flow)", "pigdm", {}),
    ("PiGDM (nvlabs weighting) (flow)", "pigdm", {"weighting": "nvlabs"}),
    ("FlowDPS (paper SR defaults: step 15, 3 iterations)", "flowdps", {}),
    ("FlowDPS step_size=1", "flowdps", {"step_size": 1.0}),
]


def _grid_scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(shift=3.0)  # SD3's flow grid


def flow_denoiser(velocity, cfg) -> FlowDenoiser:
    """The flow denoiser on ``cfg``'s grid: its own (FlowDPS) or SD3's, for ``cfg.steps`` steps."""
    sched = _grid_scheduler()
    own = cfg.flow_levels(cfg.steps, scheduler_sigma_min(sched)) if isinstance(cfg, OwnFlowGrid) else None
    levels = own if own is not None else scheduler_levels(sched, cfg.steps)
    return FlowDenoiser(velocity, FlowSchedule.from_levels(levels, name="sd3-flow").for_solver(cfg))


class RotatedVelocity:
    """``v(x) = Q v'(Q^T x)`` (rows: ``x @ Q``, back with ``@ Q.T``): the flow path commutes with a rotation."""

    def __init__(self, base: MixtureVelocity, Q: torch.Tensor):
        self.base, self.Q = base, Q

    def __call__(self, x_s: torch.Tensor, s: float, cond=None) -> torch.Tensor:
        return self.base(x_s @ self.Q, s, cond) @ self.Q.T


def rows(steps: int, exact_rotated: Callable) -> list[tuple]:
    """Table 1's rows ``(label, config, denoiser_of(problem, posterior), exact_start)`` on the flow path;
    ``exact_rotated(p) -> (posterior mixture in A's singular basis, Q)``."""
    out = []
    for label, solver, options in METHODS:
        cfg = make_config(solver, steps=steps, **options)
        out.append((label, cfg, lambda p, post, cfg=cfg: flow_denoiser(MixtureVelocity(p.prior), cfg), False))
    plain = make_config("plain", steps=steps, eta=0.0, step_kind="ddim")  # the flow ODE (Euler)

    def exact(p, post):
        mix, Q = exact_rotated(p)
        return flow_denoiser(RotatedVelocity(MixtureVelocity(mix), Q), plain)

    out.append(("exact posterior velocity (flow ODE)", plain, exact, False))
    return out
