"""FlowDPS (Kim, Kim & Ye, "FlowDPS: Flow-Driven Posterior Sampling for Inverse Problems", ICCV 2025,
arXiv 2503.08136; public code FlowDPS-Inverse/FlowDPS, ``SD3FlowDPS`` in ``sd3_sampler.py``).

The paper's flow version of Tweedie's formula splits the flow ODE's Euler step at level ``t`` (the flow
sigma, ``x_t = (1 - t) x0 + t x1``, ``x1`` the noise) into a clean and a noise estimate:

    x0_hat = x_t - t v,        x1_hat = x_t + (1 - t) v,

and writes the Euler step ``x_{t'} = (1 - t') x0_hat + t' x1_hat`` in that DDIM-like form.  FlowDPS puts the
likelihood gradient into the clean component and stochastic noise into the noise component (its algorithm
for latent flows).  Per step from ``t`` to ``t'`` (the public code's super-resolution branch; equation
numbers are not cited because the paper's text could not be read here, only its abstract and code):

1. ``v`` with classifier-free guidance (the backend's: ``v_null + w (v_text - v_null)``, FlowDPS's w = 2.0);
2. ``x0_hat``, ``x1_hat`` as above (the ``Prediction`` of the flow denoiser);
3. data consistency on the clean estimate: ``dc_steps`` (3) plain gradient steps of size ``step_size`` (15)
   on the UNSQUARED norm ``|| A+ y - A+ A D(z) ||_2``, back-propagated through the decoder ``D`` only (the
   transformer is not differentiated), then the blend ``x0_y = (1 - t) x0_hat + t z_dc``;
4. noise component: ``x1_y = sqrt(t') x1_hat + sqrt(1 - t') e``, ``e ~ N(0, I)``;
5. ``x_{t'} = (1 - t') x0_y + t' x1_y``; the last step (``t' = 0``) returns ``x0_y``.

Its grid (``grid="own"``): ``u = linspace(1, u_min, N)``, ``t = shift u / (1 + (shift - 1) u)`` with shift 4
and ``u_min`` the model scheduler's smallest training level (the public code sets ``shift = 4`` on the SD3
scheduler's config, which the diffusers version it pins still read; recent diffusers ignore it, so the grid
is built here).  ``grid="model"`` uses the backend's own flow grid; on a VP backend the solver runs on the VP
schedule, each ``abar`` read as the flow level ``t = flow_time(abar)`` through the exact map of
``textsr.flow`` (``x_t = c(t) x_vp``).

Defaults are the public code's super-resolution settings (28 steps, step size 15, 3 gradient steps, shift 4;
the paper's x12 SR at 768 px used ``y = A x + 0.03 n``).  Deviations: the norm is per sample (the public
code takes one norm over the batch, the same at batch 1: a batch item then equals the same seed alone); the
gradient stays in the solver's float32 (the public code casts it to float16).  ``sigma_y`` is not used (as in
the paper).  ``eta`` and ``step_kind`` do not apply: the renoising is step 4.  A latent model's operator
``A(z) = A_pix(D(z))`` (``backends.latent_base.LatentOperator``) exposes ``A_pix`` as ``.pixel``; the loss lifts
residuals with ``A_pix+`` (an image, as the paper), never with the encoder.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch

from ..denoiser import Denoiser
from ..flow import FlowSchedule, flow_scale, flow_time
from .base import Noise, Problem, SolverConfig, StepResult
from .dps import per_sample_norm

GRIDS = ("own", "model")


@dataclass(frozen=True)
class FlowDPSConfig(SolverConfig):
    steps: int = 28
    step_size: float = 15.0
    dc_steps: int = 3
    shift: float = 4.0
    grid: Literal["own", "model"] = "own"
    name = "flowdps"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not math.isfinite(self.step_size) or self.step_size < 0:
            raise ValueError(f"FlowDPS step_size must be a finite number >= 0, got {self.step_size}")
        if isinstance(self.dc_steps, bool) or not isinstance(self.dc_steps, int) or self.dc_steps < 0:
            raise ValueError(f"FlowDPS dc_steps (gradient steps per level) must be an integer >= 0, "
                             f"got {self.dc_steps!r}")
        if not math.isfinite(self.shift) or self.shift <= 0:
            raise ValueError(f"FlowDPS shift must be a positive number, got {self.shift}")
        if self.grid not in GRIDS:
            raise ValueError(f"FlowDPS grid must be 'own' (its shifted grid) or 'model' (the backend's), "
                             f"got {self.grid!r}")

    def flow_levels(self, steps: int, sigma_min: float) -> list[float] | None:
        """FlowDPS's grid (``grid="own"``): ``t = shift u / (1 + (shift - 1) u)``, ``u = linspace(1, u_min, steps)``;
        None for ``grid="model"`` (the backend's grid)."""
        if self.grid != "own":
            return None
        if not 0.0 < sigma_min < 1.0:
            raise ValueError(f"sigma_min must lie in (0, 1), got {sigma_min}")
        u = torch.linspace(1.0, sigma_min, steps, dtype=torch.float64)  # steps = 1: [1.0]
        return (self.shift * u / (1.0 + (self.shift - 1.0) * u)).tolist()


def flow_level(schedule: Any, t: int) -> float:
    """The flow level of timestep ``t``: a ``FlowSchedule``'s own, else the exact map of ``abar_t``."""
    if isinstance(schedule, FlowSchedule):
        return schedule.sigma(t)
    return flow_time(schedule.abar(t))


def data_consistency(problem: Problem, z0: torch.Tensor, cfg: FlowDPSConfig) -> torch.Tensor:
    """Step 3: ``dc_steps`` gradient steps of size ``step_size`` on ``|| A+ y - A+ A z ||`` (unsquared, per
    sample) from ``z0``; for a latent operator ``A+`` is the pixel operator's and the gradient goes through
    the decoder inside ``A``."""
    A = problem.operator
    pix = getattr(A, "pixel", A)  # a LatentOperator's pixel operator (see the module docstring)
    y_lift = pix.A_pinv(problem.y)
    z = z0.detach()
    for _ in range(cfg.dc_steps):
        with torch.enable_grad():
            z_in = z.requires_grad_(True)
            loss = per_sample_norm(y_lift - pix.A_pinv(A.A(z_in))).sum()  # items decouple
            (grad,) = torch.autograd.grad(loss, z_in)
        z = (z_in - cfg.step_size * grad).detach()
    return z


def flowdps_step(den: Denoiser, problem: Problem, x_t: torch.Tensor, t: int, t_next: int,
                 cond: Any, cfg: FlowDPSConfig, noise: Noise) -> StepResult:
    s, s_next = flow_level(den.schedule, t), flow_level(den.schedule, t_next)
    pred = den(x_t, t, cond)
    x0_hat, x1_hat = pred.x0.detach(), pred.eps.detach()  # step 2: the flow Tweedie estimates
    x0_y = (1.0 - s) * x0_hat + s * data_consistency(problem, x0_hat, cfg)  # step 3
    if t_next == -1:  # t' = 0: x_0 = x0_y
        return StepResult(x_next=x0_y, x0_hat=x0_hat, x0=x0_y)
    x1_y = math.sqrt(s_next) * x1_hat + math.sqrt(1.0 - s_next) * noise.like(x1_hat)  # step 4
    z_next = (1.0 - s_next) * x0_y + s_next * x1_y  # step 5, on the flow path
    return StepResult(x_next=z_next / flow_scale(s_next), x0_hat=x0_hat, x0=x0_y)  # back to the loop's x_vp
