"""The Backend contract: everything ``textsr.explore`` asks of a model, in the order it asks.

A backend turns a model (exact Gaussian mixture, DeepFloyd IF, Karlo, a pixel UNet + CLIP, a latent
model) into a list of cascade ``Stage``s (Denoisers + solver configs) plus text handling.  Solvers and
``explore`` never branch on a model's name: what differs between models is a hook below.

Per run, ``explore`` calls:

1. ``prepare_input(arr, scale)``: adapt the LR image to what the model can take (default: unchanged);
2. ``check_size(lr_hw, scale)``: refuse sizes the model cannot produce, naming sizes that work;
3. ``input_notes(lr_hw, scale)``: remarks about the input for the user (default: none); with ``tile=``:
   ``native_output()``, ``check_tiling(lr_hw, scale, tiling)`` (instead of ``check_size``) and
   ``memory_probes(...)`` for the peak-memory estimate before any work (docs/tiling.md);
4. ``stage_names`` (a preset's per-stage options), then ``build_stages(solver, solver_options, options)``:
   the cascade, once per run;

then per prompt:

5. ``encode_prompt(prompt)`` -> the condition ``C`` the stages' Denoisers take; ``prompt_notes(prompt)``;
6. after sampling: ``finish(x, y, operator)`` (default: unchanged; latent models decode and project, and
   report the images before the projection), ``text_scores(x, prompt)``
   (default: none), ``exact_metrics(...)`` (default: none), ``prompt_tags(prompt)`` (default: none);

and ``describe()`` for results.json.  With a particle solver, ``tilting_options(options)`` says whether the
run's evidence is the model's belief (guidance at ``neutral_options``); ``textsr rank`` runs with
``neutral_guidance(options)``.  Attributes: ``info`` (registry entry), ``channels``,
``device``/``dtype`` (where the weights run), ``exact`` (solver arithmetic in float64: exact worlds).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

import numpy as np
import torch

from ..cascade import Stage
from ..model_registry import ModelInfo  # defined with the registry so that `textsr models` needs no torch
from ..operators import LinearOperator
from ..tiling.memory import MemoryProbe
from ..tiling.plan import Tiling, exceeds

__all__ = ["Backend", "Finished", "ModelInfo", "check_options"]

C = TypeVar("C")  # the condition type a backend's Denoisers take (what ``encode_prompt`` returns)


@dataclass
class Finished:
    """A backend's final images ``x`` (model space, output size) and, when it ends with an exact pixel-space
    projection onto ``A x = y``, the images just before it (``before_projection``; None otherwise)."""

    x: torch.Tensor
    before_projection: torch.Tensor | None = None


class Backend(ABC, Generic[C]):
    """A loaded model, ready to sample (see the module docstring for the order of the hooks)."""

    info: ModelInfo
    channels: int = 3
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32
    exact: bool = False
    #: the load-time memory options this model supports (``textsr.backends.options.LoadOptions``) and
    #: those it was loaded with (set by its ``load_backend``)
    memory_options: ClassVar[tuple[str, ...]] = ()
    load_options: Any = None  # LoadOptions
    residency: Any = None  # the model CPU offload (LoadOptions.apply)
    tiles: ClassVar[bool] = False  # runs on windows of its own size (``check_tiling``, ``build_stages(tiling=)``)

    @property
    def work_dtype(self) -> torch.dtype:
        """The dtype of the solver's arithmetic (``y``, ``x_t``, operators): float64 for exact worlds,
        float32 otherwise (the weights may run in ``dtype``; Denoisers cast)."""
        return torch.float64 if self.exact else torch.float32

    # -- the input ------------------------------------------------------------------------------
    def prepare_input(self, arr: np.ndarray, scale: int) -> tuple[np.ndarray, list[str]]:
        """The LR image ``(h, w, C)`` in [0, 1] as the model will see it, plus notes saying what was
        changed.  Not called in simulation mode (the input is then made by textsr's own operator)."""
        return arr, []

    @abstractmethod
    def check_size(self, lr_hw: tuple[int, int], scale: int) -> None:
        """Raise ``InputImageError`` naming the sizes that work if (LR size, scale) is not supported."""

    def input_notes(self, lr_hw: tuple[int, int], scale: int) -> list[str]:
        """Remarks about this input for the user (e.g. outside the training size).  Pure: no state."""
        return []

    # -- the cascade ----------------------------------------------------------------------------
    @property
    def stage_names(self) -> tuple[str, ...]:
        """The names nested per-stage solver options use (``{"stage_1": {"steps": 20}}``); a preset
        (``textsr.presets``) gives options only for these.  Default: none declared."""
        return ()

    @abstractmethod
    def build_stages(self, solver: str, solver_options: dict, options: dict) -> list[Stage]:
        """The cascade for one run: each stage with its Denoiser (guidance wrappers applied) and its
        solver config (the backend's per-stage defaults overridden by ``solver_options``).
        ``options``: backend options (guidance scales, CLIP guidance, unCLIP lambda ...); unknown keys
        and solvers the model cannot run raise ``UsageError`` naming what works.  Backends that tile
        also take ``tiling: Tiling`` (passed only for tiled runs, after ``check_tiling``)."""

    # -- any output size (textsr.tiling, docs/tiling.md) ----------------------------------------
    def native_output(self) -> tuple[int, int] | None:
        """The output size (H, W) this model makes without windows (its last stage's training size);
        None: no such size.  ``tile="auto"`` tiles only outputs larger than this (``makes``), and without
        tiling an output more than ``tiling.UNTILED_LIMIT`` times larger per side is refused, naming ``--tile``."""
        return None

    def makes(self, output: tuple[int, int], factor: float = 1.0) -> bool:
        """Whether the model makes an ``output`` (H, W) without windows, with ``factor`` times its own size
        allowed per side.  Default: within ``native_output()`` per side; a model that makes any shape up to
        an area (the flow models) overrides it.  ``tile="auto"`` tiles an output it does not make."""
        native = self.native_output()
        return native is None or not exceeds(output, native, factor)

    def check_tiling(self, lr_hw: tuple[int, int], scale: int, tiling: Tiling) -> list[str]:
        """Check a tiled request before any work (sizes, window side, overlap) and return notes on what
        runs where; raise ``UsageError`` naming the valid values otherwise.  A backend that tiles overrides
        this and takes ``tiling=`` in ``build_stages``; the default refuses."""
        from ..errors import UsageError

        raise UsageError(f"model {self.info.name!r} cannot run on windows (--tile {tiling.request.tile}); leave "
                         "--tile out (or --tile off)")

    def memory_probes(self, lr_hw: tuple[int, int], scale: int, tiling: Tiling | None) -> list[MemoryProbe]:
        """The network calls of one run whose activations set its peak memory (each stage's model at
        its size, and the autoencoder of a latent model), for ``textsr.tiling.memory.estimate``; empty:
        this model gives no estimate."""
        return []

    # -- text -----------------------------------------------------------------------------------
    @abstractmethod
    def encode_prompt(self, prompt: str) -> C:
        """Text conditioning for ``prompt`` (``""`` = unconditional), passed to every stage."""

    def prompt_notes(self, prompt: str) -> list[str]:
        """What the user should know about how ``prompt`` was understood.  Pure: no state."""
        return []

    def prompt_tags(self, prompt: str) -> list[str] | None:
        """Tags the prompt selects, for worlds that have them (results.json); None otherwise."""
        return None

    # -- after sampling -------------------------------------------------------------------------
    def finish(self, x: torch.Tensor, y: torch.Tensor, operator: LinearOperator) -> Finished:
        """Final samples (the last stage's output) -> images in [-1, 1] model space at the output size, and
        the images before a final pixel projection when the backend makes one (latent models decode, then
        project onto ``A x = y``: ``Finished.before_projection``).  Default: unchanged, no projection."""
        return Finished(x)

    def postprocess(self, x: torch.Tensor, y: torch.Tensor, operator: LinearOperator) -> torch.Tensor:
        """The final images of ``finish``."""
        return self.finish(x, y, operator).x

    def text_scores(self, x: torch.Tensor, prompt: str) -> torch.Tensor | None:
        """Per-sample text consistency in [0, 1] for final images ``x`` in [-1, 1] (None if unknown)."""
        return None

    def exact_metrics(self, x: torch.Tensor, y: torch.Tensor, operator: LinearOperator, prompt: str,
                      sigma_y: float) -> dict:
        """Metrics against the exact posterior, for worlds that have one (results.json ``exact``)."""
        return {}

    #: whether ``exact_evidence`` is available (worlds with a closed-form prior: ``textsr rank``'s default method)
    closed_form_evidence: ClassVar[bool] = False

    def exact_evidence(self, y: torch.Tensor, operator: LinearOperator, prompt: str = "",
                       sigma_y: float = 0.0) -> float:
        """Exact ``log p(y | prompt)`` (nats, a density on y's [-1, 1] units) where ``closed_form_evidence``."""
        raise NotImplementedError(f"{self.info.name} has no closed-form evidence")

    # -- the evidence's calibration ------------------------------------------------------------
    #: sampling options that tilt the sampled distribution away from the model's own p(x | prompt), each
    #: with the value at which it does not (classifier-free guidance scales: 1; CLIP guidance and
    #: embedding mixing: 0).  A particle solver's evidence is the model's belief only at these values.
    neutral_options: ClassVar[dict[str, Any]] = {}

    def resolved_options(self, options: dict) -> dict:
        """``options`` with this model's defaults filled in (default: as given)."""
        return dict(options)

    def tilting_options(self, options: dict) -> dict:
        """The options of a run that tilt its target away from ``p(x | prompt)`` (empty: calibrated)."""
        eff = self.resolved_options(options)
        out = {}
        for key, neutral in self.neutral_options.items():
            v = eff.get(key, neutral)
            vals = list(v) if isinstance(v, (list, tuple)) else [v]
            if any(x != neutral for x in vals):
                out[key] = list(v) if isinstance(v, (list, tuple)) else v
        return out

    def neutral_guidance(self, options: dict) -> dict:
        """``options`` with every tilting option at its neutral value: the calibrated run ``textsr rank`` does."""
        return {**options, **self.neutral_options}

    def describe(self) -> dict:
        memory = self.load_options.describe() if self.load_options is not None else {}
        return {"name": self.info.name, "backend": self.info.backend, "device": str(self.device),
                "dtype": str(self.dtype).replace("torch.", ""),
                **({"caution": self.info.caution} if self.info.caution else {}),
                **({"memory": memory} if memory else {})}


def check_options(options: dict, known: Sequence[str], what: str) -> None:
    from ..errors import UsageError

    unknown = sorted(set(options) - set(known))
    if unknown:
        raise UsageError(f"unknown {what} option(s) {unknown}; known: {sorted(known)}")


def is_backend(obj: Any) -> bool:
    """Whether ``obj`` is a loaded backend (``explore`` also takes a model name or folder)."""
    return isinstance(obj, Backend)
