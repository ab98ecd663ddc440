"""The checks ``explore`` runs before any work when an output may exceed the model (docs/tiling.md):

1. ``plan``: which sizes run and where (``check_size`` without tiling, ``check_tiling`` with it), and the
   refusal, naming ``--tile``, of an untiled output more than ``UNTILED_LIMIT`` times what the model makes;
2. ``check_memory``: the estimated peak memory of one batch, whole and on windows, against the memory
   free on the device; a request that cannot fit is refused with what to change.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import InputImageError, UsageError
from .memory import MARGIN, MemoryEstimate, available_memory, estimate, gib
from .plan import UNTILED_LIMIT, TileRequest, Tiling


def plan(request: TileRequest, backend: Any, lr_hw: tuple[int, int], scale: int) -> tuple[Tiling | None, list[str]]:
    """The run's ``Tiling`` (None: whole images) and notes; raises the size errors."""
    output = (lr_hw[0] * scale, lr_hw[1] * scale)
    if request.on and not (request.tile == "auto" and backend.makes(output)):
        tiling = Tiling(request, output, scale)
        return tiling, list(backend.check_tiling(lr_hw, scale, tiling))
    backend.check_size(lr_hw, scale)
    native = backend.native_output()
    if native is not None and not backend.makes(output, UNTILED_LIMIT):
        how = ("run it on windows of the model's size: --tile auto (tile='auto' in the API)" if backend.tiles
               else "this model cannot tile: use a smaller input or a lower scale")
        raise InputImageError(
            f"LR {lr_hw[0]}x{lr_hw[1]} at x{scale} gives {output[0]}x{output[1]}, more than {UNTILED_LIMIT}x the "
            f"{native[0]}x{native[1]} images {backend.info.name!r} makes: {how}")
    return None, []


def check_memory(backend: Any, lr_hw: tuple[int, int], scale: int, tiling: Tiling | None, samples: int, *,
                 grad: bool, device: torch.device) -> MemoryEstimate | None:
    """Estimate one batch's peak memory (``samples`` rows: samples per batch x particles) and refuse the
    request when it cannot fit in what is free on ``device``.  Without tiling, the estimate on windows
    of the model's size is given too (when the model tiles and the output exceeds it)."""
    output = (lr_hw[0] * scale, lr_hw[1] * scale)
    alt = tiling
    if alt is None and backend.tiles and not backend.makes(output):
        alt = Tiling(TileRequest("auto"), output, scale)
    batch = tiling.request.batch if tiling is not None else 1
    est = estimate(backend, lr_hw, scale, alt, samples, grad=grad, batch=batch)
    free = available_memory(device)
    if est is None or free is None:
        return est
    need = MARGIN * (est.tiled if tiling is not None and est.tiled is not None else est.whole)
    if need <= free:
        return est
    where = f"{gib(free)} free on {device}"
    if tiling is None:
        if est.tiled is not None and MARGIN * est.tiled <= free:
            fix = f"run on windows of the model's size: --tile auto (about {gib(MARGIN * est.tiled)})"
        else:
            fix = "use fewer samples per batch (--batch-size 1)" + (", fewer particles" if samples > 1 else "")
    else:
        fix = ("use fewer windows per call (--tile-option batch=1), fewer samples per batch (--batch-size 1) or "
               "smaller windows (--tile N)")
    raise UsageError(f"this request needs about {gib(need)} ({est.summary()}, with a {MARGIN}x margin) but only "
                     f"{where}: {fix}")
