"""The one entry point that the CLI, the web app and the batch runner call.

``explore(image, prompts, scale=..., model=..., solver=..., samples=..., seed=...)`` returns an
``Exploration`` (``textsr.exploration``): samples per prompt with their seeds, per-sample metrics,
per-prompt uncertainty maps, timings and every setting; ``.save(directory)`` writes the output folder
(docs/outputs.md, "Outputs: the run folder and results.json").  Nothing here knows about terminals or
web pages.

``explore`` runs in named phases, each a function below:

1. ``check_inputs``: an ``ExploreRequest`` (``textsr.request``: the arguments, each checked when it is
   built) checked against the world before any model is loaded -> ``CheckedRequest``;
2. ``resolve_backend``: a loaded ``Backend`` (``textsr.backends.base``) from a name, folder or object;
   ``apply_preset``: the preset (``textsr.presets``), if any, merged under the explicit options;
3. ``build_measurement``: the LR image -> ``y`` in model space, the final operator, notes;
   ``check_particles`` and ``check_memory``: a request that cannot fit is refused before any sampling;
4. ``sample_prompt`` for each prompt: the backend's cascade, then the per-sample metrics;
5. ``collect_settings``: the resolved settings of the run (``ExploreSettings``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import validate
from .errors import UsageError
from .exploration import Exploration, ExploreSettings, InputInfo, Progress, PromptResult
from .request import ExploreRequest, expand_prompts, is_backend
from .tiling import checks as tile_checks

__all__ = ["CheckedRequest", "Exploration", "ExploreRequest", "Progress", "PromptResult", "expand_prompts", "explore",
           "explore_request", "request_budget"]  # ranking prompts by P(prompt | y): textsr.ranking

MAX_SAMPLES = validate.MAX_SAMPLES
MAX_PARTICLES = validate.MAX_PARTICLES


# ------------------------------------------------------------------------------------------------
# phase 1: inputs
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CheckedRequest:
    """An ``ExploreRequest`` after phase 1: the image read, the model named (the built-in world chosen
    when none was given and it explains the input), and what phase 2 (the preset) resolves."""

    request: ExploreRequest
    image: tuple[np.ndarray, InputInfo, tuple[str, ...]]  # (h, w, C) in [0, 1], where from, notes
    model: Any  # a registry name, folder, spec file or a loaded Backend
    operator: str | None  # None: the preset's (after apply_preset), else avgpool
    operator_options: dict
    solver_options: dict  # the engine's: the request's shorthands (steps, eta, travel ...) written in
    model_options: dict
    tile: Any = None  # textsr.tiling.TileRequest (off unless asked)

    @property
    def operator_name(self) -> str:
        """The operator's name once ``apply_preset`` has resolved it."""
        if self.operator is None:
            raise RuntimeError("the operator is resolved by apply_preset (phase 2b) before it is used")
        return self.operator

    def make_operator(self, factor: int, shape: tuple[int, ...]) -> Any:
        """The run's operator at ``factor`` (a cascade stage's, or the final one) for images of ``shape``."""
        from .operators import make_operator

        return make_operator(self.operator_name, factor, shape, **self.operator_options)

    # the request's values the phases read
    prompts = property(lambda self: list(self.request.all_prompts))
    solver = property(lambda self: self.request.solver_name)
    scale = property(lambda self: self.request.scale)
    samples = property(lambda self: self.request.samples)
    seed = property(lambda self: self.request.seed)
    seeds = property(lambda self: self.request.seeds)
    sigma_y = property(lambda self: self.request.sigma_y)
    simulate = property(lambda self: self.request.simulate)
    preset = property(lambda self: self.request.preset)
    prompt_prior = property(lambda self: self.request.prompt_prior)
    batch_size = property(lambda self: self.request.batch_size or self.request.samples)


