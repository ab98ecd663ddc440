"""Overlapping windows over an image and the weighted fusion of per-window outputs (docs/tiling.md).

MultiDiffusion's least-squares fusion (Bar-Tal et al., ICML 2023, eq. 5): with crops ``P_i`` and
smooth non-negative weights ``w_i``,

    F(x) = sum_i P_i^T (w_i * f(P_i x)) / sum_i P_i^T w_i

``map_windows`` computes this for any map ``f`` whose output is the window scaled by a fixed ratio
(1 for a denoiser, the autoencoder's factor for a latent decoder, its inverse for an encoder), a few
windows per call (``batch``) so that the model's memory does not grow with the image.

The grid (``window_grid``): along each axis windows of the given length at stride ``length -
overlap``, the first at 0 and the last flush with the image end.  ``offsets`` (fractions of a stride
in [0, 1)) shift the interior windows: the grid ``{0, d, d + stride, ..., L - window}``, so its window
borders fall elsewhere each time while every window still lies inside the image and neighbours still
overlap by at least ``overlap``.  Weights (``axis_weights``): 1 inside, a ``sin^2`` ramp over the
``overlap`` pixels of each side that borders another window (never 0, so the sum is positive
everywhere), flat on sides at the image border.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction

import torch
from torch.utils.checkpoint import checkpoint

Outputs = Sequence[torch.Tensor | None]
WindowFn = Callable[[torch.Tensor, Sequence["Window"]], Outputs]


@dataclass(frozen=True)
class Window:
    """One crop ``[top, top + height) x [left, left + width)`` in grid units."""

    top: int
    left: int
    height: int
    width: int

    def slices(self, scale: Fraction | int = 1) -> tuple[slice, slice]:
        """Row and column slices of this window on an image ``scale`` times the grid's resolution."""
        s = Fraction(scale)
        top, left, h, w = (s * v for v in (self.top, self.left, self.height, self.width))
        if any(v.denominator != 1 for v in (top, left, h, w)):
            raise ValueError(f"window {self} is not whole at scale {scale}")
        return slice(int(top), int(top + h)), slice(int(left), int(left + w))

    def crop(self, x: torch.Tensor, scale: Fraction | int = 1) -> torch.Tensor:
        """This window of ``x`` (``(..., H, W)`` at ``scale`` times the grid's resolution)."""
        rs, cs = self.slices(scale)
        return x[..., rs, cs]


def axis_starts(length: int, window: int, overlap: int, offset: float | None = None) -> list[int]:
    """Start positions of the windows along one axis (see the module docstring)."""
    if window < 1 or not 0 <= overlap < window:
        raise ValueError(f"need window >= 1 and 0 <= overlap < window, got window {window}, overlap {overlap}")
    if length <= window:
        return [0]
    stride, last = window - overlap, length - window
    if offset is None:  # evenly spread, every gap <= stride
        n = math.ceil(last / stride) + 1
        return sorted({round(i * last / (n - 1)) for i in range(n)})
    if not 0.0 <= offset < 1.0:
        raise ValueError(f"offset is a fraction of the stride in [0, 1), got {offset}")
    d = int(offset * stride)
    inner = range(d if d > 0 else stride, last, stride)
    return [0, *inner, last]


def window_grid(size: tuple[int, int], window: tuple[int, int], overlap: tuple[int, int],
                offsets: tuple[float, float] | None = None) -> list[Window]:
    """Windows covering an image of ``size`` (rows, cols); windows longer than an axis are cut to it."""
    H, W = size
    rows = axis_starts(H, window[0], overlap[0], None if offsets is None else offsets[0])
    cols = axis_starts(W, window[1], overlap[1], None if offsets is None else offsets[1])
    h, w = min(window[0], H), min(window[1], W)
    return [Window(r, c, h, w) for r in rows for c in cols]


