"""Running the denoiser on a few rows at a time: a particle solver's ``B * N`` particles in chunks of at most
``max_rows`` (``sample(..., max_rows=...)``), so that the model's activations and the twist's backward passes
take the memory of one chunk, whatever N is.  Each row's result depends on that row only (the ``Denoiser``
contract), so chunking changes no number: ``tests/test_particles.py`` checks chunked against unchunked.
"""

from __future__ import annotations

import dataclasses
from typing import Any


def row_slices(rows: int, max_rows: int | None) -> list[slice]:
    """``[0, rows)`` cut into consecutive slices of at most ``max_rows`` rows (one slice when None)."""
    if max_rows is None or max_rows >= rows:
        return [slice(0, rows)]
    if max_rows < 1:
        raise ValueError(f"max_rows must be a positive integer or None, got {max_rows!r}")
    return [slice(i, min(i + max_rows, rows)) for i in range(0, rows, max_rows)]


def cond_rows(cond: Any, sl: slice | Any, rows: int) -> Any:
    """Rows ``sl`` (a slice or a tensor of row indices) of a condition built for ``rows`` rows
    (``smc.repeat_cond``'s output): every per-row part
    (a tensor with ``rows`` leading rows, an object with ``batch == rows`` and ``batch_slice`` such as a
    Gaussian-mixture ``MixtureBatch``, a list of ``rows`` per-row conditions) is sliced; shared parts (batch-1
    tensors, strings, numbers) are kept.  Dataclass conditions are rebuilt field by field."""
    import torch

    if cond is None or (isinstance(sl, slice) and sl.start == 0 and sl.stop >= rows):
        return cond

    if isinstance(cond, torch.Tensor):
        return cond[sl] if cond.ndim and cond.shape[0] == rows else cond
    part = getattr(cond, "batch_slice", None)
    if callable(part) and not isinstance(cond, type):
        return part(sl) if getattr(cond, "batch", None) == rows else cond
    if dataclasses.is_dataclass(cond) and not isinstance(cond, type):
        return dataclasses.replace(cond, **{f.name: cond_rows(getattr(cond, f.name), sl, rows)
                                            for f in dataclasses.fields(cond) if f.init})
    if isinstance(cond, list) and len(cond) == rows and not all(isinstance(c, str) for c in cond):
        return cond[sl] if isinstance(sl, slice) else [cond[int(i)] for i in sl]
    return cond
