"""Batch throughput: jobs per minute for 8 jobs on the tiny DeepFloyd IF, a model loaded per job
(the code before issue 10 item 12) against a model loaded once per worker (``textsr.batch`` now).

    python bench/batch_throughput.py [--jobs 8] [--steps 4] [--ray] [--json bench/results/batch_throughput.json]

"before" runs exactly what ``run_job`` did before: ``explore(**job.kwargs)`` with the model's spec path,
so every job loads the model (locally in one process; with ``--ray`` one Ray task per job).
"after" is ``run_batch`` (locally: one ModelCache; with ``--ray``: long-lived actors, ``--workers``).
Each variant writes its jobs' folders into a fresh temporary folder; load and sampling share one
process, so the difference is the model loading. Outputs are compared: the two variants must write
the same samples.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def make_jobs(root: Path, spec: Path, n: int, steps: int, tag: str):
    from textsr.batch import load_manifest

    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((4, 4, 3)) * 255).astype(np.uint8)).save(root / "lr.png")
    jobs = [{"image": "lr.png", "prompts": ["a photo of a cat"], "scale": 8, "model": str(spec), "samples": 2,
             "seed": i, "steps": steps, "device": "cpu", "out": f"{tag}/job{i}"} for i in range(n)]
    (root / f"{tag}.jsonl").write_text("\n".join(json.dumps(j) for j in jobs))
    return load_manifest(root / f"{tag}.jsonl")


def old_run_job(job):
    """``textsr.batch.run_job`` before issue 10: the model is loaded inside every ``explore`` call."""
    from textsr.api import explore

    t0 = time.perf_counter()
    explore(**job.kwargs).save(job.out)
    return time.perf_counter() - t0


def run_variant(name: str, root: Path, spec: Path, args) -> dict:
    from textsr.batch import run_batch

    jobs = make_jobs(root, spec, args.jobs, args.steps, name)
    t0 = time.perf_counter()
    if name == "before-local":
        for j in jobs:
            old_run_job(j)
    elif name == "after-local":
        res = run_batch(jobs)
        assert all(r.status == "done" for r in res), res
    elif name == "before-ray":
        import ray

        task = ray.remote(num_cpus=1)(old_run_job)
        ray.get([task.remote(j) for j in jobs])
    elif name == "after-ray":
        res = run_batch(jobs, use_ray=True, workers=args.workers)
        assert all(r.status == "done" for r in res), res
    seconds = time.perf_counter() - t0
    return {"variant": name, "jobs": len(jobs), "seconds": round(seconds, 2),
            "jobs_per_minute": round(60 * len(jobs) / seconds, 1)}


def run_repeated(variants: tuple[str, ...], root: Path, spec: Path, args) -> list[dict]:
    """Each variant ``args.repeats`` times, alternating, each run into fresh folders."""
    runs = []
    for r in range(args.repeats):
        for v in variants:
            for old in root.glob(f"{v}*"):
                shutil.rmtree(old) if old.is_dir() else old.unlink()
            runs.append({**run_variant(v, root, spec, args), "repeat": r})
    return runs


def summarize(runs: list[dict]) -> list[dict]:
    rows = []
    for v in dict.fromkeys(r["variant"] for r in runs):
        secs = sorted(r["seconds"] for r in runs if r["variant"] == v)
        med = float(np.median(secs))
        n = runs[0]["jobs"]
        rows.append({"variant": v, "jobs": n, "seconds": round(med, 2), "jobs_per_minute": round(60 * n / med, 1),
                     "runs_s": secs})
    return rows


def time_load(spec: Path) -> float:
    from textsr.model_registry import load_model

    t0 = time.perf_counter()
    load_model(spec, device="cpu")
    return time.perf_counter() - t0


def same_outputs(root: Path, a: str, b: str, n: int) -> bool:
    for i in range(n):
        for f in sorted((root / a / f"job{i}").rglob("sample-*.png")):
            g = root / b / f"job{i}" / f.relative_to(root / a / f"job{i}")
            if not np.array_equal(np.asarray(Image.open(f)), np.asarray(Image.open(g))):
                return False
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=8)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--ray", action="store_true", help="also measure with Ray (needs textsr[cluster])")
    ap.add_argument("--workers", type=int, default=2, help="Ray workers for the 'after' variant")
    ap.add_argument("--repeats", type=int, default=2, help="runs of each variant (alternating); the median is shown")
    ap.add_argument("--json", type=Path, default=Path("bench/results/batch_throughput.json"))
    args = ap.parse_args()

    import torch

    from textsr.testing.tiny_deepfloyd_if import build_tiny_if

    root = Path(tempfile.mkdtemp(prefix="textsr-bench-batch-"))
    try:
        spec = build_tiny_if(root / "tiny_if")
        load_s = time_load(spec)
        runs = run_repeated(("before-local", "after-local"), root, spec, args)
        same = {"local": same_outputs(root, "before-local", "after-local", args.jobs)}
        if args.ray:
            import ray

            ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
            try:
                runs += run_repeated(("before-ray", "after-ray"), root, spec, args)
            finally:
                ray.shutdown()
            same["ray"] = same_outputs(root, "before-ray", "after-ray", args.jobs)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    rows = summarize(runs)

    print(f"{args.jobs} jobs, tiny DeepFloyd IF (2 stages), 4x4 -> 32x32, 2 samples x {args.steps} steps per stage, CPU; "
          f"one load_model of it: {load_s:.2f} s")
    print(f"{'variant':<14} {'seconds (median of ' + str(args.repeats) + ')':>24} {'jobs/min':>9}  all runs (s)")
    for r in rows:
        print(f"{r['variant']:<14} {r['seconds']:>24.2f} {r['jobs_per_minute']:>9.1f}  {r['runs_s']}")
    print("same samples before and after:", same)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"rows": rows, "runs": runs, "load_model_s": load_s, "same_samples": same,
                                     "args": {k: str(v) for k, v in vars(args).items()},
                                     "machine": {"python": platform.python_version(), "torch": torch.__version__,
                                                 "threads": torch.get_num_threads(), "cpu": platform.processor()}},
                                    indent=2) + "\n")


if __name__ == "__main__":
    main()
