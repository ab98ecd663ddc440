"""textsr's own per-step time on the DeepFloyd IF path at 256 px, with the UNet's cost left out.

A stand-in UNet (one multiply) replaces IF's, so what is timed is what textsr adds per step: CFG
batching, dynamic thresholding of x0_hat, the solver's projection and the diffusion step.  Two
changes are measured before/after on the same inputs (issue 10, items 14 and 15):

* dynamic thresholding with ``torch.quantile`` (sorts every row) vs two ``kthvalue`` order statistics
  (``deepfloyd_if_unet.quantile_rows``; same thresholds);
* DDNM+ ``mode="svd"`` projecting the injected noise twice per step (``project_null`` then ``spectral``)
  vs once (``sigma n - spectral(sigma n, 1 - gamma/sigma)``; same output).

    python bench/step_overhead.py            # batch 4, 256 px, x4 bicubic-reflect, 40 steps per variant
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from functools import partial
from types import SimpleNamespace

import torch

from textsr.backends.deepfloyd_if_unet import IFText, IFUNetDenoiser, dynamic_threshold
from textsr.operators import make_operator
from textsr.schedule import NoiseSchedule
from textsr.solvers import Noise, Problem, StepResult, make_config
from textsr.solvers.ddnm import ddnm_plus_step, ddnm_step


class StandInUNet(torch.nn.Module):
    """Costs one multiply: eps = 0.1 x_t, variance channels 0 (IF's output layout, 2C channels)."""

    def __init__(self, channels: int = 3):
        super().__init__()
        self.config = SimpleNamespace(in_channels=channels)
        self.w = torch.nn.Parameter(torch.tensor(0.1))

    def forward(self, x, t, encoder_hidden_states=None, class_labels=None, return_dict=False):
        return (torch.cat([self.w * x, torch.zeros_like(x)], 1),)


def threshold_with_quantile(x0: torch.Tensor, ratio: float, max_value: float) -> torch.Tensor:
    """The former implementation (torch.quantile), kept here as the 'before'."""
    s = torch.quantile(x0.flatten(1).abs().float(), ratio, dim=1).clamp(min=1.0, max=max_value).to(x0.dtype)
    s = s.view(-1, *([1] * (x0.ndim - 1)))
    return torch.maximum(torch.minimum(x0, s), -s) / s


def ddnm_plus_svd_two_projections(den, problem, x_t, t, t_next, cond, cfg, noise) -> StepResult:
    """The former DDNM+ svd step (ddnm step kind), kept here as the 'before'."""
    A, y, sigma_y = problem.operator, problem.y, problem.sigma_y
    pred = den(x_t, t, cond)
    x0_hat = pred.x0
    abar_s = den.schedule.abar(t_next)
    a, sigma_s = math.sqrt(abar_s), math.sqrt(max(1.0 - abar_s, 0.0))
    r = A.A_pinv(A.A(x0_hat) - y)
    n = math.sqrt(1.0 - cfg.eta**2) * pred.eps + cfg.eta * noise.like(x0_hat)
    x0 = x0_hat - A.spectral(r, lambda s: torch.clamp(sigma_s * s / (a * sigma_y), max=1.0))
    gamma = lambda s: torch.sqrt(torch.clamp(sigma_s**2 - (a * sigma_y / s) ** 2, min=0.0))  # noqa: E731
    x_s = a * x0 + sigma_s * A.project_null(n) + A.spectral(n, gamma)
    return StepResult(x_next=x_s, x0_hat=x0_hat, x0=x0)


def time_steps(step, den, problem, cfg, cond, steps: int, batch: int, size: int) -> tuple[float, float]:
    """(fastest, median) seconds per step over ``steps`` steps after one warm-up step.  The fastest is
    the figure to compare on a shared machine (other processes only ever add time)."""
    sch = den.schedule
    ts = sch.timesteps(steps + 1)
    noise = Noise.from_seeds(range(batch))
    x = noise.randn((3, size, size))
    times = []
    with torch.no_grad():
        for t, s in zip(ts, ts[1:] + [-1]):
            t0 = time.perf_counter()
            x = step(den, problem, x, t, s, cond, cfg, noise).x_next
            times.append(time.perf_counter() - t0)
    times = sorted(times[1:])
    return times[0], times[len(times) // 2]


def best_of(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def changed_operations(op, batch: int, size: int, repeat: int) -> list[tuple[str, float]]:
    """The two changed operations alone (fastest of ``repeat``): thresholding one x0_hat batch, and the
    DDNM+ svd noise term (the noise projected twice vs once)."""
    g = torch.Generator().manual_seed(0)
    x0 = 1.3 * torch.randn(batch, 3, size, size, generator=g)
    n = torch.randn(batch, 3, size, size, generator=g)
    sigma, gamma = 0.6, lambda s: torch.sqrt(torch.clamp(0.36 - (0.1 / s) ** 2, min=0.0))  # noqa: E731
    keep = lambda s: 1.0 - gamma(s) / sigma  # noqa: E731
    with torch.no_grad():
        return [
            ("threshold x0_hat: torch.quantile", best_of(lambda: threshold_with_quantile(x0, 0.95, 1.0), repeat)),
            ("threshold x0_hat: kthvalue", best_of(lambda: dynamic_threshold(x0, 0.95, 1.0), repeat)),
            ("DDNM+ noise term: project_null + spectral", best_of(
                lambda: sigma * op.project_null(n) + op.spectral(n, gamma), repeat)),
            ("DDNM+ noise term: one spectral", best_of(lambda: sigma * n - op.spectral(sigma * n, keep), repeat)),
        ]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="write the records here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    sch = NoiseSchedule.cosine()
    text = IFText(embeds=torch.zeros(1, 77, 32))
    make_den = lambda fn: IFUNetDenoiser(StandInUNet(), sch, guidance_scale=4.0, null_text=text,  # noqa: E731
                                         x0_transform=partial(fn, ratio=0.95, max_value=1.0))
    op = make_operator("bicubic-reflect", 4, (3, args.size, args.size))
    y = op.A(torch.rand(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(0)) * 2 - 1)
    recs = []

    def run(label, step, fn, solver, sigma_y, **opts):
        cfg = make_config(solver, steps=args.steps, **opts)
        fast, med = time_steps(step, make_den(fn), Problem(op, y, sigma_y), cfg, text, args.steps, args.batch,
                               args.size)
        recs.append({"variant": label, "seconds_per_step_min": fast, "seconds_per_step_median": med,
                     "batch": args.batch, "size": args.size, "steps": args.steps})
        print(f"| {label} | {1000 * fast:.1f} | {1000 * med:.1f} |")

    print(f"per-step time (ms over {args.steps - 1} steps), batch {args.batch}, {args.size} px, x4 bicubic-reflect,"
          f" stand-in UNet")
    print("| variant | fastest step | median step |\n|---|---|---|")
    run("DDNM, thresholding with torch.quantile (before)", ddnm_step, threshold_with_quantile, "ddnm", 0.0)
    run("DDNM, thresholding with kthvalue (after)", ddnm_step, dynamic_threshold, "ddnm", 0.0)
    run("DDNM, no thresholding", ddnm_step, lambda x0, **kw: x0, "ddnm", 0.0)
    run("DDNM+ svd sigma_y=0.05, noise projected twice (before)", ddnm_plus_svd_two_projections,
        dynamic_threshold, "ddnm+", 0.05)
    run("DDNM+ svd sigma_y=0.05, noise projected once (after)", ddnm_plus_step, dynamic_threshold, "ddnm+", 0.05)
    run("DDNM+ svd sigma_y=0.05, ddpm step, learned variance", ddnm_plus_step, dynamic_threshold, "ddnm+", 0.05,
        step_kind="ddpm")
    print(f"\nthe changed operations alone, batch {args.batch}, {args.size} px (ms, fastest of 200)")
    print("| operation | ms |\n|---|---|")
    for label, sec in changed_operations(op, args.batch, args.size, 200):
        recs.append({"operation": label, "seconds_min": sec, "batch": args.batch, "size": args.size})
        print(f"| {label} | {1000 * sec:.1f} |")
    machine = platform.processor() or platform.machine()
    print(f"\n{machine}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(recs, f, indent=1)


if __name__ == "__main__":
    main()
