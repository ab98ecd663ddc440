"""The paper's central claims, measured exactly in the built-in shapes world.

For scales 4, 8 and 16, a set of rendered scenes is average-pooled to the LR input and explored with
and without the right prompt (the scene's shape). Per cell: how often the samples have the true shape,
text consistency of the prompt, the lowest LR-PSNR, diversity (mean pairwise RMS distance), SW to the
exact posterior (with its noise floor) and the exact posterior probability of the true shape.
Expected: without text the shape is recovered less often as the scale grows; with text it stays near
1 while LR-PSNR stays high.

    python bench/builtin_world.py [--samples 8] [--steps 50] [--solver ddnm+] [--json PATH]

``--fractions``: calibration of the shape frequencies without a prompt (issue 9): for one scene per scale,
the fraction of samples of each shape against the exact ``P(shape | y)``, total variation, for the particle
solver (``--particles N``), DDNM+ and exact posterior sampling (the sampling floor), and the particle
solver's evidence against the exact ``log p(y)``.

    python bench/builtin_world.py --fractions --samples 300 --particles 16 --scales 8,16
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time

import numpy as np
import torch

from textsr import explore
from textsr.cli import parse_kv
from textsr.model_registry import load_model
from textsr.shapes_world import render_scene

SCENES = [
    ("circle", "red", "blue", "small", (1, 1)),
    ("star", "yellow", "black", "small", (0, 0)),
    ("ring", "green", "blue", "small", (2, 2)),
    ("cross", "white", "black", "large", (1, 1)),
    ("triangle", "blue", "black", "large", (0, 2)),
    ("square", "red", "black", "small", (2, 0)),
]


def run(scales, samples: int, steps: int, solver: str) -> list[dict]:
    backend = load_model("builtin-shapes")
    recs = []
    for scale in scales:
        for shape, colour, bg, size, pos in SCENES:
            hr = render_scene(shape, colour, bg, size, pos)[0].astype(np.float32)
            h = 64 // scale
            lr = hr.reshape(h, scale, h, scale, 3).mean(axis=(1, 3))
            for prompt in ("", f"a {shape}"):
                t0 = time.perf_counter()
                r = explore(lr, [prompt], scale=scale, model=backend, solver=solver, samples=samples, steps=steps,
                            seed=0)
                p = r.prompts[0]
                ex = p.extra
                recs.append({
                    "scale": scale, "scene": f"{size} {colour} {shape} on {bg}", "prompt": prompt or None,
                    "shape_recovery": ex["shapes"].get(shape, 0) / samples,
                    "text_consistency": p.text_consistency,
                    "lr_psnr_min": min(p.lr_psnr), "diversity": p.diversity["pairwise_l2"],
                    "sw": ex["sw"], "sw_floor": ex["sw_floor"],
                    "posterior_p_true_shape": ex["posterior_shapes"].get(shape, 0.0),
                    "seconds": time.perf_counter() - t0,
                })
    return recs


def _lr(shape, colour, bg, size, pos, scale):
    hr = render_scene(shape, colour, bg, size, pos)[0].astype(np.float32)
    h = 64 // scale
    return hr.reshape(h, scale, h, scale, 3).mean(axis=(1, 3))


BATCH = 10  # samples per cascade run in --fractions


def total_variation(names: list[str], exact: dict[str, float]) -> float:
    """Total variation between the shape frequencies of ``names`` and the exact ``P(shape | y)``."""
    return 0.5 * sum(abs(names.count(k) / len(names) - exact.get(k, 0.0)) for k in set(exact) | set(names))


def combined_log_z(logz: torch.Tensor) -> float:
    """``log mean Z_hat`` over independent runs (the unbiased combination; -inf when none is finite)."""
    finite = logz[torch.isfinite(logz)]
    return float(torch.logsumexp(finite, 0)) - math.log(len(logz)) if len(finite) else float("-inf")


def fractions(scales, samples: int, steps: int, particles: int, twist: str = "auto",
              scene_index: int = 0, tds_opts: dict | None = None, baselines: bool = True) -> list[dict]:
    """No-prompt shape fractions vs the exact P(shape | y) through the backend's two-stage cascade."""
    from textsr.cascade import run_cascade
    from textsr.operators import AvgPool

    backend = load_model("builtin-shapes")
    shape, colour, bg, size, pos = SCENES[scene_index]
    recs = []
    for scale in scales:
        y = torch.from_numpy(_lr(shape, colour, bg, size, pos, scale)).permute(2, 0, 1)[None] * 2 - 1
        op = AvgPool(scale, (3, 64, 64))
        exact = backend.shape_posterior(y, op)
        exact_logz = backend.exact_evidence(y, op)
        post = backend.exact_posterior(y, op)
        draws = post.sample(samples, torch.Generator().manual_seed(7))
        rows = [("exact posterior draws", backend.sample_shapes(draws), None, 0.0)]
        runs = [(f"TDS N={particles} ({twist})", "tds", {"particles": particles, "twist": twist, **(tds_opts or {})})]
        if baselines:
            runs.append(("DDNM+", "ddnm+", {}))
        for label, solver, opts in runs:
            t0 = time.perf_counter()
            stages = backend.build_stages(solver, {"steps": steps, **opts}, {})
            xs, logz = [], []
            for b0 in range(0, samples, BATCH):  # batches: stage II keeps the union of the items' components
                res = run_cascade(stages, y, scale, stages[0].solver, list(range(b0, min(b0 + BATCH, samples))), None,
                                  sigma_y=0.0)
                xs.append(res.x)
                logz.append(res.log_evidence)
            logz_all = None if logz[0] is None else torch.cat(logz)
            rows.append((label, backend.sample_shapes(torch.cat(xs)), logz_all, time.perf_counter() - t0))
        for label, names, logz, secs in rows:
            rec = {"scale": scale, "scene": f"{size} {colour} {shape} on {bg}", "method": label, "samples": samples,
                   "fractions": {k: names.count(k) / len(names) for k in sorted(set(names))},
                   "exact": {k: round(v, 4) for k, v in exact.items() if v > 1e-4}, "tv": total_variation(names, exact),
                   "exact_log_evidence": exact_logz, "seconds": secs}
            if logz is not None:
                rec["log_evidence_median"] = float(logz.median())
                rec["log_evidence_combined"] = combined_log_z(logz)
            recs.append(rec)
    return recs


