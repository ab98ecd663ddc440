"""Tiny random Stable Diffusion for offline tests."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..backends.latent import BACKEND


def build_tiny_latent(path: str | Path, *, seed: int = 0) -> Path:
    """A tiny random Stable Diffusion (VAE x2, 8 px latents -> 16 px images) saved as a
    StableDiffusionPipeline under ``path``; returns the spec JSON's path."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    from .tiny_clip import tiny_clip_tokenizer, tiny_text_config

    path = Path(path)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(8, 16), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                                attention_head_dim=4, norm_num_groups=4)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        layers_per_block=1, norm_num_groups=4, sample_size=16)
    sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                          set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, unet=unet, text_encoder=CLIPTextModel(tiny_text_config(32)).eval(),
                                   tokenizer=tiny_clip_tokenizer(), scheduler=sched, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(path / "sd")
    spec = path / "textsr_model.json"
    spec.write_text(json.dumps({"backend": BACKEND, "name": "tiny-latent",
                                "stages": {"pipeline": str((path / "sd").resolve())}}, indent=1))
    return spec
