"""What a particle run asks of the machine, known before any work: the particles it holds at once, the memory of
their state and the denoiser evaluations it needs.  ``explore`` and ``rank`` refuse a request whose particle
state cannot fit (``check_particle_memory``); a front end (the web app) caps a request's work with
``textsr.api.request_budget(request)``, which returns this module's ``ParticleRequest`` for it.

A particle run of ``samples`` samples in batches of ``batch_size`` holds ``batch_size x particles`` particles
at once, each with a few image-sized tensors (``STATE_TENSORS``: x_t, Tweedie's estimate, eps, the twist's
gradient, the proposal's temporaries); the denoiser sees at most ``max_rows`` of them per call
(``sample(..., max_rows=...)``): the batch size when the caller gives one (a plain run of ``batch_size``
samples puts as many images through the model at once), else ``DEFAULT_ROWS``, so the model's own
activations do not grow with the number of particles.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..tiling.memory import available_memory  # free device memory, or the host's MemAvailable

STATE_TENSORS = 10  # image-sized float tensors per particle, the step's temporaries included (measured: 7-9)
MEMORY_SHARE = 0.5  # a request may hold at most this share of the memory available when it starts
DEFAULT_ROWS = 64  # particles per denoiser call when no batch size is given (fewer cost more calls)


@dataclass(frozen=True)
class ParticleRequest:
    """A particle run's size: ``samples`` per prompt in batches of ``batch_size``, ``particles`` each, over
    stages of ``shapes`` (C, H, W) with ``steps`` each, values of ``value_bytes`` bytes."""

    samples: int
    particles: int
    batch_size: int
    shapes: tuple[tuple[int, ...], ...]
    steps: tuple[int, ...]
    value_bytes: int = 8
    max_rows: int = DEFAULT_ROWS  # particles per denoiser call
    prompts: int = 1

    @property
    def held(self) -> int:
        """Particles held at once (one batch of samples)."""
        return min(self.batch_size, self.samples) * self.particles

    @property
    def state_bytes(self) -> int:
        """Memory of the particles' state at the largest stage (the model's activations come on top: those of
        ``max_rows`` images)."""
        return self.held * max(math.prod(s) for s in self.shapes) * self.value_bytes * STATE_TENSORS

    @property
    def denoiser_evaluations(self) -> int:
        """Images through the denoiser per prompt: samples x particles x steps, summed over the stages (each
        with its twist's backward passes on top)."""
        return self.samples * self.particles * sum(self.steps)

    @property
    def total_evaluations(self) -> int:
        """``denoiser_evaluations`` over every prompt of the run."""
        return self.prompts * self.denoiser_evaluations


def particle_request(samples: int, particles: int, shapes: Sequence[Sequence[int]], steps: Sequence[int],
                     batch_size: int | None = None, value_bytes: int = 8, prompts: int = 1) -> ParticleRequest:
    """The size of a particle run (see ``ParticleRequest``); ``batch_size`` None: all samples at once, and
    ``DEFAULT_ROWS`` particles per denoiser call (the batch size when given)."""
    held = min(int(batch_size or samples), int(samples)) * int(particles)
    rows = int(batch_size) if batch_size else min(DEFAULT_ROWS, held)
    return ParticleRequest(int(samples), int(particles), int(batch_size or samples),
                           tuple(tuple(int(v) for v in s) for s in shapes), tuple(int(v) for v in steps),
                           int(value_bytes), max(1, rows), int(prompts))


def stages_request(stages: Sequence[Any], base_cfg: Any, lr_hw: tuple[int, int], scale: int, samples: int,
                   batch_size: int | None, value_bytes: int, prompts: int = 1) -> ParticleRequest:
    """The ``ParticleRequest`` of a cascade (``cascade.Stage``s: ``channels``, ``divisor``, ``solver``) run on an
    LR image of ``lr_hw`` at ``scale``; a stage without its own solver config uses ``base_cfg``."""
    h, w = lr_hw
    shapes = [(st.channels, h * scale // st.divisor, w * scale // st.divisor) for st in stages]
    cfgs = [st.solver or base_cfg for st in stages]
    particles = max(getattr(c, "particles", None) or 1 for c in cfgs)  # 1: a solver without particles
    return particle_request(samples, particles, shapes, [c.steps for c in cfgs], batch_size, value_bytes, prompts)


def _gb(n: float) -> str:
    return f"{n / 2**30:,.1f} GB" if n >= 2**30 else f"{n / 2**20:,.0f} MB"


def check_particle_memory(req: ParticleRequest, device, available: int | None = None) -> None:
    """``UsageError`` naming what to lower when the particles' state would take more than ``MEMORY_SHARE`` of
    the memory available on ``device`` (``available`` overrides the reading); nothing when it fits or the
    memory cannot be read."""
    import torch

    from ..errors import UsageError

    free = available if available is not None else available_memory(torch.device(device))
    if free is None or req.state_bytes <= MEMORY_SHARE * free:
        return
    per_particle = max(math.prod(s) for s in req.shapes) * req.value_bytes * STATE_TENSORS
    budget = MEMORY_SHARE * free
    fit_particles = int(budget // (per_particle * min(req.batch_size, req.samples)))
    fit_batch = int(budget // (per_particle * req.particles))
    if fit_particles >= 1:
        hint = f"lower --particles to at most {fit_particles}"
        if fit_batch >= 1:
            hint += f", or --batch-size (samples per batch, -n by default) to at most {fit_batch}"
    elif budget >= per_particle:
        hint = f"set --batch-size 1 and lower --particles to at most {int(budget // per_particle)}"
    else:
        hint = "not even one particle's state fits: free memory or use a smaller output"
    raise UsageError(
        f"this particle run holds {min(req.batch_size, req.samples)} samples x {req.particles} particles = "
        f"{req.held:,} particles at "
        f"once, about {_gb(req.state_bytes)} of state, more than half of the {_gb(free)} free on {device}: {hint}")
