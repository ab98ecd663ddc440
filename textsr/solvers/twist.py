"""Twisting functions ``p~_t(y | x_t)`` for the twisted diffusion sampler (``tds.py``).

Every twist is a Gaussian in y around the denoiser's prediction,
``p~_t(y | x_t) = N(y; A x0_hat(x_t), C_t(x_t))``, ``C_t = A Cov[x0 | x_t] A^T + sigma_y^2 I``, and differs
only in how ``A Cov[x0 | x_t] A^T`` is approximated.  By Tweedie's second-order formula
``Cov[x0 | x_t] = (1 - abar_t) / sqrt(abar_t) * d x0_hat / d x_t`` (exact for an exact denoiser; the
Jacobian is then symmetric positive semi-definite).  Writing ``k_t = (1 - abar_t) / sqrt(abar_t)``,
``J = d x0_hat / d x_t`` and ``r = y - A x0_hat``:

* ``"tweedie"``: the whole ``m x m`` matrix ``k_t A J A^T`` from m vector-Jacobian products (one per
  measurement dimension; symmetrised, negative eigenvalues clipped).  Exact for a Gaussian prior;
  costs m backward passes: small m only.
* ``"rayleigh"``: ``A Cov A^T ~ lambda I`` with ``lambda = k_t (A^T r)^T J (A^T r) / |r|^2``, the Tweedie
  covariance along the residual (the direction the twist's quadratic form looks at).  One backward pass,
  which also gives the gradient (``A^T C^{-1} r = A^T r / (lambda + sigma_y^2)``): the cost of DPS.
* ``"scalar"``: ``Cov ~ (1 - abar_t) / abar_t I`` (``C = r_t^2 A A^T + sigma_y^2 I``, a PiGDM-like form with
  the error variance of x0_hat under a flat prior).  One backward pass.

The gradient ``g = grad_{x_t} log p~_t(y | x_t)`` holds ``C`` fixed (a vector-Jacobian product,
``J^T A^T C^{-1} r``); it only steers the proposal, so this approximation never biases the sampler.
Any positive twist gives correct weights: only the variance of the weights depends on the choice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch

from ..denoiser import Denoiser
from .base import Problem

TwistKind = Literal["tweedie", "rayleigh", "scalar"]
TWISTS: tuple[str, ...] = ("tweedie", "rayleigh", "scalar")
LOG2PI = math.log(2 * math.pi)
MIN_VAR = 1e-12  # floor of the twist's variances (float64), only against division by zero


@dataclass
class TwistEval:
    """The denoiser's prediction at ``x_t`` and the twist there (all detached)."""

    x0_hat: torch.Tensor
    eps: torch.Tensor
    log_twist: torch.Tensor  # (P,) float64, log p~_t(y | x_t)
    grad: torch.Tensor  # (P, *in_shape), grad_{x_t} log p~_t(y | x_t) with C_t held fixed
    #: (P,) float64: Cov[x0 | x_t] in the range of A summarised by one variance (continuous model, no
    #: chain correction, x units): what the Kalman proposal predicts the next level from
    kappa: torch.Tensor


def _sumsq(v: torch.Tensor) -> torch.Tensor:
    return v.flatten(1).to(torch.float64).pow(2).sum(1)


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.flatten(1).to(torch.float64) * b.flatten(1).to(torch.float64)).sum(1)


def _vjp(x0_hat: torch.Tensor, x_in: torch.Tensor, v: torch.Tensor, retain: bool) -> torch.Tensor:
    """``J^T v`` per particle (``J = d x0_hat / d x_t``); zeros if x0_hat does not depend on x_t."""
    (g,) = torch.autograd.grad(x0_hat, x_in, grad_outputs=v.to(x0_hat.dtype), retain_graph=retain, allow_unused=True)
    return torch.zeros_like(x_in) if g is None else g


def evaluate_twist(kind: str, den: Denoiser, problem: Problem, x_t: torch.Tensor, t: int, cond: Any,
                   max_dense: int = 64, delta: float = 0.0) -> TwistEval:
    """Call the denoiser at ``x_t`` (with autograd) and evaluate the twist ``kind`` and its gradient.

    ``delta >= 0``: the chain correction (``chain_precision_gap``): the covariance is taken as
    ``(Cov^-1 + delta I)^-1``, the posterior covariance of x0 when x_t measures it with the sampled chain's
    remaining variance instead of the continuous model's ``(1 - abar_t) / abar_t``."""
    sch = den.schedule
    abar = sch.abar(t)
    k_t = (1.0 - abar) / math.sqrt(abar)
    with torch.enable_grad():
        x_in = x_t.detach().requires_grad_(True)
        pred = den(x_in, t, cond)
        A, y, sigma2 = problem.operator, problem.y, problem.sigma_y**2
        r = (y - A.A(pred.x0)).detach()
        if kind == "tweedie":
            log_tw, grad, lam = _tweedie(pred.x0, x_in, A, r, sigma2, k_t, max_dense, delta)
        elif kind == "rayleigh":
            log_tw, grad, lam = _rayleigh(pred.x0, x_in, A, r, sigma2, k_t, delta)
        elif kind == "scalar":
            rho2 = (1.0 - abar) / abar
            log_tw, grad = _scalar(pred.x0, x_in, A, r, sigma2, 1.0 / (1.0 / rho2 + delta))
            lam = torch.full((r.shape[0],), rho2 * mean_s2(A), dtype=torch.float64)
        else:
            raise ValueError(f"unknown twist {kind!r}; choose one of {', '.join(TWISTS)}")
    kappa = (lam / mean_s2(A)).clamp(min=MIN_VAR)
    return TwistEval(pred.x0.detach(), pred.eps.detach(), log_tw, grad.detach(), kappa)


