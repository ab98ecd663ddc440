"""Orthogonal projectors on flat d-vectors (the null space of a degradation operator)."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch

from ..operators import LinearOperator
from .covariance import CHUNK, chunks


class Projector(ABC):
    """An orthogonal projector ``N`` on flat d-vectors, with its rank."""

    d: int
    rank: int

    @abstractmethod
    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        """``N v`` for ``v`` of shape ``(..., d)``."""

    def apply_chunked(self, v: torch.Tensor) -> torch.Tensor:
        flat = v.reshape(-1, self.d)
        if flat.shape[0] <= CHUNK:
            return self(flat).reshape(v.shape)
        return torch.cat([self(flat[s]) for s in chunks(flat.shape[0])]).reshape(v.shape)

    def dense(self, dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu") -> torch.Tensor:
        eye = torch.eye(self.d, dtype=dtype, device=device)
        return self.apply_chunked(eye)


class NullProjector(Projector):
    """``N = I - A+ A``: the orthogonal projector onto the null space of a ``LinearOperator``."""

    def __init__(self, operator: LinearOperator):
        self.operator = operator
        self.d = math.prod(operator.in_shape)
        self.rank = self.d - int(operator.singular_values().numel())

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        shp = v.shape
        x = v.reshape(-1, *self.operator.in_shape)
        return self.operator.project_null(x).reshape(shp)

    def __repr__(self) -> str:
        return f"NullProjector({self.operator!r})"


class DenseProjector(Projector):
    """A projector given as a ``(d, d)`` matrix (tests, small d)."""

    def __init__(self, P: torch.Tensor, rank: int | None = None):
        self.P = P
        self.d = P.shape[0]
        self.rank = int(round(float(torch.diagonal(P).sum()))) if rank is None else rank

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        return v @ self.P.to(v).T
