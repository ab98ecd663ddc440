"""Before/after check of a refactoring: every solver's default output on fixed problems and seeds, to the bit.

Runs each registered solver with its defaults (fewer steps) on small exact worlds, and the particle solver
``tds`` with its defaults on problems that take each of its automatic paths (the exact dense twist with
resampling, the approximate twist without it, the built-in world's stage I), and prints one line per case:
a SHA-256 of the output samples' bytes and the evidence estimates in full precision.  Run it on two commits
and diff the outputs: identical lines mean identical numbers.

    python bench/solver_golden.py > before.txt; (change the code); python bench/solver_golden.py > after.txt
    diff before.txt after.txt
"""

from __future__ import annotations

import argparse
import hashlib
import sys

import torch

F64 = torch.float64


def _digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().to("cpu", F64).contiguous().numpy().tobytes()).hexdigest()[:16]


def cases():
    from textsr import operators as ops
    from textsr.gaussian_mixture import MixtureDenoiser, mcgdiff_problem
    from textsr.model_registry import load_model
    from textsr.schedule import NoiseSchedule
    from textsr.shapes_world import render_scene
    from textsr.solvers import Noise, Problem, make_config, sample

    sch = NoiseSchedule.linear()
    p8 = mcgdiff_problem(3, 8, 2)
    den8 = MixtureDenoiser(p8.prior, sch)
    prob8 = Problem(p8.operator, p8.y, p8.sigma_y)
    for solver in ("plain", "ddnm", "ddnm+", "dps", "pigdm"):
        for kind in ("ddnm", "ddim", "ddpm"):
            cfg = make_config(solver, steps=12, step_kind=kind)
            yield f"{solver} {kind} d=8", sample(den8, prob8, cfg, Noise.from_seeds([0, 1, 2], dtype=F64))
    yield "tds d=8 dy=2", sample(den8, prob8, make_config("tds", steps=20, particles=8),
                                  Noise.from_seeds([5, 6], dtype=F64))
    p80 = mcgdiff_problem(1, 80, 20)
    yield "tds d=80 dy=20", sample(MixtureDenoiser(p80.prior, sch), Problem(p80.operator, p80.y, p80.sigma_y),
                                    make_config("tds", steps=20, particles=8), Noise.from_seeds([7, 8], dtype=F64))
    be = load_model("builtin-shapes")
    hr = render_scene("star", "green", "black", "small", (0, 2))[0]
    x = torch.from_numpy(hr).permute(2, 0, 1)[None].to(F64) * 2 - 1
    for scale in (16, 8):
        y = ops.AvgPool(scale, (3, 64, 64)).A(x)
        yield f"tds builtin stage I x{scale}", sample(
            MixtureDenoiser(be.mixture_lo64, be.schedule), Problem(ops.AvgPool(scale // 4, (3, 16, 16)), y, 0.0),
            make_config("tds", steps=20, particles=4), Noise.from_seeds([11, 12], dtype=F64))
    from textsr import explore
    from textsr.demo import demo_image

    ex = explore(demo_image(), ["a red circle", ""], scale=8, model=be, particles=3, samples=2, steps=6)
    for p in ex.prompts:
        yield f"explore tds builtin {p.prompt!r}", _Result(torch.from_numpy(p.samples),
                                                           torch.tensor(p.evidence.log_z_samples, dtype=F64))


class _Result:
    def __init__(self, x: torch.Tensor, log_evidence: torch.Tensor):
        self.x, self.log_evidence = x, log_evidence


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.parse_args(argv)
    torch.set_num_threads(1)
    for name, res in cases():
        ev = "" if res.log_evidence is None else " log Z " + " ".join(repr(float(v)) for v in res.log_evidence)
        print(f"{name}: x {_digest(res.x)}{ev}", flush=True)
    print("done", file=sys.stderr)


if __name__ == "__main__":
    main()