def _gauss_logpdf_iso(r2: torch.Tensor, var: torch.Tensor, m: int) -> torch.Tensor:
    return -0.5 * (r2 / var + m * torch.log(var) + m * LOG2PI)


def mean_s2(A) -> float:
    """Mean squared kept singular value of A (``A A^T ~ mean_s2 I`` in the iso approximations)."""
    s = A.singular_values().to(torch.float64)
    return float((s**2).mean()) if s.numel() else 1.0


def _rayleigh(x0_hat, x_in, A, r, sigma2: float, k_t: float, delta: float):
    u = A.At(r)  # A^T r
    w = _vjp(x0_hat, x_in, u, retain=False)  # J^T A^T r
    r2 = _sumsq(r)
    lam_cont = (k_t * _dot(w, u) / r2.clamp(min=1e-300)).clamp(min=0.0)  # r^T A Cov A^T r / |r|^2
    lam = lam_cont
    if delta > 0:  # chain correction with A A^T ~ mean(s^2) I
        lam = lam / (1.0 + delta * lam / mean_s2(A))
    var = (lam + sigma2).clamp(min=MIN_VAR)
    m = r[0].numel()
    scale = (1.0 / var).to(w.dtype).view(-1, *([1] * (w.ndim - 1)))
    return _gauss_logpdf_iso(r2, var, m), w * scale, lam_cont  # g = J^T A^T C^{-1} r


def _scalar(x0_hat, x_in, A, r, sigma2: float, rho2: float):
    p = A.A_pinv(r)  # A+ r = V S^-1 U^T r
    v = A.spectral(p, lambda s: s**2 / (rho2 * s**2 + sigma2))  # A^T C^{-1} r (kept singular values)
    quad = _dot(p, v)
    s = A.singular_values().to(torch.float64)
    logdet = torch.log((rho2 * s**2 + sigma2).clamp(min=MIN_VAR)).sum()
    m = r[0].numel()
    if sigma2 > 0 and s.numel() < m:  # measurement directions outside the kept range: C = sigma_y^2 there
        quad = quad + _sumsq(r - A.A(p)) / sigma2
        logdet = logdet + (m - s.numel()) * math.log(sigma2)
    g = _vjp(x0_hat, x_in, v, retain=False)
    dims = m if sigma2 > 0 else s.numel()
    return -0.5 * (quad + logdet + dims * LOG2PI), g


def _tweedie(x0_hat, x_in, A, r, sigma2: float, k_t: float, max_dense: int, delta: float):
    m = r[0].numel()
    if m > max_dense:
        raise ValueError(
            f"the 'tweedie' twist needs one backward pass per measurement dimension (m = {m} > max_dense = "
            f"{max_dense}); use twist='rayleigh' for images, or raise max_dense"
        )
    P = r.shape[0]
    eye = torch.eye(m, dtype=x0_hat.dtype, device=x0_hat.device).reshape(m, *A.out_shape)
    At_e = A.At(eye)  # row j: A^T e_j
    cols = []
    for j in range(m):  # J^T A^T e_j per particle
        cols.append(_vjp(x0_hat, x_in, At_e[j:j + 1].expand_as(x0_hat), retain=j < m - 1))
    AJA = torch.stack([A.A(c).reshape(P, m) for c in cols], dim=-1).to(torch.float64)  # (P, m, m): A J^T A^T
    S = 0.5 * k_t * (AJA + AJA.transpose(1, 2))  # A Cov A^T, symmetrised
    r64 = r.reshape(P, m).to(torch.float64)
    lam_cont = (torch.einsum("pi,pij,pj->p", r64, S, r64) / (r64**2).sum(-1).clamp(min=1e-300)).clamp(min=0.0)
    if delta > 0:  # chain correction: A (Cov^-1 + delta I)^-1 A^T ~ S - S (S + A A^T / delta)^-1 S
        AAt = A.A(At_e).reshape(m, m).to(torch.float64)
        S = S - S @ torch.linalg.solve(S + AAt / delta, S)
        S = 0.5 * (S + S.transpose(1, 2))
    lam, E = torch.linalg.eigh(S)
    lam = lam.clamp(min=0.0) + sigma2
    lam = torch.maximum(lam, lam.amax(-1, keepdim=True) * 1e-12).clamp(min=MIN_VAR)
    rt = torch.einsum("pji,pj->pi", E, r.reshape(P, m).to(torch.float64))  # E^T r
    log_tw = -0.5 * ((rt**2 / lam).sum(-1) + torch.log(lam).sum(-1) + m * LOG2PI)
    h = torch.einsum("pij,pj->pi", E, rt / lam)  # C^{-1} r
    g = sum(c * h[:, j].to(c.dtype).view(-1, *([1] * (c.ndim - 1))) for j, c in enumerate(cols))
    return log_tw, g, lam_cont
