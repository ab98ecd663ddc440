"""The diffusion step kinds (solvers.step): the DDPM posterior step against closed forms and against
diffusers' learned-range DDPMScheduler, DDNM+ in the shared form, PiGDM's "official" weighting, and the
timestep grids of late starts (``start``, ``skip``)."""

import math

import pytest
import torch

from tests.oracles import GaussianDenoiser, TinyNetDenoiser
from textsr import operators as ops
from textsr.denoiser import Prediction
from textsr.gaussian_mixture import MixtureDenoiser, mcgdiff_problem
from textsr.schedule import NoiseSchedule
from textsr.solvers import Noise, Problem, make_config, sample
from textsr.solvers.ddnm import ddnm_plus_step
from textsr.solvers.sample import solver_timesteps
from textsr.solvers.step import transition

F64 = torch.float64
LINEAR, COSINE = NoiseSchedule.linear(), NoiseSchedule.cosine()
PAIRS = [(999, 989), (596, 592), (500, 250), (40, 0), (10, 0)]


def gaussian_posterior(abar_t, abar_s):
    """q(x_s | x_t, x0) from the joint Gaussian of (x_s, x_t) given x0, written independently of
    textsr.schedule: x_s = sqrt(as) x0 + sqrt(1-as) e1, x_t = sqrt(at/as) x_s + sqrt(1-at/as) e2."""
    cov = math.sqrt(abar_t / abar_s) * (1 - abar_s)
    gain = cov / (1 - abar_t)
    mean_x0, mean_xt = math.sqrt(abar_s) - gain * math.sqrt(abar_t), gain
    return mean_x0, mean_xt, (1 - abar_s) - gain * cov  # E = mean_x0 x0 + mean_xt x_t, Var


class FixedPrediction:
    """A denoiser that returns a given x0 (and learned variance v) whatever x_t is."""

    def __init__(self, schedule, x0, v=None):
        self.schedule, self.x0, self.v = schedule, x0, v

    def __call__(self, x_t, t, cond=None):
        return Prediction.from_x0(x_t, self.x0.expand_as(x_t), self.schedule.abar(t),
                                  v=None if self.v is None else self.v.expand_as(x_t))


@pytest.mark.parametrize("t,s", PAIRS)
def test_ddpm_step_is_the_gaussian_posterior_exact_moments(t, s):
    at, as_ = COSINE.abar(t), COSINE.abar(s)
    mean_x0, mean_xt, var = gaussian_posterior(at, as_)
    x_t = torch.randn(2, 5, dtype=F64)
    tr = transition(x_t, torch.zeros_like(x_t), None, at, as_, make_config("plain", step_kind="ddpm"),
                    Noise.from_seeds([0, 1], dtype=F64))
    assert tr.a == pytest.approx(mean_x0, rel=1e-10)
    torch.testing.assert_close(tr.m, mean_xt * x_t, rtol=1e-10, atol=1e-14)
    assert tr.sigma**2 == pytest.approx(var, rel=1e-10)
    # learned range: v = 1 gives beta = 1 - at/as, v = 0 beta_tilde, v = 1/2 their geometric mean
    beta = 1 - at / as_
    for v, expect in [(1.0, beta), (0.0, var), (0.5, math.sqrt(beta * var))]:
        trv = transition(x_t, x_t, torch.full_like(x_t, v), at, as_, make_config("plain", step_kind="ddpm"),
                         Noise.from_seeds([0, 1], dtype=F64))
        torch.testing.assert_close(trv.sigma**2, torch.full_like(x_t, expect), rtol=1e-10, atol=0)


@pytest.mark.parametrize("t,s", [(596, 592), (500, 250), (40, 0)])
@pytest.mark.parametrize("v", [None, 0.3])
def test_ddpm_step_samples_the_posterior_monte_carlo(t, s, v):
    """The plain solver's step from a fixed x0 and x_t: sample mean and variance of x_s match the
    closed-form posterior (20000 draws: 5 sigma of the estimators)."""
    n = 20000
    x0 = torch.tensor([[0.7, -0.3]], dtype=F64)
    x_t = torch.tensor([[0.2, 1.1]], dtype=F64).expand(n, 2)
    vv = None if v is None else torch.full((1, 2), v, dtype=F64)
    den = FixedPrediction(COSINE, x0, vv)
    noise = Noise.batched(7, n, dtype=F64)
    from textsr.solvers.plain import plain_step

    res = plain_step(den, Problem(ops.Matrix(torch.eye(2, dtype=F64)), torch.zeros(n, 2, dtype=F64)), x_t, t, s,
                     None, make_config("plain", step_kind="ddpm"), noise)
    at, as_ = COSINE.abar(t), COSINE.abar(s)
    mean_x0, mean_xt, var = gaussian_posterior(at, as_)
    if v is not None:
        var = math.exp(v * math.log(1 - at / as_) + (1 - v) * math.log(var))
    mean = mean_x0 * x0[0] + mean_xt * x_t[0]
    emp_mean, emp_var = res.x_next.mean(0), res.x_next.var(0)
    assert ((emp_mean - mean).abs() <= 5 * math.sqrt(var / n)).all(), (emp_mean, mean)
    assert ((emp_var - var).abs() <= 5 * var * math.sqrt(2 / n)).all(), (emp_var, var)


