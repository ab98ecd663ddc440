"""Exact posterior of a Gaussian-mixture prior given ``y = A x + sigma_y n`` (sigma_y = 0 allowed).

Per component (docs/method.md, "Gaussian-mixture closed forms"): ``G_i = sigma_y^2 I + A Sigma_i A^T`` (m x m), weights
``w_i' ∝ w_i N(y; A mu_i, G_i)``, conditional ``N(mu_i + Sigma_i A^T G_i^{-1} (y - A mu_i),
Sigma_i - Sigma_i A^T G_i^{-1} A Sigma_i)``.

Sampling uses Matheron's rule: ``x ~ N(mu_i, Sigma_i)``, ``e ~ N(0, sigma_y^2 I)``,
``x + Sigma_i A^T G_i^{-1} (y - A x - e)``: only ``G_i^{-1}`` applied to vectors is needed, so d = 12288
works.  How ``G_i^{-1}`` is applied:

* low-rank + isotropic priors (``LowRankCov`` without projector, incl. ``IsoCov``): in the eigenbasis
  of ``A A^T`` (``lambda_j``), ``G_i = diag(sigma_y^2 + s2_i lambda_j) + B_i B_i^T`` with
  ``B_i = A U_i``: Woodbury with an r x r capacitance.  When every singular value of A is equal
  (``A A^T = c I``, e.g. average pooling; checked from ``operator.singular_values()``) no eigenbasis is
  needed and nothing m x m is formed at all; otherwise ``A A^T`` (m x m) is formed once (m <= 4096).
* anything else (``FullCov``, ``DiagCov``, ...): dense ``G_i`` per component (small m and d).

``Posterior.mixture()`` returns the posterior itself as a ``MixtureBatch`` (its exact denoiser is the
"exact posterior score" sampler): structured (low rank + two-level isotropic in the null/range spaces
of A, cheap at any d) for low-rank priors with ``A A^T = c I``; full covariances for small d.
"""

from __future__ import annotations

import math

import torch

from ..operators import LinearOperator
from .covariance import CHUNK, Covariance, FullCov, chunks, randn
from .flat import apply_A, apply_At
from .lowrank import LowRankCov, ProjectedCov
from .mixture import GaussianMixture, MixtureBatch, draw_components
from .projector import NullProjector
from .terms import LOG2PI, Means

#: largest m for which A A^T is eigendecomposed, and largest d for dense posterior covariances
MAX_DENSE_M = 4096
MAX_DENSE_D = 4096


def _flat_y(operator: LinearOperator, y: torch.Tensor) -> torch.Tensor:
    out = tuple(operator.out_shape)
    if tuple(y.shape) == out:
        y = y.unsqueeze(0)
    if tuple(y.shape[1:]) != out and not (y.ndim == 2 and y.shape[1] == math.prod(out)):
        raise ValueError(f"y must have shape (B, {', '.join(map(str, out))}) or {out}, got {tuple(y.shape)}")
    return y.reshape(y.shape[0], -1)


def equal_singular_values(operator: LinearOperator, rtol: float = 1e-6) -> float | None:
    """``c`` with ``A A^T = c I`` if A has full row rank and all singular values equal, else None."""
    s = operator.singular_values().to(torch.float64)
    if s.numel() != math.prod(operator.out_shape) or s.numel() == 0:
        return None
    if float(s.max() - s.min()) > rtol * float(s.max()):
        return None
    return float((s**2).mean())


