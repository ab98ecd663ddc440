"""Text over windows, measured in an exact world: does the prompt's object appear in every window?

World (Gaussian mixtures, exact scores): 1-channel scenes of ``S x S`` pixels on a background of -0.5 with
Gaussian "dots" (peak 1.0, width 1 px) and pixel noise 0.1.  The *whole-image* model knows scenes: the
prompt "a dot" means one dot somewhere in the scene (a component per position).  The *window* model
only saw ``W x W`` crops: "a dot" means a dot in this window, and without a prompt a window holds a dot
with probability ``P_DOT``.  That is the situation of a text-to-image model run on windows with the
prompt of the whole image.

Inputs, average-pooled x4: ``visible``: a scene with one dot (``sigma_y = 0.02``: the LR image shows
where the dot is); ``hidden``: a blank scene with ``sigma_y = 0.3`` (the LR image hardly tells whether
there is a dot: the prompt decides).  DDNM+ (50 steps) samples with
the whole-image model and with the window model on ``W`` px windows (quarter overlap, shifted grid) at
``text`` = 1, 0.75, 0.5, 0.25, 0 (the window's guidance is ``text`` x the whole image's: ``eps_u + text (eps_c -
eps_u)``, ``tile_options={"text": ...}``).  Counted per sample: dots (local maxima above 0.25), whether
a dot within 2 px of the true one, LR-PSNR.

Usage: python bench/tiling_text.py [--samples 64] [--scene 32] [--window 8] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from textsr.denoiser import ClassifierFreeGuidance
from textsr.gaussian_mixture import GaussianMixture, IsoCov, MixtureDenoiser
from textsr.metrics import lr_psnr
from textsr.operators import AvgPool
from textsr.schedule import NoiseSchedule
from textsr.solvers import Noise, Problem, make_config, sample
from textsr.tiling import TiledDenoiser

BACKGROUND, PEAK, WIDTH, NOISE = -0.5, 1.0, 1.0, 0.1
P_DOT = 0.25  # a crop holds a dot this often (the window model's prior without a prompt)
SCALE, THRESHOLD = 4, 0.25
SCENARIOS = {"visible": 0.02, "hidden": 0.3}  # sigma_y
SCHED = NoiseSchedule.linear()


def dot(size: int, i: float, j: float) -> torch.Tensor:
    r = torch.arange(size, dtype=torch.float64)
    d2 = (r[:, None] - i) ** 2 + (r[None, :] - j) ** 2
    return BACKGROUND + (PEAK - BACKGROUND) * torch.exp(-0.5 * d2 / WIDTH**2)


def world(size: int, p_dot: float | None) -> GaussianMixture:
    """Blank + one dot at every interior position; ``p_dot``: the dots' total weight (None: no blank)."""
    pos = [(i, j) for i in range(1, size - 1) for j in range(1, size - 1)]
    means = [dot(size, i, j) for i, j in pos]
    tags = [{"dot"} for _ in pos]
    w = [1.0] * len(pos)
    if p_dot is not None:
        means.append(torch.full((size, size), BACKGROUND, dtype=torch.float64))
        tags.append({"blank"})
        w = [p_dot / len(pos)] * len(pos) + [1.0 - p_dot]
    K = len(means)
    return GaussianMixture(torch.tensor(w, dtype=torch.float64), torch.stack(means).reshape(K, -1),
                           IsoCov(torch.full((K,), NOISE**2, dtype=torch.float64), size * size), tags=tags,
                           event_shape=(1, size, size))


def count_dots(x: torch.Tensor) -> torch.Tensor:
    """Local maxima (3 x 3) above the threshold, per sample."""
    peaks = (x == F.max_pool2d(x, 3, 1, 1)) & (x > THRESHOLD)
    return peaks.flatten(1).sum(1)


def run(samples: int, scene: int, window: int, steps: int, scenario: str = "visible", seed: int = 0,
        texts: tuple[float, ...] = (1.0, 0.75, 0.5, 0.25, 0.0)) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    sigma_y = SCENARIOS[scenario]
    truth = (scene // 4 + 1, 3 * scene // 4 - 2)
    x_true = dot(scene, *truth)[None, None] if scenario == "visible" else torch.full((1, 1, scene, scene), BACKGROUND)
    op = AvgPool(SCALE, (1, scene, scene))
    y = op.A(x_true) + sigma_y * torch.randn(op.A(x_true).shape, generator=g, dtype=torch.float64)
    whole = ClassifierFreeGuidance(MixtureDenoiser(world(scene, None), SCHED), 1.0)
    crops = MixtureDenoiser(world(window, P_DOT), SCHED)
    variants = {"whole image (scene model)": whole}
    for text in texts:
        variants[f"windows {window} px, text {text:g}"] = TiledDenoiser(
            ClassifierFreeGuidance(crops, 1.0), (window, window), (window // 4, window // 4), seed=seed,
            window_base=ClassifierFreeGuidance(crops, text) if text < 1 else None)
    recs = []
    for label, den in variants.items():
        noise = Noise.from_seeds(range(seed * 1000, seed * 1000 + samples), dtype=torch.float64)
        x = sample(den, Problem(op, y, sigma_y), make_config("ddnm+", steps=steps), noise, cond="dot").x
        n = count_dots(x)
        r, c = truth  # a dot within 2 px of the true one (the LR block fixes it to about that)
        found = x[:, 0, r - 2:r + 3, c - 2:c + 3].flatten(1).amax(1) > THRESHOLD
        recs.append({"scenario": scenario, "sigma_y": sigma_y, "sampler": label,
                     "dots_mean": float(n.double().mean()), "one_dot": float((n == 1).double().mean()),
                     "true_dot_found": float(found.double().mean()),
                     "lr_psnr_median": float(lr_psnr(x, y, op).median()), "samples": samples, "scene": scene,
                     "window": window, "steps": steps})
    return recs


def table(recs: list[dict]) -> str:
    lines = ["| input | sampler | dots per sample | exactly one dot | a dot at the true one | LR-PSNR (median) |",
             "|---|---|---|---|---|---|"]
    for r in recs:
        found = f"{r['true_dot_found']:.2f}" if r["scenario"] == "visible" else "-"
        lines.append(f"| {r['scenario']} | {r['sampler']} | {r['dots_mean']:.2f} | {r['one_dot']:.2f} | {found} | "
                     f"{r['lr_psnr_median']:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--scene", type=int, default=32)
    ap.add_argument("--window", type=int, default=8)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    recs = [r for sc in SCENARIOS for r in run(a.samples, a.scene, a.window, a.steps, sc)]
    print(f"Text over windows in an exact dot world ({a.scene} px scenes, x{SCALE}, {a.samples} samples, DDNM+ "
          f"{a.steps} steps)\n")
    print(table(recs))
    if a.json:
        a.json.write_text(json.dumps(recs, indent=1))


if __name__ == "__main__":
    main()
