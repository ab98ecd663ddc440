"""The ``"lowrank"`` twist: Tweedie's covariance as an isotropic floor plus the few directions where it exceeds
it, measured by a handful of vector-Jacobian products (docs/evidence.md, "The low-rank twist").

``Cov[x0 | x_t] = k_t J`` (``J = d x0_hat / d x_t``, symmetric for an exact denoiser).  A mixture prior's
covariance is ``a I`` (the noise every component shares) plus an excess of low rank once x_t has narrowed
the components down (the spread between the few left and their own low-rank parts).  With k fixed probes
``V = A^T [w_1 .. w_k]`` (``w_j`` standard Gaussian in y space, the same at every level) and ``J^T V``
(k backward passes, batched with the Rayleigh twist's one along ``u``):

1. in an orthonormal basis ``B`` of span(V), ``T = B Cov B^T``; ``a`` = its smallest eigenvalue (the smallest
   Rayleigh quotient in the probed subspace);
2. the excess ``Cov - a I`` by Nystrom on the probes: ``E = Z (T - a I)^+ Z^T`` with ``Z = (Cov - a I) B``
   (positive semi-definite);
3. ``Cov ~ a I + E`` in the range of ``A^T``: ``a + sigma_i^2`` along the directions of ``E`` there, ``a``
   elsewhere, each mapped to the sampled chain's variance (``chain.ChainVariances``);
4. ``C = kappa(a) A A^T + sigma_y^2 I + F F^T``, ``F = A Q diag(kappa(a + sigma_i^2) - kappa(a))^1/2``:
   ``log N(r; 0, C)`` by Woodbury and the matrix determinant lemma around the diagonal part (A's SVD);
5. the gradient ``J^T A^T C^-1 r = (a I + E) A^T C^-1 r / k_t`` (no further backward pass).

This is exact when the excess has rank <= k - 2 (then the random probed subspace holds at least two
directions at the floor: the two smallest eigenvalues of T agree, which is checked).  Where they do not (a
covariance of high rank, e.g. many components early in the chain), the particle gets the Rayleigh twist
(``twist.py's ``"rayleigh"````) from the same backward pass along ``u``, whose one variance is then the better summary.
Cost per level: k + 1 backward passes (Rayleigh: 1; the dense ``"tweedie"`` twist: m) and O(P k^2 d)
arithmetic.  The log-determinant and the quadratic form come from the same positive definite matrix, so any
run gives correct weights; the twist only moves their variance.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from .twist_parts import MIN_VAR, ChainMap, mean_s2, range_iso, rayleigh_direction, rayleigh_from, vjps

PROBES = 8  # k: fixed y-space probes (plus each particle's residual direction)
FLOOR_TOL = 1.0 + 1e-2  # the probes found the floor when their two smallest eigenvalues agree this closely
PROBE_SEED = 20_231_211


@lru_cache(maxsize=16)
def _probe_vectors(k: int, out_shape: tuple[int, ...]) -> torch.Tensor:
    """``k`` fixed standard Gaussian vectors in y space (float64, CPU), the same at every level and run."""
    g = torch.Generator().manual_seed(PROBE_SEED)
    return torch.randn((k, *out_shape), generator=g, dtype=torch.float64)


def _rows(t: torch.Tensor) -> torch.Tensor:
    """``(q, P, *shape)`` -> ``(P, q, d)`` float64."""
    return t.flatten(2).transpose(0, 1).to(torch.float64)


def _sym(M: torch.Tensor) -> torch.Tensor:
    return 0.5 * (M + M.transpose(-1, -2))


def _inv_sqrt(G: torch.Tensor) -> torch.Tensor:
    """``G^{-1/2}`` of symmetric positive definite ``(P, q, q)`` (eigenvalues floored at 1e-12 of the largest)."""
    lam, E = torch.linalg.eigh(G)
    lam = torch.maximum(lam, lam[..., -1:] * 1e-12).clamp(min=1e-300)
    return E @ torch.diag_embed(lam.rsqrt()) @ E.transpose(-1, -2)


def _range_rows(A, X: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """``A+ A`` applied to every row of ``X`` ``(P, n, d)``."""
    P, n = X.shape[:2]
    out = A.project_range(X.reshape(P * n, *shape).to(dtype))
    return out.reshape(P, n, -1).to(torch.float64)


def lowrank_twist(x0_hat, x_in, A, r, sigma2: float, k_t: float, rho2: float, chain: ChainMap | None,
                  probes: int = PROBES):
    """``(log p~_t(y | x_t), grad, kappa, found)`` per particle for the low-rank twist (module docstring);
    ``found``: whether the probes found the floor (the twist is then the model above, else Rayleigh's)."""
    P, shape = r.shape[0], tuple(x_in.shape[1:])
    k = max(1, min(probes, r[0].numel()))  # at most the dimension of the range of A^T
    u = rayleigh_direction(A, r, sigma2, rho2)
    shared = A.At(_probe_vectors(k, tuple(A.out_shape)).to(device=r.device, dtype=r.dtype))  # (k, *shape)
    rows = torch.cat([u.unsqueeze(0), shared.unsqueeze(1).expand(k, *u.shape)])  # (k + 1, P, *shape)
    Cu, CV = (k_t * t for t in _rows(torch.stack(vjps(x0_hat, x_in, rows))).split([1, k], dim=1))  # Cov v
    V = _rows(shared.unsqueeze(1).expand(k, *u.shape))
    # 1. an orthonormal basis B of the probes and Cov in it: T = B Cov B^T, floor a = its smallest eigenvalue
    Gi = _inv_sqrt(V @ V.transpose(1, 2))
    B, CB = Gi @ V, Gi @ CV
    mu, Q = torch.linalg.eigh(_sym(B @ CB.transpose(1, 2)))
    a = mu[:, 0].clamp(min=0.0)
    # 2. the excess over a I (Nystrom on the probes): E = L^T L, rows L_i = (mu_i - a)^-1/2 (Q^T (Cov - a) B)_i
    gap = (mu - a.unsqueeze(-1)).clamp(min=0.0)
    scale = torch.where(gap > 1e-9 * mu[:, -1:].abs().clamp(min=1e-300), gap.clamp(min=1e-300).rsqrt(),
                        torch.zeros_like(gap))
    L = scale.unsqueeze(-1) * (Q.transpose(1, 2) @ (CB - a[:, None, None] * B))  # (P, k, d)
    # 3. in the range of A^T: Cov ~ a + sigma_i^2 along the eigen-directions of P_row E P_row, a elsewhere,
    #    each variance mapped to the sampled chain's
    Lr = _range_rows(A, L, shape, x_in.dtype)
    s2, R = torch.linalg.eigh(_sym(Lr @ Lr.transpose(1, 2)))
    s2 = s2.clamp(min=0.0)
    inv = torch.where(s2 > 1e-12 * s2[:, -1:].clamp(min=1e-300), s2.clamp(min=1e-300).rsqrt(), torch.zeros_like(s2))
    dirs = inv.unsqueeze(-1) * (R.transpose(1, 2) @ Lr)  # orthonormal rows (zero where E has no direction)
    a_c = a if chain is None else chain(a)
    top = a.unsqueeze(-1) + s2
    delta = ((top if chain is None else chain(top)) - a_c.unsqueeze(-1)).clamp(min=0.0) * (inv > 0)
    # 4. C = D + F F^T, D = a_c A A^T + sigma_y^2 I, F = A dirs diag(delta)^1/2: Woodbury and the determinant lemma
    log_iso, v = range_iso(A, r, a_c.clamp(min=MIN_VAR), sigma2)  # log N(r; 0, D), A^T D^-1 r
    F = delta.sqrt().unsqueeze(-1) * dirs
    kap = a_c.clamp(min=MIN_VAR).repeat_interleave(k)
    Fi = F.reshape(P * k, *shape).to(x_in.dtype)
    try:
        H = A.spectral_batched(Fi, lambda sv: sv**2 / (kap.view(-1, *([1] * sv.ndim)) * sv**2 + sigma2))
    except NotImplementedError:
        var = (kap * mean_s2(A) + sigma2).to(Fi.dtype).view(-1, *([1] * len(shape)))
        H = A.At(A.A(Fi)) / var
    H = H.reshape(P, k, -1).to(torch.float64)  # rows: A^T D^-1 A f_i
    vf = v.flatten(1).to(torch.float64)
    s = (F @ vf.unsqueeze(-1)).squeeze(-1)  # f_i . A^T D^-1 r
    Kc = torch.linalg.cholesky(_sym(torch.eye(k, dtype=torch.float64, device=F.device) + F @ H.transpose(1, 2)))
    Ks = torch.cholesky_solve(s.unsqueeze(-1), Kc).squeeze(-1)
    log_tw = log_iso - 0.5 * (2 * torch.log(torch.diagonal(Kc, dim1=1, dim2=2)).sum(-1) - (s * Ks).sum(-1))
    # 5. the gradient J^T A^T C^-1 r = Cov h / k_t with the model's Cov = a I + E (C held fixed; J symmetric)
    h = vf - (Ks.unsqueeze(-1) * H).sum(1)
    grad = (a.unsqueeze(-1) * h + ((L @ h.unsqueeze(-1)) * L).sum(1)) / k_t
    # where the probes found no floor (their two smallest eigenvalues differ: the excess has rank >= k - 1, more
    # than they can hold), the Rayleigh twist from the backward pass along u
    ray_log, ray_grad, kappa = rayleigh_from((Cu[:, 0] / k_t).reshape(P, *shape).to(x_in.dtype), u, A, r, sigma2,
                                             k_t, rho2, chain)
    found = mu[:, 1] <= FLOOR_TOL * mu[:, 0].clamp(min=0.0) if k > 1 else torch.zeros_like(a, dtype=torch.bool)
    grad = torch.where(found.unsqueeze(-1), grad, ray_grad.flatten(1).to(torch.float64))
    return torch.where(found, log_tw, ray_log), grad.reshape(P, *shape).to(x0_hat.dtype), kappa, found
