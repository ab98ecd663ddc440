"""Any output size: windowed denoising with one global projection (docs/tiling.md).

* ``windows``: the window grid and the weighted fusion of per-window outputs (``map_windows``);
* ``denoiser``: ``TiledDenoiser``, the Denoiser -> Denoiser wrapper every backend uses;
* ``codec``: ``TiledCodec``, the same windows for a latent model's autoencoder;
* ``plan``: what the user asks (``TileRequest``) and what each stage then runs (``Tiling``);
* ``memory``: the peak-memory estimate of a request, with and without tiling, before any work.
"""

from .denoiser import TiledDenoiser, shift_offsets, window_cond
from .windows import Window, axis_starts, axis_weights, map_windows, window_grid

__all__ = ["TiledDenoiser", "Window", "axis_starts", "axis_weights", "map_windows", "shift_offsets", "window_cond",
           "window_grid"]