def fractions_table(recs: list[dict]) -> str:
    lines = ["| scale | method | TV to exact P(shape given y) | shape fractions | log Z_hat (median; combined) | "
             "exact log Z | seconds |", "|---|---|---|---|---|---|---|"]
    for r in recs:
        fr = ", ".join(f"{k} {v:.2f}" for k, v in r["fractions"].items())
        lz = (f"{r['log_evidence_median']:.1f}; {r['log_evidence_combined']:.1f}"
              if "log_evidence_median" in r else "-")
        lines.append(f"| {r['scale']} | {r['method']} | {r['tv']:.3f} | {fr} | {lz} | "
                     f"{r['exact_log_evidence']:.1f} | {r['seconds']:.0f} |")
    return "\n".join(lines)


def table(recs: list[dict]) -> str:
    lines = ["| scale | prompt | shape recovered | exact P(true shape) | text consistency | min LR-PSNR (dB) | "
             "diversity | SW (floor) |", "|---|---|---|---|---|---|---|---|"]
    for scale in sorted({r["scale"] for r in recs}):
        for with_text in (False, True):
            rows = [r for r in recs if r["scale"] == scale and (r["prompt"] is not None) == with_text]
            mean = lambda k, rows=rows: float(np.mean([r[k] for r in rows]))  # noqa: E731
            tc = "-" if not with_text else f"{mean('text_consistency'):.2f}"
            lines.append(f"| {scale} | {'the shape' if with_text else 'none'} | {mean('shape_recovery'):.2f} | "
                         f"{mean('posterior_p_true_shape'):.2f} | {tc} | {min(r['lr_psnr_min'] for r in rows):.1f} | "
                         f"{mean('diversity'):.3f} | {mean('sw'):.3f} ({mean('sw_floor'):.3f}) |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--solver", default="ddnm+")
    ap.add_argument("--scales", default="4,8,16")
    ap.add_argument("--json")
    ap.add_argument("--fractions", action="store_true", help="no-prompt shape calibration (issue 9)")
    ap.add_argument("--particles", type=int, default=16)
    ap.add_argument("--twist", default="auto")
    ap.add_argument("--tds-option", action="append", default=[], metavar="KEY=VALUE",
                    help="more TDS settings for --fractions, e.g. ess_threshold=0.5 (values parsed as JSON)")
    ap.add_argument("--no-baselines", action="store_true", help="--fractions: skip DDNM+")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    scales = [int(s) for s in args.scales.split(",")]
    if args.fractions:
        tds_opts = parse_kv(args.tds_option, "--tds-option")
        recs = fractions(scales, args.samples, args.steps, args.particles, args.twist, tds_opts=tds_opts,
                         baselines=not args.no_baselines)
        title = f"scene '{recs[0]['scene']}', no prompt, {args.samples} samples, {args.steps}"
        text = fractions_table(recs)
    else:
        recs = run(scales, args.samples, args.steps, args.solver)
        title = f"{len(SCENES)} scenes, {args.samples} samples, {args.solver} {args.steps}"
        text = table(recs)
    print(f"Built-in shapes world, {title} steps per stage (two-stage cascade 16 -> 64 px), noiseless average pooling")
    print(text)
    print(f"\n{platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"{time.perf_counter() - t0:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(recs, f, indent=1)


if __name__ == "__main__":
    main()
