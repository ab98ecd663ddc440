"""``builtin-shapes``: the exactly solvable, offline text-to-image prior that ships with textsr.

The prior is a Gaussian mixture over 64x64 RGB scenes (``textsr.shapes_world``): one component per
(shape, colour, background, size, position) with covariance ``U U^T + s2 I`` (object and background
colour vary, plus pixel noise).  A prompt selects the components carrying its tags, so the exact
text-conditional score is available to the solvers and the exact posterior to the metrics.

Stages: by default a two-stage cascade like the real text-to-image cascades: stage I samples the 16 px
image with the solver against y (operator ``A_{scale/4}``), stage II samples the 64 px image from the
exact conditional ``p(x | pool_4(x) = x_stage_I, text)`` with the solver against the same y.  Option
``cascade=False`` samples 64 px directly.  Any user image works too when the world is asked for by name:
it is resized to 64/scale and explained with shapes (``INFO.caution`` says it is a toy); without a model
name, ``textsr.model_choice`` runs the world only on inputs it can explain (``typicality``).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any, ClassVar

import numpy as np
import torch

from ..cascade import Stage
from ..errors import InputImageError, UsageError
from ..model_registry import MODELS
from ..schedule import NoiseSchedule
from ..solvers import make_config
from ..tiling.plan import Tiling
from .base import Backend
from .options import BackendOptions, LoadOptions, flag, number

SIZE = 64
INFO = replace(
    MODELS["builtin-shapes"],  # the registry's entry (its caution too), with what the loaded world knows
    description="built-in offline world: exact Gaussian-mixture prior over 64x64 shape scenes (no download)",
    vram_gb=0.0,
    output_sizes="64x64 (input is 64/scale px; other sizes are resized to it)",
    notes="exact score and exact posterior: text consistency and SW to the posterior are measurable",
)

#: variance of an image's 8-bit rounding in [-1, 1] units, (2/255)^2 / 12: a scene saved as a PNG
QUANT_VAR = (2.0 / 255.0) ** 2 / 12.0
#: the probability that an LR image the world itself made fails ``ShapesBackend.typicality``
TYPICAL_MISS = 1e-9


@dataclass(frozen=True)
class Typicality:
    """How far an LR image is from the world: ``chi2``, the squared Mahalanobis distance of y to the
    nearest scene's LR distribution (over ``m`` values), and ``bound``, which the world's own LR images
    stay below with probability 1 - ``TYPICAL_MISS``; ``log_evidence``: the exact log p(y)."""

    chi2: float
    bound: float
    m: int
    log_evidence: float

    @property
    def explained(self) -> bool:
        return self.chi2 <= self.bound


@dataclass(frozen=True)
class ShapesOptions(BackendOptions):
    """cascade (true): sample 16 px then 64 px, like the real cascades (false: 64 px directly);
    sigma_aug (0): stage II conditions on the stage-I image noised with this std (0: the exact image)."""

    what: ClassVar[str] = "builtin-shapes"
    cascade: bool = True
    sigma_aug: float = 0.0

    def __post_init__(self) -> None:
        self.set("cascade", flag(self.cascade, "cascade"))
        self.set("sigma_aug", number(self.sigma_aug, "sigma_aug", lo=0.0))


class ShapesBackend(Backend):
    info = INFO
    channels = 3
    exact = True  # float64 solver math; the mixture runs in float32
    closed_form_evidence = True

    def __init__(self, device: torch.device | str = "cpu", catalog=None, schedule: NoiseSchedule | None = None):
        from ..shapes_world import build_catalog

        self.device = torch.device(device)
        self.dtype = torch.float32
        self.catalog = catalog if catalog is not None else build_catalog(SIZE)
        self.schedule = schedule or NoiseSchedule.linear()

    # -- the mixtures ---------------------------------------------------------------------------
    def _mixture(self, catalog):
        from ..gaussian_mixture import GaussianMixture, LowRankCov

        Ut = torch.from_numpy(np.ascontiguousarray(catalog.Ut())).to(self.device)
        cov = LowRankCov.from_factors(Ut, torch.full((catalog.K,), catalog.s2, dtype=Ut.dtype, device=self.device))
        means = torch.from_numpy(catalog.means).to(self.device)
        return GaussianMixture(torch.ones(catalog.K), means, cov, tags=catalog.tags,
                               event_shape=tuple(catalog.means.shape[1:]))

    @cached_property
    def mixture(self):
        """The 64 px prior."""
        return self._mixture(self.catalog)

    @cached_property
    def mixture64(self):
        """The 64 px prior in float64 (particle solvers)."""
        return self.mixture.to(dtype=torch.float64)

    @cached_property
    def mixture_lo64(self):
        return self.mixture_lo.to(dtype=torch.float64)

    @cached_property
    def mixture_lo(self):
        """The 16 px prior: exactly the 64 px prior pushed through 4x average pooling."""
        from ..shapes_world import downsample

        return self._mixture(downsample(self.catalog, SIZE // 16))

    # -- Backend API ----------------------------------------------------------------------------
    def prepare_input(self, arr: np.ndarray, scale: int) -> tuple[np.ndarray, list[str]]:
        """Resize any user image to (64/scale)^2: the world only has 64x64 scenes."""
        target = SIZE // scale if SIZE % scale == 0 else None
        if target is None or arr.shape[:2] == (target, target):
            return arr, []
        from PIL import Image

        img = Image.fromarray((arr * 255).round().astype(np.uint8).squeeze(-1) if arr.shape[2] == 1
                              else (arr * 255).round().astype(np.uint8))
        img = img.resize((target, target), Image.Resampling.BOX if img.width >= target else Image.Resampling.BICUBIC)
        out = np.asarray(img, dtype=np.float32) / 255.0
        out = out[:, :, None] if out.ndim == 2 else out
        note = (f"the built-in shapes model only knows 64x64 scenes: the {arr.shape[1]}x{arr.shape[0]} input was "
                f"resized to {target}x{target} and will be explained with shapes")
        return out, [note]

    def check_size(self, lr_hw: tuple[int, int], scale: int) -> None:
        ok = [s for s in (4, 8, 16, 32) if SIZE % s == 0]
        if scale not in ok:
            raise InputImageError(f"the built-in shapes model takes scales {ok} (64x64 outputs); got {scale}")
        want = SIZE // scale
        if tuple(lr_hw) != (want, want):
            raise InputImageError(f"at scale {scale} the built-in shapes model needs a {want}x{want} input "
                                  f"(64x64 output); got {lr_hw[1]}x{lr_hw[0]}")

    def native_output(self) -> tuple[int, int]:
        return (SIZE, SIZE)

    def check_tiling(self, lr_hw: tuple[int, int], scale: int, tiling: Tiling) -> list[str]:
        raise UsageError(f"the built-in shapes model is an exact world of {SIZE}x{SIZE} scenes: every input is "
                         f"explained at that size (its exact score is for whole scenes), so it has no windows to run "
                         f"(--tile {tiling.request.tile}); leave --tile out, or use a real model (`textsr models`) for "
                         "larger outputs")

    def parse(self, prompt: str):
        from ..shapes_world import parse_prompt

        return parse_prompt(prompt, self.catalog.vocabulary)

    def encode_prompt(self, prompt: str) -> Any:
        parsed = self.parse(prompt)
        if not parsed.tags:
            return None
        try:
            self.mixture.select(parsed.tags)
        except ValueError as e:
            raise UsageError(f"prompt {prompt!r}: no scene in the built-in world has all of "
                             f"{sorted(parsed.tags)}") from e
        return tuple(sorted(parsed.tags))

    def prompt_tags(self, prompt: str) -> list[str]:
        return sorted(self.parse(prompt).tags)

    def prompt_notes(self, prompt: str) -> list[str]:
        """What the parser could not use in ``prompt`` (unknown words are reported, never dropped)."""
        return [f"prompt {prompt!r}: {n}" for n in self.parse(prompt).notes]

    def build_stages(self, solver: str, solver_options: dict, options: dict) -> list[Stage]:
        from ..gaussian_mixture import MixtureDenoiser
        from ..gaussian_mixture.cascade import lowres_condition
        from ..operators import AvgPool

        o = ShapesOptions.from_dict(options)
        cascade, sigma_aug = o.cascade, o.sigma_aug
        try:
            cfg = make_config(solver, **solver_options)
        except ValueError as e:
            raise UsageError(str(e)) from e
        # a particle solver's weights resolve the twist's tiny noiseless variances, and a resampling decision
        # turns float32 round-off (which depends on the batch) into a different particle: float64 mixtures
        mix, mix_lo = (self.mixture64, self.mixture_lo64) if cfg.takes_particles else (self.mixture, self.mixture_lo)
        full = MixtureDenoiser(mix, self.schedule)
        if not cascade:
            return [Stage("64px", full, divisor=1, channels=3, solver=cfg)]
        lo = MixtureDenoiser(mix_lo, self.schedule)
        pool = AvgPool(4, (3, SIZE, SIZE))
        cond2 = _pruned(lowres_condition(mix, pool, sigma_aug))
        return [Stage("16px", lo, divisor=4, channels=3, solver=cfg),
                Stage("64px", full, divisor=1, channels=3, condition=cond2, solver=cfg)]

    def typicality(self, y: torch.Tensor, operator, sigma_y: float = 0.0) -> list[Typicality]:
        """Whether the world can have made each LR image of ``y`` (``(B, 3, h, w)`` in [-1, 1]), from its exact
        per-scene likelihoods.  For ``x`` from scene (component) k and ``y = A x + n``, the squared Mahalanobis
        distance ``chi2_k = 2 [log N(A mu_k; A mu_k, G_k) - log N(y; A mu_k, G_k)]`` is chi-square with m =
        dim(y) degrees of freedom, and ``P(chi2 >= m + 2 sqrt(m t) + 2 t) <= exp(-t)`` (Laurent and Massart
        2000, Lemma 1).  So ``min_k chi2_k`` stays below that bound, with ``exp(-t) = TYPICAL_MISS``, for all
        but a fraction 1e-9 of the world's own images; an input above it is not one of them.  The noise is
        ``sigma_y`` plus the 8-bit rounding of a saved image (``QUANT_VAR``)."""
        noise = math.sqrt(sigma_y**2 + QUANT_VAR)
        own = self._own_loglik(operator, noise)  # log N(A mu_k; A mu_k, G_k): y's best possible fit
        log_p, loglik = self._loglik(y.to(torch.float64), operator, noise)
        chi2 = (2.0 * (own - loglik)).min(dim=1).values
        m, t = y[0].numel(), math.log(1.0 / TYPICAL_MISS)
        bound = m + 2.0 * math.sqrt(m * t) + 2.0 * t
        return [Typicality(float(c), bound, m, float(lp)) for c, lp in zip(chi2, log_p)]

    def _loglik(self, y: torch.Tensor, operator, noise: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(log p(y_b), log N(y_b; A mu_k, G_k)) for the rows of ``y``, from the exact posterior's weights:
        posterior log-weight + log evidence - prior log-weight."""
        from ..gaussian_mixture import posterior

        mix = self.mixture
        post = posterior(mix, operator, y, noise)
        log_p = post.log_evidence
        return log_p, post.log_weights.to(torch.float64) + log_p[:, None] - mix.log_weights.to(torch.float64)

    def _own_loglik(self, operator, noise: float) -> torch.Tensor:
        """``log N(A mu_k; A mu_k, G_k)`` for every scene k (it does not depend on y: kept per operator)."""
        import json

        key = (json.dumps(operator.describe(), sort_keys=True), noise)
        cache = self.__dict__.setdefault("_own_cache", {})
        if key not in cache:
            mix = self.mixture
            amu = operator.A(mix.mu.reshape(mix.K, *operator.in_shape).to(torch.float64))
            cache[key] = self._loglik(amu, operator, noise)[1].diagonal().clone()
        return cache[key]

    # -- exact evaluation -----------------------------------------------------------------------
    def _assign(self, x: torch.Tensor) -> list[int]:
        return self.mixture.assign(x.to(self.device, torch.float32).flatten(1)).tolist()

    def text_scores(self, x: torch.Tensor, prompt: str) -> torch.Tensor | None:
        """1 if the sample's most responsible component carries every tag of the prompt, else 0."""
        want = self.parse(prompt).tags
        if not want:
            return None
        comps = self._assign(x)
        return torch.tensor([1.0 if want <= self.mixture.tags[k] else 0.0 for k in comps])

    def _shape_of(self, tags: frozenset[str]) -> str:
        return next((t for t in tags if t in SHAPE_SET), "?")

    def exact_posterior(self, y: torch.Tensor, operator, prompt: str = "", sigma_y: float = 0.0):
        """The exact posterior over 64 px scenes given ``y = A x + sigma_y n`` and the prompt's tags."""
        from ..gaussian_mixture import posterior

        tags = self.parse(prompt).tags or None
        return posterior(self.mixture, operator, y[:1].to(self.device, torch.float32), sigma_y, tags=tags)

    def exact_evidence(self, y: torch.Tensor, operator, prompt: str = "", sigma_y: float = 0.0) -> float:
        """Exact ``log p(y | prompt)`` (nats; a density on y's [-1, 1] units) of the built-in world: the
        components carrying the prompt's tags, weights renormalised among them.  The default two-stage
        cascade has the same evidence (its stage I is this prior pushed through 4x pooling and stage II is
        the exact conditional; ``gaussian_mixture.cascade_log_evidence``).  Float64 on the float32
        mixture's parameters; for average pooling computed at the LR size (the prior pushed through A)."""
        from ..gaussian_mixture import log_evidence
        from ..operators import AvgPool

        tags = self.parse(prompt).tags or None
        y64 = y[:1].to(self.device, torch.float64)
        if isinstance(operator, AvgPool) and tuple(operator.in_shape) == (3, SIZE, SIZE):
            lr = AvgPool(1, tuple(operator.out_shape))  # the identity on the LR image
            return float(log_evidence(self._pooled64(operator.factor), lr, y64, sigma_y, tags=tags)[0])
        return float(log_evidence(self.mixture64, operator, y64, sigma_y, tags=tags)[0])

    def _pooled64(self, factor: int):
        """The float64 prior pushed through ``AvgPool(factor)`` (cached): the exact distribution of the LR image."""
        from ..gaussian_mixture import push_forward
        from ..operators import AvgPool

        cache = self.__dict__.setdefault("_pooled_cache", {})
        if factor not in cache:
            cache[factor] = push_forward(self.mixture64, AvgPool(factor, (3, SIZE, SIZE)))
        return cache[factor]

    def shape_posterior(self, y: torch.Tensor, operator, prompt: str = "", sigma_y: float = 0.0) -> dict[str, float]:
        """Exact ``P(shape | y, prompt)``: the posterior component weights summed per shape."""
        post = self.exact_posterior(y, operator, prompt, sigma_y)
        out: Counter = Counter()
        for k, wk in enumerate(post.weights.reshape(-1).tolist()):
            out[self._shape_of(post.prior.tags[k])] += wk
        return dict(out)

    def sample_shapes(self, x: torch.Tensor) -> list[str]:
        """The shape of each sample's most responsible component."""
        return [self._shape_of(self.mixture.tags[k]) for k in self._assign(x)]

    def exact_metrics(self, x: torch.Tensor, y: torch.Tensor, operator, prompt: str, sigma_y: float,
                      n_exact: int | None = None) -> dict:
        """SW to exact posterior draws (same count), the SW noise floor, and the shape spread of the
        samples against the exact posterior's shape probabilities."""
        from ..metrics import sliced_wasserstein

        post = self.exact_posterior(y, operator, prompt, sigma_y)
        n = n_exact or x.shape[0]
        g = torch.Generator().manual_seed(1234)
        ref = post.sample(n, generator=g).reshape(n, -1)
        ref2 = post.sample(n, generator=g).reshape(n, -1)
        gd = lambda: torch.Generator().manual_seed(99)  # noqa: E731
        sw = sliced_wasserstein(x.flatten(1).float().cpu(), ref.cpu(), 100, gd())
        floor = sliced_wasserstein(ref2.cpu(), ref.cpu(), 100, gd())
        post_shapes: Counter = Counter()
        for k, wk in enumerate(post.weights.reshape(-1).tolist()):
            post_shapes[self._shape_of(post.prior.tags[k])] += wk
        return {"sw": sw, "sw_floor": floor, "shapes": dict(Counter(self.sample_shapes(x))),
                "posterior_shapes": {k: round(v, 4) for k, v in post_shapes.items() if v > 1e-4}}


PRUNE_LOG_WEIGHT = 40.0  # components below exp(-40) ~ 4e-18 of the top weight in every item are dropped


def _pruned(condition):
    """Drop stage-II components whose conditional weight is below ``exp(-40)`` of the best one in
    every batch item (a change of at most ~K * 4e-18 in the mixture: exact to float precision), so
    the 64 px stage costs what the few components the 16 px image supports cost."""

    def cond(c, prev, noise):
        mb = condition(c, prev, noise)
        lw = mb.log_weights
        keep = (lw > lw.max(dim=1, keepdim=True).values - PRUNE_LOG_WEIGHT).any(0)
        idx = torch.nonzero(keep).flatten()
        return mb if len(idx) == lw.shape[1] else mb.index(idx)

    return cond


SHAPE_SET = frozenset(("circle", "square", "triangle", "star", "ring", "cross"))


def load_backend(source: dict | None = None, *, device: torch.device | str = "cpu", dtype=None,
                 offline: bool = True) -> ShapesBackend:
    LoadOptions.of(source or {}, "builtin-shapes", known=())  # no memory options: it runs in ~1 GB of RAM
    return ShapesBackend(device=device)
