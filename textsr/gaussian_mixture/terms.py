"""The numerical core: per-component log-densities of ``x_t`` and the score, for any covariance family.

Under VP diffusion component i of a mixture becomes ``N(sqrt(abar) m_i, C_i)``, ``C_i = abar Sigma_i +
(1 - abar) I``.  ``Terms`` gives ``log N(x_b; sqrt(abar) m_bi, C_i)`` (B, K) and, for responsibilities
``gamma``, the score ``sum_i gamma_bi C_i^{-1} (sqrt(abar) m_bi - x_b)``.

Means are structured (``Means``) so that one object serves a plain mixture (``m_i = mu_i``), an exact
posterior and a cascade's stage-II conditional, where every batch item b has its own means
``m_bi = mu_i + beta_i base_b + U_i c_bi`` (``U_i`` the covariance's low-rank factor).

Two paths:

* dense (``FullCov``, ``DiagCov``, or means with dense offsets): residuals ``(B, K, d)`` and
  ``cov.solve``; fine for small d.
* Gram (``LowRankCov``): every quadratic form is expanded into inner products of ``x_b``, ``base_b``,
  ``mu_i`` and the columns of ``U_i`` (split into the projector's null/range parts), so nothing of size
  ``B x K x d`` (or ``d x d``) is formed; Woodbury handles the low-rank part.  Precision note: the
  expansion ``|x|^2 - 2 <x, m> + |m|^2`` loses about ``|x|^2 / |x - m|^2`` in relative precision;
  float64 is exact to ~1e-12, float32 to ~1e-3 in log-densities at d = 12288 (responsibilities are
  then decided by margins far larger than that).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .covariance import CHUNK, Covariance, DiagCov, chunks
from .lowrank import LowRankCov

LOG2PI = math.log(2 * math.pi)


@dataclass(frozen=True)
class Means:
    """``m_bi = mu_i + beta_i base_b + U_i coef_bi + offset_bi`` (every optional term may be None).

    mu: ``(K, d)``; base: ``(Bm, d)``; beta: ``(K,)`` (1 when None); coef: ``(Bm, K, r)`` on the
    covariance's *undiffused* factor ``U`` (LowRankCov only); offset: ``(Bm, K, d)`` (dense path only).
    ``Bm`` is 1 (shared by a batch) or the batch size.
    """

    mu: torch.Tensor
    base: torch.Tensor | None = None
    beta: torch.Tensor | None = None
    coef: torch.Tensor | None = None
    offset: torch.Tensor | None = None

    @property
    def batch(self) -> int:
        for t in (self.base, self.coef, self.offset):
            if t is not None:
                return t.shape[0]
        return 1

    @property
    def per_item(self) -> bool:
        return any(t is not None for t in (self.base, self.coef, self.offset))

    def beta_or_ones(self) -> torch.Tensor:
        return self.beta if self.beta is not None else torch.ones_like(self.mu[:, 0])

    def index(self, idx: torch.Tensor) -> Means:
        """Components ``idx``."""
        return Means(
            mu=self.mu[idx], base=self.base,
            beta=None if self.beta is None else self.beta[idx],
            coef=None if self.coef is None else self.coef[:, idx],
            offset=None if self.offset is None else self.offset[:, idx],
        )

    def repeat_interleave(self, n: int) -> Means:
        """Every per-item row repeated n times (batch ``Bm -> Bm n``; shared means are unchanged)."""
        rep = lambda t: None if t is None else t.repeat_interleave(n, 0)  # noqa: E731
        if not self.per_item:
            return self
        return Means(mu=self.mu, base=rep(self.base), beta=self.beta, coef=rep(self.coef), offset=rep(self.offset))

    def batch_slice(self, sl: slice) -> Means:
        """The means of batch items ``sl`` (shared means are unchanged)."""
        cut = lambda t: t if t is None or t.shape[0] == 1 else t[sl]  # noqa: E731
        if not self.per_item:
            return self
        return Means(mu=self.mu, base=cut(self.base), beta=self.beta, coef=cut(self.coef), offset=cut(self.offset))

    def item(self, b: int) -> Means:
        """The means of batch item b (batch 1)."""
        sl = slice(b, b + 1) if self.batch > 1 else slice(0, 1)
        return Means(
            mu=self.mu, beta=self.beta,
            base=None if self.base is None else self.base[sl],
            coef=None if self.coef is None else self.coef[sl],
            offset=None if self.offset is None else self.offset[sl],
        )

    def dense(self, cov: Covariance, b: int | None = None) -> torch.Tensor:
        """``(Bm, K, d)`` (or ``(K, d)`` for item b) materialised means."""
        src = self if b is None else self.item(b)
        m = src.mu.unsqueeze(0)
        if src.base is not None:
            m = m + src.beta_or_ones()[None, :, None] * src.base[:, None, :]
        if src.coef is not None:
            m = m + torch.einsum("bkr,krd->bkd", src.coef, _factor(cov))
        if src.offset is not None:
            m = m + src.offset
        return m if b is None else m[0]

    def gather(self, cov: Covariance, bidx: torch.Tensor, kidx: torch.Tensor) -> torch.Tensor:
        """Means ``m_{bidx_n, kidx_n}`` as ``(n, d)`` (chunked, never ``(Bm, K, d)``)."""
        bidx = bidx if self.batch > 1 else torch.zeros_like(bidx)
        out = self.mu[kidx].clone()
        if self.base is not None:
            out += self.beta_or_ones()[kidx, None] * self.base[bidx]
        if self.offset is not None:
            out += self.offset[bidx, kidx]
        if self.coef is not None:
            Ut = _factor(cov)
            for s in chunks(kidx.numel(), 4 * CHUNK):
                out[s] += torch.einsum("nrd,nr->nd", Ut[kidx[s]], self.coef[bidx[s], kidx[s]])
        return out

    def weighted_sum(self, cov: Covariance, w: torch.Tensor) -> torch.Tensor:
        """``sum_i w_bi m_bi`` for weights ``(Bw, K)`` -> ``(max(Bw, Bm), d)``."""
        out = w @ self.mu
        if self.base is not None:
            out = out + (w * self.beta_or_ones()).sum(-1, keepdim=True) * self.base
        if self.offset is not None:
            out = out + torch.einsum("bk,bkd->bd", w, self.offset)
        if self.coef is not None:
            Ut = _factor(cov)
            wc = (w.unsqueeze(-1) * self.coef).flatten(1)
            out = out + wc @ Ut.flatten(0, 1)
        return out

    def to(self, device=None, dtype=None) -> Means:
        cv = lambda t: None if t is None else t.to(device=device, dtype=dtype)  # noqa: E731
        return Means(self.mu.to(device=device, dtype=dtype), cv(self.base), cv(self.beta), cv(self.coef),
                     cv(self.offset))


def _factor(cov: Covariance) -> torch.Tensor:
    if not isinstance(cov, LowRankCov):
        raise TypeError(f"means with low-rank coefficients need a LowRankCov, got {type(cov).__name__}")
    return cov.Ut


Combine = Callable[[torch.Tensor], torch.Tensor]


def component_terms(cov: Covariance, means: Means, x: torch.Tensor, abar: float,
                    cache: dict | None = None) -> tuple[torch.Tensor, Combine]:
    """``(log N(x_b; sqrt(abar) m_bi, C_i) (B, K), combine)`` with ``combine(gamma) =
    sum_i gamma_bi C_i^{-1} (sqrt(abar) m_bi - x_b)`` ``(B, d)``.  ``cache`` (a dict owned by the
    caller, one per (cov, means) pair) keeps the x-independent Gram matrices between calls."""
    if means.batch not in (1, x.shape[0]):
        raise ValueError(f"per-item means have batch {means.batch}, x has batch {x.shape[0]}")
    if isinstance(cov, LowRankCov) and means.offset is None:
        prep = None if cache is None else cache.get("gram")
        if prep is None:
            prep = _GramPrep(cov, means)
            if cache is not None:
                cache["gram"] = prep
        return prep.terms(x, abar)
    return _dense_terms(cov, means, x, abar)


def _diag_terms(cov, mu: torch.Tensor, x: torch.Tensor, abar: float) -> tuple[torch.Tensor, Combine]:
    """Diagonal covariances without a (B, K, d) tensor: the quadratic form and the score are matmuls,
    ``sum_j (x_j - a mu_kj)^2 / v_kj = x^2 . (1/v_k) - 2a x . (mu_k/v_k) + a^2 mu_k^2 . (1/v_k)``."""
    a = math.sqrt(abar)
    inv = 1.0 / cov.diffuse(abar).var  # (K, d)
    mu_inv = mu * inv
    quad = (x * x) @ inv.T - 2 * a * (x @ mu_inv.T) + abar * (mu * mu_inv).sum(-1)
    logn = -0.5 * (quad - torch.log(inv).sum(-1) + cov.d * LOG2PI)

    def combine(g: torch.Tensor) -> torch.Tensor:  # sum_k g_bk (a mu_k - x) / v_k
        return a * (g @ mu_inv) - x * (g @ inv)

    return logn, combine


def _dense_terms(cov: Covariance, means: Means, x: torch.Tensor, abar: float) -> tuple[torch.Tensor, Combine]:
    a = math.sqrt(abar)
    if isinstance(cov, DiagCov) and not means.per_item:
        return _diag_terms(cov, means.mu, x, abar)
    cov_t = cov.diffuse(abar)
    resid = x.unsqueeze(1) - a * means.dense(cov)  # (B, K, d)
    sol = cov_t.solve(resid)
    quad = (resid * sol).sum(-1)
    logn = -0.5 * (quad + cov_t.logdet() + cov.d * LOG2PI)

    def combine(g: torch.Tensor) -> torch.Tensor:
        return -(g.unsqueeze(-1) * sol).sum(1)

    return logn, combine


class _GramPrep:
    """x-independent inner products for one (LowRankCov, Means) pair, undiffused."""

    def __init__(self, cov: LowRankCov, means: Means):
        self.cov, self.means = cov, means
        Ut = cov.Ut
        self.K, self.r, self.d = Ut.shape
        self.Uflat = Ut.reshape(self.K * self.r, self.d)
        grams = cov.grams()
        mu, base = means.mu, means.base
        self.parts = []  # (name, projected-vector function, gram dict)
        names = ["N"] if cov.projector is None else ["N", "R"]
        for name in names:
            proj = self._proj(name)
            Pmu = proj(mu)
            pre = {
                "mm": (Pmu * Pmu).sum(-1),  # <P mu, mu>           (K,)
                "mU": torch.einsum("kd,krd->kr", Pmu, Ut),  # <P mu, U>  (K, r)
                "UU": grams[name],  # U^T P U                             (K, r, r)
            }
            if base is not None:
                Pb = proj(base)
                pre["bb"] = (Pb * Pb).sum(-1)  # (Bm,)
                pre["bm"] = Pb @ mu.T  # (Bm, K)
                pre["bU"] = (Pb @ self.Uflat.T).view(base.shape[0], self.K, self.r)  # (Bm, K, r)
            self.parts.append((name, pre))

    def _proj(self, name: str) -> Callable[[torch.Tensor], torch.Tensor]:
        cov = self.cov
        if cov.projector is None:
            return lambda v: v
        if name == "N":
            return cov.P
        return lambda v: v - cov.P(v)

    def terms(self, x: torch.Tensor, abar: float) -> tuple[torch.Tensor, Combine]:
        cov, M = self.cov, self.means
        K, r, d = self.K, self.r, self.d
        B = x.shape[0]
        a = math.sqrt(abar)
        beta = M.beta_or_ones()
        c = M.coef
        # which variance levels are active: at abar = 1 a zero range variance (noiseless posterior)
        # leaves a density on the null space only (its range part is fixed)
        levels = {"N": abar * cov.s2 + (1 - abar), "R": abar * cov.range_var + (1 - abar)}
        active = [(n, pre) for n, pre in self.parts if bool((levels[n] > 0).all())]
        if len(active) != len(self.parts) and abar < 1:
            raise ValueError("zero variance level at abar < 1")  # cannot happen: (1 - abar) > 0
        if not active:
            raise ValueError("covariance is zero: no density")
        Nx = cov.P(x) if cov.projector is not None else x
        Px = {"N": Nx, "R": x - Nx}
        q = x.new_zeros(B, K)
        p = x.new_zeros(B, K, r)
        cap = torch.eye(r, dtype=x.dtype, device=x.device).expand(K, r, r).clone()
        logdet = x.new_zeros(K)
        d_eff = 0
        for name, pre in active:
            lev = levels[name]  # (K,)
            Pxn = Px[name]
            xx = (Pxn * Pxn).sum(-1)  # (B,)
            xm = a * (Pxn @ M.mu.T)  # (B, K)   <P x, a mu>
            xU = a * (Pxn @ self.Uflat.T).view(B, K, r)  # <P x, U'>, U' = a U
            quad = xx[:, None] - 2 * xm + abar * pre["mm"]
            uPr = xU - abar * pre["mU"]  # U'^T P r (before base and coef terms)
            if M.base is not None:
                xb = a * (Pxn * M.base).sum(-1)  # (B,)
                quad = quad - 2 * beta * xb[:, None] + abar * (beta**2 * pre["bb"][:, None] + 2 * beta * pre["bm"])
                uPr = uPr - abar * beta[None, :, None] * pre["bU"]
            if c is not None:
                UUc = abar * (pre["UU"] @ c.unsqueeze(-1)).squeeze(-1)  # U'^T P U' c   (Bm, K, r)
                quad = quad - 2 * (xU * c).sum(-1) + 2 * abar * (pre["mU"] * c).sum(-1) + (c * UUc).sum(-1)
                if M.base is not None:
                    quad = quad + 2 * abar * beta * (pre["bU"] * c).sum(-1)
                uPr = uPr - UUc
            q = q + quad / lev
            p = p + uPr / lev[:, None]
            cap = cap + abar * pre["UU"] / lev[:, None, None]
            rank = cov.rank_null if name == "N" else d - cov.rank_null
            logdet = logdet + rank * torch.log(lev)
            d_eff += rank
        if r:
            L = torch.linalg.cholesky(cap)
            h = torch.cholesky_solve(p.unsqueeze(-1), L).squeeze(-1)  # (B, K, r)
            quad_all = q - (p * h).sum(-1)
            logdet = logdet + 2 * torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)
        else:
            h = None
            quad_all = q
        logn = -0.5 * (quad_all + logdet + d_eff * LOG2PI)

        def combine(g: torch.Tensor) -> torch.Tensor:
            # C^{-1} r = D^{-1} (r - U' h); sum_i g_i D_i^{-1} (...) split by variance level
            Vs = {}
            for name, _ in active:
                w = g / levels[name]  # (B, K)
                V = x * w.sum(-1, keepdim=True) - a * (w @ M.mu)
                if M.base is not None:
                    V = V - a * M.base * (w * beta).sum(-1, keepdim=True)
                coefs = h if c is None else (c if h is None else c + h)
                if coefs is not None and r:
                    V = V - a * ((w.unsqueeze(-1) * coefs).reshape(B, K * r) @ self.Uflat)
                Vs[name] = V
            if cov.projector is None:
                return -Vs["N"]
            if "R" not in Vs:
                return -cov.P(Vs["N"])
            return -(Vs["R"] + cov.P(Vs["N"] - Vs["R"]))

        return logn, combine
