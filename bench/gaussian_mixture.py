"""Solvers against exact posteriors in Gaussian-mixture worlds (docs/method.md, "Evaluation").

Table 1: the MCGdiff protocol (Cardoso et al. 2024): SW to the exact posterior, mean and 95% CI over
problems, for d in {8, 80, 800} x dy in {1, 2, 4}, at 20 and 100 steps, with the noise floor (two
exact posterior draws), the prior (ignoring y) and the exact-posterior-score sampler (the floor any
sampler can reach at that step count).
Table 2: a text-conditional world in which several components with *different* tags share one LR
image, so only the prompt can choose: text consistency, LR-PSNR, SW to the exact text-conditional
posterior and diversity ratio, per solver and CFG scale.
Table 3: the same problems through an exact two-stage cascade (4x4 stage I with the solver and CFG,
8x8 stage II from the exact conditional given stage I and the prompt, solver again against the same
y), against the single-stage result.

    python bench/gaussian_mixture.py --quick            # d = 8 at 100 steps + Table 2 at CFG 1
    python bench/gaussian_mixture.py --json results.json  # everything
    python bench/gaussian_mixture.py --tables 1 --ds 8,80 --only "ddpm step" --jobs 1  # the ddpm-step rows
    python bench/gaussian_mixture.py --tables 1 --ds 8,80 --path flow   # the same solvers on the flow path
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import multiprocessing
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from textsr.cascade import Stage, run_cascade
from textsr.denoiser import ClassifierFreeGuidance, Prediction
from textsr.gaussian_mixture import (
    DiagCov,
    GaussianMixture,
    IsoCov,
    MixtureDenoiser,
    lowres_condition,
    mcgdiff_problem,
    posterior,
    push_forward,
)
from textsr.metrics import mean_ci, sliced_wasserstein
from textsr.operators import AvgPool
from textsr.schedule import NoiseSchedule
from textsr.solvers import Noise, Problem, make_config, sample

SCHED = NoiseSchedule.linear(1000)
F64 = torch.float64


@dataclass(frozen=True)
class Method:
    label: str
    solver: str
    options: tuple = ()

    def config(self, steps: int):
        return make_config(self.solver, steps=steps, **dict(self.options))


TABLE1_METHODS = [
    Method("baseline (prior sampler)", "plain"),
    Method("DDNM", "ddnm"),
    Method("DDNM+", "ddnm+"),
    Method("DPS zeta=0.3", "dps", (("zeta", 0.3),)),
    Method("DPS zeta=1.0", "dps", (("zeta", 1.0),)),
    Method("PiGDM (tweedie, safeguard)", "pigdm"),
    Method("PiGDM (nvlabs weighting)", "pigdm", (("weighting", "nvlabs"),)),
    # the DDPM posterior step (beta_tilde: these priors have no learned variance), the paper code's step
    Method("DDNM (ddpm step)", "ddnm", (("step_kind", "ddpm"),)),
    # the same variance as the ddpm step, written with the network's eps instead of x_t: isolates the mean
    Method("DDNM (ddim step, eta=1)", "ddnm", (("step_kind", "ddim"), ("eta", 1.0))),
    Method("DDNM+ (ddpm step)", "ddnm+", (("step_kind", "ddpm"),)),
    Method("DPS zeta=0.3 (ddpm step)", "dps", (("zeta", 0.3), ("step_kind", "ddpm"))),
    Method("DPS zeta=1.0 (ddpm step)", "dps", (("zeta", 1.0), ("step_kind", "ddpm"))),
]
TEXT_METHODS = [
    Method("DDNM", "ddnm"),
    Method("DDNM+", "ddnm+"),
    Method("DPS zeta=0.3", "dps", (("zeta", 0.3),)),
    Method("PiGDM", "pigdm"),
]


def record(**kw) -> dict:
    keys = ("table", "solver", "steps", "d", "dy", "cfg", "sw", "sw_ci", "noise_floor", "prior_sw", "lr_psnr",
            "text_consistency", "diversity_ratio", "seconds")
    out = {k: kw.pop(k, None) for k in keys}
    out.update(kw)
    return out


def sw(a: torch.Tensor, b: torch.Tensor, seed: int) -> float:
    return sliced_wasserstein(a, b, 100, torch.Generator().manual_seed(seed))


def noise_for(seed: int, n: int) -> Noise:
    return Noise.batched(seed * 100_003, n, dtype=F64)


# ---------------------------------------------------------------------------------------- Table 1
class RotatedDenoiser:
    """``eps(x) = Q eps'(Q^T x)``: VP diffusion commutes with an orthogonal change of basis."""

    def __init__(self, base, Q: torch.Tensor):
        self.base, self.Q, self.schedule = base, Q, base.schedule

    def __call__(self, x_t, t, cond=None):
        p = self.base(x_t @ self.Q, t, cond)
        return Prediction(x0=p.x0 @ self.Q.T, eps=p.eps @ self.Q.T)


