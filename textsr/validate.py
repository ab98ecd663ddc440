"""One check per kind of argument, shared by ``explore``, the command line and batch manifests.

Each function takes what a person (or a JSON file) gave and returns it typed, or raises ``UsageError``
naming the argument, what was given and what to pass instead. They run at the boundary, before any
model is loaded or any sample drawn.
"""

from __future__ import annotations

import math
import numbers
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .errors import UsageError

SEED_MAX = 2**32 - 1  # the base seed; sample k uses seed + k
SIGMA_Y_MAX = 2.0  # [-1, 1] units: noise as large as the whole pixel range
MAX_SAMPLES = 256
MAX_PARTICLES = 4096  # per sample
MAX_PROMPT_CHARS = 2000  # per prompt: the longest text encoder, FLUX.1 [dev]'s T5, reads 512 tokens (~2,000 characters)
MAX_TRAVEL_REPEAT = 20  # time-travel passes per block (RePaint's default is 10): the work grows with it
SCALES = range(2, 33)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def integer(value: Any, name: str, *, lo: int | None = None, hi: int | None = None, hint: str = "") -> int:
    """A whole number (int, numpy integer, or a float holding one) in [lo, hi]; a str is refused."""
    if isinstance(value, bool):
        ok = None
    elif isinstance(value, numbers.Integral):
        ok = int(value)
    elif isinstance(value, numbers.Real) and math.isfinite(value) and float(value).is_integer():
        ok = int(float(value))
    else:
        ok = None
    span = (f" from {lo} to {hi}" if hi is not None else f" >= {lo}") if lo is not None else ""
    if ok is None or (lo is not None and ok < lo) or (hi is not None and ok > hi):
        kind = f" ({type(value).__name__})" if not isinstance(value, numbers.Real) or isinstance(value, bool) else ""
        raise UsageError(f"{name} must be a whole number{span}, got {_shown(value)}{kind}"
                         + (f" ({hint})" if hint else ""))
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


def particles(value: Any) -> int | None:
    return None if value is None else integer(value, "particles", lo=1, hi=MAX_PARTICLES,
                                              hint="particles per sample of the particle solver")


def travel(value: Any) -> tuple[int, int] | None:
    """Time-travel ``(L, R)``: jump back L steps, R passes over each block (R = 1 is off), R capped."""
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 2:
        raise UsageError(f"travel must be two whole numbers (L, R): jump back L steps, R passes; got {_shown(value)}")
    length = integer(value[0], "travel length L", lo=1, hint="steps jumped back")
    repeat = integer(value[1], "travel repeat R", lo=1, hi=MAX_TRAVEL_REPEAT,
                     hint="passes over each block, 1 = off; the work grows R-fold")
    return length, repeat


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
    if isinstance(value, Sequence) and not isinstance(value, (bytes, bytearray)) and all(
            isinstance(p, str) for p in value):
        return list(value)
    raise UsageError("prompts must be a string or a list of strings, e.g. ['a red circle', 'a star']; "
                     f"got {_shown(value)}")


def prompt_length(value: str, which: str = "a prompt") -> str:
    """A prompt of at most ``MAX_PROMPT_CHARS`` characters (every front end's prompts, templates and sweeps
    pass here: a longer one is a mistake or an attack, and it would cost time in every label drawn)."""
    if len(value) > MAX_PROMPT_CHARS:
        raise UsageError(f"{which} is {len(value):,} characters long, more than the limit of {MAX_PROMPT_CHARS:,} "
                         f"({_shown(value)}); no text encoder reads more than 512 tokens (about 2,000 characters): "
                         "shorten it")
    return value


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


def image_array(value: Any) -> np.ndarray:
    """An in-memory image -> float32 (H, W, C) in [0, 1], C = 1 or 3.

    Accepted: numpy arrays (or nested lists) and torch tensors, (H, W), (H, W, C) or (C, H, W) with C = 1 or 3 (a
    leading batch dimension of 1 is dropped); uint8 in 0..255 or floats in [0, 1]. Layout: a torch
    tensor is channels-first when its first dimension is 1 or 3 (torch's convention), a numpy array is
    channels-last when its last dimension is 1 or 3 (numpy's and PIL's), so the ambiguous (3, H, 3),
    e.g. (3, 3, 3), is (C, H, W) for a tensor and (H, W, C) for an array.
    """
    tensor = _is_tensor(value)
    if tensor:
        arr = value.detach().cpu()
        arr = arr.float().numpy() if arr.dtype.is_floating_point and arr.dtype != _torch().float64 else arr.numpy()
    elif isinstance(value, np.ndarray):
        arr = value
    elif isinstance(value, (list, tuple)):
        try:
            arr = np.asarray(value)
        except ValueError:  # ragged
            raise UsageError("image as nested lists must be rectangular, (H, W) or (H, W, C)") from None
        if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
            raise UsageError(f"image as nested lists must hold numbers, got {arr.dtype}")
    else:
        raise UsageError(f"image must be a path, a PIL image, a numpy array or a torch tensor; got {_shown(value)} "
                         f"({type(value).__name__})")
    shape = tuple(arr.shape)
    if arr.ndim == 4 and shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 2:
        arr = arr[:, :, None]
    elif arr.ndim == 3:
        first, last = arr.shape[0] in (1, 3), arr.shape[2] in (1, 3)
        if (tensor and first) or (not tensor and first and not last):
            arr = arr.transpose(1, 2, 0)
        elif not last:
            arr = None
    else:
        arr = None
    if arr is None:
        raise UsageError(f"an image array must be (H, W), (H, W, C) or (C, H, W) with C = 1 or 3; got shape {shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise UsageError(f"the image is empty ({arr.shape[1]}x{arr.shape[0]} pixels; shape {shape}); "
                         "pass a non-empty image")
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if not np.issubdtype(arr.dtype, np.floating):
        raise UsageError(f"an image array must be uint8 (0-255) or float in [0, 1]; got dtype {arr.dtype}"
                         + (" (convert integers with arr.astype(np.uint8))"
                            if np.issubdtype(arr.dtype, np.integer) else ""))
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1:
        raise UsageError("a float image must have finite values in [0, 1] (a [-1, 1] model tensor x: pass (x + 1) / 2)")
    return np.ascontiguousarray(arr)


def _is_tensor(value: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and torch.is_tensor(value)


def _torch():
    return sys.modules["torch"]
