"""The one explicit registry of solvers: name -> (config class, step function)."""

from __future__ import annotations

from typing import Any

from .base import SolverConfig, StepFn
from .ddnm import DDNMConfig, DDNMPlusConfig, ddnm_plus_step, ddnm_step
from .dps import DPSConfig, dps_step
from .pigdm import PiGDMConfig, pigdm_step
from .plain import PlainConfig, plain_step
from .tds import TDSConfig, tds_step

SOLVERS: dict[str, tuple[type[SolverConfig], StepFn]] = {
    "plain": (PlainConfig, plain_step),
    "ddnm": (DDNMConfig, ddnm_step),
    "ddnm+": (DDNMPlusConfig, ddnm_plus_step),
    "dps": (DPSConfig, dps_step),
    "pigdm": (PiGDMConfig, pigdm_step),
    "tds": (TDSConfig, tds_step),
}


def make_config(name: str, **options: Any) -> SolverConfig:
    """Build a solver config by name; unknown names/options raise errors that list what exists."""
    key = name.lower().replace("_", "").replace("plus", "+")
    if key not in SOLVERS:
        raise ValueError(f"unknown solver {name!r}; choose one of {', '.join(SOLVERS)}")
    cls = SOLVERS[key][0]
    return cls().replace(**options) if options else cls()


def step_function(cfg: SolverConfig) -> StepFn:
    for cls, fn in SOLVERS.values():
        if type(cfg) is cls:
            return fn
    raise TypeError(f"no step function registered for {type(cfg).__name__}")
