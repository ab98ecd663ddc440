"""The one explicit registry of solvers: name -> where its config class and step function live.

It lives outside ``textsr.solvers`` so that importing it is cheap (no torch): the CLI's ``--solver``
choices and the app's dropdown read ``solver_names()`` without loading any solver.  Everything else
about a solver is declared on its config class (``SolverConfig`` subclasses): its name, its defaults,
and its capabilities (``needs_grad``, ``needs_svd``, ``projects``, ``takes_particles``), from which
backends derive what they can run.

Adding a solver: write its module (a frozen config class + a step function with the ``StepFn``
signature) and add one line to ``SOLVERS`` below.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .solvers.base import SolverConfig, StepFn


@dataclass(frozen=True)
class SolverEntry:
    module: str  # e.g. "textsr.solvers.ddnm"
    config: str  # the SolverConfig subclass in that module
    step: str  # the step function in that module


SOLVERS: dict[str, SolverEntry] = {
    "plain": SolverEntry("textsr.solvers.plain", "PlainConfig", "plain_step"),
    "ddnm": SolverEntry("textsr.solvers.ddnm", "DDNMConfig", "ddnm_step"),
    "ddnm+": SolverEntry("textsr.solvers.ddnm", "DDNMPlusConfig", "ddnm_plus_step"),
    "dps": SolverEntry("textsr.solvers.dps", "DPSConfig", "dps_step"),
    "pigdm": SolverEntry("textsr.solvers.pigdm", "PiGDMConfig", "pigdm_step"),
    "tds": SolverEntry("textsr.solvers.tds", "TDSConfig", "tds_step"),
    "flowdps": SolverEntry("textsr.solvers.flowdps", "FlowDPSConfig", "flowdps_step"),
}


def solver_names() -> list[str]:
    return list(SOLVERS)


def canonical_name(name: str) -> str:
    """The registry name for ``name``: case-insensitive, ``_``/``-`` ignored, ``plus`` = ``+``
    (``"DDNM_plus"`` -> ``"ddnm+"``).  The only place solver names are normalised."""
    if not isinstance(name, str):
        raise ValueError(f"a solver name must be a string, got {name!r}; choose one of {', '.join(SOLVERS)}")
    key = name.strip().lower().replace("_", "").replace("-", "").replace("plus", "+")
    if key not in SOLVERS:
        raise ValueError(f"unknown solver {name!r}; choose one of {', '.join(SOLVERS)}")
    return key


def _load(name: str, attr: str) -> Any:
    entry = SOLVERS[canonical_name(name)]
    return getattr(importlib.import_module(entry.module), getattr(entry, attr))


def config_class(name: str) -> type[SolverConfig]:
    """The config class of solver ``name`` (imports its module)."""
    return _load(name, "config")


def solver_classes() -> dict[str, type[SolverConfig]]:
    """Every registered solver's config class, by name (imports them all)."""
    return {name: config_class(name) for name in SOLVERS}


def make_config(name: str, **options: Any) -> SolverConfig:
    """Build a solver config by name; unknown names/options raise errors that list what exists."""
    cls = config_class(name)
    return cls().replace(**options) if options else cls()


def step_function(cfg: SolverConfig) -> StepFn:
    """The step function of the solver ``cfg`` configures."""
    cls = config_class(cfg.name)
    if type(cfg) is not cls:
        raise TypeError(f"{type(cfg).__name__} is not the registered config of solver {cfg.name!r}")
    return _load(cfg.name, "step")
