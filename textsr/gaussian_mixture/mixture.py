"""Gaussian mixtures with exact scores under VP diffusion (docs/method.md, "Gaussian-mixture closed forms").

``p_t(x) = sum_i w_i N(sqrt(abar) mu_i, abar Sigma_i + (1 - abar) I)``;
``score = sum_i gamma_i C_i^{-1} (sqrt(abar) mu_i - x)`` with responsibilities ``gamma`` (a softmax of
log-weights plus log-densities, computed with log-sum-exp); ``eps = -sqrt(1 - abar) score`` and Tweedie's
``x0_hat = (x + (1 - abar) score) / sqrt(abar)``.  Everything is differentiable w.r.t. x and batched.

* ``GaussianMixture``: one mixture (weights ``(K,)``, means ``(K, d)``), with per-component tags.
* ``MixtureBatch``: one mixture per batch item sharing covariances (exact posteriors, stage-II
  conditionals): log-weights ``(Bm, K)`` and structured ``Means``.

Vectors are flat (``d = prod(event_shape)``); every method also takes ``(B, *event_shape)`` and answers
in the shape it was given.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch

from .covariance import Covariance
from .terms import Means, component_terms


def as_tagset(tags) -> frozenset[str]:
    """``"cat"`` -> ``{"cat"}``; an iterable of strings -> its frozenset."""
    if tags is None:
        return frozenset()
    if isinstance(tags, str):
        return frozenset([tags])
    out = frozenset(tags)
    if not all(isinstance(t, str) for t in out):
        raise TypeError(f"tags must be strings, got {sorted(map(repr, out))}")
    return out


class MixtureOps:
    """Shared exact-score machinery; subclasses set cov, means, _logw (Bm, K), event_shape, tags."""

    cov: Covariance
    means: Means
    _logw: torch.Tensor
    event_shape: tuple[int, ...]
    tags: tuple[frozenset[str], ...]

    # -- basic properties -------------------------------------------------------------------------
    @property
    def K(self) -> int:
        return self.cov.K

    @property
    def d(self) -> int:
        return self.cov.d

    @property
    def dtype(self) -> torch.dtype:
        return self.cov.dtype

    @property
    def device(self) -> torch.device:
        return self.cov.device

    def _cache(self) -> dict:
        if not hasattr(self, "_terms_cache"):
            self._terms_cache: dict[str, object] = {}
        return self._terms_cache

    def _flat(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        shape = tuple(x.shape)
        if shape[1:] == tuple(self.event_shape):
            flat = x.reshape(shape[0], self.d)
        elif x.ndim == 2 and shape[1] == self.d:
            flat = x
        else:
            raise ValueError(f"expected a batch of shape (B, {', '.join(map(str, self.event_shape))}) or "
                             f"(B, {self.d}), got {shape}")
        return flat.to(dtype=self.dtype, device=self.device), shape

    def _terms(self, x: torch.Tensor, abar: float):
        if not 0.0 < abar <= 1.0:
            raise ValueError(f"abar must lie in (0, 1], got {abar}")
        logn, combine = component_terms(self.cov, self.means, x, abar, self._cache())
        if self._logw.shape[0] not in (1, x.shape[0]):
            raise ValueError(f"mixture has {self._logw.shape[0]} per-item weight rows, x has batch {x.shape[0]}")
        return self._logw + logn, combine

    # -- densities and scores ---------------------------------------------------------------------
    def joint_log_prob(self, x: torch.Tensor, abar: float = 1.0) -> torch.Tensor:
        """``log w_i + log N(x; sqrt(abar) m_i, C_i)``, shape ``(B, K)``."""
        flat, _ = self._flat(x)
        return self._terms(flat, abar)[0]

    def log_prob(self, x: torch.Tensor, abar: float = 1.0) -> torch.Tensor:
        """``log p_t(x)`` ``(B,)`` (``abar = 1``: the mixture itself)."""
        return torch.logsumexp(self.joint_log_prob(x, abar), dim=-1).to(device=x.device, dtype=x.dtype)

    def responsibilities(self, x: torch.Tensor, abar: float = 1.0) -> torch.Tensor:
        """``gamma_bi = p(component i | x_t = x)``, shape ``(B, K)``."""
        return torch.softmax(self.joint_log_prob(x, abar), dim=-1).to(device=x.device, dtype=x.dtype)

    def assign(self, x: torch.Tensor) -> torch.Tensor:
        """Most probable component of each sample (``argmax`` of the responsibilities at abar = 1)."""
        return self.joint_log_prob(x).argmax(-1)

    def score(self, x: torch.Tensor, abar: float = 1.0) -> torch.Tensor:
        """``grad_x log p_t(x)`` in the shape and dtype of ``x``."""
        flat, shape = self._flat(x)
        joint, combine = self._terms(flat, abar)
        gamma = torch.softmax(joint, dim=-1)
        return combine(gamma).reshape(shape).to(device=x.device, dtype=x.dtype)

    def eps(self, x_t: torch.Tensor, abar: float) -> torch.Tensor:
        """The exact noise prediction ``-sqrt(1 - abar) score``."""
        return -math.sqrt(1.0 - abar) * self.score(x_t, abar)

    def x0_hat(self, x_t: torch.Tensor, abar: float) -> torch.Tensor:
        """Tweedie: ``E[x_0 | x_t] = (x_t + (1 - abar) score) / sqrt(abar)``."""
        return (x_t + (1.0 - abar) * self.score(x_t, abar)) / math.sqrt(abar)

    # -- weights ----------------------------------------------------------------------------------
    @property
    def log_weights(self) -> torch.Tensor:
        """``(K,)`` for a mixture, ``(Bm, K)`` for a batch."""
        return self._logw[0] if isinstance(self, GaussianMixture) else self._logw

    @property
    def weights(self) -> torch.Tensor:
        return self.log_weights.exp()

    def mean(self) -> torch.Tensor:
        """The mixture mean(s) ``sum_i w_i m_i``: ``(d,)`` for a mixture, ``(Bm, d)`` for a batch."""
        out = self.means.weighted_sum(self.cov, self._logw.exp())
        return out[0] if isinstance(self, GaussianMixture) else out

    def _select_idx(self, tags) -> torch.Tensor:
        want = as_tagset(tags)
        idx = [i for i, t in enumerate(self.tags) if want <= t]
        if not idx:
            known = sorted(set().union(*self.tags)) if self.tags else []
            raise ValueError(f"no component carries all of the tags {sorted(want)}; known tags: {known}")
        return torch.tensor(idx, dtype=torch.long, device=self.device)


class GaussianMixture(MixtureOps):
    """``p(x) = sum_i w_i N(mu_i, Sigma_i)`` on flat vectors of ``d = prod(event_shape)``.

    weights: ``(K,)`` non-negative (renormalised; ignored, may be None, when ``log_weights`` is given);
    means: ``(K, d)`` or ``(K, *event_shape)``; cov: a ``Covariance`` with K components; tags: one
    iterable of strings per component (e.g. the attributes a prompt may name); event_shape: the shape
    denoisers see (default ``(d,)``).
    """

    def __init__(self, weights: torch.Tensor | None, means: torch.Tensor, cov: Covariance,
                 tags: Sequence[Iterable[str]] | None = None, event_shape: Sequence[int] | None = None,
                 *, log_weights: torch.Tensor | None = None):
        K, d = cov.K, cov.d
        self.event_shape = tuple(int(s) for s in event_shape) if event_shape is not None else (d,)
        if math.prod(self.event_shape) != d:
            raise ValueError(f"event_shape {self.event_shape} has {math.prod(self.event_shape)} entries, "
                             f"covariance has d = {d}")
        means = means.reshape(means.shape[0], -1) if means.ndim > 2 else means
        if tuple(means.shape) != (K, d):
            raise ValueError(f"means must have shape ({K}, {d}) (or ({K}, *event_shape)), got {tuple(means.shape)}")
        if log_weights is None:
            w = torch.as_tensor(weights, dtype=cov.dtype, device=cov.device)
            if w.shape != (K,):
                raise ValueError(f"weights must have shape ({K},), got {tuple(w.shape)}")
            if bool((w < 0).any()) or not bool(torch.isfinite(w).all()) or float(w.sum()) <= 0:
                raise ValueError("weights must be finite, >= 0 and not all zero")
            lw = torch.log(w / w.sum())
        else:
            lw = log_weights.to(dtype=cov.dtype, device=cov.device)
            lw = lw - torch.logsumexp(lw, 0)
        self._logw = lw.reshape(1, K)
        self.cov = cov
        self.means = Means(mu=means.to(dtype=cov.dtype, device=cov.device))
        if tags is None:
            self.tags = tuple(frozenset() for _ in range(K))
        else:
            tags = list(tags)
            if len(tags) != K:
                raise ValueError(f"need one tag set per component ({K}), got {len(tags)}")
            self.tags = tuple(as_tagset(t) for t in tags)

    @classmethod
    def _raw(cls, logw: torch.Tensor, mu: torch.Tensor, cov: Covariance, tags, event_shape) -> GaussianMixture:
        return cls(None, mu, cov, tags, event_shape, log_weights=logw)

    @property
    def mu(self) -> torch.Tensor:
        """Component means ``(K, d)``."""
        return self.means.mu

    def index(self, idx) -> GaussianMixture:
        """The sub-mixture of components ``idx`` (weights renormalised)."""
        idx = torch.as_tensor(idx, dtype=torch.long, device=self.device)
        return GaussianMixture._raw(self._logw[0, idx], self.mu[idx], self.cov.index(idx),
                                    [self.tags[i] for i in idx.tolist()], self.event_shape)

    def select(self, tags) -> GaussianMixture:
        """Components whose tags contain all of ``tags`` (a string or iterable), renormalised; the
        text-conditional prior of a prompt.  ``ValueError`` if none match."""
        return self.index(self._select_idx(tags))

    def diffused(self, abar: float) -> GaussianMixture:
        """The marginal of ``x_t``: means ``sqrt(abar) mu``, covariances ``abar Sigma + (1 - abar) I``."""
        return GaussianMixture._raw(self._logw[0], math.sqrt(abar) * self.mu, self.cov.diffuse(abar),
                                    self.tags, self.event_shape)

    def sample(self, n: int, generator: torch.Generator | None = None,
               return_components: bool = False):
        """``n`` draws ``(n, *event_shape)`` (and their component indices)."""
        gen_dev = generator.device if generator is not None else torch.device("cpu")
        probs = self._logw[0].exp().to(device=gen_dev, dtype=torch.float64)
        idx = torch.multinomial(probs, n, replacement=True, generator=generator).to(self.device)
        x = self.mu[idx] + self.cov.sample(idx, generator)
        x = x.reshape(n, *self.event_shape)
        return (x, idx) if return_components else x

    def to(self, device=None, dtype=None) -> GaussianMixture:
        cv = dict(device=device, dtype=dtype)
        return GaussianMixture._raw(self._logw[0].to(**cv), self.mu.to(**cv), self.cov.to(**cv), self.tags,
                                    self.event_shape)

    def __repr__(self) -> str:
        return f"GaussianMixture(K={self.K}, event_shape={self.event_shape}, cov={self.cov!r})"


class MixtureBatch(MixtureOps):
    """One Gaussian mixture per batch item, sharing the covariances: item b is
    ``sum_i w_bi N(m_bi, Sigma_i)`` with ``m_bi`` given by ``Means``.  ``Bm = 1`` broadcasts to any batch.
    Built by ``posterior(...).mixture()`` and ``lowres_conditional``; a ``MixtureDenoiser`` takes it as
    ``cond`` (the exact denoiser of a conditional model, e.g. a cascade's stage II)."""

    def __init__(self, log_weights: torch.Tensor, means: Means, cov: Covariance,
                 tags: Sequence[frozenset[str]] | None = None, event_shape: Sequence[int] | None = None):
        if log_weights.ndim != 2 or log_weights.shape[1] != cov.K:
            raise ValueError(f"log_weights must have shape (Bm, {cov.K}), got {tuple(log_weights.shape)}")
        if means.mu.shape != (cov.K, cov.d):
            raise ValueError(f"means.mu must have shape ({cov.K}, {cov.d}), got {tuple(means.mu.shape)}")
        if means.batch not in (1, log_weights.shape[0]) and log_weights.shape[0] != 1:
            raise ValueError(f"means have batch {means.batch}, weights {log_weights.shape[0]}")
        self._logw = log_weights - torch.logsumexp(log_weights, -1, keepdim=True)
        self.means, self.cov = means, cov
        self.event_shape = tuple(event_shape) if event_shape is not None else (cov.d,)
        self.tags = tuple(tags) if tags is not None else tuple(frozenset() for _ in range(cov.K))

    @property
    def batch(self) -> int:
        return max(self._logw.shape[0], self.means.batch)

    def index(self, idx) -> MixtureBatch:
        idx = torch.as_tensor(idx, dtype=torch.long, device=self.device)
        return MixtureBatch(self._logw[:, idx], self.means.index(idx), self.cov.index(idx),
                            [self.tags[i] for i in idx.tolist()], self.event_shape)

    def select(self, tags) -> MixtureBatch:
        """Components carrying all ``tags``, each item's weights renormalised."""
        return self.index(self._select_idx(tags))

    def repeat_interleave(self, n: int) -> MixtureBatch:
        """Each item's mixture repeated n times in a row (batch ``B -> B n``): the conditioning of a
        particle sampler's ``B * n`` particles."""
        lw = self._logw if self._logw.shape[0] == 1 else self._logw.repeat_interleave(n, 0)
        return MixtureBatch(lw, self.means.repeat_interleave(n), self.cov, self.tags, self.event_shape)

    def batch_slice(self, sl: slice) -> MixtureBatch:
        """Batch items ``sl`` (a chunk of a particle sampler's rows, ``solvers.chunks``)."""
        lw = self._logw if self._logw.shape[0] == 1 else self._logw[sl]
        return MixtureBatch(lw, self.means.batch_slice(sl), self.cov, self.tags, self.event_shape)

    def item(self, b: int) -> GaussianMixture:
        """Batch item b as a plain ``GaussianMixture`` (means materialised, ``(K, d)``)."""
        lw = self._logw[b if self._logw.shape[0] > 1 else 0]
        return GaussianMixture._raw(lw, self.means.dense(self.cov, b), self.cov, self.tags, self.event_shape)

    def sample(self, n: int | None = None, generator: torch.Generator | None = None,
               return_components: bool = False):
        """One draw per batch item ``(Bm, *event_shape)``; with ``Bm = 1``, ``n`` draws ``(n, ...)``."""
        n, kidx = draw_components(self._logw, self.batch, n, generator, self.device,
                                  "a batch of {B} mixtures gives one draw per item")
        bidx = torch.arange(n, device=self.device)
        x = self.means.gather(self.cov, bidx, kidx) + self.cov.sample(kidx, generator)
        x = x.reshape(n, *self.event_shape)
        return (x, kidx) if return_components else x

    def to(self, device=None, dtype=None) -> MixtureBatch:
        return MixtureBatch(self._logw.to(device=device, dtype=dtype), self.means.to(device, dtype),
                            self.cov.to(device=device, dtype=dtype), self.tags, self.event_shape)

    def __repr__(self) -> str:
        return f"MixtureBatch(batch={self.batch}, K={self.K}, event_shape={self.event_shape}, cov={self.cov!r})"


def draw_components(log_weights: torch.Tensor, B: int, n: int | None, generator: torch.Generator | None,
                    device: torch.device, batch_rule: str) -> tuple[int, torch.Tensor]:
    """The draw count and one component index per draw from ``log_weights`` ``(1 or B, K)`` of a batch of B
    distributions: with ``B = 1``, ``n`` draws (default 1); with ``B > 1``, one per item (``n`` must be None
    or B, else ``batch_rule``, formatted with B, says why).  Drawn on the generator's device, returned on
    ``device``."""
    if B > 1 and n not in (None, B):
        raise ValueError(batch_rule.format(B=B) + f"; n must be None or {B}")
    n = B if B > 1 else (1 if n is None else int(n))
    gen_dev = generator.device if generator is not None else torch.device("cpu")
    probs = log_weights.exp().to(device=gen_dev, dtype=torch.float64).expand(n if B == 1 else B, -1)
    return n, torch.multinomial(probs, 1, replacement=True, generator=generator).squeeze(-1).to(device)
