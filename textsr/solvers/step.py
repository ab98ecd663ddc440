"""The one diffusion step every solver takes from ``t`` to ``s < t``, as ``cfg.step_kind`` says.

Every kind is written as one Gaussian transition around the solver's clean estimate ``x0``
(``x0_hat``, or DDNM's ``x0'``)::

    x_s = a x0 + m + sigma n,     n of unit variance per element

* ``"ddnm"`` (DDNM's parameterisation, docs/method.md, "The sampling loop"): ``a = sqrt(abar_s)``, ``m = 0``,
  ``sigma = sqrt(1 - abar_s)``, ``n = eta z + sqrt(1 - eta^2) eps``.
* ``"ddim"`` (Song et al. 2021, eq. 12; eta = 1 is DDPM's ancestral step with ``beta_tilde``):
  ``a = sqrt(abar_s)``, ``m = 0``, ``sigma = sqrt(1 - abar_s)``,
  ``n = (sqrt(1 - abar_s - c^2) eps + c z) / sigma`` with ``c = eta sqrt(beta_tilde)``.
* ``"ddpm"`` (Ho et al. 2020, eq. 6-7, for the strided pair ``t -> s``; the DDNM paper's Algorithm 1
  and IF's sampler): the posterior ``q(x_s | x_t, x0)``: ``a = c0``, ``m = ct x_t``, ``n = z`` and
  ``sigma^2 = beta_tilde``, or the model's own learned-range variance
  ``exp(v log beta + (1 - v) log beta_tilde)`` when its ``Prediction`` carries ``v``
  (``schedule.DDPMPosterior``).  No noise on the final step (``s = -1``: ``x_{-1} = x0``).  ``eta`` is
  not used: the step's noise is the posterior's (or the model's) own.

DDNM+ needs exactly this split (the coefficient ``a`` of ``x0`` and the noise ``sigma n``) to share the
noise budget between the measurement noise and the injected noise; the other solvers just apply it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..schedule import ddpm_posterior
from .base import Noise, SolverConfig


@dataclass
class Transition:
    """``x_s = a x0 + m + sigma n`` for one step; ``sigma`` is a number or a per-element tensor and
    ``n`` is None when no noise is added.

    The same step as a Gaussian around its deterministic part (what a particle solver needs: the density
    ``p(x_s | x_t) = N(a x0 + m + eps_coef eps, std^2 I)``): ``sigma n = eps_coef eps + std z``, with
    ``eps_coef eps`` the share of the model's ``eps`` (none for ``"ddpm"``, whose noise is all fresh) and
    ``std`` the std of the fresh unit noise ``z``."""

    a: float
    m: torch.Tensor | float
    sigma: torch.Tensor | float
    n: torch.Tensor | None
    eps: torch.Tensor | None = None
    eps_coef: float = 0.0
    std: torch.Tensor | float = 0.0

    def noise(self) -> torch.Tensor | float:
        """``sigma n`` (0 when the step adds none)."""
        return 0.0 if self.n is None else self.sigma * self.n

    def __call__(self, x0: torch.Tensor) -> torch.Tensor:
        return self.a * x0 + self.m + self.noise()

    def mean(self, x0: torch.Tensor) -> torch.Tensor:
        """The step's mean given the clean estimate: ``a x0 + m + eps_coef eps`` (no fresh noise)."""
        mean = self.a * x0 + self.m
        return mean if self.eps is None else mean + self.eps_coef * self.eps


def fresh_noise_std(abar_t: float, abar_s: float, cfg: SolverConfig) -> float:
    """The std of the fresh noise of ``cfg``'s step from t to s (scalar kinds): ``eta sqrt(1 - abar_s)``
    (``"ddnm"``) or ``eta sqrt((1 - abar_s) / (1 - abar_t)) sqrt(1 - abar_t / abar_s)`` (``"ddim"``; at eta = 1
    DDPM's ``sqrt(beta_tilde)``, which is also the ``"ddpm"`` step's std without a learned variance)."""
    if cfg.step_kind == "ddnm":
        return cfg.eta * math.sqrt(max(1.0 - abar_s, 0.0))
    eta = 1.0 if cfg.step_kind == "ddpm" else cfg.eta
    return eta * math.sqrt((1 - abar_s) / (1 - abar_t)) * math.sqrt(max(1 - abar_t / abar_s, 0.0))


def transition(x_t: torch.Tensor, eps: torch.Tensor, v: torch.Tensor | None, abar_t: float, abar_s: float,
               cfg: SolverConfig, noise: Noise | None) -> Transition:
    """The step ``t -> s`` of kind ``cfg.step_kind`` (see the module docstring); ``eps`` is the noise
    consistent with the solver's clean estimate (used by ``ddnm``/``ddim``), ``v`` the model's learned
    variance (``ddpm`` only; None: ``beta_tilde``).  ``noise=None``: no fresh noise is drawn (``n`` holds
    the eps part only; ``Transition.mean`` and ``.std`` describe the Gaussian step, as a particle solver
    that draws its own proposal needs)."""
    kind = cfg.step_kind
    if kind == "ddpm":
        q = ddpm_posterior(abar_t, abar_s)  # eq. 7 for the pair (t, s)
        if abar_s >= 1.0:  # final step: x_{-1} = x0, no noise
            return Transition(a=q.c0, m=q.ct * x_t, sigma=0.0, n=None)
        var = q.variance(None if v is None else v.to(device=x_t.device, dtype=x_t.dtype))
        sigma = var.sqrt() if torch.is_tensor(var) else math.sqrt(var)
        return Transition(a=q.c0, m=q.ct * x_t, sigma=sigma, n=None if noise is None else noise.like(x_t),
                          std=sigma)
    a, sigma = math.sqrt(abar_s), math.sqrt(max(1.0 - abar_s, 0.0))
    c = fresh_noise_std(abar_t, abar_s, cfg)
    # drawn on every step with eta > 0 (the final one too)
    z = noise.like(eps) if cfg.eta > 0 and noise is not None else None
    if kind == "ddnm":
        n = math.sqrt(1.0 - cfg.eta**2) * eps
        return Transition(a=a, m=0.0, sigma=sigma, n=n if z is None else n + cfg.eta * z, eps=eps,
                          eps_coef=sigma * math.sqrt(1.0 - cfg.eta**2), std=c)
    if kind == "ddim":
        if sigma == 0.0:
            return Transition(a=a, m=0.0, sigma=0.0, n=None)
        eps_coef = math.sqrt(max(1 - abar_s - c**2, 0.0))
        n = eps_coef * eps
        if c > 0 and z is not None:  # z is drawn whenever eta > 0
            n = n + c * z
        return Transition(a=a, m=0.0, sigma=sigma, n=n / sigma, eps=eps, eps_coef=eps_coef, std=c)
    raise ValueError(f"unknown step_kind {kind!r}")


def diffusion_step(x0: torch.Tensor, x_t: torch.Tensor, eps: torch.Tensor, v: torch.Tensor | None,
                   abar_t: float, abar_s: float, cfg: SolverConfig, noise: Noise) -> torch.Tensor:
    """``x_s`` from the clean estimate ``x0`` (the solver-independent step every solver takes)."""
    return transition(x_t, eps, v, abar_t, abar_s, cfg, noise)(x0)
