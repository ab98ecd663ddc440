"""The stationary Gaussian world is exact (dense formulas on small images), and the tiling check's
figures see seams: hard window borders on a fixed grid break the correlation across them, the smooth
fusion and the shifted grid keep the spread and correlations of the whole-image exact sampler."""

from __future__ import annotations

import math

import pytest
import torch

from textsr.operators import AvgPool, Bicubic
from textsr.schedule import NoiseSchedule
from textsr.stationary_gaussian import ExactPosterior, Problem2D, StationaryGaussian, compare, run_sampler, seam_pairs
from textsr.stationary_gaussian.check import seam_mask


def dense_cov(prior: StationaryGaussian, C: int, H: int, W: int) -> torch.Tensor:
    grid = torch.meshgrid(torch.arange(C), torch.arange(H), torch.arange(W), indexing="ij")
    idx = torch.stack(grid, -1).reshape(-1, 3)
    n = len(idx)
    p, q = idx.repeat_interleave(n, 0), idx.repeat(n, 1)
    return prior.covariance(p, q).reshape(n, n)


COLOUR = torch.tensor([[1.0, 0.6, 0.3], [0.6, 1.0, 0.5], [0.3, 0.5, 1.0]], dtype=torch.float64)


@pytest.mark.parametrize("prior,shape", [
    (StationaryGaussian(length=2.0, amplitude=0.7, mean=0.2), (1, 6, 5)),
    (StationaryGaussian(channels=3, colour=COLOUR, kernel="exp", length=1.5, mean=(0.1, -0.2, 0.3)), (3, 4, 4)),
])
def test_denoiser_and_sampler_match_the_dense_covariance(prior, shape):
    C, H, W = shape
    S = dense_cov(prior, C, H, W)
    assert torch.allclose(S, S.T) and torch.linalg.eigvalsh(S).min() > 0
    # C^1 through the Kronecker eigenbasis equals the dense matrix
    x = torch.randn(3, C, H, W, dtype=torch.float64)
    torch.testing.assert_close(prior.cov_apply(x).reshape(3, -1), x.reshape(3, -1) @ S, rtol=1e-10, atol=1e-12)
    sched = NoiseSchedule.linear()
    den = prior.denoiser(sched)
    mu = prior.mu(x).expand(1, C, H, W).reshape(-1)
    for t in (0, 250, 999):
        a = sched.abar(t)
        gain = math.sqrt(a) * S @ torch.linalg.inv(a * S + (1 - a) * torch.eye(len(S), dtype=torch.float64))
        want = mu + (x.reshape(3, -1) - math.sqrt(a) * mu) @ gain.T
        torch.testing.assert_close(den(x, t).x0.reshape(3, -1), want, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("op", [AvgPool(2, (1, 8, 6)), Bicubic(2, (1, 8, 6))], ids=["avgpool", "bicubic"])
@pytest.mark.parametrize("sigma_y", [0.0, 0.1])
def test_exact_posterior_matches_dense_formulas_and_its_draws(op, sigma_y):
    prior = StationaryGaussian(length=1.8, amplitude=0.6, mean=0.1)
    pb = Problem2D.draw(prior, op, sigma_y, seed=3)
    post = ExactPosterior(prior, op, pb.y, sigma_y)
    S = dense_cov(prior, 1, 8, 6)
    A = op.A(torch.eye(48, dtype=torch.float64).reshape(48, 1, 8, 6)).reshape(48, -1).T  # (m, n)
    K = A @ S @ A.T + sigma_y**2 * torch.eye(A.shape[0], dtype=torch.float64)
    mean = 0.1 + S @ A.T @ torch.linalg.solve(K, pb.y.reshape(-1) - A @ torch.full((48,), 0.1, dtype=torch.float64))
    cov = S - S @ A.T @ torch.linalg.solve(K, A @ S)
    torch.testing.assert_close(post.mean.reshape(-1), mean, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(post.variance.reshape(-1), cov.diagonal(), rtol=1e-8, atol=1e-10)
    p = torch.tensor([[0, 0, 0], [0, 3, 2], [0, 7, 5]])
    q = torch.tensor([[0, 1, 0], [0, 3, 4], [0, 2, 1]])
    flat = lambda i: i[:, 1] * 6 + i[:, 2]  # noqa: E731
    torch.testing.assert_close(post.covariance(p, q), cov[flat(p), flat(q)], rtol=1e-8, atol=1e-10)
    xs = post.sample(20000, torch.Generator().manual_seed(0)).reshape(20000, -1)
    assert (xs.mean(0) - mean).abs().max() < 4 * cov.diagonal().max().sqrt() / math.sqrt(20000) + 1e-9
    assert (torch.cov(xs.T) - cov).abs().max() < 6 * cov.diagonal().max() / math.sqrt(20000) + 1e-9
    if sigma_y == 0:  # noiseless: every draw reproduces y
        torch.testing.assert_close(op.A(xs.reshape(-1, 1, 8, 6)), pb.y.expand(20000, -1, -1, -1), rtol=0, atol=1e-9)


def test_seam_geometry():
    mask = seam_mask((20, 20), 8, 2)  # windows at 0, 6, 12 (even stride 6): bands [6, 8) and [12, 14)
    assert mask[6:8].all() and mask[12:14].all() and not mask[0:6, 0:6].any() and not mask[8:12, 8:12].any()
    border, interior = seam_pairs((20, 20), 8, 2)
    assert len(border) and len(interior)
    assert not mask[border[:, :, 1], border[:, :, 2]].any() and not mask[interior[:, :, 1], interior[:, :, 2]].any()
    hard = seam_mask((16, 16), 8, 0)  # no overlap: the two pixels on either side of the border
    assert hard[7:9].all() and not hard[0:7, 0:7].any()


def test_tiled_exact_sampler_keeps_the_whole_image_spread_and_hard_seams_do_not():
    """24 x 24 at x4: windows of 8 px, the whole-image exact denoiser as the reference (same seeds)."""
    prior = StationaryGaussian(length=2.0, amplitude=0.5)
    pb = Problem2D.draw(prior, AvgPool(4, (1, 24, 24)), 0.0, seed=0)
    post = ExactPosterior(prior, pb.operator, pb.y, 0.0)
    n, steps = 192, 20
    full = run_sampler(pb, n, window=None, steps=steps)
    smooth = compare(run_sampler(pb, n, window=8, overlap=2, shift=True, steps=steps), post, 8, 2, reference=full)
    assert 0.9 <= smooth["std_border_interior"] <= 1.1 and 0.9 <= smooth["std_border_interior_vs_reference"] <= 1.1
    assert smooth["sw"] < 3 * smooth["sw_floor"] and smooth["corr_err_border"] < 0.1
    hard = compare(run_sampler(pb, n, window=8, overlap=0, shift=False, steps=steps), post, 8, 0, reference=full)
    # the windows never see both sides of a fixed border: the correlation across it is lost
    assert hard["corr_samples"] < 0.05 < 0.15 < hard["corr_exact"]
    assert hard["sw"] > 1.3 * smooth["sw"]
    # shifting the grid every step brings it back, even without overlap
    moved = compare(run_sampler(pb, n, window=8, overlap=0, shift=True, steps=steps), post, 8, 0, reference=full)
    assert moved["corr_samples"] > 0.08 and abs(moved["std_border_interior_vs_reference"] - 1) < 0.1
