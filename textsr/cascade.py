"""Multi-stage (cascaded) sampling: every stage runs a solver against the *same* LR image ``y`` with
its own operator (docs/method.md, "Cascades").

For a final size H x W and a stage whose output is ``H/d x W/d`` the stage operator is the
downsampler by ``scale / d`` (identity when that is 1).  A stage may condition on the previous
stage's output (upsampled and noise-augmented, as DeepFloyd IF's stage II expects); how is the
stage's business, through its ``condition`` callable.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .denoiser import Denoiser
from .operators import AvgPool, LinearOperator
from .solvers import Noise, Problem, SolverConfig, StepInfo, sample

OperatorFactory = Callable[[int, tuple[int, int, int]], LinearOperator]


def default_operator(factor: int, shape: tuple[int, int, int]) -> LinearOperator:
    return AvgPool(factor, shape)


@dataclass
class Stage:
    """One stage of a cascade.

    name: label for progress and results; denoiser: this stage's Denoiser; divisor: the stage works at
    (H / divisor, W / divisor) of the final size; channels: image channels at this stage;
    condition: ``(cond, previous_output_or_None, noise) -> stage cond`` (default: pass ``cond``);
    solver: this stage's solver config (None: use the one given to ``run_cascade``);
    bind: optional ``(operator, y) -> (denoiser, operator)``, called once per run with this stage's
    operator and ``y`` before sampling; a stage that needs them returns the Denoiser and the operator
    the solver should use (a latent stage wraps the pixel operator in a latent adapter and projects
    decoded estimates onto ``A x = y``; CLIP guidance projects its gradient onto A's null space;
    unCLIP mixes in the CLIP embedding of the upsampled ``y``).
    """

    name: str
    denoiser: Denoiser
    divisor: int = 1
    channels: int = 3
    condition: Callable[[Any, torch.Tensor | None, Noise], Any] | None = None
    solver: SolverConfig | None = None
    extra: dict = field(default_factory=dict)
    bind: Callable[[LinearOperator, torch.Tensor], tuple[Denoiser, LinearOperator]] | None = None


@dataclass
class CascadeResult:
    """Samples, each stage's output and operator, and, for particle solvers, each stage's log Z_hat.

    What the evidence of a cascade is: stage I models the low-resolution content that y is made of
    (``y = A_s x = A_{s/d} M x`` when the operators compose, as average pooling does), so stage I's
    ``Z_hat`` estimates ``p(y | cond)`` of the whole cascade (exactly so when stage I's distribution is the
    final distribution pushed through M, as in an exact cascade; checked against
    ``gaussian_mixture.cascade_log_evidence``).  A later stage's ``Z_hat`` estimates
    ``p(y | previous stage's output)`` under that stage's conditional model: how well the stage can
    explain y given what stage I chose (in an exact cascade without noise augmentation it is just the
    likelihood ``N(y; A_{s/d} x_lo, sigma_y^2 I)`` of the stage-I sample, because stage II keeps ``M x = x_lo``).
    Multiplying the stages' Z_hat counts y twice: it is not an evidence.  ``log_evidence`` is stage I's.
    """

    x: torch.Tensor
    stage_outputs: list[torch.Tensor]
    operators: list[LinearOperator]
    #: steps of each stage's grid (the schedule may clamp a request; TDS visits all but the grid's t = 0)
    steps: list[int] = field(default_factory=list)
    stage_log_evidence: list[torch.Tensor | None] = field(default_factory=list)
    stage_ess: list[torch.Tensor | None] = field(default_factory=list)  # particle solvers: (timesteps visited + 1, B)

    @property
    def log_evidence(self) -> torch.Tensor | None:
        """Per-sample ``log Z_hat`` of ``p(y | cond)``: the first stage's (None without particles)."""
        return self.stage_log_evidence[0] if self.stage_log_evidence else None


def stage_seeds(seeds: Sequence[int], stage_index: int) -> list[int]:
    """Independent, reproducible seeds per stage derived from the per-sample seeds."""
    return [int(s) * 1_000_003 + 7919 * stage_index for s in seeds] if stage_index else [int(s) for s in seeds]


def run_cascade(
    stages: Sequence[Stage],
    y: torch.Tensor,
    scale: int,
    solver: SolverConfig,
    seeds: Sequence[int],
    cond: Any = None,
    *,
    sigma_y: float = 0.0,
    operator: OperatorFactory = default_operator,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    callback: Callable[[StepInfo], None] | None = None,
    max_rows: int | None = None,
) -> CascadeResult:
    """Sample ``len(seeds)`` images whose final stage output downsamples (by ``scale``) to ``y``; a particle
    solver's denoiser calls take at most ``max_rows`` particles each (``solvers.sample``)."""
    if not stages:
        raise ValueError("a cascade needs at least one stage")
    _, _, h, w = y.shape
    H, W = h * scale, w * scale
    prev: torch.Tensor | None = None
    outputs, ops, steps, evidence, ess = [], [], [], [], []
    for k, st in enumerate(stages):
        if scale % st.divisor:
            raise ValueError(
                f"stage {st.name!r} works at 1/{st.divisor} of the output size, which needs a scale "
                f"divisible by {st.divisor}; got scale {scale}"
            )
        shape = (st.channels, H // st.divisor, W // st.divisor)
        op = operator(scale // st.divisor, shape)
        den = st.denoiser
        if st.bind is not None:
            den, op = st.bind(op, y)
        noise = Noise.from_seeds(stage_seeds(seeds, k), device=device, dtype=dtype)
        stage_cond = st.condition(cond, prev, noise) if st.condition is not None else cond
        res = sample(den, Problem(op, y, sigma_y), st.solver or solver, noise, stage_cond,
                     callback=callback, stage=st.name, max_rows=max_rows)
        prev = res.x
        outputs.append(res.x)
        ops.append(op)
        steps.append(res.grid_steps)
        evidence.append(res.log_evidence)
        ess.append(None if res.ess is None else res.ess / res.particles)
    assert prev is not None  # stages is not empty
    return CascadeResult(x=prev, stage_outputs=outputs, operators=ops, steps=steps, stage_log_evidence=evidence,
                         stage_ess=ess)
