"""EXPERIMENTAL latent-diffusion backend (Stable Diffusion 1.5 / 2.1-base via diffusers components).

The degradation ``A`` acts on pixels, the diffusion on VAE latents ``z`` (``x = D(z)``), so there is no
closed-form null space (ALGORITHMS.md, "Latent models").  What this backend does, keeping the one
sampling loop:

* **DPS** (the natural fit): the solver gets a ``LatentOperator`` with ``A(z) = A_pix(D(z))``: nonlinear,
  which DPS does not mind: its step is ``grad_{z_t} || y - A_pix(D(z0_hat(z_t))) ||``, through the UNet
  and the VAE decoder.
* **DDNM / DDNM+** (sigma_y = 0): decode-project-encode inside the denoiser adapter,
  ``z0' = E(D(z0_hat) - A_pix+ (A_pix D(z0_hat) - y))`` (``ProjectingLatentDenoiser``), so the standard
  DDNM step sees an x0 estimate that is consistent up to the VAE's round-trip error; the solver's own
  correction is switched off (the operator's ``A_pinv`` returns zero in this mode, see ``LatentOperator``).
* **PiGDM** and DDNM+ with ``sigma_y > 0`` need A's singular values: not available (``UsageError``).
* **final exact projection** (``postprocess``): decode the final latents and set
  ``x <- x - A_pix+ (A_pix x - y)``: exact LR consistency in pixels, at the price of a visible LR-grid
  correction wherever the VAE could not match ``y``.  The explore API calls ``backend.postprocess``.

LR consistency before the final projection depends on the VAE (a trained SD VAE round-trips natural
images to ~25-30 dB); after it, it is exact up to float error.  Measured numbers on the tiny random
model are in the tests; real-model numbers are not measured here (no weights on this machine).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..cascade import Stage
from ..denoiser import Prediction
from ..errors import InputImageError, UsageError
from ..guidance import ClipModel
from ..operators import LinearOperator
from ..schedule import NoiseSchedule
from ..solvers import SolverConfig, config_class, solver_classes
from .base import Backend, ModelInfo, check_options
from .hf_common import (ModelOutputAdapter, spec_stages, check_stage_option_keys, float_option, load_pretrained, merge_options,
                        noise_schedule, resolve_source, stage_solver_config, timestep_tensor)

BACKEND = "latent"
STAGE = "latent"

DEFAULT_OPTIONS: dict[str, Any] = {
    "guidance_scale": 7.5,  # SD's usual CFG; a starting point for SR
    "negative_prompt": "",
}

SOLVER_DEFAULTS: dict[str, dict[str, Any]] = {
    "ddnm": {"steps": 100}, "ddnm+": {"steps": 100}, "plain": {"steps": 50},
    "dps": {"steps": 250, "zeta": 0.5},
}


# ------------------------------------------------------------------------------------------------
# VAE and the latent operator
# ------------------------------------------------------------------------------------------------
@dataclass
class LatentCodec:
    """The VAE as ``E: pixels [-1, 1] -> latents`` (posterior mean, scaled) and ``D: latents -> pixels``.
    Runs the VAE in its dtype; inputs/outputs keep the caller's dtype.  Differentiable."""

    vae: Any

    @property
    def factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    def _scale_shift(self) -> tuple[float, float]:
        return float(self.vae.config.scaling_factor), float(self.vae.config.get("shift_factor") or 0.0)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        sf, sh = self._scale_shift()
        mean = self.vae.encode(x.to(self.vae.dtype)).latent_dist.mean
        return ((mean - sh) * sf).to(x.dtype)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        sf, sh = self._scale_shift()
        return self.vae.decode((z / sf + sh).to(self.vae.dtype)).sample.to(z.dtype)


