"""Tiny random pixel-space DDPM + CLIP for offline tests."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..backends.pixel import BACKEND


def build_tiny_pixel(path: str | Path, *, size: int = 16, seed: int = 0, clip: bool = True) -> Path:
    """A tiny random DDPM (``size`` px UNet2DModel + linear DDPMScheduler, saved as a DDPMPipeline) and a
    tiny CLIP under ``path``; returns the spec JSON's path."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    from .tiny_clip import build_tiny_clip

    path = Path(path)
    torch.manual_seed(seed)
    unet = UNet2DModel(sample_size=size, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 16),
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=4, attention_head_dim=4)
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=1000)).save_pretrained(path / "ddpm")
    stages = {"unet": str((path / "ddpm").resolve())}
    if clip:
        stages["clip"] = str(build_tiny_clip(path / "clip", seed=seed + 1).resolve())
    spec = path / "textsr_model.json"
    spec.write_text(json.dumps({"backend": BACKEND, "name": "tiny-pixel", "stages": stages}, indent=1))
    return spec
