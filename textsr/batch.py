"""Batch runs from a manifest, locally or on a Ray cluster (optional extra ``textsr[cluster]``).

A manifest is a JSON list or a JSONL file of jobs; each job is the fields of an ``ExploreRequest``
(``textsr.request``: the arguments of ``textsr.explore``) plus ``"out"`` (its output folder) and
optionally ``"overwrite"``::

    {"image": "faces/001.png", "prompts": ["an elderly woman"], "scale": 16, "model": "deepfloyd-if",
     "samples": 8, "seed": 0, "out": "results/001", "preset": "paper"}

Relative paths are relative to the manifest. Every field is checked when the manifest is read (the
``ExploreRequest`` checks ``explore`` and the CLI use; a key given twice in one object is refused), and
two jobs may not share an output folder (compared after resolving ``..`` and symbolic links).  Before the
first job runs, ``run_batch`` checks the inputs of every job that will run (``check_jobs``: its image
read, its model named and its weights available), so a bad manifest fails before any work.

Resuming: a job is done when its folder holds results.json, which is written last
(``textsr.outdir``); a done job is skipped unless ``force`` (CLI ``--force``/``--overwrite``) or the
job's ``"overwrite": true``. A half-finished folder (textsr's files, no results.json) is rerun: its
textsr files are replaced, other files left alone.

Models are loaded once per worker and reused across its jobs (``ModelCache``, keyed by model,
device and dtype); locally the jobs run grouped by model. With Ray each worker is one long-lived
actor holding its model, asking for ``gpus_per_job`` GPUs and ``cpus_per_job`` CPUs (the actor sees
only its GPU, so ``device="auto"`` picks it); jobs are dispatched to idle actors.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import validate
from .batch_jobs import DEFAULT_MODEL, Job, JobResult, ModelCache, model_key, run_job, will_skip
from .errors import UsageError
from .io import strict_json_loads
from .request import ExploreRequest, request_args

__all__ = ["Job", "JobResult", "ModelCache", "check_jobs", "load_manifest", "run_batch", "run_job"]

JOB_KEYS = {f.name for f in request_args("upscale")}  # the ExploreRequest's fields an upscale takes
EXTRA_KEYS = {"out", "overwrite"}


# --------------------------------------------------------------------------------------------
# Reading a manifest
# --------------------------------------------------------------------------------------------


def load_manifest(path: str | Path) -> list[Job]:
    """Read and validate a manifest; errors name the job, its line and the field to fix."""
    path = Path(path)
    items = _read_items(path)
    jobs: list[Job] = []
    outs: dict[Path, int] = {}
    for i, (line, item) in enumerate(items):
        where = f"manifest job {i} (line {line})"
        try:
            job = _job(item, path.parent)
        except UsageError as e:
            raise UsageError(f"{where}: {e}") from None
        if job.out in outs:
            raise UsageError(f"{where}: output folder {job.out} is used by another job (job {outs[job.out]}); "
                             "give each job its own out")
        outs[job.out] = i
        jobs.append(job)
    if not jobs:
        raise UsageError(f"manifest {path} has no jobs")
    return jobs


def _read_items(path: Path) -> list[tuple[int, Any]]:
    """[(line number, parsed job)] from a JSON list or JSONL (blank lines and # comments skipped)."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise UsageError(f"cannot read the manifest {path}: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise UsageError(f"manifest {path} is not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start}); a "
                         "manifest is a JSON list or one JSON object per line (JSONL), saved as UTF-8") from None
    if "\x00" in text:
        raise UsageError(f"manifest {path} is not UTF-8 text (it holds NUL bytes); a manifest is a JSON list or "
                         "one JSON object per line (JSONL), saved as UTF-8")
    if text.lstrip().startswith("["):
        try:
            items = strict_json_loads(text)
        except json.JSONDecodeError as e:
            raise UsageError(f"manifest {path} is not valid JSON ({e.msg} at line {e.lineno}, "
                             f"column {e.colno})") from None
        except UsageError as e:
            raise UsageError(f"manifest {path}: {e}") from None
        starts = _list_item_lines(text, len(items)) if isinstance(items, list) else []
        return list(zip(starts, items))
    out = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            out.append((n, strict_json_loads(line)))
        except json.JSONDecodeError as e:
            raise UsageError(f"manifest {path} line {n} is not valid JSON ({e.msg} at column {e.colno}); each "
                             "line of a JSONL manifest is one job object") from None
        except UsageError as e:
            raise UsageError(f"manifest {path} line {n}: {e}") from None
    return out


