"""Ranking prompts by ``P(prompt | y)``: which description explains the LR image, and how likely each is, in the
model's belief at guidance scale 1, among the prompts given (``textsr.rank``, ``textsr rank``).

``P(prompt_j | y) = pi_j p(y | prompt_j) / sum_i pi_i p(y | prompt_i)`` (``textsr.evidence``), with the evidence
``p(y | prompt)`` from one of two methods:

* ``"exact"``: the closed form of a backend that has one (``Backend.exact_evidence``: the built-in world, a
  Gaussian mixture); the default there.  Milliseconds, no sampling.
* ``"particles"``: the particle solver's estimate (``tds``; docs/evidence.md, "Two methods"), ``samples``
  independent runs of ``particles`` particles per prompt, combined without bias.  Only the stage whose
  evidence is reported runs (the first of a cascade: a later stage's estimate would count y
  twice), with every option that tilts the sampler away from ``p(x | prompt)`` at its neutral value
  (``Backend.neutral_options``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from .errors import UsageError

METHODS = ("exact", "particles")
DEFAULT_PARTICLES = 16  # per run, for the particle method when none are given


@dataclass
class Ranking:
    """Prompts ranked by ``P(prompt | y)`` (``entries``: prompt, probability, log_z, spread, ess_min, highest
    first), how (``method``, with ``particles`` x ``samples`` for the particle method), the guidance options
    set to neutral, and notes for the user."""

    entries: list[dict]
    neutral_options: dict
    method: str
    particles: int | None = None
    samples: int | None = None
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> list[dict]:
        return [{"prompt": e["prompt"], "probability": e["probability"], "log_z": e["log_z"]} for e in self.entries]


def _logit(log_z: float | None, prior: float) -> float:
    lz = log_z if log_z is not None and math.isfinite(log_z) else -math.inf
    return lz + (math.log(prior) if prior > 0 else -math.inf)


def choose_method(method: str | None, backend: Any, particles_given: bool) -> str:
    """``method`` checked against the backend: ``"auto"`` (or None) is ``"particles"`` when particles were asked
    for, else ``"exact"`` where the backend has closed-form evidence, else ``"particles"``."""
    has_exact = bool(getattr(backend, "closed_form_evidence", False))
    if method in (None, "auto"):
        return "exact" if has_exact and not particles_given else "particles"
    if method not in METHODS:
        raise UsageError(f"method must be one of auto, {', '.join(METHODS)}, got {method!r}")
    if method == "exact" and not has_exact:
        raise UsageError(f"the model {backend.info.name!r} has no closed-form evidence: use method 'particles' "
                         "(--method particles), which estimates it with the particle solver")
    return method


def rank(image: Any, prompts: Sequence[str] | str, *, callback: Callable[[Any], None] | None = None,
         **args: Any) -> Ranking:
    """Rank ``prompts`` by ``P(prompt | y) ∝ prior * p(y | prompt)`` (module docstring).  ``args``: the fields of
    ``textsr.request.ExploreRequest`` that ``textsr rank`` offers (docs/reference.md): ``scale`` (required),
    ``method`` (``"auto"``: exact where the backend has the closed form and ``particles`` is not given, else
    ``"particles"``), ``particles`` (default 16) x ``samples`` runs per prompt in batches of ``batch_size``
    samples (the denoiser sees ``batch_size`` particles at a time, 64 when None), ``model``, ``seed``,
    ``prompt_prior``, ``operator``, ``sigma_y`` ... .  Every argument is checked before any work; ``UsageError``
    says what to pass."""
    from .request import ExploreRequest

    args.setdefault("method", "auto")
    return rank_request(ExploreRequest.build(image=image, prompts=prompts, **args), callback)


def rank_request(request: Any, callback: Callable[[Any], None] | None = None) -> Ranking:
    """``rank`` for an ``ExploreRequest`` already built (the CLI's); its ``method`` None is ``"auto"``."""
    from . import api
    from .evidence import check_prior, prompt_probabilities

    t0 = time.perf_counter()
    if len(request.all_prompts) < 2:
        raise UsageError("ranking needs at least two prompts (-p ... -p ...)")
    req = api.check_inputs(replace(request, method=request.method or "auto"))
    pi = check_prior(request.prompt_prior, len(request.all_prompts))
    backend = api.resolve_backend(req)
    chosen = choose_method(request.method, backend, request.particles is not None)
    if chosen == "particles" and request.particles is None:
        req = replace(req, request=replace(req.request, particles=DEFAULT_PARTICLES),
                      solver_options={**req.solver_options, "particles": DEFAULT_PARTICLES})
    req = api.apply_preset(req, backend)
    meas = api.build_measurement(req, backend)
    neutral = backend.neutral_guidance(dict(req.model_options))
    if chosen == "exact":
        rows = _exact(backend, req, meas)
    else:
        rows = _particles(backend, replace(req, model_options=neutral), meas, callback)
    probs = prompt_probabilities([r["log_z"] for r in rows], pi)
    for r, p, q in zip(rows, probs, pi):
        r["probability"], r["logit"] = p, _logit(r["log_z"], q)
    # by posterior log-odds (log prior + log Z): probabilities underflow to 0 for every prompt but the best
    rows.sort(key=lambda r: r.pop("logit"), reverse=True)
    particle_run = chosen == "particles"
    return Ranking(rows, {k: neutral[k] for k in backend.neutral_options}, chosen,
                   req.request.particles if particle_run else None, req.samples if particle_run else None,
                   meas.notes, time.perf_counter() - t0)


def _exact(backend: Any, req: Any, meas: Any) -> list[dict]:
    rows = []
    for p in req.prompts:
        backend.encode_prompt(p)  # the prompt's tags exist (UsageError otherwise)
        meas.notes.extend(backend.prompt_notes(p))
        lz = float(backend.exact_evidence(meas.y, meas.operator, p, req.sigma_y))
        rows.append({"prompt": p, "log_z": lz, "spread": 0.0, "ess_min": None})
    return rows


def _particles(backend: Any, req: Any, meas: Any, callback: Callable[[Any], None] | None) -> list[dict]:
    """The first stage's evidence per prompt (the stage whose estimate is reported; the others do not run)."""
    from . import api
    from .cascade import run_cascade
    from .solver_registry import make_config

    tiled = {"tiling": meas.tiling} if meas.tiling is not None else {}
    stages = backend.build_stages("tds", req.solver_options, req.model_options, **tiled)[:1]
    base_cfg = make_config("tds")
    max_rows = api.check_particles(req, backend, meas, stages, base_cfg)
    api.check_memory(req, backend, meas, stages, max_rows)
    rows = []
    for i, p in enumerate(req.prompts):
        cond = backend.encode_prompt(p)
        meas.notes.extend(backend.prompt_notes(p))
        cb = api._progress_callback(callback, stages, i, len(req.prompts), p)
        log_z: list[torch.Tensor] = []
        ess: list[torch.Tensor] = []
        for b0 in range(0, req.samples, req.batch_size):
            res = run_cascade(stages, meas.y, req.scale, base_cfg, req.seeds[b0:b0 + req.batch_size], cond,
                              sigma_y=req.sigma_y, operator=req.make_operator, device=backend.device,
                              dtype=backend.work_dtype, callback=cb, max_rows=max_rows)
            if res.log_evidence is None or res.stage_ess[0] is None:
                raise TypeError("the particle solver returned no evidence")
            log_z.append(res.log_evidence)
            ess.append(res.stage_ess[0])
        ev = api.prompt_evidence(torch.cat(log_z), torch.cat(ess, dim=1), stages, backend, req)
        if ev.ess_min < 0.1 + 1.0 / ev.particles:
            meas.notes.append(f"prompt {p!r}: the particles' effective sample size fell to {ev.ess_min:.2f} of N; "
                              "the estimate rests on few particles (more particles or samples narrow it)")
        rows.append({"prompt": p, "log_z": ev.log_z, "spread": ev.spread, "ess_min": ev.ess_min})
    return rows
