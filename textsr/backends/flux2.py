"""EXPERIMENTAL FLUX.2 [klein] backend (Black Forest Labs; diffusers ``Flux2KleinPipeline`` components).

What is FLUX.2 [klein]'s own (the rest is ``flow_base``): its VAE (``AutoencoderKLFlux2``) latents are patchified
2 x 2 and normalised by the VAE's batch-norm statistics before the transformer sees them (``Flux2Codec``: the
solver's latent is that normalised, patchified one), each latent pixel is a token with 4-D positional ids
``(0, row, col, 0)`` (text tokens ``(0, 0, 0, k)``), the time input is the flow level ``s``; text = Qwen3's hidden
states of layers 9, 18 and 27 stacked (512 tokens of its chat template, thinking off); guidance: the distilled
[klein] (``is_distilled`` in model_index.json, 4 steps) takes none, the [klein] base models use true CFG (4.0, 50
steps).  Grid: ``sigmas = linspace(1, 1/N, N)`` shifted with the pipeline's empirical ``mu(tokens, N)``.
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
from .options import LoadOptions

BACKEND = "flux2"
TEXT_LAYERS = (9, 18, 27)  # Flux2KleinPipeline's text_encoder_out_layers


def empirical_mu(tokens: int, steps: int) -> float:
    """Flux2KleinPipeline's ``compute_empirical_mu``: linear in the token count, interpolated in the step count
    between fits at 10 and 200 steps (above 4300 tokens the 200-step fit alone)."""
    a1, b1, a2, b2 = 8.73809524e-05, 1.89833333, 0.00016927, 0.45666666
    m200 = a2 * tokens + b2
    if tokens > 4300:
        return float(m200)
    m10 = a1 * tokens + b1
    a = (m200 - m10) / 190.0
    return float(a * steps + m200 - 200.0 * a)


def patchify(z: torch.Tensor) -> torch.Tensor:
    B, C, H, W = z.shape
    return z.view(B, C, H // 2, 2, W // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(B, 4 * C, H // 2, W // 2)


def unpatchify(z: torch.Tensor) -> torch.Tensor:
    B, C4, h, w = z.shape
    return z.reshape(B, C4 // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).reshape(B, C4 // 4, 2 * h, 2 * w)


@dataclass
class Flux2Codec:
    """``AutoencoderKLFlux2`` as a ``Codec`` on the transformer's latents: ``E(x) = (patchify(mean) - m) / s``,
    ``D(z) = decode(unpatchify(s z + m))`` with the VAE's batch-norm running statistics ``m``, ``s``."""

    vae: Any

    @property
    def factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1) * 2

    @property
    def latent_channels(self) -> int:
        return 4 * int(self.vae.config.latent_channels)

    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        bn = self.vae.bn
        mean = bn.running_mean.view(1, -1, 1, 1).to(like.device, like.dtype)
        std = torch.sqrt(bn.running_var.view(1, -1, 1, 1) + self.vae.config.batch_norm_eps).to(like.device, like.dtype)
        return mean, std

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        z = patchify(self.vae.encode(x.to(self.vae.dtype)).latent_dist.mode()).to(x.dtype)
        mean, std = self._stats(z)
        return (z - mean) / std

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        mean, std = self._stats(z)
        return self.vae.decode(unpatchify(z * std + mean).to(self.vae.dtype)).sample.to(z.dtype)


def _ids(*sizes: int, device: torch.device) -> torch.Tensor:
    return torch.cartesian_prod(*(torch.arange(n, device=device) for n in sizes))


@dataclass
class Flux2Net:
    """``Flux2Transformer2DModel`` on ``(n, C, h, w)`` latents (one token per latent pixel)."""

    transformer: Any

    def __call__(self, x_s: torch.Tensor, s: float, hidden: torch.Tensor, pooled: torch.Tensor | None) -> torch.Tensor:
        n, C, h, w = x_s.shape
        dt, dev = self.transformer.dtype, x_s.device
        img_ids = _ids(1, h, w, 1, device=dev).expand(n, -1, -1)
        txt_ids = _ids(1, 1, 1, hidden.shape[1], device=dev).expand(n, -1, -1)
        out = self.transformer(hidden_states=x_s.reshape(n, C, h * w).transpose(1, 2).to(dt),
                               encoder_hidden_states=hidden.to(dev, dt),
                               timestep=torch.full((n,), s, device=dev, dtype=dt),
                               img_ids=img_ids, txt_ids=txt_ids, guidance=None, return_dict=False)[0]
        return out[:, : h * w].transpose(1, 2).reshape(n, C, h, w).to(x_s.dtype)


