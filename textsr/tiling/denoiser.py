"""``TiledDenoiser``: a Denoiser -> Denoiser wrapper that runs the wrapped denoiser on overlapping windows
of its native size and fuses ``x0_hat``, ``eps`` (and a learned variance) with smooth weights
(docs/tiling.md; ``textsr.tiling.windows`` for the grid and the fusion).

The solver never sees windows: it gets one full-size ``Prediction`` per call, so the projection
(``A``, ``A+`` are global), DPS/PiGDM gradients, CLIP guidance and particle weights act on the whole
image.  Fusing ``x0`` and ``eps`` with the same normalised weights keeps them consistent:
``x0_i = (x_t - sqrt(1 - abar) eps_i) / sqrt(abar)`` in every window, and that relation is linear.

Seams: with ``shift`` the window grid is moved by a random fraction of a stride at every call, drawn
from ``(seed, t)`` only, so a run is reproducible and batch item k still equals the same seed alone
(every item of a batch sees the same grid at a given t).

The condition follows the windows (``window_cond``): a 4-D tensor with the image's height and width
(IF stage II's upsampled stage-I image, Karlo's upsampled decoder output) is cropped like ``x_t``;
per-sample tensors (batch B) are repeated for every window; shared ones (batch 1) stay shared.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..denoiser import Denoiser, Prediction
from ..schedule import NoiseSchedule
from .windows import Window, map_windows, window_grid


def window_cond(cond: Any, windows: Sequence[Window], B: int, size: tuple[int, int]) -> Any:
    """The condition of ``B`` samples for the window-major batch of ``windows`` (``len(windows) * B``
    rows): spatial tensors ``(B or 1, C, *size)`` are cropped, per-sample tensors and lists repeated,
    dataclasses, tuples and dicts rebuilt field by field, anything else kept."""
    n = len(windows)
    if cond is None:
        return None
    if isinstance(cond, torch.Tensor):
        if cond.ndim == 4 and tuple(cond.shape[-2:]) == tuple(size) and cond.shape[0] in (1, B):
            return torch.cat([w.crop(cond).expand(B, -1, -1, -1) for w in windows])
        if cond.ndim == 0 or cond.shape[0] != B:
            return cond  # shared by every row
        return cond.expand(n, *cond.shape[1:]) if B == 1 else cond.repeat(n, *([1] * (cond.ndim - 1)))
    if dataclasses.is_dataclass(cond) and not isinstance(cond, type):
        return dataclasses.replace(cond, **{f.name: window_cond(getattr(cond, f.name), windows, B, size)
                                            for f in dataclasses.fields(cond) if f.init})
    if isinstance(cond, tuple):
        return tuple(window_cond(c, windows, B, size) for c in cond)
    if isinstance(cond, dict):
        return {k: window_cond(v, windows, B, size) for k, v in cond.items()}
    if isinstance(cond, list) and len(cond) == B and not all(isinstance(c, str) for c in cond):
        return cond * n
    return cond


def shift_offsets(seed: int, t: int) -> tuple[float, float]:
    """The grid's offsets at timestep ``t``: two fractions of a stride in [0, 1), a function of
    ``(seed, t)`` alone."""
    rng = random.Random(f"textsr-tiling:{int(seed)}:{int(t)}")
    return rng.random(), rng.random()


@dataclass
class TiledDenoiser:
    """Runs ``base`` on windows of ``window`` (rows, cols) pixels of ``x_t`` overlapping by ``overlap``,
    ``batch`` windows per call, and fuses the predictions (see the module docstring).  An image that fits
    in one window goes to ``base`` unchanged.  ``window_base`` (default: ``base``) is what runs on the
    windows when the image does not fit: a backend may give it weaker text guidance than the whole-image
    model (docs/tiling.md, "Text over windows")."""

    base: Denoiser
    window: tuple[int, int]
    overlap: tuple[int, int]
    shift: bool = True
    seed: int = 0
    batch: int = 1
    window_base: Denoiser | None = None
    schedule: NoiseSchedule = field(init=False)

    def __post_init__(self) -> None:
        self.window = (int(self.window[0]), int(self.window[1]))
        self.overlap = (int(self.overlap[0]), int(self.overlap[1]))
        if min(self.window) < 1 or any(not 0 <= o < w for o, w in zip(self.overlap, self.window)):
            raise ValueError(f"tiling needs windows >= 1 px and 0 <= overlap < window; got window {self.window}, "
                             f"overlap {self.overlap}")
        if self.batch < 1:
            raise ValueError(f"batch (windows per model call) must be >= 1, got {self.batch}")
        self.schedule = self.base.schedule

    def fits(self, size: tuple[int, int]) -> bool:
        return size[0] <= self.window[0] and size[1] <= self.window[1]

    def grid(self, size: tuple[int, int], t: int) -> list[Window]:
        """The windows used at timestep ``t`` on an image of ``size``."""
        return window_grid(size, self.window, self.overlap, shift_offsets(self.seed, t) if self.shift else None)

    def __call__(self, x_t: torch.Tensor, t: int, cond: Any = None) -> Prediction:
        size = (int(x_t.shape[-2]), int(x_t.shape[-1]))
        if self.fits(size):
            return self.base(x_t, t, cond)
        model = self.window_base if self.window_base is not None else self.base
        B = x_t.shape[0]

        def fn(crops: torch.Tensor, windows: Sequence[Window]) -> tuple[torch.Tensor | None, ...]:
            p = model(crops, t, window_cond(cond, windows, B, size))
            return p.x0, p.eps, p.v

        x0, eps, v = map_windows(x_t, fn, self.grid(size, t), size=size, overlap=self.overlap, batch=self.batch)
        assert x0 is not None and eps is not None
        return Prediction(x0=x0, eps=eps, v=v)
