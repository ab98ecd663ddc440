"""The exact cascade: push-forward (stage-I prior) and the stage-II conditional p(x | M x = x_lo)."""

import math

import pytest
import torch

from textsr.cascade import Stage, run_cascade
from textsr.gaussian_mixture import (
    FullCov,
    GaussianMixture,
    IsoCov,
    LowRankIsoCov,
    MixtureBatch,
    MixtureDenoiser,
    lowres_condition,
    lowres_conditional,
    push_forward,
)
from textsr.operators import AvgPool, Matrix
from textsr.schedule import NoiseSchedule
from textsr.solvers import make_config

F64 = torch.float64
SHAPE = (1, 4, 4)
D = 16



def _prior(K=3, seed=0, kind="lowrank", tags=None):
    g = torch.Generator().manual_seed(seed)
    s2 = torch.rand(K, generator=g, dtype=F64) * 0.2 + 0.05
    if kind == "lowrank":
        cov = LowRankIsoCov(torch.randn(K, D, 2, generator=g, dtype=F64) * 0.6, s2)
    elif kind == "iso":
        cov = IsoCov(s2, D)
    else:
        A = torch.randn(K, D, D, generator=g, dtype=F64)
        cov = FullCov(A @ A.transpose(1, 2) / D + 0.05 * torch.eye(D, dtype=F64))
    return GaussianMixture(torch.rand(K, generator=g, dtype=F64) + 0.3, torch.randn(K, D, generator=g, dtype=F64),
                           cov, tags=tags, event_shape=SHAPE)


def _moments(mix_weights, means, covs):
    mean = mix_weights @ means
    second = sum(w * (S + torch.outer(m, m)) for w, S, m in zip(mix_weights, covs, means))
    return mean, second - torch.outer(mean, mean)


