import math

import pytest
import torch

from textsr.schedule import NoiseSchedule, travel_schedule
from textsr.solvers import Noise, make_config
from textsr.solvers.step import diffusion_step


def test_linear_schedule_matches_ddpm():
    s = NoiseSchedule.linear()
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    assert s.T == 1000
    assert math.isclose(s.abar(999), float(torch.cumprod(1 - betas, 0)[-1]), rel_tol=1e-12)
    assert s.abar(-1) == 1.0


def test_cosine_schedule_monotone_and_bounded():
    s = NoiseSchedule.cosine()
    a = [s.abar(t) for t in range(s.T)]
    assert all(x >= y for x, y in zip(a, a[1:]))
    assert 0 < a[-1] < 1e-3 and a[0] > 0.999


@pytest.mark.parametrize("spacing", ["uniform", "linspace", "trailing", "leading"])
@pytest.mark.parametrize("steps", [1, 7, 20, 100, 1000])
def test_timesteps_distinct_decreasing(spacing, steps):
    ts = NoiseSchedule.linear().timesteps(steps, spacing)
    assert len(ts) == steps and ts == sorted(set(ts), reverse=True)
    assert 0 <= ts[-1] and ts[0] <= 999


def test_uniform_is_ddim_reference():
    assert NoiseSchedule.linear().timesteps(100)[:3] == [990, 980, 970]
    assert NoiseSchedule.linear().timesteps(100)[-1] == 0


def test_timesteps_errors():
    s = NoiseSchedule.linear(T=10)
    with pytest.raises(ValueError, match="positive integer"):
        s.timesteps(0)
    with pytest.raises(ValueError, match="at most"):
        s.timesteps(20)
    with pytest.raises(ValueError, match="unknown spacing"):
        s.timesteps(5, "weird")


def test_schedule_validation():
    with pytest.raises(ValueError):
        NoiseSchedule.from_alphas_cumprod([0.5, 0.9])
    with pytest.raises(ValueError):
        NoiseSchedule.from_betas([0.1, 1.5])


def test_travel_schedule_off_is_plain():
    assert travel_schedule([30, 20, 10, 0]) == [(30, 20), (20, 10), (10, 0), (0, -1)]


def test_travel_schedule_repeats_each_block():
    ts = list(range(90, -1, -10))  # 10 steps
    plan = travel_schedule(ts, length=2, repeat=3)
    jumps = [(a, b) for a, b in plan if b > a]
    # jumps happen at indices 2, 4, 6, 8, twice each
    assert len(jumps) == 4 * 2
    assert all(b - a == 20 for a, b in jumps)
    denoise = [(a, b) for a, b in plan if b < a]
    assert len(denoise) == 10 + 8 * 2
    assert plan[-1] == (0, -1)


def test_step_kinds_agree_at_eta0():
    x0, eps = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    noise = Noise.from_seeds([0, 1, 2], dtype=torch.float64)
    a = diffusion_step(x0, None, eps, None, 0.3, 0.7, make_config("ddnm", eta=0.0), noise)
    b = diffusion_step(x0, None, eps, None, 0.3, 0.7, make_config("ddnm", eta=0.0, step_kind="ddim"), noise)
    torch.testing.assert_close(a, b)


def test_ddim_eta1_is_ddpm_posterior_variance():
    # Var of the injected noise equals the DDPM posterior variance beta_tilde
    x0 = torch.zeros(1, 200000, dtype=torch.float64)
    ab_t, ab_s = 0.3, 0.5
    out = diffusion_step(x0, None, torch.zeros_like(x0), None, ab_t, ab_s, make_config("plain"),
                         Noise.from_seeds([0], dtype=torch.float64))
    beta_tilde = (1 - ab_s) / (1 - ab_t) * (1 - ab_t / ab_s)
    assert abs(out.var().item() - beta_tilde) < 0.01 * beta_tilde + 1e-3


def test_ddpm_posterior_matches_gaussian_conditioning():
    """q(x_s | x_t, x0) from the joint Gaussian of (x_s, x_t) given x0, strided pairs, 1-D."""
    from textsr.schedule import ddpm_posterior

    sch = NoiseSchedule.cosine(1000)
    for t, s in [(999, 899), (596, 592), (10, 0), (250, 249)]:
        at, as_ = sch.abar(t), sch.abar(s)
        q = ddpm_posterior(at, as_)
        # x_s = sqrt(as) x0 + sqrt(1-as) e1; x_t = sqrt(at/as) x_s + sqrt(1 - at/as) e2
        var_s, cov, var_t = 1 - as_, math.sqrt(at / as_) * (1 - as_), 1 - at
        gain = cov / var_t
        # E[x_s | x_t, x0] = sqrt(as) x0 + gain (x_t - sqrt(at) x0)
        assert q.ct == pytest.approx(gain, rel=1e-12)
        assert q.c0 == pytest.approx(math.sqrt(as_) - gain * math.sqrt(at), rel=1e-10)
        assert q.beta_tilde == pytest.approx(var_s - gain * cov, rel=1e-10)
        assert q.variance(torch.tensor(1.0, dtype=torch.float64)).item() == pytest.approx(q.beta, rel=1e-12)
        assert q.variance(0.0) == pytest.approx(q.beta_tilde, rel=1e-12)
    last = ddpm_posterior(sch.abar(0), 1.0)
    assert (last.c0, last.ct, last.beta_tilde) == (1.0, 0.0, 0.0)
    assert last.variance(torch.tensor(0.3)).item() == 0.0
