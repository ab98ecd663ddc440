"""The one entry point that the CLI, the web app and the batch runner call.

``explore(image, prompts, scale=..., model=..., solver=..., samples=..., seed=...)`` returns an
``Exploration`` (``textsr.exploration``): samples per prompt with their seeds, per-sample metrics,
per-prompt uncertainty maps, timings and every setting; ``.save(directory)`` writes the output folder
(see README, "Outputs").  Nothing here knows about terminals or web pages.

``explore`` runs in named phases, each a function below:

1. ``check_inputs``: every argument validated, before any model is loaded -> ``ExploreRequest``;
2. ``resolve_backend``: a loaded ``Backend`` (``textsr.backends.base``) from a name, folder or object;
   ``apply_preset``: the preset (``textsr.presets``), if any, merged under the explicit options;
3. ``build_measurement``: the LR image -> ``y`` in model space, the final operator, notes;
4. ``sample_prompt`` for each prompt: the backend's cascade, then the per-sample metrics;
5. ``collect_settings``: the resolved settings of the run (``ExploreSettings``).
"""

from __future__ import annotations

import math
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
from .solver_registry import make_config
from .tiling import checks as tile_checks

__all__ = ["Exploration", "ExploreRequest", "Progress", "PromptResult", "Ranking", "expand_prompts", "explore", "rank"]

MAX_SAMPLES = validate.MAX_SAMPLES
MAX_PARTICLES = 4096


# ------------------------------------------------------------------------------------------------
# phase 1: inputs
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ExploreRequest:
    """The checked arguments of one ``explore`` call (see ``explore`` for their meaning)."""

    image: tuple[np.ndarray, InputInfo, tuple[str, ...]]  # (h, w, C) in [0, 1], where from, notes: read already
    prompts: list[str]
    scale: int
    model: Any
    solver: str  # the registry name
    samples: int
    seed: int
    operator: str | None  # None: the preset's (after apply_preset), else avgpool
    sigma_y: float
    solver_options: dict
    model_options: dict
    device: str | None
    dtype: str | None
    simulate: bool
    batch_size: int
    max_pixels: int
    preset: str | None = None
    prompt_prior: tuple[float, ...] | None = None  # P(prompt) for the evidence (None: uniform)
    tile: Any = None  # textsr.tiling.TileRequest (None: off)

    @property
    def operator_name(self) -> str:
        """The operator's name once ``apply_preset`` has resolved it."""
        if self.operator is None:
            raise RuntimeError("the operator is resolved by apply_preset (phase 2b) before it is used")
        return self.operator

    @property
    def seeds(self) -> list[int]:
        """Sample k uses ``seed + k`` (its own generator: a batch item equals the same seed alone)."""
        return [self.seed + k for k in range(self.samples)]


def expand_prompts(prompts: Sequence[str] | str | None, template: str | None = None,
                   values: Sequence[str] | str | None = None) -> list[str]:
    """Prompts plus a template sweep: ``template="a {shape} on blue", values="circle,star"``."""
    if isinstance(prompts, str):
        prompts = [prompts]
    out = [p.strip() for p in (prompts or [])]
    if template is not None or values is not None:
        if template is None or values is None:
            raise UsageError("a prompt sweep needs both a template (e.g. 'a {shape} on blue') and values")
        if isinstance(values, str):
            values = [v for v in values.split(",")]
        vals = [v.strip() for v in values if v.strip()]
        if not vals:
            raise UsageError("the sweep's values are empty; give a comma-separated list like 'circle,star,ring'")
        import string

        slots = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
        if len(slots) != 1:
            raise UsageError(f"the template {template!r} needs exactly one {{slot}}, e.g. 'a {{shape}} on blue'")
        out += [template.replace("{" + slots[0] + "}", v) for v in vals]
    if not out:
        out = [""]
    if len(out) != len(set(out)):
        raise UsageError("the same prompt is given twice; each prompt must be distinct")
    return out


