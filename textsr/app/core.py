"""What the web app does, without gradio: offer the registry's models, check an upload, turn the
page's fields into an ``explore`` call and report its progress.

Everything here takes and returns plain data and raises ``UsageError`` with a message meant for the
person at the page; ``present.py`` shows results, ``ui.py`` lays out the page and turns errors into
``gr.Error``.
"""

from __future__ import annotations

import contextlib
import html
import logging
import re
import secrets
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..display import NO_PROMPT, prompt_label, terminal
from ..errors import InputImageError, UsageError
from ..request import ExploreRequest, expand_prompts
from .gate import FairGate

log = logging.getLogger("textsr.app")

DEFAULT_MODEL = "builtin-shapes"
RANDOM_SEED_MAX = 2**31 - 1024  # leaves room for seed + k


@dataclass(frozen=True)
class Limits:
    """What one request may ask for: the app may be shared, so each request's work is bounded."""

    max_upload_pixels: int = 1_048_576  # 1024 x 1024: the input is a *low*-resolution image
    max_output_pixels: int = 4_194_304  # 2048 x 2048 per sample
    max_prompts: int = 8
    max_samples: int = 16
    max_steps: int = 1000
    max_particles: int = 64  # particles per sample (the particle solver's work is samples x particles)
    # denoiser rows x steps per request (``request_work``): every other maximum at 100 steps, no particles
    max_work: int = 12_800

    def __post_init__(self) -> None:
        for name in ("max_upload_pixels", "max_output_pixels", "max_prompts", "max_samples", "max_steps",
                     "max_particles", "max_work"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")


# --------------------------------------------------------------------------------------------
# Models: registry names only, loaded once and shared between requests
# --------------------------------------------------------------------------------------------


def registry_names() -> list[str]:
    """Model names from the registry (``textsr.model_registry.MODELS``); the built-in model first."""
    from ..model_registry import MODELS

    names = list(MODELS)
    return sorted(names, key=lambda n: (n != DEFAULT_MODEL, names.index(n)))


class ModelPool:
    """The models the page offers, by name. Nothing but these names reaches ``load_model``: a request
    cannot name a path. ``choices`` may map a name to a loaded ``Backend`` or a zero-argument factory
    (tests, embedding applications); plain names go through the registry. At most ``keep`` models
    stay loaded (least recently used is dropped)."""

    def __init__(self, choices: Sequence[str] | Mapping[str, Any] | None = None, keep: int = 2):
        if choices is None:
            choices = registry_names()
        if isinstance(choices, Mapping):
            self._entries = dict(choices)
        else:
            known = registry_names()
            unknown = [n for n in choices if n not in known]
            if unknown:
                raise ValueError(f"the app offers registry models only; unknown: {unknown}; known: {known}")
            self._entries = {str(n): str(n) for n in choices}
        if not self._entries:
            raise ValueError("the app needs at least one model to offer")
        self._keep = keep
        self._loaded: OrderedDict[tuple, Any] = OrderedDict()
        self._lock = threading.Lock()
        self._name_locks = {n: threading.Lock() for n in self._entries}

    @property
    def names(self) -> list[str]:
        return list(self._entries)

    def choices(self) -> list[tuple[str, str]]:
        """(label, name) pairs for the page: registry models whose weights are not in the local cache
        say so (choosing one gives the download instructions)."""
        cached = {}
        try:
            from ..model_registry import model_table

            cached = {r["name"]: r.get("cached") for r in model_table()}
        except Exception as e:  # the labels are a convenience: never block the page on them
            log.warning("could not read the model cache status: %s", e)
        return [(n + (" (weights not cached)" if cached.get(n) is False else ""), n) for n in self._entries]

    @property
    def default(self) -> str:
        return DEFAULT_MODEL if DEFAULT_MODEL in self._entries else self.names[0]

    def get(self, name: str, load: Mapping[str, Any] | None = None) -> Any:
        """Model ``name`` loaded with the memory options ``load`` (``textsr.request.MEMORY_OPTIONS``)."""
        if name not in self._entries:
            raise UsageError(f"unknown model {name!r}; choose one of: {', '.join(self.names)}")
        key = (name, tuple(sorted((load or {}).items())))
        with self._name_locks[name]:  # two requests for one model load it once
            with self._lock:
                if key in self._loaded:
                    self._loaded.move_to_end(key)
                    return self._loaded[key]
            backend = self._load(name, dict(load or {}))
            with self._lock:
                self._loaded[key] = backend
                while len(self._loaded) > self._keep:
                    self._loaded.popitem(last=False)
            return backend

    def _load(self, name: str, load: dict) -> Any:
        from ..backends.base import Backend

        entry = self._entries[name]
        if isinstance(entry, Backend) or callable(entry):
            if load:
                raise UsageError(f"the model {name!r} is loaded when this app starts; memory options "
                                 f"{sorted(load)} do not apply to it")
            return entry if isinstance(entry, Backend) else entry()
        from ..device import resolve_device, resolve_dtype
        from ..model_registry import load_model

        dev = resolve_device(None)
        return load_model(entry, device=dev, dtype=resolve_dtype(None, dev), load=load)


# --------------------------------------------------------------------------------------------
# Input
# --------------------------------------------------------------------------------------------


def load_upload(path: str | Path, limits: Limits) -> tuple[np.ndarray, list[str]]:
    """An uploaded file -> (h, w, 3) float32 in [0, 1] and notes. Errors name the file as the person
    uploaded it, not the server's temporary path."""
    from ..io import load_image

    p = Path(path)
    size = _header_size(p)
    if size is not None and size[0] * size[1] > limits.max_upload_pixels:
        w, h = size
        raise InputImageError(
            f"{p.name}: the image is {w}x{h} = {w * h:,} pixels, more than the limit of "
            f"{limits.max_upload_pixels:,} of this app. textsr super-resolves *low*-resolution images: "
            "downscale or crop it and upload it again.")
    try:
        li = load_image(p, max_pixels=limits.max_upload_pixels)
    except InputImageError as e:
        raise InputImageError(str(e).replace(terminal(p), terminal(p.name))) from None
    return li.array, list(li.notes)


def _header_size(p: Path) -> tuple[int, int] | None:
    """(width, height) from the file header without decoding; None when Pillow cannot tell (then
    ``load_image`` reports what is wrong)."""
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(p) as im:
                return im.width, im.height
    except Image.DecompressionBombError as e:
        raise InputImageError(f"{p.name}: the image is far too large ({e}). textsr super-resolves "
                              "*low*-resolution images: downscale or crop it and upload it again.") from None
    except Exception:  # noqa: BLE001 - unreadable files get load_image's precise message
        return None


def check_request_size(lr_hw: tuple[int, int], scale: int, samples: int, n_prompts: int, limits: Limits) -> None:
    h, w = lr_hw
    if not 1 <= samples <= limits.max_samples:
        raise UsageError(f"samples must be from 1 to {limits.max_samples} on this server, got {samples}")
    if n_prompts > limits.max_prompts:
        raise UsageError(f"{n_prompts} prompts: this server takes at most {limits.max_prompts} per run; "
                         "remove some or split the sweep")
    if h * scale * w * scale > limits.max_output_pixels:
        raise UsageError(
            f"the output would be {w * scale}x{h * scale} = {h * w * scale * scale:,} pixels per sample, more than "
            f"this server's limit of {limits.max_output_pixels:,}: use a smaller scale or a smaller input")


def request_work(req: ExploreRequest, steps: int) -> int:
    """The work ``req`` asks for, in denoiser rows x steps: samples x prompts x max(1, particles) x steps
    (all stages' steps) x time-travel passes. Memory per batch is checked by the engine; this bounds time."""
    passes = req.travel[1] if req.travel else 1
    return req.samples * len(req.all_prompts) * max(1, req.particles or 0) * steps * passes


def check_work(req: ExploreRequest, steps: int, limits: Limits) -> int:
    """``request_work`` or ``UsageError`` naming the limit and what to lower; run before any work."""
    work = request_work(req, steps)
    if work > limits.max_work:
        per_sample = work // req.samples
        fits = limits.max_work // per_sample
        factors = [f"{req.samples} samples", f"{len(req.all_prompts)} prompt(s)"]
        factors += [f"{req.particles} particles"] if req.particles else []
        factors += [f"{steps} steps"] + ([f"{req.travel[1]} time-travel passes"] if req.travel else [])
        raise UsageError(
            f"this request asks for {' x '.join(factors)} = {work:,} denoiser evaluations, more "
            f"than this server's limit of {limits.max_work:,} per request: lower the samples"
            + (f" (at most {fits} with these settings)" if fits else "") + ", the particles, the prompts or the steps")
    return work


def model_steps(req: ExploreRequest, backend: Any) -> int:
    """The steps the request runs on ``backend``: the request's per stage, else each stage's default."""
    from ..solver_registry import make_config

    stages = backend.build_stages(req.solver_name, req.engine_solver_options(), dict(req.model_options))
    if req.steps is not None:
        return req.steps * len(stages)
    return sum((st.solver or make_config(req.solver_name)).steps for st in stages)


_MD_SPECIAL = re.compile(r"([!-/:-@\[-`{-~])")  # every ASCII punctuation character


def md_text(text: Any) -> str:
    """``text`` as Markdown that shows it literally: every ASCII punctuation character is
    backslash-escaped (CommonMark), so no tag, entity, link, emphasis, table pipe or math delimiter
    survives; line breaks become spaces. Everything a person typed or uploaded goes through this
    before it reaches a ``gr.Markdown``."""
    return _MD_SPECIAL.sub(r"\\\1", " ".join(str(text).splitlines()))


def md_lines(text: Any) -> str:
    """``text`` as literal Markdown (``md_text``) line by line, its line breaks kept (hard breaks)."""
    return "  \n".join(md_text(line) for line in str(text).splitlines())


def html_text(text: Any) -> str:
    """``text`` for places that render HTML (gradio's error pop-ups)."""
    return html.escape(str(text), quote=True)


def describe_input(lr: np.ndarray, scale: int | None, notes: Sequence[str] = ()) -> str:
    h, w = lr.shape[:2]
    out = f"Input: **{w}×{h}** pixels"
    if scale:
        out += f" · at ×{scale} the samples are **{w * scale}×{h * scale}**"
    for n in notes:
        out += f"\n\n*note: {md_text(n)}*"
    return out


def parse_prompts(text: str | None) -> list[str]:
    """One prompt per line; blank lines are dropped; a line ``(no prompt)`` is the unconditional run
    (also what no prompts at all give)."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return ["" if line.lower() == NO_PROMPT else line for line in lines]


def sweep_preview(prompts_text: str | None, template: str | None, values: str | None) -> str:
    """The prompt list a run would use, in words (or what is wrong with the sweep)."""
    try:
        prompts = expand_prompts(parse_prompts(prompts_text), **_sweep_args(template, values))
    except UsageError as e:
        return f"⚠ {md_text(e)}"
    shown = ", ".join(md_text(repr(p)) if p else md_text(f"{NO_PROMPT} (unconditional)") for p in prompts)
    return f"{len(prompts)} prompt{'s' if len(prompts) != 1 else ''}: {shown}"


def _sweep_args(template: str | None, values: str | None) -> dict[str, str | None]:
    return {"template": (template or "").strip() or None, "values": (values or "").strip() or None}


def choose_seed(seed: Any, randomize: bool) -> int:
    if randomize:
        return secrets.randbelow(RANDOM_SEED_MAX)
    try:
        s = int(seed)
    except (TypeError, ValueError):
        raise UsageError(f"the seed must be a whole number, got {seed!r}") from None
    if not 0 <= s <= RANDOM_SEED_MAX:
        raise UsageError(f"the seed must be from 0 to {RANDOM_SEED_MAX}, got {s}")
    return s


# --------------------------------------------------------------------------------------------
# A run
# --------------------------------------------------------------------------------------------


def page_request(lr: np.ndarray, prompts_text: str | None, *, template: str | None, values: str | None, model: str,
                 solver: str, particles: int | None = None, **args: Any) -> tuple[ExploreRequest, list[str]]:
    """The page's fields as an ``ExploreRequest`` (the one every front end builds), plus notes: with
    particles the particle solver tds runs, and the note says so when another solver was chosen."""
    from ..solver_registry import canonical_name, config_class

    notes = []
    if particles:
        try:
            name = canonical_name(solver)
        except ValueError as e:
            raise UsageError(str(e)) from None
        if not config_class(name).takes_particles:
            notes.append(f"particles: the particle solver tds ran instead of {name} (which keeps one sample per seed)")
            solver = "tds"
    req = ExploreRequest.build(image=lr, prompts=parse_prompts(prompts_text), model=model, solver=solver,
                               particles=particles or None, **_sweep_args(template, values), **args)
    return req, notes


def run_request(req: ExploreRequest, pool: ModelPool, limits: Limits, callback: Callable | None = None,
                notes: Sequence[str] = (), gate: FairGate | None = None, client: str = ""):
    """Run a page's request within this server's ``limits`` on the pool's model; returns the
    ``Exploration`` with ``notes`` (the input's, the page's) first. With a ``gate`` the request waits
    for its turn as ``client`` (``gate.FairGate``) and stops at its deadline."""
    from ..api import explore_request

    lr = np.asarray(req.image)
    check_request_size(lr.shape[:2], req.scale, req.samples, len(req.all_prompts), limits)
    if req.steps is not None and req.steps > limits.max_steps:
        raise UsageError(f"steps must be from 1 to {limits.max_steps}, got {req.steps}")
    if req.particles is not None and req.particles > limits.max_particles:
        raise UsageError(f"particles must be from 0 (off) to {limits.max_particles}, got {req.particles}")
    stated = check_work(req, req.steps or 1, limits)  # what the request states: refused before it waits
    with gate.enter(client, stated) if gate is not None else contextlib.nullcontext() as ticket:
        backend = pool.get(str(req.model), req.load_options())
        check_work(req, model_steps(req, backend), limits)  # with the steps it runs (the model's defaults)

        def step(p) -> None:
            if ticket is not None:
                ticket.check()
            if callback is not None:
                callback(p)

        result = explore_request(req.with_model(backend), callback=step)
    result.notes[:0] = list(notes)
    return result


def progress_text(p) -> str:
    label = prompt_label(p.prompt)
    stage = f" · stage {p.stage}" if p.stages > 1 else ""
    return f"prompt {p.prompt_index + 1}/{p.prompts} {label[:40]!r}{stage} · step {p.step}/{p.total}"


# --------------------------------------------------------------------------------------------
# The demo scene
# --------------------------------------------------------------------------------------------


def demo_scene() -> dict:
    """The CLI demo's input and settings (``textsr.demo.demo_kwargs``): image (LR array), prompts,
    scale, steps, model, solver."""
    try:
        from ..demo import demo_kwargs
    except ImportError as e:
        raise UsageError(f"the demo scene is not available in this installation ({e})") from None
    kw = demo_kwargs(Path(tempfile.gettempdir()) / "textsr-demo")  # builds arguments only, writes nothing
    return {**kw, "image": np.asarray(kw["image"], dtype=np.float32)}


def prompts_text(prompts: Sequence[str]) -> str:
    """The inverse of ``parse_prompts``."""
    return "\n".join(p if p else NO_PROMPT for p in prompts)
