"""How uncertain the *sampled chain* leaves x0 given x_t, next to the continuous model's Tweedie covariance.

A particle sampler targets the posterior of the discretised model: the chain of Gaussian steps
``x_s = m(x_t) + c_ts z`` it actually samples (``m`` the step's mean from ``x0_hat``, ``c_ts`` its noise).
Its twist should be that chain's ``p(y | x_t)``, not the continuous model's: with 100 DDPM steps the chain
adds much less noise after x_t than the continuous reverse process (``c_ts^2`` is the DDPM posterior
variance, which treats x0_hat as exact), and a twist built from Tweedie's ``Cov[x0 | x_t]`` is then too wide
near t = 0, which makes the weights degenerate for small or zero sigma_y.

For one direction in which the prior is Gaussian with precision ``pi`` (so ``Cov[x0 | x_t] = kappa_t =
1 / (pi + 1 / v_t)``, ``v_t = (1 - abar_t) / abar_t``), the chain is linear and Tweedie's estimate is a
martingale along it, so the noise of step j reaches x0 with the slope ``J_j = kappa_j / k_j`` of x0_hat at
its level (``k_j = (1 - abar_j) / sqrt(abar_j)``):

    Var_chain[x0 | x_t] = sum over the remaining steps j of J_j^2 c_j^2 + kappa_last,

the last term being the final transition (Tweedie's Gaussian at the last noisy level).  ``ChainVariances``
maps a Tweedie variance ``kappa_t`` to this (``pi`` read off ``kappa_t``; exact for a Gaussian prior, and
for a flat one (pi = 0) it is the chain's own ``sum c_j^2 / abar_j + v_last``).  A ``kappa_t`` above ``v_t``
(x_t between modes: the spread between them is not noise the chain removes) keeps the excess unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import SolverConfig


@dataclass(frozen=True)
class ChainVariances:
    """Per timestep of a run: ``v_t`` and the remaining steps' ``(v_j, k_j, c_j^2)`` (float64)."""

    timesteps: tuple[int, ...]
    v: dict
    rest: dict  # t -> (v_j, k_j, c2_j) tensors over the levels after t, down to the last noisy one

    @classmethod
    def of(cls, schedule, timesteps, cfg: SolverConfig, step_std) -> ChainVariances:
        """``step_std(abar_t, abar_s, cfg)``: the chain's noise std of the step t -> s."""
        ts = tuple(int(t) for t in timesteps)
        ab = {t: schedule.abar(t) for t in ts}
        v = {t: (1.0 - ab[t]) / ab[t] for t in ts}
        k = {t: (1.0 - ab[t]) / ab[t] ** 0.5 for t in ts}
        c2 = {s: step_std(ab[t], ab[s], cfg) ** 2 for t, s in zip(ts, ts[1:])}  # noise entering level s
        f64 = torch.float64
        rest = {}
        for i, t in enumerate(ts):
            after = ts[i + 1:]
            rest[t] = (torch.tensor([v[s] for s in after], dtype=f64), torch.tensor([k[s] for s in after], dtype=f64),
                       torch.tensor([c2[s] for s in after], dtype=f64))
        return cls(ts, v, rest)

    def chain_variance(self, t: int, kappa: torch.Tensor) -> torch.Tensor:
        """``Var_chain[x0 | x_t]`` for Tweedie variances ``kappa`` (any shape, x units, float64)."""
        kappa = kappa.to(torch.float64)
        v_t = self.v[t]
        v_j, k_j, c2_j = (a.to(kappa.device) for a in self.rest[t])
        pi = (1.0 / kappa.clamp(min=1e-300) - 1.0 / v_t).clamp(min=0.0)  # prior precision along the direction
        kappa_in = 1.0 / (pi + 1.0 / v_t)  # <= kappa: the part the chain resolves
        if v_j.numel() == 0:  # the last noisy level: the final transition is Tweedie's Gaussian itself
            return kappa
        kappa_j = 1.0 / (pi.unsqueeze(-1) + 1.0 / v_j)  # Tweedie variance at each later level
        w = ((kappa_j / k_j) ** 2 * c2_j).sum(-1) + kappa_j[..., -1]
        return w + (kappa - kappa_in)