def _list_item_lines(text: str, n: int) -> list[int]:
    """Line of each top-level item of a JSON list (for messages)."""
    dec, lines, pos = json.JSONDecoder(), [], text.index("[") + 1
    for _ in range(n):
        while text[pos] in " \t\r\n,":
            pos += 1
        lines.append(text.count("\n", 0, pos) + 1)
        _, pos = dec.raw_decode(text, pos)
    return lines


def _job(item: Any, base: Path) -> Job:
    """One manifest entry -> Job, every field checked with ``textsr.validate``."""
    if not isinstance(item, dict):
        raise UsageError(f"expected an object, got {type(item).__name__}")
    unknown = sorted(set(item) - JOB_KEYS - EXTRA_KEYS)
    if unknown:
        raise UsageError(f"unknown field(s) {unknown}; known: {sorted(JOB_KEYS | EXTRA_KEYS)}")
    for key in ("image", "scale", "out"):
        if key not in item:
            raise UsageError(f"missing required field {key!r}")
    kw = dict(item)
    out = Path(validate.path_text(kw.pop("out"), "out", "this job's output folder")).expanduser()
    overwrite = validate.flag(kw.pop("overwrite", False), "overwrite")
    img = Path(validate.path_text(kw["image"], "image", "an image file")).expanduser()
    kw["image"] = str(img if img.is_absolute() else base / img)
    if "model" in kw:
        validate.text(kw["model"], "model", optional=False)  # a manifest names models, it cannot hold one
    ExploreRequest.build(**kw)  # every field checked as explore checks it
    return Job(out=(out if out.is_absolute() else base / out).resolve(), kwargs=kw, overwrite=overwrite)


def check_jobs(jobs: Sequence[Job], force: bool = False) -> None:
    """The inputs of every job that will run (``textsr.api.check_inputs``: its image read, its model
    named, its weights available), all before the first job runs; one ``UsageError`` lists every problem."""
    from .api import check_inputs

    problems = []
    for i, job in enumerate(jobs):
        if will_skip(job, force):
            continue
        try:
            check_inputs(ExploreRequest.build(**job.kwargs))
        except UsageError as e:
            problems.append(f"job {i} ({job.out}): {e}")
    if problems:
        raise UsageError(f"{len(problems)} of {len(jobs)} jobs cannot run; nothing was run. Fix the manifest:\n"
                         + "\n".join(problems))


# --------------------------------------------------------------------------------------------
# Running jobs
# --------------------------------------------------------------------------------------------


def run_batch(jobs: Sequence[Job], *, use_ray: bool = False, address: str | None = None, gpus_per_job: float = 0.0,
              cpus_per_job: float = 1.0, force: bool = False, workers: int | None = None,
              ray_init: dict[str, Any] | None = None) -> list[JobResult]:
    """Run ``jobs`` locally (one process, grouped by model) or on Ray actors; results in manifest order.
    Every job's inputs are checked first (``check_jobs``)."""
    check_jobs(jobs, force)
    if not use_ray:
        cache = ModelCache()
        order = sorted(range(len(jobs)), key=_model_order(jobs))
        done = {i: run_job(jobs[i], force, cache) for i in order}
        return [done[i] for i in range(len(jobs))]
    from .batch_ray import run_on_ray

    return run_on_ray(jobs, address=address, gpus_per_job=gpus_per_job, cpus_per_job=cpus_per_job, force=force,
                      workers=workers, ray_init=ray_init)


def _model_order(jobs: Sequence[Job]):
    """Sort key: jobs of the model first named earliest run first (stable), so each model loads once."""
    first: dict[tuple, int] = {}
    keys = []
    for j in jobs:
        k = (model_key(j.kwargs.get("model", DEFAULT_MODEL)), str(j.kwargs.get("device")), str(j.kwargs.get("dtype")))
        first.setdefault(k, len(first))
        keys.append(first[k])
    return lambda i: keys[i]
