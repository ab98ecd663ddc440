"""Zero-shot restoration solvers over one sampling loop."""

from .base import Noise, Problem, SolverConfig, StepInfo, StepResult
from .ddnm import DDNMConfig, DDNMPlusConfig
from .dps import DPSConfig
from .pigdm import PiGDMConfig
from .plain import PlainConfig
from .registry import SOLVERS, make_config, step_function
from .sample import SampleResult, sample
from .tds import TDSConfig

__all__ = [
    "DDNMConfig", "DDNMPlusConfig", "DPSConfig", "Noise", "PiGDMConfig", "PlainConfig", "Problem",
    "SOLVERS", "SampleResult", "SolverConfig", "StepInfo", "StepResult", "make_config", "sample",
    "step_function", "TDSConfig",
]
