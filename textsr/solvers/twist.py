"""Twisting functions ``p~_t(y | x_t)`` for the twisted diffusion sampler (``tds.py``).

Each twist is a Gaussian in y around a prediction of x0, ``p~_t(y | x_t) = N(y; A x0_pred(x_t), C_t)``,
``C_t = A Cov_t A^T + sigma_y^2 I``.  By Tweedie's second-order formula ``Cov[x0 | x_t] = k_t d x0_hat / d x_t``
with ``k_t = (1 - abar_t) / sqrt(abar_t)`` (exact for an exact denoiser; the Jacobian ``J`` is then symmetric
positive semi-definite).  With ``r = y - A x0_pred``:

* ``"tweedie"``: the whole ``m x m`` matrix ``k_t A J A^T`` from m vector-Jacobian products (symmetrised,
  negative eigenvalues clipped).  Exact for an exact denoiser; m backward passes per step.
* ``"rayleigh"``: ``Cov ~ kappa I`` in the range of A, ``kappa`` the Rayleigh quotient of Tweedie's covariance
  along ``A^T (rho_t^2 A A^T + sigma_y^2 I)^-1 r``; one backward pass (the cost of DPS), which also gives
  the gradient.
* ``"scalar"``: ``Cov ~ rho_t^2 I``, ``rho_t^2 = (1 - abar_t) / abar_t`` (x0_hat's error under a flat prior;
  a PiGDM-like form).  One backward pass for the gradient.
* ``"forward"``: MCGdiff's potential (Cardoso et al. 2024): ``x0_pred = x_t / sqrt(abar_t)`` and ``Cov =
  rho_t^2 I``: the observation diffused forward, no model Jacobian, no backward pass.
* ``"lowrank"`` (``lowrank_twist.py``): an isotropic floor plus a low-rank excess from k fixed probes (k + 1
  backward passes), exact when the excess has rank <= k - 2, else the Rayleigh twist.
* ``"auto"`` (default): ``"tweedie"`` when y has at most ``AUTO_DENSE`` = 16 entries, else ``"lowrank"``.

Each variance is mapped to the *sampled chain's* (``chain.ChainVariances``) unless the caller passes
``chain=None``.  The gradient ``g = grad_{x_t} log p~_t(y | x_t)`` holds ``C`` fixed; it only steers the
proposal, so no approximation in it biases the sampler, and any positive twist gives correct weights: the
choice only changes their variance (measured in ``bench/particles.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ..denoiser import Denoiser
from .base import Problem
from .lowrank_twist import lowrank_twist
from .twist_parts import LOG2PI, MIN_VAR, ChainMap, range_iso, rayleigh_direction, rayleigh_from, vjp, vjps

TWISTS: tuple[str, ...] = ("auto", "tweedie", "lowrank", "rayleigh", "scalar", "forward")
AUTO_DENSE = 16  # "auto": the exact "tweedie" twist up to this many measurement dimensions, else "lowrank"


def resolve_twist(kind: str, m: int) -> str:
    """``"auto"`` -> ``"tweedie"`` for ``m <= AUTO_DENSE`` measurement dimensions, else ``"lowrank"``."""
    if kind == "auto":
        return "tweedie" if m <= AUTO_DENSE else "lowrank"
    return kind


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
    #: (P,) bool: the "lowrank" twist found the covariance's floor for this particle (was exact); else False
    found: torch.Tensor | None = None

    def rows_found(self) -> torch.Tensor:
        return self.found if self.found is not None else torch.zeros_like(self.kappa, dtype=torch.bool)


def concat(parts: list[TwistEval], index: torch.Tensor | None = None) -> TwistEval:
    """The evaluations of chunks of particles as one; ``index``: the rows each chunk's rows are (in order of
    ``parts``), None: consecutive chunks."""
    fields_ = [torch.cat([p.x0_hat for p in parts]), torch.cat([p.eps for p in parts]),
               torch.cat([p.log_twist for p in parts]), torch.cat([p.grad for p in parts]),
               torch.cat([p.kappa for p in parts]), torch.cat([p.rows_found() for p in parts])]
    if index is not None:
        order = torch.argsort(index.to(fields_[0].device))
        fields_ = [f[order.to(f.device)] for f in fields_]
    return TwistEval(*fields_)


def evaluate_twist(kind: str, den: Denoiser, problem: Problem, x_t: torch.Tensor, t: int, cond: Any,
                   chain: ChainMap | None = None, probes: int = 8) -> TwistEval:
    """Call the denoiser at ``x_t`` (with autograd) and evaluate the twist ``kind`` and its gradient.

    ``chain``: maps Tweedie variances (x units, float64) to the sampled chain's ``Var[x0 | x_t]``
    (``chain.ChainVariances``); applied to ``A Cov A^T`` through ``A A^T ~ mean(s^2) I``.  None: the
    continuous model's Tweedie covariance as it is.  ``probes``: the ``"lowrank"`` twist's (``lowrank_twist``)."""
    sch = den.schedule
    abar = sch.abar(t)
    k_t = (1.0 - abar) / math.sqrt(abar)
    kind = resolve_twist(kind, problem.y[0].numel())
    if kind == "forward":  # gradient-free: the model is only needed for the next transition
        with torch.no_grad():
            pred = den(x_t, t, cond)
        A, y, sigma2 = problem.operator, problem.y, problem.sigma_y**2
        v_t = (1.0 - abar) / abar
        kap = torch.full((x_t.shape[0],), v_t, dtype=torch.float64, device=x_t.device)
        kap_c = kap if chain is None else chain(kap)
        log_tw, v = range_iso(A, y - A.A(x_t / math.sqrt(abar)), kap_c, sigma2)
        return TwistEval(pred.x0.detach(), pred.eps.detach(), log_tw, (v / math.sqrt(abar)).detach(), kap)
    with torch.enable_grad():
        x_in = x_t.detach().requires_grad_(True)
        pred = den(x_in, t, cond)
        A, y, sigma2 = problem.operator, problem.y, problem.sigma_y**2
        r = (y - A.A(pred.x0)).detach()
        if kind == "tweedie":
            log_tw, grad, lam = _tweedie(pred.x0, x_in, A, r, sigma2, k_t, chain)
        elif kind == "lowrank":
            log_tw, grad, lam, found = lowrank_twist(pred.x0, x_in, A, r, sigma2, k_t, (1.0 - abar) / abar, chain,
                                                     probes)
            return TwistEval(pred.x0.detach(), pred.eps.detach(), log_tw, grad.detach(), lam.clamp(min=MIN_VAR), found)
        elif kind == "rayleigh":
            log_tw, grad, lam = _rayleigh(pred.x0, x_in, A, r, sigma2, k_t, (1.0 - abar) / abar, chain)
        elif kind == "scalar":
            rho2 = (1.0 - abar) / abar
            rho2_c = float(chain(torch.tensor(rho2, dtype=torch.float64))) if chain is not None else rho2
            log_tw, grad = _scalar(pred.x0, x_in, A, r, sigma2, rho2_c)
            lam = torch.full((r.shape[0],), rho2, dtype=torch.float64, device=r.device)
        else:
            raise ValueError(f"unknown twist {kind!r}; choose one of {', '.join(TWISTS)}")
    return TwistEval(pred.x0.detach(), pred.eps.detach(), log_tw, grad.detach(), lam.clamp(min=MIN_VAR))


def _rayleigh(x0_hat, x_in, A, r, sigma2: float, k_t: float, rho2: float, chain: ChainMap | None):
    """``Cov ~ kappa I`` in the range of A, ``kappa`` the Rayleigh quotient of the Tweedie covariance along
    ``u = A^T (rho2 A A^T + sigma_y^2 I)^-1 r`` (``rho2 = (1 - abar_t) / abar_t``: the direction of the scalar
    twist's gradient, which discounts directions that sigma_y drowns; ``A+ r`` instead would be dominated by
    A's smallest singular values).  One backward pass gives kappa and the gradient."""
    u = rayleigh_direction(A, r, sigma2, rho2)
    return rayleigh_from(vjp(x0_hat, x_in, u, retain=False), u, A, r, sigma2, k_t, rho2, chain)


def _scalar(x0_hat, x_in, A, r, sigma2: float, rho2: float):
    kap = torch.full((r.shape[0],), rho2, dtype=torch.float64, device=r.device)
    log_tw, v = range_iso(A, r, kap, sigma2)
    return log_tw, vjp(x0_hat, x_in, v, retain=False)


def _tweedie(x0_hat, x_in, A, r, sigma2: float, k_t: float, chain: ChainMap | None):
    m = r[0].numel()
    P = r.shape[0]
    eye = torch.eye(m, dtype=x0_hat.dtype, device=x0_hat.device).reshape(m, *A.out_shape)
    At_e = A.At(eye)  # row j: A^T e_j
    cols = vjps(x0_hat, x_in, At_e)  # J^T A^T e_j per particle, j = 1..m
    AJA = torch.stack([A.A(c).reshape(P, m) for c in cols], dim=-1).to(torch.float64)  # (P, m, m): A J^T A^T
    S = 0.5 * k_t * (AJA + AJA.transpose(1, 2))  # A Cov A^T, symmetrised
    # x units: Cov in the range of A in A's SVD coordinates, Sigma_rr = D^-1 U^T S U D^-1 (A A^T = U D^2 U^T)
    d2, U = torch.linalg.eigh(A.A(At_e).reshape(m, m).to(torch.float64))
    keep = d2 > 1e-12 * d2.max()
    U, dinv = U[:, keep], d2[keep].rsqrt()
    Srr = dinv[:, None] * (U.T @ S @ U) * dinv[None, :]
    r64 = r.reshape(P, m).to(torch.float64)
    pt = (r64 @ U) * dinv  # coordinates of A+ r
    kappa = (torch.einsum("pi,pij,pj->p", pt, Srr, pt) / (pt**2).sum(-1).clamp(min=1e-300)).clamp(min=0.0)
    om, Q = torch.linalg.eigh(0.5 * (Srr + Srr.transpose(1, 2)))
    om = om.clamp(min=0.0)
    if chain is not None:  # the chain's variance, per eigen-direction of Cov in the range
        om = chain(om)
    dQ = (U * d2[keep].sqrt()) @ Q  # (m, k) per particle: y-space directions
    C = dQ @ torch.diag_embed(om) @ dQ.transpose(1, 2) + sigma2 * torch.eye(m, dtype=torch.float64, device=S.device)
    lam, E = torch.linalg.eigh(0.5 * (C + C.transpose(1, 2)))
    lam = torch.maximum(lam, lam.amax(-1, keepdim=True) * 1e-12).clamp(min=MIN_VAR)
    rt = torch.einsum("pji,pj->pi", E, r64)  # E^T r
    log_tw = -0.5 * ((rt**2 / lam).sum(-1) + torch.log(lam).sum(-1) + m * LOG2PI)
    h = torch.einsum("pij,pj->pi", E, rt / lam)  # C^{-1} r
    g = sum(c * h[:, j].to(c.dtype).view(-1, *([1] * (c.ndim - 1))) for j, c in enumerate(cols))
    return log_tw, g, kappa

