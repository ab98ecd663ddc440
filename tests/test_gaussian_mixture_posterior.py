"""Exact posteriors: weights/components against brute force, Matheron sampling, noiseless consistency,
structured (Woodbury) vs dense forms, and image size."""

import math

import pytest
import torch

from textsr.gaussian_mixture import DiagCov, FullCov, GaussianMixture, IsoCov, LowRankIsoCov, MixtureBatch, posterior
from textsr.operators import AvgPool, Matrix

F64 = torch.float64
SHAPE = (1, 4, 4)
D = 16



def _prior(kind, K=4, seed=0, tags=None):
    g = torch.Generator().manual_seed(seed)
    s2 = torch.rand(K, generator=g, dtype=F64) * 0.3 + 0.05
    if kind == "full":
        A = torch.randn(K, D, D, generator=g, dtype=F64)
        cov = FullCov(A @ A.transpose(1, 2) / D + 0.05 * torch.eye(D, dtype=F64))
    elif kind == "diag":
        cov = DiagCov(torch.rand(K, D, generator=g, dtype=F64) + 0.05)
    elif kind == "iso":
        cov = IsoCov(s2, D)
    else:
        cov = LowRankIsoCov(torch.randn(K, D, 3, generator=g, dtype=F64) * 0.7, s2)
    mu = torch.randn(K, D, generator=g, dtype=F64)
    return GaussianMixture(torch.rand(K, generator=g, dtype=F64) + 0.2, mu, cov, tags=tags, event_shape=SHAPE)


def _operator(name):
    if name == "avgpool":
        return AvgPool(2, SHAPE)
    return Matrix(torch.randn(3, D, dtype=F64, generator=torch.Generator().manual_seed(7)), in_shape=SHAPE)


def _brute_force(prior, op, y, sigma_y):
    """Per-row (log-weights (K,), means (K, d), covariances (K, d, d)) by Gaussian conditioning."""
    Ad = op.A(torch.eye(D, dtype=F64).reshape(D, *SHAPE)).reshape(D, -1).T  # (m, d)
    m = Ad.shape[0]
    out = []
    for yb in y.reshape(y.shape[0], -1):
        lw, ms, Ss = [], [], []
        for w, mu, S in zip(prior.weights, prior.mu, prior.cov.dense()):
            G = Ad @ S @ Ad.T + sigma_y**2 * torch.eye(m, dtype=F64)
            lw.append(torch.log(w) + torch.distributions.MultivariateNormal(Ad @ mu, G).log_prob(yb))
            K_gain = torch.linalg.solve(G, Ad @ S).T
            ms.append(mu + K_gain @ (yb - Ad @ mu))
            Ss.append(S - K_gain @ Ad @ S)
        lw = torch.stack(lw)
        out.append((lw - torch.logsumexp(lw, 0), torch.stack(ms), torch.stack(Ss)))
    return out


