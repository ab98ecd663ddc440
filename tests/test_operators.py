"""Operator properties: Moore-Penrose identities, adjoints, the SVD view (``spectral``), shapes, dtypes,
batch independence, agreement of Bicubic with torch's antialiased bicubic and of BicubicReflect with a
symmetric-padded strided convolution, ``spectral_diag``, and the error messages.

Tolerances: relative (in norm) 1e-5 for float32 and 1e-10 for float64.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from textsr.operators import (
    OPERATORS,
    AvgPool,
    Bicubic,
    BicubicReflect,
    GaussianBlur,
    LinearOperator,
    Matrix,
    Separable,
    bicubic_matrix,
    bicubic_reflect_matrix,
    gaussian_matrix,
    keys_cubic,
    make_operator,
)

SEPARABLE = {"bicubic": Bicubic, "bicubic-reflect": BicubicReflect, "gaussian": GaussianBlur}
# gaussian widths (LR pixels): below 0.88 nothing is truncated at the default cutoff, 1.5 truncates
WIDTHS = [0.05, 0.3, 0.5, 0.85, 1.5]

TOL = {torch.float32: 1e-5, torch.float64: 1e-10}
DTYPES = [torch.float32, torch.float64]
B = 3
# Bicubic cutoffs: the 1-D spectrum's smallest/largest ratio is >= 0.685, so cutoffs below that keep
# every direction (exact pseudo-inverse) and 0.75 / 0.9 truncate the LR-Nyquist end.
EXACT_CUTOFFS = [0.0, 1e-3, 3e-2, 0.5]
TRUNC_CUTOFFS = [0.75, 0.9]
SETTINGS = settings(max_examples=50, deadline=None, derandomize=True)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    scale = max(b.double().norm().item(), a.double().norm().item(), 1e-30)
    return (a.double() - b.double()).norm().item() / scale


def assert_close(a, b, dtype, what=""):
    assert a.shape == b.shape, f"{what}: shape {tuple(a.shape)} != {tuple(b.shape)}"
    err = rel(a, b)
    assert err <= TOL[dtype], f"{what}: relative error {err:.3g} > {TOL[dtype]:g} ({dtype})"


def is_exact(op: LinearOperator) -> bool:
    """True when A+ is the exact Moore-Penrose pseudo-inverse (nothing but exact zeros truncated),
    decided from the 1-D spectra computed here, independently of the operator."""
    if not isinstance(op, Separable):
        return True
    _, h, w = op.in_shape
    if isinstance(op, GaussianBlur):
        def build(n, f):
            return gaussian_matrix(n, f, op.width)
    else:
        build = bicubic_matrix if isinstance(op, Bicubic) else bicubic_reflect_matrix
    for n in (h, w):
        s = torch.linalg.svdvals(build(n, op.factor))
        if (s <= op.cutoff * s.max()).any():
            return False
    return True


# ----------------------------------------------------------------------------- strategies

def random_matrix(m: int, n: int, rank: int, seed: int, gaussian: bool = False) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if gaussian:
        G = torch.randn(m, rank, generator=g, dtype=torch.float64)
        return G @ torch.randn(rank, n, generator=g, dtype=torch.float64)
    # controlled conditioning (singular values in [0.2, 1]) so float32 can meet 1e-5
    Q1, _ = torch.linalg.qr(torch.randn(m, m, generator=g, dtype=torch.float64))
    Q2, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    s = 0.2 + 0.8 * torch.rand(rank, generator=g, dtype=torch.float64)
    return Q1[:, :rank] @ torch.diag(s) @ Q2[:, :rank].T


@st.composite
def image_operators(draw, kinds=("avgpool", "bicubic", "bicubic-reflect", "gaussian"), max_side=64, cutoffs=None,
                    max_factor=32):
    kind = draw(st.sampled_from(kinds))
    max_factor = min(max_factor, max_side)
    # half the draws from small factors, where the LR image has more than a couple of pixels
    f = draw(st.one_of(st.integers(1, min(8, max_factor)), st.integers(1, max_factor)))
    h = f * draw(st.integers(1, max_side // f))
    w = f * draw(st.integers(1, max_side // f))
    c = draw(st.sampled_from([1, 3]))
    if kind == "avgpool":
        return AvgPool(f, (c, h, w))
    if kind == "gaussian":  # the default cutoff; the width decides what is truncated
        return GaussianBlur(f, (c, h, w), width=draw(st.sampled_from(WIDTHS)))
    cutoff = draw(st.sampled_from(cutoffs or EXACT_CUTOFFS + TRUNC_CUTOFFS))
    return SEPARABLE[kind](f, (c, h, w), cutoff=cutoff)


@st.composite
def matrix_operators(draw, max_dim=24):
    m = draw(st.integers(1, max_dim))
    n = draw(st.integers(1, max_dim))
    rank = draw(st.integers(1, min(m, n)))  # rank < min(m, n): rank-deficient
    gaussian = draw(st.booleans())
    seed = draw(st.integers(0, 2**31 - 1))
    M = random_matrix(m, n, rank, seed, gaussian=gaussian)
    if gaussian:  # float32 cannot promise 1e-5 through the pseudo-inverse of an ill-conditioned matrix
        s = torch.linalg.svdvals(M)
        if s[rank - 1] < 0.05 * s[0]:
            M = random_matrix(m, n, rank, seed, gaussian=False)
    return Matrix(M)


any_operator = st.one_of(
    image_operators(),
    image_operators(kinds=("bicubic", "bicubic-reflect"), cutoffs=TRUNC_CUTOFFS, max_factor=8),
    matrix_operators(),
)
cases = st.tuples(any_operator, st.sampled_from(DTYPES), st.integers(0, 2**31 - 1))


def draws(op: LinearOperator, dtype, seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, *op.in_shape, generator=g, dtype=torch.float64).to(dtype)
    y = torch.randn(B, *op.out_shape, generator=g, dtype=torch.float64).to(dtype)
    return x, y


def inner(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.double() * b.double()).flatten(1).sum(1)


# ----------------------------------------------------------------------------- Moore-Penrose

@SETTINGS
@given(cases)
def test_A_Apinv_A_is_A(case):
    op, dtype, seed = case
    x, _ = draws(op, dtype, seed)
    Ax = op.A(x)
    if is_exact(op):
        assert_close(op.A(op.A_pinv(Ax)), Ax, dtype, "A A+ A x")
    else:  # truncated: A A+ A = A_k, and A A+ is still a projection
        Akx = op.A(op.A_pinv(Ax))
        assert_close(op.A(op.A_pinv(Akx)), Akx, dtype, "A A+ A_k x")
        assert rel(Akx, Ax) > 1e-3, "a truncating cutoff should change A A+ A"


@SETTINGS
@given(cases)
def test_Apinv_A_Apinv_is_Apinv(case):
    op, dtype, seed = case
    _, y = draws(op, dtype, seed)
    p = op.A_pinv(y)
    assert_close(op.A_pinv(op.A(p)), p, dtype, "A+ A A+ y")


@SETTINGS
@given(cases)
def test_projections_are_self_adjoint(case):
    """(A A+)^T = A A+ and (A+ A)^T = A+ A: with the two identities above, this pins A+ uniquely."""
    op, dtype, seed = case
    x, y = draws(op, dtype, seed)
    x2, y2 = draws(op, dtype, seed + 1)
    P_out = lambda v: op.A(op.A_pinv(v))  # noqa: E731
    a, b = inner(P_out(y), y2), inner(y, P_out(y2))
    assert ((a - b).abs() <= TOL[dtype] * y.double().flatten(1).norm(dim=1) * y2.double().flatten(1).norm(dim=1)).all()
    a, b = inner(op.project_range(x), x2), inner(x, op.project_range(x2))
    assert ((a - b).abs() <= TOL[dtype] * x.double().flatten(1).norm(dim=1) * x2.double().flatten(1).norm(dim=1)).all()


@SETTINGS
@given(cases)
def test_adjoint(case):
    op, dtype, seed = case
    x, v = draws(op, dtype, seed)
    lhs, rhs = inner(op.A(x), v), inner(x, op.At(v))
    scale = op.A(x).double().flatten(1).norm(dim=1) * v.double().flatten(1).norm(dim=1)
    assert ((lhs - rhs).abs() <= TOL[dtype] * scale).all(), f"<Ax,v>={lhs.tolist()} <x,A^T v>={rhs.tolist()}"


# ----------------------------------------------------------------------------- the SVD view

@SETTINGS
@given(cases)
def test_spectral_one_is_range_projection(case):
    op, dtype, seed = case
    x, _ = draws(op, dtype, seed)
    assert_close(op.spectral(x, lambda s: torch.ones_like(s)), op.project_range(x), dtype, "spectral(x, 1)")
    assert_close(op.spectral(x, lambda s: 1.0), op.project_range(x), dtype, "spectral(x, 1.0 scalar)")
    assert_close(op.project_null(x) + op.project_range(x), x, dtype, "null + range")


@SETTINGS
@given(cases)
def test_spectral_s2_is_AtA_on_kept_directions(case):
    """V s^2 V^T x = A^T A (A+ A x): the kept singular values and right vectors agree with A."""
    op, dtype, seed = case
    x, _ = draws(op, dtype, seed)
    ref = op.At(op.A(op.project_range(x)))
    assert_close(op.spectral(x, lambda s: s**2), ref, dtype, "spectral(x, s^2)")
    if is_exact(op):
        assert_close(op.spectral(x, lambda s: s**2), op.At(op.A(x)), dtype, "spectral(x, s^2) = A^T A x")


@SETTINGS
@given(cases)
def test_spectral_links_At_and_Apinv(case):
    """V s^-2 V^T A^T y = A+ y for every y, and V s^2 V^T A+ r = A^T r for r = A A+ y."""
    op, dtype, seed = case
    _, y = draws(op, dtype, seed)
    assert_close(op.spectral(op.At(y), lambda s: 1 / s**2), op.A_pinv(y), dtype, "spectral(A^T y, 1/s^2)")
    r = op.A(op.A_pinv(y))
    assert_close(op.spectral(op.A_pinv(r), lambda s: s**2), op.At(r), dtype, "spectral(A+ r, s^2)")
    # composition: fn1 then fn2 == fn1 * fn2
    two = op.spectral(op.spectral(op.At(y), lambda s: 1 / s), lambda s: 1 / s)
    assert_close(two, op.A_pinv(y), dtype, "spectral twice")


def dense(f, in_shape) -> torch.Tensor:
    n = math.prod(in_shape)
    E = torch.eye(n, dtype=torch.float64).reshape(n, *in_shape)
    return f(E).reshape(n, -1).T


small_cases = st.one_of(
    image_operators(max_side=16),
    image_operators(kinds=("bicubic", "bicubic-reflect"), max_side=16, cutoffs=TRUNC_CUTOFFS, max_factor=4),
    matrix_operators(max_dim=12),
)


@settings(max_examples=15, deadline=None, derandomize=True)
@given(small_cases)
def test_spectral_matches_dense_svd(op):
    """spectral(., g) == g(sqrt(A_k^T A_k)) on the range of A_k^T, from a dense eigendecomposition,
    with A_k = A A+ A (= A when nothing is truncated); singular_values() are A_k's nonzero ones."""
    Ak = dense(lambda e: op.A(op.A_pinv(op.A(e))), op.in_shape)
    lam, Q = torch.linalg.eigh(Ak.T @ Ak)
    keep = lam > 1e-10 * lam.max().clamp(min=1e-300)
    s = lam[keep].sqrt()
    g = lambda t: torch.exp(-t) + t**3 + 0.5  # noqa: E731  (no symmetry a wrong basis could hide behind)
    ref = Q[:, keep] @ torch.diag(g(s)) @ Q[:, keep].T
    got = dense(lambda e: op.spectral(e, g), op.in_shape)
    assert rel(got, ref) <= 1e-9
    sv = op.singular_values()
    assert sv.dtype == torch.float64 and sv.device.type == "cpu"
    assert torch.allclose(sv.sort().values, s.sort().values, rtol=1e-9, atol=1e-12)
    if is_exact(op):
        assert rel(Ak, dense(op.A, op.in_shape)) <= 1e-12


