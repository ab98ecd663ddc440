"""The one entry point that the CLI, the web app and the batch runner call.

``explore(image, prompts, scale=..., model=..., solver=..., samples=..., seed=...)`` returns an
``Exploration``: samples per prompt with their seeds, per-sample metrics, per-prompt uncertainty maps,
timings and every setting; ``.save(directory)`` writes the output folder (see README, "Outputs").
Nothing here knows about terminals or web pages.
"""

from __future__ import annotations

import math
import platform
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from . import __version__
from .errors import UsageError

MAX_SAMPLES = 256


@dataclass
class Progress:
    """Progress of a run: prompt ``prompt_index`` of ``prompts``, stage name, step of total."""

    prompt_index: int
    prompts: int
    prompt: str
    stage: str
    step: int
    total: int
    stage_index: int = 0
    stages: int = 1


@dataclass
class PromptResult:
    prompt: str
    samples: np.ndarray  # (K, H, W, C) in [0, 1]
    seeds: list[int]
    lr_psnr: list[float]
    text_scores: list[float | None]
    std_map: np.ndarray  # (H, W): per-pixel std across samples (mean over channels), [0, 1] units
    diversity: dict
    seconds: float
    tags: list[str] | None = None
    extra: dict = field(default_factory=dict)

    @property
    def text_consistency(self) -> float | None:
        vals = [s for s in self.text_scores if s is not None]
        return float(np.mean(vals)) if vals else None


@dataclass
class Exploration:
    """Everything one exploration produced; ``save`` writes it, ``summary`` one line per prompt."""

    lr: np.ndarray  # (h, w, C) in [0, 1]
    scale: int
    prompts: list[PromptResult]
    settings: dict
    notes: list[str]
    timings: dict
    reference: np.ndarray | None = None  # HR original in simulation mode
    reference_metrics: dict | None = None

    @property
    def output_size(self) -> tuple[int, int]:
        return self.lr.shape[0] * self.scale, self.lr.shape[1] * self.scale

    def results_dict(self) -> dict:
        s = self.settings
        out = {
            "textsr_version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "input": {**s["input"], "notes": list(self.notes)},
            "scale": self.scale,
            "output_size": list(self.output_size),
            "model": s["model"],
            "solver": s["solver"],
            "operator": s["operator"],
            "sigma_y": s["sigma_y"],
            "seed": s["seed"],
            "samples_per_prompt": s["samples"],
            "model_options": s["model_options"],
            "device": s["device"],
            "dtype": s["dtype"],
            "library_versions": library_versions(),
            "timings": self.timings,
            "prompts": [],
        }
        for i, p in enumerate(self.prompts):
            entry = {
                "prompt": p.prompt,
                "label": p.prompt or "(no prompt)",
                "diversity": p.diversity,
                "text_consistency": p.text_consistency,
                "seconds": round(p.seconds, 3),
                "samples": [
                    {"index": k, "seed": p.seeds[k], "lr_psnr": p.lr_psnr[k],
                     "text_score": p.text_scores[k]}
                    for k in range(len(p.seeds))
                ],
            }
            if p.tags is not None:
                entry["tags"] = p.tags
            if p.extra:
                entry["exact"] = p.extra
            out["prompts"].append(entry)
        if self.reference_metrics is not None:
            out["reference"] = self.reference_metrics
        return out

    def save(self, directory: str | Path, *, overwrite: bool = False) -> dict:
        """Write input/baselines/samples/std maps/grid/index.html, then results.json (see textsr.outdir).

        A folder holding another run is refused unless ``overwrite`` (then only textsr's files are
        removed); if writing fails, nothing half-written stays and ``OutputWriteError.rescued`` names
        the fallback folder holding the complete run."""
        from .report import write_outputs

        samples = {p.prompt or "(no prompt)": list(p.samples) for p in self.prompts}
        std_maps = {p.prompt or "(no prompt)": p.std_map for p in self.prompts}
        return write_outputs(Path(directory), lr=self.lr, samples=samples, std_maps=std_maps,
                             results=self.results_dict(), scale=self.scale, notes=[], overwrite=overwrite)

    def summary(self) -> list[str]:
        lines = []
        for p in self.prompts:
            tc = "n/a" if p.text_consistency is None else f"{p.text_consistency:.2f}"
            extra = f", SW {p.extra['sw']:.3f} (floor {p.extra['sw_floor']:.3f})" if "sw" in p.extra else ""
            if "shapes" in p.extra:
                got = ", ".join(f"{k} {v}" for k, v in sorted(p.extra["shapes"].items()))
                want = ", ".join(f"{k} {v:.2f}" for k, v in sorted(p.extra.get("posterior_shapes", {}).items()))
                extra += f"; shapes: {got} (exact posterior: {want})"
            lines.append(f"{(p.prompt or '(no prompt)')!r}: text consistency {tc}, LR-PSNR min "
                         f"{min(p.lr_psnr):.1f} dB, diversity {p.diversity['pairwise_l2']:.3f}{extra}")
        return lines


