"""Time and peak memory of ``textsr rank`` on the demo scene (issue 20, item 4).

Each run is ``textsr.rank`` on the demo scene (``textsr demo``'s input: a small red circle on blue, 8x) with the
four prompts of the README ("a red circle", "a crimson star", "a red ring", no prompt), in a fresh child process
(the model load included), with ``--threads`` torch threads; per run: wall seconds, CPU seconds (user, system)
and the child's peak resident memory (``ru_maxrss``).  Runs of the methods are interleaved (the machine may be
shared: compare CPU seconds, and say what else ran).

    python bench/rank_cost.py --methods exact,particles --runs 3 --threads 2 [--json PATH]

``--methods default`` calls ``rank`` without a method (what a version before ``--method`` ran: measure it with
``PYTHONPATH`` pointing at an older checkout's source).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from particle_memory import measure  # noqa: E402

PROMPTS = ["a red circle", "a crimson star", "a red ring", ""]


def demo_rank(method: str) -> dict:
    from textsr import rank
    from textsr.demo import demo_image

    r = rank(demo_image(), PROMPTS, scale=8, **({} if method == "default" else {"method": method}))
    return {"entries": [(e["prompt"], e["probability"], e["log_z"]) for e in r.entries]}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default="exact,particles")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    methods = args.methods.split(",")
    recs: list[dict] = []
    for k in range(args.runs):
        for m in methods:  # interleaved
            r = measure(demo_rank, {"method": m}, None, args.threads)
            recs.append({"method": m, "run": k, **r})
            print(f"run {k} {m}: wall {r['wall_s']:.1f} s, user {r['user_s']:.1f} s, sys {r['sys_s']:.1f} s, "
                  f"peak {r['peak_gb']:.2f} GiB, {'ok' if r['ok'] else r['error']}", flush=True)
    print(f"\ntextsr rank on the demo scene (4 prompts), {args.threads} torch threads, {args.runs} runs each; "
          f"load average at the end {os.getloadavg()[0]:.1f}")
    print("| method | wall s (min / median) | CPU s user+sys (min / median) | peak RSS GiB (max) | P (last run) |")
    print("|---|---|---|---|---|")
    for m in methods:
        rs = [r for r in recs if r["method"] == m and r["ok"]]
        if not rs:
            print(f"| {m} | failed | | | |")
            continue
        wall = [r["wall_s"] for r in rs]
        cpu = [r["user_s"] + r["sys_s"] for r in rs]
        probs = ", ".join(f"{p or '(no prompt)'} {pr:.3f}" for p, pr, _ in rs[-1]["result"]["entries"])
        print(f"| {m} | {min(wall):.1f} / {statistics.median(wall):.1f} | {min(cpu):.1f} / {statistics.median(cpu):.1f}"
              f" | {max(r['peak_gb'] for r in rs):.2f} | {probs} |")
    print(f"\n{platform.machine()}, {os.cpu_count()} CPUs")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(recs, f, indent=1)


if __name__ == "__main__":
    main()
