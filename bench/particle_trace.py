"""Where a particle run loses its weights: per-step ESS, running log Z_hat and the spread of the incremental
log-weights of ``tds`` on stage I of the built-in world (the 16 px prior against y), beside the exact
``log p(y | prompt)``.  A diagnostic, not a table of the README's benchmarks.

    python bench/particle_trace.py --scale 16 --twist rayleigh --samples 3 [--prompt TEXT] [--dtype float64]
        [--steps 50] [--particles 16] [--option 'research={"proposal": "kalman"}'] [--show 8]

Output: the exact evidence and P(shape | y), the final log Z_hat per sample and the minimum ESS, then the
last ``--show`` reweightings (ESS / N, log Z_hat so far, max - min and median of the increments).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from builtin_world import SCENES, _lr  # noqa: E402

from textsr.cascade import run_cascade  # noqa: E402
from textsr.cli import parse_kv  # noqa: E402
from textsr.model_registry import load_model  # noqa: E402
from textsr.operators import AvgPool  # noqa: E402
from textsr.solvers import smc  # noqa: E402


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=int, default=16)
    ap.add_argument("--scene", type=int, default=0, help="index into bench/builtin_world.py's SCENES")
    ap.add_argument("--prompt", default="")
    ap.add_argument("--twist", default="auto")
    ap.add_argument("--particles", type=int, default=16)
    ap.add_argument("--samples", type=int, default=3)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    ap.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="TDS settings (JSON)")
    ap.add_argument("--show", type=int, default=8)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    be = load_model("builtin-shapes")
    shape, colour, bg, size, pos = SCENES[args.scene]
    y = torch.from_numpy(_lr(shape, colour, bg, size, pos, args.scale)).permute(2, 0, 1)[None] * 2 - 1
    op = AvgPool(args.scale, (3, 64, 64))
    post = {k: round(v, 3) for k, v in be.shape_posterior(y, op, args.prompt).items() if v > 1e-3}
    print(f"x{args.scale} scene {args.scene} prompt {args.prompt!r}: exact log p(y | prompt) "
          f"{be.exact_evidence(y, op, args.prompt):.1f}, P(shape | y) {post}")
    records = []
    reweight = smc.ParticleSystem.reweight

    def traced(self, inc):
        e = reweight(self, inc)
        i = inc.detach().to("cpu", torch.float64).reshape(self.B, self.N)
        records.append((self.log_z.clone(), i.max(-1).values - i.min(-1).values, i.median(-1).values, e / self.N))
        return e

    opts = parse_kv(args.option, "--option")
    stages = be.build_stages("tds", {"steps": args.steps, "particles": args.particles, "twist": args.twist, **opts}, {})
    cond = be.encode_prompt(args.prompt) if args.prompt else None
    smc.ParticleSystem.reweight = traced
    try:
        run_cascade(stages[:1], y, args.scale, stages[0].solver, list(range(args.samples)), cond, sigma_y=0.0,
                    dtype=getattr(torch, args.dtype))
    finally:
        smc.ParticleSystem.reweight = reweight
    fmt = lambda v, f: " ".join(format(float(x), f) for x in v)  # noqa: E731
    print(f"final log Z_hat {fmt(records[-1][0], '.1f')}; min ESS / N "
          f"{fmt(torch.stack([r[3] for r in records]).min(0).values, '.2f')}")
    for k, (lz, spread, med, e) in list(enumerate(records))[max(len(records) - args.show, 0):]:
        print(f"{k:4d} ESS/N {fmt(e, '.2f')} | log Z_hat {fmt(lz, '8.1f')} | increments max-min {fmt(spread, '7.1f')}"
              f" median {fmt(med, '7.1f')}")


if __name__ == "__main__":
    main()
