"""Contract tests over every solver x operator, and exactness checks with closed-form denoisers."""

import pytest
import torch

from tests.oracles import GaussianDenoiser, TinyNetDenoiser
from textsr import operators as ops
from textsr.cascade import Stage, run_cascade
from textsr.schedule import NoiseSchedule
from textsr.solvers import SOLVERS, Noise, Problem, make_config, sample

SCHED = NoiseSchedule.linear()
SOLVER_NAMES = list(SOLVERS)


def noise64(seeds) -> Noise:
    return Noise.from_seeds(seeds, dtype=torch.float64)


def make_ops():
    return {
        "avgpool": lambda: ops.AvgPool(4, (1, 8, 12)),
        "matrix": lambda: ops.Matrix(torch.randn(10, 96, generator=torch.Generator().manual_seed(3)), (1, 8, 12)),
        "bicubic": lambda: ops.Bicubic(4, (1, 8, 12)),
        "bicubic-reflect": lambda: ops.BicubicReflect(4, (1, 8, 12)),
    }


OPS = make_ops()


def fast_cfg(name, **kw):
    return make_config(name, steps=kw.pop("steps", 6), **kw)


# each solver with its default step, with the DDPM posterior step, and with the DDPM step and a model
# that predicts its own variance (Prediction.v, as IF does)
STEPS = {"default": ({}, False), "ddpm": ({"step_kind": "ddpm"}, False), "ddpm+v": ({"step_kind": "ddpm"}, True)}


def net_and_kind(step):
    opts, learned = STEPS[step]
    return TinyNetDenoiser(SCHED, learned_variance=learned), opts


def run(den, op, name, seeds, dtype=torch.float64, sigma_y=0.0, y=None, **kw):
    if y is None:
        x = torch.randn(1, *op.in_shape, generator=torch.Generator().manual_seed(42), dtype=dtype) * 0.5
        y = op.A(x)
    return sample(den, Problem(op, y.to(dtype), sigma_y), fast_cfg(name, **kw), Noise.from_seeds(seeds, dtype=dtype)).x


