"""Low rank plus (two-level) isotropic covariances: Woodbury inverses and log-determinants, never d x d."""

from __future__ import annotations

import math

import torch

from .covariance import CHUNK, Covariance, check_abar, chunks, randn
from .projector import Projector


def _per_component(v, K: int, like: torch.Tensor, what: str) -> torch.Tensor:
    t = torch.as_tensor(v, dtype=like.dtype, device=like.device)
    if t.ndim == 0:
        t = t.expand(K).clone()
    if t.shape != (K,):
        raise ValueError(f"{what} must be a scalar or have shape ({K},), got {tuple(t.shape)}")
    return t


class LowRankCov(Covariance):
    """``Sigma_i = s2_i N + range_var_i (I - N) + U_i U_i^T`` (``N`` = projector, None = identity).

    ``U`` is given as ``(K, d, r)`` and stored transposed, ``Ut`` ``(K, r, d)``, so that products with
    all components are single matrix multiplies.  Woodbury: with ``D_i = s2_i N + range_var_i (I - N)``,
    ``Sigma^{-1} = D^{-1} - D^{-1} U (I + U^T D^{-1} U)^{-1} U^T D^{-1}`` and
    ``log det Sigma = rank(N) log s2 + (d - rank(N)) log range_var + log det (I + U^T D^{-1} U)``.
    With a projector and ``range_var = 0`` the matrix is singular (a covariance living in the null space
    of the projector's operator); ``diffuse`` makes it regular.
    """

    def __init__(self, U: torch.Tensor, s2, projector: Projector | None = None, range_var=0.0):
        if U.ndim != 3:
            raise ValueError(f"U must have shape (K, d, r), got {tuple(U.shape)}")
        self._init(U.transpose(1, 2).contiguous(), s2, projector, range_var)

    @classmethod
    def from_factors(cls, Ut: torch.Tensor, s2, projector: Projector | None = None, range_var=0.0) -> LowRankCov:
        """Build from the transposed factor ``Ut`` ``(K, r, d)`` without copying it."""
        obj = object.__new__(cls)
        if Ut.ndim != 3:
            raise ValueError(f"Ut must have shape (K, r, d), got {tuple(Ut.shape)}")
        obj._init(Ut, s2, projector, range_var)
        return obj

    def _init(self, Ut, s2, projector, range_var) -> None:
        if not Ut.is_floating_point():
            raise ValueError("the low-rank factor must be a floating-point tensor")
        K, _, d = Ut.shape
        self.Ut = Ut
        self.s2 = _per_component(s2, K, Ut, "s2")
        if bool((self.s2 < 0).any()):
            raise ValueError("s2 (the isotropic variance) must be >= 0")
        self.projector = projector
        if projector is not None and projector.d != d:
            raise ValueError(f"projector acts on d = {projector.d}, covariance has d = {d}")
        self.range_var = _per_component(range_var if projector is not None else 0.0, K, Ut, "range_var")
        if bool((self.range_var < 0).any()):
            raise ValueError("range_var must be >= 0")
        self._grams: dict[str, torch.Tensor] | None = None

    def _new(self, Ut, s2, range_var, grams=None) -> LowRankCov:
        obj = object.__new__(type(self))
        obj._init(Ut, s2, self.projector, range_var)
        obj._grams = grams
        return obj

    K = property(lambda self: self.Ut.shape[0])
    d = property(lambda self: self.Ut.shape[2])
    r = property(lambda self: self.Ut.shape[1])
    dtype = property(lambda self: self.Ut.dtype)
    device = property(lambda self: self.Ut.device)

    @property
    def U(self) -> torch.Tensor:
        """``(K, d, r)`` view of the factor."""
        return self.Ut.transpose(1, 2)

    @property
    def rank_null(self) -> int:
        return self.d if self.projector is None else self.projector.rank

    # -- projector helpers ------------------------------------------------------------------------
    def P(self, v: torch.Tensor) -> torch.Tensor:
        """``N v`` (identity without projector) on ``(..., d)``."""
        return v if self.projector is None else self.projector.apply_chunked(v)

    def grams(self) -> dict[str, torch.Tensor]:
        """``U^T N U`` and ``U^T (I - N) U`` per component (``(K, r, r)``), computed once."""
        if self._grams is None:
            Ut = self.Ut
            if self.projector is None:
                self._grams = {"N": Ut @ Ut.transpose(1, 2)}
            else:
                UNU = torch.empty(self.K, self.r, self.r, dtype=self.dtype, device=self.device)
                URU = torch.empty_like(UNU)
                step = max(1, CHUNK // max(self.r, 1))
                for s in chunks(self.K, step):
                    NUt = self.P(Ut[s])
                    RUt = Ut[s] - NUt
                    UNU[s] = NUt @ NUt.transpose(1, 2)
                    URU[s] = RUt @ RUt.transpose(1, 2)
                self._grams = {"N": UNU, "R": URU}
        return self._grams

    # -- the Covariance interface -----------------------------------------------------------------
    def diffuse(self, abar: float) -> LowRankCov:
        abar = check_abar(abar)
        g = None if self._grams is None else {k: abar * v for k, v in self._grams.items()}
        return self._new(math.sqrt(abar) * self.Ut, abar * self.s2 + (1 - abar),
                         abar * self.range_var + (1 - abar), g)

    def _D(self, v: torch.Tensor, pw: float) -> torch.Tensor:
        """``D^pw v`` for ``v`` ``(..., K, d)``, ``D = s2 N + range_var (I - N)``."""
        if self.projector is None:
            return self.s2.unsqueeze(-1) ** pw * v
        Nv = self.P(v)
        return self.s2.unsqueeze(-1) ** pw * Nv + self.range_var.unsqueeze(-1) ** pw * (v - Nv)

    def matvec(self, v):
        low = torch.einsum("krd,...kr->...kd", self.Ut, torch.einsum("krd,...kd->...kr", self.Ut, v))
        return self._D(v, 1.0) + low

    def _capacitance(self) -> torch.Tensor:
        g = self.grams()
        cap = g["N"] / self.s2[:, None, None]
        if self.projector is not None:
            cap = cap + g["R"] / self.range_var[:, None, None]
        return cap + torch.eye(self.r, dtype=self.dtype, device=self.device)

    def _check_regular(self) -> None:
        if bool((self.s2 <= 0).any()) or (self.projector is not None and bool((self.range_var <= 0).any())):
            raise ValueError(
                "this covariance is singular (a zero variance level; e.g. a noiseless posterior at abar = 1):"
                " evaluate it diffused (abar < 1) or sample it instead"
            )

    def solve(self, v):
        self._check_regular()
        Dv = self._D(v, -1.0)
        if self.r == 0:
            return Dv
        p = torch.einsum("krd,...kd->...kr", self.Ut, Dv)
        h = torch.cholesky_solve(p.unsqueeze(-1), torch.linalg.cholesky(self._capacitance())).squeeze(-1)
        return Dv - self._D(torch.einsum("krd,...kr->...kd", self.Ut, h), -1.0)

    def logdet(self):
        self._check_regular()
        out = self.rank_null * torch.log(self.s2)
        if self.projector is not None:
            out = out + (self.d - self.rank_null) * torch.log(self.range_var)
        if self.r:
            out = out + torch.logdet(self._capacitance())
        return out

    def dense(self):
        eye = torch.eye(self.d, dtype=self.dtype, device=self.device)
        out = self._D(eye[:, None, :].expand(self.d, self.K, self.d), 1.0).permute(1, 0, 2)
        return out + self.U @ self.Ut

    def matvec_idx(self, v, idx):
        out = torch.empty_like(v)
        step = max(1, 4 * CHUNK // max(self.r, 1))
        for s in chunks(v.shape[0], step):
            i, vs = idx[s], v[s]
            o = self.s2[i, None] * (self.P(vs) if self.projector is not None else vs)
            if self.projector is not None:
                o = o + self.range_var[i, None] * (vs - self.P(vs))
            if self.r:
                Ui = self.Ut[i]
                o = o + torch.einsum("nrd,nr->nd", Ui, torch.einsum("nrd,nd->nr", Ui, vs))
            out[s] = o
        return out

    def sample(self, idx, generator=None):
        n = idx.numel()
        z = randn((n, self.d), generator, self.Ut)
        w = randn((n, self.r), generator, self.Ut) if self.r else None
        out = torch.empty_like(z)
        step = max(1, 4 * CHUNK // max(self.r, 1))
        for s in chunks(n, step):
            i, zs = idx[s], z[s]
            if self.projector is None:
                o = self.s2[i, None].sqrt() * zs
            else:
                Nz = self.P(zs)
                o = self.s2[i, None].sqrt() * Nz + self.range_var[i, None].sqrt() * (zs - Nz)
            if w is not None:
                o = o + torch.einsum("nrd,nr->nd", self.Ut[i], w[s])
            out[s] = o
        return out

    def index(self, idx):
        g = None if self._grams is None else {k: v[idx] for k, v in self._grams.items()}
        return self._new(self.Ut[idx], self.s2[idx], self.range_var[idx], g)

    def to(self, device=None, dtype=None):
        g = None if self._grams is None else {k: v.to(device=device, dtype=dtype) for k, v in self._grams.items()}
        return self._new(self.Ut.to(device=device, dtype=dtype), self.s2.to(device=device, dtype=dtype),
                         self.range_var.to(device=device, dtype=dtype), g)

    def __repr__(self) -> str:
        proj = "" if self.projector is None else f", projector={self.projector!r}"
        return f"{type(self).__name__}(K={self.K}, d={self.d}, r={self.r}, dtype={self.dtype}{proj})"


class IsoCov(LowRankCov):
    """``var_i I`` (``var`` of shape ``(K,)``); a ``LowRankCov`` of rank 0."""

    def __init__(self, var: torch.Tensor, d: int):
        var = torch.as_tensor(var)
        if var.ndim != 1:
            raise ValueError(f"IsoCov needs variances of shape (K,), got {tuple(var.shape)}")
        if not var.is_floating_point():
            var = var.to(torch.get_default_dtype())
        self._init(torch.zeros(var.shape[0], 0, int(d), dtype=var.dtype, device=var.device), var, None, 0.0)


class LowRankIsoCov(LowRankCov):
    """``U_i U_i^T + s2_i I`` with ``U`` ``(K, d, r)``."""

    def __init__(self, U: torch.Tensor, s2):
        super().__init__(U, s2, None, 0.0)


class ProjectedCov(LowRankCov):
    """``s2_i N + range_var_i (I - N) + U_i U_i^T`` with an orthogonal projector ``N`` (required)."""

    def __init__(self, U: torch.Tensor, s2, projector: Projector, range_var=0.0):
        if projector is None:
            raise ValueError("ProjectedCov needs a projector (e.g. NullProjector(operator))")
        super().__init__(U, s2, projector, range_var)
