"""Shared pieces of every solver: the problem, per-sample noise, the base config and step results."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Literal

import torch

from ..denoiser import Denoiser
from ..operators import LinearOperator
from ..schedule import Spacing
from ..validate import MAX_TRAVEL_REPEAT

StepKind = Literal["ddnm", "ddim", "ddpm"]
STEP_KINDS = ("ddnm", "ddim", "ddpm")


@dataclass(frozen=True)
class Problem:
    """``y = A x + sigma_y n``; ``sigma_y`` in [-1, 1] image units (half of a [0, 1]-units value)."""

    operator: LinearOperator
    y: torch.Tensor
    sigma_y: float = 0.0

    def __post_init__(self) -> None:
        if not math.isfinite(self.sigma_y) or self.sigma_y < 0:
            raise ValueError(f"sigma_y must be a finite number >= 0, got {self.sigma_y}")
        if tuple(self.y.shape[1:]) != tuple(self.operator.out_shape):
            raise ValueError(
                f"measurement y has shape {tuple(self.y.shape)}, operator expects (B, "
                f"{', '.join(map(str, self.operator.out_shape))})"
            )


class Noise:
    """Per-sample Gaussian noise: item k is drawn from ``generators[k]`` alone (on CPU), so a batch
    item equals the same seed run alone, on any device."""

    def __init__(self, generators: Sequence[torch.Generator], device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32):
        if len(generators) == 0:
            raise ValueError("need at least one generator (one per sample)")
        self.generators = list(generators)
        self.device = torch.device(device)
        self.dtype = dtype

    @classmethod
    def from_seeds(cls, seeds: Sequence[int], device: torch.device | str = "cpu",
                   dtype: torch.dtype = torch.float32) -> Noise:
        return cls([torch.Generator().manual_seed(int(s)) for s in seeds], device, dtype)

    @classmethod
    def batched(cls, seed: int, n: int, device: torch.device | str = "cpu",
                dtype: torch.dtype = torch.float32) -> Noise:
        """One generator for the whole batch: faster for thousands of samples (benchmarks), but item k
        then depends on the batch size (no per-sample reproducibility)."""
        obj = cls([torch.Generator().manual_seed(int(seed))], device, dtype)
        obj._n = int(n)
        return obj

    _n: int | None = None

    def __len__(self) -> int:
        return self._n if self._n is not None else len(self.generators)

    def randn(self, shape: Sequence[int]) -> torch.Tensor:
        draw_dtype = torch.float64 if self.dtype == torch.float64 else torch.float32
        if self._n is not None:
            z = torch.randn((self._n, *shape), generator=self.generators[0], dtype=draw_dtype)
        else:
            z = torch.stack([torch.randn(tuple(shape), generator=g, dtype=draw_dtype) for g in self.generators])
        return z.to(device=self.device, dtype=self.dtype)

    def like(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != len(self):
            raise ValueError(f"batch of {x.shape[0]} but noise for {len(self)} samples")
        return self.randn(x.shape[1:])

    @property
    def systems(self) -> int:
        """Independent samples (one generator each, or the batched count)."""
        return self._n if self._n is not None else len(self.generators)

    def uniform(self) -> torch.Tensor:
        """One U[0, 1) draw per sample, ``(systems,)`` float64 on CPU: item k from generator k."""
        if self._n is not None:
            return torch.rand(self._n, generator=self.generators[0], dtype=torch.float64)
        return torch.stack([torch.rand((), generator=g, dtype=torch.float64) for g in self.generators])

    def particles(self, n: int) -> ParticleNoise:
        """A view drawing ``n`` particles per sample: rows ``k n .. k n + n - 1`` from generator k."""
        return ParticleNoise(self, n)


class ParticleNoise(Noise):
    """``Noise`` for ``systems x n`` particles: ``randn(shape)`` is ``(systems * n, *shape)`` and the
    block of sample k is one ``(n, *shape)`` draw from generator k (so sample k's particle system
    depends on its own seed only; a batch item equals the same seed run alone)."""

    def __init__(self, base: Noise, n: int):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"particles must be a positive integer, got {n!r}")
        super().__init__(base.generators, base.device, base.dtype)
        self._n = base._n
        self.n_particles = n

    def __len__(self) -> int:
        return self.systems * self.n_particles

    def randn(self, shape: Sequence[int]) -> torch.Tensor:
        draw_dtype = torch.float64 if self.dtype == torch.float64 else torch.float32
        n = self.n_particles
        if self._n is not None:
            z = torch.randn((self._n * n, *shape), generator=self.generators[0], dtype=draw_dtype)
        else:
            z = torch.cat([torch.randn((n, *shape), generator=g, dtype=draw_dtype) for g in self.generators])
        return z.to(device=self.device, dtype=self.dtype)


@dataclass(frozen=True)
class SolverConfig:
    """Settings shared by every solver.

    steps: number of denoising steps; spacing: timestep spacing (see NoiseSchedule.timesteps);
    step_kind: the diffusion step (``solvers.step``): ``"ddnm"`` (x_s = sqrt(abar_s) x0 + sqrt(1-abar_s)
    (eta z + sqrt(1-eta^2) eps)), ``"ddim"`` (Song et al.'s eta; 1 = DDPM ancestral) or ``"ddpm"``
    (the DDPM posterior q(x_s | x_t, x0) of the strided pair with the model's learned variance when it
    has one, else beta_tilde; the DDNM paper's Algorithm 1 and IF's own sampler);
    eta: stochasticity of the ``ddnm``/``ddim`` steps (the ``ddpm`` step does not use it: its noise is
    the posterior's own);
    travel_length / travel_repeat: time-travel (repeat = 1 is off);
    start: fraction of the schedule where sampling starts: the first timestep is within one grid stride
    below ``start * T`` (1.0 = from the top of the grid), and ``steps`` steps run from there to 0;
    skip: the paper code's form of a late start: lay ``steps`` steps on the full schedule and drop the
    first ``skip`` of them (steps = 250, skip = 100: 150 steps from t = 596); not with ``start < 1``;
    init: ``"noise"`` (x = z) or ``"pinv"`` (x = sqrt(abar) A+ y + sqrt(1 - abar) z at the first
    timestep, the SDEdit-style warm start).
    """

    steps: int = 100
    eta: float = 0.85
    step_kind: StepKind = "ddnm"
    spacing: Spacing = "uniform"
    travel_length: int = 1
    travel_repeat: int = 1
    start: float = 1.0
    skip: int = 0
    init: Literal["noise", "pinv"] = "noise"

    # -- what the solver is and needs (class-level; backends and the CLI derive compatibility from it)
    name: ClassVar[str] = "base"  # the registry name
    needs_grad: ClassVar[bool] = False  # differentiates through the denoiser (DPS, PiGDM)
    needs_svd: ClassVar[bool] = False  # always needs A's singular values (operator.spectral): PiGDM
    projects: ClassVar[bool] = False  # projects x0_hat onto A x = y itself (DDNM family)
    #: particle (SMC) solvers (TDS): the config has ``particles`` and ``resample_threshold(m)`` and the registered
    #: step is a ``ParticleKernel`` (``textsr.solvers.smc``); the loop then keeps weights and the evidence
    takes_particles: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"steps must be a positive integer, got {self.steps!r}")
        if not 0.0 <= self.eta <= 1.0:
            raise ValueError(f"eta must lie in [0, 1], got {self.eta}")
        if self.step_kind not in STEP_KINDS:
            raise ValueError(f"step_kind must be one of {', '.join(map(repr, STEP_KINDS))}, got {self.step_kind!r}")
        if self.travel_length < 1 or not 1 <= self.travel_repeat <= MAX_TRAVEL_REPEAT:
            raise ValueError(f"travel_length must be >= 1 and travel_repeat from 1 (off) to {MAX_TRAVEL_REPEAT} "
                             f"(the work grows R-fold); got {self.travel_length}, {self.travel_repeat}")
        if not 0.0 < self.start <= 1.0:
            raise ValueError(f"start must lie in (0, 1], got {self.start}")
        if isinstance(self.skip, bool) or not isinstance(self.skip, int) or not 0 <= self.skip < self.steps:
            raise ValueError(f"skip (steps of the full grid dropped at the start) must be an integer in "
                             f"[0, steps) = [0, {self.steps}), got {self.skip!r}")
        if self.skip and self.start < 1.0:
            raise ValueError("give a late start either as start (a fraction of the schedule) or as skip (grid "
                             "steps dropped), not both")
        if self.init not in ("noise", "pinv"):
            raise ValueError(f"init must be 'noise' or 'pinv', got {self.init!r}")

    def starts_at_zero_snr(self) -> bool:
        """Whether this solver can take a step from a pure-noise level (``abar_t = 0``: a rectified flow's
        ``s = 1``).  Steps built on Tweedie's gain ``(1 - abar_t) / sqrt(abar_t)`` cannot (there ``x_t``
        carries nothing about x0 and the gain is infinite): the particle twists; a flow grid starts such
        solvers at its first level below pure noise (``textsr.flow.FlowSchedule.for_solver``)."""
        return not self.takes_particles

    def trim_timesteps(self, ts: list[int]) -> list[int]:
        """The timesteps this solver visits out of the grid ``ts`` (all of them; particle solvers may end early)."""
        return ts

    def replace(self, **changes: Any) -> SolverConfig:
        known = {f.name for f in fields(self)}
        unknown = set(changes) - known
        if unknown:
            raise ValueError(f"unknown option(s) {sorted(unknown)} for solver {self.name!r}; known: {sorted(known)}")
        return type(self)(**{**{f.name: getattr(self, f.name) for f in fields(self)}, **changes})

    def to_dict(self) -> dict:
        return {"solver": self.name, **{f.name: getattr(self, f.name) for f in fields(self)}}


@dataclass
class StepResult:
    x_next: torch.Tensor  # x_s
    x0_hat: torch.Tensor  # the denoiser's estimate at t
    x0: torch.Tensor  # the solver's corrected clean estimate (used for time-travel re-noising)
    # particle solvers only: the incremental log-weight of each particle (float64) and the solver's
    # per-particle state carried to the next step (resampled with the particles)
    log_weight: torch.Tensor | None = None
    state: Any = None


@dataclass
class StepInfo:
    """What the step callback sees (progress bars, previews)."""

    stage: str
    index: int
    total: int
    t: int
    t_next: int
    x: torch.Tensor
    x0: torch.Tensor
    #: particle solvers: effective sample size of each sample's particle system after this step's
    #: reweighting (before resampling), ``(B,)``; None for the other solvers
    ess: torch.Tensor | None = None
    particles: int = 1


StepCallback = Callable[[StepInfo], None]

StepFn = Callable[[Denoiser, Problem, torch.Tensor, int, int, Any, Any, Noise], StepResult]
