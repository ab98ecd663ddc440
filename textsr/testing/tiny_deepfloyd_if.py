"""A tiny, randomly initialised DeepFloyd IF built in code, for tests and offline demos.

Same component types and configuration *kinds* as the real checkpoints (``SimpleCrossAttn`` blocks,
``addition_embed_type="text"``, T5 encoder + projection ``encoder_hid_dim``, learned-variance output
``out_channels = 2C``, stage II ``class_embed_type="timestep"`` with 6 input channels, IF's DDPM
schedulers with dynamic thresholding), but a few hundred thousand parameters, so a denoising step takes
milliseconds on a CPU.  Saved as two diffusers pipeline folders plus a textsr model spec, so tests load
it through the real loading code (``textsr.model_registry.load_model(spec_path)``).  Outputs are noise-like:
only model-independent guarantees (consistency, determinism, batching) can be tested with it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..model_registry import SPEC_FILE

TINY_WORDS = ("a photo of an the old young woman man girl boy person face portrait with and in on red blue green "
              "yellow black white hat glasses beard hair smiling cat dog bird car house tree church bedroom "
              "sky flower painting").split()


def tiny_t5_tokenizer():
    """A T5 (unigram) tokenizer over ``TINY_WORDS`` built offline; unknown words map to ``<unk>``."""
    from transformers import T5Tokenizer

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [("\u2581" + w, -float(i + 1))
                                                             for i, w in enumerate(TINY_WORDS)]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def tiny_if_unet(stage: int, *, width: int = 16, text_dim: int = 32):
    """IF-like UNet: stage 1 takes 3 channels, stage 2 takes 6 (x_t + noisy upsampled image) and the
    noise level as ``class_labels``; both output 6 (eps + learned variance).  Two resolution levels."""
    from diffusers import UNet2DConditionModel

    kw = dict(
        sample_size=8 if stage == 1 else 32, in_channels=3 if stage == 1 else 6, out_channels=6,
        layers_per_block=1, block_out_channels=(width, 2 * width), norm_num_groups=8,
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        cross_attention_dim=32, encoder_hid_dim=text_dim, attention_head_dim=8, addition_embed_type="text",
        addition_embed_type_num_heads=2, act_fn="gelu", resnet_time_scale_shift="scale_shift",
        cross_attention_norm="group_norm",
    )
    if stage == 2:
        kw["class_embed_type"] = "timestep"
    return UNet2DConditionModel(**kw).eval()


def if_schedulers(stage: int):
    """IF's schedulers (as diffusers' conversion script sets them): cosine betas, learned-range variance,
    dynamic thresholding at 0.95 with max 1.5 (stage I) / 1.0 (stage II); stage II's image noising
    scheduler is a plain cosine DDPM."""
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(beta_schedule="squaredcos_cap_v2", variance_type="learned_range", prediction_type="epsilon",
                          thresholding=True, dynamic_thresholding_ratio=0.95,
                          sample_max_value=1.5 if stage == 1 else 1.0)
    return sched, (DDPMScheduler(beta_schedule="squaredcos_cap_v2") if stage == 2 else None)


def build_tiny_if(path: str | Path, *, seed: int = 0, two_stages: bool = True) -> Path:
    """Build, save and describe a tiny IF under ``path``; returns the spec file (``path/textsr_model.json``).

    ``path/stage_1`` is an ``IFPipeline`` folder (tokenizer, T5 encoder, UNet, scheduler) and
    ``path/stage_2`` an ``IFSuperResolutionPipeline`` folder without text encoder.
    """
    from diffusers import IFPipeline, IFSuperResolutionPipeline
    from transformers import T5Config, T5EncoderModel

    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    tok = tiny_t5_tokenizer()
    t5 = T5EncoderModel(T5Config(vocab_size=len(tok), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                                 relative_attention_num_buckets=8, dropout_rate=0.0, pad_token_id=0,
                                 eos_token_id=1, decoder_start_token_id=0)).eval()
    common = dict(safety_checker=None, feature_extractor=None, watermarker=None, requires_safety_checker=False)
    s1, _ = if_schedulers(1)
    IFPipeline(tokenizer=tok, text_encoder=t5, unet=tiny_if_unet(1), scheduler=s1, **common).save_pretrained(
        root / "stage_1")
    stages = {"stage_1": "stage_1"}
    if two_stages:
        s2, noising = if_schedulers(2)
        IFSuperResolutionPipeline(tokenizer=None, text_encoder=None, unet=tiny_if_unet(2), scheduler=s2,
                                  image_noising_scheduler=noising, **common).save_pretrained(root / "stage_2")
        stages["stage_2"] = "stage_2"
    spec = {"backend": "deepfloyd-if", "name": "tiny-if",
            "description": "tiny random DeepFloyd IF (tests; outputs are noise-like)", "stages": stages}
    (root / SPEC_FILE).write_text(json.dumps(spec, indent=2))
    return root / SPEC_FILE