@pytest.mark.parametrize("step", list(STEPS))
@pytest.mark.parametrize("op_name", list(OPS))
@pytest.mark.parametrize("name", SOLVER_NAMES)
def test_batch_item_equals_same_seed_alone(name, op_name, step):
    op = OPS[op_name]()
    den, kw = net_and_kind(step)
    for sigma_y in (0.0, 0.05):
        batch = run(den, op, name, [5, 6, 7], sigma_y=sigma_y, **kw)
        alone = run(den, op, name, [6], sigma_y=sigma_y, **kw)
        torch.testing.assert_close(batch[1:2], alone, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("step", list(STEPS))
@pytest.mark.parametrize("name", SOLVER_NAMES)
def test_same_seed_same_result_and_seed_matters(name, step):
    op = OPS["avgpool"]()
    den, kw = net_and_kind(step)
    a, b, c = run(den, op, name, [1], **kw), run(den, op, name, [1], **kw), run(den, op, name, [2], **kw)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("step", list(STEPS))
@pytest.mark.parametrize("op_name", list(OPS))
@pytest.mark.parametrize("name", SOLVER_NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("sigma_y", [0.0, 0.05])
def test_finite_in_both_dtypes_with_and_without_noise(name, op_name, dtype, sigma_y, step):
    op = OPS[op_name]()
    den, kw = net_and_kind(step)
    x = run(den, op, name, [0, 1], dtype=dtype, sigma_y=sigma_y, **kw)
    assert x.dtype == dtype and x.shape == (2, *op.in_shape)
    assert torch.isfinite(x).all()


@pytest.mark.parametrize("step_kind", ["ddnm", "ddim", "ddpm"])
@pytest.mark.parametrize("name", ["ddnm", "ddnm+"])
@pytest.mark.parametrize("op_name", list(OPS))
def test_noiseless_ddnm_is_exactly_consistent(name, op_name, step_kind):
    op = OPS[op_name]()
    den = GaussianDenoiser(SCHED, c=0.5)
    x_true = torch.randn(1, *op.in_shape, dtype=torch.float64, generator=torch.Generator().manual_seed(9)) * 0.4
    y = op.A(x_true)
    x = run(den, op, name, list(range(8)), y=y, steps=20, step_kind=step_kind)
    # the bicubic/matrix pseudo-inverse is exact on the range of A: A x = A A+ y = y for y in range(A)
    err = (op.A(x) - y).abs().max().item()
    assert err < 1e-10


def test_ddnm_lr_psnr_above_100db_float64():
    op = ops.AvgPool(8, (3, 32, 32))
    den = GaussianDenoiser(SCHED, c=0.5)
    y = op.A(torch.rand(1, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 2 - 1)
    x = sample(den, Problem(op, y), make_config("ddnm", steps=50), Noise.from_seeds(range(6), dtype=torch.float64)).x
    mse = (((op.A(x) - y) / 2) ** 2).flatten(1).mean(1)
    psnr = 10 * torch.log10(1 / mse.clamp(min=1e-30))
    assert (psnr >= 100).all(), psnr


def test_dps_and_pigdm_lower_residual_vs_plain():
    op = ops.AvgPool(4, (1, 8, 8))
    den = GaussianDenoiser(SCHED, c=1.0)
    y = torch.full((1, 1, 2, 2), 0.7, dtype=torch.float64)
    seeds = list(range(16))

    def resid(name, **kw):
        x = sample(den, Problem(op, y), make_config(name, steps=50, **kw), noise64(seeds)).x
        return (op.A(x) - y).flatten(1).norm(dim=1).mean().item()

    plain = resid("plain")
    assert resid("dps", zeta=1.0) < 0.5 * plain
    assert resid("pigdm") < 0.1 * plain


def test_pigdm_tweedie_is_exact_projection_for_gaussian_prior():
    # For N(0, I) at eta = 0, PiGDM's Tweedie correction equals the DDNM projection at every step,
    # so the final sample satisfies A x = y.
    op = ops.AvgPool(2, (1, 4, 4))
    den = GaussianDenoiser(SCHED, c=1.0)
    y = torch.randn(1, 1, 2, 2, dtype=torch.float64)
    x = sample(den, Problem(op, y), make_config("pigdm", steps=20, safeguard=False), noise64([0, 1])).x
    assert (op.A(x) - y).abs().max() < 1e-8


@pytest.mark.parametrize("steps, expected", [(20, 0.63), (100, 0.72)])
def test_ddnm_eta085_under_disperses_null_space(steps, expected):
    # Known property (docs/pitfalls.md, "DDNM's eta = 0.85 step under-disperses"): with A having a
    # large null space on a N(0, I) prior, DDNM's eta = 0.85 step gives null-space variance ~0.63 at
    # 20 steps and ~0.72 at 100 steps instead of 1.
    op = ops.AvgPool(4, (1, 8, 8))
    den = GaussianDenoiser(SCHED, c=1.0)
    y = torch.zeros(1, 1, 2, 2, dtype=torch.float64)
    x = sample(den, Problem(op, y), make_config("ddnm", steps=steps), noise64(range(400))).x
    null = op.project_null(x)
    var = (null**2).sum() / (400 * (64 - 4))
    assert abs(var.item() - expected) < 0.05, var.item()


def test_ddnm_plus_removes_measurement_noise_vs_ddnm():
    # With noisy y, DDNM copies the noise into the sample (A x = y exactly); DDNM+ does not.
    op = ops.AvgPool(2, (1, 8, 8))
    den = GaussianDenoiser(SCHED, c=0.3)
    g = torch.Generator().manual_seed(1)
    x_true = torch.randn(1, 1, 8, 8, dtype=torch.float64, generator=g) * 0.3
    sigma_y = 0.2
    y = op.A(x_true) + sigma_y * torch.randn(1, 1, 4, 4, dtype=torch.float64, generator=g)
    seeds = list(range(64))
    for mode in ("svd", "simplified"):
        xp = sample(den, Problem(op, y, sigma_y), make_config("ddnm+", steps=50, mode=mode), noise64(seeds)).x
        xd = sample(den, Problem(op, y, sigma_y), make_config("ddnm", steps=50), noise64(seeds)).x
        assert (op.A(xd) - y).abs().max() < 1e-10
        # the exact posterior mean in the range: shrink y toward 0; DDNM+ must be much closer to it
        err_p = (op.A(xp).mean(0) - op.A(x_true)).norm()
        err_d = (op.A(xd).mean(0) - op.A(x_true)).norm()
        assert err_p < err_d


def test_time_travel_runs_and_stays_consistent():
    op = ops.AvgPool(4, (1, 8, 8))
    den = GaussianDenoiser(SCHED, c=0.5)
    y = torch.randn(1, 1, 2, 2, dtype=torch.float64) * 0.3
    seen = []
    res = sample(den, Problem(op, y), make_config("ddnm", steps=10, travel_length=2, travel_repeat=3),
                 Noise.from_seeds([0], dtype=torch.float64), callback=seen.append)
    assert res.transitions == len(seen) > 10
    assert any(s.t_next > s.t for s in seen)
    assert (op.A(res.x) - y).abs().max() < 1e-10


def test_warm_start_pinv_init():
    op = ops.AvgPool(4, (1, 8, 8))
    den = GaussianDenoiser(SCHED, c=0.5)
    y = torch.randn(1, 1, 2, 2, dtype=torch.float64) * 0.3
    seen = []
    cfg = make_config("dps", steps=10, start=0.3, init="pinv")
    sample(den, Problem(op, y), cfg, noise64([0]), callback=seen.append)
    assert seen[0].t <= 300 and len(seen) == 10


def test_callback_reports_progress():
    op = ops.AvgPool(2, (1, 4, 4))
    seen = []
    sample(GaussianDenoiser(SCHED), Problem(op, torch.zeros(1, 1, 2, 2)), make_config("ddnm", steps=5),
           Noise.from_seeds([0]), callback=seen.append, stage="I")
    assert [s.index for s in seen] == list(range(5)) and seen[-1].t_next == -1 and seen[0].stage == "I"


@pytest.mark.parametrize(
    "name,opts,match",
    [
        ("ddnm", {"steps": -1}, "steps"),
        ("ddnm", {"eta": 1.5}, "eta"),
        ("ddnm", {"travel_repeat": 0}, "travel"),
        ("dps", {"zeta": -1.0}, "zeta"),
        ("pigdm", {"weighting": "magic"}, "weighting"),
        ("ddnm+", {"mode": "exact"}, "mode"),
        ("ddnm", {"start": 0.0}, "start"),
        ("ddnm", {"bogus": 1}, "unknown option"),
    ],
)
def test_invalid_configs_say_what_to_change(name, opts, match):
    with pytest.raises(ValueError, match=match):
        make_config(name, **opts)


def test_unknown_solver_lists_known():
    with pytest.raises(ValueError, match="ddnm"):
        make_config("ddrm")


def test_factor_not_dividing_size_says_crop():
    with pytest.raises(ValueError, match="crop to 8x12"):
        ops.AvgPool(4, (3, 10, 13))


def test_problem_rejects_wrong_y_shape_and_negative_sigma():
    op = ops.AvgPool(2, (1, 4, 4))
    with pytest.raises(ValueError, match="shape"):
        Problem(op, torch.zeros(1, 1, 3, 3))
    with pytest.raises(ValueError, match="sigma_y"):
        Problem(op, torch.zeros(1, 1, 2, 2), -0.1)


def test_cascade_runs_each_stage_against_same_y():
    den = GaussianDenoiser(SCHED, c=0.5)
    seen_prev = []

    def cond2(cond, prev, noise):
        seen_prev.append(prev)
        return cond

    stages = [Stage("I", den, divisor=4, channels=1), Stage("II", den, divisor=1, channels=1, condition=cond2)]
    y = torch.randn(1, 1, 2, 2) * 0.3
    res = run_cascade(stages, y, scale=8, solver=make_config("ddnm", steps=5), seeds=[0, 1])
    assert res.stage_outputs[0].shape == (2, 1, 4, 4) and res.x.shape == (2, 1, 16, 16)
    assert seen_prev[0].shape == (2, 1, 4, 4)
    for out, op in zip(res.stage_outputs, res.operators):
        assert (op.A(out) - y).abs().max() < 1e-5


def test_cascade_rejects_indivisible_scale():
    den = GaussianDenoiser(SCHED)
    with pytest.raises(ValueError, match="divisible by 4"):
        run_cascade([Stage("I", den, divisor=4, channels=1)], torch.zeros(1, 1, 2, 2), scale=6,
                    solver=make_config("ddnm", steps=2), seeds=[0])
