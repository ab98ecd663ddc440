"""The operator on flat rows: ``A`` and ``A^T`` for ``(n, d)`` / ``(n, m)`` matrices of flattened images,
chunked so that huge batches of rows stay within memory."""

from __future__ import annotations

import math

import torch

from ..operators import LinearOperator
from .covariance import CHUNK, chunks


def apply_A(op: LinearOperator, x: torch.Tensor) -> torch.Tensor:
    """A on flat rows ``(n, d) -> (n, m)``, chunked."""
    d = math.prod(op.in_shape)
    flat = x.reshape(-1, d)
    out = [op.A(flat[s].reshape(-1, *op.in_shape)).reshape(s.stop - s.start, -1)
           for s in chunks(flat.shape[0], 4 * CHUNK)]
    return torch.cat(out).reshape(*x.shape[:-1], -1)


def apply_At(op: LinearOperator, v: torch.Tensor) -> torch.Tensor:
    """A^T on flat rows ``(n, m) -> (n, d)``, chunked."""
    m = math.prod(op.out_shape)
    flat = v.reshape(-1, m)
    out = [op.At(flat[s].reshape(-1, *op.out_shape)).reshape(s.stop - s.start, -1)
           for s in chunks(flat.shape[0], 4 * CHUNK)]
    return torch.cat(out).reshape(*v.shape[:-1], -1)
