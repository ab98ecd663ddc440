"""Linear degradation operators ``y = A x``: A, its adjoint A^T, pseudo-inverse A+ and an SVD view.

Every operator maps a batch ``(B, *in_shape)`` to ``(B, *out_shape)`` and follows the input's device
and dtype (matrices are cached per device/dtype).  Besides A, A^T and A+ each operator offers
``spectral(x, fn) = V diag(fn(s)) V^T x`` over the *kept* right singular vectors of A (those the
pseudo-inverse inverts), which is all DDNM+ (per singular value) and PiGDM need:

* ``project_range(x) = spectral(x, 1) = A+ A x``;  ``project_null(x) = x - A+ A x``.
* ``(r^2 A A^T + sigma^2 I)^{-1}`` pulled back to x-space: ``A^T v = spectral(A+ r_y, s^2 / (r^2 s^2 + sigma^2))``.

``fn`` receives a tensor of singular values (x's device and dtype) that broadcasts against the SVD
coefficients and must return something that broadcasts the same way (a tensor or a Python number).
``spectral_diag(d) = diag(V^T diag(d) V)`` (per sample) comes in that same layout, so ``fn`` may use it:
a per-element variance map seen along each singular direction (DDNM+ with a learned variance).

Operators by name: ``make_operator(name, factor, in_shape, **kw)``, over the registry
``textsr.operator_registry`` (names, parameters, descriptions).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable

import torch

SpectralFn = Callable[[torch.Tensor], torch.Tensor]


def _check_batch(x: torch.Tensor, shape: tuple[int, ...], what: str) -> None:
    if tuple(x.shape[1:]) != tuple(shape):
        raise ValueError(f"{what} expects a batch of shape (B, {', '.join(map(str, shape))}), got {tuple(x.shape)}")


def _apply_fn(fn: SpectralFn, s: torch.Tensor) -> torch.Tensor:
    """``fn(s)`` as a tensor on s's device and dtype (a Python number or float64 result is cast)."""
    return torch.as_tensor(fn(s), dtype=s.dtype, device=s.device)


