"""Tiling a two-model cascade (DeepFloyd IF: stage I + x4 stage II; Karlo: decoder + x4 super-resolution):
which passes run at which size (docs/tiling.md, "Cascades").

Without tiling the low-resolution model works at ``output / ratio`` and the super-resolution model at the
output.  When the output exceeds what the super-resolution model makes, the low-resolution model runs
*whole* at ``output / ratio^m`` (the smallest ``m`` that fits it, ``ratio^m`` dividing the scale), then
the super-resolution model runs ``m`` times, x``ratio`` each, each pass conditioned on the previous one
(as DeepFloyd's own README runs IF-II twice, 96 -> 1024 px), the passes larger than the model on
windows.  So the layout (what is where) is decided on the whole image, and the windows only add detail.
At x4 there is one choice, ``m = 1``: the low-resolution model runs on windows when the input itself is
larger than it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import InputImageError
from .plan import Tiling, cascade_divisors, chain_multiple, exceeds


@dataclass(frozen=True)
class CascadePass:
    """One pass of a cascade: ``name`` (the stage's, or ``"<stage>@HxW"`` for an extra pass), which model
    (``low``), its ``divisor`` of the output size and its ``size``."""

    name: str
    low: bool
    divisor: int
    size: tuple[int, int]


@dataclass(frozen=True)
class CascadeSizes:
    """A cascade's models: names, the sizes they make (``native``) and what their sides must be
    multiples of; ``high`` is None for a one-model pipeline."""

    low_name: str
    low_native: tuple[int, int]
    low_multiple: int
    high_name: str | None = None
    high_native: tuple[int, int] | None = None
    high_multiple: int = 1
    ratio: int = 4

    @property
    def output_native(self) -> tuple[int, int]:
        return self.high_native if self.high_native is not None else self.low_native

    def passes(self, output: tuple[int, int], scale: int, tiled: bool) -> list[CascadePass]:
        """The passes of a run (see the module docstring); ``tiled``: the run may use windows."""
        if self.high_name is None:
            return [CascadePass(self.low_name, True, 1, output)]
        if tiled and exceeds(output, self.output_native):
            divs = cascade_divisors(output, scale, self.low_native, self.ratio)
        else:
            divs = [self.ratio, 1]
        out = [CascadePass(self.low_name, True, divs[0], (output[0] // divs[0], output[1] // divs[0]))]
        for d in divs[1:]:
            size = (output[0] // d, output[1] // d)
            out.append(CascadePass(self.high_name if d == 1 else f"{self.high_name}@{size[0]}x{size[1]}", False, d,
                                   size))
        return out

    def check(self, lr_hw: tuple[int, int], tiling: Tiling, model: str) -> list[str]:
        """Raise ``InputImageError`` unless every pass of the tiled plan has sides its model can run and the
        window request is valid for the output model; returns a note on the plan."""
        scale, output = tiling.scale, tiling.output
        if self.high_name is not None and scale % self.ratio:
            raise InputImageError(f"{model} works at 1/{self.ratio} of the output first, so the scale must be a "
                                  f"multiple of {self.ratio}; got {scale}")
        passes = self.passes(output, scale, True)
        m = chain_multiple([p.divisor for p in passes],
                           [self.low_multiple if p.low else self.high_multiple for p in passes])
        if output[0] % m or output[1] % m:
            step = m // math.gcd(m, scale)
            raise InputImageError(f"{model} with tiling at x{scale}: the output {output[0]}x{output[1]} (LR "
                                  f"{lr_hw[0]}x{lr_hw[1]}) must have sides that are multiples of {m} (its passes "
                                  f"{', '.join(p.name for p in passes)} halve the image); use LR sides that are "
                                  f"multiples of {step}")
        final_multiple = self.low_multiple if self.high_name is None else self.high_multiple
        tiling.windows(self.output_native, final_multiple, final=True)  # checks --tile and --tile-overlap
        return [f"{model} at x{scale}: " + self.describe(passes, tiling)]

    def model_windows(self, low: bool) -> tuple[tuple[int, int], int, bool]:
        """(native size, multiple, final) of the low or the high model, as ``Tiling.windows`` and
        ``Tiling.wrap`` take them (an explicit window side applies to the output model)."""
        if low:
            return self.low_native, self.low_multiple, self.high_name is None
        return self.output_native, self.high_multiple, True

    def windows(self, p: CascadePass, tiling: Tiling) -> tuple[tuple[int, int], tuple[int, int]]:
        """(window, overlap) of pass ``p``."""
        native, mult, final = self.model_windows(p.low)
        return tiling.windows(native, mult, final=final)

    def describe(self, passes: list[CascadePass], tiling: Tiling) -> str:
        parts = []
        for p in passes:
            win, ov = self.windows(p, tiling)
            how = f"windows of {win[0]}x{win[1]}, overlap {ov[0]}" if exceeds(p.size, win) else "whole"
            parts.append(f"{p.name} {p.size[0]}x{p.size[1]} ({how})")
        return ", then ".join(parts)
