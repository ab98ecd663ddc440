"""A Gaussian prior with translation-invariant covariance on images of any size, and its exact denoiser.

Prior (docs/tiling.md, "The exact check"): ``x ~ N(mu, C)`` on ``(channels, H, W)`` images with

    C = a^2 (K (x) C_H (x) C_W) + nu I,     C_H[i, j] = k(|i - j| / l)

``k`` the squared-exponential ``exp(-d^2 / 2)`` or the exponential ``exp(-d)`` kernel (length ``l``
pixels; a product over the two axes, so translation invariant and separable), ``K`` a colour
correlation matrix (identity: channels independent) and ``nu`` a small white-noise "nugget" that keeps
``C`` well conditioned.  ``C`` is diagonal in the Kronecker eigenbasis ``Q = Q_K (x) Q_H (x) Q_W`` with
eigenvalues ``lambda = a^2 lambda_K (x) lambda_H (x) lambda_W + nu``; everything below works there.

Exact denoiser on the VP path, ``x_t ~ N(sqrt(abar) mu, abar C + (1 - abar) I)``::

    E[x0 | x_t] = mu + sqrt(abar) C (abar C + (1 - abar) I)^-1 (x_t - sqrt(abar) mu)

It takes images of any size: the prior of an ``h x w`` crop is the same kernel on ``h x w`` pixels,
so the same denoiser called on windows is the exact denoiser of "a model that only ever saw crops".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from ..denoiser import Prediction
from ..schedule import NoiseSchedule

Kernel = Literal["se", "exp"]


def kernel_values(d: torch.Tensor, length: float, kind: Kernel) -> torch.Tensor:
    """``k(|d| / length)`` for pixel offsets ``d`` (float64)."""
    r = d.double().abs() / length
    return torch.exp(-0.5 * r**2) if kind == "se" else torch.exp(-r)


def kernel_matrix(n: int, length: float, kind: Kernel) -> torch.Tensor:
    """The 1-D correlation matrix ``k(|i - j| / length)`` (float64, n x n)."""
    d = torch.arange(n, dtype=torch.float64)
    return kernel_values(d[:, None] - d[None, :], length, kind)


@dataclass(frozen=True)
class Eigen:
    """``C = Q diag(lam) Q^T`` on one image size, with ``Q = Q_K (x) Q_H (x) Q_W``; ``lam`` (C, H, W)."""

    QK: torch.Tensor
    QH: torch.Tensor
    QW: torch.Tensor
    lam: torch.Tensor

    def to_basis(self, x: torch.Tensor) -> torch.Tensor:
        """``Q^T x`` for a batch ``(B, C, H, W)``."""
        z = self.QH.to(x).T @ x @ self.QW.to(x)
        return z if z.shape[1] == 1 else torch.einsum("ca,bcij->baij", self.QK.to(x), z)

    def from_basis(self, z: torch.Tensor) -> torch.Tensor:
        """``Q z``."""
        x = self.QH.to(z) @ z @ self.QW.to(z).T
        return x if x.shape[1] == 1 else torch.einsum("ca,baij->bcij", self.QK.to(z), x)

    def apply(self, x: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """``Q diag(values) Q^T x`` (``values`` shaped like ``lam``)."""
        return self.from_basis(values.to(x) * self.to_basis(x))


@dataclass
class StationaryGaussian:
    """The prior of the module docstring.  ``mean``: a constant ``mu`` per channel (or one number);
    ``amplitude`` ``a``; ``length`` ``l`` in pixels; ``kernel`` ``"se"`` or ``"exp"``; ``colour``: ``K``
    (channels x channels correlation matrix; None: the identity); ``nugget`` ``nu``."""

    channels: int = 1
    mean: float | tuple[float, ...] = 0.0
    amplitude: float = 0.5
    length: float = 4.0
    kernel: Kernel = "se"
    colour: torch.Tensor | None = None
    nugget: float = 1e-3
    _eigen: dict[tuple[int, int], Eigen] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.kernel not in ("se", "exp"):
            raise ValueError(f"kernel must be 'se' or 'exp', got {self.kernel!r}")
        if not (self.length > 0 and self.amplitude > 0 and self.nugget > 0):
            raise ValueError("length, amplitude and nugget must be positive")
        K = torch.eye(self.channels, dtype=torch.float64) if self.colour is None else \
            torch.as_tensor(self.colour, dtype=torch.float64)
        if K.shape != (self.channels, self.channels) or not torch.allclose(K, K.T):
            raise ValueError(f"colour must be a symmetric {self.channels}x{self.channels} matrix")
        lam, Q = torch.linalg.eigh(K)
        if lam.min() < 0:
            raise ValueError("colour must be positive semi-definite")
        self._colour = (Q, lam.clamp(min=0.0))

    # -- the covariance -------------------------------------------------------------------------
    def mu(self, like: torch.Tensor) -> torch.Tensor:
        m = torch.as_tensor(self.mean, dtype=like.dtype, device=like.device).reshape(-1)
        return m.expand(self.channels).reshape(1, self.channels, 1, 1)

    def eigen(self, size: tuple[int, int]) -> Eigen:
        """The Kronecker eigendecomposition of ``C`` on ``size`` (rows, cols), cached."""
        size = (int(size[0]), int(size[1]))
        if size not in self._eigen:
            lh, QH = torch.linalg.eigh(kernel_matrix(size[0], self.length, self.kernel))
            lw, QW = (lh, QH) if size[1] == size[0] else torch.linalg.eigh(kernel_matrix(size[1], self.length,
                                                                                         self.kernel))
            QK, lk = self._colour
            lam = self.amplitude**2 * torch.einsum("c,h,w->chw", lk, lh.clamp(min=0.0), lw.clamp(min=0.0))
            self._eigen[size] = Eigen(QK, QH, QW, lam + self.nugget)
        return self._eigen[size]

    def cov_apply(self, x: torch.Tensor, power: float = 1.0) -> torch.Tensor:
        """``C^power x`` for a batch of images."""
        e = self.eigen((x.shape[-2], x.shape[-1]))
        return e.apply(x, e.lam**power)

    def covariance(self, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """``C[p, q]`` for index rows ``(n, 3)`` of (channel, row, col) each."""
        QK, lk = self._colour
        Kc = (QK * lk) @ QK.T
        rows = kernel_values(p[:, 1] - q[:, 1], self.length, self.kernel)
        cols = kernel_values(p[:, 2] - q[:, 2], self.length, self.kernel)
        same = (p == q).all(1).double()
        return self.amplitude**2 * Kc[p[:, 0], q[:, 0]] * rows * cols + self.nugget * same

    def sample(self, n: int, size: tuple[int, int], generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` prior draws ``(n, C, H, W)`` float64."""
        z = torch.randn((n, self.channels, *size), generator=generator, dtype=torch.float64)
        return self.mu(z) + self.cov_apply(z, 0.5)

    def denoiser(self, schedule: NoiseSchedule | None = None) -> StationaryDenoiser:
        return StationaryDenoiser(self, schedule or NoiseSchedule.linear())


@dataclass
class StationaryDenoiser:
    """The exact denoiser of a ``StationaryGaussian`` at whatever size ``x_t`` has (module docstring);
    ``cond`` is ignored (an unconditional prior).  Differentiable, batch items independent."""

    prior: StationaryGaussian
    schedule: NoiseSchedule

    def __call__(self, x_t: torch.Tensor, t: int, cond: Any = None) -> Prediction:
        abar = self.schedule.abar(t)
        e = self.prior.eigen((x_t.shape[-2], x_t.shape[-1]))
        mu = self.prior.mu(x_t)
        gain = math.sqrt(abar) * e.lam / (abar * e.lam + (1.0 - abar))
        x0 = mu + e.apply(x_t - math.sqrt(abar) * mu, gain)
        return Prediction.from_x0(x_t, x0, abar)