class _PerDevice:
    """Per-instance cache of float64 CPU tensors converted to each (device, dtype) seen.

    Entries are built outside inference mode, so matrices first made under ``torch.inference_mode()``
    can still be saved for backward later (DPS differentiates through ``A``).
    """

    def __init__(self, **tensors: torch.Tensor):
        self._src = tensors
        self._cache: dict[tuple[torch.device, torch.dtype], dict[str, torch.Tensor]] = {}

    def get(self, like: torch.Tensor) -> dict[str, torch.Tensor]:
        if not like.is_floating_point():
            raise TypeError(f"operators act on floating-point tensors, got dtype {like.dtype}")
        key = (like.device, like.dtype)
        hit = self._cache.get(key)
        if hit is None:
            with torch.inference_mode(False):
                hit = {k: v.to(device=like.device, dtype=like.dtype) for k, v in self._src.items()}
            self._cache[key] = hit
        return hit


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

    def spectral_diag(self, d: torch.Tensor) -> torch.Tensor:
        """``v_i^T diag(d) v_i`` for every kept right singular vector ``v_i``, per sample of ``d``
        ``(B, *in_shape)``, laid out so that a ``spectral`` ``fn`` may return it (or a function of it)."""
        raise NotImplementedError(f"{type(self).__name__} has no spectral_diag")

    def spectral_batched(self, x: torch.Tensor, fn: SpectralFn) -> torch.Tensor:
        """``V diag(fn_b(s)) V^T x_b`` with a different function per batch item: ``fn(s)`` must return a
        tensor of shape ``(B, *s.shape)`` (item b's values).  Operators that cannot do this raise
        ``NotImplementedError`` (callers then use one function for all items)."""
        raise NotImplementedError(f"{type(self).__name__} has no per-item spectral functions")

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
    LR pixel into its block, the exact Moore-Penrose pseudo-inverse (``A A+ = I``; in floating point
    up to the rounding of a mean of ``factor^2`` equal numbers, exact for factors 1 and 2).
    """

    name = "avgpool"

    def __init__(self, factor: int, in_shape: tuple[int, ...]):
        c, h, w = _check_factor_and_shape(factor, tuple(in_shape))
        self.factor = factor
        self.in_shape = (c, h, w)
        self.out_shape = (c, h // factor, w // factor)

    def A(self, x: torch.Tensor) -> torch.Tensor:
        _check_batch(x, self.in_shape, "AvgPool.A")
        f = self.factor
        if f == 1:
            return x.clone()
        # mean over the columns of each block, then over its rows: rounding error ~2f ulp, where
        # avg_pool2d's running sum over f^2 pixels reaches 1.5e-5 relative at f = 32 in float32
        b, c, h, w = x.shape
        return x.reshape(b, c, h // f, f, w // f, f).mean(dim=5).mean(dim=3)

    def A_pinv(self, y: torch.Tensor) -> torch.Tensor:
        _check_batch(y, self.out_shape, "AvgPool.A_pinv")
        f = self.factor
        return y.repeat_interleave(f, dim=-2).repeat_interleave(f, dim=-1)

    def At(self, y: torch.Tensor) -> torch.Tensor:
        return self.A_pinv(y) / self.factor**2

    def spectral(self, x: torch.Tensor, fn: SpectralFn) -> torch.Tensor:
        if not x.is_floating_point():
            raise TypeError(f"operators act on floating-point tensors, got dtype {x.dtype}")
        s = torch.tensor(1.0 / self.factor, dtype=x.dtype, device=x.device)
        return _apply_fn(fn, s) * self.project_range(x)

    def singular_values(self) -> torch.Tensor:
        c, h, w = self.out_shape
        return torch.full((c * h * w,), 1.0 / self.factor, dtype=torch.float64)

    def spectral_diag(self, d: torch.Tensor) -> torch.Tensor:
        """``v_i`` is a block's indicator over ``factor``: ``v_i^T diag(d) v_i`` is the block mean of ``d``,
        laid out (like ``spectral``) on the image, constant over each block."""
        return self.project_range(d)

    def spectral_batched(self, x: torch.Tensor, fn: SpectralFn) -> torch.Tensor:
        s = torch.tensor(1.0 / self.factor, dtype=x.dtype, device=x.device)
        vals = _apply_fn(fn, s).reshape(x.shape[0], *([1] * (x.ndim - 1)))
        return vals * self.project_range(x)

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
        pinv = self._V @ torch.diag(1.0 / self._S) @ self._U.T
        self._dev = _PerDevice(M=M64, pinv=pinv, V=self._V, S=self._S)

    def _mats(self, like: torch.Tensor):
        d = self._dev.get(like)
        return d["M"], d["pinv"], d["V"], d["S"]

    def _flat(self, x: torch.Tensor) -> torch.Tensor:
        _check_batch(x, self.in_shape, "Matrix")
        return x.reshape(x.shape[0], -1)

    def A(self, x: torch.Tensor) -> torch.Tensor:
        M = self._mats(x)[0]
        return self._flat(x) @ M.T

    def At(self, y: torch.Tensor) -> torch.Tensor:
        _check_batch(y, self.out_shape, "Matrix.At")
        M = self._mats(y)[0]
        return (y @ M).reshape(y.shape[0], *self.in_shape)

    def A_pinv(self, y: torch.Tensor) -> torch.Tensor:
        _check_batch(y, self.out_shape, "Matrix.A_pinv")
        P = self._mats(y)[1]
        return (y @ P.T).reshape(y.shape[0], *self.in_shape)

    def spectral(self, x: torch.Tensor, fn: SpectralFn) -> torch.Tensor:
        _, _, V, S = self._mats(x)
        coef = (self._flat(x) @ V) * _apply_fn(fn, S)
        return (coef @ V.T).reshape(x.shape[0], *self.in_shape)

    def singular_values(self) -> torch.Tensor:
        return self._S.clone()

    def spectral_diag(self, d: torch.Tensor) -> torch.Tensor:
        V = self._mats(d)[2]
        return self._flat(d) @ (V * V)

    def spectral_batched(self, x: torch.Tensor, fn: SpectralFn) -> torch.Tensor:
        _, _, V, S = self._mats(x)
        coef = (self._flat(x) @ V) * _apply_fn(fn, S).reshape(x.shape[0], -1)
        return (coef @ V.T).reshape(x.shape[0], *self.in_shape)


def keys_cubic(t: torch.Tensor, a: float = -0.5) -> torch.Tensor:
    """Keys' cubic convolution kernel (support ``|t| < 2``); ``a = -0.5`` as in PIL and antialiased torch."""
    t = t.abs()
    near = ((a + 2) * t - (a + 3)) * t * t + 1
    far = ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
    return torch.where(t <= 1, near, torch.where(t < 2, far, torch.zeros_like(t)))


