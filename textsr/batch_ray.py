"""``textsr batch --ray``: one long-lived Ray actor per worker (per GPU with ``gpus_per_job=1``), each
holding its model(s) in a ``ModelCache``; jobs go to whichever actor is idle. An actor that dies
(out of memory, node lost) fails only the job it was running and is replaced."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .batch_jobs import Job, JobResult, ModelCache, run_job
from .errors import UsageError


class Worker:
    """The Ray actor's class: runs jobs one at a time with models kept loaded between them."""

    def __init__(self) -> None:
        self.cache = ModelCache()

    def run(self, job: Job, force: bool) -> JobResult:
        return run_job(job, force, self.cache)

    def loads(self) -> int:
        return self.cache.loads


def run_on_ray(jobs: Sequence[Job], *, address: str | None = None, gpus_per_job: float = 0.0,
               cpus_per_job: float = 1.0, force: bool = False, workers: int | None = None,
               ray_init: dict[str, Any] | None = None) -> list[JobResult]:
    try:
        import ray
    except ImportError:
        raise UsageError("Ray is not installed; pip install 'textsr[cluster]' or run without --ray") from None
    if gpus_per_job < 0 or cpus_per_job < 0:
        raise UsageError("--gpus-per-job and --cpus-per-job must be >= 0")
    started_here = False
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False, **(ray_init or {}))
        started_here = True
    try:
        n = worker_count(ray.cluster_resources(), gpus_per_job, cpus_per_job, len(jobs), workers)
        actor = ray.remote(num_gpus=gpus_per_job, num_cpus=cpus_per_job)(Worker)
        return _dispatch(ray, actor, jobs, force, n)
    finally:
        if started_here:
            ray.shutdown()


def worker_count(resources: dict, gpus_per_job: float, cpus_per_job: float, n_jobs: int,
                 workers: int | None = None) -> int:
    """As many workers as the cluster fits (GPUs / gpus_per_job, else CPUs / cpus_per_job), at most
    one per job; ``workers`` overrides."""
    if workers is not None:
        if workers < 1:
            raise UsageError(f"--workers must be at least 1, got {workers}")
        return min(workers, n_jobs)
    if gpus_per_job > 0:
        fit = int(resources.get("GPU", 0) // gpus_per_job)
        if fit < 1:
            raise UsageError(f"the Ray cluster has {resources.get('GPU', 0):g} GPU(s), fewer than --gpus-per-job "
                             f"{gpus_per_job:g}; use --gpus-per-job 0 for CPU workers")
    else:
        fit = int(resources.get("CPU", 1) // cpus_per_job) if cpus_per_job > 0 else n_jobs
    return max(1, min(fit, n_jobs))


def _dispatch(ray, actor_cls, jobs: Sequence[Job], force: bool, n: int) -> list[JobResult]:
    """Keep ``n`` actors busy; results in manifest order."""
    from ray.exceptions import RayActorError

    results: list[JobResult | None] = [None] * len(jobs)
    todo = list(range(len(jobs)))[::-1]
    idle = [actor_cls.remote() for _ in range(n)]
    running: dict[Any, tuple[int, Any]] = {}
    try:
        while todo or running:
            while todo and idle:
                i, a = todo.pop(), idle.pop()
                running[a.run.remote(jobs[i], force)] = (i, a)
            ready, _ = ray.wait(list(running), num_returns=1)
            i, a = running.pop(ready[0])
            try:
                results[i] = ray.get(ready[0])
                idle.append(a)
            except RayActorError as e:  # the worker died: this job fails, a fresh worker takes its place
                results[i] = JobResult(str(jobs[i].out), "failed", error=f"the Ray worker died: {e}")
                idle.append(actor_cls.remote())
    finally:
        for a in idle + [a for _, a in running.values()]:
            ray.kill(a)
    return results  # type: ignore[return-value]