def library_versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version(), "torch": torch.__version__}
    for pkg in ("numpy", "diffusers", "transformers", "pillow"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


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


def _as_array(image: Any, max_pixels: int) -> tuple[np.ndarray, dict, list[str]]:
    """Image input -> (h, w, C) float32 in [0, 1], input description, notes."""
    if isinstance(image, (str, Path)):
        from .io import load_image

        li = load_image(image, max_pixels=max_pixels)
        info = {"path": str(image), "width": li.array.shape[1], "height": li.array.shape[0],
                "channels": li.array.shape[2]}
        return li.array, info, list(li.notes)
    if hasattr(image, "mode") and hasattr(image, "size"):  # PIL image
        from .io import pil_to_array

        arr, notes = pil_to_array(image)
        return arr, {"path": None, "width": arr.shape[1], "height": arr.shape[0], "channels": arr.shape[2]}, notes
    arr = image.detach().cpu().numpy() if torch.is_tensor(image) else np.asarray(image)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3):
        raise UsageError(f"an image array must be (H, W), (H, W, 1) or (H, W, 3); got shape {arr.shape}")
    if arr.dtype == np.uint8:
        arr = arr.astype(np.float32) / 255.0
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1:
        raise UsageError("a float image array must have finite values in [0, 1]")
    return arr, {"path": None, "width": arr.shape[1], "height": arr.shape[0], "channels": arr.shape[2]}, []


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


def lr_psnr(x: torch.Tensor, y: torch.Tensor, operator) -> list[float]:
    """PSNR between A x and y on [0, 1] images, per sample (inf when exact)."""
    from .metrics import lr_psnr as _lr_psnr

    return [float(v) for v in _lr_psnr(x.to(torch.float64), y.to(torch.float64), operator).tolist()]


def diversity(samples01: np.ndarray) -> tuple[dict, np.ndarray]:
    """Mean pairwise RMS distance between samples ([0, 1] units), per-pixel std map and its mean
    (``textsr.metrics.sample_diversity``: memory linear in the number of samples)."""
    from .metrics import sample_diversity

    return sample_diversity(samples01)


