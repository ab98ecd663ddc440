"""Covariance families for Gaussian mixtures, batched over K components (torch, any dtype/device).

Every family offers what the exact mixture world needs (docs/method.md, "Gaussian-mixture closed forms"):
``diffuse(abar) = abar Sigma + (1 - abar) I`` (the covariance of ``x_t``), ``matvec``, ``solve``
(``Sigma^{-1} v``), ``logdet``, zero-mean ``sample`` and ``dense`` (small d only).  Vectors are flat:
``v`` of shape ``(..., K, d)`` is one d-vector per component.

* ``FullCov(mat)``: ``(K, d, d)``, Cholesky per component (small d).
* ``DiagCov(var)``: ``(K, d)``.
* ``LowRankCov`` (``lowrank.py``): ``s2_i N + range_var_i (I - N) + U_i U_i^T`` with an orthogonal projector ``N``
  (None = identity, then ``s2_i I + U_i U_i^T``).  Inverse and log-determinant by Woodbury with an
  ``r x r`` capacitance per component, so ``d x d`` is never formed (d = 12288, r = 6, K = 1000 is cheap).
  Named forms: ``IsoCov(var, d)`` (r = 0), ``LowRankIsoCov(U, s2)`` and ``ProjectedCov(U, s2,
  projector, range_var=0)`` (a covariance living in the null space of an operator when
  ``range_var = 0`` and ``U`` lies in that null space: the exact cascade's stage-II conditional).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence

import torch

#: rows per chunk when a projector or a gathered low-rank factor touches many d-vectors at once
CHUNK = 256


def chunks(n: int, size: int = CHUNK) -> Iterator[slice]:
    for s in range(0, n, size):
        yield slice(s, min(n, s + size))


def randn(shape: Sequence[int], generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    """Standard normal draws from ``generator`` (on the generator's device), cast to ``like``'s."""
    dev = generator.device if generator is not None else torch.device("cpu")
    draw = torch.float64 if like.dtype == torch.float64 else torch.float32
    z = torch.randn(tuple(shape), generator=generator, dtype=draw, device=dev)
    return z.to(device=like.device, dtype=like.dtype)


# ------------------------------------------------------------------------------------------------
# base class
# ------------------------------------------------------------------------------------------------
class Covariance(ABC):
    """K covariance matrices of size d x d in one structured family."""

    @property
    @abstractmethod
    def K(self) -> int: ...

    @property
    @abstractmethod
    def d(self) -> int: ...

    @property
    @abstractmethod
    def dtype(self) -> torch.dtype: ...

    @property
    @abstractmethod
    def device(self) -> torch.device: ...

    @abstractmethod
    def diffuse(self, abar: float) -> Covariance:
        """``abar Sigma_i + (1 - abar) I`` (the covariance of x_t given component i), same family."""

    @abstractmethod
    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """``Sigma_i v_i`` for ``v`` of shape ``(..., K, d)``."""

    @abstractmethod
    def solve(self, v: torch.Tensor) -> torch.Tensor:
        """``Sigma_i^{-1} v_i`` for ``v`` of shape ``(..., K, d)``."""

    @abstractmethod
    def logdet(self) -> torch.Tensor:
        """``log det Sigma_i``, shape ``(K,)``."""

    @abstractmethod
    def dense(self) -> torch.Tensor:
        """``(K, d, d)``; only sensible for small d."""

    @abstractmethod
    def matvec_idx(self, v: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """``Sigma_{idx_n} v_n`` for ``v`` of shape ``(n, d)`` and component indices ``idx`` ``(n,)``."""

    @abstractmethod
    def sample(self, idx: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Zero-mean draws ``(n, d)``, draw n from ``N(0, Sigma_{idx_n})``."""

    @abstractmethod
    def index(self, idx: torch.Tensor) -> Covariance:
        """The sub-family of components ``idx``."""

    @abstractmethod
    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Covariance: ...

    def __repr__(self) -> str:
        return f"{type(self).__name__}(K={self.K}, d={self.d}, dtype={self.dtype})"


def check_abar(abar: float) -> float:
    abar = float(abar)
    if not 0.0 < abar <= 1.0:
        raise ValueError(f"abar must lie in (0, 1], got {abar}")
    return abar


# ------------------------------------------------------------------------------------------------
# full and diagonal
# ------------------------------------------------------------------------------------------------
class FullCov(Covariance):
    """Dense ``(K, d, d)`` covariances (symmetrised on construction)."""

    def __init__(self, mat: torch.Tensor):
        if mat.ndim != 3 or mat.shape[1] != mat.shape[2]:
            raise ValueError(f"FullCov needs a (K, d, d) tensor, got shape {tuple(mat.shape)}")
        if not mat.is_floating_point():
            raise ValueError("FullCov needs a floating-point tensor")
        self.mat = 0.5 * (mat + mat.transpose(-1, -2))
        self._chol: torch.Tensor | None = None
        self._root: torch.Tensor | None = None

    K = property(lambda self: self.mat.shape[0])
    d = property(lambda self: self.mat.shape[1])
    dtype = property(lambda self: self.mat.dtype)
    device = property(lambda self: self.mat.device)

    def cholesky(self) -> torch.Tensor:
        if self._chol is None:
            L, info = torch.linalg.cholesky_ex(self.mat)
            bad = torch.nonzero(info).flatten().tolist()
            if bad:
                raise ValueError(
                    f"covariance of component(s) {bad[:10]} is not positive definite (singular?); a "
                    "noiseless posterior or a projected covariance has no density at abar = 1: "
                    "evaluate it diffused (abar < 1) or sample it instead"
                )
            self._chol = L
        return self._chol

    def root(self) -> torch.Tensor:
        """A square root ``R`` with ``R R^T = Sigma`` (Cholesky, or eigh for singular PSD matrices)."""
        if self._root is None:
            L, info = torch.linalg.cholesky_ex(self.mat)
            if bool((info == 0).all()):
                self._root = L
            else:
                lam, V = torch.linalg.eigh(self.mat)
                self._root = V * lam.clamp(min=0).sqrt().unsqueeze(-2)
        return self._root

    def diffuse(self, abar: float) -> FullCov:
        abar = check_abar(abar)
        eye = torch.eye(self.d, dtype=self.dtype, device=self.device)
        return FullCov(abar * self.mat + (1.0 - abar) * eye)

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        return (self.mat @ v.unsqueeze(-1)).squeeze(-1)

    def solve(self, v: torch.Tensor) -> torch.Tensor:
        L = self.cholesky()
        z = torch.linalg.solve_triangular(L, v.unsqueeze(-1), upper=False)
        return torch.linalg.solve_triangular(L.transpose(-1, -2), z, upper=True).squeeze(-1)

    def logdet(self) -> torch.Tensor:
        return 2.0 * torch.log(torch.diagonal(self.cholesky(), dim1=-2, dim2=-1)).sum(-1)

    def dense(self) -> torch.Tensor:
        return self.mat

    def matvec_idx(self, v: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return (self.mat[idx] @ v.unsqueeze(-1)).squeeze(-1)

    def sample(self, idx: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        z = randn((idx.numel(), self.d), generator, self.mat)
        return (self.root()[idx] @ z.unsqueeze(-1)).squeeze(-1)

    def index(self, idx: torch.Tensor) -> FullCov:
        return FullCov(self.mat[idx])

    def to(self, device=None, dtype=None) -> FullCov:
        return FullCov(self.mat.to(device=device, dtype=dtype))


class DiagCov(Covariance):
    """Diagonal covariances ``(K, d)`` (variances, > 0 for densities)."""

    def __init__(self, var: torch.Tensor):
        if var.ndim != 2:
            raise ValueError(f"DiagCov needs a (K, d) tensor of variances, got shape {tuple(var.shape)}")
        if bool((var < 0).any()):
            raise ValueError("DiagCov variances must be >= 0")
        self.var = var

    K = property(lambda self: self.var.shape[0])
    d = property(lambda self: self.var.shape[1])
    dtype = property(lambda self: self.var.dtype)
    device = property(lambda self: self.var.device)

    def diffuse(self, abar: float) -> DiagCov:
        abar = check_abar(abar)
        return DiagCov(abar * self.var + (1.0 - abar))

    def matvec(self, v):
        return self.var * v

    def solve(self, v):
        return v / self.var

    def logdet(self):
        return torch.log(self.var).sum(-1)

    def dense(self):
        return torch.diag_embed(self.var)

    def matvec_idx(self, v, idx):
        return self.var[idx] * v

    def sample(self, idx, generator=None):
        return self.var[idx].sqrt() * randn((idx.numel(), self.d), generator, self.var)

    def index(self, idx):
        return DiagCov(self.var[idx])

    def to(self, device=None, dtype=None):
        return DiagCov(self.var.to(device=device, dtype=dtype))

