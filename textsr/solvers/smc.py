"""Shared particle (SMC) machinery for the one sampling loop
(docs/method.md, "Particle (SMC) sampling and the evidence").

B samples, each its own system of N particles, are stored flat as ``B * N`` rows (rows ``k N .. k N + N - 1``
belong to sample k).  ``ParticleSystem`` keeps, per sample, the log-weights (float64, log domain throughout),
the running evidence estimate and the ESS; it resamples (systematic) a system whose ESS falls below
``threshold * N`` and at the end draws the output particle from the final weights.  Every random number of
system k comes from generator k (``Noise.uniform``), one uniform per step whether or not it resamples, so
a batch item equals the same seed run alone.

Evidence: with incremental weights ``w_j`` the estimate is ``log Z_hat = sum over steps of
log(sum_j W_j w_j / sum_j W_j)`` where ``W`` are the weights accumulated since the last resampling (all 1
right after it).  This telescopes to "sum over resampling epochs of log(mean of the epoch's weights)",
the standard unbiased estimator of Z (Del Moral 2004): ``E[Z_hat] = Z``, while ``log Z_hat`` is biased low
by about half its variance.

``ParticleKernel``: what a particle solver registers instead of a plain step function: ``init`` gives
the initial log-weights and per-particle state at ``x_T``; ``__call__`` is the step with that state.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Protocol

import torch

from ..denoiser import Denoiser
from .base import Noise, Problem, SolverConfig, StepResult


# ------------------------------------------------------------------------------------------------
# weights
# ------------------------------------------------------------------------------------------------
def log_ess(log_w: torch.Tensor) -> torch.Tensor:
    """``log ESS = 2 logsumexp(log w) - logsumexp(2 log w)`` over the last axis (any normalisation)."""
    return 2 * torch.logsumexp(log_w, -1) - torch.logsumexp(2 * log_w, -1)


def ess(log_w: torch.Tensor) -> torch.Tensor:
    """Effective sample size ``(sum w)^2 / sum w^2`` per row of ``log_w`` (between 1 and N)."""
    return log_ess(log_w).exp()


def systematic_resample(weights: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Systematic resampling: ``N`` indices per row of normalised ``weights`` ``(R, N)`` with one uniform
    ``u`` ``(R,)`` per row: particle i is picked at the positions ``(u + j) / N`` that fall in its slice
    ``[c_{i-1}, c_i)`` of the cumulative weights, so it gets ``floor`` or ``ceil`` of ``N w_i`` copies and
    exactly ``N w_i`` in expectation over ``u``."""
    R, N = weights.shape
    cdf = torch.cumsum(weights.to(torch.float64), -1)
    cdf = cdf / cdf[:, -1:]
    pos = (u.to(torch.float64).reshape(R, 1) + torch.arange(N, dtype=torch.float64)) / N
    idx = torch.searchsorted(cdf, pos, right=True)
    return idx.clamp(max=N - 1)


class ParticleSystem:
    """Log-weights, evidence and ESS of ``B`` independent systems of ``N`` particles (see module doc)."""

    def __init__(self, B: int, N: int, threshold: float, noise: Noise):
        self.B, self.N, self.threshold = B, N, float(threshold)
        self.noise = noise
        self.log_w = torch.zeros(B, N, dtype=torch.float64)
        self.log_z = torch.zeros(B, dtype=torch.float64)
        self.ess_history: list[torch.Tensor] = []
        self.resamples = torch.zeros(B, dtype=torch.long)

    def reweight(self, log_inc: torch.Tensor) -> torch.Tensor:
        """Multiply in incremental weights ``(B * N,)``; returns the ESS ``(B,)`` after it.  A NaN
        increment (a failed model evaluation) counts as weight 0; a system whose weights are all 0 gets
        ``log Z = -inf`` and continues with uniform weights."""
        inc = log_inc.detach().to("cpu", torch.float64).reshape(self.B, self.N)
        inc = torch.where(torch.isnan(inc), torch.full_like(inc, -math.inf), inc)
        old = torch.logsumexp(self.log_w, -1)
        new_w = self.log_w + inc
        new = torch.logsumexp(new_w, -1)
        self.log_z = self.log_z + (new - old)  # log of the weighted mean of the increments
        dead = ~torch.isfinite(new)
        if bool(dead.any()):
            new_w[dead] = 0.0
        self.log_w = new_w - new.where(~dead, torch.zeros_like(new)).unsqueeze(-1)  # keep them O(1)
        e = ess(self.log_w)
        self.ess_history.append(e)
        return e

    def resample(self) -> torch.Tensor | None:
        """Systematic resampling of the systems whose ESS is below ``threshold * N``; returns the flat
        row indices ``(B * N,)`` to gather the particles with (None when no system resamples).  One
        uniform per system is drawn every call (from its own generator), used or not."""
        u = self.noise.uniform()
        need = ess(self.log_w) < self.threshold * self.N
        if not bool(need.any()):
            return None
        w = torch.softmax(self.log_w, -1)
        idx = torch.arange(self.N).expand(self.B, self.N).clone()
        idx[need] = systematic_resample(w[need], u[need])
        self.log_w[need] = 0.0
        self.resamples += need.long()
        return (idx + self.N * torch.arange(self.B).unsqueeze(-1)).reshape(-1)

    def draw(self) -> torch.Tensor:
        """One particle per system from the final weights (inverse CDF at one uniform from generator k);
        flat row indices ``(B,)``."""
        u = self.noise.uniform()
        cdf = torch.cumsum(torch.softmax(self.log_w, -1), -1)
        k = torch.searchsorted(cdf / cdf[:, -1:], u.reshape(-1, 1), right=True).reshape(-1).clamp(max=self.N - 1)
        return k + self.N * torch.arange(self.B)

    def best(self) -> torch.Tensor:
        """Flat index of each system's heaviest particle ``(B,)`` (previews)."""
        return self.log_w.argmax(-1) + self.N * torch.arange(self.B)


