"""Linear degradation operators ``y = A x``: A, its adjoint A^T, pseudo-inverse A+ and an SVD view.

Every operator maps a batch ``(B, *in_shape)`` to ``(B, *out_shape)`` and follows the input's device
and dtype (matrices are cached per device/dtype).  Besides A, A^T and A+ each operator offers
``spectral(x, fn) = V diag(fn(s)) V^T x`` over the *kept* right singular vectors of A (those the
pseudo-inverse inverts), which is all DDNM+ (per singular value) and PiGDM need:

* ``project_range(x) = spectral(x, 1) = A+ A x``;  ``project_null(x) = x - A+ A x``.
* ``(r^2 A A^T + sigma^2 I)^{-1}`` pulled back to x-space: ``A^T v = spectral(A+ r_y, s^2 / (r^2 s^2 + sigma^2))``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from functools import lru_cache
from typing import Callable

import torch

SpectralFn = Callable[[torch.Tensor], torch.Tensor]


def _check_batch(x: torch.Tensor, shape: tuple[int, ...], what: str) -> None:
    if tuple(x.shape[1:]) != tuple(shape):
        raise ValueError(f"{what} expects a batch of shape (B, {', '.join(map(str, shape))}), got {tuple(x.shape)}")


class LinearOperator(ABC):
    """Base class; subclasses set ``in_shape``/``out_shape`` and implement A, At, A_pinv, spectral."""

    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    name: str = "linear"

    @abstractmethod
    def A(self, x: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def At(self, y: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def A_pinv(self, y: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def spectral(self, x: torch.Tensor, fn: SpectralFn) -> torch.Tensor:
        """``V diag(fn(s)) V^T x`` over the kept singular values ``s`` (the null space maps to 0)."""

    @abstractmethod
    def singular_values(self) -> torch.Tensor:
        """The kept singular values (float64, CPU), in no particular order."""

    def project_range(self, x: torch.Tensor) -> torch.Tensor:
        return self.A_pinv(self.A(x))

    def project_null(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.project_range(x)

    def describe(self) -> dict:
        return {"name": self.name, "in_shape": list(self.in_shape), "out_shape": list(self.out_shape)}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(in_shape={self.in_shape}, out_shape={self.out_shape})"


def _check_factor_and_shape(factor: int, shape: tuple[int, ...]) -> tuple[int, int, int]:
    if not isinstance(factor, int) or isinstance(factor, bool) or factor < 1:
        raise ValueError(f"scale factor must be a positive integer, got {factor!r}")
    if len(shape) != 3:
        raise ValueError(f"image shape must be (C, H, W), got {shape}")
    c, h, w = (int(v) for v in shape)
    if c < 1 or h < 1 or w < 1:
        raise ValueError(f"image shape must be positive, got {shape}")
    if h % factor or w % factor:
        ok_h = h - h % factor
        ok_w = w - w % factor
        raise ValueError(
            f"scale factor {factor} does not divide the image size {h}x{w}; "
            f"crop to {ok_h}x{ok_w} or pick a factor that divides both sides"
        )
    return c, h, w


class AvgPool(LinearOperator):
    """Block mean over ``factor x factor`` pixels per channel.

    ``A A^T = I / factor^2``: every singular value is ``1/factor``; ``A+ = factor^2 A^T`` replicates each
    LR pixel into its block, the exact Moore-Penrose pseudo-inverse (``A A+ = I``).
    """

    name = "avgpool"

    def __init__(self, factor: int, in_shape: tuple[int, int, int]):
        c, h, w = _check_factor_and_shape(factor, tuple(in_shape))
        self.factor = factor
        self.in_shape = (c, h, w)
        self.out_shape = (c, h // factor, w // factor)

    def A(self, x: torch.Tensor) -> torch.Tensor:
        _check_batch(x, self.in_shape, "AvgPool.A")
        return torch.nn.functional.avg_pool2d(x, self.factor) if self.factor > 1 else x.clone()

    def A_pinv(self, y: torch.Tensor) -> torch.Tensor:
        _check_batch(y, self.out_shape, "AvgPool.A_pinv")
        f = self.factor
        return y.repeat_interleave(f, dim=-2).repeat_interleave(f, dim=-1)

    def At(self, y: torch.Tensor) -> torch.Tensor:
        return self.A_pinv(y) / self.factor**2

    def spectral(self, x: torch.Tensor, fn: SpectralFn) -> torch.Tensor:
        s = torch.tensor(1.0 / self.factor, dtype=x.dtype, device=x.device)
        return fn(s) * self.project_range(x)

    def singular_values(self) -> torch.Tensor:
        c, h, w = self.out_shape
        return torch.full((c * h * w,), 1.0 / self.factor, dtype=torch.float64)

    def describe(self) -> dict:
        return {**super().describe(), "factor": self.factor}


class Matrix(LinearOperator):
    """A dense matrix ``M`` (m x n) acting on flattened inputs; A+ from its SVD.

    Singular values below ``rcond * max(s)`` are treated as zero (truncated pseudo-inverse).
    """

    name = "matrix"

    def __init__(self, M: torch.Tensor, in_shape: tuple[int, ...] | None = None, rcond: float = 1e-10):
        if M.ndim != 2:
            raise ValueError(f"Matrix operator needs a 2-D matrix, got shape {tuple(M.shape)}")
        m, n = M.shape
        self.in_shape = tuple(in_shape) if in_shape is not None else (n,)
        if math.prod(self.in_shape) != n:
            raise ValueError(f"in_shape {self.in_shape} has {math.prod(self.in_shape)} entries, matrix has {n} columns")
        self.out_shape = (m,)
        M64 = M.detach().to("cpu", torch.float64)
        U, S, Vh = torch.linalg.svd(M64, full_matrices=False)
        keep = S > rcond * (S.max() if S.numel() else 0)
        self._M = M64
        self._U, self._S, self._V = U[:, keep], S[keep], Vh[keep].T
        self.rcond = rcond

    @lru_cache(maxsize=8)
    def _mats(self, device: torch.device, dtype: torch.dtype):
        cv = lambda t: t.to(device=device, dtype=dtype)  # noqa: E731
        pinv = self._V @ torch.diag(1.0 / self._S) @ self._U.T
        return cv(self._M), cv(pinv), cv(self._V), cv(self._S)

    def _flat(self, x: torch.Tensor) -> torch.Tensor:
        _check_batch(x, self.in_shape, "Matrix")
        return x.reshape(x.shape[0], -1)

    def A(self, x: torch.Tensor) -> torch.Tensor:
        M = self._mats(x.device, x.dtype)[0]
        return self._flat(x) @ M.T

    def At(self, y: torch.Tensor) -> torch.Tensor:
        _check_batch(y, self.out_shape, "Matrix.At")
        M = self._mats(y.device, y.dtype)[0]
        return (y @ M).reshape(y.shape[0], *self.in_shape)

    def A_pinv(self, y: torch.Tensor) -> torch.Tensor:
        _check_batch(y, self.out_shape, "Matrix.A_pinv")
        P = self._mats(y.device, y.dtype)[1]
        return (y @ P.T).reshape(y.shape[0], *self.in_shape)

    def spectral(self, x: torch.Tensor, fn: SpectralFn) -> torch.Tensor:
        _, _, V, S = self._mats(x.device, x.dtype)
        coef = (self._flat(x) @ V) * fn(S)
        return (coef @ V.T).reshape(x.shape[0], *self.in_shape)

    def singular_values(self) -> torch.Tensor:
        return self._S.clone()
