"""``textsr upscale DIR --out OUT``: every image of a folder with one request (as Real-ESRGAN's ``-i dir``).

Each image gets its own run folder ``OUT/<image name>`` (the file name without its extension; when two
images share it, with the extension: ``cat-png``, ``cat-jpg``).  An image whose run folder holds a
finished run (results.json) is skipped unless ``overwrite``.  Every image's inputs are checked before
the first runs: an image that cannot run is reported and the others go on; the model loads once for
all (``textsr.batch_jobs.ModelCache``).  When no model is named and the built-in world cannot explain
an image, nothing runs: a real model must be named for the folder (``textsr.model_choice``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .batch_jobs import Job, JobResult, ModelCache, run_job, will_skip
from .display import terminal
from .errors import UsageError
from .request import ExploreRequest, request_args

#: file name extensions read as images (case-insensitive); Pillow reads more, these are the usual ones
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")


def image_files(folder: Path) -> tuple[list[Path], list[str]]:
    """The images directly in ``folder`` (sorted by name; hidden files and sub-folders left out) and the
    names of the other entries, which are not read."""
    images: list[Path] = []
    others: list[Path] = []
    for p in sorted(folder.iterdir(), key=lambda p: p.name):
        if p.name.startswith("."):
            continue
        (images if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES else others).append(p)
    return images, [p.name + ("/" if p.is_dir() else "") for p in others]


def run_names(images: list[Path]) -> list[str]:
    """The run folder of each image: its name without the extension, with it when two would clash."""
    stems = [p.stem for p in images]
    return [p.stem if stems.count(p.stem) == 1 else f"{p.stem}-{p.suffix.lstrip('.').lower()}" for p in images]


@dataclass
class FolderRun:
    """What became of each image: ``results`` in image order (``JobResult``: done, skipped or failed)."""

    images: list[Path]
    results: list[JobResult]
    ignored: list[str]

    @property
    def failed(self) -> list[tuple[Path, JobResult]]:
        return [(p, r) for p, r in zip(self.images, self.results) if r.status == "failed"]


def folder_jobs(req: ExploreRequest, folder: Path, out: Path,
                overwrite: bool) -> tuple[list[Path], list[Job], list[str]]:
    """One job per image of ``folder``: the request with that image, into ``out/<name>``."""
    images, ignored = image_files(folder)
    if not images:
        raise UsageError(f"{folder} holds no images (looked for {', '.join(IMAGE_SUFFIXES)} files"
                         + (f"; found {', '.join(ignored[:5])}" + (" ..." if len(ignored) > 5 else "") if ignored
                            else "") + ")")
    args = {f.name: getattr(req, f.name) for f in request_args()}
    jobs = [Job(out=(out / name).resolve(), kwargs={**args, "image": str(p)}, overwrite=overwrite)
            for p, name in zip(images, run_names(images))]
    return images, jobs, ignored


def run_folder(req: ExploreRequest, folder: Path, out: Path, *, overwrite: bool = False,
               on_image: Callable[[int, int, Path, JobResult | None], None] | None = None,
               callback: Callable[[Any], None] | None = None) -> FolderRun:
    """Run ``req`` on every image of ``folder`` into ``out`` (see the module docstring).  ``on_image(i, n,
    path, result)`` is called before each image (result None) and after it; ``callback`` gets each
    image's step progress (``textsr.api.Progress``)."""
    from .api import check_inputs
    from .model_choice import ModelChoiceError

    images, jobs, ignored = folder_jobs(req, folder, out, overwrite)
    results: list[JobResult | None] = [None] * len(jobs)
    refused, why = [], ""
    for i, job in enumerate(jobs):  # every image checked before the first runs
        if will_skip(job):
            continue
        try:
            check_inputs(ExploreRequest.build(**job.kwargs))
        except ModelChoiceError as e:
            refused.append(images[i].name)
            why = str(e)
        except UsageError as e:
            results[i] = JobResult(str(job.out), "failed", error=str(e))
    if refused:  # one message for the folder: the models to choose from
        raise UsageError(f"no model was named, and {len(refused)} of the {len(images)} images need a real one "
                         f"({', '.join(map(terminal, refused))}); nothing was run. The first: {why}")
    cache = ModelCache()
    for i, job in enumerate(jobs):
        if results[i] is None:
            if on_image is not None:
                on_image(i, len(jobs), images[i], None)
            results[i] = run_job(job, cache=cache, callback=callback)
        if on_image is not None:
            on_image(i, len(jobs), images[i], results[i])
    return FolderRun(images, [r for r in results if r is not None], ignored)