@pytest.mark.parametrize("kind", ["lowrank", "iso", "full"])
@pytest.mark.parametrize("opname", ["avgpool", "matrix"])
def test_push_forward_parameters(kind, opname):
    prior = _prior(kind=kind, tags=[{"a"}, {"b"}, {"a"}])
    op = AvgPool(2, SHAPE) if opname == "avgpool" else Matrix(torch.randn(5, D, dtype=F64), in_shape=SHAPE)
    lo = push_forward(prior, op)
    Ad = op.A(torch.eye(D, dtype=F64).reshape(D, *SHAPE)).reshape(D, -1).T
    assert lo.event_shape == tuple(op.out_shape) and lo.tags == prior.tags
    torch.testing.assert_close(lo.mu, prior.mu @ Ad.T)
    torch.testing.assert_close(lo.cov.dense(), Ad @ prior.cov.dense() @ Ad.T, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(lo.weights, prior.weights)
    if kind != "full" and opname == "avgpool":  # low rank + iso stays low rank + iso (M M^T = I/4)
        assert type(lo.cov) is type(prior.cov) and lo.cov.r == prior.cov.r
    assert lo.K == prior.K


def test_push_forward_samples_are_M_x():
    prior, op = _prior(K=2, seed=5), AvgPool(2, SHAPE)
    lo = push_forward(prior, op)
    x = prior.sample(20_000, torch.Generator().manual_seed(0))
    z = op.A(x).reshape(20_000, -1)
    mean, cov = _moments(lo.weights, lo.mu, lo.cov.dense())
    assert (z.mean(0) - mean).abs().max() < 5 * torch.sqrt(torch.diagonal(cov) / 20_000).max()
    assert (torch.cov(z.T) - cov).abs().max() < 0.05 * torch.diagonal(cov).max()


@pytest.mark.parametrize("sigma_aug", [0.0, 0.3])
def test_stage_two_conditional_recomposes_the_prior(sigma_aug):
    """x_lo ~ push-forward, x ~ p(x | x_lo) (one conditional per x_lo) reproduces the prior's moments."""
    prior, op = _prior(K=3, seed=1), AvgPool(2, SHAPE)
    lo = push_forward(prior, op)
    n = 20_000
    g = torch.Generator().manual_seed(0)
    x_lo = lo.sample(n, g)
    if sigma_aug > 0:
        x_lo = x_lo + sigma_aug * torch.randn(x_lo.shape, generator=g, dtype=F64)
    cond = lowres_conditional(prior, op, x_lo, sigma_aug)
    assert isinstance(cond, MixtureBatch) and cond.batch == n
    x = cond.sample(None, g).reshape(n, D)
    mean, cov = _moments(prior.weights, prior.mu, prior.cov.dense())
    assert (x.mean(0) - mean).abs().max() < 5 * torch.sqrt(torch.diagonal(cov) / n).max()
    assert (torch.cov(x.T) - cov).abs().max() < 0.05 * torch.diagonal(cov).max()
    if sigma_aug == 0:  # the range part is fixed at M+ x_lo
        torch.testing.assert_close(op.A(x.reshape(n, *SHAPE)), x_lo, atol=1e-10, rtol=0)


def test_stage_two_weights_are_likelihood_of_x_lo():
    prior, op = _prior(K=3, seed=2), AvgPool(2, SHAPE)
    lo = push_forward(prior, op)
    x_lo = lo.sample(4, torch.Generator().manual_seed(3))
    cond = lowres_conditional(prior, op, x_lo)
    torch.testing.assert_close(cond.weights, lo.responsibilities(x_lo), atol=1e-10, rtol=1e-9)


def test_stage_two_conditional_denoiser_per_batch_item():
    prior, op = _prior(K=3, seed=3, tags=[{"a"}, {"a"}, {"b"}]), AvgPool(2, SHAPE)
    x_lo = push_forward(prior, op).sample(3, torch.Generator().manual_seed(0))
    cond = lowres_conditional(prior, op, x_lo, tags="a")
    den = MixtureDenoiser(prior, NoiseSchedule.linear(1000))
    x = torch.randn(3, *SHAPE, dtype=F64)
    batch = den(x, 300, cond).eps
    for b in range(3):
        torch.testing.assert_close(batch[b:b + 1], den(x[b:b + 1], 300, cond.item(b)).eps, atol=1e-10, rtol=1e-9)
    with pytest.raises(ValueError, match="batch"):
        den(torch.randn(2, *SHAPE, dtype=F64), 300, cond)


def test_exact_cascade_through_run_cascade():
    """Stage I samples the push-forward, stage II the exact conditional: final samples downsample to
    stage I's output exactly, and their distribution is the prior's."""
    prior, M = _prior(K=2, seed=4, kind="lowrank"), AvgPool(2, SHAPE)
    sch = NoiseSchedule.linear(1000)
    stages = [
        Stage("I", MixtureDenoiser(push_forward(prior, M), sch), divisor=2, channels=1),
        Stage("II", MixtureDenoiser(prior, sch), divisor=1, channels=1, condition=lowres_condition(prior, M)),
    ]
    n = 600
    y = torch.zeros(1, 1, 2, 2, dtype=F64)  # the plain solver ignores y
    res = run_cascade(stages, y, 2, make_config("plain", steps=50), list(range(n)), dtype=F64)
    x_lo, x = res.stage_outputs
    torch.testing.assert_close(M.A(x), x_lo, atol=1e-8, rtol=0)
    mean, cov = _moments(prior.weights, prior.mu, prior.cov.dense())
    xf = x.reshape(n, D)
    assert (xf.mean(0) - mean).abs().max() < 6 * torch.sqrt(torch.diagonal(cov) / n).max()
    assert abs(float(torch.diagonal(torch.cov(xf.T)).sum() / torch.diagonal(cov).sum()) - 1) < 0.15


def test_image_size_stage_two_is_cheap():
    """d = 12288, K = 200, r = 6, 8 conditionals: builds and evaluates without B x K x d tensors."""
    shape, K, r = (3, 64, 64), 200, 6
    d = math.prod(shape)
    g = torch.Generator().manual_seed(0)
    prior = GaussianMixture(torch.ones(K), torch.rand(K, d, generator=g) * 2 - 1,
                            LowRankIsoCov(torch.randn(K, d, r, generator=g) * 0.05, 0.01), event_shape=shape)
    M = AvgPool(4, shape)
    lo = push_forward(prior, M)
    assert isinstance(lo.cov, LowRankIsoCov) and lo.event_shape == (3, 16, 16)
    x_lo = lo.sample(8, g)
    cond = lowres_conditional(prior, M, x_lo)
    den = MixtureDenoiser(prior, NoiseSchedule.linear(1000))
    p = den(torch.randn(8, *shape, generator=g), 10, cond)
    assert torch.isfinite(p.x0).all()
    assert (M.A(p.x0) - x_lo).abs().max() < 1e-3  # the range part of x0_hat is fixed at M+ x_lo
