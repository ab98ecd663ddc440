"""How far a windowed autoencoder (``TiledCodec``) is from the whole-image one, and why
(docs/tiling.md, "Latent models"): the flow models' tiny VAEs (FLUX.1's and SD3.5's ``AutoencoderKL``,
FLUX.2's ``AutoencoderKLFlux2`` with its patchify and batch-norm statistics) and Stable Diffusion's, random or
trained (``--train-vae N`` Adam steps on smooth images, ``bench/flow_tiny.py``'s ``train_vae``).

An image of ``--size`` px (smooth, from a random 8 x 8 grid) is encoded whole, then its latents decoded whole and
on windows of ``--window`` px overlapping by a quarter (one window per call, fixed grid), and the image encoded on
the same windows.  Three variants separate the causes, each the same in the whole and the windowed run:

* ``as is``: every GroupNorm normalises over what it sees (the window), the mid-block attention attends within it;
* ``whole-image norms``: each GroupNorm in the windows uses the statistics it had on the whole image;
* ``... + no attention``: the mid-block self-attention skipped too (what is left: the borders' zero padding).

Figures: RMS of (windowed - whole) over the RMS of the whole-image output's own variation (``rel``; 1 = as large
as the signal) and the PSNR of windowed against whole (dB, outputs in [-1, 1] for decoding).

    python bench/tiling_codec.py [--train-vae 300] [--size 64] [--window 32] [--json PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import types
from collections.abc import Iterator
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from flow_tiny import train_vae  # noqa: E402

from textsr.model_registry import load_model  # noqa: E402
from textsr.testing.tiny_flux import build_tiny_flux, build_tiny_flux2  # noqa: E402
from textsr.testing.tiny_latent import build_tiny_latent  # noqa: E402
from textsr.testing.tiny_sd3 import build_tiny_sd3  # noqa: E402
from textsr.tiling.codec import TiledCodec  # noqa: E402

MODELS = {"FLUX.1 (AutoencoderKL)": build_tiny_flux, "SD3.5 (AutoencoderKL)": build_tiny_sd3,
          "FLUX.2 (AutoencoderKLFlux2)": build_tiny_flux2, "SD 1.5 (AutoencoderKL)": build_tiny_latent}
VARIANTS = ("as is", "whole-image norms", "whole-image norms + no attention")


@contextlib.contextmanager
def patched(vae: torch.nn.Module, *, norms: str | None, stats: dict, attention: bool) -> Iterator[None]:
    """GroupNorms that ``record`` their statistics per module into ``stats`` or ``replay`` them; mid-block
    attention skipped unless ``attention``."""
    saved = []
    for m in vae.modules():
        if norms and isinstance(m, torch.nn.GroupNorm):
            saved.append((m, m.forward))
            m.forward = types.MethodType(_norm(norms, stats), m)
    for block in (vae.encoder.mid_block, vae.decoder.mid_block):
        for a in getattr(block, "attentions", []) if not attention else []:
            if a is not None:
                saved.append((a, a.forward))
                a.forward = lambda h, *args, **kw: h
    try:
        yield
    finally:
        for m, fwd in saved:
            m.forward = fwd


def _norm(mode: str, stats: dict):
    def forward(self: torch.nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
        B, G = x.shape[0], self.num_groups
        xg = x.reshape(B, G, -1)
        if mode == "record":
            stats[self] = (xg.mean(-1, keepdim=True), xg.var(-1, unbiased=False, keepdim=True))
        mean, var = stats[self]
        y = ((xg - mean) / torch.sqrt(var + self.eps)).reshape_as(x)
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return y * self.weight.view(shape) + self.bias.view(shape)

    return forward


def compare(a: torch.Tensor, ref: torch.Tensor) -> dict:
    err = (a - ref).square().mean().sqrt()
    spread = (ref - ref.mean()).square().mean().sqrt()
    return {"rel": float(err / spread), "psnr": float(10 * torch.log10(4 / (a - ref).square().mean()))}


def measure(codec, vae, x: torch.Tensor, window_px: int) -> dict:
    f = codec.factor
    win, ov = (window_px // f,) * 2, (window_px // f // 4,) * 2
    tiled = TiledCodec(codec, win, ov, batch=1)
    out = {}
    with torch.no_grad():
        for variant in VARIANTS:
            stats: dict = {}
            norms, attention = (None, True) if variant == "as is" else ("record", "attention" not in variant)
            with patched(vae, norms=norms, stats=stats, attention=attention):
                z = codec.encode(x)
                whole_x = codec.decode(z)
            with patched(vae, norms=norms and "replay", stats=stats, attention=attention):
                tiled_x, tiled_z = tiled.decode(z), tiled.encode(x)
            out[variant] = {"decode": compare(tiled_x, whole_x), "encode": compare(tiled_z, z)}
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train-vae", type=int, default=0, help="Adam steps training each tiny VAE first (0: random)")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--window", type=int, default=32)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(7)
    x = torch.nn.functional.interpolate(torch.rand(1, 3, 8, 8, generator=g) * 2 - 1, size=(a.size, a.size),
                                        mode="bicubic", align_corners=False).clamp(-1, 1)
    recs = []
    print(f"{a.size} px image, windows of {a.window} px with a quarter overlap; rel = RMS(windowed - whole) / RMS of "
          "the whole output's variation, PSNR of windowed vs whole (dB)\n")
    print("| VAE | weights | variant | decode rel | decode PSNR | encode rel |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for label, build in MODELS.items():
            be = load_model(build(Path(tmp) / str(len(recs))), device="cpu", offline=True)
            vae = be.codec.vae if hasattr(be.codec, "vae") else be.codec.movq
            weights = f"trained {a.train_vae} steps ({train_vae(be, a.train_vae):.1f} dB)" if a.train_vae else "random"
            for variant, r in measure(be.codec, vae, x, a.window).items():
                recs.append({"vae": label, "weights": weights, "variant": variant, **r})
                print(f"| {label} | {weights} | {variant} | {r['decode']['rel']:.3f} | {r['decode']['psnr']:.1f} | "
                      f"{r['encode']['rel']:.3f} |")
    if a.json:
        a.json.write_text(json.dumps(recs, indent=1))


if __name__ == "__main__":
    main()
