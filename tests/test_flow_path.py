"""The rectified-flow path on the one VP loop (``textsr.flow``), checked exactly on Gaussian mixtures:
the map's identities, the exact velocity against an independent closed form, the flow ODE's Euler step as
DDIM, every solver on the flow path equal to the same solver on the time-mapped VP chain (float64, same
noise), the pure-noise level s = 1, and the exact-velocity posterior sampler at the noise floor."""

from __future__ import annotations

import math

import pytest
import torch

from textsr.flow import FlowDenoiser, FlowSchedule, abar_of, flow_scale, flow_time, scheduler_levels
from textsr.gaussian_mixture import FullCov, GaussianMixture, MixtureDenoiser, mcgdiff_problem, posterior
from textsr.gaussian_mixture.flow import MixtureVelocity
from textsr.metrics import sliced_wasserstein
from textsr.schedule import NoiseSchedule
from textsr.solvers import Noise, Problem, make_config, sample, solver_names

F64 = torch.float64


def shifted_levels(n: int, shift: float = 3.0, top: float = 1.0) -> list[float]:
    """SD3's grid: ``u = linspace(top, 1/1000, n)`` shifted by ``shift``."""
    u = torch.linspace(top, 1e-3, n, dtype=F64)
    return (shift * u / (1 + (shift - 1) * u)).tolist()


def gaussian(d: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    L = torch.randn(d, d, generator=g, dtype=F64) * 0.7
    return torch.randn(d, generator=g, dtype=F64) * 2, L @ L.T + 0.2 * torch.eye(d, dtype=F64)


def test_the_map_between_the_flow_path_and_the_vp_form():
    # (1 - abar loses digits as s -> 0: relative 1e-16 / s^2; the pipelines' grids stop at s >= 1e-3)
    for s in (0.0, 1e-3, 0.1, 0.5, 0.93, 1.0 - 1e-9, 1.0):
        c, a = flow_scale(s), abar_of(s)
        assert c * math.sqrt(a) == pytest.approx(1 - s, abs=1e-15)
        assert c * math.sqrt(1 - a) == pytest.approx(s, rel=1e-9, abs=1e-15)
        assert flow_time(a) == pytest.approx(s, rel=1e-9, abs=1e-15)


def test_flow_schedule_is_the_grid_and_drops_pure_noise_only_for_solvers_that_need_it():
    levels = shifted_levels(6)
    fs = FlowSchedule.from_levels(levels)
    assert fs.zero_terminal_snr and fs.abar(fs.T - 1) == 0.0 and fs.abar(-1) == 1.0
    assert [fs.sigma(t) for t in fs.timesteps(6)] == levels and fs.sigma(-1) == 0.0
    assert fs.for_solver(make_config("ddnm")) is fs
    for cfg in (make_config("tds"), make_config("pigdm")):
        assert fs.for_solver(cfg).levels == levels[1:]
    assert fs.for_solver(make_config("pigdm", weighting="nvlabs")) is fs
    with pytest.raises(ValueError, match="strictly decreasing"):
        FlowSchedule.from_levels([0.5, 0.7])
    with pytest.raises(ValueError, match="only the last"):
        NoiseSchedule((0.9, 0.0, 0.5))


def test_scheduler_levels_are_the_pipelines_grid():
    from diffusers import FlowMatchEulerDiscreteScheduler

    sd3 = FlowMatchEulerDiscreteScheduler(shift=3.0)
    got = scheduler_levels(sd3, 28)
    sd3.set_timesteps(28)
    assert got == pytest.approx(sd3.sigmas[:-1].tolist(), abs=0) and got[0] == 1.0
    flux = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    sig = [1.0 - k / 4 for k in range(4)]
    a, b = scheduler_levels(flux, 4, mu=0.5, sigmas=sig), scheduler_levels(flux, 4, mu=1.15, sigmas=sig)
    assert a[0] == b[0] == 1.0 and all(y > x for x, y in zip(a[1:], b[1:]))  # larger images: more shift


@pytest.mark.parametrize("s", [0.05, 0.4, 0.8, 0.999])
def test_mixture_velocity_equals_the_closed_form_of_a_gaussian_on_the_flow_path(s):
    """Independent oracle: x_s ~ N((1-s) mu, C), C = (1-s)^2 Sigma + s^2 I; E[x0|x] = mu + (1-s) Sigma C^-1 r,
    E[eps|x] = s C^-1 r, r = x - (1-s) mu."""
    mu, Sig = gaussian()
    vel = MixtureVelocity(GaussianMixture(torch.ones(1, dtype=F64), mu[None], FullCov(Sig[None])))
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(1), dtype=F64) * 2
    C = (1 - s) ** 2 * Sig + s**2 * torch.eye(3, dtype=F64)
    r = torch.linalg.solve(C, (x - (1 - s) * mu).T).T
    expect = s * r - (mu + (1 - s) * r @ Sig)
    torch.testing.assert_close(vel(x, s), expect, rtol=0, atol=1e-11)


def test_velocity_at_pure_noise_is_x_minus_the_mean_and_the_limit_of_the_vp_formula():
    p = mcgdiff_problem(3, d=8, dy=2)
    vel = MixtureVelocity(p.prior)
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(0), dtype=F64)
    torch.testing.assert_close(vel(x, 1.0), x - p.prior.mean(), rtol=0, atol=1e-12)
    torch.testing.assert_close(vel(x, 1.0 - 1e-7), vel(x, 1.0), rtol=0, atol=1e-4)


