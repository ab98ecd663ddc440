"""The operator on flat rows: ``A`` and ``A^T`` for ``(n, d)`` / ``(n, m)`` matrices of flattened images,
chunked so that huge batches of rows stay within memory."""

from __future__ import annotations

import math

import torch

from ..operators import LinearOperator
from .covariance import CHUNK, chunks


def _apply_flat(fn, in_shape: tuple[int, ...], x: torch.Tensor) -> torch.Tensor:
    """``fn`` (an operator map on image-shaped batches) on flat rows ``(n, prod(in_shape)) -> (n, -1)``,
    in chunks."""
    flat = x.reshape(-1, math.prod(in_shape))
    out = [fn(flat[s].reshape(-1, *in_shape)).reshape(s.stop - s.start, -1)
           for s in chunks(flat.shape[0], 4 * CHUNK)]
    return torch.cat(out).reshape(*x.shape[:-1], -1)


def apply_A(op: LinearOperator, x: torch.Tensor) -> torch.Tensor:
    """A on flat rows ``(n, d) -> (n, m)``, chunked."""
    return _apply_flat(op.A, op.in_shape, x)


def apply_At(op: LinearOperator, v: torch.Tensor) -> torch.Tensor:
    """A^T on flat rows ``(n, m) -> (n, d)``, chunked."""
    return _apply_flat(op.At, op.out_shape, v)
