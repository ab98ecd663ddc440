"""``textsr rank``'s particle estimate of P(prompt | y) against the exact one, scene by scene (issue 20, item 3).

Each scene is a built-in-world image drawn from one component of the prior (its object and background colours
varied, pixel noise added: an image no test was tuned on), average-pooled 8x or 16x, with four prompts: near-tied
ones (exact log evidence within 2 nats of each other), prompts under which the image is atypical (a wrong
colour, size or place) and the no-prompt entry ``""``.  Per scene: the exact ``P`` and ``log p(y | prompt)``
(``rank(method="exact")``), the particle estimate (``rank(method="particles")``, defaults unless given), the
total variation between the two, and whether the exact best prompt came first (prompts exactly tied, within
``TIE`` nats, count as one).

    python bench/rank_scenes.py [--particles 16] [--samples 4] [--steps N] [--scenes 0,3] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch

TIE = 0.05  # nats: prompts whose exact evidences are this close are tied (the image cannot tell them apart)

# (scale, (shape, colour, background, size, position), draw seed, prompts)
SCENES = [
    (8, ("circle", "red", "blue", "small", (1, 1)), 1,
     ["a red circle", "a small red circle in the center", "a red ring on blue", ""]),
    (8, ("star", "yellow", "black", "large", (0, 0)), 2,
     ["a yellow star", "a large yellow star on black", "a white star", ""]),
    (8, ("triangle", "blue", "black", "small", (0, 2)), 3,
     ["a small blue triangle", "a blue triangle at the top right", "a large blue triangle", ""]),
    (8, ("square", "green", "blue", "large", (2, 0)), 4,
     ["a large green square", "a green square on blue", "a green square at the top left", ""]),
    (8, ("ring", "white", "blue", "small", (2, 2)), 5,
     ["a white ring", "a white circle at the bottom right", "a yellow ring", ""]),
    (8, ("cross", "red", "black", "large", (1, 1)), 6, ["a red cross", "a large red cross", "a red cross on blue", ""]),
    (8, ("circle", "yellow", "blue", "large", (0, 0)), 7,
     ["a yellow circle", "a large yellow circle on blue", "a white circle", ""]),
    (16, ("circle", "green", "blue", "small", (1, 1)), 8,
     ["a green circle", "a small green square", "a green circle on black", ""]),
    (16, ("star", "red", "black", "large", (2, 2)), 9, ["a red star", "a large red cross", "a small red star", ""]),
    (16, ("ring", "blue", "black", "small", (0, 0)), 10,
     ["a blue ring", "a small blue ring on black", "a white ring", ""]),
    (16, ("square", "white", "black", "large", (0, 2)), 11,
     ["a white square", "a large white circle", "a white square on blue", ""]),
    (16, ("triangle", "yellow", "blue", "large", (2, 0)), 12,
     ["a yellow triangle", "a large yellow star", "a small yellow triangle", ""]),
    (16, ("cross", "green", "black", "small", (1, 1)), 13,
     ["a green cross", "a small green cross in the center", "a red cross", ""]),
    (8, ("star", "white", "blue", "small", (2, 0)), 14,
     ["a white star", "a star", "a white cross at the bottom left", ""]),
]


def scene_image(shape, colour, background, size, position, seed: int, scale: int) -> np.ndarray:
    """One draw from the scene's component (colours varied, pixel noise), pooled by ``scale``: (h, w, 3) in [0, 1]."""
    from textsr.shapes_world import build_catalog
    from textsr.shapes_world.ambiguity import downsample_image, sample_component

    cat = build_catalog(64, shapes=(shape,), colours=(colour,), backgrounds=(background,), sizes=(size,),
                        positions=(position,))
    x = sample_component(cat, 0, np.random.default_rng(seed))  # (3, 64, 64) in [-1, 1]
    lr = downsample_image(x, scale)
    return ((lr.transpose(1, 2, 0) + 1) / 2).clip(0, 1).astype(np.float32)


