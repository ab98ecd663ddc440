"""Variance-preserving noise schedules, timestep spacing, time-travel and the DDPM posterior of a strided pair
(the diffusion steps themselves are in ``solvers.step``).

Notation follows docs/method.md ("Notation"): ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps``.
Timesteps are integer indices into ``alphas_cumprod`` (0 .. T-1); the index ``-1`` stands for the
clean image (``abar_{-1} = 1``), so the last step of every sampler is a step to ``t = -1``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

Spacing = Literal["uniform", "linspace", "leading", "trailing"]


@dataclass(frozen=True)
class NoiseSchedule:
    """A VP noise schedule given by ``alphas_cumprod`` (float64, length T >= 1, non-increasing, in (0, 1]).

    The last (noisiest) entry may be exactly 0: zero terminal SNR, the pure-noise level ``x_{T-1} = eps``
    of a rectified flow at ``s = 1`` (``textsr.flow``).  Only formulas that divide by ``sqrt(abar_t)`` are
    singular there; ``SolverConfig.starts_at_zero_snr`` says which solvers cannot take a step from it.
    """

    alphas_cumprod: tuple[float, ...]
    name: str = "custom"
    _abar: torch.Tensor = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        a = torch.tensor(self.alphas_cumprod, dtype=torch.float64)
        if a.ndim != 1 or len(a) < 1:
            raise ValueError("alphas_cumprod needs at least 1 entry")
        if not (bool(torch.all(a[:-1] > 0)) and bool(torch.all(a <= 1)) and bool(a[-1] >= 0)):
            raise ValueError("alphas_cumprod must lie in (0, 1] (only the last, noisiest entry may be 0)")
        if not torch.all(a[1:] <= a[:-1]):
            raise ValueError("alphas_cumprod must be non-increasing in t")
        object.__setattr__(self, "_abar", a)

    # -- constructors ---------------------------------------------------------------------------
    @classmethod
    def from_betas(cls, betas: Sequence[float] | torch.Tensor, name: str = "custom") -> NoiseSchedule:
        b = torch.as_tensor(betas, dtype=torch.float64)
        if torch.any(b <= 0) or torch.any(b >= 1):
            raise ValueError("betas must lie in (0, 1)")
        return cls(tuple(torch.cumprod(1.0 - b, 0).tolist()), name=name)

    @classmethod
    def from_alphas_cumprod(cls, abar: Sequence[float] | torch.Tensor, name: str = "custom") -> NoiseSchedule:
        return cls(tuple(torch.as_tensor(abar, dtype=torch.float64).tolist()), name=name)

    @classmethod
    def linear(cls, T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> NoiseSchedule:
        """DDPM's linear betas (Ho et al. 2020): the schedule of the MCGdiff/DDNM/DPS references."""
        if T < 2:
            raise ValueError(f"T must be >= 2, got {T}")
        return cls.from_betas(torch.linspace(beta_start, beta_end, T, dtype=torch.float64), name="linear")

    @classmethod
    def cosine(cls, T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> NoiseSchedule:
        """Nichol & Dhariwal's cosine schedule (``squaredcos_cap_v2`` in diffusers; DeepFloyd IF)."""
        f = lambda u: math.cos((u / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
        betas = [min(1 - f(i + 1) / f(i), max_beta) for i in range(T)]
        return cls.from_betas(betas, name="cosine")

    # -- queries --------------------------------------------------------------------------------
    @property
    def zero_terminal_snr(self) -> bool:
        """Whether the noisiest level is pure noise (``abar_{T-1} = 0``)."""
        return float(self._abar[-1]) == 0.0

    @property
    def T(self) -> int:
        return len(self.alphas_cumprod)

    def abar(self, t: int) -> float:
        """``abar_t`` as a Python float; ``t = -1`` is the clean image (1.0)."""
        if t == -1:
            return 1.0
        if not 0 <= t < self.T:
            raise ValueError(f"timestep {t} outside [0, {self.T - 1}]")
        return float(self.alphas_cumprod[t])  # no tensor op: works under fake tensors too

    def timesteps(self, steps: int, spacing: Spacing = "uniform", t_start: int | None = None) -> list[int]:
        """``steps`` decreasing timesteps from ``t_start`` (default T-1) toward 0.

        With ``n = t_start + 1``: ``uniform``: on the whole schedule DDIM's ``range(0, T, T // steps)``
        reversed (990, 980, ..., 0 for 100 of 1000; = ``leading``); from a later ``t_start``, ``floor(i n /
        steps)`` for ``i < steps``, reversed: the same grid whenever ``steps`` divides ``n``, and otherwise
        still a first timestep within one stride ``n / steps`` of ``t_start`` (an integer stride
        ``n // steps`` would start up to ``steps`` strides lower: 498 instead of ~599 for 250 steps from
        599); ``leading``: diffusers' integer stride ``n // steps``; ``trailing``: diffusers' spacing
        anchored at ``t_start``; ``linspace``: evenly spaced including both ends.
        """
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be a positive integer, got {steps!r}")
        top = self.T - 1 if t_start is None else int(t_start)
        if not 0 <= top < self.T:
            raise ValueError(f"t_start {t_start} outside [0, {self.T - 1}]")
        if steps > top + 1:
            raise ValueError(f"cannot take {steps} distinct steps from t={top}; use at most {top + 1}")
        n = top + 1
        if spacing == "linspace":
            ts = torch.linspace(top, 0, steps, dtype=torch.float64).round().long().tolist()
        elif spacing == "uniform" and top == self.T - 1:
            # DDIM / DDNM reference: range(0, T, T // steps), e.g. 990, 980, ..., 0 for 100 of 1000
            ts = [i * (n // steps) for i in range(steps)][::-1]
        elif spacing == "uniform":  # a late start: the first timestep within one stride n / steps of t_start
            ts = [i * n // steps for i in range(steps)][::-1]
        elif spacing == "leading":
            stride = n // steps
            ts = [i * stride for i in range(steps)][::-1]
        elif spacing == "trailing":
            ts = [round(top + 1 - i * n / steps) - 1 for i in range(steps)]
        else:
            raise ValueError(f"unknown spacing {spacing!r}; choose uniform, linspace, leading or trailing")
        ts = sorted(set(int(t) for t in ts), reverse=True)
        if len(ts) != steps:
            raise ValueError(f"spacing {spacing!r} gives duplicate timesteps for {steps} steps from t={top}")
        return ts


def travel_schedule(timesteps: Sequence[int], length: int = 1, repeat: int = 1) -> list[tuple[int, int]]:
    """Transitions ``(t, t_next)`` over ``timesteps + [-1]`` with RePaint/DDNM time-travel.

    Every ``length`` steps the sampler jumps back ``length`` steps (``t_next > t``: re-noise), so
    each block is traversed ``repeat`` times in all; ``repeat = 1`` switches time-travel off.
    """
    if length < 1:
        raise ValueError(f"travel length must be >= 1, got {length}")
    if repeat < 1:
        raise ValueError(f"travel repeat must be >= 1 (1 = off), got {repeat}")
    ts = list(timesteps) + [-1]
    n = len(ts) - 1
    jumps = {j: repeat - 1 for j in range(length, n, length)} if repeat > 1 else {}
    out: list[tuple[int, int]] = []
    i = 0
    while i < n:
        if jumps.get(i, 0) > 0:
            jumps[i] -= 1
            out.append((ts[i], ts[i - length]))
            i -= length
            continue
        out.append((ts[i], ts[i + 1]))
        i += 1
    return out


@dataclass(frozen=True)
class DDPMPosterior:
    """``q(x_s | x_t, x0) = N(c0 x0 + ct x_t, beta_tilde I)`` for the strided pair ``t -> s`` (Ho et al. 2020,
    eq. 6-7, with ``alpha = abar_t / abar_s`` in place of the one-step ``alpha_t``).

    ``beta = 1 - abar_t / abar_s`` is the pair's forward variance and ``beta_tilde = (1 - abar_s) /
    (1 - abar_t) beta`` the posterior's; a model with learned variance interpolates between them in the
    log domain (``variance``).  ``s = -1`` (the clean image) gives ``c0 = 1``, ``ct = 0``, no variance.
    """

    c0: float
    ct: float
    beta: float
    beta_tilde: float

    def variance(self, v: torch.Tensor | float | None = None) -> torch.Tensor | float:
        """The step's variance: ``beta_tilde`` (``v=None``), or IF's learned range
        ``exp(v log beta + (1 - v) log beta_tilde)`` for the model output mapped to ``v in [0, 1]``."""
        if v is None:
            return self.beta_tilde
        if self.beta_tilde <= 0.0:
            return torch.zeros_like(v) if torch.is_tensor(v) else 0.0
        lb, lbt = math.log(self.beta), math.log(self.beta_tilde)
        if torch.is_tensor(v):
            return torch.exp(v * lb + (1.0 - v) * lbt)
        return math.exp(v * lb + (1.0 - v) * lbt)


def ddpm_posterior(abar_t: float, abar_s: float) -> DDPMPosterior:
    """Coefficients of ``q(x_s | x_t, x0)`` for ``abar_s >= abar_t`` (``abar_s = 1``: the final step).

    ``abar_t = 0`` (pure noise, zero terminal SNR) is the exact limit: ``x_t`` carries nothing about x0, so
    ``ct = 0``, ``c0 = sqrt(abar_s)`` and ``beta_tilde = 1 - abar_s`` (the marginal of ``x_s``)."""
    if not 0.0 <= abar_t < 1.0 or not abar_t <= abar_s <= 1.0 or abar_s == 0.0:
        raise ValueError(f"need 0 <= abar_t < 1 and abar_t <= abar_s <= 1 (abar_s > 0), got abar_t={abar_t}, "
                         f"abar_s={abar_s}")
    alpha = abar_t / abar_s
    beta = 1.0 - alpha
    c0 = math.sqrt(abar_s) * beta / (1.0 - abar_t)
    ct = math.sqrt(alpha) * (1.0 - abar_s) / (1.0 - abar_t)
    return DDPMPosterior(c0=c0, ct=ct, beta=beta, beta_tilde=(1.0 - abar_s) / (1.0 - abar_t) * beta)