def test_ddpm_final_step_adds_no_noise_and_returns_x0():
    x0 = torch.tensor([[0.25, -0.5]], dtype=F64)
    den = FixedPrediction(COSINE, x0, torch.full((1, 2), 0.9, dtype=F64))
    op = ops.Matrix(torch.eye(2, dtype=F64))
    x = sample(den, Problem(op, torch.zeros(1, 2, dtype=F64)), make_config("plain", steps=5, step_kind="ddpm"),
               Noise.from_seeds([0, 1], dtype=F64)).x
    torch.testing.assert_close(x, x0.expand(2, 2), rtol=0, atol=1e-15)


@pytest.mark.parametrize("solver", ["plain", "dps"])
def test_ddpm_without_learned_variance_is_ddim_at_eta_1(solver):
    """Without a learned variance the DDPM step equals the DDIM step at eta = 1 (the same Gaussian written
    with x_t instead of eps): DPS and the baseline give the same samples with either kind."""
    op = ops.AvgPool(2, (1, 4, 4))
    den = TinyNetDenoiser(LINEAR)
    y = torch.randn(1, 1, 2, 2, dtype=F64, generator=torch.Generator().manual_seed(0)) * 0.3
    run = lambda kind: sample(den, Problem(op, y), make_config(solver, steps=8, step_kind=kind, eta=1.0),  # noqa: E731
                              Noise.from_seeds([3, 4], dtype=F64)).x
    torch.testing.assert_close(run("ddpm"), run("ddim"), rtol=1e-9, atol=1e-10)


def test_ddpm_step_keeps_the_prior_variance_where_eta_085_under_disperses():
    """No measurement (A's range empty of information: y = 0 through AvgPool on N(0, I)): the null-space
    variance with the DDPM step is 1 (the ddnm step at eta = 0.85 gives ~0.72,
    docs/pitfalls.md, "DDNM's eta = 0.85 step under-disperses")."""
    op = ops.AvgPool(4, (1, 8, 8))
    den = GaussianDenoiser(LINEAR, c=1.0)
    y = torch.zeros(1, 1, 2, 2, dtype=F64)
    x = sample(den, Problem(op, y), make_config("ddnm", steps=100, step_kind="ddpm"),
               Noise.from_seeds(range(400), dtype=F64)).x
    var = (op.project_null(x) ** 2).sum() / (400 * (64 - 4))
    assert 0.9 < var.item() < 1.1, var.item()


@pytest.mark.parametrize("solver", ["ddnm", "ddnm+"])
def test_noiseless_ddnm_ddpm_step_on_the_gaussian_mixture_world(solver):
    """The exact Gaussian-mixture world (MCGdiff protocol, exact mixture score): noiseless y, the DDPM
    step: LR-PSNR >= 100 dB for every sample."""
    p = mcgdiff_problem(3, 8, 2)
    x_true = p.prior.sample(1, torch.Generator().manual_seed(0))
    y = p.operator.A(x_true)
    den = MixtureDenoiser(p.prior, LINEAR)
    x = sample(den, Problem(p.operator, y, 0.0), make_config(solver, steps=50, step_kind="ddpm"),
               Noise.from_seeds(range(16), dtype=F64)).x
    mse = (((p.operator.A(x) - y) / 2) ** 2).mean(1)
    psnr = 10 * torch.log10(1 / mse.clamp(min=1e-30))
    assert (psnr >= 100).all(), psnr


# ------------------------------------------------------------------------------- diffusers' scheduler