@settings(max_examples=15, deadline=None, derandomize=True)
@given(st.one_of(image_operators(max_side=16, cutoffs=EXACT_CUTOFFS), matrix_operators(max_dim=12)),
       st.floats(0.05, 1.0), st.floats(1e-3, 0.5))
def test_pigdm_pullback_matches_dense_solve(op, r, sigma):
    """A^T (r^2 A A^T + sigma^2 I)^-1 r_y == spectral(A+ r_y, s^2 / (r^2 s^2 + sigma^2)) (module docstring)."""
    A = dense(op.A, op.in_shape)
    g = torch.Generator().manual_seed(0)
    ry = torch.randn(1, *op.out_shape, generator=g, dtype=torch.float64)
    v = torch.linalg.solve(r**2 * A @ A.T + sigma**2 * torch.eye(A.shape[0], dtype=torch.float64), ry.reshape(-1))
    ref = (A.T @ v).reshape(1, *op.in_shape)
    got = op.spectral(op.A_pinv(ry), lambda s: s**2 / (r**2 * s**2 + sigma**2))
    assert rel(got, ref) <= 1e-9


# ----------------------------------------------------------------------------- shapes, dtypes, batches

@SETTINGS
@given(cases)
def test_shapes_dtypes_round_trip(case):
    op, dtype, seed = case
    x, y = draws(op, dtype, seed)
    for out, shape in [(op.A(x), op.out_shape), (op.At(y), op.in_shape), (op.A_pinv(y), op.in_shape),
                       (op.spectral(x, lambda s: s), op.in_shape), (op.project_null(x), op.in_shape)]:
        assert tuple(out.shape) == (B, *shape)
        assert out.dtype == dtype and out.device == x.device