def run(indices, particles: int | None, samples: int, steps: int | None, seed: int) -> list[dict]:
    from textsr import rank
    from textsr.model_registry import load_model

    backend = load_model("builtin-shapes")
    recs = []
    for i in indices:
        scale, spec, draw, prompts = SCENES[i]
        lr = scene_image(*spec, seed=draw, scale=scale)
        exact = {e["prompt"]: e for e in rank(lr, prompts, scale=scale, model=backend, method="exact").entries}
        t0, c0 = time.perf_counter(), time.process_time()
        est = {e["prompt"]: e for e in rank(lr, prompts, scale=scale, model=backend, method="particles",
                                           particles=particles, samples=samples, steps=steps, seed=seed).entries}
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        lz = {p: exact[p]["log_z"] for p in prompts}
        top = max(lz.values())
        best_exact = {p for p in prompts if lz[p] >= top - TIE}
        best_est = max(prompts, key=lambda p: est[p]["log_z"])
        tv = 0.5 * sum(abs(exact[p]["probability"] - (est[p]["probability"] or 0.0)) for p in prompts)
        gaps = sorted(lz.values(), reverse=True)
        recs.append({"scene": i, "scale": scale, "spec": list(map(str, spec)), "draw": draw, "prompts": prompts,
                     "exact_log_z": lz, "exact_p": {p: exact[p]["probability"] for p in prompts},
                     "est_log_z": {p: est[p]["log_z"] for p in prompts},
                     "est_p": {p: est[p]["probability"] for p in prompts},
                     "spread": {p: est[p]["spread"] for p in prompts}, "tv": tv,
                     "best_first": best_est in best_exact, "gap_top2": gaps[0] - gaps[1], "wall_s": wall,
                     "cpu_s": cpu})
        print(f"scene {i}: TV {tv:.3f} best first {best_est in best_exact} ({wall:.0f} s)", flush=True)
    return recs


def table(recs: list[dict]) -> str:
    lines = ["| # | x | scene (draw) | prompt | exact log Z | exact P | rank log Z (spread) | rank P | TV | "
             "best first |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in recs:
        order = sorted(r["prompts"], key=lambda p: -r["exact_log_z"][p])
        for j, p in enumerate(order):
            head = (f"| {r['scene']} | {r['scale']} | {' '.join(r['spec'][:4])} {r['spec'][4]} ({r['draw']}) |"
                    if j == 0 else "| | | |")
            tail = f" {r['tv']:.3f} | {'yes' if r['best_first'] else 'NO'} |" if j == 0 else " | |"
            ep = r["est_p"][p]
            lines.append(f"{head} {p or '(no prompt)'} | {r['exact_log_z'][p]:.2f} | {r['exact_p'][p]:.3f} | "
                         f"{r['est_log_z'][p]:.2f} ({r['spread'][p]:.1f}) | {'n/a' if ep is None else f'{ep:.3f}'} |"
                         f"{tail}")
    tvs = [r["tv"] for r in recs]
    lines.append(f"\n{len(recs)} scenes: TV max {max(tvs):.3f}, median {float(np.median(tvs)):.3f}; exact best "
                 f"first in {sum(r['best_first'] for r in recs)} of {len(recs)}; near-tied (top two within 2 nats, "
                 f"not tied): {sum(TIE < r['gap_top2'] <= 2 for r in recs)} scenes")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--particles", type=int)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--steps", type=int)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scenes", help="comma-separated indices (default: all)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    idx = [int(v) for v in args.scenes.split(",")] if args.scenes else list(range(len(SCENES)))
    t0 = time.perf_counter()
    recs = run(idx, args.particles, args.samples, args.steps, args.seed)
    print(f"\nrank's particle estimate ({args.particles or 16} particles x {args.samples} runs, steps "
          f"{args.steps or 'default'}) against the exact P(prompt | y), built-in world")
    print(table(recs))
    print(f"\n{platform.machine()}, torch {torch.__version__}, {args.threads} thread(s); "
          f"{time.perf_counter() - t0:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(recs, f, indent=1)


if __name__ == "__main__":
    main()