def if_like_scheduler(thresholding: bool):
    diffusers = pytest.importorskip("diffusers")
    return diffusers.DDPMScheduler(beta_schedule="squaredcos_cap_v2", variance_type="learned_range",
                                   prediction_type="epsilon", thresholding=thresholding,
                                   dynamic_thresholding_ratio=0.95, sample_max_value=1.5)


@pytest.mark.parametrize("thresholding", [False, True])
def test_learned_variance_step_matches_diffusers_ddpm_scheduler(thresholding):
    """The same model output (eps and variance channels) through diffusers' DDPMScheduler.step() with
    variance_type="learned_range" and through the plain solver's ddpm step: equal to 1e-6 at every pair
    of the scheduler's own 50-step grid (diffusers steps t -> t - 1000 // 50; ours the same pairs).
    In float64 (the scheduler's alphas_cumprod too, same values): diffusers computes beta = 1 - abar_t /
    abar_s from float32 scalars otherwise, which near t = 0 cancels to ~1e-5 relative (2e-6 here)."""
    from textsr.backends.deepfloyd_if_unet import x0_transform_for
    from textsr.solvers.plain import plain_step

    sched = if_like_scheduler(thresholding)
    sched.alphas_cumprod = sched.alphas_cumprod.to(F64)
    sched.set_timesteps(50)
    schedule = NoiseSchedule.from_alphas_cumprod(sched.alphas_cumprod)
    transform = x0_transform_for(sched.config)
    grid = solver_timesteps(schedule, make_config("plain", steps=50))
    assert grid == [int(t) for t in sched.timesteps]
    g = torch.Generator().manual_seed(0)
    B, C = 2, 3
    for k, t in enumerate(grid):
        x_t = 1.5 * torch.randn(B, C, 8, 8, generator=g, dtype=F64)
        model_out = torch.cat([torch.randn(B, C, 8, 8, generator=g, dtype=F64),
                               2 * torch.rand(B, C, 8, 8, generator=g, dtype=F64) - 1], 1)

        class Model:  # the model output above as a Denoiser (IF's adapter maps it the same way)
            def __call__(self, x, tt, cond=None, out=model_out):
                return Prediction.from_eps(x, out[:, :C], schedule.abar(tt), transform, v=(out[:, C:] + 1) / 2)

        den = Model()
        den.schedule = schedule
        s = grid[k + 1] if k + 1 < len(grid) else -1
        ref = sched.step(model_out, t, x_t, generator=torch.Generator().manual_seed(k)).prev_sample
        ours = plain_step(den, Problem(ops.Matrix(torch.eye(4, dtype=F64)), torch.zeros(B, 4, dtype=F64)), x_t, t, s,
                          None, make_config("plain", step_kind="ddpm"), Noise.batched(k, B, dtype=F64)).x_next
        assert (ours - ref).abs().max().item() <= 1e-6, (t, (ours - ref).abs().max().item())


# ------------------------------------------------------------------------------- DDNM+ in the shared form

def ddnm_plus_svd_old(den, problem, x_t, t, t_next, cond, cfg, noise):
    """The DDNM+ svd step as it was (ddnm kind), projecting the noise twice: kept as the reference."""
    A, y, sigma_y = problem.operator, problem.y, problem.sigma_y
    pred = den(x_t, t, cond)
    x0_hat = pred.x0
    abar_s = den.schedule.abar(t_next)
    a, sigma_s = math.sqrt(abar_s), math.sqrt(max(1.0 - abar_s, 0.0))
    r = A.A_pinv(A.A(x0_hat) - y)
    n = math.sqrt(1.0 - cfg.eta**2) * pred.eps
    if cfg.eta > 0:
        n = n + cfg.eta * noise.like(x0_hat)
    x0 = x0_hat - A.spectral(r, lambda s: torch.clamp(sigma_s * s / (a * sigma_y), max=1.0))
    gamma = lambda s: torch.sqrt(torch.clamp(sigma_s**2 - (a * sigma_y / s) ** 2, min=0.0))  # noqa: E731
    return a * x0 + sigma_s * A.project_null(n) + A.spectral(n, gamma)


