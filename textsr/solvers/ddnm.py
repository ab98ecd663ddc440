"""DDNM and DDNM+ (Wang, Yu & Zhang, "Zero-Shot Image Restoration Using Denoising Diffusion Null-Space
Model", ICLR 2023).

DDNM (noiseless, Alg. 1, eq. 13): ``x0' = x0_hat - A+ (A x0_hat - y)`` (= ``A+ y + (I - A+ A) x0_hat``),
then the diffusion step (``solvers.step``) with ``x0'``: with ``step_kind="ddpm"`` exactly Alg. 1's
``x_s ~ q(x_s | x_t, x0')`` (the model's learned variance when it has one), with ``"ddnm"`` (default)
the DDIM-style step with the network's ``eps``.

DDNM+ (noisy y, eq. 17-19), in the form every step kind shares: the step is
``x_s = a x0' + m + sigma n`` (``a`` the coefficient of the clean estimate: ``sqrt(abar_s)`` for the
DDIM-style kinds, ``c0 = sqrt(abar_s) beta / (1 - abar_t)`` for ``"ddpm"``; ``sigma`` the step's noise
std, ``n`` unit noise).  With ``x0' = x0_hat - Lambda A+ (A x0_hat - y)`` and ``y = A x + sigma_y e``,
along a right singular vector ``v_i`` of A (singular value ``s_i``) the measurement noise reaches
``x_s`` as ``a lambda_i sigma_y / s_i`` times a unit Gaussian.  The step's variance budget along
``v_i`` is ``sigma_i^2 = v_i^T diag(sigma^2) v_i`` (``= sigma^2`` for a scalar sigma; for a learned
per-element variance the model's own variance in that direction).  Eq. 19 shares it:

    (a lambda_i sigma_y / s_i)^2 + gamma_i^2 = sigma_i^2
    lambda_i = 1, gamma_i = sqrt(sigma_i^2 - (a sigma_y / s_i)^2)   if sigma_i >= a sigma_y / s_i
    lambda_i = sigma_i s_i / (a sigma_y), gamma_i = 0                 otherwise

and the injected noise gets std ``gamma_i`` along ``v_i`` and keeps ``sigma`` in A's null space:
``sigma n - V diag(1 - gamma_i / sigma_i) V^T (sigma n)`` (one projection of the noise per step).
For ``"ddpm"`` this is the DDNM paper's DDPM form (``a_t`` of eq. 18 is ``c0``, ``sigma_t`` the
posterior std); at ``sigma_y = 0`` DDNM+ is DDNM exactly.  ``mode="svd"`` applies it per singular
value (the paper's exact form); ``mode="simplified"`` uses one pair per element with ``s_i`` taken as 1
(the reference code's form), which also shrinks the noise in the null space.  Deviation from the
reference code: its noise term multiplies ``gamma`` by ``sqrt(1 - abar_s)`` once more; we use
``gamma`` as the total noise std as eq. 19 states.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from ..denoiser import Denoiser
from .base import Noise, Problem, SolverConfig, StepResult
from .step import diffusion_step, transition


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


def ddnm_step(den: Denoiser, problem: Problem, x_t: torch.Tensor, t: int, t_next: int,
              cond: Any, cfg: DDNMConfig, noise: Noise) -> StepResult:
    A = problem.operator
    pred = den(x_t, t, cond)
    x0_hat = pred.x0
    # eq. 13: range-null space decomposition, x0' = x0_hat - A+ (A x0_hat - y)
    x0 = x0_hat - A.A_pinv(A.A(x0_hat) - problem.y)
    sch = den.schedule
    x_s = diffusion_step(x0, x_t, pred.eps, pred.v, sch.abar(t), sch.abar(t_next), cfg, noise)
    return StepResult(x_next=x_s, x0_hat=x0_hat, x0=x0)


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    return torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.zeros_like(num))


def ddnm_plus_step(den: Denoiser, problem: Problem, x_t: torch.Tensor, t: int, t_next: int,
                   cond: Any, cfg: DDNMPlusConfig, noise: Noise) -> StepResult:
    A, y, sigma_y = problem.operator, problem.y, problem.sigma_y
    pred = den(x_t, t, cond)
    x0_hat = pred.x0
    sch = den.schedule
    tr = transition(x_t, pred.eps, pred.v, sch.abar(t), sch.abar(t_next), cfg, noise)
    r = A.A_pinv(A.A(x0_hat) - y)  # A+ (A x0_hat - y), lies in the range of A+
    if sigma_y == 0.0:  # DDNM+ reduces to DDNM exactly
        x0 = x0_hat - r
        return StepResult(x_next=tr(x0), x0_hat=x0_hat, x0=x0)
    a, sigma = tr.a, tr.sigma
    if cfg.mode == "simplified":
        # eq. 19 with s_i = 1: lambda, gamma per element (one scalar pair when sigma is a number)
        sig = torch.as_tensor(sigma, dtype=x0_hat.dtype, device=x0_hat.device)
        lam = torch.clamp(sig / (a * sigma_y), max=1.0)
        gamma = torch.sqrt(torch.clamp(sig**2 - (a * sigma_y) ** 2, min=0.0))
        x0 = x0_hat - lam * r
        x_s = a * x0 + tr.m + (0.0 if tr.n is None else gamma * tr.n)
        return StepResult(x_next=x_s, x0_hat=x0_hat, x0=x0)
    # per singular value s_i: the noise of A+ y along v_i has std sigma_y / s_i; sigma_i is the step's
    # noise std along v_i
    sigma_i = A.spectral_diag(sigma**2).sqrt() if torch.is_tensor(sigma) else sigma

    def lam_fn(s: torch.Tensor) -> torch.Tensor:  # eq. 19, lambda_i
        return torch.clamp(sigma_i * s / (a * sigma_y), max=1.0)

    def keep_fn(s: torch.Tensor) -> torch.Tensor:  # 1 - gamma_i / sigma_i: the share of noise removed along v_i
        s_i = torch.as_tensor(sigma_i, dtype=s.dtype, device=s.device)
        gamma = torch.sqrt(torch.clamp(s_i**2 - (a * sigma_y / s) ** 2, min=0.0))
        return 1.0 - _ratio(gamma, s_i.expand_as(gamma))

    x0 = x0_hat - A.spectral(r, lam_fn)
    x_s = a * x0 + tr.m
    if tr.n is not None:
        n = tr.sigma * tr.n  # sigma n: std sigma everywhere, then gamma_i along v_i (projected once)
        x_s = x_s + n - A.spectral(n, keep_fn)
    return StepResult(x_next=x_s, x0_hat=x0_hat, x0=x0)

