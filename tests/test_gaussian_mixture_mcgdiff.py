"""The MCGdiff Gaussian-mixture benchmark generator and the exact-posterior-score sampler on it."""

import pytest
import torch

from textsr.gaussian_mixture import MixtureDenoiser, mcgdiff_problem, posterior
from textsr.gaussian_mixture.mcgdiff import mcgdiff_means
from textsr.metrics import sliced_wasserstein
from textsr.operators import Matrix
from textsr.schedule import NoiseSchedule
from textsr.solvers import Noise, Problem, make_config, sample


def test_generator_protocol_and_determinism():
    p = mcgdiff_problem(3, d=8, dy=2)
    assert p.prior.K == 25 and p.prior.d == 8 and isinstance(p.operator, Matrix)
    assert p.y.shape == (1, 2) and p.operator.out_shape == (2,)
    torch.testing.assert_close(p.prior.cov.dense(), torch.eye(8, dtype=torch.float64).expand(25, 8, 8))
    s = p.operator.singular_values()
    assert ((s > 0) & (s < 1)).all()
    assert 0 <= p.sigma_y <= float(s.max())
    q = mcgdiff_problem(3, d=8, dy=2)
    torch.testing.assert_close(p.y, q.y)
    torch.testing.assert_close(p.prior.weights, q.prior.weights)
    assert p.sigma_y == q.sigma_y
    assert not torch.equal(mcgdiff_problem(4, d=8, dy=2).y, p.y)
    m = mcgdiff_means(8)
    assert m.shape == (25, 8) and m[0].tolist() == [16.0, 16.0] * 4 and m[8].tolist() == [8.0, -8.0] * 4
    prior, op, y, sigma_y = mcgdiff_problem(0)  # unpacks as (prior, operator, y, sigma_y)
    assert op.in_shape == (8,)
    with pytest.raises(ValueError, match="even"):
        mcgdiff_problem(0, d=7)


def test_exact_posterior_score_sampler_lands_on_the_posterior():
    """Plain DDPM ancestral steps (eta = 1, 100 steps) with the exact posterior score: SW to exact
    posterior draws is near the noise floor (two exact draws) and far below the prior's."""
    n = 1000
    prob = mcgdiff_problem(1, d=8, dy=2)
    post = posterior(prob.prior, prob.operator, prob.y, prob.sigma_y)
    g = torch.Generator().manual_seed(0)
    ref, ref2 = post.sample(n, g), post.sample(n, g)
    den = MixtureDenoiser(post.dense_mixture(), NoiseSchedule.linear(1000))
    x = sample(den, Problem(prob.operator, prob.y, prob.sigma_y), make_config("plain", steps=100),
               Noise.from_seeds(range(n), dtype=torch.float64)).x
    sw = lambda a, b: sliced_wasserstein(a, b, 100, torch.Generator().manual_seed(1))  # noqa: E731
    floor, exact, prior = sw(ref, ref2), sw(x, ref), sw(prob.prior.sample(n, g), ref)
    assert exact < 2.0 * floor + 0.1, (floor, exact)
    assert prior > 10 * exact, (prior, exact)
