"""LR consistency of every solver on the tiny flow models (FLUX.1 [dev], FLUX.2 [klein], SD3.5; random weights,
8 x 8 -> 32 x 32 at x4): LR-PSNR before and after the final exact pixel projection and the size of that
correction, as results.json records them.  With random weights the VAE cannot round-trip an image, so the
"before" figures are low for every solver; ``--train-vae N`` first trains each tiny VAE for N Adam steps to
round-trip smooth images (as tests/test_backend_latent.py's slow test does), which shows what decode-project-encode
(DDNM, DDNM+) and the decoder gradients (DPS, FlowDPS) achieve before the projection.

    python bench/flow_tiny.py                      # random VAEs
    python bench/flow_tiny.py --train-vae 300      # trained tiny VAEs
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from textsr import explore  # noqa: E402
from textsr.model_registry import load_model  # noqa: E402
from textsr.testing.tiny_flux import build_tiny_flux, build_tiny_flux2  # noqa: E402
from textsr.testing.tiny_sd3 import build_tiny_sd3  # noqa: E402

MODELS = {"tiny FLUX.1 [dev]": build_tiny_flux, "tiny FLUX.2 [klein]": build_tiny_flux2, "tiny SD3.5": build_tiny_sd3}
SOLVERS = ("plain", "ddnm", "ddnm+", "dps", "flowdps")


def smooth_images(n: int, g: torch.Generator, size: int = 32) -> torch.Tensor:
    return F.interpolate(torch.rand(n, 3, 4, 4, generator=g) * 2 - 1, size=(size, size), mode="bicubic",
                         align_corners=False).clamp(-1, 1)


def train_vae(be, steps: int) -> float:
    """Adam on ``|D(E(x)) - x|^2`` over smooth random images; returns the round trip's PSNR (dB)."""
    vae = be.codec.vae.train().requires_grad_(True)
    opt = torch.optim.Adam(vae.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x = smooth_images(16, g)
        loss = (be.codec.decode(be.codec.encode(x)) - x).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    vae.eval().requires_grad_(False)
    return float(10 * torch.log10(4 / loss.detach()))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train-vae", type=int, default=0, help="Adam steps training each tiny VAE first (0: random)")
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    lr = ((smooth_images(1, torch.Generator().manual_seed(5), 8)[0].permute(1, 2, 0) + 1) / 2).numpy()
    recs = []
    print("| model | VAE round trip | solver | LR-PSNR after (min) | LR-PSNR before (mean [min, max]) | "
          "correction RMS (mean) | correction max |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for label, build in MODELS.items():
            be = load_model(build(Path(tmp) / label.replace(" ", "_")), device="cpu", offline=True)
            rt = f"{train_vae(be, args.train_vae):.1f} dB" if args.train_vae else "random"
            for solver in SOLVERS:
                t0 = time.perf_counter()
                out = explore(lr, ["a red fox"], scale=4, model=be, solver=solver, samples=args.samples, seed=0,
                              steps=args.steps)
                p = out.prompts[0]
                before, rms = p.projection["lr_psnr_before"], p.projection["correction_rms"]
                rec = {"model": label, "vae": rt, "solver": solver, "steps": out.settings.stages[0]["steps"],
                       "lr_psnr_after_min": min(p.lr_psnr), "lr_psnr_before": before, "correction_rms": rms,
                       "correction_max": max(p.projection["correction_max"]), "seconds": time.perf_counter() - t0}
                recs.append(rec)
                print(f"| {label} | {rt} | {solver} | {min(p.lr_psnr):.1f} | {np.mean(before):.1f} "
                      f"[{min(before):.1f}, {max(before):.1f}] | {np.mean(rms):.4f} | {rec['correction_max']:.4f} |")
    print(f"\n{args.samples} samples, {args.steps} steps (flowdps: its own grid with that many steps), 8x8 -> 32x32 at "
          f"x4, avgpool, noiseless; torch {torch.__version__}, CPU")
    if args.json:
        args.json.write_text(json.dumps(recs, indent=1))


if __name__ == "__main__":
    main()
