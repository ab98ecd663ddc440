"""Zero-shot restoration solvers over one sampling loop (the registry is ``textsr.solver_registry``)."""

from ..solver_registry import (SOLVERS, canonical_name, config_class, make_config, solver_classes, solver_names,
                               step_function)
from .base import Noise, Problem, SolverConfig, StepInfo, StepResult
from .ddnm import DDNMConfig, DDNMPlusConfig
from .dps import DPSConfig
from .pigdm import PiGDMConfig
from .plain import PlainConfig
from .sample import SampleResult, sample

__all__ = [
    "DDNMConfig", "DDNMPlusConfig", "DPSConfig", "Noise", "PiGDMConfig", "PlainConfig", "Problem",
    "SOLVERS", "SampleResult", "SolverConfig", "StepInfo", "StepResult", "canonical_name", "config_class",
    "make_config", "sample", "solver_classes", "solver_names", "step_function",
]
