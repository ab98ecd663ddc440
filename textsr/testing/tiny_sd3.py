"""Tiny random Stable Diffusion 3.5 for offline tests, saved through ``StableDiffusion3Pipeline.save_pretrained``
in the real repositories' layout: the text encoders twice, default and ``fp16`` variant files (as the SD3.5 repos
ship them), the transformer once (as they do), T5 sharded.  A 32 x 32 image from an 8 x 8 input at x4."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from .tiny_flux import reshard, spec_file, tiny_flux_vae, tiny_t5


def build_tiny_sd3(path: str | Path, *, seed: int = 0) -> Path:
    """A tiny SD3.5-like pipeline under ``path/pipeline`` (two CLIPs with projection, T5, a one-layer MMDiT with
    2 x 2 patches, a x2 VAE with SD3's scaling and shift factors, shift 3); returns the spec file's path."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    from .tiny_clip import tiny_clip_tokenizer, tiny_text_config

    root = Path(path)
    torch.manual_seed(seed)
    tok3, t5 = tiny_t5(48)
    clip_l = CLIPTextModelWithProjection(tiny_text_config(16, projection=16)).eval()
    clip_g = CLIPTextModelWithProjection(tiny_text_config(32, projection=32)).eval()
    transformer = SD3Transformer2DModel(sample_size=16, patch_size=2, in_channels=4, num_layers=1, attention_head_dim=8,
                                        num_attention_heads=2, joint_attention_dim=48, caption_projection_dim=16,
                                        pooled_projection_dim=48, out_channels=4, pos_embed_max_size=32)
    pipe = StableDiffusion3Pipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                                    vae=tiny_flux_vae(scaling_factor=1.5305, shift_factor=0.0609),
                                    transformer=transformer,
                                    text_encoder=clip_l, tokenizer=tiny_clip_tokenizer(), text_encoder_2=clip_g,
                                    tokenizer_2=tiny_clip_tokenizer(), text_encoder_3=t5, tokenizer_3=tok3)
    out = root / "pipeline"
    pipe.save_pretrained(out)
    reshard(t5, out / "text_encoder_3")
    for sub, enc in (("text_encoder", clip_l), ("text_encoder_2", clip_g), ("text_encoder_3", t5)):
        tmp = root / f"{sub}.fp16"
        enc.to(torch.float16).save_pretrained(tmp, variant="fp16", max_shard_size="50KB" if sub == "text_encoder_3"
                                              else "10GB")
        for f in tmp.iterdir():
            if ".fp16" in f.name:
                shutil.move(str(f), out / sub / f.name)
        shutil.rmtree(tmp)
        enc.to(torch.float32)
    return spec_file(root, "sd3", "tiny-sd3")
