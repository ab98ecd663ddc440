"""How plausible each prompt is given the LR image: the particle solver's evidence, per prompt.

A particle solver (``tds``) estimates, for every sample, ``log Z_k`` with ``E[Z_k] = p(y | prompt)`` under the
model (docs/method.md, "Particle (SMC) sampling and the evidence").  Per prompt:

* ``log_z = logsumexp_k(log Z_k) - log K``: the unbiased combination of the K samples' estimates (nats; a
  density of y in [-1, 1] units, so only differences between prompts on the same y mean something);
* ``spread``: the standard deviation of the ``log Z_k`` (how far to trust ``log_z``; NaN, null in
  results.json, with fewer than two finite estimates);
* ``probability``: ``P(prompt | y) = pi_j Z_j / sum_i pi_i Z_i`` among the prompts *given* (prior ``pi``
  uniform unless the caller gives one): the model's belief about which of these descriptions explains y,
  not a probability over all descriptions;
* ``calibrated``: whether the run sampled the model's own ``p(x | prompt)`` (guidance scale 1, no CLIP
  guidance or embedding mixing); otherwise ``guidance`` names the options that tilted it and the numbers
  describe the guided sampler, not the model's belief.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch

from .errors import UsageError


@dataclass
class PromptEvidence:
    log_z: float
    log_z_samples: list[float]
    spread: float
    particles: int
    ess_min: float  # smallest ESS / N over the steps and samples of the evidence stage
    stage: str  # the cascade stage whose estimate it is (the first)
    calibrated: bool
    guidance: dict = field(default_factory=dict)
    prior: float | None = None
    probability: float | None = None

    def to_dict(self) -> dict:
        return {k: (_finite_or_none(v) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def _finite_or_none(v: float) -> float | None:
    return v if math.isfinite(v) else None


def combine(log_z_samples: torch.Tensor) -> tuple[float, float]:
    """``(logsumexp(log Z_k) - log K, std of the finite log Z_k)`` of per-sample estimates (the std is NaN
    for fewer than two finite values: one run has no spread)."""
    v = log_z_samples.detach().to("cpu", torch.float64).flatten()
    if v.numel() == 0:
        return float("nan"), float("nan")
    finite = v[torch.isfinite(v)]
    log_z = float(torch.logsumexp(v, 0)) - math.log(v.numel())
    spread = float(finite.std()) if finite.numel() > 1 else float("nan")
    return log_z, spread


def prompt_probabilities(log_z: Sequence[float], prior: Sequence[float] | None = None) -> list[float | None]:
    """``P(prompt_j | y) = pi_j Z_j / sum_i pi_i Z_i``; None for all when no prompt has a finite evidence."""
    n = len(log_z)
    pi = check_prior(prior, n)
    lz = torch.tensor([v if v is not None and not math.isnan(v) else -math.inf for v in log_z], dtype=torch.float64)
    logits = lz + torch.log(torch.tensor(pi, dtype=torch.float64))
    if not bool(torch.isfinite(logits).any()):
        return [None] * n
    return [float(p) for p in torch.softmax(logits, 0)]


def check_prior(prior: Sequence[float] | None, n: int) -> list[float]:
    """The prompts' prior probabilities (uniform when None), normalised; ``UsageError`` on bad input."""
    if prior is None:
        return [1.0 / n] * n
    try:
        vals = [float(p) for p in prior]
    except (TypeError, ValueError):
        raise UsageError(f"the prompt prior must be {n} numbers, got {prior!r}") from None
    if len(vals) != n:
        raise UsageError(f"the prompt prior has {len(vals)} values for {n} prompts; give one per prompt")
    if any(not math.isfinite(v) or v < 0 for v in vals) or max(vals) <= 0:
        raise UsageError(f"the prompt prior must be finite non-negative numbers, not all 0; got {list(prior)}")
    top = max(vals)  # scaled first: the sum of values near the float limit overflows (1e308 + 1e308 = inf)
    s = math.fsum(v / top for v in vals)
    return [v / top / s for v in vals]
