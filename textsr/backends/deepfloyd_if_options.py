"""DeepFloyd IF's sampling options (``IFOptions``: ``--option KEY=VALUE``) and load options
(``IFLoadOptions``: a model spec's ``"load"``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, ClassVar

from ..errors import UsageError
from .base import check_options
from .options import LoadOptions, number


def _pair(value: Any, name: str, kind: type) -> tuple:
    vals = list(value) if isinstance(value, (list, tuple)) else [value, value]
    if len(vals) != 2:
        raise UsageError(f"DeepFloyd IF option {name} takes one value or two (stage I, stage II), got {value!r}")
    try:
        out = tuple(kind(v) for v in vals)
    except (TypeError, ValueError) as e:
        raise UsageError(f"DeepFloyd IF option {name} must be {kind.__name__}(s), got {value!r}") from e
    if kind is int and any(float(v) != o for v, o in zip(vals, out)):
        raise UsageError(f"DeepFloyd IF option {name} must be whole numbers, got {value!r}")
    return out


@dataclass(frozen=True)
class IFOptions:
    """Sampling options (``build_stages(..., options)``; ``--option KEY=VALUE`` on the CLI).

    guidance_scale: CFG scale per stage (one number sets both); negative_prompt: the unconditional
    branch's prompt; noise_level: stage II's augmentation level of the stage-I image (0..T-1 of the
    noising schedule); steps: per-stage steps overriding the solver defaults (DDNM/DDNM+/plain 100 + 50,
    DPS/PiGDM 250 + 100); warm_start: stage I starts at this fraction of the schedule from
    ``sqrt(abar) A+ y + sqrt(1 - abar) z`` (SDEdit-style, the paper's code; None: from pure noise);
    thresholding: apply the scheduler's dynamic thresholding (or clipping) to x0_hat.
    """

    guidance_scale: tuple[float, float] = (7.0, 4.0)
    negative_prompt: str = ""
    noise_level: int = 250
    steps: tuple[int, int] | None = None
    warm_start: float | None = None
    thresholding: bool = True

    def __post_init__(self) -> None:
        if any(not math.isfinite(w) or w < 0 for w in self.guidance_scale):
            raise UsageError(f"guidance_scale must be finite and >= 0, got {self.guidance_scale}")
        if not isinstance(self.negative_prompt, str):
            raise UsageError(f"negative_prompt must be a string, got {self.negative_prompt!r}")
        if isinstance(self.noise_level, bool) or not isinstance(self.noise_level, int) or self.noise_level < 0:
            raise UsageError(f"noise_level must be an integer >= 0, got {self.noise_level!r}")
        if self.steps is not None and any(s < 1 for s in self.steps):
            raise UsageError(f"steps must be positive, got {self.steps}")
        if self.warm_start is not None and not 0.0 < self.warm_start <= 1.0:
            raise UsageError(f"warm_start must lie in (0, 1], got {self.warm_start}")
        if not isinstance(self.thresholding, bool):
            raise UsageError(f"thresholding must be true or false, got {self.thresholding!r}")

    @classmethod
    def from_dict(cls, options: dict) -> IFOptions:
        check_options(options, [f.name for f in fields(cls)], "DeepFloyd IF")
        o = dict(options)
        if "guidance_scale" in o:
            o["guidance_scale"] = _pair(o["guidance_scale"], "guidance_scale", float)
        if o.get("steps") is not None:
            o["steps"] = _pair(o["steps"], "steps", int)
        if o.get("warm_start") is not None:
            o["warm_start"] = number(o["warm_start"], "warm_start")
        return cls(**o)


@dataclass(frozen=True)
class IFLoadOptions(LoadOptions):
    """The memory options (``LoadOptions``: cpu_offload keeps one of T5, UNet I and UNet II on the GPU at a
    time) plus variant: preferred weight files (``"fp16"``: half the download; used when present, upcast
    on CPU)."""

    what: ClassVar[str] = "DeepFloyd IF load"
    variant: str | None = "fp16"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.variant is not None and not isinstance(self.variant, str):
            raise UsageError(f"variant must be a string such as 'fp16' or null, got {self.variant!r}")
