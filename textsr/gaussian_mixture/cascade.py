"""An exact cascade: the low-resolution marginal and the stage-II conditional of a Gaussian mixture.

A cascade samples ``x_lo ~ p(M x)`` (stage I) and then ``x ~ p(x | M x = x_lo)`` (stage II, a model
conditioned on the low-resolution image).  For a mixture prior both are closed-form:

* ``push_forward(mixture, M)``: ``sum_i w_i N(M mu_i, M Sigma_i M^T)``; for low-rank + isotropic
  components and ``M M^T = c I`` (average pooling) this is again low-rank + isotropic
  (``U -> M U``, ``s2 -> c s2``), cheap at any size.
* ``lowres_conditional(mixture, M, x_lo, sigma_aug)``: ``p(x | M x + sigma_aug n = x_lo)`` for a batch
  of ``x_lo`` (one per sample): it *is* the exact posterior with operator M and noise sigma_aug.  With
  ``sigma_aug = 0`` the range part is fixed at ``M+ x_lo`` and the null part of component i is Gaussian
  with covariance ``s2_i N + W_i W_i^T`` ("iso in the null space + low rank"), weights
  ``∝ w_i N(x_lo; M mu_i, M Sigma_i M^T)``; ``sigma_aug > 0`` is the noise-augmented conditioning of
  real cascades (DeepFloyd IF's stage II) and costs nothing extra.
* ``cascade_log_evidence(mixture, M, A_lo, y, sigma_y)``: the cascade's exact ``log p(y)`` (stage I's
  evidence), what a particle sampler's stage-I ``Z_hat`` estimates (``textsr.cascade.CascadeResult``).
* ``lowres_condition(mixture, M, sigma_aug)``: the ``Stage.condition`` callable of ``textsr.cascade``
  that builds that conditional from the previous stage's output; with ``MixtureDenoiser`` as the
  stage's denoiser this is the exact stage II.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from ..operators import LinearOperator
from .covariance import Covariance, DiagCov, FullCov
from .flat import apply_A, apply_At
from .lowrank import LowRankCov
from .mixture import GaussianMixture, MixtureBatch
from .posterior import MAX_DENSE_M, equal_singular_values, log_evidence, posterior


def push_forward(mixture: GaussianMixture, operator: LinearOperator) -> GaussianMixture:
    """The distribution of ``M x`` for ``x ~ mixture`` (tags kept, event shape ``M.out_shape``)."""
    if math.prod(operator.in_shape) != mixture.d:
        raise ValueError(f"operator acts on {operator.in_shape}, mixture has event shape {mixture.event_shape}")
    cov = mixture.cov
    K, m = mixture.K, math.prod(operator.out_shape)
    mu = apply_A(operator, mixture.mu)
    c = equal_singular_values(operator)
    new: Covariance
    if isinstance(cov, LowRankCov) and cov.projector is None and c is not None:
        r = cov.r
        Ut = apply_A(operator, cov.Ut.reshape(K * r, -1)).reshape(K, r, m) if r else cov.Ut.new_zeros(K, 0, m)
        new = cov._new(Ut, c * cov.s2, cov.range_var)  # same family (IsoCov stays IsoCov)
    else:
        if m > MAX_DENSE_M:
            raise ValueError(
                f"push-forward of a {type(cov).__name__} by {operator!r} would need dense {m} x {m} covariances; "
                "use a low-rank + isotropic prior and an operator with M M^T = c I (AvgPool)"
            )
        if isinstance(cov, DiagCov):
            Ad = apply_At(operator, torch.eye(m, dtype=cov.dtype, device=cov.device))  # (m, d)
            new = FullCov((Ad * cov.var[:, None, :]) @ Ad.T)
        else:
            S = cov.dense()  # (K, d, d)
            MS = apply_A(operator, S)  # rows of S mapped: (K, d, m) = (M S)^T
            new = FullCov(apply_A(operator, MS.transpose(1, 2)))  # (K, m, m) = M S M^T
    return GaussianMixture._raw(mixture.log_weights, mu, new, mixture.tags, tuple(operator.out_shape))


def cascade_log_evidence(mixture: GaussianMixture, M: LinearOperator, A_lo: LinearOperator, y: torch.Tensor,
                         sigma_y: float = 0.0, tags=None) -> torch.Tensor:
    """Exact ``log p(y | tags)`` of the exact two-stage cascade whose stage I samples ``x_lo ~ p(M x)`` and
    observes ``y = A_lo x_lo + sigma_y n``: the evidence of stage I's push-forward prior (``(B,)`` float64).
    When ``A_lo M`` is the full-resolution operator A (average pooling composes) this equals
    ``log_evidence(mixture, A, y)``: the cascade has the same evidence as the single-stage model, because
    its output's distribution is the prior whatever stage II's noise augmentation."""
    lo = push_forward(mixture.select(tags) if tags is not None else mixture, M)
    return log_evidence(lo, A_lo, y, sigma_y)


def lowres_conditional(mixture: GaussianMixture, operator: LinearOperator, x_lo: torch.Tensor,
                       sigma_aug: float = 0.0, tags=None) -> MixtureBatch:
    """``p(x | M x + sigma_aug n = x_lo)`` for each row of ``x_lo`` ``(B, *M.out_shape)``, as a
    ``MixtureBatch`` (pass it as ``cond`` to ``MixtureDenoiser``).  ``tags`` restricts the prior first."""
    return posterior(mixture, operator, x_lo, sigma_aug, tags=tags).mixture()


def lowres_condition(mixture: GaussianMixture, operator: LinearOperator, sigma_aug: float = 0.0,
                     ) -> Callable[[Any, torch.Tensor | None, Any], MixtureBatch]:
    """A ``textsr.cascade.Stage.condition``: ``(cond, prev, noise) -> MixtureBatch``.

    ``cond`` selects components by tags (None, a tag or tags, as for ``MixtureDenoiser``); ``prev`` is
    the previous stage's output ``(B, *M.out_shape)``; with ``sigma_aug > 0`` it is first noise-augmented,
    ``x_lo = prev + sigma_aug z`` with ``z`` drawn from the stage's per-sample ``noise``."""
    if not math.isfinite(sigma_aug) or sigma_aug < 0:
        raise ValueError(f"sigma_aug must be a finite number >= 0, got {sigma_aug}")

    def condition(cond: Any, prev: torch.Tensor | None, noise: Any) -> MixtureBatch:
        if prev is None:
            raise ValueError("the stage-II conditional needs the previous stage's output (this stage cannot be first)")
        x_lo = prev
        if sigma_aug > 0:
            x_lo = prev + sigma_aug * noise.randn(tuple(prev.shape[1:])).to(prev)
        tags = None if cond is None else cond
        return lowres_conditional(mixture, operator, x_lo, sigma_aug, tags=tags)

    return condition