def explore(
    image: Any,
    prompts: Sequence[str] | str | None = None,
    *,
    scale: int,
    model: Any = "builtin-shapes",
    solver: str = "ddnm+",
    samples: int = 4,
    seed: int = 0,
    template: str | None = None,
    values: Sequence[str] | str | None = None,
    operator: str = "avgpool",
    sigma_y: float = 0.0,
    steps: int | None = None,
    solver_options: dict | None = None,
    model_options: dict | None = None,
    device: str | None = None,
    dtype: str | None = None,
    simulate: bool = False,
    batch_size: int | None = None,
    max_pixels: int = 4_000_000,
    callback: Callable[[Progress], None] | None = None,
) -> Exploration:
    """Sample ``samples`` HR images per prompt, all consistent with the LR ``image``.

    image: a path, PIL image, (H, W[, C]) array in [0, 1] (uint8 accepted) or tensor. With
    ``simulate=True`` the image is a HR original: it is downsampled by ``scale`` with ``operator``
    (plus ``sigma_y`` noise) and the samples are also scored against it (PSNR/SSIM).
    sigma_y: measurement noise std in [-1, 1] model units (half of a [0, 1]-units value).
    steps: shorthand for ``solver_options["steps"]`` (applies to every stage).
    """
    from .cascade import run_cascade
    from .device import resolve_device, resolve_dtype
    from .model_registry import load_model
    from .operators import make_operator
    from .solvers import make_config

    t0 = time.perf_counter()
    if isinstance(scale, bool) or not isinstance(scale, int) or not 2 <= scale <= 32:
        raise UsageError(f"scale must be an integer from 2 to 32, got {scale!r}")
    if isinstance(samples, bool) or not isinstance(samples, int) or not 1 <= samples <= MAX_SAMPLES:
        raise UsageError(f"samples must be an integer from 1 to {MAX_SAMPLES}, got {samples!r}")
    if not math.isfinite(sigma_y) or sigma_y < 0:
        raise UsageError(f"sigma_y must be >= 0 (in [-1, 1] units), got {sigma_y}")
    prompt_list = expand_prompts(prompts, template, values)
    solver_options = dict(solver_options or {})
    if steps is not None:
        solver_options["steps"] = int(steps)
    try:
        base_cfg = make_config(solver)  # validate the name early; the fallback for stages without a config
    except ValueError as e:
        raise UsageError(str(e)) from e
    dev = resolve_device(device)
    backend = load_model(model, device=dev, dtype=resolve_dtype(dtype, dev)) if not hasattr(model, "build_stages") else model
    t_loaded = time.perf_counter()

    arr, info, notes = _as_array(image, max_pixels)
    arr = _fit_channels(arr, backend.channels, notes)
    reference = None
    if simulate:
        from .io import check_scale

        h, w = arr.shape[:2]
        check_scale(h, w, scale)
        reference = arr
        x_hr = torch.from_numpy(arr).permute(2, 0, 1)[None].double() * 2 - 1
        op_hr = make_operator(operator, scale, tuple(x_hr.shape[1:]))
        y = op_hr.A(x_hr)
        if sigma_y > 0:
            gen = torch.Generator().manual_seed(int(seed) + 10_007)
            y = y + sigma_y * torch.randn(y.shape, generator=gen, dtype=torch.float64)
        arr = ((y[0].permute(1, 2, 0).numpy() + 1) / 2).clip(0, 1).astype(np.float32)
        notes.append(f"simulation: the input was downsampled {scale}x ({operator}) to {arr.shape[1]}x{arr.shape[0]}"
                     + (f" with noise sigma_y={sigma_y}" if sigma_y > 0 else ""))
    prep = getattr(backend, "prepare_input", None)
    if prep is not None and not simulate:
        arr, more = prep(arr, scale)
        notes.extend(more)
    h, w = arr.shape[:2]
    backend.check_size((h, w), scale)
    y = torch.from_numpy(arr).permute(2, 0, 1)[None].to(torch.float32) * 2 - 1
    if simulate:
        y = y.clamp(-1, 1)
    notes.extend(getattr(backend, "input_notes", lambda hw, s: [])((h, w), scale))
    work_dtype = torch.float64 if getattr(backend, "exact", False) else torch.float32
    y_dev = y.to(dev, work_dtype)
    shape = (backend.channels, h * scale, w * scale)
    final_op = make_operator(operator, scale, shape)
    seeds = [int(seed) + k for k in range(samples)]
    bs = batch_size or samples
    # the stages do not depend on the prompt (its conditioning is passed to run_cascade)
    stages = backend.build_stages(solver, solver_options, dict(model_options or {}))
    stage_names = [s.name for s in stages]
    post = getattr(backend, "postprocess", None)

    results: list[PromptResult] = []
    for pi, prompt in enumerate(prompt_list):
        tp = time.perf_counter()
        cond = backend.encode_prompt(prompt)
        notes.extend(getattr(backend, "prompt_notes", lambda p: [])(prompt))

        def cb(info, pi=pi, prompt=prompt):
            if callback is not None:
                k = stage_names.index(info.stage) if info.stage in stage_names else 0
                callback(Progress(pi, len(prompt_list), prompt, info.stage, info.index + 1, info.total, k,
                                  len(stages)))

        xs = []
        ran_steps: list[int] = []
        for b0 in range(0, samples, bs):
            res = run_cascade(stages, y_dev, scale, base_cfg, seeds[b0:b0 + bs], cond, sigma_y=sigma_y,
                              operator=lambda f, s: make_operator(operator, f, s), device=dev, dtype=work_dtype,
                              callback=cb)
            x = res.x if post is None else post(res.x, y_dev, final_op)
            xs.append(x.detach())
            ran_steps = res.steps
        x = torch.cat(xs)
        psnr = lr_psnr(x, y_dev, final_op)  # the solver's consistency, before display clipping
        outside = int(((x.abs() > 1 + 1e-3).flatten(1).any(1)).sum())
        if outside:
            notes.append(f"prompt {prompt!r}: {outside} of {samples} samples had values outside the image range; "
                         "the PNGs are clipped (LR-PSNR is measured before clipping)")
        x = x.clamp(-1, 1)
        scores = backend.text_scores(x, prompt)
        text = [None] * samples if scores is None else [float(s) for s in scores.tolist()]
        samples01 = ((x.to(torch.float32).cpu().permute(0, 2, 3, 1).numpy() + 1) / 2).clip(0, 1)
        div, std = diversity(samples01)
        extra = {}
        exact = getattr(backend, "exact_metrics", None)
        if exact is not None:
            extra = exact(x, y_dev, final_op, prompt, sigma_y)
        tags = getattr(backend, "prompt_tags", lambda p: None)(prompt)
        results.append(PromptResult(prompt, samples01, seeds, psnr, text, std, div, time.perf_counter() - tp,
                                    tags, extra))

    ref_metrics = None
    if reference is not None:
        ref_metrics = reference_scores(reference, results)
    total = time.perf_counter() - t0
    solver_rec = {**base_cfg.replace(**{k: v for k, v in solver_options.items() if k in base_cfg.to_dict()}).to_dict(),
                  "per_stage": [{"stage": s.name, **(s.solver or base_cfg).to_dict()} for s in stages]}
    notes.extend(record_steps_ran(solver_rec, ran_steps))
    settings = {
        "input": info,
        "model": backend.describe(),
        "solver": solver_rec,
        "operator": operator,
        "sigma_y": sigma_y,
        "seed": int(seed),
        "samples": samples,
        "model_options": dict(model_options or {}),
        "device": str(dev),
        "dtype": str(getattr(backend, "dtype", work_dtype)).replace("torch.", ""),
    }
    timings = {"total_s": round(total, 3), "load_s": round(t_loaded - t0, 3),
               "per_prompt_s": [round(r.seconds, 3) for r in results]}
    return Exploration(lr=arr, scale=scale, prompts=results, settings=settings, notes=notes, timings=timings,
                       reference=reference, reference_metrics=ref_metrics)


def record_steps_ran(solver: dict, ran: list[int]) -> list[str]:
    """Put the steps each stage ran into ``solver["per_stage"]`` (and the top-level ``steps``), keeping a
    request the schedule could not honour as ``steps_requested``; returns a note for each."""
    notes = []
    for st, n in zip(solver["per_stage"], ran):
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

    out = {"psnr": [], "ssim": []}
    ref = torch.from_numpy(reference).permute(2, 0, 1)[None].double()
    for r in results:
        xs = torch.from_numpy(r.samples).permute(0, 3, 1, 2).double()
        mse = ((xs - ref) ** 2).flatten(1).mean(1).clamp(min=1e-20)
        out["psnr"].append([float(v) for v in (10 * torch.log10(1 / mse)).tolist()])
        out["ssim"].append([float(v) for v in ssim(xs * 2 - 1, ref * 2 - 1).tolist()])
    return out