@pytest.mark.parametrize("op", [ops.AvgPool(2, (1, 8, 8)), ops.BicubicReflect(4, (1, 16, 8)),
                                ops.Matrix(torch.randn(10, 64, generator=torch.Generator().manual_seed(1)), (1, 8, 8))],
                         ids=["avgpool", "bicubic-reflect", "matrix"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ddnm_plus_svd_projects_once_with_the_same_output(op, dtype):
    den = TinyNetDenoiser(LINEAR)
    g = torch.Generator().manual_seed(2)
    y = op.A(torch.randn(1, *op.in_shape, generator=g, dtype=dtype) * 0.5)
    problem = Problem(op, y.expand(3, *op.out_shape), 0.08)
    cfg = make_config("ddnm+", steps=10)
    for t, s in [(900, 800), (300, 200), (99, 0), (0, -1)]:
        x_t = torch.randn(3, *op.in_shape, generator=g, dtype=dtype)
        new = ddnm_plus_step(den, problem, x_t, t, s, None, cfg, Noise.from_seeds([5, 6, 7], dtype=dtype)).x_next
        old = ddnm_plus_svd_old(den, problem, x_t, t, s, None, cfg, Noise.from_seeds([5, 6, 7], dtype=dtype))
        tol = 1e-12 if dtype == F64 else 1e-6
        assert (new - old).abs().max().item() <= tol


def test_ddnm_plus_constant_learned_variance_equals_the_scalar_form():
    """A learned variance that is the same everywhere gives the scalar-sigma DDNM+ step exactly (the
    per-direction budget v_i^T diag(sigma^2) v_i is then sigma^2)."""
    op = ops.Bicubic(2, (1, 8, 8))
    y = op.A(torch.randn(1, 1, 8, 8, dtype=F64, generator=torch.Generator().manual_seed(0)))
    problem = Problem(op, y.expand(2, 1, 4, 4), 0.1)
    base = TinyNetDenoiser(LINEAR)
    x_t = torch.randn(2, 1, 8, 8, dtype=F64, generator=torch.Generator().manual_seed(1))
    t, s = 500, 480
    q_var = 0.4  # v such that the variance is a constant number: any constant v works

    class WithV:
        schedule = LINEAR

        def __call__(self, x, tt, cond=None):
            p = base(x, tt, cond)
            return Prediction(p.x0, p.eps, torch.full_like(x, q_var))

    from textsr.schedule import ddpm_posterior

    cfg = make_config("ddnm+", step_kind="ddpm")
    got = ddnm_plus_step(WithV(), problem, x_t, t, s, None, cfg, Noise.from_seeds([0, 1], dtype=F64)).x_next
    # the same step with the scalar sigma of that variance, via a schedule-free reference computation
    q = ddpm_posterior(LINEAR.abar(t), LINEAR.abar(s))
    sig = math.sqrt(q.variance(q_var))
    pred = base(x_t, t)
    z = Noise.from_seeds([0, 1], dtype=F64).randn((1, 8, 8))
    a, sy = q.c0, 0.1
    r = op.A_pinv(op.A(pred.x0) - y)
    x0 = pred.x0 - op.spectral(r, lambda sv: torch.clamp(sig * sv / (a * sy), max=1.0))
    gamma = lambda sv: torch.sqrt(torch.clamp(sig**2 - (a * sy / sv) ** 2, min=0.0))  # noqa: E731
    ref = a * x0 + q.ct * x_t + sig * op.project_null(z) + op.spectral(z, gamma)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)


def test_ddnm_plus_ddpm_removes_measurement_noise_vs_ddnm():
    op = ops.AvgPool(2, (1, 8, 8))
    den = GaussianDenoiser(LINEAR, c=0.3)
    g = torch.Generator().manual_seed(1)
    x_true = torch.randn(1, 1, 8, 8, dtype=F64, generator=g) * 0.3
    y = op.A(x_true) + 0.2 * torch.randn(1, 1, 4, 4, dtype=F64, generator=g)
    seeds = list(range(64))
    for mode in ("svd", "simplified"):
        xp = sample(den, Problem(op, y, 0.2), make_config("ddnm+", steps=50, mode=mode, step_kind="ddpm"),
                    Noise.from_seeds(seeds, dtype=F64)).x
        xd = sample(den, Problem(op, y, 0.2), make_config("ddnm", steps=50, step_kind="ddpm"),
                    Noise.from_seeds(seeds, dtype=F64)).x
        assert (op.A(xd) - y).abs().max() < 1e-10
        assert (op.A(xp).mean(0) - op.A(x_true)).norm() < (op.A(xd).mean(0) - op.A(x_true)).norm()


# ------------------------------------------------------------------------------- PiGDM "official"

def test_pigdm_official_is_a_dps_step_on_the_pinv_residual():
    """One step by hand: the diffusion step from x0_hat minus zeta * grad ||A+ y - A+ A x0_hat||."""
    op = ops.Bicubic(2, (1, 8, 8))
    den = TinyNetDenoiser(LINEAR)
    g = torch.Generator().manual_seed(0)
    y = op.A(torch.randn(2, 1, 8, 8, dtype=F64, generator=g))
    x_t = torch.randn(2, 1, 8, 8, dtype=F64, generator=g)
    cfg = make_config("pigdm", weighting="official", zeta=0.7, step_kind="ddpm")
    from textsr.solvers.pigdm import pigdm_step

    got = pigdm_step(den, Problem(op, y), x_t, 400, 396, None, cfg, Noise.from_seeds([1, 2], dtype=F64)).x_next
    xg = x_t.clone().requires_grad_(True)
    pred = den(xg, 400)
    loss = sum((op.A_pinv(y)[k] - op.A_pinv(op.A(pred.x0))[k]).norm() for k in range(2))
    (grad,) = torch.autograd.grad(loss, xg)
    base = make_config("plain", step_kind="ddpm")
    step = transition(x_t, pred.eps.detach(), None, LINEAR.abar(400), LINEAR.abar(396), base,
                      Noise.from_seeds([1, 2], dtype=F64))(pred.x0.detach())
    torch.testing.assert_close(got, step - 0.7 * grad, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="zeta"):
        make_config("pigdm", weighting="official", zeta=-1.0)


def test_pigdm_official_lowers_the_residual():
    op = ops.AvgPool(4, (1, 8, 8))
    den = GaussianDenoiser(LINEAR, c=1.0)
    y = torch.full((1, 1, 2, 2), 0.7, dtype=F64)
    seeds = list(range(16))

    def resid(name, **kw):
        x = sample(den, Problem(op, y), make_config(name, steps=50, **kw), Noise.from_seeds(seeds, dtype=F64)).x
        return (op.A(x) - y).flatten(1).norm(dim=1).mean().item()

    assert resid("pigdm", weighting="official", zeta=1.0, step_kind="ddpm", init="noise") < 0.5 * resid("plain")


# ------------------------------------------------------------------------------- late starts

@pytest.mark.parametrize("n,k,first,count", [(250, 100, 596, 150), (100, 0, 990, 100), (250, 0, 996, 250),
                                             (100, 40, 590, 60), (50, 49, 0, 1), (1000, 500, 499, 500)])
def test_skip_form_first_timestep(n, k, first, count):
    ts = solver_timesteps(COSINE, make_config("dps", steps=n, skip=k))
    assert ts[0] == first and len(ts) == count and ts[-1] == 0
    assert ts == COSINE.timesteps(n)[k:]


@pytest.mark.parametrize("steps,start", [(250, 0.6), (100, 0.6), (250, 0.3), (7, 0.5), (1000, 0.25), (30, 0.99)])
def test_start_form_begins_within_one_stride_of_the_documented_start(steps, start):
    """start = f < 1: the first timestep lies within one stride (t_start + 1) / steps below t_start =
    round(f T) - 1, and `steps` steps run (250 steps from 0.6 used to begin at t = 498)."""
    ts = solver_timesteps(COSINE, make_config("ddnm", steps=steps, start=start))
    t_start = round(start * 1000) - 1
    assert len(ts) == min(steps, t_start + 1) and ts[-1] == 0
    assert t_start - (t_start + 1) / steps < ts[0] <= t_start
    if steps == 250 and start == 0.6:
        assert ts[0] == 597


def test_uniform_grid_is_the_ddim_reference_on_the_whole_schedule():
    """start = 1: DDIM's range(0, T, T // steps) (unchanged), for any number of steps; a late start with
    steps dividing t_start + 1 gives the same integer-stride grid."""
    assert COSINE.timesteps(100)[:3] == [990, 980, 970]
    assert COSINE.timesteps(250)[:2] == [996, 992]
    assert COSINE.timesteps(6) == [830, 664, 498, 332, 166, 0]
    assert solver_timesteps(COSINE, make_config("ddnm", steps=30)) == list(range(0, 1000, 33))[:30][::-1]
    assert COSINE.timesteps(50, t_start=599) == list(range(588, -1, -12))


@pytest.mark.parametrize("opts,match", [({"skip": 10, "steps": 10}, "skip"), ({"skip": -1}, "skip"),
                                        ({"skip": 5, "start": 0.5}, "not both"), ({"step_kind": "euler"}, "ddpm")])
def test_bad_late_start_and_step_kind_options(opts, match):
    with pytest.raises(ValueError, match=match):
        make_config("ddnm", **opts)
