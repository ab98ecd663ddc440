"""Tiny random FLUX.1 and FLUX.2 [klein] pipelines for offline tests, saved through diffusers' own
``save_pretrained`` in the real repositories' layout (model_index.json, one folder per component, the
transformer and the large text encoder sharded as the Hub repos ship them).  ~0.3 M parameters each: a 32 x 32
image from an 8 x 8 input at x4 (VAE x2 times 2 x 2 patches).  Random weights: only shapes, plumbing and
model-independent guarantees (exact consistency, batching, determinism) can be tested with them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

SHARD = "100KB"  # small enough that the tiny transformer and T5/Qwen3 come out in several shards, as the real ones


def reshard(model: Any, folder: Path) -> None:
    """Save ``model`` again into ``folder`` in shards (what the real repos hold for their large components)."""
    shutil.rmtree(folder)
    model.save_pretrained(folder, max_shard_size=SHARD)


def spec_file(root: Path, backend: str, name: str) -> Path:
    spec = root / "textsr_model.json"
    spec.write_text(json.dumps({"backend": backend, "name": name, "description": f"tiny random {name} (tests)",
                                "stages": {"pipeline": str((root / "pipeline").resolve())}}, indent=1))
    return spec


def tiny_t5(d_model: int = 32):
    """A tiny T5 encoder and its tokenizer (``tiny_deepfloyd_if``'s vocabulary): FLUX.1's and SD3's third text
    encoder in miniature."""
    from transformers import T5Config, T5EncoderModel

    from .tiny_deepfloyd_if import tiny_t5_tokenizer

    tok = tiny_t5_tokenizer()
    cfg = T5Config(vocab_size=len(tok), d_model=d_model, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                   relative_attention_num_buckets=8, dropout_rate=0.0, pad_token_id=0, eos_token_id=1,
                   decoder_start_token_id=0)
    return tok, T5EncoderModel(cfg).eval()


def tiny_flux_vae(latent_channels: int = 4, **extra):
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=latent_channels, block_out_channels=(8, 16),
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         layers_per_block=1, norm_num_groups=4, sample_size=32, **extra)


def build_tiny_flux(path: str | Path, *, seed: int = 0, schnell: bool = False) -> Path:
    """A tiny FLUX.1 [dev] (``schnell=True``: [schnell], no guidance embedding, no dynamic shift) as a
    ``FluxPipeline`` under ``path/pipeline``; returns the spec file ``path/textsr_model.json``."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel

    from .tiny_clip import tiny_clip_tokenizer, tiny_text_config

    root = Path(path)
    torch.manual_seed(seed)
    tok2, t5 = tiny_t5(32)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                         pooled_projection_dim=32, guidance_embeds=not schnell,
                                         axes_dims_rope=(4, 4, 8))
    sched = (FlowMatchEulerDiscreteScheduler(shift=1.0) if schnell else
             FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15))
    pipe = FluxPipeline(scheduler=sched, vae=tiny_flux_vae(scaling_factor=0.3611, shift_factor=0.1159),
                        text_encoder=CLIPTextModel(tiny_text_config(32)).eval(), tokenizer=tiny_clip_tokenizer(),
                        text_encoder_2=t5, tokenizer_2=tok2, transformer=transformer)
    pipe.save_pretrained(root / "pipeline")
    reshard(transformer, root / "pipeline" / "transformer")
    reshard(t5, root / "pipeline" / "text_encoder_2")
    return spec_file(root, "flux", "tiny-flux-schnell" if schnell else "tiny-flux-dev")


def tiny_qwen3_tokenizer():
    """A byte-level BPE tokenizer (no merges) with Qwen's chat markers and a chat template that takes
    ``enable_thinking``, as ``Flux2KleinPipeline`` uses it; built offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import Qwen2TokenizerFast

    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    for sp in specials:
        vocab[sp] = len(vocab)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens(specials)
    template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                "{% if add_generation_prompt %}<|im_start|>assistant\n{% if enable_thinking is defined and not "
                "enable_thinking %}<think>\n\n</think>\n\n{% endif %}{% endif %}")
    return Qwen2TokenizerFast(tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                              chat_template=template, model_max_length=512)


def build_tiny_flux2(path: str | Path, *, seed: int = 0, distilled: bool = True) -> Path:
    """A tiny FLUX.2 [klein] (``distilled=False``: the base model, with classifier-free guidance) as a
    ``Flux2KleinPipeline`` under ``path/pipeline``: Qwen3 text encoder with 28 layers (the pipeline reads
    layers 9, 18 and 27), ``AutoencoderKLFlux2`` (x2, 4 channels -> 16 after its 2 x 2 patchify), a 1 + 1 layer
    ``Flux2Transformer2DModel``; returns the spec file."""
    from diffusers import (
        AutoencoderKLFlux2,
        FlowMatchEulerDiscreteScheduler,
        Flux2KleinPipeline,
        Flux2Transformer2DModel,
    )
    from transformers import Qwen3Config, Qwen3ForCausalLM

    root = Path(path)
    torch.manual_seed(seed)
    tok = tiny_qwen3_tokenizer()
    hidden = 16
    qwen = Qwen3ForCausalLM(Qwen3Config(vocab_size=len(tok), hidden_size=hidden, intermediate_size=32,
                                        num_hidden_layers=28, num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                                        max_position_embeddings=1024, tie_word_embeddings=True)).eval()
    vae = AutoencoderKLFlux2(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                             up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, latent_channels=4,
                             norm_num_groups=4, sample_size=32)
    with torch.no_grad():  # non-trivial latent statistics, so the normalisation is exercised
        vae.bn.running_mean.normal_(0, 0.1)
        vae.bn.running_var.uniform_(0.5, 2.0)
    transformer = Flux2Transformer2DModel(in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
                                          num_attention_heads=2, joint_attention_dim=3 * hidden,
                                          timestep_guidance_channels=32, axes_dims_rope=(4, 4, 4, 4),
                                          guidance_embeds=False)
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                            base_image_seq_len=256, max_image_seq_len=4096)
    Flux2KleinPipeline(scheduler=sched, vae=vae, text_encoder=qwen, tokenizer=tok, transformer=transformer,
                       is_distilled=distilled).save_pretrained(root / "pipeline")
    reshard(transformer, root / "pipeline" / "transformer")
    reshard(qwen, root / "pipeline" / "text_encoder")
    return spec_file(root, "flux2", "tiny-flux2-klein" if distilled else "tiny-flux2-klein-base")
