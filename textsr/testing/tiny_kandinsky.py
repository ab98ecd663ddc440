"""Tiny random Kandinsky 2.2 (prior + MoVQ decoder) for offline tests, saved as diffusers pipelines."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..backends.kandinsky import BACKEND
from ..backends.unclip_prior import unclip_classes


def build_tiny_kandinsky(path: str | Path, *, seed: int = 0) -> Path:
    """Prior pipeline (tiny CLIP text/vision towers, PriorTransformer) and decoder pipeline (UNet on 8 px
    MoVQ latents -> 16 px images) under ``path``; returns the spec JSON's path."""
    from diffusers import (
        DDPMScheduler,
        KandinskyV22Pipeline,
        KandinskyV22PriorPipeline,
        PriorTransformer,
        UNet2DConditionModel,
        VQModel,
    )
    from transformers import CLIPTextModelWithProjection, CLIPVisionModelWithProjection

    from .tiny_clip import tiny_clip_tokenizer, tiny_image_processor, tiny_text_config, tiny_vision_config

    cls = unclip_classes()
    path = Path(path)
    torch.manual_seed(seed)
    D = 32
    prior = PriorTransformer(num_attention_heads=2, attention_head_dim=12, embedding_dim=D, num_layers=1)
    with torch.no_grad():
        prior.clip_std.fill_(1.0)
    KandinskyV22PriorPipeline(
        prior=prior, image_encoder=CLIPVisionModelWithProjection(tiny_vision_config(D, image_size=32)).eval(),
        text_encoder=CLIPTextModelWithProjection(tiny_text_config(D)).eval(), tokenizer=tiny_clip_tokenizer(),
        scheduler=cls.UnCLIPScheduler(variance_type="fixed_small_log", prediction_type="sample",
                                      clip_sample_range=10.0),
        image_processor=tiny_image_processor(32),
    ).save_pretrained(path / "prior")
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=8, addition_embed_type="image", layers_per_block=1,
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn", block_out_channels=(8, 16), encoder_hid_dim=D,
        encoder_hid_dim_type="image_proj", cross_attention_dim=16, attention_head_dim=4,
        resnet_time_scale_shift="scale_shift", class_embed_type=None, norm_num_groups=4)
    # SpatialNorm hard-codes 32 groups: channels must be multiples of 32
    movq = VQModel(block_out_channels=[32, 32], down_block_types=["DownEncoderBlock2D", "AttnDownEncoderBlock2D"],
                   up_block_types=["AttnUpDecoderBlock2D", "UpDecoderBlock2D"], in_channels=3, out_channels=3,
                   latent_channels=4, vq_embed_dim=4, layers_per_block=1, norm_num_groups=8, norm_type="spatial",
                   num_vq_embeddings=12)
    sched = DDPMScheduler(beta_schedule="linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                          variance_type="learned_range")
    KandinskyV22Pipeline(unet=unet, scheduler=sched, movq=movq).save_pretrained(path / "decoder")
    spec = path / "textsr_model.json"
    spec.write_text(json.dumps({"backend": BACKEND, "name": "tiny-kandinsky", "stages": {
        "prior": str((path / "prior").resolve()), "decoder": str((path / "decoder").resolve())}}, indent=1))
    return spec
