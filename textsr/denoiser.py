"""The one boundary between solvers and models: ``Denoiser(x_t, t, cond) -> Prediction(x0, eps[, v])``.

Every backend (exact Gaussian mixtures, DeepFloyd IF stages, unCLIP, pixel UNets, latent models)
is adapted to this protocol; solvers never see a model.  Rules for implementers:

* ``t`` is an integer timestep index into ``schedule`` (shared by the whole batch).
* The call must be differentiable w.r.t. ``x_t`` when autograd is enabled (DPS and PiGDM take
  ``grad_{x_t}`` through it) and must not switch grad mode on or off itself.
* Batch items are independent: item k of the output depends only on item k of ``x_t``.
* Model details stay inside: eps/v-prediction, learned-variance channels, dynamic thresholding,
  dtype casts, CFG batching.  A model that predicts its own reverse-step variance reports it as
  ``Prediction.v`` (see there); the ``step_kind="ddpm"`` solvers use it, the others ignore it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, runtime_checkable

import torch

from .schedule import NoiseSchedule


@dataclass
class Prediction:
    """Tweedie estimate ``x0`` (``pred_original_sample``), the noise ``eps`` consistent with it, and
    optionally the model's own reverse-step variance.

    ``v`` (None for models without learned variance): per element, in [0, 1], the interpolation of
    Nichol & Dhariwal's learned range (IF, ADM): the step ``t -> s`` has variance
    ``exp(v log beta + (1 - v) log beta_tilde)`` (``schedule.DDPMPosterior.variance``).  A model that
    outputs ``model_var`` in [-1, 1] reports ``v = (model_var + 1) / 2``.  It does not depend on the
    step's target ``s``, so a backend can report it without knowing the solver's timestep grid.
    """

    x0: torch.Tensor
    eps: torch.Tensor
    v: torch.Tensor | None = None

    @classmethod
    def from_eps(cls, x_t: torch.Tensor, eps: torch.Tensor, abar_t: float,
                 x0_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 v: torch.Tensor | None = None) -> Prediction:
        """``x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)``; an optional ``x0_transform``
        (clipping, dynamic thresholding) is applied and ``eps`` recomputed to match it."""
        x0 = (x_t - math.sqrt(1.0 - abar_t) * eps) / math.sqrt(abar_t)
        if x0_transform is not None:
            x0 = x0_transform(x0)
            eps = eps_from_x0(x_t, x0, abar_t)
        return cls(x0=x0, eps=eps, v=v)

    @classmethod
    def from_x0(cls, x_t: torch.Tensor, x0: torch.Tensor, abar_t: float,
                v: torch.Tensor | None = None) -> Prediction:
        return cls(x0=x0, eps=eps_from_x0(x_t, x0, abar_t), v=v)


def eps_from_x0(x_t: torch.Tensor, x0: torch.Tensor, abar_t: float) -> torch.Tensor:
    return (x_t - math.sqrt(abar_t) * x0) / math.sqrt(1.0 - abar_t)


C_contra = TypeVar("C_contra", contravariant=True)


@runtime_checkable
class Denoiser(Protocol[C_contra]):
    """A (possibly conditional) denoiser on a VP schedule, generic in its condition type: an
    ``IFUNetDenoiser`` is a ``Denoiser[IFText | IFSRCond]``, an exact mixture denoiser a
    ``Denoiser[str | tuple[str, ...] | ...]``; ``cond=None`` is the unconditional model."""

    schedule: NoiseSchedule

    def __call__(self, x_t: torch.Tensor, t: int, cond: C_contra | None = None) -> Prediction: ...


@dataclass
class ClassifierFreeGuidance:
    """``eps = eps_uncond + w (eps_cond - eps_uncond)`` (Ho & Salimans 2022) as a Denoiser wrapper.

    ``cond`` passed at call time goes to the conditional branch; ``null_cond`` to the other.  ``w = 1``
    returns the conditional branch exactly (no unconditional call is made), ``w = 0`` the unconditional.
    A learned variance ``v`` is the conditional branch's (as IF's pipelines keep the text branch's
    variance channels).
    Backends whose models need the two branches in one batched call implement their own wrapper
    with the same semantics; this one suits any Denoiser.
    """

    base: Denoiser
    scale: float
    null_cond: Any = None
    x0_transform: Callable[[torch.Tensor], torch.Tensor] | None = None

    def __post_init__(self) -> None:
        if not math.isfinite(self.scale) or self.scale < 0:
            raise ValueError(f"guidance scale must be a finite number >= 0, got {self.scale}")

    @property
    def schedule(self) -> NoiseSchedule:
        return self.base.schedule

    def __call__(self, x_t: torch.Tensor, t: int, cond: Any = None) -> Prediction:
        if self.scale == 1.0:
            return self.base(x_t, t, cond)
        p_u = self.base(x_t, t, self.null_cond)
        if self.scale == 0.0:
            eps, v = p_u.eps, p_u.v
        else:
            p_c = self.base(x_t, t, cond)
            eps, v = p_u.eps + self.scale * (p_c.eps - p_u.eps), p_c.v
        return Prediction.from_eps(x_t, eps, self.schedule.abar(t), self.x0_transform, v=v)
