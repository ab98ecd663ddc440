"""The exact ``Denoiser`` of a Gaussian mixture: the oracle every solver is measured against.

``MixtureDenoiser(mixture, schedule)(x_t, t, cond)`` returns the exact ``eps = -sqrt(1 - abar_t) score``
and Tweedie's ``x0_hat``; differentiable w.r.t. ``x_t`` (DPS/PiGDM take gradients through it), batch
items independent.  ``cond`` picks the distribution:

* ``None``: the whole mixture (unconditional model);
* a tag ``"red"`` or tags ``("red", "circle")`` / a set: the renormalised sub-mixture of components
  carrying all of them (the text-conditional model of a prompt; cached per tag set);
* a ``GaussianMixture`` or ``MixtureBatch`` (batch 1 or the batch size): that distribution, e.g. an
  exact posterior (``posterior(...).mixture()``: the "exact posterior score" sampler) or a stage-II
  conditional ``lowres_conditional(...)`` with one mixture per batch item;
* a ``Posterior``: its ``mixture()``;
* a list/tuple of ``GaussianMixture``/``MixtureBatch``, one per batch item.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..denoiser import Prediction
from ..schedule import NoiseSchedule
from .mixture import GaussianMixture, MixtureOps, as_tagset
from .posterior import Posterior


class MixtureDenoiser:
    """Exact denoiser of ``mixture`` on ``schedule`` (see the module docstring for ``cond``).

    The computation runs in the mixture's dtype/device; the prediction has ``x_t``'s dtype.
    """

    def __init__(self, mixture: GaussianMixture, schedule: NoiseSchedule):
        if not isinstance(mixture, MixtureOps):
            raise TypeError(f"MixtureDenoiser needs a GaussianMixture or MixtureBatch, got {type(mixture).__name__}")
        self.mixture = mixture
        self.schedule = schedule
        self._by_tags: dict[frozenset[str], MixtureOps] = {}

    def resolve(self, cond: Any) -> MixtureOps | list[MixtureOps]:
        """The distribution (or per-item list) that ``cond`` names."""
        if cond is None:
            return self.mixture
        if isinstance(cond, MixtureOps):
            return cond
        if isinstance(cond, Posterior):
            return cond.mixture()
        if isinstance(cond, (list, tuple)) and cond and all(isinstance(c, MixtureOps) for c in cond):
            return list(cond)
        if isinstance(cond, str) or (isinstance(cond, (list, tuple, set, frozenset))
                                      and all(isinstance(c, str) for c in cond)):
            key = as_tagset(cond)
            if not key:
                return self.mixture
            if key not in self._by_tags:
                self._by_tags[key] = self.mixture.select(key)
            return self._by_tags[key]
        raise TypeError(
            "MixtureDenoiser cond must be None, a tag or tags (str / iterable of str), a GaussianMixture, a "
            f"MixtureBatch, a Posterior, or a list of mixtures (one per batch item); got {type(cond).__name__}"
        )

    def __call__(self, x_t: torch.Tensor, t: int, cond: Any = None) -> Prediction:
        abar = self.schedule.abar(t)
        dist = self.resolve(cond)
        if isinstance(dist, list):
            if len(dist) != x_t.shape[0]:
                raise ValueError(f"{len(dist)} per-item mixtures for a batch of {x_t.shape[0]}")
            score = torch.cat([m.score(x_t[k:k + 1], abar) for k, m in enumerate(dist)])
        else:
            score = dist.score(x_t, abar)
        eps = -math.sqrt(1.0 - abar) * score
        x0 = (x_t + (1.0 - abar) * score) / math.sqrt(abar)  # Tweedie
        return Prediction(x0=x0, eps=eps)

    def __repr__(self) -> str:
        return f"MixtureDenoiser({self.mixture!r}, schedule={self.schedule.name})"


__all__ = ["MixtureDenoiser"]
