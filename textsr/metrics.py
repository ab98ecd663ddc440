"""Sample-quality metrics: LR consistency, fidelity to a reference, diversity, and exact-posterior fidelity.

Conventions: images are in model space [-1, 1] unless a function says otherwise; PSNR/SSIM are computed on
the [0, 1] scale (``(x + 1) / 2``) with data range 1, as the paper reports them.  Every per-sample metric
returns a ``(B,)`` tensor; distribution metrics return Python floats.

* ``lr_psnr``: PSNR between ``A x_hat`` and ``y`` (LR consistency; the paper reports > 45 dB).
* ``psnr``, ``ssim``: against a reference image (SSIM needs torchmetrics, imported lazily).
* ``mean_pairwise_distance``, ``pixel_std_map``: diversity of the samples of one prompt;
  ``sample_diversity``/``pairwise_rms``: the same on [0, 1] numpy samples, as results.json reports it.
* ``sliced_wasserstein``: mean over random unit directions of the 1-D W1 distance between two
  equal-size sample sets (Cardoso et al.'s MCGdiff protocol), deterministic given a generator.
* ``mode_weight_tv``, ``nearest_component``: which mode the samples chose vs the exact posterior weights.
* ``mean_ci``: mean and 95 % interval over problems (normal or bootstrap).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch

from .operators import LinearOperator


def _per_sample_mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if a.shape[1:] != b.shape[1:]:
        raise ValueError(f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    return ((a - b) ** 2).flatten(1).mean(1)


def _psnr_from_mse(mse: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    return 10.0 * torch.log10(data_range**2 / mse)  # mse = 0 gives +inf


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1]."""
    return (x + 1.0) / 2.0


def psnr(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Per-sample PSNR (dB) of ``x`` against ``ref`` (batch 1 or B), both in [-1, 1], on the [0, 1] scale."""
    ref = ref.expand_as(x) if ref.shape[0] == 1 else ref
    return _psnr_from_mse(_per_sample_mse(to_unit(x).double(), to_unit(ref).double()))


def lr_psnr(x_hat: torch.Tensor, y: torch.Tensor, operator: LinearOperator) -> torch.Tensor:
    """LR consistency: per-sample PSNR between ``A x_hat`` and ``y`` (both [-1, 1]; PSNR on [0, 1]).

    Compare with the exact posterior's own LR-PSNR: a value far above it at sigma_y > 0 means the sampler
    copies the measurement noise (docs/pitfalls.md, "LR-PSNR above the exact posterior's")."""
    return psnr(operator.A(x_hat), y.to(x_hat))


def ssim(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Per-sample SSIM (Wang et al. 2004: Gaussian window 11, sigma 1.5, K1 0.01, K2 0.03) of images
    ``(B, C, H, W)`` in [-1, 1] against ``ref`` (batch 1 or B), on the [0, 1] scale, averaged over the
    whole image with reflection padding: torchmetrics' convention (equal to it, tested), pure torch."""
    ref = ref.expand_as(x) if ref.shape[0] == 1 else ref
    a, b = to_unit(x).double(), to_unit(ref).double()
    c = a.shape[1]
    g = torch.exp(-((torch.arange(11, dtype=a.dtype, device=a.device) - 5) ** 2) / (2 * 1.5**2))
    g = g / g.sum()
    win = (g[:, None] * g[None, :]).expand(c, 1, 11, 11)
    pad = lambda t: torch.nn.functional.pad(t, (5, 5, 5, 5), mode="reflect")  # noqa: E731
    a, b = pad(a), pad(b)
    conv = lambda t: torch.nn.functional.conv2d(t, win, groups=c)  # noqa: E731
    ma, mb = conv(a), conv(b)
    saa = (conv(a * a) - ma**2).clamp(min=0)
    sbb = (conv(b * b) - mb**2).clamp(min=0)
    sab = conv(a * b) - ma * mb
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * ma * mb + c1) * (2 * sab + c2)) / ((ma**2 + mb**2 + c1) * (saa + sbb + c2))
    return s.flatten(1).mean(1)


# -- diversity ---------------------------------------------------------------------------------------
def mean_pairwise_distance(x: torch.Tensor) -> float:
    """Mean L2 distance over all pairs ``i < j`` of the samples ``(B, ...)`` (flattened)."""
    if x.shape[0] < 2:
        raise ValueError("need at least two samples for a pairwise distance")
    f = x.flatten(1).double()
    dist = torch.cdist(f, f)
    i, j = torch.triu_indices(f.shape[0], f.shape[0], offset=1)
    return float(dist[i, j].mean())


