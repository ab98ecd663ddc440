"""Pieces shared by the Hugging Face backends (Karlo, pixel UNets, latent models).

* ``resolve_source`` / ``load_pretrained``: a spec's stage entry -> ``from_pretrained`` with
  ``local_files_only`` offline and a ``ModelNotFoundError`` that says how to get the weights.
* ``ModelOutputAdapter``: a model's raw output (eps / v / x0, learned-variance channels) -> ``Prediction``.
* ``stage_solver_config``: a stage's solver defaults overridden by the user's solver options.
* ``noise_schedule``: a diffusers scheduler -> ``NoiseSchedule``.

Model weights live in the model dtype (float16 on CUDA); the solver works in float32: adapters cast
``x_t`` in and the model output back to ``x_t``'s dtype.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ..denoiser import Prediction, eps_from_x0
from ..errors import ModelNotFoundError, UsageError
from ..guidance import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, ClipModel
from ..schedule import NoiseSchedule
from ..solvers import SolverConfig, canonical_name, make_config

Source = tuple[str, str | None]


def resolve_source(entry: Any, what: str) -> Source:
    """A spec stage entry -> ``(path_or_hub_id, subfolder)``.

    Accepted forms: ``"/local/folder"``, ``"owner/name"`` (a hub id), or
    ``{"path": ..., "subfolder": ...}`` (``"id"`` is accepted for ``"path"``)."""
    if isinstance(entry, (str, os.PathLike)):
        return os.fspath(entry), None
    if isinstance(entry, Mapping):
        path = entry.get("path", entry.get("id"))
        if not isinstance(path, (str, os.PathLike)):
            raise UsageError(f"model spec entry for {what!r} needs a 'path' (folder or hub id), got {dict(entry)}")
        sub = entry.get("subfolder")
        return os.fspath(path), (str(sub) if sub else None)
    raise UsageError(f"model spec entry for {what!r} must be a folder, a hub id or "
                     f"{{'path': ..., 'subfolder': ...}}, got {entry!r}")


def join_subfolder(base: str | None, sub: str | None) -> str | None:
    parts = [p for p in (base, sub) if p]
    return "/".join(parts) if parts else None


def spec_stages(source: Mapping[str, Any], backend: str, required: tuple[str, ...], optional: tuple[str, ...],
                example: str) -> dict[str, Any]:
    """The spec's ``stages`` after checking that the required ones are there (``example`` says what they
    look like) and that no unknown one is."""
    stages = dict(source.get("stages", {}) or {})
    missing = [k for k in required if k not in stages]
    if missing:
        names = " and ".join(f"stages.{k}" for k in required)
        raise UsageError(f"a {backend} model spec needs {names} (missing {missing}); {example}")
    unknown = sorted(set(stages) - set(required) - set(optional))
    if unknown:
        raise UsageError(f"unknown {backend} stage(s) {unknown}; known: {sorted(required + optional)}")
    return stages


def download_hint(path: str) -> str:
    if os.path.isabs(path) or path.startswith(".") or os.path.exists(path):
        return f"the folder {path!r} does not hold it (check the path, or rebuild the model there)"
    return (f"download it once with internet access: `huggingface-cli download {path}` (or run without "
            f"--offline / HF_HUB_OFFLINE=0); gated models also need `huggingface-cli login`")


def load_pretrained(cls: Any, source: Source, *, offline: bool, what: str, subfolder: str | None = None,
                    **kwargs: Any) -> Any:
    """``cls.from_pretrained(path, subfolder=..., local_files_only=offline, **kwargs)``; a missing
    model becomes ``ModelNotFoundError`` naming the component and how to download it."""
    path, base_sub = source
    sub = join_subfolder(base_sub, subfolder)
    extra = {"subfolder": sub} if sub else {}
    from huggingface_hub.errors import EntryNotFoundError

    try:
        obj = cls.from_pretrained(path, local_files_only=offline, **extra, **kwargs)
    except (OSError, EntryNotFoundError) as e:  # missing files/repos (the Hub's errors subclass OSError)
        where = f"{path}" + (f" (subfolder {sub!r})" if sub else "")
        raise ModelNotFoundError(
            f"cannot load the {what} ({cls.__name__}) from {where}: {e}. "
            + ("Offline: weights must already be in the Hugging Face cache; " if offline else "")
            + download_hint(path)
        ) from e
    vocab = len(obj) if hasattr(obj, "convert_tokens_to_ids") else None
    if vocab is not None and vocab < 10:
        # transformers 5 builds an empty tokenizer instead of failing when the files are missing
        where = f"{path}" + (f" (subfolder {sub!r})" if sub else "")
        raise ModelNotFoundError(f"the {what} at {where} has no vocabulary files (got {vocab} tokens); "
                                 + download_hint(path))
    return obj


def has_subfolder(source: Source, sub: str, marker_files: tuple[str, ...]) -> bool | None:
    """For a local folder: whether ``sub`` holds one of ``marker_files`` (None for hub ids: unknown)."""
    path, base_sub = source
    if not os.path.isdir(path):
        return None
    root = os.path.join(path, *(p for p in (base_sub, sub) if p))
    return any(os.path.isfile(os.path.join(root, f)) for f in marker_files)


def noise_schedule(scheduler: Any, name: str) -> NoiseSchedule:
    """The VP schedule of a diffusers DDPM-family scheduler (its ``alphas_cumprod``)."""
    abar = getattr(scheduler, "alphas_cumprod", None)
    if abar is None:
        raise UsageError(f"scheduler {type(scheduler).__name__} has no alphas_cumprod; textsr needs a "
                         "variance-preserving (DDPM-family) schedule")
    return NoiseSchedule.from_alphas_cumprod(torch.as_tensor(abar, dtype=torch.float64), name=name)


@dataclass(frozen=True)
class ModelOutputAdapter:
    """Turns raw network output into ``Prediction(x0, eps)`` on a VP schedule.

    prediction_type: ``"epsilon"``, ``"v_prediction"`` or ``"sample"`` (diffusers' names);
    channels: image/latent channels (extra output channels, e.g. learned variance, are dropped:
    the solvers choose their own step variance); clip: clamp x0_hat to [-clip, clip] (the scheduler's
    ``clip_sample``; None = off), applied before any solver projection with eps recomputed to match.
    """

    prediction_type: str = "epsilon"
    channels: int = 3
    clip: float | None = None

    def __post_init__(self) -> None:
        if self.prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise UsageError(f"unsupported prediction_type {self.prediction_type!r}; textsr handles "
                             "epsilon, v_prediction and sample")

    def split(self, out: torch.Tensor) -> torch.Tensor:
        """The prediction channels (learned-variance channels, if any, are dropped)."""
        if out.shape[1] == self.channels:
            return out
        if out.shape[1] == 2 * self.channels:
            return out[:, : self.channels]
        raise UsageError(f"model returns {out.shape[1]} channels; expected {self.channels} or "
                         f"{2 * self.channels} (learned variance)")

    def to_eps(self, x_t: torch.Tensor, pred: torch.Tensor, abar_t: float) -> torch.Tensor:
        """The noise estimate for ``pred`` (already split), in ``x_t``'s dtype."""
        pred = pred.to(x_t.dtype)
        if self.prediction_type == "epsilon":
            return pred
        a, s = math.sqrt(abar_t), math.sqrt(1.0 - abar_t)
        if self.prediction_type == "v_prediction":  # v = a eps - s x0  =>  eps = s x_t + a v
            return s * x_t + a * pred
        return eps_from_x0(x_t, pred, abar_t)  # "sample"

    def prediction(self, x_t: torch.Tensor, eps: torch.Tensor, abar_t: float) -> Prediction:
        clip = self.clip
        transform: Callable[[torch.Tensor], torch.Tensor] | None = (
            (lambda x0: x0.clamp(-clip, clip)) if clip is not None else None
        )
        return Prediction.from_eps(x_t, eps, abar_t, transform)

    def guided(self, x_t: torch.Tensor, out: torch.Tensor, abar_t: float, guidance: float) -> Prediction:
        """The prediction from one batched network call: ``out`` holds the outputs for ``[uncond; cond]``
        stacked along the batch (or for ``cond`` alone when it has ``x_t``'s batch size, as at guidance
        1).  Extra (learned-variance) channels are dropped; classifier-free guidance acts on eps."""
        out = self.split(out)
        if out.shape[0] == x_t.shape[0]:
            return self.prediction(x_t, self.to_eps(x_t, out, abar_t), abar_t)
        e_u, e_c = (self.to_eps(x_t, o, abar_t) for o in out.chunk(2))
        return self.prediction(x_t, e_u + guidance * (e_c - e_u), abar_t)  # eps = eps_u + w (eps_c - eps_u)


def scheduler_clip(scheduler_config: Mapping[str, Any]) -> float | None:
    if scheduler_config.get("clip_sample", False):
        return float(scheduler_config.get("clip_sample_range", 1.0))
    return None


def timestep_tensor(t: int, batch: int, device: torch.device) -> torch.Tensor:
    return torch.full((batch,), int(t), dtype=torch.long, device=device)


def stage_solver_config(solver: str, stage: str, stage_defaults: Mapping[str, Mapping[str, Any]],
                        solver_options: Mapping[str, Any]) -> SolverConfig:
    """The solver config for one stage.

    ``stage_defaults[solver]`` are the backend's defaults for this stage (steps, step sizes ...);
    ``solver_options`` override them for every stage, except that a nested dict under the stage's name
    (``{"decoder": {"steps": 50}}``) applies to that stage only."""
    common = {k: v for k, v in solver_options.items() if not isinstance(v, Mapping)}
    specific = solver_options.get(stage, {})
    if not isinstance(specific, Mapping):
        specific = {}
    try:
        key = canonical_name(solver)
        opts = {**dict(stage_defaults.get(key, {})), **common, **dict(specific)}
        return make_config(key, **opts)
    except (ValueError, TypeError) as e:
        raise UsageError(f"solver options for stage {stage!r}: {e}") from e


def check_stage_option_keys(solver_options: Mapping[str, Any], stage_names: tuple[str, ...]) -> None:
    """Nested solver options must name a stage of this backend."""
    for k, v in solver_options.items():
        if isinstance(v, Mapping) and k not in stage_names:
            raise UsageError(f"per-stage solver options {k!r}: no such stage; stages are {list(stage_names)}")


# -- CLIP ---------------------------------------------------------------------------------------------
def load_clip_model(source: Any, *, device: torch.device, dtype: torch.dtype, offline: bool,
                    what: str = "CLIP model") -> ClipModel:
    """A transformers CLIP checkpoint (e.g. ``openai/clip-vit-base-patch32``) as a ``ClipModel``: model,
    tokenizer and the image processor's size/mean/std (OpenAI's constants if it has no processor config)."""
    from transformers import CLIPModel, CLIPTokenizer

    src = resolve_source(source, what)
    model = load_pretrained(CLIPModel, src, offline=offline, what=what, dtype=dtype).to(device)
    tok = load_pretrained(CLIPTokenizer, src, offline=offline, what=f"{what} tokenizer")
    size, mean, std = image_preprocessing(src, offline, model.config.vision_config.image_size)
    return ClipModel(tokenizer=tok, clip_model=model, image_size=size, mean=mean, std=std)


def image_preprocessing(src: tuple[str, str | None], offline: bool, default_size: int,
                        subfolder: str | None = None) -> tuple[int, tuple[float, ...], tuple[float, ...]]:
    """(size, mean, std) for CLIP's input: the size is the vision tower's ``image_size`` (``default_size``:
    CLIP needs exactly that), mean/std from a CLIPImageProcessor config next to the weights, or OpenAI's
    published constants if there is none."""
    from transformers import CLIPImageProcessor

    path, base = src
    sub = join_subfolder(base, subfolder)
    try:
        proc = CLIPImageProcessor.from_pretrained(path, local_files_only=offline,
                                                  **({"subfolder": sub} if sub else {}))
    except (OSError, ValueError):  # no preprocessor_config.json: CLIP's published constants apply
        return default_size, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
    mean, std = getattr(proc, "image_mean", None), getattr(proc, "image_std", None)
    if mean is None or std is None or len(mean) != 3 or len(std) != 3:
        return default_size, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
    return default_size, tuple(float(m) for m in mean), tuple(float(v) for v in std)