def test_euler_step_of_the_flow_ode_is_ddim_eta_0_on_the_map():
    """The flow ODE's Euler steps ``x_{s'} = x_s + (s' - s) v`` from pure noise equal the loop's DDIM (eta = 0)
    steps on the flow denoiser, mapped back by ``c(s')`` (both are ``(1 - s') x0_hat + s' eps_hat``)."""
    p = mcgdiff_problem(1, d=8, dy=1)
    vel = MixtureVelocity(p.prior)
    levels = shifted_levels(12)
    fs = FlowSchedule.from_levels(levels)
    cfg = make_config("plain", steps=12, eta=0.0, step_kind="ddim")
    out = sample(FlowDenoiser(vel, fs), Problem(p.operator, p.y, p.sigma_y), cfg,
                 Noise.from_seeds([0, 1, 2], dtype=F64))
    z = Noise.from_seeds([0, 1, 2], dtype=F64).randn((8,))  # the loop's first draw: x at s = 1 is eps
    for s, s_next in zip(levels, levels[1:] + [0.0]):
        z = z + (s_next - s) * vel(z, s)
    torch.testing.assert_close(out.x, z, rtol=0, atol=1e-10)


def _options(name: str) -> dict:
    return {"dps": {"zeta": 0.3}, "tds": {"particles": 4}, "flowdps": {"step_size": 0.5}}.get(name, {})


@pytest.mark.parametrize("name", solver_names())
@pytest.mark.parametrize("dy,sigma_y", [(2, None), (4, 0.0)])
def test_every_solver_on_the_flow_path_equals_it_on_the_time_mapped_vp_chain(name, dy, sigma_y):
    """Same solver, same noise, float64: the flow denoiser on the flow grid against the exact VP mixture
    denoiser on the VP schedule with the same abar levels (the grid stops short of s = 1, where the VP
    formulas divide by sqrt(abar) = 0; see the pure-noise test)."""
    p = mcgdiff_problem(7, d=8, dy=dy)
    sy = p.sigma_y if sigma_y is None else sigma_y
    y = p.y if sigma_y is None else p.operator.A(p.prior.sample(1, torch.Generator().manual_seed(3)))
    problem = Problem(p.operator, y, sy)
    fs = FlowSchedule.from_levels(shifted_levels(10, top=0.97))
    vp = NoiseSchedule(fs.alphas_cumprod)
    cfg = make_config(name, steps=10, **_options(name))
    seeds = [0, 1, 2]
    flow = sample(FlowDenoiser(MixtureVelocity(p.prior), fs), problem, cfg, Noise.from_seeds(seeds, dtype=F64))
    ref = sample(MixtureDenoiser(p.prior, vp), problem, cfg, Noise.from_seeds(seeds, dtype=F64))
    assert torch.isfinite(ref.x).all() and ref.x.abs().max() > 1.0
    err = (flow.x - ref.x).abs().max().item()
    print(f"flow vs VP, {name} dy={dy}: max |diff| {err:.2e}")
    assert err <= 1e-6
    if ref.log_evidence is not None:
        torch.testing.assert_close(flow.log_evidence, ref.log_evidence, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", solver_names())
def test_every_solver_runs_from_pure_noise_on_a_flow_grid(name):
    """A grid that starts at s = 1 (the pipelines' grids): solvers that step from pure noise do (x_t = eps,
    ``eps_hat = x_t``, the DDPM posterior's exact limit); the others start at the next level."""
    p = mcgdiff_problem(2, d=8, dy=2)
    fs = FlowSchedule.from_levels(shifted_levels(8))
    cfg = make_config(name, steps=8, **_options(name))
    sch = fs.for_solver(cfg)
    assert sch.zero_terminal_snr == cfg.starts_at_zero_snr()
    out = sample(FlowDenoiser(MixtureVelocity(p.prior), sch), Problem(p.operator, p.y, p.sigma_y), cfg,
                 Noise.from_seeds([0, 1], dtype=F64))
    assert torch.isfinite(out.x).all() and out.timesteps[0] == sch.T - 1
    ddpm = make_config("ddnm", steps=8, step_kind="ddpm")
    assert torch.isfinite(sample(FlowDenoiser(MixtureVelocity(p.prior), fs), Problem(p.operator, p.y, p.sigma_y),
                                 ddpm, Noise.from_seeds([0], dtype=F64)).x).all()


def test_the_exact_posterior_velocity_reaches_the_noise_floor():
    """The flow sampler (Euler = DDIM eta 0, the pipelines' sampler; and DDIM eta 1) on the exact posterior's
    velocity, 50 steps of SD3's grid: SW to exact posterior draws near the floor of two exact draws (Table 1's
    flow rows measure it on every problem: bench/README.md)."""
    n, steps = 1000, 50
    p = mcgdiff_problem(4, d=8, dy=2)
    post = posterior(p.prior, p.operator, p.y, p.sigma_y)
    g = torch.Generator().manual_seed(10)
    ref, ref2 = post.sample(n, g), post.sample(n, g)
    sw = lambda a, b: sliced_wasserstein(a, b, 100, torch.Generator().manual_seed(0))  # noqa: E731
    floor, prior = sw(ref, ref2), sw(p.prior.sample(n, g), ref)
    fs = FlowSchedule.from_levels(shifted_levels(steps))
    den = FlowDenoiser(MixtureVelocity(post.mixture()), fs)
    problem = Problem(p.operator, p.y, p.sigma_y)
    got = {}
    for eta in (0.0, 1.0):
        cfg = make_config("plain", steps=steps, eta=eta, step_kind="ddim")
        got[eta] = sw(sample(den, problem, cfg, Noise.batched(5, n, dtype=F64)).x, ref)
    print(f"exact posterior velocity: SW ODE {got[0.0]:.3f}, eta=1 {got[1.0]:.3f}; floor {floor:.3f}, "
          f"prior {prior:.2f}")
    assert max(got.values()) < 2.5 * floor and prior > 20 * floor
