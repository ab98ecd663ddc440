"""The exact check of tiled sampling (docs/tiling.md, "The exact check"): sample the posterior of a
``StationaryGaussian`` with the whole-image exact denoiser and with the same denoiser run on windows (a
model that only saw crops), and compare both with exact posterior draws.

* ``sw``: sliced Wasserstein distance to exact draws (``sw_floor``: two sets of exact draws);
* ``std_ratio_border`` / ``std_ratio_interior``: the per-pixel std of the samples divided by the exact
  posterior std, averaged over the overlap bands of the (unshifted) window grid and over the rest;
  ``std_border_interior`` is their quotient (1 = no seam in the spread; goal 0.9-1.1);
* ``corr_exact``, ``corr_err_border``, ``corr_err_interior``: pixel pairs ``d`` apart that lie
  on either side of an overlap band (never in one window's exclusive part together), and pairs as far
  apart inside one window's exclusive part: the exact posterior correlation of the border pairs and the
  mean absolute error of the samples' correlations on each kind of pair.  (``d = band width + 1`` apart.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..denoiser import Denoiser
from ..metrics import sliced_wasserstein
from ..operators import LinearOperator
from ..solvers import Noise, Problem, make_config, sample
from ..tiling import TiledDenoiser, axis_starts
from .posterior import ExactPosterior
from .prior import StationaryGaussian


def _bands(length: int, window: int, overlap: int) -> list[tuple[int, int]]:
    """The overlap bands ``[start of window j+1, end of window j)`` of the even grid along one axis (bands
    that touch are merged); without overlap, the two pixels on either side of each window border."""
    starts = axis_starts(length, window, overlap)
    bands: list[tuple[int, int]] = []
    for lo, hi in ((b, a + window) if a + window > b else (b - 1, b + 1) for a, b in zip(starts, starts[1:])):
        if bands and lo <= bands[-1][1]:
            bands[-1] = (bands[-1][0], max(hi, bands[-1][1]))
        else:
            bands.append((lo, hi))
    return bands


def seam_mask(size: tuple[int, int], window: int, overlap: int) -> torch.Tensor:
    """True on the pixels of the even grid's overlap bands (rows or columns), ``(H, W)``."""
    mask = torch.zeros(size, dtype=torch.bool)
    for axis in (0, 1):
        for lo, hi in _bands(size[axis], window, overlap):
            if axis == 0:
                mask[lo:hi, :] = True
            else:
                mask[:, lo:hi] = True
    return mask


