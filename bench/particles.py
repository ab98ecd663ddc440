"""Table 4: the particle (SMC) solver TDS against exact posteriors and exact evidence.

Table 4a, the MCGdiff protocol (problems from ``bench/gaussian_mixture.py``'s generator): for d in {8, 80} and
dy in {1, 2, 4}, 100 steps, TDS with N in {1, 4, 16, 64, 256} particles per sample next to the noise floor
(two exact posterior draws), DDNM+, DPS (zeta 0.3), PiGDM and the exact-posterior-score sampler on the same
problems and noise seeds.  Columns: SW to the exact posterior (mean [95% CI] over problems, and in how many
problems it is within 2x that problem's floor), mode-weight total variation (samples assigned to the
posterior's most responsible component vs the posterior weights; its sampling floor is the exact draws'),
``|log Z_hat - log Z|`` (median over all runs; one run = one sample's particle system) and the ESS (fraction
of N: mean over steps, and the minimum, averaged over runs).

Table 4b, the hard text world of issue 9 (``hard_text_problem``): fraction of samples in the component y
was drawn from, SW to the prompt-conditional posterior, and the prompt's posterior probability among the 4
tags (uniform prior) from the TDS evidence, against the exact one (0.25: the tags share LR images).

    python bench/particles.py --quick                 # d = 8, N <= 64, 3 problems (about 5 min)
    python bench/particles.py --jobs 1                # everything (about an hour of one core)
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gaussian_mixture as gmb  # noqa: E402  (the problem generators, metrics and exact samplers)

from textsr.cli import parse_kv  # noqa: E402
from textsr.gaussian_mixture import MixtureDenoiser, mcgdiff_problem, posterior  # noqa: E402
from textsr.metrics import mean_ci  # noqa: E402
from textsr.solvers import Problem, make_config, sample  # noqa: E402

STEPS = 100
BASELINES = [gmb.Method("DDNM+", "ddnm+"), gmb.Method("DPS zeta=0.3", "dps", (("zeta", 0.3),)),
             gmb.Method("PiGDM", "pigdm")]
F64 = torch.float64


def tds_config(N: int, twist: str = "auto", opts: dict | None = None):
    return make_config("tds", **{"steps": STEPS, "particles": N, "twist": twist, **(opts or {})})


def mode_tv(x: torch.Tensor, post) -> float:
    mix = post.dense_mixture()
    freq = torch.bincount(mix.assign(x.reshape(x.shape[0], -1)), minlength=mix.K).to(F64) / x.shape[0]
    return 0.5 * float((freq - post.weights[0].to(F64)).abs().sum())


def _run(label: str, N: int | None, x_of, probs, posts, refs, floors) -> dict:
    t0 = time.process_time()
    sw, tv, err, comb, ess_mean, ess_min, within = [], [], [], [], [], [], 0
    for k, (p, post) in enumerate(zip(probs, posts)):
        res = x_of(k, p, post)
        x = torch.nan_to_num(res.x, nan=1e6, posinf=1e6, neginf=-1e6)
        sw.append(gmb.sw(x, refs[k], k))
        within += sw[-1] <= 2 * floors[k]
        tv.append(mode_tv(x, post))
        if res.log_evidence is not None:
            lz = float(post.log_evidence[0])
            err += (res.log_evidence - lz).abs().tolist()
            comb.append(abs(float(torch.logsumexp(res.log_evidence, 0)) - math.log(len(res.log_evidence)) - lz))
            ess_mean.append(float(res.ess.mean()) / N)
            ess_min.append(float(res.ess.min(0).values.mean()) / N)
    m = mean_ci(sw)
    rec = {"solver": label, "particles": N, "sw": m[0], "sw_ci": [m[1], m[2]], "within_2x_floor": within,
           "problems": len(probs), "mode_tv": sum(tv) / len(tv), "per_problem_sw": sw, "per_problem_tv": tv,
           "cpu_seconds": time.process_time() - t0}
    if err:
        rec.update(logz_err_median=float(torch.tensor(err).median()),
                   logz_err_combined_median=float(torch.tensor(comb).median()),
                   ess_mean=sum(ess_mean) / len(ess_mean), ess_min=sum(ess_min) / len(ess_min))
    return rec


def table4a(d: int, dy: int, n_problems: int, n_samples: int, Ns, extra_twists=(), tds_opts=None) -> list[dict]:
    probs = [mcgdiff_problem(seed, d, dy) for seed in range(n_problems)]
    posts = [posterior(p.prior, p.operator, p.y, p.sigma_y) for p in probs]
    refs, floors, floor_tv = [], [], []
    for k, post in enumerate(posts):
        g = torch.Generator().manual_seed(10_000 + k)
        refs.append(post.sample(n_samples, g))
        draw = post.sample(n_samples, g)
        floors.append(gmb.sw(refs[-1], draw, k))
        floor_tv.append(mode_tv(draw, post))
    recs = [{"solver": "noise floor (2 exact draws)", "particles": None, "sw": mean_ci(floors)[0],
             "sw_ci": list(mean_ci(floors)[1:]), "within_2x_floor": n_problems, "problems": n_problems,
             "mode_tv": sum(floor_tv) / n_problems, "per_problem_sw": floors}]
    prob = lambda p: Problem(p.operator, p.y, p.sigma_y)  # noqa: E731
    prior_den = lambda p: MixtureDenoiser(p.prior, gmb.SCHED)  # noqa: E731
    rows = [(m.label, None, lambda k, p, post, m=m: sample(prior_den(p), prob(p), m.config(STEPS),
                                                           gmb.noise_for(k, n_samples)))
            for m in BASELINES]
    if BASELINES:
        rows.append(("exact posterior score", None, lambda k, p, post: sample(
            gmb.exact_posterior_denoiser(p), prob(p), make_config("plain", steps=STEPS), gmb.noise_for(k, n_samples))))
    for N in Ns:
        rows.append((f"TDS N={N}", N, lambda k, p, post, N=N: sample(prior_den(p), prob(p),
                                                                      tds_config(N, opts=tds_opts),
                                                                      gmb.noise_for(k, n_samples))))
    for twist, N in extra_twists:
        rows.append((f"TDS N={N} twist={twist}", N, lambda k, p, post, N=N, tw=twist: sample(
            prior_den(p), prob(p), tds_config(N, tw, tds_opts), gmb.noise_for(k, n_samples))))
    for label, N, x_of in rows:
        rec = _run(label, N, x_of, probs, posts, refs, floors)
        recs.append(rec)
        ev = (f" |dlogZ| {rec['logz_err_median']:.3f} ESS {rec['ess_mean']:.2f}/{rec['ess_min']:.2f}"
              if "ess_mean" in rec else "")
        print(f"  T4a d={d} dy={dy} {label}: SW {rec['sw']:.3f} within2x {rec['within_2x_floor']}/{n_problems} "
              f"TV {rec['mode_tv']:.3f}{ev} ({rec['cpu_seconds']:.0f} s)", file=sys.stderr)
    for r in recs:
        r.update(table="4a", d=d, dy=dy, steps=STEPS, samples=n_samples, tds_options=tds_opts or {})
    return recs


# ---------------------------------------------------------------------------------------- Table 4b
def table4b(n_problems: int, n_samples: int, Ns, tds_opts=None) -> list[dict]:
    tps = [gmb.hard_text_problem(2000 + k) for k in range(n_problems)]
    sig = gmb.SIGMA_Y
    exact_logz = [torch.stack([posterior(tp.prior, tp.op, tp.y, sig, tags=t).log_evidence[0] for t in gmb.TAGS])
                  for tp in tps]
    posts = [posterior(tp.prior, tp.op, tp.y, sig, tags=tp.tag) for tp in tps]
    refs, floors = [], []
    for k, post in enumerate(posts):
        g = torch.Generator().manual_seed(20_000 + k)
        refs.append(post.sample(n_samples, g).reshape(n_samples, 1, gmb.SIDE, gmb.SIDE))
        floors.append(gmb.sw(refs[-1], post.sample(n_samples, g), k))
    recs = [{"solver": "noise floor (2 exact draws)", "sw": sum(floors) / n_problems, "right_component": 1.0}]
    den = lambda tp: MixtureDenoiser(tp.prior, gmb.SCHED)  # noqa: E731
    prob = lambda tp: Problem(tp.op, tp.y, sig)  # noqa: E731
    rows = [(m.label, None, lambda k, tp, m=m: sample(den(tp), prob(tp), m.config(STEPS), gmb.noise_for(k, n_samples),
                                                      tp.tag))
            for m in BASELINES]
    rows.append(("exact posterior score", None, lambda k, tp: sample(
        MixtureDenoiser(posts[k].mixture(), gmb.SCHED), prob(tp), make_config("plain", steps=STEPS),
        gmb.noise_for(k, n_samples))))
    rows += [(f"TDS N={N}", N, None) for N in Ns]
    for label, N, run in rows:
        t0 = time.process_time()
        right, sw, p_err, p_err1, z_err, ess_min = [], [], [], [], [], []
        for k, tp in enumerate(tps):
            if N is None:
                x = run(k, tp).x
            else:  # one run per tag: the prompt's posterior probability among the 4 tags
                logz_all, logz_one = [], []
                for j, t in enumerate(gmb.TAGS):
                    res = sample(den(tp), prob(tp), tds_config(N, opts=tds_opts), gmb.noise_for(k * 10 + j, n_samples),
                                 t)
                    logz_all.append(torch.logsumexp(res.log_evidence, 0) - math.log(n_samples))
                    logz_one.append(res.log_evidence[0])
                    if t == tp.tag:
                        x = res.x
                        z_err += (res.log_evidence - exact_logz[k][j]).abs().tolist()
                        ess_min.append(float(res.ess.min(0).values.mean()) / N)
                i = gmb.TAGS.index(tp.tag)
                p_true = float(torch.softmax(exact_logz[k], 0)[i])
                p_err.append(abs(float(torch.softmax(torch.stack(logz_all), 0)[i]) - p_true))
                p_err1.append(abs(float(torch.softmax(torch.stack(logz_one), 0)[i]) - p_true))
            right.append(float((tp.prior.assign(x.reshape(n_samples, -1)) == tp.true_component).to(F64).mean()))
            sw.append(gmb.sw(x, refs[k], k))
        rec = {"solver": label, "particles": N, "right_component": sum(right) / len(right),
               "right_component_ci": list(mean_ci(right)[1:]), "sw": mean_ci(sw)[0], "sw_ci": list(mean_ci(sw)[1:]),
               "per_problem_sw": sw, "cpu_seconds": time.process_time() - t0}
        if p_err:
            rec.update(p_prompt_err_median=float(torch.tensor(p_err).median()),
                       p_prompt_err_single_run_median=float(torch.tensor(p_err1).median()),
                       logz_err_median=float(torch.tensor(z_err).median()), ess_min=sum(ess_min) / len(ess_min))
        recs.append(rec)
        print(f"  T4b {label}: right {rec['right_component']:.2f} SW {rec['sw']:.4f}"
              + (f" |dP| {rec['p_prompt_err_median']:.3f} (single run {rec['p_prompt_err_single_run_median']:.3f})"
                 f" |dlogZ| {rec['logz_err_median']:.2f}" if p_err else "") + f" ({rec['cpu_seconds']:.0f} s)",
              file=sys.stderr)
    for r in recs:
        r.update(table="4b", d=gmb.SIDE * gmb.SIDE, dy=4, steps=STEPS, samples=n_samples, problems=n_problems,
                 tds_options=tds_opts or {},
                 sw_floor=sum(floors) / n_problems)
    return recs


# ---------------------------------------------------------------------------------------- output
def _f(v, fmt="{:.2f}"):
    return "-" if v is None else fmt.format(v)


def print_tables(recs: list[dict]) -> None:
    a = [r for r in recs if r["table"] == "4a"]
    if a:
        cols = sorted({(r["d"], r["dy"]) for r in a})
        print(f"\nTable 4a: MCGdiff protocol, {STEPS} steps, {a[0]['problems']} problems x {a[0]['samples']} samples; "
              "per cell: SW mean [95% CI] (problems within 2x floor) | mode TV | median |log Z_hat - log Z| | "
              "ESS mean/min (fraction of N)")
        for c in cols:
            print(f"\n**d = {c[0]}, dy = {c[1]}**\n")
            print("| method | SW to exact posterior | within 2x floor | mode TV | median abs(log Z_hat - log Z) | "
                  "ESS mean / min |")
            print("|---|---|---|---|---|---|")
            for r in (r for r in a if (r["d"], r["dy"]) == c):
                ess = f"{r['ess_mean']:.2f} / {r['ess_min']:.2f}" if "ess_mean" in r else "-"
                print(f"| {r['solver']} | {r['sw']:.3f} [{r['sw_ci'][0]:.3f}, {r['sw_ci'][1]:.3f}] | "
                      f"{r['within_2x_floor']}/{r['problems']} | {r['mode_tv']:.3f} | "
                      f"{_f(r.get('logz_err_median'), '{:.3f}')} | {ess} |")
    b = [r for r in recs if r["table"] == "4b"]
    if b:
        print(f"\nTable 4b: hard text world, {b[0]['problems']} problems x {b[0]['samples']} samples, SW noise floor "
              f"{b[0]['sw_floor']:.4f}; P(prompt | y) exact = 0.25 (tags share LR images)")
        print("| method | right component | SW to prompt posterior | median abs(P_hat - P) (all runs / one run) | "
              "median abs(log Z_hat - log Z) | ESS min |")
        print("|---|---|---|---|---|---|")
        for r in b[1:]:
            pp = (f"{r['p_prompt_err_median']:.3f} / {r['p_prompt_err_single_run_median']:.3f}"
                  if "p_prompt_err_median" in r else "-")
            print(f"| {r['solver']} | {r['right_component']:.2f} | "
                  f"{r['sw']:.4f} [{r['sw_ci'][0]:.4f}, {r['sw_ci'][1]:.4f}] | "
                  f"{pp} | {_f(r.get('logz_err_median'))} | {_f(r.get('ess_min'))} |")


def run_job(job: tuple, problems: int, samples: int, Ns: tuple, extra: tuple, tds_opts: dict) -> list[dict]:
    torch.set_num_threads(1)
    if job[0] == "4a":
        return table4a(job[1], job[2], problems, samples, Ns, extra if job[1] == 8 else (), tds_opts)
    return table4b(problems, samples, tuple(n for n in Ns if n <= 64), tds_opts)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="d = 8, N <= 64, 3 problems, 60 samples")
    ap.add_argument("--problems", type=int, default=10)
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--ns", default="1,4,16,64,256", help="particle counts")
    ap.add_argument("--ds", default="8,80")
    ap.add_argument("--dys", default="1,2,4", help="measurement dimensions dy of Table 4a (comma-separated)")
    ap.add_argument("--tables", default="ab")
    ap.add_argument("--twists", default="rayleigh,scalar",
                    help="extra rows at d = 8, N = 64 with these twists (tweedie, rayleigh, scalar, forward)")
    ap.add_argument("--no-baselines", action="store_true", help="only the TDS rows (and the noise floor)")
    ap.add_argument("--tds-option", action="append", default=[], metavar="KEY=VALUE",
                    help="a TDS setting for every TDS row, the value as JSON (e.g. ess_threshold=0.5)")
    ap.add_argument("--jobs", type=int, default=1, help="parallel processes (one table cell each)")
    ap.add_argument("--json", default=str(Path(__file__).resolve().parent / "results" / "particles.json"))
    ap.add_argument("--merge", nargs="+", metavar="JSON", help="only print the tables of these record files")
    args = ap.parse_args(argv)
    if args.merge:
        print_tables([r for path in args.merge for r in json.load(open(path))])
        return
    t0 = time.perf_counter()
    Ns = tuple(int(n) for n in args.ns.split(","))
    ds = tuple(int(d) for d in args.ds.split(","))
    problems, samples = args.problems, args.samples
    if args.quick:
        Ns, ds, problems, samples = tuple(n for n in Ns if n <= 64), (8,), min(problems, 3), min(samples, 60)
    extra = tuple((t, 64) for t in args.twists.split(",") if t) if 64 in Ns else ()
    if args.no_baselines:
        BASELINES.clear()
    dys = tuple(int(v) for v in args.dys.split(","))
    jobs = [("4a", d, dy) for d in ds for dy in dys if dy <= d] if "a" in args.tables else []
    if "b" in args.tables:
        jobs.append(("4b",))
    tds_opts = parse_kv(args.tds_option, "--tds-option")
    run = functools.partial(run_job, problems=problems, samples=samples, Ns=Ns, extra=extra, tds_opts=tds_opts)
    recs = gmb.run_jobs(run, jobs, args.jobs)
    print_tables(recs)
    print(f"\n{platform.machine()}, torch {torch.__version__}, {args.jobs} process(es) x 1 thread; "
          f"{time.perf_counter() - t0:.0f} s wall")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(recs, f, indent=1)


if __name__ == "__main__":
    main()