def bicubic_matrix(n: int, factor: int) -> torch.Tensor:
    """The 1-D antialiased bicubic downsampling matrix, ``(n // factor) x n``, float64.

    Output pixel ``i`` has its centre at ``factor * (i + 0.5)`` in input pixel units (half-pixel
    alignment, ``align_corners=False``); input pixel ``j`` (centre ``j + 0.5``) gets weight
    ``keys_cubic((j + 0.5 - factor (i + 0.5)) / factor)``: the kernel stretched by ``factor``, so at most
    ``4 factor`` taps.  Taps that fall outside the image are dropped and the remaining weights are
    renormalised to sum to 1 (the boundary rule of ``torch.nn.functional.interpolate(...,
    mode="bicubic", antialias=True)`` and of PIL).
    """
    if n % factor:
        raise ValueError(f"factor {factor} does not divide the length {n}")
    centres = factor * (torch.arange(n // factor, dtype=torch.float64) + 0.5)
    taps = torch.arange(n, dtype=torch.float64) + 0.5
    w = keys_cubic((taps[None, :] - centres[:, None]) / factor)
    return w / w.sum(dim=1, keepdim=True)


def bicubic_reflect_matrix(n: int, factor: int) -> torch.Tensor:
    """The 1-D bicubic downsampling matrix of MATLAB's ``imresize(x, 1/factor)`` (antialiased Keys
    kernel, ``a = -0.5``), ``(n // factor) x n``, float64.

    Output pixel ``k`` has its centre at ``u_k = factor k + (factor - 1) / 2`` (0-based input pixel
    indices; MATLAB's ``u = x / scale + 0.5 (1 - 1 / scale)``); input pixel ``j`` gets weight
    ``keys_cubic((j - u_k) / factor)``, normalised to sum to 1.  For even factors these are the 4 factor
    taps ``keys_cubic((i - 2 factor + 0.5) / factor)``, ``i < 4 factor``, around the pixel
    ``factor // 2 + factor k`` (the form of the paper's and DDRM's code); for odd factors the centre
    is a pixel and the taps sit at whole offsets (MATLAB; the paper's code instead keeps the half-pixel
    offsets, which at ``factor = 1`` makes a shifted blur instead of the identity).  Borders: MATLAB's
    ``symmetric`` extension, the edge pixel repeated (``... x1 x0 | x0 x1 ...``, numpy's
    ``mode="symmetric"``, not torch's ``"reflect"``), periodic with period ``2 n`` when the kernel is
    wider than the image; the weight of a tap outside is added to the pixel it reflects to.
    """
    if n % factor:
        raise ValueError(f"factor {factor} does not divide the length {n}")
    m = n // factor
    centres = factor * torch.arange(m, dtype=torch.float64) + (factor - 1) / 2  # u_k
    offsets = torch.arange(-2 * factor, 2 * factor + 1)
    taps = torch.floor(centres)[:, None].long() + offsets[None, :]  # every j with |j - u_k| < 2 factor
    w = keys_cubic((taps.to(torch.float64) - centres[:, None]) / factor)
    w = w / w.sum(dim=1, keepdim=True)
    j = taps % (2 * n)
    j = torch.where(j < n, j, 2 * n - 1 - j)  # symmetric extension: -1 -> 0, n -> n - 1
    M = torch.zeros(m, n, dtype=torch.float64)
    M.scatter_add_(1, j, w)
    return M


class _SVD1D:
    """SVD of one 1-D matrix ``M = U diag(s) V^T`` with singular values ``<= cutoff * max(s)`` dropped."""

    def __init__(self, M: torch.Tensor, cutoff: float):
        U, s, Vh = torch.linalg.svd(M, full_matrices=False)
        keep = s > max(cutoff, 1e-12) * s.max()
        self.M = M
        self.U, self.s, self.V = U[:, keep], s[keep], Vh[keep].T
        self.pinv = self.V @ torch.diag(1.0 / self.s) @ self.U.T


class Separable(LinearOperator):
    """A separable downsampler by an integer ``factor``: per channel ``A X = A_r X A_c^T`` with the 1-D
    row matrix ``A_r`` (h x H) and column matrix ``A_c`` (w x W) from ``matrix_1d(length, factor)``;
    subclasses only choose ``matrix_1d`` (and a name).

    Pseudo-inverse: each 1-D matrix's SVD is computed once (float64, CPU); 1-D singular values
    ``<= cutoff * (largest 1-D singular value)`` are zeroed (a *relative* cutoff: the 1-D singular
    values scale like ``1/sqrt(factor)``, so an absolute threshold would mean something different for
    every factor).  ``A+ Y = A_r^+ Y A_c^{+T}`` with the truncated 1-D pseudo-inverses; the kept 2-D
    singular values are the products ``s_r[i] s_c[j]`` of the kept 1-D ones; ``spectral`` works in
    the separable basis ``V_r (x) V_c``.
    """

    name = "separable"

    @staticmethod
    def matrix_1d(n: int, factor: int) -> torch.Tensor:
        raise NotImplementedError

    def __init__(self, factor: int, in_shape: tuple[int, ...], cutoff: float = 3e-2):
        c, h, w = _check_factor_and_shape(factor, tuple(in_shape))
        if isinstance(cutoff, bool) or not isinstance(cutoff, (int, float)) or not 0 <= cutoff < 1:
            raise ValueError(f"cutoff is relative to the largest 1-D singular value: pick it in [0, 1), got {cutoff!r}")
        self.factor, self.cutoff = factor, float(cutoff)
        self.in_shape = (c, h, w)
        self.out_shape = (c, h // factor, w // factor)
        rows = _SVD1D(self.matrix_1d(h, factor), self.cutoff)
        cols = rows if w == h else _SVD1D(self.matrix_1d(w, factor), self.cutoff)
        self._rows, self._cols = rows, cols
        self._s2d = torch.outer(rows.s, cols.s)
        self._dev = _PerDevice(Ar=rows.M, Ac=cols.M, Pr=rows.pinv, Pc=cols.pinv, Vr=rows.V, Vc=cols.V, s=self._s2d)

    def _check(self, x: torch.Tensor, shape: tuple[int, ...], what: str) -> dict[str, torch.Tensor]:
        _check_batch(x, shape, f"{type(self).__name__}.{what}")
        return self._dev.get(x)

    def A(self, x: torch.Tensor) -> torch.Tensor:
        m = self._check(x, self.in_shape, "A")
        return m["Ar"] @ (x @ m["Ac"].T)

    def At(self, y: torch.Tensor) -> torch.Tensor:
        m = self._check(y, self.out_shape, "At")
        return m["Ar"].T @ (y @ m["Ac"])

    def A_pinv(self, y: torch.Tensor) -> torch.Tensor:
        m = self._check(y, self.out_shape, "A_pinv")
        return m["Pr"] @ (y @ m["Pc"].T)

    def spectral(self, x: torch.Tensor, fn: SpectralFn) -> torch.Tensor:
        """``V diag(fn(s)) V^T x`` computed separably: coefficients ``V_r^T X V_c`` per channel, of shape
        ``(B, C, k_r, k_c)``; ``fn`` gets the ``(k_r, k_c)`` tensor of 2-D singular values ``s_r s_c^T``."""
        m = self._check(x, self.in_shape, "spectral")
        coef = m["Vr"].T @ x @ m["Vc"]
        return m["Vr"] @ (coef * _apply_fn(fn, m["s"])) @ m["Vc"].T

    def spectral_diag(self, d: torch.Tensor) -> torch.Tensor:
        """``(V_r o V_r)^T D (V_c o V_c)`` per channel (``o``: elementwise): ``(B, C, k_r, k_c)``."""
        m = self._check(d, self.in_shape, "spectral_diag")
        return (m["Vr"] ** 2).T @ d @ (m["Vc"] ** 2)

    def spectral_batched(self, x: torch.Tensor, fn: SpectralFn) -> torch.Tensor:
        m = self._check(x, self.in_shape, "spectral_batched")
        coef = m["Vr"].T @ x @ m["Vc"]
        vals = _apply_fn(fn, m["s"]).reshape(x.shape[0], 1, *m["s"].shape)
        return m["Vr"] @ (coef * vals) @ m["Vc"].T

    def singular_values(self) -> torch.Tensor:
        """The kept 2-D singular values ``s_r[i] s_c[j]``, once per channel: ``C k_r k_c`` values."""
        return self._s2d.flatten().repeat(self.in_shape[0])

    def describe(self) -> dict:
        return {**super().describe(), "factor": self.factor, "cutoff": self.cutoff}


class Bicubic(Separable):
    """Antialiased bicubic downsampling by an integer ``factor`` (Keys kernel, ``a = -0.5``), with
    :func:`bicubic_matrix` per axis (kernel stretched by ``factor``, ``4 factor`` taps, stride ``factor``,
    weights summing to 1).  Boundary: taps outside the image are dropped and the rest renormalised, so
    ``A`` equals ``torch.nn.functional.interpolate(x, scale_factor=1/factor, mode="bicubic",
    antialias=True, align_corners=False)`` (and PIL's bicubic reduction) on the *whole* image (to float
    rounding).  ``factor = 1`` is the identity.

    These matrices are well conditioned (smallest/largest 1-D singular value >= 0.68 for every factor
    up to 32 and any size), so every ``cutoff < 0.68`` -- the default 3e-2 (DDRM's and DDNM's
    threshold, absolute there, where it never triggers for these matrices either) and 0 -- keeps
    everything: ``A+`` is the exact Moore-Penrose pseudo-inverse and ``A A+ = I``.  Larger cutoffs drop
    the LR-Nyquist end of the spectrum (see ``bench/operators.py``).
    """

    name = "bicubic"
    matrix_1d = staticmethod(bicubic_matrix)


class BicubicReflect(Separable):
    """Bicubic downsampling as MATLAB's ``imresize`` (and the text-guided SR paper's code, and the SR
    benchmarks' LR images) computes it: :func:`bicubic_reflect_matrix` per axis, the same Keys kernel
    as :class:`Bicubic` but with symmetric reflection at the borders (the edge pixel repeated) instead of
    renormalised border taps.  The interior rows equal :class:`Bicubic`'s; the 2 rows at each border
    differ.  ``factor = 1`` is the identity.

    Pseudo-inverse as :class:`Separable` with the relative cutoff 3e-2 (DDRM's threshold); the smallest
    1-D singular value is at least 0.688 of the largest for every factor up to 32 and LR lengths 1..64
    (``bench/operators.py``), so nothing is truncated at that cutoff: ``A+`` is the exact pseudo-inverse,
    and ``PSNR(A A+ y, y)`` is 146-154 dB in float32 at factors 4-32 on 256 px.
    """

    name = "bicubic-reflect"
    matrix_1d = staticmethod(bicubic_reflect_matrix)


class GaussianBlur(Separable):
    """Gaussian blur followed by one sample per LR pixel, by an integer ``factor``: the classical
    blur-and-downsample degradation, with :func:`gaussian_matrix` per axis.  ``width`` is the blur's
    standard deviation in LR pixels (``width * factor`` HR pixels), so the same value means the same
    physical blur at every factor and every stage of a cascade.

    Pseudo-inverse as :class:`Separable` (relative cutoff 3e-2).  Below ``width = 0.88`` no direction is
    dropped (measured for factors 2-32 and LR sides 4-64): ``A+`` is exact and ``A A+ = I``.  A wider
    blur damps the LR-Nyquist end of the spectrum below the cutoff (1/6 of the 1-D directions at
    ``width = 1``, over half at 2); those are dropped, ``A+`` is a truncated pseudo-inverse and the
    samples match y only on the kept directions (LR-PSNR says how far).
    """

    name = "gaussian"

    def __init__(self, factor: int, in_shape: tuple[int, ...], width: float = 0.5, cutoff: float = 3e-2):
        if isinstance(width, bool) or not isinstance(width, (int, float)) or not 0 < width < math.inf:
            raise ValueError(f"width (the blur's std in LR pixels) must be a positive number, got {width!r}")
        self.width = float(width)
        super().__init__(factor, in_shape, cutoff)

    def matrix_1d(self, n: int, factor: int) -> torch.Tensor:  # type: ignore[override]
        return gaussian_matrix(n, factor, self.width)

    def describe(self) -> dict:
        return {**super().describe(), "width": self.width}


def gaussian_matrix(n: int, factor: int, width: float) -> torch.Tensor:
    """The 1-D Gaussian blur-and-sample matrix, ``(n // factor) x n``, float64.

    LR pixel ``i`` is centred at ``c_i = factor (i + 0.5)`` in HR pixel units (half-pixel alignment, as
    :func:`bicubic_matrix`); HR pixel ``j`` covers ``[j, j + 1)`` and gets the Gaussian's mass over it,
    ``Phi((j + 1 - c_i) / s) - Phi((j - c_i) / s)`` with ``s = width * factor`` (the pixel-integrated
    kernel: still a proper average when ``s`` is below a pixel).  Taps outside the image are dropped and
    each row renormalised to sum to 1 (the border rule of :func:`bicubic_matrix`).
    """
    if n % factor:
        raise ValueError(f"factor {factor} does not divide the length {n}")
    s = width * factor
    centres = factor * (torch.arange(n // factor, dtype=torch.float64) + 0.5)
    edges = torch.arange(n + 1, dtype=torch.float64)
    cdf = torch.special.ndtr((edges[None, :] - centres[:, None]) / s)
    w = cdf[:, 1:] - cdf[:, :-1]
    return w / w.sum(dim=1, keepdim=True)


def _registered() -> dict[str, Callable[..., LinearOperator]]:
    """``textsr.operator_registry``'s operators as classes of this module."""
    from .operator_registry import OPERATORS as REGISTRY

    return {name: globals()[entry.cls] for name, entry in REGISTRY.items()}


OPERATORS: dict[str, Callable[..., LinearOperator]] = _registered()


def make_operator(name: str, factor: int, in_shape: tuple[int, ...], **kw) -> LinearOperator:
    """Build a registered downsampling operator by name, e.g. ``make_operator("bicubic", 4, (3, 256, 256))``;
    ``kw``: its parameters (``textsr.operator_registry``, e.g. ``width`` of ``gaussian``) and ``cutoff``."""
    try:
        cls = OPERATORS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown operator {name!r}; known operators: {', '.join(sorted(OPERATORS))}") from None
    return cls(factor, tuple(in_shape), **kw)
