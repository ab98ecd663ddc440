"""Memory and time of the per-prompt diversity metric (issue 10 item 13): the K x K x pixels formula
``api.diversity`` used before against ``textsr.metrics.sample_diversity`` (pairs a block at a time).

    python bench/diversity_memory.py [--samples 32] [--size 256] [--json bench/results/diversity_memory.json]

Peak memory is tracemalloc's peak above the samples themselves (numpy reports its buffers to
tracemalloc); the samples are uniform random in [0, 1], (K, size, size, 3) float32.
"""

from __future__ import annotations

import argparse
import json
import time
import tracemalloc
from pathlib import Path

import numpy as np


def old_diversity(samples01: np.ndarray) -> tuple[dict, np.ndarray]:
    """``textsr.api.diversity`` before issue 10."""
    k = samples01.shape[0]
    flat = samples01.reshape(k, -1).astype(np.float64)
    if k > 1:
        d2 = ((flat[:, None, :] - flat[None, :, :]) ** 2).mean(-1)
        pair = float(np.sqrt(d2[np.triu_indices(k, 1)]).mean())
    else:
        pair = 0.0
    std = samples01.std(axis=0).mean(axis=-1)
    return {"pairwise_l2": pair, "mean_std": float(std.mean())}, std.astype(np.float32)


def measure(fn, s: np.ndarray) -> tuple[dict, float, float]:
    tracemalloc.start()
    try:
        t0 = time.perf_counter()
        out, _ = fn(s)
        seconds = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return out, peak / 2**20, seconds


def main() -> None:
    from textsr.metrics import sample_diversity

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--json", type=Path, default=Path("bench/results/diversity_memory.json"))
    args = ap.parse_args()
    s = np.random.default_rng(0).random((args.samples, args.size, args.size, 3)).astype(np.float32)
    rows = []
    for name, fn in (("before (K x K x pixels)", old_diversity), ("after (blocks of pairs)", sample_diversity)):
        out, peak, seconds = measure(fn, s)
        rows.append({"variant": name, "peak_mib": round(peak, 1), "seconds": round(seconds, 3), **out})
    diff = abs(rows[0]["pairwise_l2"] - rows[1]["pairwise_l2"])
    print(f"{args.samples} samples of {args.size}x{args.size}x3 float32 ({s.nbytes / 2**20:.1f} MiB)")
    print(f"{'variant':<26} {'peak MiB':>9} {'seconds':>8} {'pairwise_l2':>14} {'mean_std':>10}")
    for r in rows:
        print(f"{r['variant']:<26} {r['peak_mib']:>9.1f} {r['seconds']:>8.3f} {r['pairwise_l2']:>14.10f} "
              f"{r['mean_std']:>10.6f}")
    print(f"|difference| in pairwise_l2: {diff:.3g}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"samples": args.samples, "size": args.size, "input_mib": s.nbytes / 2**20,
                                     "rows": rows, "abs_diff_pairwise_l2": diff}, indent=2) + "\n")


if __name__ == "__main__":
    main()
