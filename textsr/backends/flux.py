"""EXPERIMENTAL FLUX.1 [schnell] / [dev] backend (Black Forest Labs; diffusers ``FluxPipeline`` components).

What is FLUX.1's own (the rest is ``flow_base``): the ``FluxTransformer2DModel`` takes 2x2 patches of the 16-channel
VAE latent as tokens (``pack``/``unpack``), positional ids ``(0, row, col)`` of the token grid and zeros for the
text tokens, the flow level ``s`` as its time input; text = CLIP-L's pooled output (77 tokens) + T5-XXL's states
(512 tokens for [dev], 256 for [schnell], as the model cards say); guidance: [dev] takes a distilled guidance value
(``guidance_embeds``), [schnell] none (timestep-distilled, 4 steps).  Grid: ``sigmas = linspace(1, 1/N, N)`` shifted
by the scheduler with ``mu`` from the image's token count (``calculate_shift`` of the pipeline).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..flow import scheduler_levels
from .base import ModelInfo
from .flow_base import FlowBackendBase
from .flow_guidance import truncation_note
from .flow_loading import PipelineParts, execution_device, place_modules
from .latent import VAECodec
from .options import LoadOptions

BACKEND = "flux"


def pack(z: torch.Tensor) -> torch.Tensor:
    """``(B, C, h, w)`` latents -> ``(B, h/2 * w/2, 4C)`` tokens of 2x2 patches (FluxPipeline's ``_pack_latents``)."""
    B, C, h, w = z.shape
    return z.view(B, C, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(B, (h // 2) * (w // 2), 4 * C)


def unpack(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The inverse of ``pack`` for an ``h x w`` latent."""
    B, _, D = tokens.shape
    C = D // 4
    return tokens.view(B, h // 2, w // 2, C, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(B, C, h, w)


def token_ids(rows: int, cols: int, device: torch.device) -> torch.Tensor:
    """``(rows * cols, 3)`` positional ids ``(0, row, col)`` of a token grid."""
    ids = torch.zeros(rows, cols, 3, device=device)
    ids[..., 1] += torch.arange(rows, device=device)[:, None]
    ids[..., 2] += torch.arange(cols, device=device)[None, :]
    return ids.reshape(rows * cols, 3)


def flux_mu(config: Any, tokens: int) -> float:
    """FluxPipeline's ``calculate_shift``: ``mu`` linear in the token count between the scheduler's two anchors."""
    lo, hi = config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096)
    b0, b1 = config.get("base_shift", 0.5), config.get("max_shift", 1.15)
    m = (b1 - b0) / (hi - lo)
    return tokens * m + b0 - m * lo


@dataclass
class FluxNet:
    """``FluxTransformer2DModel`` on ``(n, C, h, w)`` latents; ``guidance``: [dev]'s distilled guidance value
    (None for a transformer without a guidance embedding)."""

    transformer: Any
    guidance: float | None = None

    def __call__(self, x_s: torch.Tensor, s: float, hidden: torch.Tensor, pooled: torch.Tensor | None) -> torch.Tensor:
        n, _, h, w = x_s.shape
        dt, dev = self.transformer.dtype, x_s.device
        g = None if self.guidance is None else torch.full((n,), float(self.guidance), device=dev, dtype=torch.float32)
        out = self.transformer(hidden_states=pack(x_s).to(dt), encoder_hidden_states=hidden.to(dev, dt),
                               pooled_projections=None if pooled is None else pooled.to(dev, dt),
                               timestep=torch.full((n,), s, device=dev, dtype=dt), guidance=g,
                               img_ids=token_ids(h // 2, w // 2, dev),
                               txt_ids=torch.zeros(hidden.shape[1], 3, device=dev), return_dict=False)[0]
        return unpack(out, h, w).to(x_s.dtype)


@dataclass
class FluxText:
    """CLIP-L (pooled) + T5 (states) as FluxPipeline encodes them."""

    tokenizer: Any
    text_encoder: Any
    tokenizer_2: Any
    text_encoder_2: Any
    max_length: int = 512

    def _ids(self, tok: Any, prompt: str, n: int, device: torch.device) -> torch.Tensor:
        ids = tok([prompt], padding="max_length", max_length=n, truncation=True, return_tensors="pt").input_ids
        return ids.to(device)

    def encode(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        dev1, dev2 = execution_device(self.text_encoder), execution_device(self.text_encoder_2)
        clip_ids = self._ids(self.tokenizer, prompt, self.tokenizer.model_max_length, dev1)
        pooled = self.text_encoder(clip_ids).pooler_output
        hidden = self.text_encoder_2(self._ids(self.tokenizer_2, prompt, self.max_length, dev2))[0]
        return hidden, pooled

    def notes(self, prompt: str) -> list[str]:
        return (truncation_note(self.tokenizer, prompt, self.tokenizer.model_max_length, "CLIP (the pooled vector)")
                + truncation_note(self.tokenizer_2, prompt, self.max_length, "T5"))

    def modules(self) -> list[torch.nn.Module]:
        return [self.text_encoder, self.text_encoder_2]

    @property
    def tokens(self) -> int:
        return self.max_length


class FluxBackend(FlowBackendBase):
    """EXPERIMENTAL FLUX.1: one latent flow stage + the exact final pixel projection (see ``flow_base``)."""

    codec: VAECodec

    patch = 2
    model_label = "FLUX.1"

    def __init__(self, *, info: ModelInfo, transformer: Any, vae: Any, text: FluxText, scheduler: Any,
                 load: LoadOptions = LoadOptions(), defaults: dict | None = None,
                 device: torch.device = torch.device("cpu"), dtype: torch.dtype = torch.float32):
        self.info, self.device, self.dtype = info, device, dtype
        self.transformer, self.text, self.scheduler, self.codec = transformer, text, scheduler, VAECodec(vae)
        distilled = bool(transformer.config.get("guidance_embeds", False))
        self.label = "FLUX.1 [dev]" if distilled else "FLUX.1 [schnell]"
        self.init_flow(guidance_kind="distilled" if distilled else "none", default_steps=28 if distilled else 4,
                       load=load, defaults=defaults)

    def codec_module(self) -> torch.nn.Module:
        return self.codec.vae

    def make_net(self, options: Any) -> FluxNet:
        return FluxNet(self.transformer, getattr(options, "guidance_scale", None))

    def levels(self, steps: int, latent_hw: tuple[int, int]) -> list[float]:
        tokens = (latent_hw[0] // 2) * (latent_hw[1] // 2)
        sig = torch.linspace(1.0, 1.0 / steps, steps, dtype=torch.float64).tolist()
        return scheduler_levels(self.scheduler, steps, mu=flux_mu(self.scheduler.config, tokens), sigmas=sig)


def load_backend(source: dict, *, device: torch.device, dtype: torch.dtype, offline: bool) -> FluxBackend:
    """Load from ``{"backend": "flux", "stages": {"pipeline": ...}}``: a FluxPipeline folder or hub id
    (transformer, vae, text_encoder + tokenizer (CLIP-L), text_encoder_2 + tokenizer_2 (T5-XXL), scheduler)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextModel, CLIPTokenizer, T5EncoderModel, T5Tokenizer

    parts = PipelineParts(source, BACKEND, "FluxPipeline folder or hub id, e.g. black-forest-labs/FLUX.1-schnell",
                          dtype=dtype, offline=offline)
    transformer = parts.model(FluxTransformer2DModel, "transformer", "FLUX transformer")
    vae = parts.model(AutoencoderKL, "vae", "FLUX VAE")
    text = FluxText(parts.part(CLIPTokenizer, "tokenizer", "CLIP tokenizer"),
                    parts.model(CLIPTextModel, "text_encoder", "CLIP text encoder", transformers=True),
                    parts.part(T5Tokenizer, "tokenizer_2", "T5 tokenizer"),
                    parts.model(T5EncoderModel, "text_encoder_2", "T5 text encoder", transformers=True),
                    max_length=512 if transformer.config.get("guidance_embeds", False) else 256)
    scheduler = parts.part(FlowMatchEulerDiscreteScheduler, "scheduler", "flow scheduler")
    place_modules(parts.load, device, resident=[transformer, vae], text=text.modules(), vae=vae)
    return FluxBackend(info=parts.info(source, BACKEND, "FLUX.1"), transformer=transformer, vae=vae, text=text,
                       scheduler=scheduler, load=parts.load, defaults=source.get("defaults"), device=device,
                       dtype=dtype)
