"""Cost of one level of the particle solver's twist: CPU milliseconds for the denoiser call and the twist of
``--particles`` particles at one timestep, per twist (``tweedie``: the dense form, m backward passes;
``lowrank``: 8 probes + Rayleigh, 9 backward passes where it runs; ``rayleigh``: 1), on the MCGdiff mixtures
(d = 80 with 20 measured values, d = 800 with 200) and stage I of the built-in world at 8x (192 values).
Median of ``--repeats`` timings at t = 500 and t = 100 (where the low-rank twist finds the floor).

    python bench/twist_cost.py [--particles 64] [--repeats 5]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

F64 = torch.float64


def problems():
    from textsr import operators as ops
    from textsr.demo import demo_image
    from textsr.gaussian_mixture import MixtureDenoiser, mcgdiff_problem
    from textsr.model_registry import load_model
    from textsr.schedule import NoiseSchedule

    for d, dy in ((80, 20), (800, 200)):
        p = mcgdiff_problem(0, d, dy)
        yield f"MCGdiff d={d} dy={dy}", MixtureDenoiser(p.prior, NoiseSchedule.linear()), p.operator, p.y, p.sigma_y, \
            p.prior.sample
    be = load_model("builtin-shapes")
    y = torch.from_numpy(demo_image()).permute(2, 0, 1)[None].to(F64) * 2 - 1
    yield "built-in stage I 8x", MixtureDenoiser(be.mixture_lo64, be.schedule), ops.AvgPool(2, (3, 16, 16)), y, 0.0, \
        be.mixture_lo64.sample


def main(argv=None) -> None:
    from textsr.solvers import Problem
    from textsr.solvers.twist import evaluate_twist

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--particles", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    P = args.particles
    print(f"CPU ms per level for {P} particles (1 thread, median of {args.repeats})")
    print("| problem | t | tweedie (dense) | lowrank | rayleigh | lowrank found the floor |")
    print("|---|---|---|---|---|---|")
    for name, den, A, y, sig, draw in problems():
        x0 = draw(P, torch.Generator().manual_seed(0))
        for t in (500, 100):
            ab = den.schedule.abar(t)
            noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1), dtype=F64)
            x = math.sqrt(ab) * x0 + math.sqrt(1 - ab) * noise
            prob = Problem(A, y.expand(P, *y.shape[1:]), sig)
            cells, found = [], ""
            for kind in ("tweedie", "lowrank", "rayleigh"):
                times = []
                for _ in range(args.repeats):
                    t0 = time.process_time()
                    ev = evaluate_twist(kind, den, prob, x, t, None)
                    times.append(time.process_time() - t0)
                cells.append(f"{1000 * statistics.median(times):.0f}")
                if kind == "lowrank":
                    found = f"{float(ev.rows_found().to(F64).mean()):.2f}"
            print(f"| {name} | {t} | {' | '.join(cells)} | {found} |", flush=True)


if __name__ == "__main__":
    main()
