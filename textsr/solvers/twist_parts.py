"""The parts every twist (``twist.py``, ``lowrank_twist.py``) is built from: vector-Jacobian products of the
denoiser (batched), the Gaussian ``log N(r; 0, kappa A A^T + sigma_y^2 I)`` in A's SVD basis, and the Rayleigh
quotient of Tweedie's covariance along one direction.  See ``twist.py`` for the formulas."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

ChainMap = Callable[[torch.Tensor], torch.Tensor]


LOG2PI = math.log(2 * math.pi)


MIN_VAR = 1e-12  # floor of the twist's variances (float64), only against division by zero


def sum_squares(v: torch.Tensor) -> torch.Tensor:
    return v.flatten(1).to(torch.float64).pow(2).sum(1)


def dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.flatten(1).to(torch.float64) * b.flatten(1).to(torch.float64)).sum(1)


def vjp(x0_hat: torch.Tensor, x_in: torch.Tensor, v: torch.Tensor, retain: bool) -> torch.Tensor:
    """``J^T v`` per particle (``J = d x0_hat / d x_t``); zeros if x0_hat does not depend on x_t."""
    (g,) = torch.autograd.grad(x0_hat, x_in, grad_outputs=v.to(x0_hat.dtype), retain_graph=retain, allow_unused=True)
    return torch.zeros_like(x_in) if g is None else g


VJP_CHUNK = 32  # vector-Jacobian products per batched backward pass (memory: chunk x particles x image)


def vjps(x0_hat: torch.Tensor, x_in: torch.Tensor, rows: torch.Tensor) -> list[torch.Tensor]:
    """``J^T v_j`` per particle for every row ``v_j`` of ``rows``: ``(m, *in_shape)`` (shared by all particles)
    or ``(m, P, *in_shape)`` (one vector per particle);
    vmapped backward passes in chunks of ``VJP_CHUNK`` (``is_grads_batched``; halved while they run out of
    memory), one pass per row where the model's ops have no batching rule.  The graph of x0_hat is kept
    (a failed chunk is retried) and goes with x0_hat."""
    m = rows.shape[0]
    out: list[torch.Tensor] = []
    j, chunk = 0, VJP_CHUNK
    batched = True
    while j < m:
        n = min(chunk, m - j) if batched else 1
        v = rows[j:j + n]
        v = (v if v.ndim == x0_hat.ndim + 1 else v.unsqueeze(1).expand(n, *x0_hat.shape)).to(x0_hat.dtype)
        if batched:
            try:
                (g,) = torch.autograd.grad(x0_hat, x_in, grad_outputs=v, retain_graph=True,
                                           is_grads_batched=True, allow_unused=True)
            except torch.OutOfMemoryError:  # n backward passes at once do not fit: fewer at a time
                chunk = max(1, n // 2)
                batched = chunk > 1
                continue
            except RuntimeError:  # an op without a vmap rule: one backward pass per row
                batched = False
                continue
            out.extend(g.unbind(0) if g is not None else [torch.zeros_like(x_in)] * n)
        else:
            out.append(vjp(x0_hat, x_in, v[0], retain=True))
        j += n
    return out


def mean_s2(A) -> float:
    """Mean squared kept singular value of A (``A A^T ~ mean_s2 I`` where one number must stand for all)."""
    s = A.singular_values().to(torch.float64)
    return float((s**2).mean()) if s.numel() else 1.0


def range_iso(A, r: torch.Tensor, kappa: torch.Tensor, sigma2: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``log N(r; 0, C)`` and ``A^T C^{-1} r`` for ``C = kappa A A^T + sigma_y^2 I`` (Cov ~ kappa I in the range of
    A), per particle, in A's SVD basis (``spectral_batched``); directions outside the kept range have
    ``C = sigma_y^2`` (ignored when sigma_y = 0).  An operator without per-item spectral functions gets
    ``C = (kappa mean(s^2) + sigma_y^2) I``."""
    m = r[0].numel()
    s = A.singular_values().to(device=r.device, dtype=torch.float64)  # operators keep their SVD on the CPU
    rank = s.numel()
    kap = kappa.to(device=r.device, dtype=torch.float64).clamp(min=MIN_VAR)
    p = A.A_pinv(r)  # A+ r = V S^-1 U^T r
    try:
        v = A.spectral_batched(p, lambda sv: sv**2 / (kap.view(-1, *([1] * sv.ndim)) * sv**2 + sigma2))
    except NotImplementedError:
        var = kap * mean_s2(A) + sigma2
        v = A.At(r) / var.to(r.dtype).view(-1, *([1] * (r.ndim - 1)))
        return -0.5 * (sum_squares(r) / var + m * torch.log(var) + m * LOG2PI), v
    quad = dot(p, v)
    logdet = torch.log((kap.unsqueeze(-1) * s**2 + sigma2).clamp(min=MIN_VAR)).sum(-1)
    if sigma2 > 0 and rank < m:  # measurement directions outside the kept range
        quad = quad + sum_squares(r - A.A(p)) / sigma2
        logdet = logdet + (m - rank) * math.log(sigma2)
    dims = m if sigma2 > 0 else rank
    return -0.5 * (quad + logdet + dims * LOG2PI), v


def rayleigh_direction(A, r: torch.Tensor, sigma2: float, rho2: float) -> torch.Tensor:
    """``u = A^T (rho2 A A^T + sigma_y^2 I)^-1 r`` up to a scale per singular value: the Rayleigh twist's direction."""
    return A.spectral(A.A_pinv(r), lambda s: s**2 / (s**2 + sigma2 / rho2)) if sigma2 > 0 else A.A_pinv(r)


def rayleigh_from(w: torch.Tensor, u: torch.Tensor, A, r, sigma2: float, k_t: float, rho2: float,
                  chain: ChainMap | None):
    """The Rayleigh twist from ``w = J^T u`` (``_rayleigh``): ``(log p~, grad, kappa)``."""
    kappa = (k_t * dot(w, u) / sum_squares(u).clamp(min=1e-300)).clamp(min=0.0)  # u^T Cov u / |u|^2
    kap = kappa if chain is None else chain(kappa)
    log_tw, _ = range_iso(A, r, kap, sigma2)
    # g = J^T A^T C^{-1} r, C = kap A A^T + sigma^2: A^T C^{-1} r = u (rho2 s^2 + sigma^2) / (rho2 (kap s^2 + sigma^2))
    # per singular value s, taken at s^2 = mean(s^2) (exact when A's singular values are equal; the gradient
    # only steers the proposal)
    s2 = mean_s2(A)
    factor = (rho2 * s2 + sigma2) / (rho2 * (kap.clamp(min=MIN_VAR) * s2 + sigma2))
    return log_tw, w * factor.to(w.dtype).view(-1, *([1] * (w.ndim - 1))), kappa
