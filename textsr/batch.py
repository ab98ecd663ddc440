"""Batch runs from a manifest, locally or on a Ray cluster (optional extra ``textsr[cluster]``).

A manifest is a JSON list or a JSONL file of jobs; each job is the keyword arguments of
``textsr.explore`` plus ``"out"`` (its output folder) and optionally ``"overwrite"``::

    {"image": "faces/001.png", "prompts": ["an elderly woman"], "scale": 16, "model": "deepfloyd-if",
     "samples": 8, "seed": 0, "out": "results/001", "preset": "paper"}

Relative paths are relative to the manifest. Every field is checked when the manifest is read
(``textsr.validate``, the checks ``explore`` and the CLI use), and two jobs may not share an output
folder (compared after resolving ``..`` and symbolic links), so a bad manifest fails before any job runs.

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
from .batch_jobs import DEFAULT_MODEL, Job, JobResult, ModelCache, model_key, run_job
from .errors import UsageError

__all__ = ["Job", "JobResult", "ModelCache", "load_manifest", "run_batch", "run_job"]

JOB_KEYS = {"image", "prompts", "scale", "model", "solver", "samples", "seed", "template", "values", "operator",
            "sigma_y", "steps", "solver_options", "model_options", "device", "dtype", "simulate", "batch_size",
            "max_pixels", "preset", "particles", "prompt_prior"}
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
            items = json.loads(text)
        except json.JSONDecodeError as e:
            raise UsageError(f"manifest {path} is not valid JSON ({e.msg} at line {e.lineno}, "
                             f"column {e.colno})") from None
        starts = _list_item_lines(text, len(items)) if isinstance(items, list) else []
        return list(zip(starts, items))
    out = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            out.append((n, json.loads(line)))
        except json.JSONDecodeError as e:
            raise UsageError(f"manifest {path} line {n} is not valid JSON ({e.msg} at column {e.colno}); each "
                             "line of a JSONL manifest is one job object") from None
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
    _check_fields(kw)
    return Job(out=(out if out.is_absolute() else base / out).resolve(), kwargs=kw, overwrite=overwrite)


def _check_fields(kw: dict) -> None:
    from .operators import OPERATORS
    from .presets import preset_names
    from .solver_registry import SOLVERS

    checks = {
        "scale": validate.scale, "samples": validate.samples, "seed": validate.seed, "sigma_y": validate.sigma_y,
        "steps": validate.steps, "batch_size": validate.batch_size, "max_pixels": validate.max_pixels,
        "prompts": validate.prompts, "values": validate.sweep_values,
        "template": lambda v: validate.text(v, "template"),
        "model": lambda v: validate.text(v, "model", optional=False),
        "solver": lambda v: validate.choice(v, "solver", list(SOLVERS)),
        "operator": lambda v: validate.choice(v, "operator", sorted(OPERATORS)),
        "preset": lambda v: validate.choice(v, "preset", list(preset_names())),
        "solver_options": lambda v: validate.options(v, "solver_options"),
        "model_options": lambda v: validate.options(v, "model_options"),
        "device": lambda v: validate.text(v, "device"), "dtype": lambda v: validate.text(v, "dtype"),
        "simulate": lambda v: validate.flag(v, "simulate"),
    }
    for key, check in checks.items():
        if key in kw:
            check(kw[key])


# --------------------------------------------------------------------------------------------
# Running jobs
# --------------------------------------------------------------------------------------------


def run_batch(jobs: Sequence[Job], *, use_ray: bool = False, address: str | None = None, gpus_per_job: float = 0.0,
              cpus_per_job: float = 1.0, force: bool = False, workers: int | None = None,
              ray_init: dict[str, Any] | None = None) -> list[JobResult]:
    """Run ``jobs`` locally (one process, grouped by model) or on Ray actors; results in manifest order."""
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