def exact_posterior_denoiser(p) -> RotatedDenoiser:
    """The exact posterior score of an MCGdiff problem at any d (``exact_posterior_rotated``)."""
    post, Q = exact_posterior_rotated(p)
    return RotatedDenoiser(MixtureDenoiser(post, SCHED), Q)


def exact_posterior_rotated(p) -> tuple[GaussianMixture, torch.Tensor]:
    """The exact posterior of an MCGdiff problem in the basis ``Q`` of A's right singular vectors: with identity
    prior covariances every posterior component has covariance ``(I + A^T A / sigma_y^2)^{-1}``, diagonal there
    (so no d x d solve per step); a sample ``x`` is ``x_rot @ Q.T``."""
    M = p.operator._M.to(F64)
    _, s, Vh = torch.linalg.svd(M, full_matrices=True)  # Vh: (d, d), first dy rows span A's row space
    Q = Vh.T
    d, dy, s2y = M.shape[1], M.shape[0], p.sigma_y**2
    var = torch.ones(d, dtype=F64)
    var[:dy] = 1.0 / (1.0 + s**2 / s2y)
    mu = p.prior.mu.to(F64)  # (K, d)
    b = torch.zeros(d, dtype=F64)
    b[:dy] = (Vh[:dy] @ (M.T @ p.y[0].to(F64))) / s2y  # Q^T A^T y / sigma_y^2
    means = var * (mu @ Q + b)  # S (mu + A^T y / sigma^2) in rotated coordinates
    G = s2y * torch.eye(dy, dtype=F64) + M @ M.T  # y ~ N(A mu_i, sigma^2 I + A A^T)
    r = p.y.to(F64) - mu @ M.T
    logw = p.prior.log_weights.to(F64) - 0.5 * (r @ torch.linalg.solve(G, r.T)).diagonal()
    K = mu.shape[0]
    return GaussianMixture(None, means, DiagCov(var.expand(K, d).clone()), log_weights=logw), Q


