"""Tiny random CLIP pieces for offline tests: a byte-level CLIP tokenizer built without downloads, CLIP
text/vision towers and a full ``CLIPModel``.  Random weights: only shapes and plumbing are real.

Used by the tiny builders of the unCLIP, pixel and latent backends (``build_tiny_*``).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

MAX_LENGTH = 77  # CLIP's context length; unCLIP's prior is built for it (num_embeddings = 77)
VOCAB_SIZE = 520  # 2 x 256 byte symbols (+ "</w>" forms) + <|startoftext|>, <|endoftext|>, spare ids
BOS_ID, EOS_ID = 512, 513


def _bytes_to_unicode() -> list[str]:
    """GPT-2/CLIP's reversible byte -> printable character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def tiny_clip_tokenizer(max_length: int = MAX_LENGTH):
    """A working ``CLIPTokenizer`` with a character-level vocabulary (no merges): every prompt
    tokenizes, different prompts give different ids.  Ids: 512 = start, 513 = end/pad."""
    from transformers import CLIPTokenizer

    chars = _bytes_to_unicode()
    vocab: dict[str, int] = {}
    for c in chars:
        vocab[c] = len(vocab)
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    assert vocab["<|startoftext|>"] == BOS_ID and vocab["<|endoftext|>"] == EOS_ID
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "vocab.json").write_text(json.dumps(vocab))
        (Path(d) / "merges.txt").write_text("#version: 0.2\n")
        return CLIPTokenizer(str(Path(d) / "vocab.json"), str(Path(d) / "merges.txt"), model_max_length=max_length)


def tiny_text_config(hidden: int = 32, projection: int | None = None, layers: int = 2):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=EOS_ID, hidden_size=hidden,
                          projection_dim=projection or hidden, intermediate_size=37, num_attention_heads=4,
                          num_hidden_layers=layers, vocab_size=VOCAB_SIZE, max_position_embeddings=MAX_LENGTH)


def tiny_vision_config(hidden: int = 32, projection: int | None = None, image_size: int = 32, patch: int = 8):
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(hidden_size=hidden, projection_dim=projection or hidden, intermediate_size=37,
                            num_attention_heads=4, num_hidden_layers=2, image_size=image_size, patch_size=patch)


def tiny_image_processor(image_size: int = 32):
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})


def build_tiny_clip(path: str | Path, *, dim: int = 32, image_size: int = 32, seed: int = 0) -> Path:
    """A tiny random ``CLIPModel`` + tokenizer + image processor saved to ``path`` (what
    ``openai/clip-vit-base-patch32`` holds, in miniature)."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    path = Path(path)
    torch.manual_seed(seed)
    cfg = CLIPConfig(text_config=tiny_text_config(dim).to_dict(),
                     vision_config=tiny_vision_config(dim, image_size=image_size).to_dict(),
                     projection_dim=dim)
    CLIPModel(cfg).eval().save_pretrained(path)
    tiny_clip_tokenizer().save_pretrained(path)
    tiny_image_processor(image_size).save_pretrained(path)
    return path
