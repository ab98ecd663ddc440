"""Shape calibration of stage I of the built-in world (the 16 px prior against y), fast enough for sweeps.

For the first scene of ``bench/builtin_world.py`` at each scale: the no-prompt shape fractions of the
particle solver's samples (stage I output, classified by the 16 px mixture) against the exact P(shape | y),
their total variation, the median / combined log Z_hat against the exact log p(y), the median minimum ESS
and the seconds.  Each ``--config`` is a JSON dict of TDS options (one row each).  ``bench/builtin_world.py
--fractions`` measures the whole cascade; this isolates the stage that decides the shape.

    python bench/stage1_fractions.py --scales 8,16 --samples 300 --config '{"particles": 16}' \\
        [--config '{"particles": 16, "twist": "tweedie"}'] [--device cuda] [--budget 480] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from builtin_world import SCENES, _lr, combined_log_z, total_variation  # noqa: E402

from textsr.gaussian_mixture import MixtureDenoiser  # noqa: E402
from textsr.model_registry import load_model  # noqa: E402
from textsr.operators import AvgPool  # noqa: E402
from textsr.solvers import Noise, Problem, make_config, sample  # noqa: E402


def run(be, scale: int, opts: dict, samples: int, batch: int, device: str, seed: int = 1000) -> dict:
    mix = be.mixture_lo64
    den = MixtureDenoiser(mix, be.schedule)
    y = torch.from_numpy(_lr(*SCENES[0], scale)).permute(2, 0, 1)[None].double() * 2 - 1
    op64 = AvgPool(scale, (3, 64, 64))
    exact = be.shape_posterior(y.float(), op64)
    cfg = make_config("tds", **opts)
    t0 = time.perf_counter()
    names: list[str] = []
    logz: list[float] = []
    ess_min: list[float] = []
    for b0 in range(0, samples, batch):
        n = min(batch, samples - b0)
        noise = Noise([torch.Generator().manual_seed(seed + b0 + i) for i in range(n)], device=device,
                      dtype=torch.float64)
        res = sample(den, Problem(AvgPool(scale // 4, (3, 16, 16)), y.to(device), 0.0), cfg, noise)
        k = mix.assign(res.x.flatten(1).to(torch.float64))
        names += [be._shape_of(mix.tags[int(i)]) for i in k]
        logz += res.log_evidence.tolist()
        ess_min += (res.ess.min(0).values / cfg.particles).tolist()
    c = Counter(names)
    frac = {s: c[s] / len(names) for s in sorted(set(c) | set(exact))}
    lz = torch.tensor(logz, dtype=torch.float64)
    return {"scale": scale, "options": opts, "samples": len(names), "fractions": frac,
            "exact": {k: round(v, 4) for k, v in exact.items()}, "tv": total_variation(names, exact),
            "log_z_median": float(lz.median()), "log_z_combined": combined_log_z(lz),
            "exact_log_z": be.exact_evidence(y.float(), op64), "ess_min_median": float(torch.tensor(ess_min).median()),
            "seconds": time.perf_counter() - t0}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scales", default="8,16")
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--batch", type=int, default=20, help="samples per sample() call")
    ap.add_argument("--config", action="append", default=[], help="TDS options as JSON (one row per config)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--budget", type=float, default=math.inf, help="seconds: start no new row after this")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    be = load_model("builtin-shapes", device=args.device)
    configs = [json.loads(c) for c in args.config] or [{"particles": 16}]
    t0, recs = time.perf_counter(), []
    print("| scale | TDS options | TV | shape fractions | log Z_hat median; combined (exact) | min ESS/N | s |")
    print("|---|---|---|---|---|---|---|")
    for scale in (int(s) for s in args.scales.split(",")):
        for opts in configs:
            if time.perf_counter() - t0 > args.budget:
                print(f"(budget of {args.budget:.0f} s spent: {scale}x {opts} not run)")
                continue
            r = run(be, scale, {"steps": 50, **opts}, args.samples, args.batch, args.device)
            recs.append(r)
            fr = ", ".join(f"{k} {v:.2f}" for k, v in r["fractions"].items())
            print(f"| {scale} | {json.dumps(opts)} | {r['tv']:.3f} | {fr} | {r['log_z_median']:.1f}; "
                  f"{r['log_z_combined']:.1f} ({r['exact_log_z']:.1f}) | {r['ess_min_median']:.2f} | "
                  f"{r['seconds']:.0f} |", flush=True)
            if args.json:
                Path(args.json).write_text(json.dumps(recs, indent=1))
    dev = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"\n{dev}, torch {torch.__version__}, {torch.get_num_threads()} threads; {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