def pairwise_rms(samples: np.ndarray, block: int = 8) -> float:
    """Mean over pairs ``i < j`` of the RMS distance ``sqrt(mean((x_i - x_j)^2))`` of samples ``(K, ...)``
    (0 for one sample), in float64. Memory O(block x pixels): pairs are taken a block at a time
    instead of as a K x K x pixels array."""
    k = samples.shape[0]
    if k < 2:
        return 0.0
    flat = samples.reshape(k, -1)
    n = flat.shape[1]
    total = 0.0
    for i in range(k - 1):
        x_i = flat[i].astype(np.float64)
        for j0 in range(i + 1, k, block):
            d = np.subtract(flat[j0:j0 + block], x_i, dtype=np.float64)  # (b, n): x_j - x_i
            total += float(np.sqrt(np.einsum("bn,bn->b", d, d) / n).sum())
    return total / (k * (k - 1) / 2)


def sample_diversity(samples01: np.ndarray) -> tuple[dict, np.ndarray]:
    """Diversity of one prompt's samples ``(K, H, W, C)`` in [0, 1]: ``pairwise_l2`` (``pairwise_rms``),
    ``mean_std`` (mean of the per-pixel std map), and that map ``(H, W)`` (std across samples, mean
    over channels; population std)."""
    std = samples01.std(axis=0).mean(axis=-1)
    return {"pairwise_l2": pairwise_rms(samples01), "mean_std": float(std.mean())}, std.astype(np.float32)


def pixel_std_map(x: torch.Tensor) -> torch.Tensor:
    """Per-pixel standard deviation over the samples: ``(B, *shape) -> shape`` (unbiased)."""
    if x.shape[0] < 2:
        raise ValueError("need at least two samples for a standard deviation")
    return x.double().std(dim=0).to(x.dtype)


# -- distribution fidelity ---------------------------------------------------------------------------
def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, n_directions: int = 100,
                       generator: torch.Generator | None = None) -> float:
    """Sliced W1 between two sample sets of equal size ``(n, ...)``: mean over ``n_directions`` random
    unit directions (drawn from ``generator``, float64 on CPU) of the 1-D W1 distance of the projections
    (for equal sizes: mean absolute difference of the sorted projections)."""
    a = a.flatten(1).to("cpu", torch.float64)
    b = b.flatten(1).to("cpu", torch.float64)
    if a.shape != b.shape:
        raise ValueError(f"need equal-size sample sets of one dimension, got {tuple(a.shape)} and {tuple(b.shape)}")
    if n_directions < 1:
        raise ValueError("n_directions must be >= 1")
    dirs = torch.randn(n_directions, a.shape[1], generator=generator, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=1, keepdim=True)
    pa = torch.sort(a @ dirs.T, dim=0).values
    pb = torch.sort(b @ dirs.T, dim=0).values
    return float((pa - pb).abs().mean())


def nearest_component(x: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    """Index of the nearest mean (Euclidean) for each sample; ``means`` ``(K, ...)`` like one sample.
    (For the most probable component under the mixture use ``GaussianMixture.assign``.)"""
    return torch.cdist(x.flatten(1).double(), means.flatten(1).to(x.device).double()).argmin(1)


def mode_weight_tv(assignments: torch.Tensor, weights: torch.Tensor) -> float:
    """Total variation ``0.5 sum_i |freq_i - w_i|`` between the components the samples fell in and the
    exact posterior weights ``(K,)``."""
    K = weights.shape[-1]
    freq = torch.bincount(assignments.flatten().cpu(), minlength=K).double()
    if freq.numel() > K:
        raise ValueError(f"assignment index {int(assignments.max())} out of range for {K} weights")
    freq = freq / freq.sum()
    return float(0.5 * (freq - weights.detach().cpu().double()).abs().sum())


# -- intervals ---------------------------------------------------------------------------------------
def mean_ci(values: Sequence[float] | torch.Tensor, level: float = 0.95,
            method: Literal["normal", "bootstrap"] = "normal", n_boot: int = 10_000,
            generator: torch.Generator | None = None) -> tuple[float, float, float]:
    """``(mean, low, high)`` of the mean over problems: normal (Student-t quantile for small n) or
    percentile bootstrap (deterministic given ``generator``)."""
    v = torch.as_tensor(values, dtype=torch.float64).flatten()
    n = v.numel()
    if n == 0:
        raise ValueError("no values")
    mean = float(v.mean())
    if n == 1:
        return mean, float("nan"), float("nan")
    alpha = 1 - level
    if method == "normal":
        from scipy import stats

        half = float(stats.t.ppf(1 - alpha / 2, n - 1)) * float(v.std()) / math.sqrt(n)
        return mean, mean - half, mean + half
    if method == "bootstrap":
        idx = torch.randint(0, n, (n_boot, n), generator=generator)
        boots = v[idx].mean(1)
        lo, hi = torch.quantile(boots, torch.tensor([alpha / 2, 1 - alpha / 2], dtype=torch.float64)).tolist()
        return mean, lo, hi
    raise ValueError(f"method must be 'normal' or 'bootstrap', got {method!r}")
