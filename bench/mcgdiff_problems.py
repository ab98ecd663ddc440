"""The problems behind Table 1: what ``mcgdiff_problem(k, d, dy)`` draws, and how hard each one is.

For every problem seed k and cell (d, dy) it prints the singular values of A, sigma_y and the smallest
``s_i / sigma_y`` (the signal-to-noise ratio of the weakest measured direction: ``A+ y`` carries noise of
std ``sigma_y / s_i`` along ``v_i``), and, when a Table 1 record file is given, each method's SW on that
problem.  It also checks which draws the cells share (same k): the mixture weights are drawn first from
the seed, so they are the same in every cell.

    python bench/mcgdiff_problems.py                                   # d = 8, dy = 1, 2, 4, k = 0..9
    python bench/mcgdiff_problems.py --records bench/results/gm_full_d8_80.json --steps 100
"""

from __future__ import annotations

import argparse
import json

import torch

from textsr.gaussian_mixture import mcgdiff_problem


def describe(k: int, d: int, dy: int) -> dict:
    p = mcgdiff_problem(k, d, dy)
    s = torch.linalg.svdvals(p.operator._M.to(torch.float64))
    return {"k": k, "d": d, "dy": dy, "singular_values": [float(v) for v in s], "sigma_y": p.sigma_y,
            "min_snr": float(s.min()) / p.sigma_y, "weights": p.prior.weights.to(torch.float64)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ds", default="8", help="dimensions d (comma-separated)")
    ap.add_argument("--dys", default="1,2,4", help="measurement dimensions dy (comma-separated)")
    ap.add_argument("--problems", type=int, default=10, help="problem seeds 0 .. N-1 (Table 1 uses 10)")
    ap.add_argument("--records", help="a Table 1 record file (bench/gaussian_mixture.py --json): add per-problem SW")
    ap.add_argument("--steps", type=int, default=100, help="with --records: the step count to show")
    args = ap.parse_args(argv)
    recs = json.load(open(args.records)) if args.records else []
    ds = [int(v) for v in args.ds.split(",")]
    dys = [int(v) for v in args.dys.split(",")]
    for d in ds:
        for dy in dys:
            methods = [r for r in recs if r.get("table") == "1" and r["d"] == d and r["dy"] == dy
                       and r["steps"] == args.steps and r.get("per_problem")]
            print(f"\nd={d} dy={dy}" + (f", SW per problem at {args.steps} steps" if methods else ""))
            head = "| k | singular values of A | sigma_y | min s_i / sigma_y |"
            head += "".join(f" {r['solver']} |" for r in methods)
            print(head)
            print("|" + "---|" * (4 + len(methods)))
            for k in range(args.problems):
                info = describe(k, d, dy)
                sv = ", ".join(f"{v:.4f}" for v in info["singular_values"])
                row = f"| {k} | {sv} | {info['sigma_y']:.4f} | {info['min_snr']:.4f} |"
                row += "".join(f" {r['per_problem'][k]:.2f} |" for r in methods if k < len(r["per_problem"]))
                print(row)
    # which draws do the cells share?  The weights come first from the seed: identical in every cell.
    same = all(torch.equal(describe(k, ds[0], dys[0])["weights"], describe(k, d, dy)["weights"])
               for k in range(args.problems) for d in ds for dy in dys)
    print(f"\nmixture weights of problem k identical in every (d, dy) cell: {same}")


if __name__ == "__main__":
    main()
