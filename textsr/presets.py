"""Named bundles of settings (``explore(..., preset=...)``, ``--preset`` on the CLI, the app, manifests).

The one place presets are defined and resolved; torch-free (the CLI's ``--help`` reads the names).

``"paper"``: the DeepFloyd IF settings of the text-guided SR paper's own code (docs/paper-if-loop.md,
"The stages"), without its bugs (docs/paper-code.md, "Differences from the paper's code"):

* DDNM / DDNM+ (and the plain sampler): 100 + 50 steps with the DDPM posterior step and IF's learned
  variance (``step_kind="ddpm"``), both stages from noise;
* DPS / PiGDM: 250 + 100 steps, ``zeta = 0.5``, PiGDM in the paper code's simplified form
  (``weighting="official"``); stage I on the 250-step grid from its 101st timestep (``skip=100``: 150 steps
  from t = 596) warm-started at ``sqrt(abar) A+ y + sqrt(1 - abar) z``; stage II from noise;
* CFG 7 / 4, stage II noise level 250, dynamic thresholding, operator ``bicubic-reflect``.

Explicit options win over the preset: an explicit ``operator``; any solver option (flat: every stage;
nested under a stage name: that stage); any model option.  Giving a late start (``start`` or ``skip``)
replaces the preset's, the IF option ``steps`` replaces the preset's per-stage steps and ``warm_start``
its stage-I start.  Other steps than the preset's keep its late start where it begins: ``skip = k`` of
``n`` becomes ``start = 1 - k / n`` (0.6 for the paper: ``steps`` steps from t = 599 instead of 596).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import UsageError

__all__ = ["PRESETS", "Preset", "ResolvedPreset", "check_preset", "preset_names", "resolve_preset"]

DEFAULT_OPERATOR = "avgpool"
STAGE_KEYS = ("stage_1", "stage_2")
_LATE_START = {"start", "skip"}


@dataclass(frozen=True)
class Preset:
    """backends: the model backends it fits; solver_options: per solver, the per-stage solver options
    (``{"stage_1": {...}, "stage_2": {...}}``); model_options: backend options; operator: A."""

    name: str
    description: str
    backends: tuple[str, ...]
    operator: str
    model_options: Mapping[str, Any]
    solver_options: Mapping[str, Mapping[str, Mapping[str, Any]]]


def _paper() -> Preset:
    ddpm = {"step_kind": "ddpm", "init": "noise"}
    ddnm = {"stage_1": {"steps": 100, **ddpm}, "stage_2": {"steps": 50, **ddpm}}
    # stage I: n = 250 on the full grid, the first 100 dropped (the paper code's start_time = 100)
    dps = {"stage_1": {"steps": 250, "skip": 100, "init": "pinv", "step_kind": "ddpm", "zeta": 0.5},
           "stage_2": {"steps": 100, **ddpm, "zeta": 0.5}}
    pigdm = {k: {**v, "weighting": "official"} for k, v in dps.items()}
    return Preset(
        name="paper",
        description="the text-guided SR paper's DeepFloyd IF settings (DDPM step with IF's learned variance; "
                    "DDNM 100 + 50, DPS/PiGDM 250 (from t = 596) + 100 with zeta 0.5; CFG 7/4; bicubic-reflect)",
        backends=("deepfloyd-if",),
        operator="bicubic-reflect",
        model_options={"guidance_scale": [7.0, 4.0], "noise_level": 250, "thresholding": True},
        solver_options={"plain": ddnm, "ddnm": ddnm, "ddnm+": ddnm, "dps": dps, "pigdm": pigdm},
    )


PRESETS: dict[str, Preset] = {"paper": _paper()}


def preset_names() -> list[str]:
    return list(PRESETS)


@dataclass(frozen=True)
class ResolvedPreset:
    """What a run uses after the preset (None: no preset) and the explicit options are merged."""

    name: str | None
    operator: str
    solver_options: dict
    model_options: dict = field(default_factory=dict)


def check_preset(name: Any, backend: str | None = None) -> Preset | None:
    """The preset called ``name`` (None: none), checked against the model's backend kind if known."""
    if name is None:
        return None
    if not isinstance(name, str) or name not in PRESETS:
        raise UsageError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)} (or none)")
    p = PRESETS[name]
    if backend is not None and backend not in p.backends:
        raise UsageError(f"preset {name!r} is for {' or '.join(p.backends)} models (it sets their stages' steps, "
                         f"guidance and variance); this model is a {backend!r} model. Drop the preset, or use a "
                         f"{p.backends[0]} model")
    return p


def resolve_preset(name: str | None, *, backend: str | None, solver: str, operator: str | None,
                   solver_options: Mapping[str, Any] | None, model_options: Mapping[str, Any] | None,
                   stages: tuple[str, ...] = STAGE_KEYS) -> ResolvedPreset:
    """Merge preset ``name`` under the explicit options (see the module docstring).

    solver: the registry name; stages: the model's stage names (the preset's options for stages the
    model does not have are dropped); operator None: the preset's, else ``avgpool``."""
    user_s = dict(solver_options or {})
    user_m = dict(model_options or {})
    p = check_preset(name, backend)
    if p is None:
        return ResolvedPreset(None, operator or DEFAULT_OPERATOR, user_s, user_m)
    flat = {k for k, v in user_s.items() if not isinstance(v, Mapping)}
    merged: dict[str, Any] = {k: v for k, v in user_s.items() if k in flat}
    for stage in stages:
        mine = copy.deepcopy(dict(p.solver_options.get(solver, {}).get(stage, {})))
        theirs = dict(user_s.get(stage, {}) or {})
        given = flat | set(theirs)
        if "steps" in user_m:  # the IF option steps=[I, II] replaces the per-stage steps
            given.add("steps")
        if stage == "stage_1" and "warm_start" in user_m:  # the IF warm start sets stage I's start/init
            given |= {"start", "init"}
        if given & _LATE_START:
            given |= _LATE_START
        elif "steps" in given and mine.get("skip"):  # other steps, same start: skip k of n -> start 1 - k/n
            mine["start"] = 1.0 - mine.pop("skip") / mine["steps"]
        stage_opts = {k: v for k, v in mine.items() if k not in given}
        stage_opts.update(theirs)
        if stage_opts:
            merged[stage] = stage_opts
    for k, v in user_s.items():  # nested options for stages the preset does not cover stay as given
        if isinstance(v, Mapping) and k not in merged:
            merged[k] = dict(v)
    return ResolvedPreset(p.name, operator or p.operator, merged, {**copy.deepcopy(dict(p.model_options)), **user_m})
