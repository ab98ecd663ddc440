"""One check per kind of argument, shared by ``explore``, the command line and batch manifests.

Each function takes what a person (or a JSON file) gave and returns it typed, or raises ``UsageError``
naming the argument, what was given and what to pass instead. They run at the boundary, before any
model is loaded or any sample drawn.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

from .errors import UsageError

SEED_MAX = 2**32 - 1  # the base seed; sample k uses seed + k
SIGMA_Y_MAX = 2.0  # [-1, 1] units: noise as large as the whole pixel range
MAX_SAMPLES = 256
SCALES = range(2, 33)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def integer(value: Any, name: str, *, lo: int | None = None, hi: int | None = None, hint: str = "") -> int:
    """A whole number (int, numpy integer, or a float/str holding one) in [lo, hi]."""
    if isinstance(value, bool):
        ok = None
    elif isinstance(value, numbers.Integral):
        ok = int(value)
    elif isinstance(value, numbers.Real) and math.isfinite(value) and float(value).is_integer():
        ok = int(value)
    elif isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        ok = int(value.strip())
    else:
        ok = None
    span = (f" from {lo} to {hi}" if hi is not None else f" >= {lo}") if lo is not None else ""
    if ok is None or (lo is not None and ok < lo) or (hi is not None and ok > hi):
        raise UsageError(f"{name} must be a whole number{span}, got {_shown(value)}" + (f" ({hint})" if hint else ""))
    return ok


def number(value: Any, name: str, *, lo: float, hi: float, hint: str = "") -> float:
    """A finite real number in [lo, hi] (a str is refused: pass a number)."""
    bad = f"{name} must be a number from {lo:g} to {hi:g}" + (f" ({hint})" if hint else "")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise UsageError(f"{bad}, got {_shown(value)} ({type(value).__name__})")
    v = float(value)
    if not math.isfinite(v) or not lo <= v <= hi:
        raise UsageError(f"{bad}, got {_shown(value)}")
    return v


def seed(value: Any) -> int:
    return integer(value, "seed", lo=0, hi=SEED_MAX, hint="sample k uses seed + k")


def samples(value: Any) -> int:
    return integer(value, "samples", lo=1, hi=MAX_SAMPLES)


def scale(value: Any) -> int:
    return integer(value, "scale", lo=SCALES.start, hi=SCALES.stop - 1, hint="an upscaling factor, e.g. 8")


def sigma_y(value: Any) -> float:
    return number(value, "sigma_y", lo=0.0, hi=SIGMA_Y_MAX,
                  hint="the LR image's noise std in [-1, 1] units, half of a [0, 1] value; 0 for a clean image")


def steps(value: Any) -> int | None:
    return None if value is None else integer(value, "steps", lo=1, hint="denoising steps per stage")


def batch_size(value: Any) -> int | None:
    return None if value is None else integer(value, "batch_size", lo=1, hint="samples per forward batch")


def max_pixels(value: Any) -> int:
    return integer(value, "max_pixels", lo=1)


def options(value: Any, name: str) -> dict:
    """None or a mapping with string keys (``{"guidance_scale": 7}``)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise UsageError(f"{name} must be a dict of name -> value, e.g. {{'guidance_scale': 7}}; got {_shown(value)}")
    return dict(value)


def text(value: Any, name: str, *, optional: bool = True) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise UsageError(f"{name} must be a string, got {_shown(value)} ({type(value).__name__})")
    return value


def prompts(value: Any) -> list[str]:
    """None, one string, or a list of strings."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, Sequence) and not isinstance(value, (bytes, bytearray)) and all(isinstance(p, str) for p in value):
        return list(value)
    raise UsageError(f"prompts must be a string or a list of strings, e.g. ['a red circle', 'a star']; got {_shown(value)}")


def sweep_values(value: Any) -> str | list[str] | None:
    """The template's values: a comma-separated string or a list of strings."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, Sequence) and all(isinstance(v, str) for v in value):
        return list(value)
    raise UsageError(f"values must be a comma-separated string or a list of strings, e.g. 'circle,star'; "
                     f"got {_shown(value)}")


def choice(value: Any, name: str, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise UsageError(f"{name} must be one of {', '.join(choices)}; got {_shown(value)}")
    return value


def flag(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise UsageError(f"{name} must be true or false, got {_shown(value)}")
    return value


def path_text(value: Any, name: str, what: str) -> str:
    """A path given as a non-empty string (a manifest's image or out)."""
    if not isinstance(value, str) or not value.strip() or "\x00" in value:
        raise UsageError(f"{name} must be the path of {what} as a string, got {_shown(value)}")
    return value