def check_inputs(image: Any, prompts: Sequence[str] | str | None, *, scale: int, model: Any, solver: str | None,
                 samples: int, seed: int, template: str | None, values: Sequence[str] | str | None,
                 operator: str | None, sigma_y: float, steps: int | None, solver_options: dict | None,
                 model_options: dict | None, device: str | None, dtype: str | None, simulate: bool,
                 batch_size: int | None, max_pixels: int, preset: str | None = None, particles: int | None = None,
                 prompt_prior: Sequence[float] | None = None, tile: Any = None, tile_overlap: Any = None,
                 tile_options: dict | None = None) -> ExploreRequest:
    """Phase 1: validate every argument before any model loads or any sampling starts; each check is
    ``textsr.validate``'s, shared with the CLI and batch manifests (a preset is checked against the
    model's backend from its spec, without loading it). The image is read here too (an unreadable file
    or a bad array fails before the model loads): ``req.image``.  ``solver=None``: ``ddnm+``, or ``tds``
    with ``particles``."""
    from .operators import OPERATORS
    from .presets import check_preset
    from .solver_registry import canonical_name, config_class
    from .tiling.plan import TileRequest

    scale = validate.scale(scale)
    samples = validate.samples(samples)
    seed = validate.seed(seed)
    sigma_y = validate.sigma_y(sigma_y)
    steps = validate.steps(steps)
    batch_size = validate.batch_size(batch_size)
    max_pixels = validate.max_pixels(max_pixels)
    prompt_list = validate.prompts(prompts)
    template = validate.text(template, "template")
    values = validate.sweep_values(values)
    solver_options = validate.options(solver_options, "solver_options")
    model_options = validate.options(model_options, "model_options")
    if operator is not None:  # None: the preset's, else avgpool
        operator = validate.choice(operator, "operator", sorted(OPERATORS))
    simulate = validate.flag(simulate, "simulate")
    tile_request = TileRequest.of(tile, tile_overlap, validate.options(tile_options, "tile_options"))
    _check_model(model)
    for name, v, kinds in (("device", device, "cpu, cuda, cuda:N or auto"),
                           ("dtype", dtype, "float32, float16 or auto")):
        if v is not None and not isinstance(v, str) and type(v).__module__ != "torch":
            raise UsageError(f"{name} must be a string ({kinds}) or None, got {v!r}")
    if preset is not None:
        check_preset(validate.text(preset, "preset"), model_backend(model))
    try:
        solver = canonical_name(solver if solver is not None else ("tds" if particles is not None else "ddnm+"))
    except ValueError as e:
        raise UsageError(str(e)) from e
    if steps is not None:
        solver_options["steps"] = steps
    if particles is not None:
        if isinstance(particles, bool) or not isinstance(particles, int) or not 1 <= particles <= MAX_PARTICLES:
            raise UsageError(f"particles must be an integer from 1 to {MAX_PARTICLES}, got {particles!r}")
        if not config_class(solver).takes_particles:
            raise UsageError(f"--particles needs a particle solver (tds); solver {solver!r} keeps one sample per "
                             "seed. Leave the solver out or use --solver tds")
        solver_options["particles"] = particles
    prompts_all = expand_prompts(prompt_list, template, values)
    if prompt_prior is not None:
        from .evidence import check_prior

        prompt_prior = tuple(check_prior(prompt_prior, len(prompts_all)))
    arr, info, notes = _as_array(image, max_pixels)  # read and checked now, before the model loads
    return ExploreRequest(
        image=(arr, info, tuple(notes)), prompts=prompts_all, scale=scale,
        model=model, solver=solver, samples=samples, seed=seed, operator=operator, sigma_y=sigma_y,
        solver_options=solver_options, model_options=model_options, device=device, dtype=dtype, simulate=simulate,
        batch_size=batch_size or samples, max_pixels=max_pixels, preset=preset, prompt_prior=prompt_prior,
        tile=tile_request)


