"""Exact scores of Gaussian mixtures: autograd of log p_t, a full-covariance reference, finite
differences, select(), sampling, and the Denoiser protocol."""

import math

import pytest
import torch

from textsr.denoiser import Denoiser
from textsr.gaussian_mixture import (
    DiagCov,
    FullCov,
    GaussianMixture,
    IsoCov,
    LowRankIsoCov,
    MixtureDenoiser,
    NullProjector,
    ProjectedCov,
)
from textsr.operators import AvgPool
from textsr.schedule import NoiseSchedule

F64 = torch.float64
SHAPE = (1, 4, 4)
D = 16



def _cov(kind, K, g):
    U = torch.randn(K, D, 3, generator=g, dtype=F64) * 0.7
    s2 = torch.rand(K, generator=g, dtype=F64) * 0.4 + 0.05
    if kind == "full":
        A = torch.randn(K, D, D, generator=g, dtype=F64)
        return FullCov(A @ A.transpose(1, 2) / D + 0.05 * torch.eye(D, dtype=F64))
    if kind == "diag":
        return DiagCov(torch.rand(K, D, generator=g, dtype=F64) + 0.05)
    if kind == "iso":
        return IsoCov(s2, D)
    if kind == "lowrank":
        return LowRankIsoCov(U, s2)
    if kind == "projected":
        return ProjectedCov(U, s2, NullProjector(AvgPool(2, SHAPE)),
                            range_var=torch.rand(K, generator=g, dtype=F64) + 0.1)
    raise KeyError(kind)


def _mixture(kind, K=5, seed=0, tags=None):
    g = torch.Generator().manual_seed(seed)
    cov = _cov(kind, K, g)
    mu = torch.randn(K, D, generator=g, dtype=F64) * 1.5
    w = torch.rand(K, generator=g, dtype=F64) + 0.1
    return GaussianMixture(w, mu, cov, tags=tags, event_shape=SHAPE)


