"""Batch runs from a manifest, locally or on a Ray cluster (optional extra ``textsr[cluster]``).

A manifest is a JSON list or a JSONL file of jobs; each job is the keyword arguments of
``textsr.explore`` plus ``"out"`` (its output folder)::

    {"image": "faces/001.png", "prompts": ["an elderly woman"], "scale": 16, "model": "deepfloyd-if",
     "samples": 8, "seed": 0, "out": "results/001", "preset": "paper"}

Relative paths are relative to the manifest.  Every job builds the same ``explore`` call the CLI
builds, and writes its folder atomically; a job whose ``results.json`` exists is skipped unless
``force``, so an interrupted batch resumes where it stopped.  On Ray each job is one task asking for
``gpus_per_job`` GPUs (the task sees only its GPU, so ``device="auto"`` picks it).
"""

from __future__ import annotations

import json
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from .errors import TextSRError, UsageError

JOB_KEYS = {"image", "prompts", "scale", "model", "solver", "samples", "seed", "template", "values", "operator",
            "sigma_y", "steps", "solver_options", "model_options", "device", "dtype", "simulate", "batch_size",
            "max_pixels", "preset"}


@dataclass
class Job:
    out: Path
    kwargs: dict

    @property
    def name(self) -> str:
        return self.out.name


@dataclass
class JobResult:
    out: str
    status: str  # "done", "skipped", "failed"
    seconds: float = 0.0
    error: str | None = None
    summary: list[str] = field(default_factory=list)


def load_manifest(path: str | Path) -> list[Job]:
    """Read and validate a manifest; errors name the job and the field to fix."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise UsageError(f"cannot read the manifest {path}: {e.strerror or e}") from e
    try:
        items = json.loads(text) if text.lstrip().startswith("[") else [
            json.loads(line) for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    except json.JSONDecodeError as e:
        raise UsageError(f"manifest {path} is not valid JSON/JSONL ({e.msg} at line {e.lineno})") from e
    jobs, outs = [], set()
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise UsageError(f"manifest job {i}: expected an object, got {type(item).__name__}")
        unknown = sorted(set(item) - JOB_KEYS - {"out"})
        if unknown:
            raise UsageError(f"manifest job {i}: unknown field(s) {unknown}; known: {sorted(JOB_KEYS | {'out'})}")
        for key in ("image", "scale", "out"):
            if key not in item:
                raise UsageError(f"manifest job {i}: missing required field {key!r}")
        kwargs = {k: v for k, v in item.items() if k != "out"}
        img = Path(kwargs["image"])
        kwargs["image"] = str(img if img.is_absolute() else path.parent / img)
        out = Path(item["out"])
        out = out if out.is_absolute() else path.parent / out
        if out in outs:
            raise UsageError(f"manifest job {i}: output folder {out} is used by another job")
        outs.add(out)
        jobs.append(Job(out=out, kwargs=kwargs))
    if not jobs:
        raise UsageError(f"manifest {path} has no jobs")
    return jobs


def run_job(job: Job, force: bool = False) -> JobResult:
    """Run one job in this process; failures become a result with the error (the batch goes on)."""
    from .api import explore

    if not force and (job.out / "results.json").exists():
        return JobResult(str(job.out), "skipped")
    t0 = time.perf_counter()
    try:
        result = explore(**job.kwargs)
        result.save(job.out)
    except TextSRError as e:
        return JobResult(str(job.out), "failed", time.perf_counter() - t0, str(e))
    except Exception as e:  # noqa: BLE001 - a batch reports every job's failure and goes on
        return JobResult(str(job.out), "failed", time.perf_counter() - t0,
                         f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=3)}")
    return JobResult(str(job.out), "done", time.perf_counter() - t0, summary=result.summary())


def run_batch(jobs: Sequence[Job], *, use_ray: bool = False, address: str | None = None, gpus_per_job: float = 0.0,
              cpus_per_job: float = 1.0, force: bool = False, ray_init: dict[str, Any] | None = None) -> list[JobResult]:
    """Run ``jobs`` in order locally, or as Ray tasks (results in manifest order)."""
    if not use_ray:
        return [run_job(j, force) for j in jobs]
    try:
        import ray
    except ImportError as e:
        raise UsageError("Ray is not installed; pip install 'textsr[cluster]' or run without --ray") from e
    started_here = False
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False, **(ray_init or {}))
        started_here = True
    try:
        remote = ray.remote(num_gpus=gpus_per_job, num_cpus=cpus_per_job)(run_job)
        return ray.get([remote.remote(j, force) for j in jobs])
    finally:
        if started_here:
            ray.shutdown()