def model_backend(model: Any) -> str:
    """The backend kind (``"deepfloyd-if"`` ...) of a loaded backend, registry name, folder or spec,
    read from its spec (no weights loaded)."""
    from .backends.base import Backend
    from .model_registry import resolve_spec

    if isinstance(model, Backend):
        return model.info.backend
    return str(resolve_spec(model)["backend"])


def _check_model(model: Any) -> None:
    from .backends.base import Backend

    if not isinstance(model, (str, Path, Backend)):
        raise UsageError(f"model must be a registry name (see `textsr models`), a model folder, a spec file or a "
                         f"loaded Backend; got {model!r} ({type(model).__name__})")


# ------------------------------------------------------------------------------------------------
# phase 2: the model
# ------------------------------------------------------------------------------------------------
def resolve_backend(req: ExploreRequest) -> Any:
    """Phase 2: ``req.model`` as a loaded ``Backend`` (an already loaded one is used as is)."""
    from .backends.base import Backend
    from .device import resolve_device, resolve_dtype
    from .model_registry import load_model

    if isinstance(req.model, Backend):
        return req.model
    dev = resolve_device(req.device)
    return load_model(req.model, device=dev, dtype=resolve_dtype(req.dtype, dev))


def apply_preset(req: ExploreRequest, backend: Any) -> ExploreRequest:
    """Phase 2b: the operator and the solver and model options the run uses: ``req.preset`` (if any)
    under the explicit ones, for this backend's stages (``textsr.presets``)."""
    from .presets import resolve_preset

    r = resolve_preset(req.preset, backend=backend.describe()["backend"], solver=req.solver, operator=req.operator,
                       solver_options=req.solver_options, model_options=req.model_options,
                       stages=backend.stage_names)
    return replace(req, operator=r.operator, solver_options=r.solver_options, model_options=r.model_options)


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


def _simulate(arr: np.ndarray, req: ExploreRequest, notes: list[str]) -> np.ndarray:
    """Simulation mode: the HR original -> its LR image by ``req.operator`` (+ ``sigma_y`` noise)."""
    from .io import check_scale
    from .operators import make_operator

    h, w = arr.shape[:2]
    check_scale(h, w, req.scale)
    x_hr = torch.from_numpy(arr).permute(2, 0, 1)[None].double() * 2 - 1
    y = make_operator(req.operator_name, req.scale, tuple(x_hr.shape[1:])).A(x_hr)
    if req.sigma_y > 0:
        gen = torch.Generator().manual_seed(req.seed + 10_007)
        y = y + req.sigma_y * torch.randn(y.shape, generator=gen, dtype=torch.float64)
    lr = ((y[0].permute(1, 2, 0).numpy() + 1) / 2).clip(0, 1).astype(np.float32)
    notes.append(f"simulation: the input was downsampled {req.scale}x ({req.operator}) to {lr.shape[1]}x{lr.shape[0]}"
                 + (f" with noise sigma_y={req.sigma_y}" if req.sigma_y > 0 else ""))
    return lr


def build_measurement(req: ExploreRequest, backend: Any) -> Measurement:
    """Phase 3: read the image, fit it to the model (channels, size), check the size, build ``y`` and
    the final operator ``A`` (output size -> LR size)."""
    from .operators import make_operator

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
    operator = make_operator(req.operator_name, req.scale, (backend.channels, h * req.scale, w * req.scale))
    return Measurement(lr=arr, y=y.to(backend.device, backend.work_dtype), operator=operator, input=info,
                       notes=notes, reference=reference, tiling=tiling)


def check_memory(req: ExploreRequest, backend: Any, meas: Measurement, stages: list) -> Any:
    """Phase 3b (docs/tiling.md, "Memory"): the estimated peak memory of one batch, whole and on windows,
    refused before any sampling when it cannot fit in what the device has free.  Estimated for tiled
    runs, outputs larger than the model makes and CUDA devices (a CPU run at the model's size is not
    traced: it costs a second per run); the estimate goes to the notes and results.json."""
    native = backend.native_output()
    output = (meas.lr_hw[0] * req.scale, meas.lr_hw[1] * req.scale)
    larger = native is not None and (output[0] > native[0] or output[1] > native[1])
    if meas.tiling is None and not larger and torch.device(backend.device).type != "cuda":
        return None
    cfgs = [st.solver for st in stages if st.solver is not None] or [make_config(req.solver)]
    rows = min(req.batch_size, req.samples) * max(int(getattr(c, "particles", 1) or 1) for c in cfgs)
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