KINDS = ["full", "diag", "iso", "lowrank", "projected"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("abar", [1.0, 0.6, 0.05])
def test_score_is_grad_log_p_t(kind, abar):
    mix = _mixture(kind)
    x = torch.randn(6, *SHAPE, dtype=F64, generator=torch.Generator().manual_seed(1)) * 2
    x.requires_grad_(True)
    (g,) = torch.autograd.grad(mix.log_prob(x, abar).sum(), x)
    torch.testing.assert_close(mix.score(x, abar), g, atol=1e-9, rtol=1e-9)
    # eps and x0_hat are the score's VP forms
    if abar < 1:
        torch.testing.assert_close(mix.eps(x, abar), -math.sqrt(1 - abar) * g, atol=1e-9, rtol=1e-9)
        torch.testing.assert_close(mix.x0_hat(x, abar), (x + (1 - abar) * g) / math.sqrt(abar), atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("kind", ["diag", "iso", "lowrank", "projected"])
def test_matches_full_covariance_reference(kind):
    mix = _mixture(kind)
    ref = GaussianMixture(mix.weights, mix.mu, FullCov(mix.cov.dense()), event_shape=SHAPE)
    x = torch.randn(4, D, dtype=F64)
    for abar in (1.0, 0.3):
        torch.testing.assert_close(mix.log_prob(x, abar), ref.log_prob(x, abar), atol=1e-9, rtol=1e-9)
        torch.testing.assert_close(mix.score(x, abar), ref.score(x, abar), atol=1e-9, rtol=1e-9)
        torch.testing.assert_close(mix.responsibilities(x, abar), ref.responsibilities(x, abar), atol=1e-9, rtol=1e-9)


def test_log_prob_is_diffused_mixture():
    """``log_prob(x, abar)`` is the log-density of the diffused mixture (means sqrt(abar) mu)."""
    mix = _mixture("lowrank")
    x = torch.randn(3, D, dtype=F64)
    torch.testing.assert_close(mix.log_prob(x, 0.4), mix.diffused(0.4).log_prob(x), atol=1e-10, rtol=0)
    # against torch.distributions
    dist = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(probs=mix.weights),
        torch.distributions.MultivariateNormal(mix.mu, covariance_matrix=mix.cov.dense()))
    torch.testing.assert_close(mix.log_prob(x), dist.log_prob(x), atol=1e-10, rtol=0)


@pytest.mark.parametrize("d", [1, 2])
def test_low_dimensional_eps_against_finite_differences(d):
    mix = GaussianMixture(torch.tensor([0.3, 0.7], dtype=F64), torch.tensor([[-2.0] * d, [1.5] * d], dtype=F64),
                          DiagCov(torch.tensor([[0.5] * d, [0.2] * d], dtype=F64)))
    abar, h = 0.7, 1e-6
    x = torch.linspace(-3, 3, 13, dtype=F64)[:, None].repeat(1, d) + 0.1 * torch.arange(d, dtype=F64)
    fd = torch.stack([(mix.log_prob(x + h * e, abar) - mix.log_prob(x - h * e, abar)) / (2 * h)
                      for e in torch.eye(d, dtype=F64)], -1)
    torch.testing.assert_close(mix.eps(x, abar), -math.sqrt(1 - abar) * fd, atol=1e-7, rtol=1e-6)


def test_numerically_stable_far_from_modes():
    mix = _mixture("iso")
    x = torch.full((2, D), 1e3, dtype=F64)
    s = mix.score(x, 0.5)
    assert torch.isfinite(s).all() and torch.isfinite(mix.log_prob(x, 0.5)).all()
    r = mix.responsibilities(x, 0.5)
    torch.testing.assert_close(r.sum(-1), torch.ones(2, dtype=F64))


def test_float32_and_batch_independence():
    mix = _mixture("lowrank").to(dtype=torch.float32)
    x = torch.randn(5, *SHAPE)
    full = mix.score(x, 0.3)
    one = torch.cat([mix.score(x[k:k + 1], 0.3) for k in range(5)])
    assert full.dtype == torch.float32
    torch.testing.assert_close(full, one, atol=1e-5, rtol=1e-5)
    ref = _mixture("lowrank").score(x.double(), 0.3)
    torch.testing.assert_close(full.double(), ref, atol=1e-4, rtol=1e-4)


def test_select_and_errors():
    tags = [{"red", "circle"}, {"red", "square"}, {"blue", "circle"}, {"blue", "square"}, {"red", "circle"}]
    mix = _mixture("lowrank", tags=tags)
    sub = mix.select("red")
    assert sub.K == 3
    assert sub.tags == (frozenset({"red", "circle"}), frozenset({"red", "square"}), frozenset({"red", "circle"}))
    torch.testing.assert_close(sub.weights.sum(), torch.tensor(1.0, dtype=F64))
    torch.testing.assert_close(sub.weights, mix.weights[[0, 1, 4]] / mix.weights[[0, 1, 4]].sum())
    assert mix.select(["red", "circle"]).K == 2
    assert mix.select(set()).K == 5
    with pytest.raises(ValueError, match="no component carries all of the tags.*known tags"):
        mix.select({"green"})
    with pytest.raises(ValueError, match="no component"):
        mix.select(["blue", "red"])
    with pytest.raises(TypeError, match="strings"):
        mix.select([1])


def test_constructor_errors():
    cov = IsoCov(torch.ones(2, dtype=F64), 4)
    with pytest.raises(ValueError, match="weights"):
        GaussianMixture(torch.tensor([-1.0, 2.0]), torch.zeros(2, 4), cov)
    with pytest.raises(ValueError, match="means"):
        GaussianMixture(torch.ones(2), torch.zeros(3, 4), cov)
    with pytest.raises(ValueError, match="event_shape"):
        GaussianMixture(torch.ones(2), torch.zeros(2, 4), cov, event_shape=(3, 3))
    with pytest.raises(ValueError, match="one tag set per component"):
        GaussianMixture(torch.ones(2), torch.zeros(2, 4), cov, tags=[{"a"}])
    mix = GaussianMixture(torch.ones(2), torch.zeros(2, 4), cov)
    with pytest.raises(ValueError, match="expected a batch"):
        mix.score(torch.zeros(1, 5), 0.5)


def test_sample_moments_and_components():
    mix = _mixture("lowrank", K=3, seed=2)
    n = 30_000
    x, k = mix.sample(n, torch.Generator().manual_seed(0), return_components=True)
    assert x.shape == (n, *SHAPE)
    freq = torch.bincount(k, minlength=3).double() / n
    assert (freq - mix.weights).abs().max() < 4 * math.sqrt(0.25 / n)
    xf = x.reshape(n, D)
    mean = mix.mean()
    second = sum(w * (S + torch.outer(m, m)) for w, S, m in zip(mix.weights, mix.cov.dense(), mix.mu))
    cov = second - torch.outer(mean, mean)
    assert (xf.mean(0) - mean).abs().max() < 5 * torch.sqrt(torch.diagonal(cov) / n).max()
    assert (torch.cov(xf.T) - cov).abs().max() < 0.08 * cov.abs().max()
    # reproducible
    def gen() -> torch.Generator:
        return torch.Generator().manual_seed(5)

    torch.testing.assert_close(mix.sample(4, gen()), mix.sample(4, gen()))


def test_mixture_denoiser_protocol_and_cond():
    tags = [{"red"}, {"red"}, {"blue"}, {"blue"}, {"green"}]
    mix = _mixture("lowrank", tags=tags)
    sch = NoiseSchedule.linear(1000)
    den = MixtureDenoiser(mix, sch)
    assert isinstance(den, Denoiser)
    x = torch.randn(3, *SHAPE, dtype=torch.float32)
    t = 400
    ab = sch.abar(t)
    p = den(x, t)
    assert p.x0.shape == x.shape and p.x0.dtype == torch.float32
    torch.testing.assert_close(p.eps, mix.eps(x, ab))
    torch.testing.assert_close(p.x0, (x - math.sqrt(1 - ab) * p.eps) / math.sqrt(ab), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(den(x, t, "red").eps, mix.select("red").eps(x, ab))
    torch.testing.assert_close(den(x, t, ["blue"]).eps, mix.select("blue").eps(x, ab))
    assert den.resolve("red") is den.resolve(frozenset({"red"}))  # cached
    per_item = [mix.select("red"), mix.select("blue"), mix]
    pe = den(x, t, per_item).eps
    for k, m in enumerate(per_item):
        torch.testing.assert_close(pe[k:k + 1], m.eps(x[k:k + 1], ab))
    with pytest.raises(TypeError, match="cond must be"):
        den(x, t, 3.0)
    with pytest.raises(ValueError, match="no component"):
        den(x, t, "purple")
    # differentiable w.r.t. x_t (DPS takes gradients through x0_hat)
    xr = x.double().requires_grad_(True)
    (gx,) = torch.autograd.grad(den(xr, t, "red").x0.pow(2).sum(), xr)
    assert torch.isfinite(gx).all() and gx.abs().sum() > 0