@SETTINGS
@given(cases, st.integers(0, B - 1))
def test_batch_items_independent(case, k):
    op, dtype, seed = case
    x, y = draws(op, dtype, seed)
    fn = lambda s: s / (1 + s)  # noqa: E731
    sv = op.singular_values()
    # rounding differs between batched and single products: bound it relative to ||op|| ||input||, not
    # to the output, which a low-rank A can make tiny by cancellation (A x = g (r . x) with r . x ~ 0)
    gain = {"A": sv.max().item(), "At": sv.max().item(), "A_pinv": 1 / sv.min().item(), "spectral": 1.0}
    for name, f, inp in [("A", op.A, x), ("At", op.At, y), ("A_pinv", op.A_pinv, y),
                         ("spectral", lambda t: op.spectral(t, fn), x)]:
        a, b = f(inp)[k : k + 1], f(inp[k : k + 1])
        scale = max(a.double().norm().item(), gain[name] * inp[k].double().norm().item(), 1e-30)
        err = (a.double() - b.double()).norm().item() / scale
        assert err <= TOL[dtype], f"{name}: item {k} of the batch vs alone: relative error {err:.3g} ({dtype})"


@pytest.mark.parametrize("op", [AvgPool(4, (3, 16, 8)), Bicubic(4, (3, 16, 8)), BicubicReflect(4, (3, 16, 8)),
                                Matrix(torch.eye(6)[:4], (1, 2, 3))],
                         ids=["avgpool", "bicubic", "bicubic-reflect", "matrix"])
