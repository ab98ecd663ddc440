"""Karlo's UNets as Denoisers (see ``unclip`` for the whole backend): the 64 px decoder with Karlo's classifier-free
guidance over the text and the prior's (averaged) image embedding, and the 64 -> 256 super-resolution UNets
conditioned on the upsampled decoder output."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..denoiser import Prediction
from ..errors import UsageError
from ..schedule import NoiseSchedule
from .hf_common import ModelOutputAdapter, timestep_tensor
from .unclip_prior import KarloText, expand_rows, mix_embeddings


@dataclass(frozen=True)
class DecoderCond:
    """The decoder stage's conditioning: the text and the prior's image embeddings (B, D)."""

    text: KarloText
    e_prior: torch.Tensor



@dataclass
class KarloDecoderDenoiser:
    """The 64 px decoder as a Denoiser with Karlo's classifier-free guidance (one batched call).

    ``cond``: a ``DecoderCond``.  ``e_img``: the LR image's CLIP embedding (set by ``bind`` when
    ``lam > 0``).  ``guidance = 1`` evaluates the conditional branch only."""

    decoder: Any
    text_proj: Any
    schedule: NoiseSchedule
    adapter: ModelOutputAdapter
    guidance: float = 8.0
    lam: float = 0.0
    norm: str = "prior"
    e_img: torch.Tensor | None = None

    def embedding(self, e_prior: torch.Tensor) -> torch.Tensor:
        """The image embedding the decoder is conditioned on (after averaging)."""
        return mix_embeddings(e_prior, self.e_img, self.lam, self.norm)

    def _inputs(self, cond: DecoderCond, B: int, branches: tuple[str, ...]):
        txt = cond.text
        e = expand_rows(self.embedding(cond.e_prior), B)
        parts = {"cond": (e, txt.embeds, txt.hidden, txt.mask),
                 "uncond": (self.text_proj.learned_classifier_free_guidance_embeddings[None], txt.null_embeds,
                            txt.null_hidden, txt.null_mask)}
        cols = list(zip(*(parts[b] for b in branches)))
        return [torch.cat([expand_rows(v, B) for v in col]) for col in cols]

    def __call__(self, x_t: torch.Tensor, t: int, cond: DecoderCond | None = None) -> Prediction:
        if not isinstance(cond, DecoderCond):
            raise UsageError("the Karlo decoder needs the prompt and the prior's embedding (the stage's condition)")
        B = x_t.shape[0]
        branches = ("cond",) if self.guidance == 1.0 else ("uncond", "cond")
        dt = self.decoder.dtype
        img, pe, hid, mask = self._inputs(cond, B, branches)
        hid_states, additive = self.text_proj(image_embeddings=img.to(dt), prompt_embeds=pe.to(dt),
                                              text_encoder_hidden_states=hid.to(dt),
                                              do_classifier_free_guidance=False)
        mask = F.pad(mask, (self.text_proj.clip_extra_context_tokens, 0), value=True)
        n = len(branches)
        x_in = torch.cat([x_t] * n).to(dt)
        out = self.decoder(sample=x_in, timestep=timestep_tensor(t, n * B, x_t.device),
                           encoder_hidden_states=hid_states, class_labels=additive, attention_mask=mask).sample
        return self.adapter.guided(x_t, out, self.schedule.abar(t), self.guidance)  # learned variance dropped


@dataclass
class KarloSRDenoiser:
    """Karlo's 64 -> 256 super-resolution UNets as a Denoiser; ``cond`` is the upsampled decoder
    output (B, 3, H, W), concatenated to x_t as the model expects."""

    first: Any
    last: Any
    schedule: NoiseSchedule
    adapter: ModelOutputAdapter

    def __call__(self, x_t: torch.Tensor, t: int, cond: torch.Tensor | None = None) -> Prediction:
        if cond is None:
            raise UsageError("the Karlo super-resolution stage needs the upsampled decoder output (its condition)")
        unet = self.last if (t == 0 and self.last is not None) else self.first
        dt = unet.dtype
        x_in = torch.cat([x_t, cond.to(x_t)], dim=1).to(dt)
        out = unet(sample=x_in, timestep=timestep_tensor(t, x_t.shape[0], x_t.device)).sample
        abar = self.schedule.abar(t)
        eps = self.adapter.to_eps(x_t, self.adapter.split(out), abar)
        return self.adapter.prediction(x_t, eps, abar)