def axis_weights(start: int, size: int, length: int, ramp: int, dtype: torch.dtype,
                 device: torch.device) -> torch.Tensor:
    """1-D fusion weight of a window ``[start, start + size)`` on an axis of ``length``: a ``sin^2`` ramp
    over ``ramp`` samples at each side that is not the image border, 1 elsewhere (strictly positive)."""
    w = torch.ones(size, dtype=torch.float64)
    r = min(ramp, size // 2)
    if r > 0:
        up = torch.sin(0.5 * math.pi * (torch.arange(r, dtype=torch.float64) + 0.5) / r) ** 2
        if start > 0:
            w[:r] = up
        if start + size < length:
            w[size - r:] = up.flip(0)
    return w.to(device=device, dtype=dtype)


def _weights(win: Window, size: tuple[int, int], overlap: tuple[int, int], scale: Fraction,
             like: torch.Tensor) -> torch.Tensor:
    rs, cs = win.slices(scale)
    H, W = (int(scale * v) for v in size)
    oh, ow = (int(scale * v) for v in overlap)
    wr = axis_weights(rs.start, rs.stop - rs.start, H, oh, like.dtype, like.device)
    wc = axis_weights(cs.start, cs.stop - cs.start, W, ow, like.dtype, like.device)
    return torch.outer(wr, wc)


def chunks(items: Sequence[Window], n: int) -> Iterator[Sequence[Window]]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


def map_windows(x: torch.Tensor, fn: WindowFn, grid: Sequence[Window], *, size: tuple[int, int],
                overlap: tuple[int, int], batch: int = 1, in_scale: Fraction | int = 1,
                out_scale: Fraction | int = 1) -> list[torch.Tensor | None]:
    """``fn`` on the windows of ``x`` ``(B, C, H, W)``, fused per output with the smooth weights.

    ``grid``, ``size`` (the image) and ``overlap`` are in grid units; ``x`` is at ``in_scale`` times and
    ``fn``'s outputs at ``out_scale`` times that resolution.  ``fn(crops, windows)`` gets the crops of
    ``len(windows) <= batch`` windows stacked window-major (rows ``j B .. j B + B - 1`` are window j's)
    and returns a sequence of tensors of the same row layout (or None entries, fused to None).

    Differentiable w.r.t. ``x``.  When autograd records (DPS), each chunk's forward is checkpointed and
    recomputed in the backward pass, so memory stays that of one chunk whatever the image size.
    """
    if batch < 1:
        raise ValueError(f"batch (windows per call) must be >= 1, got {batch}")
    B = x.shape[0]
    s_in, s_out = Fraction(in_scale), Fraction(out_scale)
    out_hw = (int(s_out * size[0]), int(s_out * size[1]))
    acc: list[torch.Tensor | None] | None = None
    norm = None
    record = torch.is_grad_enabled() and x.requires_grad and len(grid) > batch
    for chunk in chunks(grid, batch):
        crops = torch.cat([w.crop(x, s_in) for w in chunk])
        res = (checkpoint(lambda c, ws=chunk: tuple(fn(c, ws)), crops, use_reentrant=False) if record
               else fn(crops, chunk))
        if acc is None:
            acc = [None if r is None else r.new_zeros((B, r.shape[1], *out_hw)) for r in res]
            norm = res[0].new_zeros((1, 1, *out_hw)) if res[0] is not None else x.new_zeros((1, 1, *out_hw))
        assert norm is not None
        for j, w in enumerate(chunk):
            rs, cs = w.slices(s_out)
            wt = _weights(w, size, overlap, s_out, norm)
            norm[..., rs, cs] += wt
            for k, r in enumerate(res):
                a = acc[k]
                if (a is None) != (r is None):
                    raise ValueError("a window function must return None for the same outputs in every call")
                if a is not None and r is not None:
                    a[..., rs, cs] += wt * r[j * B:(j + 1) * B]
    assert acc is not None and norm is not None  # the grid has at least one window
    return [None if a is None else a / norm for a in acc]
