"""PiGDM (Song, Vahdat, Mardani & Kautz, "Pseudoinverse-Guided Diffusion Models for Inverse Problems",
ICLR 2023).

Guidance (eq. 8): ``g = grad_{x_t} [ stopgrad((y - A x0_hat)^T (r_t^2 A A^T + sigma_y^2 I)^{-1}) A x0_hat(x_t) ]``
with ``r_t^2 = 1 - abar_t`` for VP models.  In A's SVD basis ``A^T (r^2 A A^T + sigma_y^2 I)^{-1} (y - A x0_hat)
= V diag(s^2 / (r^2 s^2 + sigma_y^2)) V^T A+ (y - A x0_hat)``, computed by ``operator.spectral``.

``weighting`` picks how ``g`` enters the step (all start from ``sqrt(abar_T) A+ y + sqrt(1-abar_T) z``):

* ``"tweedie"`` (default): ``g`` is the likelihood score ``grad log p(y | x_t)``, so by Tweedie's formula
  the posterior mean is ``x0_y = x0_hat + (1 - abar_t) / sqrt(abar_t) * g``; the DDIM step (eta = 0) then
  uses ``x0_y`` and the eps consistent with it.  Exact for a Gaussian prior (it is then the DDNM
  projection).  Safeguard (``safeguard=True``): the correction is halved (at most 20 times) until the
  weighted residual ``||y - A x0_y||`` does not exceed ``||y - A x0_hat||``, per sample; this stops the
  overshoot seen at few steps where the Jacobian of x0_hat is much larger than ``1/sqrt(abar_t)``.
* ``"nvlabs"``: NVlabs' released code: the noiseless residual ``A+ (y - A x0_hat)`` (no ``1/r_t^2``, no
  sigma_y) added after the DDIM step with weight ``sqrt(abar_s) sqrt(abar_t)``.  Stable, but copies
  measurement noise into the sample.
* ``"literal"``: the paper's ``g`` (with ``1/r_t^2``) with NVlabs' weight; diverges often (kept for study).
* ``"official"``: the "simplified PiGDM" of the text-guided SR paper's code (not Song et al.'s method):
  a DPS step on the pseudo-inverse residual, ``x_s = x_s' - zeta * grad_{x_t} || A+ y - A+ A x0_hat(x_t) ||``
  (per-sample, non-squared norm, gradient through the denoiser), ``x_s'`` the diffusion step from
  ``x0_hat``; ``zeta`` is its step size (default 0.5, the paper's), ``scale`` and ``safeguard`` do not
  apply.  The paper's code takes it with ``step_kind="ddpm"``, from noise (``init="noise"``) or from its
  warm start; ``preset="paper"`` sets both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch

from ..denoiser import Denoiser, eps_from_x0
from .base import Noise, Problem, SolverConfig, StepKind, StepResult
from .dps import detached, per_sample_norm
from .step import diffusion_step

WEIGHTINGS = ("tweedie", "nvlabs", "literal", "official")


@dataclass(frozen=True)
class PiGDMConfig(SolverConfig):
    eta: float = 0.0
    step_kind: StepKind = "ddim"
    init: Literal["noise", "pinv"] = "pinv"
    weighting: Literal["tweedie", "nvlabs", "literal", "official"] = "tweedie"
    safeguard: bool = True
    scale: float = 1.0
    zeta: float = 0.5
    name = "pigdm"
    needs_grad = True
    needs_svd = True

    def starts_at_zero_snr(self) -> bool:
        """The Tweedie weighting's gain ``(1 - abar_t) / sqrt(abar_t)`` is infinite at pure noise; the others
        weight ``g`` by ``sqrt(abar_s abar_t)`` (0 there) or take a DPS step."""
        return self.weighting != "tweedie"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.weighting not in WEIGHTINGS:
            known = ", ".join(map(repr, WEIGHTINGS))
            raise ValueError(f"PiGDM weighting must be one of {known}, got {self.weighting!r}")
        if not math.isfinite(self.scale) or self.scale < 0:
            raise ValueError(f"PiGDM guidance scale must be >= 0, got {self.scale}")
        if not math.isfinite(self.zeta) or self.zeta < 0:
            raise ValueError(f"PiGDM step size zeta (weighting='official') must be a finite number >= 0, "
                             f"got {self.zeta}")


def _weighted_norm(problem: Problem, resid: torch.Tensor, r2: float) -> torch.Tensor:
    """``|| (r^2 A A^T + sigma_y^2)^{-1/2} resid ||`` per sample, via A+ and the SVD view."""
    A = problem.operator
    p = A.A_pinv(resid)
    w = A.spectral(p, lambda s: s**2 / (r2 * s**2 + problem.sigma_y**2))
    return (p * w).flatten(1).sum(1).clamp(min=0).sqrt()


def pigdm_step(den: Denoiser, problem: Problem, x_t: torch.Tensor, t: int, t_next: int,
               cond: Any, cfg: PiGDMConfig, noise: Noise) -> StepResult:
    A, y, sigma_y = problem.operator, problem.y, problem.sigma_y
    sch = den.schedule
    abar_t, abar_s = sch.abar(t), sch.abar(t_next)
    if cfg.weighting == "official":
        return _official_step(den, problem, x_t, t, abar_t, abar_s, cond, cfg, noise)
    r2 = 1.0 - abar_t
    with torch.enable_grad():
        x_in = x_t.detach().requires_grad_(True)
        pred = den(x_in, t, cond)
        resid = (y - A.A(pred.x0)).detach()
        if cfg.weighting == "nvlabs":
            v = A.A_pinv(resid)
        else:  # A^T (r^2 A A^T + sigma_y^2 I)^{-1} (y - A x0_hat)
            v = A.spectral(A.A_pinv(resid), lambda s: s**2 / (r2 * s**2 + sigma_y**2))
        (g,) = torch.autograd.grad((v * pred.x0).sum(), x_in)  # vector-Jacobian product, eq. 8
    g = cfg.scale * g
    x0_hat, eps, v_model = pred.x0.detach(), pred.eps.detach(), detached(pred.v)
    if cfg.weighting != "tweedie":
        x_s = diffusion_step(x0_hat, x_t, eps, v_model, abar_t, abar_s, cfg, noise)
        return StepResult(x_next=x_s + math.sqrt(abar_s * abar_t) * g, x0_hat=x0_hat, x0=x0_hat)
    delta = (1.0 - abar_t) / math.sqrt(abar_t) * g  # Tweedie: E[x0 | x_t, y] - E[x0 | x_t]
    if cfg.safeguard:
        base = _weighted_norm(problem, resid, r2)
        alpha = torch.ones(x_t.shape[0], dtype=x_t.dtype, device=x_t.device)
        shape = (-1,) + (1,) * (x_t.ndim - 1)
        for _ in range(20):
            new = _weighted_norm(problem, y - A.A(x0_hat + alpha.view(shape) * delta), r2)
            bad = new > base * (1 + 1e-6) + 1e-12
            if not bool(bad.any()):
                break
            alpha = torch.where(bad, alpha / 2, alpha)
        delta = alpha.view(shape) * delta
    x0 = x0_hat + delta
    x_s = diffusion_step(x0, x_t, eps_from_x0(x_t, x0, abar_t), v_model, abar_t, abar_s, cfg, noise)
    return StepResult(x_next=x_s, x0_hat=x0_hat, x0=x0)


def _official_step(den: Denoiser, problem: Problem, x_t: torch.Tensor, t: int, abar_t: float, abar_s: float,
                   cond: Any, cfg: PiGDMConfig, noise: Noise) -> StepResult:
    """The paper code's simplified PiGDM: a DPS step on ``|| A+ y - A+ A x0_hat ||``."""
    A, y = problem.operator, problem.y
    with torch.enable_grad():
        x_in = x_t.detach().requires_grad_(True)
        pred = den(x_in, t, cond)
        # || A+ y - A+ A x0_hat(x_t) || per sample; the sum decouples the batch items' gradients
        loss = per_sample_norm(A.A_pinv(y) - A.A_pinv(A.A(pred.x0))).sum()
        (grad,) = torch.autograd.grad(loss, x_in)
    x0_hat = pred.x0.detach()
    x_s = diffusion_step(x0_hat, x_t, pred.eps.detach(), detached(pred.v), abar_t, abar_s, cfg, noise)
    return StepResult(x_next=x_s - cfg.zeta * grad, x0_hat=x0_hat, x0=x0_hat)
