"""DeepFloyd IF UNets as Denoisers: conditioning types, batched CFG, learned-variance split, and the
scheduler's dynamic thresholding as an ``x0_transform`` (see ``deepfloyd_if`` for the whole backend)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

from ..denoiser import Prediction
from ..schedule import NoiseSchedule
from .options import module_device


@dataclass
class IFText:
    """T5 embeddings ``(1 or B, 77, D)`` of the prompt(s), in the model dtype/device."""

    embeds: torch.Tensor
    prompts: tuple[str, ...] = ()


@dataclass
class IFSRCond:
    """Stage II conditioning: the text and the noise-augmented upsampled stage-I image ``(B, C, H, W)``."""

    text: IFText | None
    image: torch.Tensor
    noise_level: int


def quantile_rows(a: torch.Tensor, q: float) -> torch.Tensor:
    """``torch.quantile(a, q, dim=1)`` (linear interpolation) from two order statistics, without sorting.

    As torch.quantile: the rank ``q (n - 1)`` is computed in ``a``'s dtype, and the result interpolates
    (``lerp``) between the order statistics just below and above it, so the values are the same (to
    the last bit in practice); ``kthvalue`` selects in O(n) where quantile sorts the whole row."""
    n = a.shape[1]
    rank = torch.tensor(q, dtype=a.dtype) * (n - 1)
    lo, hi = int(rank.floor()), int(rank.ceil())
    below = a.kthvalue(lo + 1, dim=1).values
    above = below if hi == lo else a.kthvalue(hi + 1, dim=1).values
    return torch.lerp(below, above, (rank - lo).to(a.device))


def dynamic_threshold(x0: torch.Tensor, ratio: float, max_value: float) -> torch.Tensor:
    """Imagen's dynamic thresholding per sample: ``s = clamp(quantile(|x0|, ratio), 1, max_value)``,
    ``x0 <- clamp(x0, -s, s) / s`` (diffusers ``DDPMScheduler._threshold_sample``); differentiable."""
    flat = x0.flatten(1)
    s = quantile_rows(flat.abs().float(), ratio).clamp(min=1.0, max=max_value).to(x0.dtype)
    s = s.view(-1, *([1] * (x0.ndim - 1)))
    return torch.maximum(torch.minimum(x0, s), -s) / s


def _clip(x0: torch.Tensor, r: float) -> torch.Tensor:
    return x0.clamp(-r, r)


def x0_transform_for(scheduler_config: Any) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The x0 post-processing a diffusers DDPM scheduler config asks for (thresholding wins over clipping)."""
    cfg = dict(scheduler_config)
    if cfg.get("thresholding"):
        return partial(dynamic_threshold, ratio=float(cfg.get("dynamic_thresholding_ratio", 0.995)),
                       max_value=float(cfg.get("sample_max_value", 1.0)))
    if cfg.get("clip_sample"):
        return partial(_clip, r=float(cfg.get("clip_sample_range", 1.0)))
    return None


def _batch(e: torch.Tensor, B: int) -> torch.Tensor:
    if e.shape[0] == B:
        return e
    if e.shape[0] == 1:
        return e.expand(B, *e.shape[1:])
    raise ValueError(f"text embeddings have batch {e.shape[0]}; expected 1 or {B}")


class IFUNetDenoiser:
    """A diffusers IF UNet (stage I or II) as a ``Denoiser`` with batched CFG.

    ``cond``: ``IFText`` (stage I), ``IFSRCond`` (stage II) or None (unconditional).  Items of the batch
    are independent; the call is differentiable w.r.t. ``x_t``.
    """

    def __init__(self, unet: torch.nn.Module, schedule: NoiseSchedule, *, guidance_scale: float,
                 null_text: IFText, x0_transform: Callable[[torch.Tensor], torch.Tensor] | None,
                 activate: Callable[[], None] | None = None):
        self.unet = unet
        config: Any = unet.config
        self.in_channels = int(config.in_channels)
        self.schedule = schedule
        self.guidance_scale = float(guidance_scale)
        self.null_text = null_text
        self.x0_transform = x0_transform
        self._activate = activate

    def _out(self, x_in: torch.Tensor, t: int, text: torch.Tensor, image: torch.Tensor | None,
             noise_level: int | None) -> torch.Tensor:
        """The UNet's raw output ``(B, 2C, H, W)``: eps channels, then IF's learned-range variance."""
        dev, dt = module_device(self.unet), next(self.unet.parameters()).dtype
        model_in = x_in if image is None else torch.cat([x_in, image.to(x_in.dtype)], dim=1)
        n = model_in.shape[0]
        labels = None if noise_level is None else torch.full((n,), noise_level, dtype=torch.long, device=dev)
        out = self.unet(model_in.to(device=dev, dtype=dt), torch.tensor(t, device=dev),
                        encoder_hidden_states=text.to(device=dev, dtype=dt), class_labels=labels,
                        return_dict=False)[0]
        return out

    def __call__(self, x_t: torch.Tensor, t: int, cond: Any = None) -> Prediction:
        if self._activate is not None:
            self._activate()
        text, image, level = cond, None, None
        if isinstance(cond, IFSRCond):
            text, image, level = cond.text, cond.image, cond.noise_level
        if image is None and self.in_channels != x_t.shape[1]:
            raise ValueError("this IF stage is a super-resolution UNet: pass an IFSRCond with the low-res image")
        B, C = x_t.shape[:2]
        e_text = _batch((text or self.null_text).embeds, B)
        w = self.guidance_scale
        if w == 1.0 or text is None:
            out = self._out(x_t, t, e_text, image, level)
            eps, var = out[:, :C], out[:, C:]
        elif w == 0.0:
            out = self._out(x_t, t, _batch(self.null_text.embeds, B), image, level)
            eps, var = out[:, :C], out[:, C:]
        else:  # one batched call: [uncond; text], as IF's pipelines do
            e_null = _batch(self.null_text.embeds, B)
            img2 = None if image is None else torch.cat([image, image])
            out_u, out_c = self._out(torch.cat([x_t, x_t]), t, torch.cat([e_null, e_text]), img2, level).chunk(2)
            # CFG on the eps channels; the variance channels are the text branch's (IFPipeline)
            eps, var = out_u[:, :C] + w * (out_c[:, :C] - out_u[:, :C]), out_c[:, C:]
        eps = eps.to(device=x_t.device, dtype=x_t.dtype)
        # learned range: model_var in [-1, 1] -> v = (model_var + 1) / 2 (diffusers' DDPMScheduler frac)
        v = (var.to(device=x_t.device, dtype=x_t.dtype) + 1) / 2 if var.shape[1] == C else None
        return Prediction.from_eps(x_t, eps, self.schedule.abar(t), self.x0_transform, v=v)
