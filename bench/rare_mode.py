"""A known limit of the particle evidence (docs/evidence.md, "Known limits"): a mode the prior gives weight 4e-4
that holds the whole posterior.

Prior: two Gaussian components in d = 8, weights 1 - 4e-4 and 4e-4 (means 0 and 3, variances 1 and 0.05);
``y = A x + sigma_y n`` with A a 2 x 8 Gaussian matrix, sigma_y = 0.05 and x drawn from the rare component, so
the exact posterior puts all its weight there.  Per (N, steps): the median and combined log Z_hat of
``--runs`` runs against the exact log p(y), the spread of log Z_hat over runs, the fraction of samples in the
rare mode and the final ESS.

    python bench/rare_mode.py [--ns 16,64,256] [--steps 100,1000] [--runs 20]
"""

from __future__ import annotations

import argparse
import math

import torch

F64 = torch.float64


def problem():
    from textsr import operators as ops
    from textsr.gaussian_mixture import GaussianMixture, IsoCov

    d, dy, sig = 8, 2, 0.05
    g = torch.Generator().manual_seed(0)
    means = torch.stack([torch.zeros(d, dtype=F64), torch.full((d,), 3.0, dtype=F64)])
    prior = GaussianMixture(torch.tensor([1 - 4e-4, 4e-4], dtype=F64), means,
                            IsoCov(torch.tensor([1.0, 0.05], dtype=F64), d))
    A = ops.Matrix(torch.randn(dy, d, generator=g, dtype=F64))
    x0 = means[1:] + math.sqrt(0.05) * torch.randn(1, d, generator=g, dtype=F64)
    return prior, A, A.A(x0) + sig * torch.randn(1, dy, generator=g, dtype=F64), sig


def main(argv=None) -> None:
    from textsr.gaussian_mixture import MixtureDenoiser, log_evidence, posterior
    from textsr.schedule import NoiseSchedule
    from textsr.solvers import Noise, Problem, make_config, sample

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ns", default="16,64,256")
    ap.add_argument("--steps", default="100,1000")
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    prior, A, y, sig = problem()
    exact = float(log_evidence(prior, A, y, sig)[0])
    w = posterior(prior, A, y, sig).weights[0]
    print(f"exact log p(y) {exact:.2f}; exact posterior weights {w[0]:.2e} / {w[1]:.6f}")
    print("| N | steps | log Z_hat median | combined | spread (std over runs) | samples in the rare mode | "
          "final ESS / N |")
    print("|---|---|---|---|---|---|---|")
    for steps in (int(s) for s in args.steps.split(",")):
        for N in (int(n) for n in args.ns.split(",")):
            res = sample(MixtureDenoiser(prior, NoiseSchedule.linear()), Problem(A, y, sig),
                         make_config("tds", particles=N, steps=steps), Noise.from_seeds(range(args.runs), dtype=F64))
            lz = res.log_evidence
            comb = float(torch.logsumexp(lz, 0)) - math.log(len(lz))
            rare = float((prior.assign(res.x) == 1).to(F64).mean())
            print(f"| {N} | {steps} | {float(lz.median()):.2f} | {comb:.2f} | {float(lz.std()):.2f} | {rare:.2f} | "
                  f"{float(res.ess[-1].mean()) / N:.2f} |", flush=True)


if __name__ == "__main__":
    main()