def table1(ds, dys, steps_list, n_problems: int, n_samples: int, methods=TABLE1_METHODS,
           only: str | None = None, path: str = "vp") -> list[dict]:
    """``path``: the VP rows (``"vp"``), the same solvers on the rectified-flow path (``"flow"``, bench/gm_flow.py),
    or both; the problems, seeds and reference draws are the same."""
    recs = []
    for d in ds:
        for dy in dys:
            probs = [mcgdiff_problem(seed, d, dy) for seed in range(n_problems)]
            posts = [posterior(p.prior, p.operator, p.y, p.sigma_y) for p in probs]
            refs, floor, prior_sw = [], [], []
            for k, (p, post) in enumerate(zip(probs, posts)):
                g = torch.Generator().manual_seed(10_000 + k)
                ref = post.sample(n_samples, g)
                refs.append(ref)
                floor.append(sw(ref, post.sample(n_samples, g), k))
                prior_sw.append(sw(p.prior.sample(n_samples, g), ref, k))
            fl, pr = mean_ci(floor), mean_ci(prior_sw)
            for steps in steps_list:
                prior_den = lambda p, post: MixtureDenoiser(p.prior, SCHED)  # noqa: E731
                rows = [(m.label, m.config(steps), prior_den, False) for m in methods]
                exact = lambda p, post: exact_posterior_denoiser(p)  # noqa: E731
                rows.append(("exact posterior score", make_config("plain", steps=steps), exact, False))
                # the same from the exact p_T (the posterior diffused to the first step) instead of N(0, I)
                rows.append(("exact posterior score, exact start", make_config("plain", steps=steps), exact, True))
                if path != "vp":
                    sys.path.insert(0, str(Path(__file__).resolve().parent))
                    import gm_flow

                    rows = (rows if path == "both" else []) + gm_flow.rows(steps, exact_posterior_rotated)
                rows = [r for r in rows if only is None or only in r[0]]
                for label, cfg, den_of, exact_start in rows:
                    t0 = time.perf_counter()
                    vals, diverged = [], 0
                    for k, (p, post) in enumerate(zip(probs, posts)):
                        noise = noise_for(k, n_samples)
                        x_T = None
                        if exact_start:
                            t_first = SCHED.timesteps(steps)[0]
                            ab = SCHED.abar(t_first)
                            g = torch.Generator().manual_seed(50_000 + k)
                            x_T = math.sqrt(ab) * post.sample(n_samples, g) + math.sqrt(1 - ab) * torch.randn(
                                n_samples, d, generator=g, dtype=F64)
                        x = sample(den_of(p, post), Problem(p.operator, p.y, p.sigma_y), cfg, noise, x_T=x_T).x
                        if not torch.isfinite(x).all():
                            diverged += 1
                            x = torch.nan_to_num(x, nan=1e6, posinf=1e6, neginf=-1e6)
                        vals.append(sw(x, refs[k], k))
                    m = mean_ci(vals)
                    recs.append(record(table="1", solver=label, steps=steps, d=d, dy=dy, sw=m[0], sw_ci=[m[1], m[2]],
                                       noise_floor=fl[0], prior_sw=pr[0], seconds=time.perf_counter() - t0,
                                       diverged=diverged, per_problem=vals))
                    print(f"  T1 d={d} dy={dy} steps={steps} {label}: SW {m[0]:.3f} [{m[1]:.3f}, {m[2]:.3f}]"
                          + (f" diverged {diverged}" if diverged else ""), file=sys.stderr)
    return recs


# ---------------------------------------------------------------------------------------- Table 2/3
TAGS = ("alpha", "beta", "gamma", "delta")
SIDE, FACTOR, GROUPS, SIGMA_Y, COMP_STD = 8, 4, 6, 0.01, 0.05


@dataclass
class TextProblem:
    prior: GaussianMixture
    op: AvgPool
    y: torch.Tensor
    tag: str
    true_component: int