@dataclass
class QwenText:
    """Qwen3's hidden states of ``TEXT_LAYERS``, stacked along the features, over its chat template (512 tokens)."""

    tokenizer: Any
    text_encoder: Any
    max_length: int = 512

    def _chat(self, prompt: str) -> str:
        return self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                  add_generation_prompt=True, enable_thinking=False)

    def encode(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        enc = self.tokenizer(self._chat(prompt), return_tensors="pt", padding="max_length", truncation=True,
                             max_length=self.max_length)
        dev = execution_device(self.text_encoder)
        out = self.text_encoder(input_ids=enc.input_ids.to(dev), attention_mask=enc.attention_mask.to(dev),
                                output_hidden_states=True, use_cache=False)
        h = torch.stack([out.hidden_states[k] for k in TEXT_LAYERS], dim=1)  # (1, 3, L, D)
        return h.permute(0, 2, 1, 3).reshape(1, h.shape[2], -1), None

    def notes(self, prompt: str) -> list[str]:
        return truncation_note(self.tokenizer, self._chat(prompt), self.max_length, "Qwen3 (with its chat template)")

    def modules(self) -> list[torch.nn.Module]:
        return [self.text_encoder]

    @property
    def tokens(self) -> int:
        return self.max_length


class Flux2Backend(FlowBackendBase):
    """EXPERIMENTAL FLUX.2 [klein]: one latent flow stage + the exact final pixel projection (see ``flow_base``)."""

    codec: Flux2Codec

    patch = 1  # the 2 x 2 patches are the codec's
    model_label = "FLUX.2 [klein]"

    def __init__(self, *, info: ModelInfo, transformer: Any, vae: Any, text: QwenText, scheduler: Any, distilled: bool,
                 load: LoadOptions = LoadOptions(), defaults: dict | None = None,
                 device: torch.device = torch.device("cpu"), dtype: torch.dtype = torch.float32):
        self.info, self.device, self.dtype = info, device, dtype
        self.transformer, self.text, self.scheduler, self.codec = transformer, text, scheduler, Flux2Codec(vae)
        self.label = "FLUX.2 [klein]" if distilled else "FLUX.2 [klein] base"
        self.init_flow(guidance_kind="none" if distilled else "cfg", default_steps=4 if distilled else 50, load=load,
                       defaults=defaults)

    def codec_module(self) -> torch.nn.Module:
        return self.codec.vae

    def make_net(self, options: Any) -> Flux2Net:
        return Flux2Net(self.transformer)

    def levels(self, steps: int, latent_hw: tuple[int, int]) -> list[float]:
        sig = torch.linspace(1.0, 1.0 / steps, steps, dtype=torch.float64).tolist()
        return scheduler_levels(self.scheduler, steps, mu=empirical_mu(latent_hw[0] * latent_hw[1], steps), sigmas=sig)


def load_backend(source: dict, *, device: torch.device, dtype: torch.dtype, offline: bool) -> Flux2Backend:
    """Load from ``{"backend": "flux2", "stages": {"pipeline": ...}}``: a Flux2KleinPipeline folder or hub id
    (transformer, vae, text_encoder (Qwen3) + tokenizer, scheduler; model_index.json's ``is_distilled``)."""
    from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2Transformer2DModel
    from transformers import Qwen2TokenizerFast, Qwen3ForCausalLM

    parts = PipelineParts(source, BACKEND, "Flux2KleinPipeline folder or hub id, e.g. "
                          "black-forest-labs/FLUX.2-klein-4B", dtype=dtype, offline=offline)
    index = parts.index()
    transformer = parts.model(Flux2Transformer2DModel, "transformer", "FLUX.2 transformer")
    vae = parts.model(AutoencoderKLFlux2, "vae", "FLUX.2 VAE")
    text = QwenText(parts.part(Qwen2TokenizerFast, "tokenizer", "Qwen3 tokenizer"),
                    parts.model(Qwen3ForCausalLM, "text_encoder", "Qwen3 text encoder", transformers=True))
    scheduler = parts.part(FlowMatchEulerDiscreteScheduler, "scheduler", "flow scheduler")
    place_modules(parts.load, device, resident=[transformer, vae], text=text.modules(), vae=vae)
    return Flux2Backend(info=parts.info(source, BACKEND, "FLUX.2 [klein]"), transformer=transformer, vae=vae,
                        text=text, scheduler=scheduler, distilled=bool(index.get("is_distilled", False)),
                        load=parts.load, defaults=source.get("defaults"), device=device, dtype=dtype)
