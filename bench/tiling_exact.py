"""The exact check of tiled sampling: the stationary Gaussian world (docs/tiling.md, "The exact check").

A Gaussian prior with translation-invariant (squared-exponential) covariance on 64 x 64 x 1 images,
``y = A x`` (x4 average pooling or bicubic) from a prior draw.  DDNM+ samples the posterior with

* ``whole``: the exact denoiser of the whole image (the reference: what a model that saw whole images
  would do with the same solver, steps and seeds);
* ``w16 o4 shift`` etc.: the same exact denoiser run on windows of 16 (or 32) px overlapping by 4 (or
  0, 8) px, fused by ``TiledDenoiser``: a model that only ever saw crops; ``fixed``: one grid for every
  step, ``shift``: the grid shifted by a seeded random fraction of a stride at every step.

Figures (``textsr.stationary_gaussian.check``), the mean over ``--problems`` draws of y:
SW to exact posterior draws (floor: two exact sets); std b/i: the samples' per-pixel std divided by the
exact std, mean over the overlap bands of the unshifted grid over the mean elsewhere (goal 0.9-1.1);
vs whole: the same with the whole-image sampler's std in place of the exact one; corr: pixel pairs on
either side of an overlap band (or of a hard border), exact posterior correlation vs the samples'; err
b / err i: mean |corr error| on those pairs and on pairs as far apart inside one window.
Rows "whole" use the 16/4 grid's bands (a control: no windows there).

Usage: python bench/tiling_exact.py [--samples 512] [--steps 100] [--problems 3] [--json PATH] [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from textsr.operators import AvgPool, Bicubic
from textsr.stationary_gaussian import ExactPosterior, Problem2D, StationaryGaussian, compare, run_sampler

SIZE = 64
VARIANTS = [  # label, window, overlap, shift
    ("whole", None, 4, False),
    ("w16 o0 fixed", 16, 0, False),
    ("w16 o0 shift", 16, 0, True),
    ("w16 o4 fixed", 16, 4, False),
    ("w16 o4 shift", 16, 4, True),
    ("w32 o8 fixed", 32, 8, False),
    ("w32 o8 shift", 32, 8, True),
]
KEYS = ("sw", "sw_floor", "std_border_interior", "std_border_interior_vs_reference", "std_ratio_interior",
        "corr_exact", "corr_samples", "corr_err_border", "corr_err_interior", "sw_to_reference")


def run(lengths=(2.0, 6.0), operators=("avgpool", "bicubic"), sigma_y=0.0, samples=512, steps=100, problems=3,
        size=SIZE, variants=VARIANTS, scale=4) -> list[dict]:
    ops = {"avgpool": AvgPool, "bicubic": Bicubic}
    recs = []
    for length in lengths:
        prior = StationaryGaussian(length=length, amplitude=0.5)
        for opname in operators:
            op = ops[opname](scale, (1, size, size))
            per: dict[str, list[dict]] = {}
            for k in range(problems):
                pb = Problem2D.draw(prior, op, sigma_y, seed=k)
                post = ExactPosterior(prior, op, pb.y, sigma_y)
                whole = run_sampler(pb, samples, window=None, steps=steps, seed=k)
                for label, window, overlap, shift in variants:
                    t0 = time.perf_counter()
                    xs = whole if window is None else run_sampler(pb, samples, window=window, overlap=overlap,
                                                                   shift=shift, steps=steps, seed=k)
                    grid = (16, 4) if window is None else (window, overlap)
                    r = compare(xs, post, *grid, seed=k, reference=whole)
                    r["seconds"] = time.perf_counter() - t0
                    per.setdefault(label, []).append(r)
            for label, rs in per.items():
                rec = {"length": length, "operator": opname, "sigma_y": sigma_y, "variant": label,
                       "samples": samples, "steps": steps, "problems": problems}
                rec.update({k: statistics.fmean(r[k] for r in rs) for k in (*KEYS, "seconds")})
                recs.append(rec)
    return recs


def table(recs: list[dict]) -> str:
    head = ("| l | A | sampler | SW (floor) | SW to whole | std b/i | std b/i vs whole | std/exact | corr exact | "
            "corr samples | err b | err i |")
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    for r in recs:
        lines.append(f"| {r['length']:g} | {r['operator']} | {r['variant']} | {r['sw']:.4f} ({r['sw_floor']:.4f}) | "
                     f"{r['sw_to_reference']:.4f} | {r['std_border_interior']:.3f} | "
                     f"{r['std_border_interior_vs_reference']:.3f} | {r['std_ratio_interior']:.3f} | "
                     f"{r['corr_exact']:.3f} | {r['corr_samples']:.3f} | {r['corr_err_border']:.3f} | "
                     f"{r['corr_err_interior']:.3f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=512)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--problems", type=int, default=3)
    ap.add_argument("--sigma-y", type=float, default=0.0)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--quick", action="store_true", help="a 32 px, 2-variant smoke run (seconds)")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    if a.quick:
        recs = run(lengths=(2.0,), operators=("avgpool",), samples=64, steps=10, problems=1, size=32,
                   variants=VARIANTS[:1] + VARIANTS[4:5])
    else:
        recs = run(sigma_y=a.sigma_y, samples=a.samples, steps=a.steps, problems=a.problems)
    print(f"Tiled sampling in the stationary Gaussian world ({recs[0]['samples']} samples, DDNM+ "
          f"{recs[0]['steps']} steps, sigma_y {recs[0]['sigma_y']}, mean of {recs[0]['problems']} problems)\n")
    print(table(recs))
    if a.json:
        a.json.write_text(json.dumps(recs, indent=1))


if __name__ == "__main__":
    main()