def seam_pairs(size: tuple[int, int], window: int, overlap: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel pairs (channel 0) along rows and along columns: ``border`` pairs just outside an overlap band
    ``[lo, hi)`` on both sides (``hi - lo + 1`` apart), and ``interior`` pairs as far apart whose whole
    segment avoids every band; pairs as ``(n, 2, 3)`` index tensors.  Endpoints on a band of the other
    axis are left out."""
    mask = seam_mask(size, window, overlap)
    border, interior = set(), set()
    for axis in (0, 1):
        L, other = size[axis], size[1 - axis]
        at = (lambda i, o: (i, o)) if axis == 0 else (lambda i, o: (o, i))
        for lo, hi in _bands(L, window, overlap):
            d = hi - lo + 1
            for o in range(other):
                a, b = at(lo - 1, o), at(hi, o)
                if lo >= 1 and hi < L and not (mask[a] or mask[b]):
                    border.add(((0, *a), (0, *b)))
                for i in range(L - d):
                    if not any(bool(mask[at(j, o)]) for j in range(i, i + d + 1)):
                        interior.add(((0, *at(i, o)), (0, *at(i + d, o))))
    as_t = lambda v: torch.tensor(sorted(v), dtype=torch.long).reshape(-1, 2, 3)  # noqa: E731
    return as_t(border), as_t(interior)


def sample_correlation(x: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    """Per pair, the correlation of two pixels over the samples ``x`` ``(n, C, H, W)``."""
    p, q = pairs[:, 0], pairs[:, 1]
    a = x[:, p[:, 0], p[:, 1], p[:, 2]]
    b = x[:, q[:, 0], q[:, 1], q[:, 2]]
    a, b = a - a.mean(0), b - b.mean(0)
    return (a * b).mean(0) / (a.pow(2).mean(0) * b.pow(2).mean(0)).sqrt()


@dataclass(frozen=True)
class Problem2D:
    """A tiling check problem: prior, operator (output size = its ``in_shape``), ``y``, ``sigma_y``."""

    prior: StationaryGaussian
    operator: LinearOperator
    y: torch.Tensor
    sigma_y: float

    @classmethod
    def draw(cls, prior: StationaryGaussian, operator: LinearOperator, sigma_y: float, seed: int) -> Problem2D:
        """``y = A x + sigma_y n`` for a prior draw ``x`` (from ``seed``)."""
        g = torch.Generator().manual_seed(seed)
        x = prior.sample(1, (operator.in_shape[1], operator.in_shape[2]), g)
        y = operator.A(x) + sigma_y * torch.randn((1, *operator.out_shape), generator=g, dtype=torch.float64)
        return cls(prior, operator, y, sigma_y)


def run_sampler(problem: Problem2D, n: int, *, window: int | None, overlap: int = 0, shift: bool = False,
                steps: int = 100, solver: str = "ddnm+", seed: int = 0, batch: int = 64,
                solver_options: dict | None = None) -> torch.Tensor:
    """``n`` samples ``(n, C, H, W)`` of the posterior with the exact denoiser on the whole image
    (``window=None``) or on windows of ``window`` px (``overlap``, ``shift`` as ``TiledDenoiser``)."""
    den: Denoiser = problem.prior.denoiser()
    if window is not None:
        den = TiledDenoiser(den, (window, window), (overlap, overlap), shift=shift, seed=seed, batch=batch)
    cfg = make_config(solver, steps=steps, **(solver_options or {}))
    out = []
    for b0 in range(0, n, 256):
        noise = Noise.from_seeds(range(seed * 100_003 + b0, seed * 100_003 + min(n, b0 + 256)), dtype=torch.float64)
        out.append(sample(den, Problem(problem.operator, problem.y, problem.sigma_y), cfg, noise).x)
    return torch.cat(out)


def compare(samples: torch.Tensor, posterior: ExactPosterior, window: int, overlap: int, *, seed: int = 0,
            directions: int = 200, reference: torch.Tensor | None = None) -> dict:
    """The figures of the module docstring for ``samples`` against ``posterior`` (the seams of a grid of
    ``window`` px windows overlapping by ``overlap``).  With ``reference`` (samples of the whole-image
    denoiser, same seeds): ``sw_to_reference`` and ``std_border_interior_vs_reference``, the std quotient
    with the reference's spread in place of the exact one (what the windows alone change)."""
    n = samples.shape[0]
    g = torch.Generator().manual_seed(seed + 1)
    exact_a, exact_b = posterior.sample(n, g), posterior.sample(n, g)
    sw = lambda a, b: sliced_wasserstein(a, b, directions, torch.Generator().manual_seed(seed + 2))  # noqa: E731
    mask = seam_mask(posterior.size, window, overlap)
    quotient = lambda r: float(r[mask].mean() / r[~mask].mean())  # noqa: E731
    ratio = (samples.std(0) / posterior.std).mean(0)  # (H, W): channel-averaged spread relative to exact
    out = {"sw": sw(samples, exact_a), "sw_floor": sw(exact_b, exact_a),
           "std_ratio_border": float(ratio[mask].mean()), "std_ratio_interior": float(ratio[~mask].mean()),
           "std_border_interior": quotient(ratio)}
    if reference is not None:
        out["sw_to_reference"] = sw(samples, reference)
        out["std_border_interior_vs_reference"] = quotient((samples.std(0) / reference.std(0)).mean(0))
    border, interior = seam_pairs(posterior.size, window, overlap)
    for name, pairs in (("border", border), ("interior", interior)):
        if len(pairs) == 0:
            out[f"corr_err_{name}"] = float("nan")
            continue
        exact = posterior.correlation(pairs[:, 0], pairs[:, 1])
        got = sample_correlation(samples, pairs)
        out[f"corr_err_{name}"] = float((got - exact).abs().mean())
        if name == "border":
            out["corr_exact"], out["corr_samples"] = float(exact.mean()), float(got.mean())
    return out