def sample_prompt(req: ExploreRequest, backend: Any, meas: Measurement, stages: list, base_cfg: Any,
                  index: int, prompt: str, callback: Callable[[Progress], None] | None = None) -> PromptResult:
    """Phase 4: ``req.samples`` samples for one prompt (in batches of ``req.batch_size``), then the
    per-sample metrics.  Adds notes to ``meas.notes``."""
    from .cascade import run_cascade
    from .operators import make_operator

    t0 = time.perf_counter()
    cond = backend.encode_prompt(prompt)
    meas.notes.extend(backend.prompt_notes(prompt))
    cb = _progress_callback(callback, stages, index, len(req.prompts), prompt)
    seeds = req.seeds
    xs, log_z, ess = [], [], []
    for b0 in range(0, req.samples, req.batch_size):
        res = run_cascade(stages, meas.y, req.scale, base_cfg, seeds[b0:b0 + req.batch_size], cond,
                          sigma_y=req.sigma_y, operator=lambda f, s: make_operator(req.operator_name, f, s),
                          device=backend.device, dtype=backend.work_dtype, callback=cb)
        xs.append(backend.postprocess(res.x, meas.y, res.operators[-1]).detach())  # the last stage's operator
        if res.log_evidence is not None and res.stage_ess[0] is not None:
            log_z.append(res.log_evidence)
            ess.append(res.stage_ess[0])
    steps_ran = tuple(res.steps)
    x = torch.cat(xs)
    psnr = lr_psnr(x, meas.y, meas.operator)  # the solver's consistency, before display clipping
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
                        backend.prompt_tags(prompt), extra, steps_ran, evidence)


def prompt_evidence(log_z: torch.Tensor, ess: torch.Tensor, stages: list, backend: Any, req: ExploreRequest):
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
def collect_settings(req: ExploreRequest, backend: Any, meas: Measurement, stages: list,
                     base_cfg: Any, steps_ran: Sequence[int] = (), memory: Any = None) -> ExploreSettings:
    """Phase 5: what ran, resolved: the base solver config with the user's options, each stage's config
    with the steps it ran (``steps_ran``; a request the schedule could not honour is kept as
    ``steps_requested`` and noted in ``meas.notes``)."""
    known = base_cfg.to_dict()
    solver = base_cfg.replace(**{k: v for k, v in req.solver_options.items() if k in known}).to_dict()
    per_stage = tuple({"stage": s.name, **(s.solver or base_cfg).to_dict(),
                       **({"model_options": dict(s.extra)} if s.extra else {})} for s in stages)
    meas.notes.extend(record_steps_ran(solver, per_stage, steps_ran))
    return ExploreSettings(
        input=meas.input, model=backend.describe(), solver=solver, stages=per_stage, operator=req.operator_name,
        sigma_y=req.sigma_y, seed=req.seed, samples=req.samples, model_options=dict(req.model_options),
        device=str(backend.device), dtype=str(backend.dtype).replace("torch.", ""), preset=req.preset,
        tiling=tiling_record(req, meas, memory))


def tiling_record(req: ExploreRequest, meas: Measurement, memory: Any) -> dict | None:
    """results.json ``tiling``: the request, whether windows ran, and the memory estimate."""
    if not req.tile.on and memory is None:
        return None
    return {"request": req.tile.to_dict(), "tiled": meas.tiling is not None,
            "memory": None if memory is None else memory.to_dict()}


