"""One style for every backend's sampling options: a frozen dataclass validated in ``__post_init__``.

The fields of a backend's options class are its known keys (``--option KEY=VALUE`` on the CLI,
``model_options=`` in the API, ``"defaults"`` in a model spec).  ``from_dict`` layers the spec's defaults
under the caller's options and refuses unknown keys with a ``UsageError`` that lists the known ones;
``__post_init__`` checks and normalises each value (``UsageError`` naming the key and what it takes).

    @dataclass(frozen=True)
    class MyOptions(BackendOptions):
        what: ClassVar[str] = "my-backend"
        guidance_scale: float = 7.5

        def __post_init__(self) -> None:
            self.set("guidance_scale", number(self.guidance_scale, "guidance_scale", lo=0.0))
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, ClassVar, TypeVar

from .. import validate
from ..errors import UsageError
from .base import check_options

OptionsT = TypeVar("OptionsT", bound="BackendOptions")


@dataclass(frozen=True)
class BackendOptions:
    """Base class of a backend's sampling options (see the module docstring)."""

    what: ClassVar[str] = "model"  # the backend's name in error messages

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_dict(cls: type[OptionsT], options: Mapping[str, Any] | None = None,
                  defaults: Mapping[str, Any] | None = None) -> OptionsT:
        """The class defaults < ``defaults`` (a model spec's) < ``options``; unknown keys in either raise a
        ``UsageError`` listing the known ones."""
        defaults, options = dict(defaults or {}), dict(options or {})
        check_options(defaults, cls.keys(), f"{cls.what} (model spec defaults)")
        check_options(options, cls.keys(), cls.what)
        return cls(**{**defaults, **options})

    def set(self, name: str, value: Any) -> None:
        """Store the normalised value of a field (for ``__post_init__``: the dataclass is frozen)."""
        object.__setattr__(self, name, value)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


# -- value checks: each returns the normalised value or raises a UsageError naming the option ----------------
def number(value: Any, name: str, *, lo: float | None = None, hi: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        raise UsageError(f"option {name} must be a number, got {value!r}")
    v = float(value)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        rng = f"[{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]"
        raise UsageError(f"option {name} must lie in {rng}, got {v}")
    return v


def integer(value: Any, name: str, *, lo: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value != int(value) or value < lo:
        raise UsageError(f"option {name} must be a whole number >= {lo}, got {value!r}")
    return int(value)


def flag(value: Any, name: str) -> bool:
    return validate.flag(value, f"option {name}")


def choice(value: Any, name: str, choices: Sequence[str]) -> str:
    return validate.choice(value, f"option {name}", choices)


def text(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise UsageError(f"option {name} must be a string, got {value!r}")
    return value


def fractions(value: Any, name: str, n: int = 2) -> tuple[float, ...]:
    """``n`` fractions in [0, 1] (e.g. a window over the schedule)."""
    try:
        vals = tuple(value)
    except TypeError:
        vals = ()
    if len(vals) != n:
        raise UsageError(f"option {name} takes {n} fractions of T in [0, 1], e.g. [1.0, 0.2]; got {value!r}")
    return tuple(number(v, name, lo=0.0, hi=1.0) for v in vals)


@dataclass(frozen=True)
class LoadOptions(BackendOptions):
    """Load-time settings (a model spec's ``"load"``) of the Hugging Face backends without their own
    (DeepFloyd IF has ``IFLoadOptions``), each where the backend supports it (``of``'s ``known``):
    cpu_offload (keep the modules not in use on the CPU; what that means is the backend's, e.g. the flow
    backends' text encoders), sequential_cpu_offload (stream every module's weights to the GPU layer by layer:
    least memory, slowest), attention_slicing (compute attention in slices), vae_tiling (encode/decode large
    images in overlapping tiles) and vae_slicing (one image of a batch at a time through the VAE)."""

    what: ClassVar[str] = "load"
    cpu_offload: bool = False
    attention_slicing: bool = False
    sequential_cpu_offload: bool = False
    vae_tiling: bool = False
    vae_slicing: bool = False

    def __post_init__(self) -> None:
        for name in ("cpu_offload", "attention_slicing", "sequential_cpu_offload", "vae_tiling", "vae_slicing"):
            self.set(name, flag(getattr(self, name), name))
        if self.cpu_offload and self.sequential_cpu_offload:
            raise UsageError("choose one of cpu_offload and sequential_cpu_offload (the sequential one offloads more)")

    @classmethod
    def of(cls, source: Mapping[str, Any], backend: str, *, known: Sequence[str] = ("cpu_offload",),
           no_offload: str | None = None) -> LoadOptions:
        """``source["load"]`` for ``backend``: keys outside ``known`` are refused (naming the known ones);
        ``no_offload``: the message for ``cpu_offload = true`` when the backend cannot offload."""
        load = dict(source.get("load") or {})
        check_options(load, known, f"{backend} load")
        o = cls(**load)
        if o.cpu_offload and no_offload:
            raise UsageError(no_offload)
        return o
