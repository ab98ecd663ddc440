"""The exact velocity of a Gaussian mixture on the rectified-flow path (docs/flow.md, "Exact check").

On ``x_s = (1 - s) x0 + s eps`` with ``x0 ~ sum_i w_i N(mu_i, Sigma_i)`` the exact velocity is
``v(x_s, s) = E[eps - x0 | x_s]``.  Through the exact map of ``textsr.flow`` (``x_vp = x_s / c(s)``,
``abar = (1 - s)^2 / c(s)^2``) the VP marginal's score gives both conditional means:
``E[x0 | x_s] = (x_vp + (1 - abar) score) / sqrt(abar)``, ``E[eps | x_s] = -sqrt(1 - abar) score``.  At ``s = 1``
(``abar = 0``) ``x_1 = eps`` is independent of ``x0``, so ``E[eps | x_1] = x_1`` and ``E[x0 | x_1]`` is the
mixture mean: ``v = x_1 - E[x0]`` exactly (the VP formula would divide by ``sqrt(abar) = 0``).

``MixtureVelocity(mixture)(x_s, s, cond)`` takes the same ``cond`` as ``MixtureDenoiser`` (tags, a mixture, a
posterior, one mixture per item); ``FlowDenoiser(MixtureVelocity(m), FlowSchedule...)`` is the exact flow
model the solvers run on (``tests/test_flow_path.py``).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..flow import abar_of, flow_scale
from ..schedule import NoiseSchedule
from .denoiser import MixtureDenoiser
from .mixture import GaussianMixture, MixtureOps


class MixtureVelocity:
    """The exact flow velocity of ``mixture`` (see the module docstring); differentiable in ``x_s``, batch
    items independent, computed in the mixture's dtype and returned in ``x_s``'s."""

    def __init__(self, mixture: GaussianMixture):
        # the VP denoiser only resolves ``cond`` here; its schedule is never used
        self._vp = MixtureDenoiser(mixture, NoiseSchedule((1.0,), name="unused"))

    @property
    def mixture(self) -> MixtureOps:
        return self._vp.mixture

    def __call__(self, x_s: torch.Tensor, s: float, cond: Any = None) -> torch.Tensor:
        if not 0.0 <= s <= 1.0:
            raise ValueError(f"flow level s must lie in [0, 1], got {s}")
        dist = self._vp.resolve(cond)
        if isinstance(dist, list):
            if len(dist) != x_s.shape[0]:
                raise ValueError(f"{len(dist)} per-item mixtures for a batch of {x_s.shape[0]}")
            return torch.cat([_velocity(m, x_s[k:k + 1], s) for k, m in enumerate(dist)])
        return _velocity(dist, x_s, s)


def _velocity(dist: MixtureOps, x_s: torch.Tensor, s: float) -> torch.Tensor:
    if s == 1.0:  # pure noise: v = x_1 - E[x0]
        mean = dist.mean().to(device=x_s.device, dtype=x_s.dtype)
        return x_s - mean.reshape(mean.shape[0] if mean.ndim == 2 else 1, *x_s.shape[1:])
    abar = abar_of(s)
    x_vp = x_s / flow_scale(s)
    score = dist.score(x_vp, abar)
    x0 = (x_vp + (1.0 - abar) * score) / math.sqrt(abar)  # Tweedie
    eps = -math.sqrt(1.0 - abar) * score
    return eps - x0