class LatentOperator(LinearOperator):
    """``A(z) = A_pix(D(z))`` on latents, for the unchanged solver loop (not linear: the name is the
    interface).

    ``A`` is differentiable (DPS takes its gradient).  ``A_pinv``: with ``projected=False`` it lifts a
    pixel-space measurement to latents by encoding, ``E(A_pix+ y)`` (what a warm start
    ``init="pinv"`` needs); with ``projected=True`` (DDNM-family: the denoiser adapter already projected
    onto ``A x = y`` in pixels) it returns zeros, so the solver's own correction is a no-op instead of
    an encoder applied to a residual image (the VAE encoder's GroupNorms make ``E(r)`` large even for a
    tiny residual ``r``).  ``At``/``spectral`` do not exist for a nonlinear map: they raise."""

    name = "latent"

    def __init__(self, pixel: LinearOperator, codec: LatentCodec, *, projected: bool = False):
        c, h, w = pixel.in_shape
        f = codec.factor
        if h % f or w % f:
            raise InputImageError(f"output {h}x{w} is not a multiple of the VAE's factor {f}")
        self.pixel, self.codec, self.projected = pixel, codec, projected
        self.in_shape = (codec.latent_channels, h // f, w // f)
        self.out_shape = tuple(pixel.out_shape)

    def A(self, z: torch.Tensor) -> torch.Tensor:
        return self.pixel.A(self.codec.decode(z))

    def A_pinv(self, y: torch.Tensor) -> torch.Tensor:
        if self.projected:
            return torch.zeros((y.shape[0], *self.in_shape), device=y.device, dtype=y.dtype)
        return self.codec.encode(self.pixel.A_pinv(y))

    def _no_svd(self, what: str):
        raise UsageError(f"{what} needs the singular values of a linear operator; a latent model's A(z) = "
                         "A_pix(D(z)) has none. Use dps, ddnm or ddnm+ with sigma_y = 0 on latent models")

    def At(self, y: torch.Tensor) -> torch.Tensor:
        self._no_svd("A^T")

    def spectral(self, x: torch.Tensor, fn) -> torch.Tensor:
        self._no_svd("this solver (PiGDM, or DDNM+ with sigma_y > 0)")

    def singular_values(self) -> torch.Tensor:
        self._no_svd("singular_values")

    def project_range(self, x: torch.Tensor) -> torch.Tensor:
        self._no_svd("a range projection")

    def describe(self) -> dict:
        return {**super().describe(), "pixel": self.pixel.describe(), "projected": self.projected}


# ------------------------------------------------------------------------------------------------
# denoisers
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LatentText:
    """Text-encoder hidden states of the prompt and of the negative/empty prompt, (1, L, D)."""

    prompt: str
    hidden: torch.Tensor
    null_hidden: torch.Tensor | None = None


@dataclass
class LatentDenoiser:
    """SD's UNet2DConditionModel on latents with classifier-free guidance in one batched call;
    ``guidance = 1`` evaluates the text branch only.  ``null_hidden`` overrides the cond's
    unconditional branch (the negative prompt)."""

    unet: Any
    schedule: NoiseSchedule
    adapter: ModelOutputAdapter
    guidance: float = 7.5
    null_hidden: torch.Tensor | None = None

    def __call__(self, x_t: torch.Tensor, t: int, cond: LatentText) -> Prediction:
        B = x_t.shape[0]
        dt = self.unet.dtype
        if self.guidance == 1.0:
            hid, n = cond.hidden.expand(B, -1, -1), 1
        else:
            null = self.null_hidden if self.null_hidden is not None else cond.null_hidden
            hid, n = torch.cat([null.expand(B, -1, -1), cond.hidden.expand(B, -1, -1)]), 2
        out = self.unet(torch.cat([x_t] * n).to(dt), timestep_tensor(t, n * B, x_t.device),
                        encoder_hidden_states=hid.to(dt)).sample
        abar = self.schedule.abar(t)
        out = self.adapter.split(out)
        if n == 1:
            eps = self.adapter.to_eps(x_t, out, abar)
        else:
            e_u, e_c = (self.adapter.to_eps(x_t, o, abar) for o in out.chunk(2))
            eps = e_u + self.guidance * (e_c - e_u)
        return self.adapter.prediction(x_t, eps, abar)


@dataclass
class ProjectingLatentDenoiser:
    """Decode-project-encode: ``z0' = E(D(z0) - A+ (A D(z0) - y))`` after the wrapped denoiser, eps
    recomputed to match (DDNM-family solvers on latents)."""

    base: Any
    codec: LatentCodec
    pixel: LinearOperator
    y: torch.Tensor

    @property
    def schedule(self) -> NoiseSchedule:
        return self.base.schedule

    def __call__(self, x_t: torch.Tensor, t: int, cond: Any = None) -> Prediction:
        pred = self.base(x_t, t, cond)
        x = self.codec.decode(pred.x0)
        y = self.y.to(x).expand(x.shape[0], *self.y.shape[1:])
        x = x - self.pixel.A_pinv(self.pixel.A(x) - y)  # DDNM eq. 13, in pixels
        return Prediction.from_x0(x_t, self.codec.encode(x), self.schedule.abar(t))


def project_pixels(x: torch.Tensor, y: torch.Tensor, pixel: LinearOperator) -> torch.Tensor:
    """The exact pixel-space projection ``x - A+ (A x - y)``."""
    y = y.to(x).expand(x.shape[0], *y.shape[1:])
    return x - pixel.A_pinv(pixel.A(x) - y)


def decode_and_project(codec: Any, z: torch.Tensor, y: torch.Tensor, operator: LinearOperator) -> torch.Tensor:
    """Final latents -> pixels (float32) -> exact pixel projection; ``operator``: a ``LatentOperator`` or
    the pixel operator itself."""
    pixel = operator.pixel if isinstance(operator, LatentOperator) else operator
    with torch.no_grad():
        x = codec.decode(z.float())
    return project_pixels(x, y.to(x), pixel)


# ------------------------------------------------------------------------------------------------
# backend
# ------------------------------------------------------------------------------------------------
def latent_solver(solver: str) -> type[SolverConfig]:
    """The config class of ``solver`` if it can run on latents (it must not need A's singular values,
    which ``A(z) = A_pix(D(z))`` does not have); a ``UsageError`` listing the ones that can otherwise."""
    try:
        cls = config_class(solver)
    except ValueError as e:
        raise UsageError(str(e)) from e
    if cls.needs_svd:
        ok = [n for n, c in solver_classes().items() if not c.needs_svd]
        raise UsageError(f"solver {solver!r} needs a linear operator's SVD, which a latent model does not have; "
                         f"use one of {', '.join(ok)} (experimental backend)")
    return cls


class LatentBackend(Backend):
    """EXPERIMENTAL: one latent stage + ``postprocess`` (decode + exact pixel projection)."""

    channels = 3

    def __init__(self, *, info: ModelInfo, unet: Any, vae: Any, text_encoder: Any, tokenizer: Any, scheduler: Any,
                 clip: ClipModel | None = None, defaults: dict | None = None,
                 device: torch.device = torch.device("cpu"), dtype: torch.dtype = torch.float32):
        self.info = info
        self.device, self.dtype = device, dtype
        for m in (unet, vae, text_encoder):
            m.eval().requires_grad_(False)
        self.unet, self.text_encoder, self.tokenizer, self.clip = unet, text_encoder, tokenizer, clip
        self.codec = LatentCodec(vae)
        self.schedule = noise_schedule(scheduler, "latent")
        self.adapter = ModelOutputAdapter(scheduler.config.get("prediction_type", "epsilon"),
                                          int(unet.config.in_channels), None)
        self.defaults = merge_options(DEFAULT_OPTIONS, defaults, {}, "latent")

    def multiple(self) -> int:
        return self.codec.factor * 2 ** (len(self.unet.config.block_out_channels) - 1)

    def check_size(self, lr_hw: tuple[int, int], scale: int) -> None:
        h, w = lr_hw
        H, W, m = h * scale, w * scale, self.multiple()
        if H % m or W % m:
            s = int(self.unet.config.sample_size) * self.codec.factor
            hint = f" It was trained at {s}x{s}: e.g. LR {s // scale}x{s // scale} at x{scale}." if s % scale == 0 else ""
            raise InputImageError(
                f"LR {h}x{w} at x{scale} gives {H}x{W}; this latent model needs output sides that are multiples "
                f"of {m} (VAE x{self.codec.factor} times the UNet's downsampling).{hint}")

    def _hidden(self, prompt: str) -> torch.Tensor:
        ids = self.tokenizer([prompt], padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        with torch.no_grad():
            return self.text_encoder(ids.to(self.device))[0].float()

    def encode_prompt(self, prompt: str) -> LatentText:
        return LatentText(prompt, self._hidden(prompt), self._hidden(""))

    def text_scores(self, x: torch.Tensor, prompt: str) -> torch.Tensor | None:
        return None if self.clip is None else self.clip.prompt_scores(x, prompt)

    def build_stages(self, solver: str, solver_options: dict, options: dict) -> list[Stage]:
        o = merge_options(DEFAULT_OPTIONS, self.defaults, options, "latent")
        guidance = float_option(o, "guidance_scale", lo=0.0)
        if not isinstance(o["negative_prompt"], str):
            raise UsageError(f"option negative_prompt must be a string, got {o['negative_prompt']!r}")
        projected = latent_solver(solver).projects
        check_stage_option_keys(solver_options, (STAGE,))
        null = self._hidden(o["negative_prompt"]) if o["negative_prompt"] else None
        den = LatentDenoiser(self.unet, self.schedule, self.adapter, guidance, null)
        codec = self.codec

        def bind(op: LinearOperator, y: torch.Tensor):
            lop = LatentOperator(op, codec, projected=projected)
            return (ProjectingLatentDenoiser(den, codec, op, y) if projected else den), lop

        return [Stage(STAGE, den, divisor=1, channels=3, bind=bind,
                      solver=stage_solver_config(solver, STAGE, SOLVER_DEFAULTS, solver_options))]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Final latents -> pixels in [-1, 1] (no projection)."""
        with torch.no_grad():
            return self.codec.decode(z.to(self.device, torch.float32))

    def postprocess(self, x_final: torch.Tensor, y: torch.Tensor, operator: LinearOperator) -> torch.Tensor:
        """Final latents -> pixels, then the exact pixel-space projection ``x - A+ (A x - y)`` so that the
        result downsamples to ``y`` exactly.  ``operator``: the stage's operator (a ``LatentOperator``
        or the pixel operator itself)."""
        return decode_and_project(self.codec, x_final.to(self.device), y, operator)

    def describe(self) -> dict:
        return {**super().describe(), "experimental": True, "vae_factor": self.codec.factor}


# ------------------------------------------------------------------------------------------------
# loading
# ------------------------------------------------------------------------------------------------
def load_backend(source: dict, *, device: torch.device, dtype: torch.dtype, offline: bool) -> LatentBackend:
    """Load from ``{"backend": "latent", "stages": {"pipeline": ..., "clip": ...}}``: ``pipeline`` a
    StableDiffusionPipeline folder/hub id (vae, unet, text_encoder, tokenizer, scheduler); ``clip``
    (optional) a transformers CLIP for text scores."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from .pixel import load_clip

    stages = spec_stages(source, "latent", ("pipeline",), ("clip",),
                         "a StableDiffusionPipeline folder or hub id")
    load = dict(source.get("load", {}) or {})
    check_options(load, ("cpu_offload", "attention_slicing"), "latent load")
    if load.get("cpu_offload"):
        raise UsageError("cpu_offload is not supported by the latent backend")
    src = resolve_source(stages["pipeline"], "pipeline")
    kw = dict(offline=offline)
    unet = load_pretrained(UNet2DConditionModel, src, subfolder="unet", what="latent UNet", torch_dtype=dtype, **kw)
    if load.get("attention_slicing"):
        unet.set_attention_slice("auto")
    parts = dict(
        unet=unet.to(device),
        vae=load_pretrained(AutoencoderKL, src, subfolder="vae", what="VAE", torch_dtype=dtype, **kw).to(device),
        text_encoder=load_pretrained(CLIPTextModel, src, subfolder="text_encoder", what="text encoder", dtype=dtype,
                                     **kw).to(device),
        tokenizer=load_pretrained(CLIPTokenizer, src, subfolder="tokenizer", what="tokenizer", **kw),
        # any DDPM-family scheduler config gives the training schedule; DDPMScheduler reads them all
        scheduler=load_pretrained(DDPMScheduler, src, subfolder="scheduler", what="noise scheduler", **kw),
    )
    clip = load_clip(stages["clip"], device=device, dtype=dtype, offline=offline) if "clip" in stages else None
    info = source.get("info") or ModelInfo(name=str(source.get("name", "latent")), backend=BACKEND,
                                           description="EXPERIMENTAL latent diffusion model spec")
    return LatentBackend(info=info, clip=clip, defaults=source.get("defaults"), device=device, dtype=dtype, **parts)