def test_wrong_shape_and_dtype_are_rejected(op):
    with pytest.raises(ValueError, match=r"expects a batch of shape \(B, "):
        op.A(torch.zeros(2, *op.out_shape))
    with pytest.raises(ValueError, match="expects a batch of shape"):
        op.A_pinv(torch.zeros(2, *op.in_shape))
    with pytest.raises(TypeError, match="floating-point"):
        op.spectral(torch.zeros(2, *op.in_shape, dtype=torch.int64), lambda s: s)


def test_matrices_built_in_inference_mode_still_support_autograd():
    """The per-device cache must not hand out inference tensors (DPS backpropagates through A)."""
    for op in [Bicubic(2, (1, 8, 8)), BicubicReflect(2, (1, 8, 8)), Matrix(torch.randn(3, 5))]:
        x = torch.randn(1, *op.in_shape)
        with torch.inference_mode():
            op.A(x)
        xg = x.clone().requires_grad_(True)
        op.A(xg).square().sum().backward()
        assert xg.grad is not None and torch.isfinite(xg.grad).all()


# ----------------------------------------------------------------------------- AvgPool specifics

@pytest.mark.parametrize("f", [1, 2, 3, 4, 5, 7, 8, 16, 32])
@pytest.mark.parametrize("dtype", DTYPES)
def test_avgpool_A_Apinv_is_identity(f, dtype):
    op = AvgPool(f, (3, 2 * f, 3 * f))
    y = torch.randn(4, *op.out_shape, dtype=dtype)
    got = op.A(op.A_pinv(y))
    if f <= 2:
        assert torch.equal(got, y)  # exact
    else:  # the mean of f^2 equal numbers is exact only up to a few ulp of rounding
        eps = torch.finfo(dtype).eps
        assert ((got - y).abs() <= 4 * eps * y.abs()).all()


def test_avgpool_is_block_mean_and_accurate_at_large_factor():
    x = torch.rand(2, 3, 64, 64)
    op = AvgPool(32, (3, 64, 64))
    ref = x.double().reshape(2, 3, 2, 32, 2, 32).mean(dim=(3, 5))
    assert ((op.A(x).double() - ref).abs() / ref.abs()).max() < 1e-6
    assert op.singular_values().numel() == 3 * 2 * 2


# ----------------------------------------------------------------------------- Bicubic specifics