@pytest.mark.parametrize("kind", ["full", "diag", "iso", "lowrank"])
@pytest.mark.parametrize("opname", ["avgpool", "matrix"])
@pytest.mark.parametrize("sigma_y", [0.3, 0.0])
def test_posterior_matches_brute_force(kind, opname, sigma_y):
    prior, op = _prior(kind), _operator(opname)
    y = torch.randn(2, *op.out_shape, dtype=F64, generator=torch.Generator().manual_seed(3))
    post = posterior(prior, op, y, sigma_y)
    for b, (lw, ms, Ss) in enumerate(_brute_force(prior, op, y, sigma_y)):
        torch.testing.assert_close(post.log_weights[b], lw, atol=1e-9, rtol=1e-9)
        dm = post.dense_mixture(b)
        torch.testing.assert_close(dm.mu, ms, atol=1e-9, rtol=1e-9)
        torch.testing.assert_close(dm.cov.dense(), Ss, atol=1e-9, rtol=1e-9)
        mb = post.mixture()  # structured for low-rank priors with A A^T = c I
        torch.testing.assert_close(mb.item(b).mu, ms, atol=1e-9, rtol=1e-9)
        torch.testing.assert_close(mb.cov.dense(), Ss, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("kind", ["iso", "lowrank"])
@pytest.mark.parametrize("sigma_y", [0.2, 0.0])
def test_structured_posterior_score_equals_dense(kind, sigma_y):
    prior, op = _prior(kind, seed=1), _operator("avgpool")
    y = torch.randn(3, *op.out_shape, dtype=F64)
    post = posterior(prior, op, y, sigma_y)
    st, dn = post.mixture(), post._dense()
    assert st.cov.r == prior.cov.r and type(st.cov).__name__ == "ProjectedCov"
    x = torch.randn(3, *SHAPE, dtype=F64, requires_grad=True)
    for abar in (0.999, 0.5, 0.01):
        torch.testing.assert_close(st.log_prob(x, abar), dn.log_prob(x, abar), atol=1e-8, rtol=1e-9)
        torch.testing.assert_close(st.score(x, abar), dn.score(x, abar), atol=1e-8, rtol=1e-9)
        (g,) = torch.autograd.grad(st.log_prob(x, abar).sum(), x)
        torch.testing.assert_close(st.score(x, abar), g, atol=1e-8, rtol=1e-9)
    torch.testing.assert_close(st.mean(), dn.mean(), atol=1e-10, rtol=0)


@pytest.mark.parametrize("kind,opname", [("lowrank", "avgpool"), ("full", "matrix"), ("lowrank", "matrix")])
def test_matheron_samples_have_posterior_moments(kind, opname):
    prior, op = _prior(kind, K=3, seed=2), _operator(opname)
    y = op.A(prior.sample(1, torch.Generator().manual_seed(1))) + 0.1
    post = posterior(prior, op, y, 0.25)
    n = 40_000
    x, k = post.sample(n, torch.Generator().manual_seed(0), return_components=True)
    xf = x.reshape(n, D)
    dm = post.dense_mixture()
    w = dm.weights
    mean = dm.mean()
    cov = sum(wi * (S + torch.outer(m, m)) for wi, S, m in zip(w, dm.cov.dense(), dm.mu)) - torch.outer(mean, mean)
    sd = torch.sqrt(torch.diagonal(cov) / n)
    assert ((xf.mean(0) - mean).abs() <= 5 * sd + 1e-12).all()
    assert (torch.cov(xf.T) - cov).abs().max() <= 0.06 * torch.diagonal(cov).max()
    freq = torch.bincount(k, minlength=3).double() / n
    assert (freq - w).abs().max() < 5 * math.sqrt(0.25 / n)
    # within a component: mean and covariance of that Gaussian
    i = int(w.argmax())
    xi = xf[k == i]
    se = torch.sqrt(torch.diagonal(dm.cov.dense()[i]) / xi.shape[0])
    assert ((xi.mean(0) - dm.mu[i]).abs() <= 5 * se + 1e-9).all()


@pytest.mark.parametrize("kind,opname", [("lowrank", "avgpool"), ("iso", "matrix"), ("full", "avgpool")])
def test_noiseless_posterior_samples_satisfy_Ax_eq_y(kind, opname):
    prior, op = _prior(kind, seed=4), _operator(opname)
    y = torch.randn(2, *op.out_shape, dtype=F64)
    post = posterior(prior, op, y, 0.0)
    x = post.sample(None, torch.Generator().manual_seed(0))  # one per row of y
    assert x.shape == (2, *SHAPE)
    torch.testing.assert_close(op.A(x), y, atol=1e-10, rtol=0)
    xs = posterior(prior, op, y[:1], 0.0).sample(50, torch.Generator().manual_seed(1))
    torch.testing.assert_close(op.A(xs), y[:1].expand(50, *op.out_shape), atol=1e-10, rtol=0)
    xm = post.mixture().sample(None, torch.Generator().manual_seed(2))  # dense: eigh root of a singular S
    torch.testing.assert_close(op.A(xm), y, atol=1e-7, rtol=0)


def test_posterior_with_tags_is_posterior_of_sub_prior():
    tags = [{"a"}, {"b"}, {"a"}, {"b"}]
    prior, op = _prior("lowrank", tags=tags), _operator("avgpool")
    y = torch.randn(1, *op.out_shape, dtype=F64)
    p1 = posterior(prior, op, y, 0.1, tags="a")
    p2 = posterior(prior.select("a"), op, y, 0.1)
    torch.testing.assert_close(p1.log_weights, p2.log_weights)
    assert p1.mixture().tags == (frozenset({"a"}), frozenset({"a"}))
    with pytest.raises(ValueError, match="no component"):
        posterior(prior, op, y, 0.1, tags="c")
    with pytest.raises(ValueError, match="sigma_y"):
        posterior(prior, op, y, -1.0)
    with pytest.raises(ValueError, match="one draw each"):
        posterior(prior, op, torch.randn(2, *op.out_shape, dtype=F64), 0.1).sample(5)


def test_image_size_posterior_is_cheap_and_exact_in_range():
    """d = 12288, K = 64, avgpool x4 (m = 768): Woodbury everywhere, nothing m x m per component."""
    shape, K, r = (3, 64, 64), 64, 6
    d = math.prod(shape)
    g = torch.Generator().manual_seed(0)
    prior = GaussianMixture(torch.ones(K), torch.rand(K, d, generator=g) * 2 - 1,
                            LowRankIsoCov(torch.randn(K, d, r, generator=g) * 0.05, 0.01), event_shape=shape)
    op = AvgPool(4, shape)
    y = op.A(prior.sample(2, g))
    post = posterior(prior, op, y, 0.0)
    x = post.sample(None, g)
    assert (op.A(x) - y).abs().max() < 1e-4
    mb = post.mixture()
    assert isinstance(mb, MixtureBatch) and mb.batch == 2
    eps = mb.eps(torch.randn(2, *shape, generator=g), 0.5)
    assert eps.shape == (2, *shape) and torch.isfinite(eps).all()
    # the generating component dominates the weights
    assert float(post.weights.max(-1).values.min()) > 0.99
