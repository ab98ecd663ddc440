"""DDNM and DDNM+ (Wang, Yu & Zhang, "Zero-Shot Image Restoration Using Denoising Diffusion Null-Space
Model", ICLR 2023).

DDNM (noiseless, Alg. 1, eq. 13): ``x0' = x0_hat - A+ (A x0_hat - y)`` (= ``A+ y + (I - A+ A) x0_hat``),
then the DDIM-style step with ``x0'`` and the network's ``eps``.

DDNM+ (noisy y, eq. 17-19): scale the correction by ``lambda`` and the injected noise by ``gamma`` so
that the measurement noise carried in by ``A+ y`` plus the injected noise has the variance the
schedule expects at s.  With ``a = sqrt(abar_s)``, ``sigma_s = sqrt(1 - abar_s)`` and singular value
``s_i``: ``lambda_i = min(1, sigma_s s_i / (a sigma_y))``, ``gamma_i = sqrt(max(sigma_s^2 - (a sigma_y /
s_i)^2, 0))``.  ``mode="svd"`` applies this per singular value in A's SVD basis (the paper's exact form;
null-space directions keep the full ``sigma_s``); ``mode="simplified"`` uses one scalar pair for all
directions (the reference code's form, with ``s_i`` taken as 1), which also shrinks the noise in the
null space.  Deviation from the reference code: its noise term multiplies ``gamma`` by ``sqrt(1 -
abar_s)`` once more; we use ``gamma`` as the total noise std as eq. 19 states.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch

from ..denoiser import Denoiser
from .base import Noise, Problem, SolverConfig, StepResult
from .plain import diffusion_step


@dataclass(frozen=True)
class DDNMConfig(SolverConfig):
    """Reference defaults: 100 steps, eta = 0.85 (DDNM parameterisation), no time-travel."""

    name = "ddnm"
    projects = True


@dataclass(frozen=True)
class DDNMPlusConfig(SolverConfig):
    """DDNM+ defaults as DDNM; ``mode`` = ``"svd"`` (exact, per singular value) or ``"simplified"``."""

    mode: Literal["svd", "simplified"] = "svd"
    name = "ddnm+"
    projects = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mode not in ("svd", "simplified"):
            raise ValueError(f"DDNM+ mode must be 'svd' or 'simplified', got {self.mode!r}")
        if self.step_kind != "ddnm":
            raise ValueError("DDNM+ defines its noise in the 'ddnm' step parameterisation; use step_kind='ddnm'")


def ddnm_step(den: Denoiser, problem: Problem, x_t: torch.Tensor, t: int, t_next: int,
              cond: Any, cfg: DDNMConfig, noise: Noise) -> StepResult:
    A = problem.operator
    pred = den(x_t, t, cond)
    x0_hat = pred.x0
    # eq. 13: range-null space decomposition, x0' = x0_hat - A+ (A x0_hat - y)
    x0 = x0_hat - A.A_pinv(A.A(x0_hat) - problem.y)
    sch = den.schedule
    x_s = diffusion_step(x0, pred.eps, sch.abar(t), sch.abar(t_next), cfg, noise)
    return StepResult(x_next=x_s, x0_hat=x0_hat, x0=x0)


def ddnm_plus_step(den: Denoiser, problem: Problem, x_t: torch.Tensor, t: int, t_next: int,
                   cond: Any, cfg: DDNMPlusConfig, noise: Noise) -> StepResult:
    A, y, sigma_y = problem.operator, problem.y, problem.sigma_y
    pred = den(x_t, t, cond)
    x0_hat = pred.x0
    abar_s = den.schedule.abar(t_next)
    a, sigma_s = math.sqrt(abar_s), math.sqrt(max(1.0 - abar_s, 0.0))
    r = A.A_pinv(A.A(x0_hat) - y)  # A+ (A x0_hat - y), lies in the range of A+
    # unit-variance noise of the DDNM step: eta z + sqrt(1 - eta^2) eps
    n = math.sqrt(1.0 - cfg.eta**2) * pred.eps
    if cfg.eta > 0:
        n = n + cfg.eta * noise.like(x0_hat)
    if sigma_y == 0.0:  # DDNM+ reduces to DDNM exactly
        x0 = x0_hat - r
        return StepResult(x_next=a * x0 + sigma_s * n, x0_hat=x0_hat, x0=x0)
    if cfg.mode == "simplified":
        # eq. 19 with a scalar threshold: lambda, gamma shared by all directions
        if sigma_s >= a * sigma_y:
            lam, gamma = 1.0, math.sqrt(sigma_s**2 - (a * sigma_y) ** 2)
        else:
            lam, gamma = sigma_s / (a * sigma_y), 0.0
        x0 = x0_hat - lam * r
        return StepResult(x_next=a * x0 + gamma * n, x0_hat=x0_hat, x0=x0)
    # per singular value s_i: the noise of A+ y along v_i has std sigma_y / s_i
    def lam_fn(s: torch.Tensor) -> torch.Tensor:
        return torch.clamp(sigma_s * s / (a * sigma_y), max=1.0)

    def gamma_fn(s: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(torch.clamp(sigma_s**2 - (a * sigma_y / s) ** 2, min=0.0))

    x0 = x0_hat - A.spectral(r, lam_fn)
    x_s = a * x0 + sigma_s * A.project_null(n) + A.spectral(n, gamma_fn)
    return StepResult(x_next=x_s, x0_hat=x0_hat, x0=x0)
