"""Tiny random Karlo (unCLIP) for offline tests, saved through diffusers' own ``save_pretrained``."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..backends.unclip import BACKEND
from ..backends.unclip_prior import unclip_classes


def build_tiny_unclip(path: str | Path, *, seed: int = 0, image_encoder: bool = True) -> Path:
    """A tiny random Karlo (8 px decoder, x4 super-resolution to 32 px) saved under ``path`` through
    diffusers' own ``save_pretrained``, and (``image_encoder=True``) a tiny full CLIP checkpoint as the
    image encoder, the layout of the registry's default (openai/clip-vit-large-patch14); returns the spec
    JSON's path."""
    from diffusers import PriorTransformer, UNet2DConditionModel, UNet2DModel
    from transformers import CLIPTextModelWithProjection

    from .tiny_clip import build_tiny_clip, tiny_clip_tokenizer, tiny_text_config

    cls = unclip_classes()
    path = Path(path)
    torch.manual_seed(seed)
    D, xattn, ch = 32, 16, (8, 16)
    text_encoder = CLIPTextModelWithProjection(tiny_text_config(D)).eval()
    prior = PriorTransformer(num_attention_heads=2, attention_head_dim=12, embedding_dim=D, num_layers=1)
    # the prior's un-normalisation statistics: give them a non-trivial scale
    with torch.no_grad():
        prior.clip_std.fill_(1.0)
    text_proj = cls.UnCLIPTextProjModel(clip_embeddings_dim=D, time_embed_dim=ch[0] * 4, cross_attention_dim=xattn)
    with torch.no_grad():
        text_proj.learned_classifier_free_guidance_embeddings.normal_()
    decoder = UNet2DConditionModel(
        sample_size=8, in_channels=3, out_channels=6, layers_per_block=1, block_out_channels=ch,
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn", cross_attention_dim=xattn, attention_head_dim=4,
        resnet_time_scale_shift="scale_shift", class_embed_type="identity", norm_num_groups=4)
    sr_kw = dict(sample_size=32, layers_per_block=1, block_out_channels=ch, in_channels=6, out_channels=3,
                 down_block_types=("ResnetDownsampleBlock2D", "ResnetDownsampleBlock2D"),
                 up_block_types=("ResnetUpsampleBlock2D", "ResnetUpsampleBlock2D"), norm_num_groups=4)
    sr_first, sr_last = UNet2DModel(**sr_kw), UNet2DModel(**sr_kw)
    S = cls.UnCLIPScheduler
    pipe = cls.UnCLIPPipeline(
        prior=prior, decoder=decoder, text_encoder=text_encoder, tokenizer=tiny_clip_tokenizer(), text_proj=text_proj,
        super_res_first=sr_first, super_res_last=sr_last,
        prior_scheduler=S(variance_type="fixed_small_log", prediction_type="sample", clip_sample_range=5.0),
        decoder_scheduler=S(variance_type="learned_range", prediction_type="epsilon"),
        super_res_scheduler=S(variance_type="fixed_small_log", prediction_type="epsilon"))
    pipe.save_pretrained(path / "karlo")
    stages = {"pipeline": str((path / "karlo").resolve())}
    if image_encoder:
        stages["image_encoder"] = str(build_tiny_clip(path / "clip", dim=D, image_size=32, seed=seed + 1).resolve())
    spec = path / "textsr_model.json"
    spec.write_text(json.dumps({"backend": BACKEND, "name": "tiny-karlo", "stages": stages}, indent=1))
    return spec