# ------------------------------------------------------------------------------------------------
# per-particle bookkeeping of arbitrary state and conditioning
# ------------------------------------------------------------------------------------------------
def take(obj: Any, idx: torch.Tensor, rows: int) -> Any:
    """Gather rows ``idx`` of every tensor with ``rows`` leading rows inside ``obj`` (tensors, dataclasses,
    lists, tuples, dicts); anything else is returned unchanged, and so is a dataclass field marked
    ``metadata={"shared": True}`` (run-wide data, e.g. a particle solver's plan)."""
    if isinstance(obj, torch.Tensor):
        return obj[idx.to(obj.device)] if obj.ndim and obj.shape[0] == rows else obj
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(obj, **{f.name: take(getattr(obj, f.name), idx, rows)
                                           for f in dataclasses.fields(obj) if f.init and not f.metadata.get("shared")})
    if isinstance(obj, (list, tuple)):
        return type(obj)(take(v, idx, rows) for v in obj)
    if isinstance(obj, dict):
        return {k: take(v, idx, rows) for k, v in obj.items()}
    return obj


def repeat_cond(cond: Any, B: int, N: int) -> Any:
    """The conditioning of B samples for their ``B * N`` particles: every per-sample part (a tensor with
    B rows, a ``repeat_interleave``-able object such as a Gaussian-mixture ``MixtureBatch`` of batch B, a
    list of B per-item conditions) has each row repeated N times; shared parts (batch-1 tensors when
    B > 1, strings, numbers) are kept.  Dataclass conditions (IF's ``IFSRCond``, unCLIP's ``DecoderCond``,
    ``GuidedCond`` ...) are rebuilt field by field.  With ``B = 1`` a batch-1 tensor is expanded (a view)."""
    if N == 1 or cond is None:
        return cond
    if isinstance(cond, torch.Tensor):
        if cond.ndim == 0 or cond.shape[0] != B:
            return cond
        return cond.expand(N, *cond.shape[1:]) if B == 1 else cond.repeat_interleave(N, 0)
    rep = getattr(cond, "repeat_interleave", None)
    if callable(rep) and not isinstance(cond, type):
        batch = getattr(cond, "batch", None)
        return rep(N) if batch == B and batch is not None else cond
    if dataclasses.is_dataclass(cond) and not isinstance(cond, type):
        return dataclasses.replace(cond, **{f.name: repeat_cond(getattr(cond, f.name), B, N)
                                            for f in dataclasses.fields(cond) if f.init})
    if isinstance(cond, list) and len(cond) == B and not all(isinstance(c, str) for c in cond):
        return [c for c in cond for _ in range(N)]
    return cond


# ------------------------------------------------------------------------------------------------
# what a particle solver registers
# ------------------------------------------------------------------------------------------------
class ParticleKernel(Protocol):
    """A particle solver's steps over flat ``(B * N, ...)`` particles; the loop owns the weights."""

    def init(self, den: Denoiser, problem: Problem, x_T: torch.Tensor, timesteps: list[int], cond: Any,
             cfg: SolverConfig, noise: Noise, max_rows: int | None = None) -> tuple[torch.Tensor, Any]:
        """``(initial log-weights (B * N,), state)`` at the first of ``timesteps`` (the run's steps); the
        denoiser is to see at most ``max_rows`` particles per call (None: all)."""

    def __call__(self, den: Denoiser, problem: Problem, x_t: torch.Tensor, t: int, t_next: int, cond: Any,
                 cfg: SolverConfig, noise: Noise, state: Any) -> StepResult:
        """One step; ``StepResult.log_weight`` the incremental log-weights, ``.state`` the new state."""
