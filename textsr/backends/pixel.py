"""Pixel-space diffusion models + CLIP guidance (the paper's second approach; docs/method.md,
"CLIP guidance").

Any diffusers ``UNet2DModel`` checkpoint with a DDPM-family scheduler (google/ddpm-celebahq-256,
google/ddpm-ema-church-256, google/ddpm-ema-bedroom-256, ...) is one stage at the final size: for
scale ``s`` the solver uses ``A_s``.  The model is unconditional; the prompt enters through CLIP energy
guidance (``textsr.guidance.CLIPGuidance``) with a transformers CLIP (default in the registry:
openai/clip-vit-base-patch32).

Sizes: the UNet's ``sample_size`` (256 for the google models) fixes the output, so the LR image must be
``sample_size / s`` on each side; convolutional UNets run at other sizes but were not trained there.
Larger outputs run on windows of that size (``tile="auto"``, docs/tiling.md), below CLIP guidance, which
sees the whole image: the prompt is not repeated in every window.

Options (``build_stages(..., options)``), starting points, not tuned on real weights here (none can be
downloaded on the machine this was written on):

* ``clip_scale`` (0.05): RMS step of x0_hat toward the prompt at the noisiest step (0 = no guidance);
* ``clip_grad`` ("x0"): gradient w.r.t. x0_hat (cheap) or ``"xt"`` (through the UNet);
* ``clip_window`` ((1.0, 0.0)): fractions of T between which guidance is on;
* ``clip_project_null`` (True): project the gradient onto A's null space, so it never fights the data term;
* ``clip_normalize`` (True): per-sample normalised step (False: ``x0 -= clip_scale * grad``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch

from ..cascade import Stage
from ..denoiser import Prediction
from ..errors import InputImageError, ModelNotFoundError, UsageError
from ..guidance import CLIPGuidance, ClipModel, GuidedCond
from ..operators import LinearOperator
from ..schedule import NoiseSchedule
from ..tiling.memory import MemoryProbe, zeros_like_rows
from ..tiling.plan import Tiling
from .base import Backend, ModelInfo
from .hf_common import (
    ModelOutputAdapter,
    check_stage_option_keys,
    has_subfolder,
    load_clip_model,
    load_pretrained,
    noise_schedule,
    resolve_source,
    scheduler_clip,
    spec_stages,
    stage_solver_config,
    timestep_tensor,
)
from .options import BackendOptions, LoadOptions, choice, flag, fractions, number

BACKEND = "pixel"
STAGE = "pixel"


@dataclass(frozen=True)
class PixelOptions(BackendOptions):
    """CLIP guidance options (see the module docstring): clip_scale, clip_grad, clip_window,
    clip_project_null, clip_normalize."""

    what: ClassVar[str] = "pixel"
    clip_scale: float = 0.05
    clip_grad: str = "x0"
    clip_window: tuple[float, float] = (1.0, 0.0)
    clip_project_null: bool = True
    clip_normalize: bool = True

    def __post_init__(self) -> None:
        self.set("clip_scale", number(self.clip_scale, "clip_scale", lo=0.0))
        self.set("clip_grad", choice(self.clip_grad, "clip_grad", ("x0", "xt")))
        self.set("clip_window", fractions(self.clip_window, "clip_window"))
        self.set("clip_project_null", flag(self.clip_project_null, "clip_project_null"))
        self.set("clip_normalize", flag(self.clip_normalize, "clip_normalize"))

    def guidance_settings(self) -> dict:
        """``CLIPGuidance`` keyword arguments."""
        return {"scale": self.clip_scale, "grad_wrt": self.clip_grad, "window": self.clip_window,
                "normalize": self.clip_normalize}


SOLVER_DEFAULTS: dict[str, dict[str, Any]] = {
    "ddnm": {"steps": 100}, "ddnm+": {"steps": 100}, "plain": {"steps": 100},
    "dps": {"steps": 250, "zeta": 0.5}, "pigdm": {"steps": 100}, "tds": {"steps": 100},
}


@dataclass
class PixelDenoiser:
    """An unconditional diffusers ``UNet2DModel`` as a Denoiser (``cond`` is ignored)."""

    unet: Any
    schedule: NoiseSchedule
    adapter: ModelOutputAdapter

    def __call__(self, x_t: torch.Tensor, t: int, cond: Any = None) -> Prediction:
        out = self.unet(x_t.to(self.unet.dtype), timestep_tensor(t, x_t.shape[0], x_t.device)).sample
        abar = self.schedule.abar(t)
        return self.adapter.prediction(x_t, self.adapter.to_eps(x_t, self.adapter.split(out), abar), abar)


class PixelBackend(Backend):
    """One pixel-space stage at the final size + optional CLIP guidance."""

    tiles = True
    # an unconditional model: text enters only through CLIP guidance, an energy without a normaliser, so
    # its "evidence" is the guided sampler's; at clip_scale 0 every prompt gives the same model
    neutral_options = {"clip_scale": 0.0}
    memory_options = ("cpu_offload", "sequential_cpu_offload")  # UNet2DModel has no attention slicing; no VAE

    def resolved_options(self, options: dict) -> dict:
        return PixelOptions.from_dict(options, self.defaults).to_dict()

    def __init__(self, *, info: ModelInfo, unet: Any, scheduler: Any, clip: ClipModel | None = None,
                 defaults: dict | None = None, device: torch.device = torch.device("cpu"),
                 dtype: torch.dtype = torch.float32):
        self.info = info
        self.device, self.dtype = device, dtype
        self.unet = unet.eval().requires_grad_(False)
        self.clip = clip
        self.channels = int(unet.config.in_channels)
        self.schedule = noise_schedule(scheduler, "pixel")
        self.adapter = ModelOutputAdapter(scheduler.config.get("prediction_type", "epsilon"), self.channels,
                                          scheduler_clip(scheduler.config))
        s = unet.config.sample_size
        self.size = (int(s), int(s)) if isinstance(s, int) else (int(s[0]), int(s[1]))
        self.defaults = dict(defaults or {})
        PixelOptions.from_dict({}, self.defaults)  # the model spec's defaults are checked when the model loads

    @property
    def multiple(self) -> int:
        """Image sides must be multiples of this: the UNet halves the image (len(down_blocks) - 1) times."""
        return 2 ** (len(self.unet.config.down_block_types) - 1)

    def native_output(self) -> tuple[int, int]:
        return self.size

    def check_size(self, lr_hw: tuple[int, int], scale: int) -> None:
        h, w = lr_hw
        H, W = self.size
        if (h * scale, w * scale) == (H, W):
            return
        ok = [f"{H // s}x{W // s} at x{s}" for s in range(2, 33) if H % s == 0 and W % s == 0]
        raise InputImageError(
            f"LR {h}x{w} at x{scale} gives {h * scale}x{w * scale}, but this model makes {H}x{W} images (its "
            f"UNet's training size). Use an LR image of {', '.join(ok)}, or run on windows of {H}x{W}: --tile auto")

    def check_tiling(self, lr_hw: tuple[int, int], scale: int, tiling: Tiling) -> list[str]:
        H, W = tiling.output
        m = self.multiple
        if H % m or W % m:
            step = m // math.gcd(m, scale)
            raise InputImageError(f"LR {lr_hw[0]}x{lr_hw[1]} at x{scale} gives {H}x{W}; this model's UNet needs sides "
                                  f"that are multiples of {m}: use LR sides that are multiples of {step}")
        win, ov = tiling.windows(self.size, m, final=True)
        return [f"pixel model on windows of {win[0]}x{win[1]} px overlapping by {ov[0]} px "
                f"({'shifted' if tiling.request.shift else 'fixed'} grid); CLIP guidance acts on the whole image"]

    def memory_probes(self, lr_hw: tuple[int, int], scale: int, tiling: Tiling | None) -> list[MemoryProbe]:
        size = (lr_hw[0] * scale, lr_hw[1] * scale)
        window = tiling.windows(self.size, self.multiple, final=True)[0] if tiling is not None else None

        def run(rows: int, h: int, w: int) -> torch.Tensor:
            x = zeros_like_rows(rows, self.channels, h, w, like=self.unet, x=True)
            return self.unet(x, torch.tensor([500])).sample

        return [MemoryProbe("pixel UNet", run, size, window, module=self.unet)]

    def encode_prompt(self, prompt: str) -> GuidedCond:
        if not prompt:
            return GuidedCond(None)
        if self.clip is None:
            raise UsageError("this pixel model is unconditional and no CLIP model is loaded for guidance: add "
                             "stages.clip to the model spec (e.g. openai/clip-vit-base-patch32) or use an empty prompt")
        return GuidedCond(self.clip.text_features(prompt))

    def text_scores(self, x: torch.Tensor, prompt: str) -> torch.Tensor | None:
        return None if self.clip is None else self.clip.prompt_scores(x, prompt)

    def build_stages(self, solver: str, solver_options: dict, options: dict,
                     tiling: Tiling | None = None) -> list[Stage]:
        o = PixelOptions.from_dict(options, self.defaults)
        guidance = o.guidance_settings()
        check_stage_option_keys(solver_options, (STAGE,))
        base: Any = PixelDenoiser(self.unet, self.schedule, self.adapter)
        if tiling is not None:  # windows below CLIP guidance: the guidance sees the whole image
            base = tiling.wrap(base, self.size, self.multiple, final=True)
        den: Any = base
        project = False
        if self.clip is not None and guidance["scale"] > 0:
            den = CLIPGuidance(base, self.clip, None, **guidance)
            project = o.clip_project_null

        def bind(op: LinearOperator, y: torch.Tensor):
            # the guidance gradient is projected onto the null space of this run's operator
            return replace(den, project_null=op), op

        return [Stage(STAGE, den, divisor=1, channels=self.channels, bind=bind if project else None,
                      solver=stage_solver_config(solver, STAGE, SOLVER_DEFAULTS, solver_options))]

    def describe(self) -> dict:
        return {**super().describe(), "output_size": list(self.size), "clip": self.clip is not None}


# ------------------------------------------------------------------------------------------------
# loading
# ------------------------------------------------------------------------------------------------
def _load_with_fallback(cls: Any, src: tuple[str, str | None], sub: str, markers: tuple[str, ...], *,
                        offline: bool, what: str, **kw: Any) -> Any:
    """Load from ``sub`` (a pipeline folder) or from the root (the old single-model layout)."""
    present = has_subfolder(src, sub, markers)
    if present is True:
        return load_pretrained(cls, src, subfolder=sub, offline=offline, what=what, **kw)
    if present is False:
        return load_pretrained(cls, src, offline=offline, what=what, **kw)
    try:  # hub id: the pipeline layout first, then the root
        return load_pretrained(cls, src, subfolder=sub, offline=offline, what=what, **kw)
    except ModelNotFoundError:
        return load_pretrained(cls, src, offline=offline, what=what, **kw)


def load_clip(entry: Any, *, device: torch.device, dtype: torch.dtype, offline: bool) -> ClipModel:
    return load_clip_model(entry, device=device, dtype=dtype, offline=offline, what="CLIP model")


def load_backend(source: dict, *, device: torch.device, dtype: torch.dtype, offline: bool) -> PixelBackend:
    """Load from a model spec ``{"backend": "pixel", "stages": {"unet": ..., "clip": ...}}``: ``unet`` a
    DDPMPipeline folder/hub id (``unet/`` + ``scheduler/``, or the old layout with the UNet's
    ``config.json`` and ``scheduler_config.json`` at the root); ``clip`` (optional) a transformers CLIP."""
    from diffusers import DDPMScheduler, UNet2DModel

    stages = spec_stages(source, "pixel", ("unet",), ("clip",),
                         "a UNet2DModel / DDPM pipeline folder or hub id, e.g. google/ddpm-celebahq-256")
    load = LoadOptions.of(source, "pixel", known=PixelBackend.memory_options)
    src = resolve_source(stages["unet"], "unet")
    unet = _load_with_fallback(UNet2DModel, src, "unet", ("config.json",), offline=offline,
                               what="pixel UNet", torch_dtype=dtype)  # load.apply puts it on the device
    scheduler = _load_with_fallback(DDPMScheduler, src, "scheduler", ("scheduler_config.json",), offline=offline,
                                    what="noise scheduler")
    clip = load_clip(stages["clip"], device=torch.device("cpu"), dtype=dtype, offline=offline) if "clip" in stages \
        else None
    info = source.get("info") or ModelInfo(name=str(source.get("name", "pixel")), backend=BACKEND,
                                           description="pixel-space diffusion model spec")
    backend = PixelBackend(info=info, unet=unet, scheduler=scheduler, clip=clip, defaults=source.get("defaults"),
                           device=device, dtype=dtype)
    backend.load_options = load
    backend.residency = load.apply(device, {"unet": unet} | ({"clip": clip.clip_model} if clip else {}))
    return backend