# ------------------------------------------------------------------------------------------------
# G^{-1} solvers
# ------------------------------------------------------------------------------------------------
class _LowRankSolver:
    """``G_i = sigma_y^2 I + s2_i A A^T + B_i B_i^T`` by Woodbury in the eigenbasis of A A^T."""

    def __init__(self, cov: LowRankCov, mu: torch.Tensor, op: LinearOperator, sigma_y: float):
        self.cov, self.op, self.sigma_y = cov, op, sigma_y
        K, r, d = cov.Ut.shape
        m = math.prod(op.out_shape)
        self.c = equal_singular_values(op)
        if self.c is None:
            if m > MAX_DENSE_M:
                raise ValueError(
                    f"operator {op!r} has unequal singular values and m = {m} > {MAX_DENSE_M}: the exact "
                    "posterior needs A A^T's eigenbasis; use an operator with A A^T = c I (AvgPool) or smaller images"
                )
            eye = torch.eye(m, dtype=torch.float64, device=cov.device)
            AAt = apply_A(op, apply_At(op, eye))
            lam, E = torch.linalg.eigh(0.5 * (AAt + AAt.T))
            self.lam, self.E = lam.clamp(min=0), E.to(cov.dtype)
        else:
            self.lam, self.E = torch.full((1,), self.c, dtype=torch.float64, device=cov.device), None
        self.D = (sigma_y**2 + cov.s2.to(torch.float64)[:, None] * self.lam[None, :])  # (K, m or 1)
        if bool((self.D <= 0).any()):
            raise ValueError(
                "G = sigma_y^2 I + A Sigma A^T is singular: a noiseless posterior (sigma_y = 0) needs an operator "
                "of full row rank and components with s2 > 0"
            )
        self.Bt = self._rot(apply_A(op, cov.Ut.reshape(K * r, d))).reshape(K, r, m) if r else None  # (K, r, m)
        self.Amu = self._rot(apply_A(op, mu))  # (K, m)
        self.Dc = self.D.to(cov.dtype)
        if self.Bt is not None:  # r > 0
            BD = self.Bt / self.Dc[:, None, :]
            cap = torch.eye(r, dtype=cov.dtype, device=cov.device) + BD @ self.Bt.transpose(1, 2)
            self.cap_L = torch.linalg.cholesky(cap)

    def _rot(self, v: torch.Tensor) -> torch.Tensor:
        return v if self.E is None else v @ self.E

    def _unrot(self, v: torch.Tensor) -> torch.Tensor:
        return v if self.E is None else v @ self.E.T

    def loglik(self, y: torch.Tensor) -> torch.Tensor:
        """``log N(y_b; A mu_i, G_i)`` ``(B, K)``, in float64."""
        f = lambda t: t.to(torch.float64)  # noqa: E731
        yt, Amu, D = f(self._rot(y)), f(self.Amu), self.D
        m = y.shape[1]
        iD = 1.0 / D.expand(-1, m) if D.shape[1] == 1 else 1.0 / D
        quad = (yt**2) @ iD.T - 2 * yt @ (Amu * iD).T + (Amu**2 * iD).sum(-1)
        logdet = torch.log(D).sum(-1) if D.shape[1] > 1 else m * torch.log(D[:, 0])
        if self.Bt is not None:
            BD = f(self.Bt) * iD[:, None, :]  # (K, r, m)
            e = torch.einsum("bm,krm->bkr", yt, BD) - torch.einsum("km,krm->kr", Amu, BD)
            L = f(self.cap_L)
            h = torch.cholesky_solve(e.unsqueeze(-1), L.expand(e.shape[0], *L.shape)).squeeze(-1)
            quad = quad - (e * h).sum(-1)
            logdet = logdet + 2 * torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)
        return -0.5 * (quad + logdet + m * LOG2PI)

    def solve(self, v: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """``G_{idx_n}^{-1} v_n`` for ``v`` ``(n, m)``."""
        vt = self._rot(v)
        out = torch.empty_like(vt)
        for s in chunks(vt.shape[0], 4 * CHUNK):
            i = idx[s]
            z = vt[s] / self.Dc[i]
            if self.Bt is not None:
                Bi = self.Bt[i]  # (n, r, m)
                e = torch.einsum("nrm,nm->nr", Bi, z)
                k = torch.cholesky_solve(e.unsqueeze(-1), self.cap_L[i]).squeeze(-1)
                z = z - torch.einsum("nrm,nr->nm", Bi, k) / self.Dc[i]
            out[s] = z
        return self._unrot(out)


class _DenseSolver:
    """Dense ``G_i`` (K, m, m) from dense covariances; small d and m."""

    def __init__(self, cov: Covariance, mu: torch.Tensor, op: LinearOperator, sigma_y: float):
        d, m = cov.d, math.prod(op.out_shape)
        if d > MAX_DENSE_D or m > MAX_DENSE_M:
            raise ValueError(
                f"exact posterior for {type(cov).__name__} with d = {d}, m = {m} needs dense d x m matrices; "
                "use a low-rank + isotropic prior (LowRankIsoCov/IsoCov) for large images"
            )
        eye = torch.eye(m, dtype=cov.dtype, device=cov.device)
        self.Ad = apply_At(op, eye)  # (m, d): row j is A^T e_j, i.e. A itself
        self.Sd = cov.dense()
        self.SAt = self.Sd @ self.Ad.T  # (K, d, m) = Sigma_i A^T
        G = self.Ad @ self.SAt + sigma_y**2 * eye
        self.G = 0.5 * (G + G.transpose(1, 2))
        L, info = torch.linalg.cholesky_ex(self.G)
        if bool((info != 0).any()):
            raise ValueError("G = sigma_y^2 I + A Sigma A^T is singular: use sigma_y > 0 or a full-row-rank operator")
        self.L = L
        self.Amu = mu @ self.Ad.T  # (K, m)

    def loglik(self, y: torch.Tensor) -> torch.Tensor:
        v = (y.unsqueeze(1) - self.Amu.unsqueeze(0)).to(torch.float64)  # (B, K, m)
        L = self.L.to(torch.float64)
        z = torch.linalg.solve_triangular(L, v.unsqueeze(-1), upper=False).squeeze(-1)
        logdet = 2 * torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)
        return -0.5 * ((z**2).sum(-1) + logdet + y.shape[1] * LOG2PI)

    def solve(self, v: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        out = torch.empty_like(v)
        for s in chunks(v.shape[0], 4 * CHUNK):
            out[s] = torch.cholesky_solve(v[s].unsqueeze(-1), self.L[idx[s]]).squeeze(-1)
        return out


# ------------------------------------------------------------------------------------------------
# the posterior
# ------------------------------------------------------------------------------------------------
class Posterior:
    """The exact posterior ``p(x | y)`` of ``prior`` for each row of ``y`` (batch ``B``).

    Attributes: ``prior`` (after tag selection), ``operator``, ``y`` ``(B, m)`` flat, ``sigma_y``,
    ``log_weights`` ``(B, K)`` (posterior component weights, normalised per row).
    """

    def __init__(self, prior: GaussianMixture, operator: LinearOperator, y: torch.Tensor, sigma_y: float = 0.0):
        if not math.isfinite(sigma_y) or sigma_y < 0:
            raise ValueError(f"sigma_y must be a finite number >= 0, got {sigma_y}")
        if tuple(operator.in_shape) != tuple(prior.event_shape) and math.prod(operator.in_shape) != prior.d:
            raise ValueError(f"operator acts on {operator.in_shape}, prior has event shape {prior.event_shape}")
        self.prior, self.operator, self.sigma_y = prior, operator, float(sigma_y)
        self.y = _flat_y(operator, y).to(dtype=prior.dtype, device=prior.device)
        cov = prior.cov
        self._solver: _LowRankSolver | _DenseSolver
        if isinstance(cov, LowRankCov) and cov.projector is None:
            self._solver = _LowRankSolver(cov, prior.mu, operator, self.sigma_y)
        else:
            self._solver = _DenseSolver(cov, prior.mu, operator, self.sigma_y)
        lw = prior.log_weights.to(torch.float64)[None] + self._solver.loglik(self.y)
        #: ``log p(y_b) = logsumexp_i [log w_i + log N(y_b; A mu_i, A Sigma_i A^T + sigma_y^2 I)]`` (B,) float64:
        #: the evidence of each row of y under the prior (after tag selection: weights renormalised within
        #: the prompt, i.e. ``log p(y | prompt)``); a density on R^m, also for sigma_y = 0
        self.log_evidence = torch.logsumexp(lw, -1)
        self.log_weights = (lw - self.log_evidence.unsqueeze(-1)).to(prior.dtype)

    @property
    def batch(self) -> int:
        return self.y.shape[0]

    @property
    def weights(self) -> torch.Tensor:
        return self.log_weights.exp()

    def sample(self, n: int | None = None, generator: torch.Generator | None = None,
               return_components: bool = False):
        """Matheron's rule.  ``B = 1``: ``n`` draws ``(n, *event_shape)``; ``B > 1``: one per row of y."""
        prior, op, B = self.prior, self.operator, self.batch
        n, kidx = draw_components(self.log_weights, B, n, generator, prior.device,
                                  "{B} measurements give one draw each")
        bidx = torch.arange(n, device=prior.device) if B > 1 else torch.zeros(n, dtype=torch.long, device=prior.device)
        x = prior.mu[kidx] + prior.cov.sample(kidx, generator)  # x ~ N(mu_i, Sigma_i)
        e = self.sigma_y * randn((n, self.y.shape[1]), generator, x)  # e ~ N(0, sigma_y^2 I)
        v = self.y[bidx] - apply_A(op, x) - e
        x = x + prior.cov.matvec_idx(apply_At(op, self._solver.solve(v, kidx)), kidx)  # + Sigma A^T G^{-1} v
        x = x.reshape(n, *prior.event_shape)
        return (x, kidx) if return_components else x

    def mixture(self) -> MixtureBatch:
        """The posterior as a ``MixtureBatch`` (one mixture per row of y; built once), e.g. as the
        ``cond`` of a ``MixtureDenoiser``: the exact-posterior-score sampler."""
        if getattr(self, "_mixture", None) is None:
            cov = self.prior.cov
            if isinstance(self._solver, _LowRankSolver) and self._solver.c is not None:
                self._mixture = self._structured()
            elif self.prior.d > MAX_DENSE_D:
                raise ValueError(
                    f"the posterior of a {type(cov).__name__} prior at d = {self.prior.d} has no structured form "
                    "here: needs a low-rank + isotropic prior and an operator with A A^T = c I (AvgPool)"
                )
            else:
                self._mixture = self._dense()
        return self._mixture

    def dense_mixture(self, item: int = 0) -> GaussianMixture:
        """Row ``item``'s posterior as a ``GaussianMixture`` with full covariances (small d)."""
        if self.prior.d > MAX_DENSE_D:
            raise ValueError(f"dense posterior covariances need d <= {MAX_DENSE_D}, got {self.prior.d}")
        return self._dense().item(item)

    def mean(self) -> torch.Tensor:
        """Posterior means ``(B, *event_shape)`` (the MMSE estimates)."""
        return self.mixture().mean().reshape(self.batch, *self.prior.event_shape)

    # -- constructions ----------------------------------------------------------------------------
    def _dense(self) -> MixtureBatch:
        prior, y, s = self.prior, self.y, self._solver
        if isinstance(s, _DenseSolver):
            Sd, SAt = s.Sd, s.SAt
        else:  # low-rank prior with a general operator: build the dense pieces
            s = _DenseSolver(prior.cov, prior.mu, self.operator, self.sigma_y)
            Sd, SAt = s.Sd, s.SAt
        GinvAS = torch.cholesky_solve(SAt.transpose(1, 2), s.L)  # (K, m, d) = G^{-1} A Sigma
        S = Sd - SAt @ GinvAS
        mu = prior.mu - torch.einsum("kdm,km->kd", SAt, torch.cholesky_solve(s.Amu.unsqueeze(-1), s.L).squeeze(-1))
        Gy = torch.cholesky_solve(y.T.unsqueeze(0).expand(prior.K, -1, -1), s.L)  # (K, m, B)
        offset = (SAt @ Gy).permute(2, 0, 1)  # (B, K, d)
        return MixtureBatch(self.log_weights, Means(mu=mu, offset=offset), FullCov(S), prior.tags, prior.event_shape)

    def _structured(self) -> MixtureBatch:
        """Low-rank + iso prior, ``A A^T = c I``: ``S_i = s N + rho R + W W^T`` with ``R = A^T A / c``,
        ``rho = s sigma^2 / g``, ``g = sigma^2 + s c``, ``W = (s N U + rho R U) L``,
        ``L L^T = (s^2 I + (s - rho) U^T R U)^{-1}``; means ``mu'_i + (s/g) A^T y_b + W_i coef_bi`` with
        ``mu' = mu - Sigma A^T G^{-1} A mu`` and ``coef = (s/g) L^T (A U)^T y``."""
        prior, op, sol = self.prior, self.operator, self._solver
        cov = prior.cov
        # only called by mixture() when the solver is a _LowRankSolver (built for a LowRankCov) with c set
        assert isinstance(sol, _LowRankSolver) and isinstance(cov, LowRankCov) and sol.c is not None
        K, r, d = cov.Ut.shape
        c, sig2, s = sol.c, self.sigma_y**2, cov.s2
        g = sig2 + s * c
        rho = s * sig2 / g
        beta = s / g
        ar = torch.arange(K, device=prior.device)
        mu_p = prior.mu + cov.matvec_idx(apply_At(op, sol.solve(-sol.Amu, ar)), ar)
        base = apply_At(op, self.y)  # (B, d)
        if r:
            Bt = sol.Bt  # (K, r, m)
            assert Bt is not None  # set whenever r > 0
            RUt = apply_At(op, Bt.reshape(K * r, -1)).reshape(K, r, d) / c
            Xt = s[:, None, None] * (cov.Ut - RUt) + rho[:, None, None] * RUt
            URU = Bt @ Bt.transpose(1, 2) / c
            Mmat = s[:, None, None] ** 2 * torch.eye(r, dtype=s.dtype, device=s.device) + (s - rho)[:, None, None] * URU
            C = torch.linalg.cholesky(Mmat)
            eye = torch.eye(r, dtype=s.dtype, device=s.device).expand(K, r, r)
            L = torch.linalg.solve_triangular(C, eye, upper=False).transpose(1, 2)  # C^{-T}: L L^T = M^{-1}
            Wt = torch.einsum("krs,krd->ksd", L, Xt)
            coef = beta[None, :, None] * torch.einsum("krs,bkr->bks", L, torch.einsum("krm,bm->bkr", Bt, self.y))
        else:
            Wt, coef = cov.Ut, None
        post_cov = ProjectedCov.from_factors(Wt, s, NullProjector(op), rho)
        means = Means(mu=mu_p, base=base, beta=beta, coef=coef)
        return MixtureBatch(self.log_weights, means, post_cov, prior.tags, prior.event_shape)


def log_evidence(prior: GaussianMixture, operator: LinearOperator, y: torch.Tensor, sigma_y: float = 0.0,
                 tags=None) -> torch.Tensor:
    """Exact ``log p(y | tags)`` per row of y, ``(B,)`` float64: ``logsumexp_i [log w_i + log N(y; A mu_i,
    A Sigma_i A^T + sigma_y^2 I)]`` over the components carrying ``tags`` (weights renormalised among
    them).  Every covariance family; ``P(prompt_j | y) ∝ pi_j exp(log_evidence_j)``."""
    return posterior(prior, operator, y, sigma_y, tags=tags).log_evidence


def posterior(prior: GaussianMixture, operator: LinearOperator, y: torch.Tensor, sigma_y: float = 0.0,
              tags=None) -> Posterior:
    """The exact posterior of ``prior`` (restricted to components carrying ``tags``, if given) given
    ``y = A x + sigma_y n``; ``y`` is ``(B, *operator.out_shape)`` (one posterior per row) or one
    measurement.  ``sigma_y`` in the prior's units ([-1, 1] image units for image worlds)."""
    if tags is not None:
        prior = prior.select(tags)
    return Posterior(prior, operator, y, sigma_y)
