"""EXPERIMENTAL Stable Diffusion 3.5 [medium] / [large] backend (Stability AI; diffusers
``StableDiffusion3Pipeline`` components).

What is SD3's own (the rest is ``flow_base``): the ``SD3Transformer2DModel`` patchifies the 16-channel VAE latent
itself (2 x 2 patches, a cropped positional embedding) and takes ``1000 s`` as its time input; text = the
penultimate hidden states of CLIP-L and CLIP-G (77 tokens each) concatenated along the features and zero-padded
to T5's width, followed by T5-XXL's states (256 tokens), plus both CLIPs' pooled, projected outputs; guidance: true
classifier-free guidance with the empty (or negative) prompt; grid: the scheduler's own ``set_timesteps(N)``
(shift 3, no resolution-dependent shift unless the scheduler asks for one).  A pipeline saved without T5 (the
pipelines allow it) gets zeros in its place, as ``StableDiffusion3Pipeline`` does.
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
from .flux import flux_mu
from .latent import VAECodec
from .options import LoadOptions

BACKEND = "sd3"


@dataclass
class SD3Net:
    """``SD3Transformer2DModel`` on ``(n, C, h, w)`` latents; time input ``1000 s``."""

    transformer: Any

    def __call__(self, x_s: torch.Tensor, s: float, hidden: torch.Tensor, pooled: torch.Tensor | None) -> torch.Tensor:
        n, dt, dev = x_s.shape[0], self.transformer.dtype, x_s.device
        out = self.transformer(hidden_states=x_s.to(dt), timestep=torch.full((n,), 1000.0 * s, device=dev, dtype=dt),
                               encoder_hidden_states=hidden.to(dev, dt),
                               pooled_projections=None if pooled is None else pooled.to(dev, dt), return_dict=False)[0]
        return out.to(x_s.dtype)


@dataclass
class SD3Text:
    """Two CLIPs (penultimate states + pooled projections) and T5, as StableDiffusion3Pipeline encodes them."""

    clips: list[tuple[Any, Any]]  # (tokenizer, CLIPTextModelWithProjection) for CLIP-L and CLIP-G
    t5: tuple[Any, Any] | None  # (tokenizer, T5EncoderModel) or None
    joint_dim: int  # the transformer's joint_attention_dim (T5's width)
    max_length: int = 256

    def encode(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        states, pooled = [], []
        for tok, enc in self.clips:
            ids = tok([prompt], padding="max_length", max_length=tok.model_max_length, truncation=True,
                      return_tensors="pt").input_ids.to(execution_device(enc))
            out = enc(ids, output_hidden_states=True)
            states.append(out.hidden_states[-2])
            pooled.append(out[0])
        clip = torch.cat(states, dim=-1)
        clip = torch.nn.functional.pad(clip, (0, self.joint_dim - clip.shape[-1]))
        if self.t5 is None:
            t5 = torch.zeros(1, self.max_length, self.joint_dim, device=clip.device, dtype=clip.dtype)
        else:
            tok, enc = self.t5
            ids = tok([prompt], padding="max_length", max_length=self.max_length, truncation=True,
                      add_special_tokens=True, return_tensors="pt").input_ids.to(execution_device(enc))
            t5 = enc(ids)[0].to(clip.device, clip.dtype)
        return torch.cat([clip, t5], dim=-2), torch.cat(pooled, dim=-1)

    def notes(self, prompt: str) -> list[str]:
        tok = self.clips[0][0]
        out = truncation_note(tok, prompt, tok.model_max_length, "CLIP")
        return out + ([] if self.t5 is None else truncation_note(self.t5[0], prompt, self.max_length, "T5"))

    def modules(self) -> list[torch.nn.Module]:
        return [enc for _, enc in self.clips] + ([] if self.t5 is None else [self.t5[1]])

    @property
    def tokens(self) -> int:  # CLIP's, then T5's (or its zeros)
        return int(self.clips[0][0].model_max_length) + self.max_length


class SD3Backend(FlowBackendBase):
    """EXPERIMENTAL Stable Diffusion 3.5: one latent flow stage + the exact final pixel projection (``flow_base``)."""

    codec: VAECodec

    model_label = "Stable Diffusion 3.5"

    def __init__(self, *, info: ModelInfo, transformer: Any, vae: Any, text: SD3Text, scheduler: Any,
                 load: LoadOptions = LoadOptions(), defaults: dict | None = None,
                 device: torch.device = torch.device("cpu"), dtype: torch.dtype = torch.float32):
        self.info, self.device, self.dtype = info, device, dtype
        self.transformer, self.text, self.scheduler, self.codec = transformer, text, scheduler, VAECodec(vae)
        self.patch = int(transformer.config.patch_size)
        self.label = "Stable Diffusion 3.5"
        self.init_flow(guidance_kind="cfg", default_steps=28, load=load, defaults=defaults)

    def codec_module(self) -> torch.nn.Module:
        return self.codec.vae

    def max_side(self) -> int | None:
        """SD3's positional embedding is cropped from a ``pos_embed_max_size``-patch square."""
        size = self.transformer.config.get("pos_embed_max_size")
        return None if size is None else int(size) * self.patch * self.codec.factor

    def make_net(self, options: Any) -> SD3Net:
        return SD3Net(self.transformer)

    def levels(self, steps: int, latent_hw: tuple[int, int]) -> list[float]:
        cfg = self.scheduler.config
        tokens = (latent_hw[0] // self.patch) * (latent_hw[1] // self.patch)
        mu = flux_mu(cfg, tokens) if cfg.get("use_dynamic_shifting") else None
        return scheduler_levels(self.scheduler, steps, mu=mu)


def load_backend(source: dict, *, device: torch.device, dtype: torch.dtype, offline: bool) -> SD3Backend:
    """Load from ``{"backend": "sd3", "stages": {"pipeline": ...}}``: a StableDiffusion3Pipeline folder or hub id
    (transformer, vae, text_encoder/_2 (CLIP-L/G with projection) + tokenizer/_2, text_encoder_3 (T5, optional)
    + tokenizer_3, scheduler)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer, T5EncoderModel, T5Tokenizer

    parts = PipelineParts(source, BACKEND, "StableDiffusion3Pipeline folder or hub id, e.g. "
                          "stabilityai/stable-diffusion-3.5-medium", dtype=dtype, offline=offline)
    transformer = parts.model(SD3Transformer2DModel, "transformer", "SD3 transformer")
    vae = parts.model(AutoencoderKL, "vae", "SD3 VAE")
    clips = [(parts.part(CLIPTokenizer, tok, f"{name} tokenizer"),
              parts.model(CLIPTextModelWithProjection, enc, name, transformers=True))
             for tok, enc, name in (("tokenizer", "text_encoder", "CLIP-L"),
                                    ("tokenizer_2", "text_encoder_2", "CLIP-G"))]
    t5 = None
    if parts.has("text_encoder_3"):
        t5 = (parts.part(T5Tokenizer, "tokenizer_3", "T5 tokenizer"),
              parts.model(T5EncoderModel, "text_encoder_3", "T5 text encoder", transformers=True))
    text = SD3Text(clips, t5, int(transformer.config.joint_attention_dim))
    scheduler = parts.part(FlowMatchEulerDiscreteScheduler, "scheduler", "flow scheduler")
    place_modules(parts.load, device, resident=[transformer, vae], text=text.modules(), vae=vae)
    return SD3Backend(info=parts.info(source, BACKEND, "Stable Diffusion 3.5"), transformer=transformer, vae=vae,
                      text=text, scheduler=scheduler, load=parts.load, defaults=source.get("defaults"), device=device,
                      dtype=dtype)
