"""One batch job in this process: its result, and the models a worker keeps loaded between jobs
(``textsr.batch`` reads manifests and runs jobs locally; ``textsr.batch_ray`` on Ray actors)."""

from __future__ import annotations

import os
import time
import traceback
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import TextSRError

DEFAULT_MODEL = "builtin-shapes"


@dataclass
class Job:
    out: Path
    kwargs: dict
    overwrite: bool = False

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
    worker: int | None = None  # process id of the worker that ran it
    model_loads: int | None = None  # models that worker had loaded so far (1 for any number of jobs of one model)


# --------------------------------------------------------------------------------------------
# Running jobs: models loaded once per worker
# --------------------------------------------------------------------------------------------


class ModelCache:
    """Loaded backends by (model, device, dtype), at most ``keep`` at a time (least recently used
    dropped), so a worker loads each model once for all its jobs."""

    def __init__(self, keep: int = 1):
        self.keep = keep
        self._loaded: OrderedDict[tuple, Any] = OrderedDict()
        self.loads = 0

    def get(self, model: str, device: Any = None, dtype: Any = None, load: dict | None = None) -> Any:
        """The backend of ``model`` on ``device``/``dtype`` with the memory options ``load``."""
        from . import model_registry
        from .device import resolve_device, resolve_dtype

        dev = resolve_device(device)
        dt = resolve_dtype(dtype, dev)
        key = (model_key(model), str(dev), str(dt), tuple(sorted((load or {}).items())))
        if key in self._loaded:
            self._loaded.move_to_end(key)
            return self._loaded[key]
        while len(self._loaded) >= self.keep:  # free the old model before loading the next one
            self._loaded.popitem(last=False)
        if model == DEFAULT_MODEL and not load:  # the one the inputs' checks loaded (model_choice)
            from .model_choice import builtin_world

            backend = builtin_world(str(dev))
        else:
            backend = model_registry.load_model(model, device=dev, dtype=dt, load=dict(load or {}))
        self.loads += 1
        self._loaded[key] = backend
        return backend


def model_key(model: str) -> str:
    """A registry name as is; a model folder or spec file by its resolved path."""
    from .model_registry import SPECS

    if model in SPECS:
        return model
    p = Path(model).expanduser()
    return str(p.resolve()) if p.exists() else model


def will_skip(job: Job, force: bool = False) -> bool:
    """A job whose folder holds a finished run is skipped unless forced: a results.json that textsr wrote
    (``outdir.scan``'s record), not any file of that name."""
    from .outdir import scan

    return not (force or job.overwrite) and scan(job.out).finished


def run_job(job: Job, force: bool = False, cache: ModelCache | None = None,
            callback: Any = None) -> JobResult:
    """Run one job in this process, holding its folder from before the work until its files are written
    (``outdir.reserve``: another run's folder, or files textsr did not write there, fail the job before
    any sampling); failures become a result with the error (the batch goes on).  ``callback``: the run's
    step progress (``textsr.api.Progress``)."""
    from .api import explore_request
    from .outdir import reserve
    from .request import ExploreRequest

    who: dict[str, Any] = {"worker": os.getpid(), "model_loads": None if cache is None else cache.loads}
    if will_skip(job, force):
        return JobResult(str(job.out), "skipped", **who)
    t0 = time.perf_counter()
    try:
        with reserve(job.out, overwrite=True):  # the job owns its folder: a half-finished run is replaced
            if will_skip(job, force):  # another worker finished it before this one took the folder
                return JobResult(str(job.out), "skipped", **who)
            req = ExploreRequest.build(**job.kwargs)
            if cache is not None:  # no model: the built-in world (check_jobs found that it explains the input)
                load = req.load_options()
                req = req.with_model(cache.get(req.model or DEFAULT_MODEL, req.device, req.dtype, load))
                who["model_loads"] = cache.loads
            result = explore_request(req, callback)
            result.save(job.out, overwrite=True)
    except TextSRError as e:
        return JobResult(str(job.out), "failed", time.perf_counter() - t0, str(e), **who)
    except Exception as e:  # noqa: BLE001 - a batch reports every job's failure and goes on
        return JobResult(str(job.out), "failed", time.perf_counter() - t0,
                         f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=3)}", **who)
    return JobResult(str(job.out), "done", time.perf_counter() - t0, summary=result.summary(), **who)