def record_steps_ran(solver: dict, per_stage: Sequence[dict], ran: Sequence[int]) -> list[str]:
    """Write the steps each stage ran into ``per_stage`` (and, when a stage was clamped, the top-level
    ``solver``), keeping the request as ``steps_requested``; returns a note for each clamped stage."""
    notes = []
    for st, n in zip(per_stage, ran):
        if st.get("steps") != n:
            notes.append(f"stage {st['stage']}: {st.get('steps')} steps requested, but its schedule (and start) allow "
                         f"{n}: ran {n}")
            st["steps_requested"], st["steps"] = st.get("steps"), n
    if notes and solver.get("steps") not in ran:
        solver["steps_requested"], solver["steps"] = solver.get("steps"), max(ran)
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
def explore(
    image: Any,
    prompts: Sequence[str] | str | None = None,
    *,
    scale: int,
    model: Any = "builtin-shapes",
    solver: str | None = None,
    samples: int = 4,
    seed: int = 0,
    template: str | None = None,
    values: Sequence[str] | str | None = None,
    operator: str | None = None,
    sigma_y: float = 0.0,
    steps: int | None = None,
    solver_options: dict | None = None,
    model_options: dict | None = None,
    device: str | None = None,
    dtype: str | None = None,
    simulate: bool = False,
    batch_size: int | None = None,
    max_pixels: int = 4_000_000,
    preset: str | None = None,
    particles: int | None = None,
    prompt_prior: Sequence[float] | None = None,
    tile: str | int | None = None,
    tile_overlap: int | None = None,
    tile_options: dict | None = None,
    callback: Callable[[Progress], None] | None = None,
) -> Exploration:
    """Sample ``samples`` HR images per prompt, all consistent with the LR ``image``.

    image: a path, PIL image, or an array/tensor in [0, 1] (uint8 accepted): (H, W), (H, W, C) or
    (C, H, W) with C = 1 or 3; a torch tensor is read channels-first when its first dimension is 1 or 3
    (so (3, 3, 3) is CHW), a numpy array channels-last when its last one is (so (3, 3, 3) is HWC). With
    ``simulate=True`` the image is a HR original: it is downsampled by ``scale`` with ``operator``
    (plus ``sigma_y`` noise) and the samples are also scored against it (PSNR/SSIM).
    model: a registry name (``textsr models``), a model folder or spec file, or a loaded ``Backend``.
    operator: the downsampling operator A (``avgpool``, ``bicubic``, ``bicubic-reflect``); None: the
    preset's, else ``avgpool``.
    sigma_y: measurement noise std in [-1, 1] model units (half of a [0, 1]-units value), 0 to 2.
    seed: 0 to 2**32 - 1; sample k uses ``seed + k``.
    steps: shorthand for ``solver_options["steps"]`` (applies to every stage); a stage whose schedule
    allows fewer runs fewer, and results.json records what ran.
    preset: named settings (``"paper"``: the text-guided SR paper's DeepFloyd IF setting, see
    ``textsr.presets``); explicit arguments override it; results.json records it and what it resolved to.
    solver: a registered solver (``textsr.solver_registry``); None: ``ddnm+``, or ``tds`` with ``particles``.
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
    t0 = time.perf_counter()
    req = check_inputs(image, prompts, scale=scale, model=model, solver=solver, samples=samples, seed=seed,
                       template=template, values=values, operator=operator, sigma_y=sigma_y, steps=steps,
                       solver_options=solver_options, model_options=model_options, device=device, dtype=dtype,
                       simulate=simulate, batch_size=batch_size, max_pixels=max_pixels, preset=preset,
                       particles=particles, prompt_prior=prompt_prior, tile=tile, tile_overlap=tile_overlap,
                       tile_options=tile_options)
    backend = resolve_backend(req)
    req = apply_preset(req, backend)
    t_loaded = time.perf_counter()
    meas = build_measurement(req, backend)
    # the stages do not depend on the prompt (its conditioning is passed to the cascade per prompt)
    tiled = {"tiling": meas.tiling} if meas.tiling is not None else {}
    stages = backend.build_stages(req.solver, req.solver_options, req.model_options, **tiled)
    base_cfg = make_config(req.solver)  # the fallback for stages without their own config
    memory = check_memory(req, backend, meas, stages)
    results = [sample_prompt(req, backend, meas, stages, base_cfg, i, p, callback)
               for i, p in enumerate(req.prompts)]
    fill_probabilities(results, req.prompt_prior)
    settings = collect_settings(req, backend, meas, stages, base_cfg, results[-1].steps_ran if results else (),
                                memory=memory)
    timings = {"total_s": round(time.perf_counter() - t0, 3), "load_s": round(t_loaded - t0, 3),
               "per_prompt_s": [round(r.seconds, 3) for r in results]}
    return Exploration(lr=meas.lr, scale=req.scale, prompts=results, settings=settings, notes=meas.notes,
                       timings=timings, reference=meas.reference,
                       reference_metrics=None if meas.reference is None else reference_scores(meas.reference, results))


# ------------------------------------------------------------------------------------------------
# ranking prompts by P(prompt | y)
# ------------------------------------------------------------------------------------------------
@dataclass
class Ranking:
    """Prompts ranked by ``P(prompt | y)`` at guidance scale 1 (``entries``: prompt, probability, log_z,
    spread, ess_min, highest first), the options the run used to get there and its exploration."""

    entries: list[dict]
    neutral_options: dict
    exploration: Exploration

    def to_json(self) -> list[dict]:
        return [{"prompt": e["prompt"], "probability": e["probability"], "log_z": e["log_z"]} for e in self.entries]


def _logit(ev) -> float:
    lz = ev.log_z if ev.log_z is not None and math.isfinite(ev.log_z) else -math.inf
    return lz + (math.log(ev.prior) if ev.prior else -math.inf)


def rank(image: Any, prompts: Sequence[str] | str, *, scale: int, model: Any = "builtin-shapes", particles: int = 16,
         samples: int = 4, seed: int = 0, prompt_prior: Sequence[float] | None = None,
         model_options: dict | None = None, **kwargs: Any) -> Ranking:
    """Rank ``prompts`` by how well each explains the LR ``image``: ``P(prompt | y) ∝ prior * p(y | prompt)``
    with ``p(y | prompt)`` the particle solver's evidence.  Runs at guidance scale 1: every option of the
    model that tilts its sampler away from ``p(x | prompt)`` (classifier-free guidance scales, CLIP guidance,
    embedding mixing; ``Backend.neutral_options``) is set to its neutral value.  Other ``explore``
    arguments pass through."""
    req_prompts = expand_prompts(prompts)
    if len(req_prompts) < 2:
        raise UsageError("ranking needs at least two prompts (-p ... -p ...)")
    dev, dt = kwargs.pop("device", None), kwargs.pop("dtype", None)
    req = check_inputs(image, req_prompts, scale=scale, model=model, solver="tds", samples=samples, seed=seed,
                       template=None, values=None, operator=kwargs.get("operator"), sigma_y=kwargs.get("sigma_y", 0.0),
                       steps=None, solver_options=None, model_options=model_options, device=dev, dtype=dt,
                       simulate=False, batch_size=None, max_pixels=kwargs.get("max_pixels", 4_000_000),
                       particles=particles)
    backend = resolve_backend(req)
    neutral = backend.neutral_guidance(dict(model_options or {}))
    ex = explore(image, req_prompts, scale=scale, model=backend, particles=particles, samples=samples, seed=seed,
                 prompt_prior=prompt_prior, model_options=neutral, **kwargs)
    entries = [{"prompt": p.prompt, "probability": p.evidence.probability, "log_z": p.evidence.log_z,
                "spread": p.evidence.spread, "ess_min": p.evidence.ess_min} for p in ex.prompts]
    # by posterior log-odds (log prior + log Z): probabilities underflow to 0 for every prompt but the best
    logit = {p.prompt: _logit(p.evidence) for p in ex.prompts}
    entries.sort(key=lambda e: logit[e["prompt"]], reverse=True)
    return Ranking(entries, {k: neutral[k] for k in backend.neutral_options}, ex)
