"""Cost of the particle solver on a real-model path: seconds per sample of TDS (N particles) against DDNM+
on the tiny DeepFloyd IF pipeline (``textsr.testing.tiny_deepfloyd_if``: two stages, T5, CFG in one batched
call), same steps per stage, same LR image.

    python bench/particle_cost.py [--particles 1,4,16] [--samples 2] [--steps 20,10] [--json PATH]
        [--tds-option 'research={"last_twist": "same"}']    # more TDS settings (values parsed as JSON)
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from textsr import explore
from textsr.cli import parse_kv
from textsr.model_registry import load_model
from textsr.testing.tiny_deepfloyd_if import build_tiny_if


def run(particles: list[int], samples: int, steps: tuple[int, int], repeats: int = 2,
        tds_options: dict | None = None) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        backend = load_model(str(build_tiny_if(Path(tmp) / "if")), device="cpu", offline=True)
        lr = np.random.default_rng(0).random((4, 4, 3)).astype(np.float32)
        options = {"steps": list(steps)}
        rows = [("ddnm+", None)] + [("tds", n) for n in particles]
        recs = []
        for solver, n in rows:
            so = dict(tds_options or {}) if solver == "tds" else None
            explore(lr, ["a photo"], scale=8, model=backend, solver=solver, particles=n, samples=1,
                    model_options={"steps": [2, 2]}, solver_options=so)  # warm-up
            best = float("inf")
            for _ in range(repeats):
                t0 = time.perf_counter()
                explore(lr, ["a photo"], scale=8, model=backend, solver=solver, particles=n, samples=samples,
                        model_options=options, solver_options=so)
                best = min(best, time.perf_counter() - t0)
            recs.append({"solver": solver, "particles": n, "samples": samples, "steps": list(steps), "options": so,
                         "seconds_per_sample": best / samples})
    base = recs[0]["seconds_per_sample"]
    for r in recs:
        r["vs_ddnm_plus"] = r["seconds_per_sample"] / base
    return recs


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--particles", default="1,4,16")
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--steps", default="20,10", help="stage I, stage II")
    ap.add_argument("--json")
    ap.add_argument("--tds-option", action="append", default=[], metavar="KEY=VALUE",
                    help="a TDS setting for the tds rows (value parsed as JSON), e.g. twist=rayleigh")
    args = ap.parse_args(argv)
    steps = tuple(int(s) for s in args.steps.split(","))
    tds_options = parse_kv(args.tds_option, "--tds-option")
    recs = run([int(n) for n in args.particles.split(",")], args.samples, steps, tds_options=tds_options)
    print(f"Tiny DeepFloyd IF (CPU, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"{platform.machine()}), "
          f"x8 from 4x4, {steps[0]} + {steps[1]} steps, CFG 7 / 4, best of 2 runs of {args.samples} samples"
          + (f", TDS options {tds_options}" if tds_options else ""))
    print("| solver | particles | seconds per sample | vs DDNM+ |")
    print("|---|---|---|---|")
    for r in recs:
        print(f"| {r['solver']} | {r['particles'] or '-'} | {r['seconds_per_sample']:.3f} | {r['vs_ddnm_plus']:.1f}x |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(recs, f, indent=1)


if __name__ == "__main__":
    main()