def smooth_image(b, c, h, w, seed=0, dtype=torch.float64):
    """A band-limited random field in [0, 1] (sum of a few low-frequency cosines)."""
    g = torch.Generator().manual_seed(seed)
    yy = torch.linspace(0, 1, h, dtype=torch.float64)[:, None]
    xx = torch.linspace(0, 1, w, dtype=torch.float64)[None, :]
    img = torch.zeros(b, c, h, w, dtype=torch.float64)
    for _ in range(6):
        k = torch.rand(b, c, 2, generator=g, dtype=torch.float64) * 4
        ph = torch.rand(b, c, 1, 1, generator=g, dtype=torch.float64) * 2 * math.pi
        img += torch.cos(2 * math.pi * (k[..., :1, None] * yy + k[..., 1:, None] * xx) + ph)
    lo, hi = img.amin(dim=(2, 3), keepdim=True), img.amax(dim=(2, 3), keepdim=True)
    img = (img - lo) / (hi - lo)
    return img.to(dtype)


@pytest.mark.parametrize("f,h,w", [(1, 16, 8), (2, 32, 48), (3, 48, 27), (4, 64, 32), (5, 40, 60), (7, 56, 28),
                                   (8, 64, 64), (16, 64, 32), (32, 64, 96)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_bicubic_matches_torch_antialias_on_whole_image(f, h, w, dtype):
    """Whole image, borders included: max abs difference <= 1e-12 (float64) / 1e-6 (float32) on [0, 1]
    images, smooth and white noise alike (same weights and the same border renormalisation)."""
    op = Bicubic(f, (3, h, w))
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    for x in [smooth_image(2, 3, h, w, seed=f, dtype=dtype), torch.rand(2, 3, h, w, dtype=dtype)]:
        ref = torch.nn.functional.interpolate(x, scale_factor=1 / f, mode="bicubic", antialias=True,
                                              align_corners=False)
        assert (op.A(x) - ref).abs().max().item() <= tol


def test_bicubic_matrix_kernel_and_support():
    M = bicubic_matrix(64, 4)
    assert M.shape == (16, 64)
    assert torch.allclose(M.sum(1), torch.ones(16, dtype=torch.float64))
    interior = M[8]
    assert (interior != 0).sum() <= 16  # at most 4 * factor taps
    nz = interior.nonzero().flatten()
    assert nz.min() == 8 * 4 + 2 - 8 and nz.max() == 8 * 4 + 2 + 7  # centred on 34, taps 26..41
    assert torch.equal(bicubic_matrix(12, 1), torch.eye(12, dtype=torch.float64))


def test_bicubic_non_square():
    op = Bicubic(4, (3, 32, 64))
    assert op.out_shape == (3, 8, 16)
    x = smooth_image(2, 3, 32, 64)
    assert_close(op.A(op.A_pinv(op.A(x))), op.A(x), torch.float64)
    assert op.singular_values().numel() == 3 * 8 * 16


@pytest.mark.parametrize("f", [2, 4, 8, 16, 32])
def test_bicubic_cutoff_semantics(f):
    """Relative cutoff: below the spectrum's min/max ratio (~0.69) nothing is dropped; above, the kept
    2-D singular values are products of 1-D ones above cutoff * max."""
    shape = (1, 4 * f, 2 * f)
    full = 4 * 2
    for c in EXACT_CUTOFFS:
        assert Bicubic(f, shape, cutoff=c).singular_values().numel() == full
    s_r = torch.linalg.svdvals(bicubic_matrix(4 * f, f))
    s_c = torch.linalg.svdvals(bicubic_matrix(2 * f, f))
    for c in TRUNC_CUTOFFS:
        kept = torch.outer(s_r[s_r > c * s_r.max()], s_c[s_c > c * s_c.max()]).flatten().sort().values
        assert torch.allclose(Bicubic(f, shape, cutoff=c).singular_values().sort().values, kept, rtol=1e-12)
    assert Bicubic(f, shape, cutoff=0.9).singular_values().numel() < full


@pytest.mark.parametrize("cutoff", [-0.1, 1.0, 2, float("nan"), "0.1"])
def test_bicubic_bad_cutoff(cutoff):
    with pytest.raises(ValueError, match=r"cutoff .* \[0, 1\)"):
        Bicubic(2, (1, 8, 8), cutoff=cutoff)


# ----------------------------------------------------------------------------- bicubic-reflect

def symmetric_strided_conv(x: torch.Tensor, f: int) -> torch.Tensor:
    """MATLAB imresize(x, 1/f, 'bicubic') written independently of textsr.operators: pad each axis with
    numpy's "symmetric" extension (edge pixel repeated), then a separable strided convolution with the
    normalised Keys taps of one output pixel."""
    import numpy as np

    # output k's centre in input pixels is u = f k + (f - 1) / 2 (MATLAB: u = x / scale + (1 - 1 / scale) / 2,
    # 1-based); the taps j with |j - u| < 2f sit at the same offsets from f k for every k: build them for k = 0
    offsets = np.arange(-2 * f, 2 * f + 1)
    u0 = (f - 1) / 2
    taps = np.floor(u0) + offsets
    w = keys_cubic(torch.tensor((taps - u0) / f, dtype=torch.float64))
    nz = (w != 0).nonzero().flatten()
    lo, hi = int(nz.min()), int(nz.max()) + 1  # a contiguous run (keys vanishes at +-1 inside it, too)
    taps, w = taps[lo:hi].astype(int), w[lo:hi]
    w = w / w.sum()
    pad_lo, pad_hi = int(-taps.min()), int(taps.max())
    arr = x.double().numpy()
    arr = np.pad(arr, [(0, 0), (0, 0), (pad_lo, pad_hi), (pad_lo, pad_hi)], mode="symmetric")
    xp = torch.from_numpy(arr)
    c = x.shape[1]
    k = len(w)
    rows = torch.nn.functional.conv2d(xp, w.view(1, 1, k, 1).repeat(c, 1, 1, 1), stride=(f, 1), groups=c)
    out = torch.nn.functional.conv2d(rows, w.view(1, 1, 1, k).repeat(c, 1, 1, 1), stride=(1, f), groups=c)
    return out[..., : x.shape[2] // f, : x.shape[3] // f]


@pytest.mark.parametrize("f,h,w", [(1, 8, 4), (2, 16, 12), (3, 24, 9), (4, 32, 16), (4, 8, 4), (5, 20, 40),
                                   (8, 64, 32), (16, 32, 48), (4, 4, 4)])
def test_bicubic_reflect_equals_symmetric_padded_strided_conv(f, h, w):
    op = BicubicReflect(f, (3, h, w))
    for x in [smooth_image(2, 3, h, w, seed=f), torch.rand(2, 3, h, w, dtype=torch.float64)]:
        ref = symmetric_strided_conv(x, f)
        assert ref.shape == (2, 3, h // f, w // f)
        assert (op.A(x) - ref).abs().max().item() <= 1e-12


def test_bicubic_reflect_even_factor_taps_and_borders():
    """Even factors: the 4f taps keys((i - 2f + 0.5) / f) around pixel f // 2 + f k (the paper's code);
    the interior equals Bicubic, the two border rows at each end differ; a constant image stays constant."""
    f = 4
    M, R = bicubic_reflect_matrix(64, f), bicubic_matrix(64, f)
    i = torch.arange(4 * f, dtype=torch.float64)
    taps = keys_cubic((i - 2 * f + 0.5) / f)
    taps = taps / taps.sum()
    k = 8
    centre = f // 2 + f * k
    assert torch.allclose(M[k, centre - 2 * f: centre + 2 * f], taps, atol=1e-15)
    assert torch.allclose(M[2:-2], R[2:-2], atol=1e-15)
    assert (M[:2] - R[:2]).abs().max() > 1e-3 and (M[-2:] - R[-2:]).abs().max() > 1e-3
    assert torch.allclose(M.sum(1), torch.ones(16, dtype=torch.float64))
    # the first row folds the taps that fall left of the image back symmetrically: -1 -> 0, -2 -> 1, ...
    row = torch.zeros(64, dtype=torch.float64)
    for i_tap in range(4 * f):
        j = f // 2 + i_tap - 2 * f
        row[-j - 1 if j < 0 else j] += taps[i_tap]
    assert torch.allclose(M[0], row, atol=1e-15)
    assert torch.equal(bicubic_reflect_matrix(12, 1), torch.eye(12, dtype=torch.float64))


def test_bicubic_reflect_non_square_and_consistency():
    op = make_operator("bicubic-reflect", 4, (3, 32, 64))
    assert isinstance(op, BicubicReflect) and op.out_shape == (3, 8, 16)
    y = torch.rand(2, 3, 8, 16, dtype=torch.float64)
    assert_close(op.A(op.A_pinv(y)), y, torch.float64, "A A+ = I")
    assert op.describe()["name"] == "bicubic-reflect" and op.singular_values().numel() == 3 * 8 * 16


# ----------------------------------------------------------------------------- spectral_diag

def own_basis(op: LinearOperator) -> torch.Tensor:
    """The kept right singular vectors of a Matrix or Separable operator as the columns of a dense matrix,
    in the order of the layout ``spectral_diag`` returns (white box: the basis is the operator's own
    choice where singular values repeat)."""
    if isinstance(op, Matrix):
        return op._V
    if isinstance(op, Separable):
        c = op.in_shape[0]
        return torch.block_diag(*[torch.kron(op._rows.V, op._cols.V)] * c)
    raise TypeError(type(op).__name__)


@settings(max_examples=20, deadline=None, derandomize=True)
@given(small_cases, st.integers(0, 2**31 - 1))
def test_spectral_diag_is_the_diagonal_in_the_singular_basis(op, seed):
    d = torch.rand(2, *op.in_shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    got = op.spectral_diag(d)
    for b in range(2):
        if isinstance(op, AvgPool):  # x layout: v_i^T diag(d) v_i = the block mean of d, over the block
            P = dense(op.project_range, op.in_shape)  # V V^T: 1/f^2 within a block
            ref = P @ d[b].reshape(-1)
        else:
            V = own_basis(op)
            ref = torch.einsum("ji,j,ji->i", V, d[b].reshape(-1), V)
        assert torch.allclose(got[b].reshape(-1), ref, rtol=1e-10, atol=1e-12)
    # a constant map is that constant along every direction (V^T V = I)
    ones = op.spectral_diag(torch.full((1, *op.in_shape), 0.3, dtype=torch.float64))
    assert torch.allclose(ones, torch.full_like(ones, 0.3))


# ----------------------------------------------------------------------------- registry and errors

@pytest.mark.parametrize("name", sorted(OPERATORS))
def test_non_dividing_factor_says_what_to_crop_to(name):
    with pytest.raises(ValueError, match=r"scale factor 3 does not divide the image size 64x50; crop to 63x48"):
        make_operator(name, 3, (3, 64, 50))
    with pytest.raises(ValueError, match="positive integer"):
        make_operator(name, 0, (3, 64, 64))


def test_unknown_operator_lists_known_names():
    with pytest.raises(ValueError,
                       match=r"unknown operator 'lanczos'; known operators: avgpool, bicubic, bicubic-reflect"):
        make_operator("lanczos", 4, (3, 64, 64))


def test_make_operator_round_trips_describe():
    op = make_operator("bicubic", 4, (3, 32, 16), cutoff=0.1)
    assert isinstance(op, Bicubic) and op.cutoff == 0.1 and op.out_shape == (3, 8, 4)
    d = op.describe()
    assert d == {"name": "bicubic", "in_shape": [3, 32, 16], "out_shape": [3, 8, 4], "factor": 4, "cutoff": 0.1}
    again = make_operator(d["name"], d["factor"], d["in_shape"], cutoff=d["cutoff"])
    x = torch.randn(1, 3, 32, 16, dtype=torch.float64)
    assert torch.equal(again.A(x), op.A(x))
    assert isinstance(make_operator("avgpool", 2, (1, 4, 4)), AvgPool)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_matches_cpu(dtype):
    """Matrices follow the input to the GPU (cached per device and dtype) and give the CPU's answer."""
    for op in [AvgPool(4, (3, 32, 16)), Bicubic(4, (3, 32, 16)), Bicubic(8, (3, 64, 32), cutoff=0.9),
               BicubicReflect(4, (3, 32, 16)), Matrix(torch.randn(5, 8))]:
        x, y = draws(op, dtype, 0)
        for f, inp in [(op.A, x), (op.At, y), (op.A_pinv, y), (lambda t, op=op: op.spectral(t, lambda s: s**2), x)]:
            got = f(inp.cuda())
            assert got.device.type == "cuda" and got.dtype == dtype
            assert_close(got.cpu(), f(inp), dtype, "cuda vs cpu")


def test_cli_app_and_rank_offer_every_registered_operator():
    """One registry (textsr.operator_registry): the CLI's upscale and rank, and the app, offer its names."""
    import click

    from textsr.cli import main
    from textsr.operator_registry import OPERATORS as REGISTRY

    assert sorted(OPERATORS) == sorted(REGISTRY)
    for command in ("upscale", "rank"):
        opt = next(p for p in main.commands[command].params if p.name == "operator")
        assert isinstance(opt.type, click.Choice) and list(opt.type.choices) == list(REGISTRY)
    pytest.importorskip("gradio")
    from textsr.app import build_app

    cfg = build_app(model_choices=["builtin-shapes"]).get_config_file()
    drop = next(c for c in cfg["components"] if c["props"].get("elem_id") == "operator")
    assert [v for _, v in drop["props"]["choices"]][1:] == list(REGISTRY)
    fields = {c["props"].get("elem_id") for c in cfg["components"]}
    assert {f"operator-{n}-{p.name}" for n, e in REGISTRY.items() for p in e.params} <= fields


@pytest.mark.parametrize("f,h,w", [(3, 27, 36), (4, 64, 48), (8, 64, 64)])
def test_bicubic_and_avgpool_make_the_lr_images_of_pil(f, h, w):
    """What the operator table of docs/how-it-works.md says: PIL's bicubic resize makes Bicubic's LR image and
    Image.reduce AvgPool's (float images, so no 8-bit rounding: to float32 precision)."""
    import numpy as np
    from PIL import Image

    x = np.random.default_rng(f).random((h, w)).astype(np.float32)
    img = Image.fromarray(x, mode="F")
    t = torch.from_numpy(x)[None, None].double()
    pil_bicubic = np.asarray(img.resize((w // f, h // f), Image.BICUBIC))
    assert np.abs(pil_bicubic - Bicubic(f, (1, h, w)).A(t)[0, 0].numpy()).max() < 1e-6
    assert np.abs(np.asarray(img.reduce(f)) - AvgPool(f, (1, h, w)).A(t)[0, 0].numpy()).max() < 1e-6


# ----------------------------------------------------------------------------- gaussian blur + downsample

@pytest.mark.parametrize("f,width", [(2, 0.5), (4, 0.25), (3, 0.8), (8, 1.5)])
def test_gaussian_matrix_is_the_pixel_integrated_kernel(f, width):
    """Each weight is the Gaussian's mass over one HR pixel (std width * f, centred on the LR pixel),
    computed here by a fine midpoint rule; rows sum to 1 (border rows renormalised over the image)."""
    n = 6 * f
    M = gaussian_matrix(n, f, width)
    s = width * f
    t = (torch.arange(n * 400, dtype=torch.float64) + 0.5) / 400  # 400 points per HR pixel
    for i in range(n // f):
        c = f * (i + 0.5)
        dens = torch.exp(-0.5 * ((t - c) / s) ** 2) / (s * math.sqrt(2 * math.pi))
        mass = dens.reshape(n, 400).mean(1)
        assert torch.allclose(M[i], mass / mass.sum(), atol=1e-5)
    assert torch.allclose(M.sum(1), torch.ones(n // f, dtype=torch.float64))


@pytest.mark.parametrize("f", [2, 3, 4])
def test_a_narrow_gaussian_samples_the_lr_pixel_centre(f):
    """width -> 0: the LR pixel's value is the HR value at its centre (a pixel boundary for even f)."""
    x = torch.randn(1, 1, 4 * f, 4 * f, dtype=torch.float64)
    y = GaussianBlur(f, (1, 4 * f, 4 * f), width=1e-4).A(x)
    if f % 2:
        ref = x[..., f // 2::f, f // 2::f]
    else:
        rows = (x[..., f // 2 - 1::f, :] + x[..., f // 2::f, :]) / 2
        ref = (rows[..., f // 2 - 1::f] + rows[..., f // 2::f]) / 2
    assert torch.allclose(y, ref, atol=1e-12)


def test_gaussian_keeps_constants_and_is_exact_below_its_truncation_width():
    op = make_operator("gaussian", 4, (3, 32, 48), width=0.85)
    assert op.describe()["width"] == 0.85 and op.out_shape == (3, 8, 12)
    assert torch.allclose(op.A(torch.full((1, 3, 32, 48), 0.3, dtype=torch.float64)), torch.tensor(0.3,
                          dtype=torch.float64))
    y = torch.randn(2, 3, 8, 12, dtype=torch.float64)
    assert torch.allclose(op.A(op.A_pinv(y)), y, atol=1e-9)  # A A+ = I: nothing truncated
    wide = make_operator("gaussian", 4, (3, 32, 48), width=1.5)
    assert (wide.A(wide.A_pinv(y)) - y).abs().max() > 0.1  # the finest LR detail is dropped
    with pytest.raises(ValueError, match="width"):
        make_operator("gaussian", 4, (3, 32, 48), width=0)


def test_operator_registry_checks_parameters():
    from textsr.errors import UsageError
    from textsr.operator_registry import check_operator

    assert check_operator("gaussian") == ("gaussian", {"width": 0.5})
    assert check_operator("gaussian", {"width": 2}) == ("gaussian", {"width": 2.0})
    assert check_operator("avgpool") == ("avgpool", {})
    for bad, msg in [({"width": 0}, "width must be a number above 0"), ({"width": "1"}, "width must be a number"),
                     ({"width": float("nan")}, "width must be"), ({"sigma": 1}, "has no option")]:
        with pytest.raises(UsageError, match=msg):
            check_operator("gaussian", bad)
    with pytest.raises(UsageError, match="operator 'avgpool' has no option"):
        check_operator("avgpool", {"width": 1})
