"""The exact posterior of a ``StationaryGaussian`` prior given ``y = A x + sigma_y n`` (any linear operator:
average pooling, bicubic ...)::

    mean = mu + C A^T (A C A^T + sigma_y^2 I)^-1 (y - A mu)
    cov  = C - C A^T (A C A^T + sigma_y^2 I)^-1 A C

``G = C A^T`` (one row per measurement) is built by applying ``A^T`` to the measurement basis and ``C``
separably; ``K = A C A^T + sigma_y^2 I`` is small (the LR pixels) and factored once by Cholesky, in
float64.  Samples by Matheron's rule: ``x = x_p + G^T K^-1 (y - A x_p - sigma_y n)`` with ``x_p`` a
prior draw, exact for Gaussians.  Per-pixel variances and covariances of chosen pixel pairs come from
``G`` and ``K^-1 G`` without forming the dense posterior covariance.
"""

from __future__ import annotations

import math

import torch

from ..operators import LinearOperator
from .prior import StationaryGaussian


class ExactPosterior:
    """Posterior of ``prior`` on ``operator.in_shape`` images given ``y`` ``(1, *out_shape)``."""

    def __init__(self, prior: StationaryGaussian, operator: LinearOperator, y: torch.Tensor, sigma_y: float = 0.0):
        C, H, W = operator.in_shape
        if C != prior.channels:
            raise ValueError(f"the operator acts on {C} channels, the prior has {prior.channels}")
        self.prior, self.operator, self.sigma_y = prior, operator, float(sigma_y)
        self.size = (H, W)
        m = math.prod(operator.out_shape)
        basis = torch.eye(m, dtype=torch.float64).reshape(m, *operator.out_shape)
        G = prior.cov_apply(operator.At(basis))  # rows C A^T e_i
        S = operator.A(G).reshape(m, m)
        K = 0.5 * (S + S.T) + self.sigma_y**2 * torch.eye(m, dtype=torch.float64)
        self._L = torch.linalg.cholesky(K)
        self.G = G.reshape(m, -1)
        self.KinvG = torch.cholesky_solve(self.G, self._L)
        self.y = y.to(torch.float64).reshape(1, -1)
        mu = prior.mu(G).expand(1, C, H, W)
        self.mean = (mu.reshape(1, -1) + self._gain(self.y - operator.A(mu).reshape(1, -1))).reshape(1, C, H, W)
        QK, lk = prior._colour
        diag_c = (prior.amplitude**2 * ((QK * lk) @ QK.T).diagonal() + prior.nugget)
        prior_var = diag_c.view(C, 1, 1).expand(C, H, W).reshape(-1)
        self.variance = (prior_var - (self.G * self.KinvG).sum(0)).reshape(C, H, W)

    def _gain(self, r: torch.Tensor) -> torch.Tensor:
        """``G^T K^-1 r`` for rows ``r`` (n, m)."""
        return r @ self.KinvG

    @property
    def std(self) -> torch.Tensor:
        """Per-pixel posterior standard deviation ``(C, H, W)``."""
        return self.variance.clamp(min=0.0).sqrt()

    def covariance(self, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """Posterior covariance of pixel pairs; ``p``, ``q`` index rows ``(n, 3)`` of (channel, row, col)."""
        C, H, W = self.operator.in_shape
        flat = lambda i: (i[:, 0] * H + i[:, 1]) * W + i[:, 2]  # noqa: E731
        return self.prior.covariance(p, q) - (self.G[:, flat(p)] * self.KinvG[:, flat(q)]).sum(0)

    def correlation(self, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        var = self.variance
        return self.covariance(p, q) / (var[p[:, 0], p[:, 1], p[:, 2]] * var[q[:, 0], q[:, 1], q[:, 2]]).sqrt()

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` exact posterior draws ``(n, C, H, W)`` (Matheron's rule)."""
        x = self.prior.sample(n, self.size, generator)
        r = self.y - self.operator.A(x).reshape(n, -1)
        if self.sigma_y > 0:
            r = r - self.sigma_y * torch.randn(r.shape, generator=generator, dtype=torch.float64)
        return x + self._gain(r).reshape(x.shape)