def check_inputs(req: ExploreRequest) -> CheckedRequest:
    """Phase 1: everything that can be checked before a model loads or sampling starts (the fields
    themselves are checked when the ``ExploreRequest`` is built): the image is read (an unreadable file
    or a bad array fails here), the model is named (none named: the built-in world if it explains the
    input, ``textsr.model_choice``) and a preset checked against its backend (from its spec, no weights
    loaded), memory options are refused for an already loaded model."""
    from .model_choice import default_model
    from .presets import check_preset

    arr, info, notes = _as_array(req.image, req.max_pixels)  # read and checked now, before the model loads
    model = req.model
    if model is None:
        if req.preset is not None:  # a preset names the models it fits: say so before looking at the input
            check_preset(req.preset, "shapes")
        model, why = default_model(arr, req)
        notes.append(why)
    elif not is_backend(model):
        from .model_registry import MODELS, check_model

        rule = MODELS[model].sizes if isinstance(model, str) and model in MODELS else None
        if rule is not None and req.tile_request().tile == "off":
            # an output this model cannot make whole is refused before it is looked for or loaded (with --tile
            # the loaded backend's check_tiling decides)
            h, w = arr.shape[:2]
            rule.check((h // req.scale, w // req.scale) if req.simulate else (h, w), req.scale, model)
        check_model(model)  # an unknown name, folder or spec, or weights that cannot be had, fail now
    if req.preset is not None:
        check_preset(req.preset, model_backend(model))
    if is_backend(req.model) and req.load_options():
        raise UsageError(f"memory options {sorted(req.load_options())} apply when textsr loads the model; this "
                         "model is already loaded: pass them to load_model(..., load={...}) instead")
    operator_options = {}
    if req.operator is not None:
        from .operator_registry import check_operator

        operator_options = check_operator(req.operator, req.operator_options)[1]
    return CheckedRequest(request=req, image=(arr, info, tuple(notes)), model=model, operator=req.operator,
                          operator_options=operator_options, solver_options=req.engine_solver_options(),
                          model_options=dict(req.model_options),
                          tile=req.tile_request())


def model_backend(model: Any) -> str:
    """The backend kind (``"deepfloyd-if"`` ...) of a loaded backend, registry name, folder or spec,
    read from its spec (no weights loaded)."""
    from .model_registry import resolve_spec

    if is_backend(model):
        return model.info.backend
    return str(resolve_spec(model)["backend"])


# ------------------------------------------------------------------------------------------------
# phase 2: the model
# ------------------------------------------------------------------------------------------------
def resolve_backend(req: CheckedRequest) -> Any:
    """Phase 2: ``req.model`` as a loaded ``Backend`` (an already loaded one is used as is), loaded with
    the request's device, dtype and memory options."""
    from .device import resolve_device, resolve_dtype
    from .model_registry import load_model

    if is_backend(req.model):
        return req.model
    r = req.request
    dev = resolve_device(r.device)
    return load_model(req.model, device=dev, dtype=resolve_dtype(r.dtype, dev), load=r.load_options())


def apply_preset(req: CheckedRequest, backend: Any) -> CheckedRequest:
    """Phase 2b: the operator and the solver and model options the run uses: ``req.preset`` (if any)
    under the explicit ones, for this backend's stages (``textsr.presets``)."""
    from .operator_registry import check_operator
    from .presets import resolve_preset

    r = resolve_preset(req.preset, backend=backend.describe()["backend"], solver=req.solver, operator=req.operator,
                       solver_options=req.solver_options, model_options=req.model_options,
                       stages=backend.stage_names)
    return replace(req, operator=r.operator, operator_options=check_operator(r.operator, req.operator_options)[1],
                   solver_options=r.solver_options, model_options=r.model_options)


# ------------------------------------------------------------------------------------------------
# phase 3: the measurement
# ------------------------------------------------------------------------------------------------
@dataclass
class Measurement:
    """The LR input in model space: ``y = A x + sigma_y n`` with ``A = operator`` (the final one)."""

    lr: np.ndarray  # (h, w, C) in [0, 1]: what the model explains (after prepare_input / simulation)
    y: torch.Tensor  # (1, C, h, w) in [-1, 1], on the backend's device in its work dtype
    operator: Any  # LinearOperator from the output size to the LR size
    input: InputInfo
    notes: list[str] = field(default_factory=list)
    reference: np.ndarray | None = None  # the HR original (simulation mode)
    tiling: Any = None  # textsr.tiling.Tiling of a tiled run (None: whole images)

    @property
    def lr_hw(self) -> tuple[int, int]:
        return self.lr.shape[0], self.lr.shape[1]


def _as_array(image: Any, max_pixels: int) -> tuple[np.ndarray, InputInfo, list[str]]:
    """Image input -> (h, w, C) float32 in [0, 1], input description, notes. Arrays and tensors:
    ``textsr.validate.image_array`` (CHW and HWC, see there)."""
    if isinstance(image, (str, Path)):
        from .io import load_image

        li = load_image(image, max_pixels=max_pixels)
        h, w, c = li.array.shape
        return li.array, InputInfo(str(image), w, h, c), list(li.notes)
    from PIL import Image

    if isinstance(image, Image.Image):  # not duck-typed: a torch tensor has .mode and .size too
        from .io import pil_to_array

        arr, notes = pil_to_array(image)
        return arr, InputInfo(None, arr.shape[1], arr.shape[0], arr.shape[2]), notes
    arr = validate.image_array(image)
    if arr.shape[0] * arr.shape[1] > max_pixels:
        raise UsageError(f"the image is {arr.shape[1]}x{arr.shape[0]} = {arr.shape[0] * arr.shape[1]:,} pixels, more "
                         f"than max_pixels = {max_pixels:,}; this tool super-resolves low-resolution images")
    return arr, InputInfo(None, arr.shape[1], arr.shape[0], arr.shape[2]), []


def _fit_channels(arr: np.ndarray, channels: int, notes: list[str]) -> np.ndarray:
    if arr.shape[2] == channels:
        return arr
    if arr.shape[2] == 1 and channels == 3:
        notes.append("grayscale input replicated to 3 channels for the model")
        return np.repeat(arr, 3, axis=2)
    if arr.shape[2] == 3 and channels == 1:
        notes.append("colour input converted to grayscale for a 1-channel model")
        return (arr @ np.array([0.299, 0.587, 0.114], dtype=np.float32))[:, :, None]
    raise UsageError(f"cannot feed a {arr.shape[2]}-channel image to a {channels}-channel model")


def _simulate(arr: np.ndarray, req: CheckedRequest, notes: list[str]) -> np.ndarray:
    """Simulation mode: the HR original -> its LR image by ``req.operator`` (+ ``sigma_y`` noise)."""
    from .io import check_scale

    h, w = arr.shape[:2]
    check_scale(h, w, req.scale)
    x_hr = torch.from_numpy(arr).permute(2, 0, 1)[None].double() * 2 - 1
    y = req.make_operator(req.scale, tuple(x_hr.shape[1:])).A(x_hr)
    if req.sigma_y > 0:
        gen = torch.Generator().manual_seed(req.seed + 10_007)
        y = y + req.sigma_y * torch.randn(y.shape, generator=gen, dtype=torch.float64)
    lr = ((y[0].permute(1, 2, 0).numpy() + 1) / 2).clip(0, 1).astype(np.float32)
    notes.append(f"simulation: the input was downsampled {req.scale}x ({req.operator}) to {lr.shape[1]}x{lr.shape[0]}"
                 + (f" with noise sigma_y={req.sigma_y}" if req.sigma_y > 0 else ""))
    return lr


def build_measurement(req: CheckedRequest, backend: Any) -> Measurement:
    """Phase 3: read the image, fit it to the model (channels, size), check the size, build ``y`` and
    the final operator ``A`` (output size -> LR size)."""
    arr, info, notes = req.image[0], req.image[1], list(req.image[2])
    arr = _fit_channels(arr, backend.channels, notes)
    reference = None
    if req.simulate:
        reference = arr
        arr = _simulate(arr, req, notes)
    else:
        arr, more = backend.prepare_input(arr, req.scale)
        notes.extend(more)
    h, w = arr.shape[:2]
    tiling, tile_notes = tile_checks.plan(req.tile, backend, (h, w), req.scale)  # check_size, or check_tiling
    notes.extend(tile_notes if tiling is not None else backend.input_notes((h, w), req.scale))
    y = torch.from_numpy(arr).permute(2, 0, 1)[None].to(torch.float32) * 2 - 1
    operator = req.make_operator(req.scale, (backend.channels, h * req.scale, w * req.scale))
    return Measurement(lr=arr, y=y.to(backend.device, backend.work_dtype), operator=operator, input=info,
                       notes=notes, reference=reference, tiling=tiling)


def check_particles(req: CheckedRequest, backend: Any, meas: Measurement, stages: list, base_cfg: Any) -> int | None:
    """Phase 3b: a particle run's particles per denoiser call (``textsr.solvers.budget``), refused before any
    sampling when the particles' state cannot fit in the memory available; None for the other solvers."""
    from .solvers.budget import check_particle_memory

    if not any((st.solver or base_cfg).takes_particles for st in stages):
        return None
    size = run_size(req, backend, meas, stages, base_cfg)
    check_particle_memory(size, backend.device)
    return size.max_rows


def run_size(req: CheckedRequest, backend: Any, meas: Measurement, stages: list, base_cfg: Any) -> Any:
    """The ``textsr.solvers.budget.ParticleRequest`` of a run: its stages' shapes and steps, samples, batch
    size, particles (1 without the particle solver), prompts and the backend's value size."""
    from .solvers.budget import stages_request

    return stages_request(stages, base_cfg, meas.lr_hw, req.scale, req.samples, req.request.batch_size,
                          torch.finfo(backend.work_dtype).bits // 8, prompts=len(req.prompts))


def request_budget(request: ExploreRequest) -> Any:
    """What ``request`` (an exploration's) will ask of the machine, known before any sampling: a
    ``textsr.solvers.budget.ParticleRequest`` with the particles held at once (``held``: batch size x
    particles), their state's bytes (``state_bytes``), the images through the denoiser per prompt and in all
    (``denoiser_evaluations``, ``total_evaluations``: samples x particles x steps over the stages, x prompts)
    and per call (``max_rows``).  Phases 1-3 run (the image read, the model loaded, or the given ``Backend``
    used, the stages built), no sampling: a front end caps a request's work with it (the web app), and
    ``textsr.solvers.budget.check_particle_memory(size, device)`` refuses one whose state cannot fit."""
    req = check_inputs(request)
    backend = resolve_backend(req)
    req, meas, stages, base_cfg = build_run(req, backend)
    return run_size(req, backend, meas, stages, base_cfg)


def build_run(req: CheckedRequest, backend: Any) -> tuple[CheckedRequest, Measurement, list, Any]:
    """Phases 2b-3 on a resolved backend: the preset applied, the measurement, the stages (which do not
    depend on the prompt: its conditioning is passed to the cascade per prompt) and the solver config of
    the stages without their own."""
    from .solver_registry import make_config

    req = apply_preset(req, backend)
    meas = build_measurement(req, backend)
    tiled = {"tiling": meas.tiling} if meas.tiling is not None else {}
    stages = backend.build_stages(req.solver, req.solver_options, req.model_options, **tiled)
    return req, meas, stages, make_config(req.solver)


def check_memory(req: CheckedRequest, backend: Any, meas: Measurement, stages: list,
                 max_rows: int | None = None) -> Any:
    """Phase 3c (docs/tiling.md, "Memory"): the estimated peak memory of one batch, whole and on windows,
    refused before any sampling when it cannot fit in what the device has free.  Estimated for tiled
    runs, outputs larger than the model makes and CUDA devices (a CPU run at the model's size is not
    traced: it costs a second per run); the estimate goes to the notes and results.json."""
    native = backend.native_output()
    output = (meas.lr_hw[0] * req.scale, meas.lr_hw[1] * req.scale)
    larger = native is not None and (output[0] > native[0] or output[1] > native[1])
    if meas.tiling is None and not larger and torch.device(backend.device).type != "cuda":
        return None
    from .solver_registry import make_config

    cfgs = [st.solver for st in stages if st.solver is not None] or [make_config(req.solver)]
    rows = min(req.batch_size, req.samples) * max(int(getattr(c, "particles", 1) or 1) for c in cfgs)
    rows = rows if max_rows is None else min(rows, max_rows)  # a particle run's denoiser calls (check_particles)
    est = tile_checks.check_memory(backend, meas.lr_hw, req.scale, meas.tiling, rows,
                                   grad=any(c.needs_grad for c in cfgs), device=torch.device(backend.device))
    if est is not None:
        meas.notes.append(est.summary())
    return est


# ------------------------------------------------------------------------------------------------
# phase 4: sampling, per prompt
# ------------------------------------------------------------------------------------------------
def lr_psnr(x: torch.Tensor, y: torch.Tensor, operator) -> list[float]:
    """PSNR between A x and y on [0, 1] images, per sample (inf when exact)."""
    from .metrics import lr_psnr as psnr

    return [float(v) for v in psnr(x.to(torch.float64), y.to(torch.float64), operator).tolist()]


def diversity(samples01: np.ndarray) -> tuple[dict, np.ndarray]:
    """Mean pairwise RMS distance between samples ([0, 1] units), per-pixel std map and its mean
    (``textsr.metrics.sample_diversity``: memory linear in the number of samples)."""
    from .metrics import sample_diversity

    return sample_diversity(samples01)


def _progress_callback(callback: Callable[[Progress], None] | None, stages: list, index: int, total: int,
                       prompt: str) -> Callable | None:
    """The solver loop's ``StepInfo`` -> ``Progress`` for the caller."""
    if callback is None:
        return None
    names = [s.name for s in stages]

    def cb(info) -> None:
        k = names.index(info.stage) if info.stage in names else 0
        callback(Progress(index, total, prompt, info.stage, info.index + 1, info.total, k, len(stages)))

    return cb


def sample_prompt(req: CheckedRequest, backend: Any, meas: Measurement, stages: list, base_cfg: Any,
                  index: int, prompt: str, callback: Callable[[Progress], None] | None = None,
                  max_rows: int | None = None) -> PromptResult:
    """Phase 4: ``req.samples`` samples for one prompt (in batches of ``req.batch_size``), then the
    per-sample metrics.  Adds notes to ``meas.notes``.  ``max_rows``: a particle solver's particles per
    denoiser call (``textsr.solvers.budget``)."""
    from .cascade import run_cascade

    t0 = time.perf_counter()
    cond = backend.encode_prompt(prompt)
    meas.notes.extend(backend.prompt_notes(prompt))
    cb = _progress_callback(callback, stages, index, len(req.prompts), prompt)
    seeds = req.seeds
    xs, befores, log_z, ess = [], [], [], []
    for b0 in range(0, req.samples, req.batch_size):
        res = run_cascade(stages, meas.y, req.scale, base_cfg, seeds[b0:b0 + req.batch_size], cond,
                          sigma_y=req.sigma_y, operator=req.make_operator,
                          device=backend.device, dtype=backend.work_dtype, callback=cb,
                          max_rows=max_rows)
        fin = backend.finish(res.x, meas.y, res.operators[-1])  # the last stage's operator (a tiled codec)
        xs.append(fin.x.detach())
        befores.append(fin.before_projection)
        if res.log_evidence is not None and res.stage_ess[0] is not None:
            log_z.append(res.log_evidence)
            ess.append(res.stage_ess[0])
    steps_ran = tuple(res.steps)
    x = torch.cat(xs)
    psnr = lr_psnr(x, meas.y, meas.operator)  # the solver's consistency, before display clipping
    projection = None if any(b is None for b in befores) else projection_record(torch.cat(befores), x, meas)
    outside = int(((x.abs() > 1 + 1e-3).flatten(1).any(1)).sum())
    if outside:
        meas.notes.append(f"prompt {prompt!r}: {outside} of {req.samples} samples had values outside the image "
                          "range; the PNGs are clipped (LR-PSNR is measured before clipping)")
    x = x.clamp(-1, 1)
    scores = backend.text_scores(x, prompt)
    text: list[float | None] = [None] * req.samples if scores is None else [float(s) for s in scores.tolist()]
    samples01 = ((x.to(torch.float32).cpu().permute(0, 2, 3, 1).numpy() + 1) / 2).clip(0, 1)
    div, std = diversity(samples01)
    extra = backend.exact_metrics(x, meas.y, meas.operator, prompt, req.sigma_y)
    evidence = None
    if log_z:
        evidence = prompt_evidence(torch.cat(log_z), torch.cat(ess, dim=1), stages, backend, req)
        if evidence.ess_min < 0.1 + 1.0 / evidence.particles:
            meas.notes.append(f"prompt {prompt!r}: the particles' effective sample size fell to {evidence.ess_min:.2f} "
                              "of N; the evidence and the sample frequencies are unreliable (more particles, or a "
                              "smaller measurement)")
    return PromptResult(prompt, samples01, seeds, psnr, text, std, div, time.perf_counter() - t0,
                        backend.prompt_tags(prompt), extra, steps_ran, evidence, projection)


def projection_record(before: torch.Tensor, after: torch.Tensor, meas: Measurement) -> dict:
    """What a backend's final pixel projection changed, per sample: the LR-PSNR before it and the size of
    the correction ``after - before`` (RMS and max, [0, 1] units) -- how far the model's answer was from ``y``."""
    d = ((after.to(torch.float64) - before.to(after.device, torch.float64)) / 2).flatten(1)
    return {"lr_psnr_before": lr_psnr(before.to(after.device), meas.y, meas.operator),
            "correction_rms": [float(v) for v in d.square().mean(1).sqrt().tolist()],
            "correction_max": [float(v) for v in d.abs().amax(1).tolist()]}


def prompt_evidence(log_z: torch.Tensor, ess: torch.Tensor, stages: list, backend: Any, req: CheckedRequest):
    """The first stage's per-sample ``log Z_hat`` -> ``PromptEvidence`` (probability filled in later)."""
    from .evidence import PromptEvidence, combine

    lz, spread = combine(log_z)
    guidance = backend.tilting_options(req.model_options)
    particles = int(req.solver_options.get("particles") or stages[0].solver.particles)
    return PromptEvidence(log_z=lz, log_z_samples=[float(v) for v in log_z.tolist()], spread=spread,
                          particles=particles, ess_min=float(ess.min()), stage=stages[0].name,
                          calibrated=not guidance, guidance=guidance)


def fill_probabilities(results: list[PromptResult], prior: Sequence[float] | None) -> None:
    """``P(prompt | y)`` among the prompts of the run, from their evidence (particle solvers only)."""
    from .evidence import check_prior, prompt_probabilities

    if not results or any(r.evidence is None for r in results):
        return
    pi = check_prior(prior, len(results))
    for r, p, q in zip(results, prompt_probabilities([r.evidence.log_z for r in results], pi), pi):
        r.evidence.probability, r.evidence.prior = p, q


# ------------------------------------------------------------------------------------------------
# phase 5: settings
# ------------------------------------------------------------------------------------------------
def collect_settings(req: CheckedRequest, backend: Any, meas: Measurement, stages: list,
                     base_cfg: Any, steps_ran: Sequence[int] = (), memory: Any = None) -> ExploreSettings:
    """Phase 5: what ran: each stage's solver config with the steps it ran (``steps_ran``; a request the
    schedule could not honour is kept as ``steps_requested`` and noted in ``meas.notes``) and the time
    travel it did; the top-level solver block holds what every stage ran (a list where they differ)."""
    per_stage = tuple({"stage": s.name, **(s.solver or base_cfg).to_dict(),
                       **({"model_options": dict(s.extra)} if s.extra else {})} for s in stages)
    meas.notes.extend(record_steps_ran(per_stage, steps_ran))
    meas.notes.extend(record_travel(per_stage))
    solver = common_settings(per_stage)
    if any("steps_requested" in st for st in per_stage):
        solver["steps_requested"] = req.solver_options.get("steps")
    return ExploreSettings(
        input=meas.input, model=backend.describe(), solver=solver, stages=per_stage, operator=req.operator_name,
        operator_options=dict(req.operator_options),
        sigma_y=req.sigma_y, seed=req.seed, samples=req.samples, model_options=dict(req.model_options),
        device=str(backend.device), dtype=str(backend.dtype).replace("torch.", ""), preset=req.preset,
        tiling=tiling_record(req, meas, memory))


def tiling_record(req: CheckedRequest, meas: Measurement, memory: Any) -> dict | None:
    """results.json ``tiling``: the request, whether windows ran, and the memory estimate."""
    if not req.tile.on and memory is None:
        return None
    return {"request": req.tile.to_dict(), "tiled": meas.tiling is not None,
            "memory": None if memory is None else memory.to_dict()}


def common_settings(per_stage: Sequence[dict]) -> dict:
    """The top-level solver block of results.json: each setting the stages ran, one value where every
    stage ran the same, else the list of the stages' values."""
    out: dict[str, Any] = {}
    for key in dict.fromkeys(k for st in per_stage for k in st):
        if key in ("stage", "model_options", "steps_requested", "travel_requested"):
            continue
        vals = [st.get(key) for st in per_stage]
        out[key] = vals[0] if all(v == vals[0] for v in vals) else vals
    return out


def record_steps_ran(per_stage: Sequence[dict], ran: Sequence[int]) -> list[str]:
    """Write the steps each stage ran into ``per_stage``, keeping the request as ``steps_requested``;
    returns a note for each clamped stage."""
    notes = []
    for st, n in zip(per_stage, ran):
        if st.get("steps") != n:
            notes.append(f"stage {st['stage']}: {st.get('steps')} steps requested, but its schedule (and start) allow "
                         f"{n}: ran {n}")
            st["steps_requested"], st["steps"] = st.get("steps"), n
    return notes


def record_travel(per_stage: Sequence[dict]) -> list[str]:
    """Time-travel as it ran (``textsr.schedule.travel_schedule`` over the steps the stage ran): each
    stage's ``transitions`` (steps taken, jumps back included); a stage too short for one jump back of
    ``travel_length`` ran none, and records ``travel_repeat = 1`` with the request as ``travel_requested``."""
    from .schedule import travel_schedule

    notes = []
    for st in per_stage:
        length, repeat, n = st.get("travel_length", 1), st.get("travel_repeat", 1), st.get("steps")
        if repeat == 1 or not isinstance(n, int):
            continue
        if length >= n:
            notes.append(f"stage {st['stage']}: time-travel of {length} steps back needs more than {length} steps; "
                         f"the stage ran {n}, so no time-travel ran")
            st["travel_requested"], st["travel_repeat"] = [length, repeat], 1
        else:
            st["transitions"] = len(travel_schedule(list(range(n, 0, -1)), length, repeat))
    return notes


def reference_scores(reference: np.ndarray, results: list[PromptResult]) -> dict:
    """PSNR/SSIM of every sample against the HR original (simulation mode)."""
    from .metrics import ssim

    out: dict[str, list] = {"psnr": [], "ssim": []}
    ref = torch.from_numpy(reference).permute(2, 0, 1)[None].double()
    for r in results:
        xs = torch.from_numpy(r.samples).permute(0, 3, 1, 2).double()
        mse = ((xs - ref) ** 2).flatten(1).mean(1).clamp(min=1e-20)
        out["psnr"].append([float(v) for v in (10 * torch.log10(1 / mse)).tolist()])
        out["ssim"].append([float(v) for v in ssim(xs * 2 - 1, ref * 2 - 1).tolist()])
    return out


# ------------------------------------------------------------------------------------------------
# the entry point
# ------------------------------------------------------------------------------------------------
def explore(image: Any = None, prompts: Sequence[str] | str | None = None, *,
            callback: Callable[[Progress], None] | None = None, **args: Any) -> Exploration:
    """Sample ``samples`` HR images per prompt, all consistent with the LR ``image``.

    ``args`` are the fields of ``textsr.request.ExploreRequest`` (docs/reference.md lists them with
    their defaults): ``scale`` (required), ``model``, ``solver``, ``samples``, ``seed``, ``steps``,
    ``operator``, ``sigma_y``, ``particles``, ``preset``, the memory options ... .  Notably:

    image: a path, PIL image, or an array/tensor in [0, 1] (uint8 accepted): (H, W), (H, W, C) or
    (C, H, W) with C = 1 or 3; a torch tensor is read channels-first when its first dimension is 1 or 3
    (so (3, 3, 3) is CHW), a numpy array channels-last when its last one is (so (3, 3, 3) is HWC). With
    ``simulate=True`` the image is a HR original: it is downsampled by ``scale`` with ``operator``
    (plus ``sigma_y`` noise) and the samples are also scored against it (PSNR/SSIM).
    model: a registry name (``textsr models``), a model folder or spec file, or a loaded ``Backend``
    (``textsr.load_model``: load once, explore many times); None: the built-in shapes world when it can
    explain the input, otherwise a ``UsageError`` listing the real models.
    steps: shorthand for ``solver_options["steps"]`` (every stage); a stage whose schedule allows fewer
    runs fewer, and results.json records what ran.
    particles: run the particle solver with this many particles per sample (every stage); each prompt then
    gets ``evidence`` (``textsr.evidence``): log p(y | prompt), its spread over samples and P(prompt | y)
    among the prompts given, with ``prompt_prior`` (None: uniform) as the prior.
    tile: ``None``/``"off"`` (whole images; an output more than twice the model's size per side is refused),
    ``"auto"`` (windows of the model's size where an image exceeds it) or a window side in output pixels;
    tile_overlap: pixels (default a quarter of the window); tile_options: ``shift`` (True: a seeded random
    shift of the window grid per step), ``batch`` (1: windows per model call), ``text`` (0.5: the text
    guidance inside windows as a fraction of the whole image's), ``seed`` (docs/tiling.md).  Before any
    sampling the peak memory of a batch is estimated and a request that cannot fit is refused.
    Every argument is checked before any model loads (``UsageError`` says what to pass).
    """
    return explore_request(ExploreRequest.build(image=image, prompts=prompts, **args), callback)


def explore_request(request: ExploreRequest, callback: Callable[[Progress], None] | None = None) -> Exploration:
    """``explore`` for a request already built (the CLI, app and batch runner build one)."""
    from .device import is_out_of_memory, out_of_memory_message
    from .errors import RuntimeFailure

    t0 = time.perf_counter()
    if request.method is not None:
        raise UsageError(f"method={request.method!r} chooses how ranking computes P(prompt | y); explore samples: "
                         "rank with textsr.rank(...) or `textsr rank --method ...`, or leave method out")
    req = check_inputs(request)
    backend = None
    try:
        backend = resolve_backend(req)
        t_loaded = time.perf_counter()
        req, meas, stages, base_cfg = build_run(req, backend)
        max_rows = check_particles(req, backend, meas, stages, base_cfg)
        memory = check_memory(req, backend, meas, stages, max_rows)
        results = [sample_prompt(req, backend, meas, stages, base_cfg, i, p, callback, max_rows)
                   for i, p in enumerate(req.prompts)]
    except (MemoryError, RuntimeError) as e:  # torch.cuda.OutOfMemoryError is a RuntimeError
        if not is_out_of_memory(e):
            raise
        raise RuntimeFailure(out_of_memory_message(e, None if backend is None else backend.memory_options)) from e
    fill_probabilities(results, req.prompt_prior)
    settings = collect_settings(req, backend, meas, stages, base_cfg, results[-1].steps_ran if results else (),
                                memory=memory)
    timings = {"total_s": round(time.perf_counter() - t0, 3), "load_s": round(t_loaded - t0, 3),
               "per_prompt_s": [round(r.seconds, 3) for r in results]}
    return Exploration(lr=meas.lr, scale=req.scale, prompts=results, settings=settings, notes=meas.notes,
                       timings=timings, reference=meas.reference,
                       reference_metrics=None if meas.reference is None else reference_scores(meas.reference, results))
