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
import os
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


class LoadMeter:
    """Counts ``load_model`` calls in this process and the seconds spent in them."""

    def __init__(self):
        import textsr.model_registry as reg

        self.reg, self.real, self.calls, self.seconds = reg, reg.load_model, 0, 0.0

    def __enter__(self):
        def timed(*a, **k):
            t0 = time.perf_counter()
            try:
                return self.real(*a, **k)
            finally:
                self.calls += 1
                self.seconds += time.perf_counter() - t0

        self.reg.load_model = timed
        return self

    def __exit__(self, *exc):
        self.reg.load_model = self.real


def old_run_job(job) -> tuple[int, float]:
    """``textsr.batch.run_job`` before issue 10: the model is loaded inside every ``explore`` call.
    Returns (load_model calls, seconds in them)."""
    from textsr.api import explore

    with LoadMeter() as m:
        explore(**job.kwargs).save(job.out)
    return m.calls, m.seconds


def run_variant(name: str, root: Path, spec: Path, args) -> dict:
    from textsr.batch import run_batch

    jobs = make_jobs(root, spec, args.jobs, args.steps, name)
    load_avg = os.getloadavg()[0]
    t0, c0 = time.perf_counter(), time.process_time()
    loads, load_s = 0, None
    if name == "before-local":
        for j in jobs:
            n, sec = old_run_job(j)
            loads, load_s = loads + n, (load_s or 0.0) + sec
    elif name == "after-local":
        with LoadMeter() as m:
            res = run_batch(jobs)
        assert all(r.status == "done" for r in res), res
        loads, load_s = m.calls, m.seconds
    elif name == "before-ray":
        import ray

        task = ray.remote(num_cpus=1)(old_run_job)
        out = ray.get([task.remote(j) for j in jobs])
        loads, load_s = sum(n for n, _ in out), sum(s for _, s in out)
    elif name == "after-ray":
        res = run_batch(jobs, use_ray=True, workers=args.workers)
        assert all(r.status == "done" for r in res), res
        loads = sum(max(r.model_loads for r in res if r.worker == w) for w in {r.worker for r in res})
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"variant": name, "jobs": len(jobs), "seconds": round(seconds, 2), "cpu_s_this_process": round(cpu, 2),
            "jobs_per_minute": round(60 * len(jobs) / seconds, 1), "model_loads": loads,
            "load_model_s": None if load_s is None else round(load_s, 2), "load_avg_1min_before": round(load_avg, 2)}


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
        mine = [r for r in runs if r["variant"] == v]
        med = float(np.median([r["seconds"] for r in mine]))
        n = mine[0]["jobs"]
        loads = [r["load_model_s"] for r in mine if r["load_model_s"] is not None]
        rows.append({"variant": v, "jobs": n, "seconds": round(med, 2), "jobs_per_minute": round(60 * n / med, 1),
                     "cpu_s": float(np.median([r["cpu_s_this_process"] for r in mine])),
                     "model_loads": mine[0]["model_loads"],
                     "load_model_s": round(float(np.median(loads)), 2) if loads else None,
                     "runs_s": sorted(r["seconds"] for r in mine)})
    return rows


def time_load(spec: Path) -> float:
    from textsr.model_registry import load_model

    t0 = time.perf_counter()
    load_model(spec, device="cpu")
    return time.perf_counter() - t0


def first_use(root: Path, spec: Path, args) -> dict:
    """Where the local difference goes beyond load_model: ``explore`` timed (CPU seconds of this process)
    with a backend loaded just before it (untimed) against the same backend used a second time, on the
    same job and seed, ``args.jobs`` times each."""
    from textsr.api import explore
    from textsr.model_registry import load_model

    jobs = make_jobs(root, spec, 1, args.steps, "first-use")
    kw = {k: v for k, v in jobs[0].kwargs.items() if k != "model"}
    fresh, again = [], []
    for _ in range(args.jobs):
        backend = load_model(spec, device="cpu")
        for bucket in (fresh, again):
            c0 = time.process_time()
            explore(model=backend, **kw)
            bucket.append(time.process_time() - c0)
    return {"explore_cpu_s_fresh_backend": round(float(np.median(fresh)), 3),
            "explore_cpu_s_second_use": round(float(np.median(again)), 3), "n": args.jobs}


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
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads in this process (1: no OpenMP spinning on a shared machine; Ray workers "
                         "get OMP_NUM_THREADS from num_cpus)")
    ap.add_argument("--first-use", action="store_true",
                    help="also time explore on a just-loaded backend against its second use (CPU seconds)")
    ap.add_argument("--json", type=Path, default=Path("bench/results/batch_throughput.json"))
    args = ap.parse_args()

    import torch

    from textsr.testing.tiny_deepfloyd_if import build_tiny_if

    torch.set_num_threads(args.threads)

    root = Path(tempfile.mkdtemp(prefix="textsr-bench-batch-"))
    try:
        spec = build_tiny_if(root / "tiny_if")
        load_s = time_load(spec)
        runs = run_repeated(("before-local", "after-local"), root, spec, args)
        same = {"local": same_outputs(root, "before-local", "after-local", args.jobs)}
        first = first_use(root, spec, args) if args.first_use else None
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

    print(f"{args.jobs} jobs, tiny DeepFloyd IF (2 stages), 4x4 -> 32x32, 2 samples x {args.steps} steps per stage, "
          "CPU; "
          f"one load_model of it: {load_s:.2f} s")
    print(f"medians of {args.repeats} alternating runs; cpu = this process's CPU seconds (the Ray variants "
          "run in workers); loads = load_model calls, load s = seconds inside them")
    print(f"{'variant':<14} {'wall s':>8} {'jobs/min':>9} {'cpu s':>7} {'loads':>6} {'load s':>7}  wall s of every run")
    for r in rows:
        ls = "-" if r["load_model_s"] is None else f"{r['load_model_s']:.2f}"
        print(f"{r['variant']:<14} {r['seconds']:>8.2f} {r['jobs_per_minute']:>9.1f} {r['cpu_s']:>7.2f} "
              f"{r['model_loads']:>6} {ls:>7}  {r['runs_s']}")
    print("same samples before and after:", same)
    if first:
        print(f"explore CPU s (median of {first['n']}), same job and seed: just-loaded backend "
              f"{first['explore_cpu_s_fresh_backend']:.3f}, its second use {first['explore_cpu_s_second_use']:.3f}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"rows": rows, "runs": runs, "load_model_s": load_s, "same_samples": same,
                                     "first_use": first,
                                     "args": {k: str(v) for k, v in vars(args).items()},
                                     "machine": {"python": platform.python_version(), "torch": torch.__version__,
                                                 "threads": torch.get_num_threads(), "cpu": platform.processor()}},
                                    indent=2) + "\n")


if __name__ == "__main__":
    main()
