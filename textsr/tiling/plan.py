"""What the user asks for (``TileRequest``) and what a run then does with it (``Tiling``).

* ``tile``: ``"off"`` (the default: whole images only; a request larger than the model makes is
  refused, naming ``--tile``), ``"auto"`` (windows of the model's own size, only where a stage's image
  exceeds it) or a window side N in output pixels (the highest-resolution stage's windows; lower
  stages of a cascade keep windows of their own size);
* ``overlap``: in output pixels, at the output resolution (default: a quarter of the window; lower stages
  of a cascade overlap by a quarter of their windows);
* ``shift`` (True): move the window grid by a seeded random fraction of a stride at every step;
* ``batch`` (1): windows per model call (each with all the samples of the batch): memory grows with it;
* ``text`` (0.5): the text guidance inside windows as a fraction of the whole-image guidance: at 1 the
  prompt's object appears in every window (docs/tiling.md, "Text over windows", measured by
  ``bench/tiling_text.py``); ``seed`` (0): the grid shifts' seed.

Cascades (``cascade_divisors``): a whole-image low-resolution pass first, then x4 super-resolution
passes of the high-resolution stage, as many as it takes for the first pass to fit its model, and
only the high-resolution passes that exceed their model run on windows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from .. import validate
from ..errors import UsageError
from .denoiser import TiledDenoiser

MODES = ("off", "auto")
UNTILED_LIMIT = 2  # without tiling, outputs up to this many times the model's size per side are allowed


@dataclass(frozen=True)
class TileRequest:
    """The tiling a user asks for (see the module docstring); checked in ``__post_init__``."""

    tile: str | int = "off"
    overlap: int | None = None
    shift: bool = True
    batch: int = 1
    text: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        t = self.tile
        if isinstance(t, str) and t.strip().lower() in MODES:
            object.__setattr__(self, "tile", t.strip().lower())
        elif isinstance(t, str) and t.strip().isdigit():
            object.__setattr__(self, "tile", int(t))
        elif t is None:
            object.__setattr__(self, "tile", "off")
        if not isinstance(self.tile, str):
            object.__setattr__(self, "tile", validate.integer(self.tile, "tile", lo=8,
                                                               hint="off, auto or a window side in pixels, e.g. 256"))
        if self.overlap is not None:
            object.__setattr__(self, "overlap", validate.integer(self.overlap, "tile_overlap", lo=0))
            if isinstance(self.tile, int) and self.overlap >= self.tile:
                raise UsageError(f"tile_overlap must be smaller than the tile: 0 to {self.tile - 1} px for --tile "
                                 f"{self.tile} (a quarter, {self.tile // 4}, is the default); got {self.overlap}")
        object.__setattr__(self, "shift", validate.flag(self.shift, "tile option shift"))
        object.__setattr__(self, "batch", validate.integer(self.batch, "tile option batch", lo=1, hi=4096))
        object.__setattr__(self, "text", validate.number(self.text, "tile option text", lo=0.0, hi=1.0,
                                                         hint="the text guidance inside windows as a fraction of "
                                                              "the whole-image one"))
        object.__setattr__(self, "seed", validate.seed(self.seed))

    @classmethod
    def of(cls, tile: Any = None, overlap: Any = None, options: Mapping[str, Any] | None = None) -> TileRequest:
        """From ``explore``'s ``tile``, ``tile_overlap`` and ``tile_options`` (keys: shift, batch, text, seed)."""
        opts = dict(options or {})
        known = [f.name for f in fields(cls) if f.name not in ("tile", "overlap")]
        bad = sorted(set(opts) - set(known))
        if bad:
            raise UsageError(f"unknown tile option(s) {bad}; known: {known}")
        if isinstance(tile, str) and tile.strip().lower() not in MODES and not tile.strip().isdigit():
            raise UsageError(f"tile must be off, auto or a window side in pixels (e.g. 256), got {tile!r}")
        return cls(tile="off" if tile is None else tile, overlap=overlap, **opts)

    @property
    def on(self) -> bool:
        return self.tile != "off"

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class Tiling:
    """A ``TileRequest`` for one run's geometry: ``output`` (H, W) of the final stage, ``scale``."""

    request: TileRequest
    output: tuple[int, int]
    scale: int

    def windows(self, native: tuple[int, int], multiple: int, *, final: bool,
                unit: int = 1) -> tuple[tuple[int, int], tuple[int, int]]:
        """(window, overlap) in a stage's own units (``unit``: image pixels per unit, e.g. a VAE's factor)
        for a stage whose model makes ``native``; ``final``: the stage at the output resolution, where an
        explicit window side and overlap apply (other stages: their model's size, a quarter overlap)."""
        r = self.request
        win = native
        if final and isinstance(r.tile, int):
            check_window(r.tile, multiple * unit, "tile")
            win = (r.tile // unit, r.tile // unit)
        ov = (win[0] // 4, win[1] // 4)
        if final and r.overlap is not None:
            if r.overlap % unit:
                raise UsageError(f"tile_overlap must be a multiple of {unit} px for this model (its latents are "
                                 f"{unit}x smaller than the image); got {r.overlap}")
            if r.overlap // unit >= min(win):
                raise UsageError(f"tile_overlap must be smaller than the window: 0 to {min(win) * unit - unit} px "
                                 f"with windows of {win[0] * unit}x{win[1] * unit} px; got {r.overlap}")
            ov = (r.overlap // unit, r.overlap // unit)
        return (int(win[0]), int(win[1])), (int(ov[0]), int(ov[1]))

    def wrap(self, den: Any, native: tuple[int, int], multiple: int, *, final: bool, unit: int = 1,
             window_base: Any = None) -> TiledDenoiser:
        """``den`` as a ``TiledDenoiser`` with this request's windows (see ``windows``)."""
        win, ov = self.windows(native, multiple, final=final, unit=unit)
        r = self.request
        return TiledDenoiser(den, win, ov, shift=r.shift, seed=r.seed, batch=r.batch, window_base=window_base)


def check_window(side: int, multiple: int, what: str) -> None:
    """A window side must be a multiple of what the model's network (and autoencoder) divide by."""
    if side % multiple:
        lo, hi = side - side % multiple, side - side % multiple + multiple
        raise UsageError(f"{what} {side} is not a multiple of {multiple} (this model's network and autoencoder "
                         f"divide the image by {multiple}): use {lo or multiple} or {hi}")


def exceeds(size: tuple[int, int], native: tuple[int, int], factor: float = 1.0) -> bool:
    return size[0] > factor * native[0] or size[1] > factor * native[1]


def cascade_divisors(output: tuple[int, int], scale: int, low_native: tuple[int, int], ratio: int = 4) -> list[int]:
    """Divisors of the stages of a tiled cascade: the low-resolution stage at ``output / d_0`` and the
    high-resolution stage at ``d_1 > ... > d_k = 1``, each pass ``ratio`` x the previous.  ``d_0 =
    ratio^m`` with the smallest ``m >= 1`` that brings the low stage within ``low_native``; ``m`` is
    bounded by ``ratio^m`` dividing ``scale`` (a stage cannot be smaller than the input)."""
    m_max = 1
    while scale % ratio ** (m_max + 1) == 0:
        m_max += 1
    m = next((k for k in range(1, m_max + 1)
              if not exceeds((output[0] // ratio**k, output[1] // ratio**k), low_native)), m_max)
    return [ratio ** (m - k) for k in range(m + 1)]


def chain_multiple(divisors: list[int], multiples: list[int]) -> int:
    """Output sides must be multiples of this for every pass ``output / d`` to be a multiple of its
    model's ``multiple``."""
    return math.lcm(*(d * m for d, m in zip(divisors, multiples)))
