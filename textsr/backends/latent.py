"""EXPERIMENTAL latent-diffusion backend: Stable Diffusion 1.5 / 2.1-base via diffusers components.

How a solver runs on latents (decode-project-encode for DDNM, DPS through the decoder, the final exact
pixel projection) is shared with Kandinsky 2.2 in ``latent_base.py``; this module adds what is Stable
Diffusion's own: the VAE codec, the CLIP text encoder and the UNet with classifier-free guidance on text
states (``guidance_scale``, ``negative_prompt``).

LR consistency before the final projection depends on the VAE (a trained SD VAE round-trips natural
images to ~25-30 dB); after it, it is exact up to float error.  Measured numbers on the tiny random
model are in the tests; real-model numbers are not measured here (no weights on this machine).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..denoiser import Prediction
from ..errors import UsageError
from ..guidance import ClipModel
from ..schedule import NoiseSchedule
from .base import ModelInfo
from .hf_common import ModelOutputAdapter, load_pretrained, noise_schedule, resolve_source, spec_stages, timestep_tensor
from .latent_base import LatentBackendBase
from .options import BackendOptions, LoadOptions, number, text

BACKEND = "latent"


@dataclass(frozen=True)
class LatentOptions(BackendOptions):
    """Stable Diffusion's sampling options: guidance_scale (7.5, SD's usual CFG; a starting point for SR);
    negative_prompt (the unconditional branch's prompt; "" = the empty prompt)."""

    what: ClassVar[str] = "latent"
    guidance_scale: float = 7.5
    negative_prompt: str = ""

    def __post_init__(self) -> None:
        self.set("guidance_scale", number(self.guidance_scale, "guidance_scale", lo=0.0))
        self.set("negative_prompt", text(self.negative_prompt, "negative_prompt"))


# ------------------------------------------------------------------------------------------------
# the VAE and the denoiser
# ------------------------------------------------------------------------------------------------
@dataclass
class VAECodec:
    """Stable Diffusion's VAE as a ``Codec``: ``E: pixels [-1, 1] -> latents`` (posterior mean, scaled) and
    ``D: latents -> pixels``.  Runs the VAE in its dtype; inputs/outputs keep the caller's dtype.
    Differentiable."""

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

    def __call__(self, x_t: torch.Tensor, t: int, cond: LatentText | None = None) -> Prediction:
        if not isinstance(cond, LatentText):
            raise UsageError("the latent backend's denoiser needs the conditioning from its encode_prompt")
        B = x_t.shape[0]
        dt = self.unet.dtype
        if self.guidance == 1.0:
            hid, n = cond.hidden.expand(B, -1, -1), 1
        else:
            null = self.null_hidden if self.null_hidden is not None else cond.null_hidden
            if null is None:
                raise UsageError("classifier-free guidance needs the unconditional text states "
                                 "(encode_prompt gives them)")
            hid, n = torch.cat([null.expand(B, -1, -1), cond.hidden.expand(B, -1, -1)]), 2
        out = self.unet(torch.cat([x_t] * n).to(dt), timestep_tensor(t, n * B, x_t.device),
                        encoder_hidden_states=hid.to(dt)).sample
        return self.adapter.guided(x_t, out, self.schedule.abar(t), self.guidance)


# ------------------------------------------------------------------------------------------------
# backend
# ------------------------------------------------------------------------------------------------
class LatentBackend(LatentBackendBase[LatentText]):
    """EXPERIMENTAL Stable Diffusion: one latent stage + ``postprocess`` (decode + exact pixel projection)."""

    options_class = LatentOptions
    neutral_options = {"guidance_scale": 1.0}
    memory_options = ("cpu_offload", "sequential_cpu_offload", "attention_slicing", "vae_tiling", "vae_slicing")

    def __init__(self, *, info: ModelInfo, unet: Any, vae: Any, text_encoder: Any, tokenizer: Any, scheduler: Any,
                 clip: ClipModel | None = None, defaults: dict | None = None,
                 device: torch.device = torch.device("cpu"), dtype: torch.dtype = torch.float32):
        self.info = info
        self.device, self.dtype = device, dtype
        for m in (unet, vae, text_encoder):
            m.eval().requires_grad_(False)
        self.unet, self.text_encoder, self.tokenizer, self.clip = unet, text_encoder, tokenizer, clip
        self.codec = VAECodec(vae)
        self.schedule = noise_schedule(scheduler, "latent")
        self.adapter = ModelOutputAdapter(scheduler.config.get("prediction_type", "epsilon"),
                                          int(unet.config.in_channels), None)
        self.defaults = dict(defaults or {})
        self.parse_options({})  # the model spec's defaults are checked when the model loads

    def training_size_hint(self, scale: int) -> str:
        s = int(self.unet.config.sample_size) * self.codec.factor
        return f"It was trained at {s}x{s}: e.g. LR {s // scale}x{s // scale} at x{scale}." if s % scale == 0 else ""

    def _hidden(self, prompt: str) -> torch.Tensor:
        ids = self.tokenizer([prompt], padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        with torch.no_grad():
            return self.text_encoder(ids.to(self.device))[0].float()

    def encode_prompt(self, prompt: str) -> LatentText:
        return LatentText(prompt, self._hidden(prompt), self._hidden(""))

    def text_scores(self, x: torch.Tensor, prompt: str) -> torch.Tensor | None:
        return None if self.clip is None else self.clip.prompt_scores(x, prompt)

    def probe_condition(self, rows: int) -> LatentText:
        z = torch.zeros(1, int(self.tokenizer.model_max_length), int(self.text_encoder.config.hidden_size),
                        dtype=self.unet.dtype, device=self.unet.device)
        return LatentText("", z, z)

    def make_denoiser(self, options: LatentOptions) -> LatentDenoiser:
        null = self._hidden(options.negative_prompt) if options.negative_prompt else None
        return LatentDenoiser(self.unet, self.schedule, self.adapter, options.guidance_scale, null)


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
    load = LoadOptions.of(source, "latent", known=LatentBackend.memory_options)
    src = resolve_source(stages["pipeline"], "pipeline")
    kw = dict(offline=offline)
    parts = dict(  # loaded on the CPU; load.apply puts them on the device
        unet=load_pretrained(UNet2DConditionModel, src, subfolder="unet", what="latent UNet", torch_dtype=dtype, **kw),
        vae=load_pretrained(AutoencoderKL, src, subfolder="vae", what="VAE", torch_dtype=dtype, **kw),
        text_encoder=load_pretrained(CLIPTextModel, src, subfolder="text_encoder", what="text encoder", dtype=dtype,
                                     **kw),
        tokenizer=load_pretrained(CLIPTokenizer, src, subfolder="tokenizer", what="tokenizer", **kw),
        # any DDPM-family scheduler config gives the training schedule; DDPMScheduler reads them all
        scheduler=load_pretrained(DDPMScheduler, src, subfolder="scheduler", what="noise scheduler", **kw),
    )
    clip = load_clip(stages["clip"], device=torch.device("cpu"), dtype=dtype, offline=offline) if "clip" in stages \
        else None
    info = source.get("info") or ModelInfo(name=str(source.get("name", "latent")), backend=BACKEND,
                                           description="EXPERIMENTAL latent diffusion model spec")
    backend = LatentBackend(info=info, clip=clip, defaults=source.get("defaults"), device=device, dtype=dtype, **parts)
    modules = {k: parts[k] for k in ("text_encoder", "unet", "vae")} | ({"clip": clip.clip_model} if clip else {})
    backend.load_options, backend.residency = load, load.apply(device, modules, slicing=[parts["unet"]],
                                                               vaes=[parts["vae"]])
    return backend
