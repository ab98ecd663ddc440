"""``TiledCodec``: a latent model's autoencoder run on overlapping windows (docs/tiling.md, "Latent models").

The same windows and fusion as the denoiser (``map_windows``), laid out in latent units: decoding maps
each latent window to its ``factor``-times larger pixel window, encoding each pixel window to its latent
window, and the outputs are fused with the smooth weights.  An image that fits in one window goes
through the wrapped codec unchanged, so the codec's memory stays that of one window (times ``batch``)
whatever the image size.  The grid is fixed (no shift): decoding must be deterministic.

Autoencoders see the whole image twice, through their GroupNorm statistics and their mid-block
self-attention, so a window's decoding differs from the same pixels decoded in the whole image, and
windows within the convolutions' reach of a border add the rest (``bench/tiling_codec.py``; a codec
without context is exact: ``tests/test_tiling_backends.py``).  The result is exact in the end anyway:
latent backends project the decoded image onto ``A x = y`` in pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import torch

from .windows import Window, map_windows, window_grid


@dataclass
class TiledCodec:
    """``codec`` (a ``Codec``: ``encode``/``decode``, ``factor``, ``latent_channels``) on windows of
    ``window`` latents overlapping by ``overlap`` latents, ``batch`` windows per call."""

    codec: Any
    window: tuple[int, int]
    overlap: tuple[int, int]
    batch: int = 1

    @property
    def factor(self) -> int:
        return int(self.codec.factor)

    @property
    def latent_channels(self) -> int:
        return int(self.codec.latent_channels)

    def _fits(self, size: tuple[int, int]) -> bool:
        return size[0] <= self.window[0] and size[1] <= self.window[1]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        size = (int(z.shape[-2]), int(z.shape[-1]))
        if self._fits(size):
            return self.codec.decode(z)

        def fn(crops: torch.Tensor, windows: Sequence[Window]) -> tuple[torch.Tensor]:
            return (self.codec.decode(crops),)

        (x,) = map_windows(z, fn, window_grid(size, self.window, self.overlap), size=size, overlap=self.overlap,
                           batch=self.batch, out_scale=self.factor)
        assert x is not None
        return x

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        f = self.factor
        if x.shape[-2] % f or x.shape[-1] % f:
            raise ValueError(f"image {tuple(x.shape[-2:])} is not a multiple of the autoencoder's factor {f}")
        size = (int(x.shape[-2]) // f, int(x.shape[-1]) // f)
        if self._fits(size):
            return self.codec.encode(x)

        def fn(crops: torch.Tensor, windows: Sequence[Window]) -> tuple[torch.Tensor]:
            return (self.codec.encode(crops),)

        (z,) = map_windows(x, fn, window_grid(size, self.window, self.overlap), size=size, overlap=self.overlap,
                           batch=self.batch, in_scale=Fraction(f))
        assert z is not None
        return z
