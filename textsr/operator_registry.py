"""The one registry of downsampling operators A: name -> class, description and parameters.

Torch-free (the CLI's ``--help`` and the app's dropdown read it without importing torch); the classes
live in ``textsr.operators`` and are imported when an operator is built.  The CLI (``--operator``,
``--operator-option KEY=VALUE``), the app, batch manifests (``"operator"``, ``"operator_options"``),
``rank`` and the docs all read this table.

Adding an operator: write its class in ``textsr.operators`` (``__init__(factor, in_shape, **params)``)
and add one entry to ``OPERATORS`` below, with its parameters.

Cascades: every stage of a cascade gets the operator at that stage's factor (``textsr.cascade``:
``scale / divisor``).  Parameters are measured in pixels of the LR image (the gaussian's ``width``),
so a stage at 1/d of the output size gets the same physical blur at its own pixel size: a cascade
needs nothing special.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import UsageError

__all__ = ["OPERATORS", "DEFAULT_OPERATOR", "OperatorEntry", "OperatorParam", "check_operator", "operator_names"]

DEFAULT_OPERATOR = "avgpool"


@dataclass(frozen=True)
class OperatorParam:
    """A number an operator takes: its default, range (``lo`` excluded when ``lo_open``) and meaning."""

    name: str
    default: float
    lo: float
    hi: float
    help: str
    lo_open: bool = False

    def check(self, value: Any, operator: str) -> float:
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))
        v = float(value) if ok else math.nan
        if not ok or not (self.lo < v if self.lo_open else self.lo <= v) or v > self.hi:
            span = f"{'above' if self.lo_open else 'from'} {self.lo:g} {'and at most' if self.lo_open else 'to'} " \
                   f"{self.hi:g}"
            raise UsageError(f"operator {operator!r}: {self.name} must be a number {span} ({self.help}); "
                             f"got {value!r}")
        return v


@dataclass(frozen=True)
class OperatorEntry:
    name: str
    cls: str  # the class in textsr.operators
    description: str
    params: tuple[OperatorParam, ...] = ()

    def defaults(self) -> dict[str, float]:
        return {p.name: p.default for p in self.params}


OPERATORS: dict[str, OperatorEntry] = {
    "avgpool": OperatorEntry("avgpool", "AvgPool", "block mean over scale x scale pixels (the default)"),
    "bicubic": OperatorEntry("bicubic", "Bicubic", "antialiased bicubic, as PIL's resize and torch's "
                             "interpolate(antialias=True)"),
    "bicubic-reflect": OperatorEntry("bicubic-reflect", "BicubicReflect", "bicubic as MATLAB's imresize (the SR "
                                     "benchmarks' LR images; the paper preset's)"),
    "gaussian": OperatorEntry(
        "gaussian", "GaussianBlur", "Gaussian blur, then one sample per LR pixel (the classical blur-downsample "
        "degradation)",
        params=(OperatorParam("width", 0.5, 0.0, 2.0, "the blur's standard deviation in LR pixels (x scale "
                              "for HR pixels); above 0.88 the finest LR detail cannot be matched exactly",
                              lo_open=True),)),
}


def operator_names() -> list[str]:
    return list(OPERATORS)


def check_operator(name: Any, options: Mapping[str, Any] | None = None) -> tuple[str, dict[str, float]]:
    """``(name, every parameter with its value)``: ``options`` over the registered defaults; unknown
    names and parameters are refused naming what exists."""
    if not isinstance(name, str) or name not in OPERATORS:
        raise UsageError(f"operator must be one of {', '.join(OPERATORS)}; got {name!r}")
    entry = OPERATORS[name]
    opts = dict(options or {})
    unknown = sorted(set(opts) - {p.name for p in entry.params})
    if unknown:
        known = ", ".join(p.name for p in entry.params) or "none"
        raise UsageError(f"operator {name!r} has no option(s) {unknown}; its options: {known}")
    return name, {p.name: p.check(opts.get(p.name, p.default), name) for p in entry.params}


def help_text() -> str:
    """The operators and their parameters in one line each (``--operator`` help, docs)."""
    parts = []
    for e in OPERATORS.values():
        ps = "".join(f"; {p.name}={p.default:g}: {p.help}" for p in e.params)
        parts.append(f"{e.name}: {e.description}{ps}")
    return ". ".join(parts)