def text_problem(seed: int) -> TextProblem:
    """8x8 images; 6 LR groups x 4 tags = 24 components with covariance 0.05^2 I.  The 4 components
    of a group share one 2x2 LR image (they differ only in A's null space), so y cannot tell the tag;
    the prompt names a tag different from the one y was drawn from."""
    g = torch.Generator().manual_seed(seed)
    op = AvgPool(FACTOR, (1, SIDE, SIDE))
    lr = (torch.rand(GROUPS, 1, SIDE // FACTOR, SIDE // FACTOR, generator=g, dtype=F64) * 1.2 - 0.6)
    pattern = 0.3 * torch.randn(GROUPS * len(TAGS), 1, SIDE, SIDE, generator=g, dtype=F64)
    means = op.A_pinv(lr).repeat_interleave(len(TAGS), 0) + op.project_null(pattern)
    tags = [{TAGS[k % len(TAGS)]} for k in range(GROUPS * len(TAGS))]
    K = len(tags)
    cov = IsoCov(torch.full((K,), COMP_STD**2, dtype=F64), SIDE * SIDE)
    prior = GaussianMixture(torch.ones(K, dtype=F64), means, cov, tags=tags, event_shape=(1, SIDE, SIDE))
    true = int(torch.randint(K, (1,), generator=g))
    x0 = means[true:true + 1] + COMP_STD * torch.randn(1, 1, SIDE, SIDE, generator=g, dtype=F64)
    y = op.A(x0) + SIGMA_Y * torch.randn(1, 1, SIDE // FACTOR, SIDE // FACTOR, generator=g, dtype=F64)
    other = [t for t in TAGS if t not in tags[true]]
    tag = other[int(torch.randint(len(other), (1,), generator=g))]
    return TextProblem(prior, op, y, tag, true)


def hard_text_problem(seed: int) -> TextProblem:
    """The hard text world of issue 9: 8x8 images, 6 LR groups x 4 tags = 24 components with covariance
    0.05^2 I; the 4 means of a group are its base plus block-mean-free detail (0.3 N(0, I) projected on the
    null space of 4x4 average pooling), so they share one 2x2 LR image; group bases are smooth random
    patterns (3x3 N(0, 1) upsampled bilinearly, align_corners) scaled by 0.5, so groups sit about 0.1-1.2
    apart in the range; sigma_y = 0.01.  The prompt names one tag and y is drawn from that prompt's prior
    (a uniformly chosen component carrying the tag)."""
    g = torch.Generator().manual_seed(seed)
    op = AvgPool(FACTOR, (1, SIDE, SIDE))
    coarse = torch.randn(GROUPS, 1, 3, 3, generator=g, dtype=F64)
    base = 0.5 * torch.nn.functional.interpolate(coarse, size=(SIDE, SIDE), mode="bilinear", align_corners=True)
    detail = op.project_null(0.3 * torch.randn(GROUPS * len(TAGS), 1, SIDE, SIDE, generator=g, dtype=F64))
    means = base.repeat_interleave(len(TAGS), 0) + detail
    tags = [{TAGS[k % len(TAGS)]} for k in range(GROUPS * len(TAGS))]
    K = len(tags)
    cov = IsoCov(torch.full((K,), COMP_STD**2, dtype=F64), SIDE * SIDE)
    prior = GaussianMixture(torch.ones(K, dtype=F64), means, cov, tags=tags, event_shape=(1, SIDE, SIDE))
    tag = TAGS[int(torch.randint(len(TAGS), (1,), generator=g))]
    true = len(TAGS) * int(torch.randint(GROUPS, (1,), generator=g)) + TAGS.index(tag)
    x0 = means[true:true + 1] + COMP_STD * torch.randn(1, 1, SIDE, SIDE, generator=g, dtype=F64)
    y = op.A(x0) + SIGMA_Y * torch.randn(1, 1, SIDE // FACTOR, SIDE // FACTOR, generator=g, dtype=F64)
    return TextProblem(prior, op, y, tag, true)


def text_metrics(x: torch.Tensor, tp: TextProblem, ref: torch.Tensor, seed: int) -> dict:
    assign = tp.prior.assign(x.flatten(1))
    tc = float(torch.tensor([tp.tag in tp.prior.tags[k] for k in assign.tolist()], dtype=F64).mean())
    mse = (((tp.op.A(x) - tp.y) / 2) ** 2).flatten(1).mean(1).clamp(min=1e-30)
    lr_psnr = float((10 * torch.log10(1 / mse)).mean())
    spread = lambda z: float(z.flatten(1).var(0).mean().sqrt())  # noqa: E731
    return {"text_consistency": tc, "lr_psnr": lr_psnr, "sw": sw(x, ref, seed),
            "diversity_ratio": spread(x) / spread(ref)}


def _summary(rows: list[dict]) -> dict:
    out = {}
    for key in ("text_consistency", "lr_psnr", "sw", "diversity_ratio"):
        out[key] = mean_ci([r[key] for r in rows])
    return out


def table23(cfgs, steps: int, n_problems: int, n_samples: int, cascade: bool, methods=TEXT_METHODS) -> list[dict]:
    recs = []
    probs = [text_problem(1000 + k) for k in range(n_problems)]
    refs, floors = [], []
    for k, tp in enumerate(probs):
        post = posterior(tp.prior, tp.op, tp.y, SIGMA_Y, tags=tp.tag)
        g = torch.Generator().manual_seed(20_000 + k)
        refs.append(post.sample(n_samples, g).reshape(n_samples, 1, SIDE, SIDE))
        floors.append(sw(refs[-1], post.sample(n_samples, g), k))
    floor = mean_ci(floors)[0]
    print(f"  text world: SW noise floor {floor:.4f}", file=sys.stderr)
    # the reference row: a second set of exact text-posterior draws scored like the solvers' samples
    exact_rows = []
    for k, tp in enumerate(probs):
        post = posterior(tp.prior, tp.op, tp.y, SIGMA_Y, tags=tp.tag)
        x = post.sample(n_samples, torch.Generator().manual_seed(30_000 + k)).reshape(n_samples, 1, SIDE, SIDE)
        exact_rows.append(text_metrics(x, tp, refs[k], k))
    s = _summary(exact_rows)
    recs.append(record(table="3" if cascade else "2", solver="exact text posterior", steps=None, d=SIDE * SIDE, dy=4,
                       cfg=1.0, sw=s["sw"][0], sw_ci=[s["sw"][1], s["sw"][2]], noise_floor=floor,
                       lr_psnr=s["lr_psnr"][0], text_consistency=s["text_consistency"][0],
                       diversity_ratio=s["diversity_ratio"][0], seconds=0.0))
    for m in methods:
        for w in cfgs:
            t0 = time.perf_counter()
            rows = []
            for k, tp in enumerate(probs):
                cfg = m.config(steps)
                if not cascade:
                    den = ClassifierFreeGuidance(MixtureDenoiser(tp.prior, SCHED), w, null_cond=None)
                    x = sample(den, Problem(tp.op, tp.y, SIGMA_Y), cfg, noise_for(k, n_samples), tp.tag).x
                else:
                    x = run_text_cascade(tp, cfg, w, k, n_samples)
                rows.append(text_metrics(x, tp, refs[k], k))
            s = _summary(rows)
            label = m.label + (" (cascade)" if cascade else "")
            recs.append(record(table="3" if cascade else "2", solver=label, steps=steps, d=SIDE * SIDE, dy=4, cfg=w,
                               sw=s["sw"][0], sw_ci=[s["sw"][1], s["sw"][2]], noise_floor=floor,
                               lr_psnr=s["lr_psnr"][0], text_consistency=s["text_consistency"][0],
                               diversity_ratio=s["diversity_ratio"][0], seconds=time.perf_counter() - t0))
            print(f"  T{'3' if cascade else '2'} {label} cfg={w}: TC {s['text_consistency'][0]:.3f} "
                  f"SW {s['sw'][0]:.3f} LR-PSNR {s['lr_psnr'][0]:.1f} div {s['diversity_ratio'][0]:.2f}",
                  file=sys.stderr)
    return recs


def run_text_cascade(tp: TextProblem, cfg, w: float, k: int, n: int) -> torch.Tensor:
    """Stage I: 4x4 push-forward prior (CFG w) with the solver against y (operator A_2); stage II: the
    exact conditional p(x | pool_2(x) = x_I, tag) with the solver against y (operator A_4)."""
    pool = AvgPool(2, (1, SIDE, SIDE))
    lo = push_forward(tp.prior, pool)
    st1 = Stage("I", ClassifierFreeGuidance(MixtureDenoiser(lo, SCHED), w, null_cond=None), divisor=2, channels=1,
                solver=cfg)
    st2 = Stage("II", MixtureDenoiser(tp.prior, SCHED), divisor=1, channels=1, solver=cfg,
                condition=lowres_condition(tp.prior, pool, 0.0))
    res = run_cascade([st1, st2], tp.y, FACTOR, cfg, [k * 100_003 + i for i in range(n)], tp.tag, sigma_y=SIGMA_Y,
                      dtype=F64)
    return res.x


# ---------------------------------------------------------------------------------------- output
def print_tables(recs: list[dict]) -> None:
    t1 = [r for r in recs if r["table"] == "1"]
    if t1:
        cols = sorted({(r["d"], r["dy"]) for r in t1})
        print("\nTable 1: MCGdiff protocol, sliced Wasserstein to the exact posterior (mean [95% CI] over problems)")
        head = "| method | steps | " + " | ".join(f"d={d} dy={dy}" for d, dy in cols) + " |"
        print(head)
        print("|" + "---|" * (2 + len(cols)))
        floor = {(r["d"], r["dy"]): r for r in t1}
        print("| noise floor (2 exact draws) | - | " + " | ".join(f"{floor[c]['noise_floor']:.2f}" for c in cols)
              + " |")
        print("| prior (ignores y) | - | " + " | ".join(f"{floor[c]['prior_sw']:.2f}" for c in cols) + " |")
        for steps in sorted({r["steps"] for r in t1}):
            for label in dict.fromkeys(r["solver"] for r in t1):
                cells = []
                for c in cols:
                    r = next((r for r in t1 if r["solver"] == label and r["steps"] == steps
                              and (r["d"], r["dy"]) == c), None)
                    if r is None:
                        cells.append("-")
                        continue
                    div = f" ({r['diverged']} div.)" if r.get("diverged") else ""
                    cells.append(f"{r['sw']:.2f} [{r['sw_ci'][0]:.2f}, {r['sw_ci'][1]:.2f}]{div}")
                print(f"| {label} | {steps} | " + " | ".join(cells) + " |")
    for t, title in (("2", "Table 2: text-conditional world (tags share LR images), single stage"),
                     ("3", "Table 3: the same through an exact two-stage cascade")):
        rows = [r for r in recs if r["table"] == t]
        if not rows:
            continue
        print(f"\n{title}; SW noise floor {rows[0]['noise_floor']:.4f}")
        print("| solver | CFG | text consistency | LR-PSNR (dB) | SW to exact text posterior | diversity ratio |")
        print("|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['solver']} | {r['cfg']:g} | {r['text_consistency']:.3f} | {r['lr_psnr']:.1f} | "
                  f"{r['sw']:.3f} [{r['sw_ci'][0]:.3f}, {r['sw_ci'][1]:.3f}] | {r['diversity_ratio']:.2f} |")


def run_jobs(run, jobs: list, processes: int) -> list[dict]:
    """``run(job)`` for every job (each returns a list of records), in ``processes`` spawned processes when
    more than 1; the records of all jobs, in job order."""
    if processes > 1:
        with multiprocessing.get_context("spawn").Pool(processes) as pool:
            parts = pool.map(run, jobs, chunksize=1)
    else:
        parts = [run(j) for j in jobs]
    return [r for part in parts for r in part]


def run_job(job: tuple, problems: int, samples: int, threads: int, only: str | None = None,
            path: str = "vp") -> list[dict]:
    torch.set_num_threads(threads)
    if job[0] == "1":
        _, d, dy, steps = job
        return table1((d,), (dy,), steps, problems, samples, only=only, path=path)
    return table23(job[1], 100, problems, min(samples, 1000), cascade=job[0] == "3")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="d = 8 at 100 steps, Table 2 at CFG 1 (< 3 min)")
    ap.add_argument("--json", help="write the records here")
    ap.add_argument("--problems", type=int, default=10)
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--tables", default="123")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (small tensors: 1 is fastest)")
    ap.add_argument("--ds", default="8,80,800", help="Table 1 dimensions")
    ap.add_argument("--jobs", type=int, default=2, help="parallel processes (one table cell each)")
    ap.add_argument("--only", help="Table 1: only the rows whose label contains this text")
    ap.add_argument("--path", choices=("vp", "flow", "both"), default="vp",
                    help="Table 1: the VP rows, the same solvers on the rectified-flow path (bench/gm_flow.py), "
                         "or both")
    ap.add_argument("--merge", nargs="+", metavar="JSON", help="only print the tables of these record files")
    args = ap.parse_args(argv)
    if args.merge:
        recs = [r for path in args.merge for r in json.load(open(path))]
        print_tables(recs)
        return
    t0 = time.perf_counter()
    jobs = []  # independent cells, run in parallel processes (each with its own torch threads)
    if "1" in args.tables:
        ds = (8,) if args.quick else tuple(int(d) for d in args.ds.split(","))
        steps = (100,) if args.quick else (20, 100)
        jobs += [("1", d, dy, steps) for d in ds for dy in (1, 2, 4)]
    if "2" in args.tables:
        jobs += [("2", (1.0,) if args.quick else (1.0, 3.0, 7.0))]
    if "3" in args.tables and not args.quick:
        jobs += [("3", (1.0, 3.0))]
    run = functools.partial(run_job, problems=args.problems, samples=args.samples, threads=args.threads,
                            only=args.only, path=args.path)
    recs = run_jobs(run, jobs, args.jobs)
    print_tables(recs)
    total = time.perf_counter() - t0
    print(f"\n{platform.processor() or platform.machine()}, {args.jobs} processes x {args.threads} thread(s), "
          f"torch {torch.__version__}; "
          f"{total:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(recs, f, indent=1)


if __name__ == "__main__":
    main()
