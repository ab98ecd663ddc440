"""FlowDPS (``textsr.solvers.flowdps``) checked step by step against its public code's super-resolution loop,
written out independently here on the flow path (same latent and noise in, one step out), on a tiny FLUX with
its VAE decoder in the loss; its grid and defaults; per-sample norms."""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("diffusers")

from tests import backend_helpers as helpers  # noqa: E402
from textsr.flow import flow_scale  # noqa: E402
from textsr.model_registry import load_model  # noqa: E402
from textsr.operators import AvgPool  # noqa: E402
from textsr.solvers import Noise, Problem, make_config  # noqa: E402
from textsr.solvers.flowdps import flowdps_step  # noqa: E402
from textsr.testing.tiny_flux import build_tiny_flux  # noqa: E402


@pytest.fixture(scope="module")
def flux(tmp_path_factory):
    return load_model(build_tiny_flux(tmp_path_factory.mktemp("flux")), device="cpu", offline=True)


def reference_step(vel, decode, A: AvgPool, y, z, s, s_next, e, cond, lr=15.0, iters=3):
    """The public code's loop body (SD3FlowDPS.sample / data_consistency), on the flow path: velocity, Tweedie
    split, 3 gradient steps on the unsquared ||A+ y - A+ A D(z0)||, blend with weight s, renoise with sqrt(s')."""
    with torch.no_grad():
        v = vel(z, s, cond)
    z0, z1 = z - s * v, z + (1 - s) * v
    zc = z0.clone()
    for _ in range(iters):
        zc = zc.detach().requires_grad_(True)
        loss = torch.linalg.norm((A.A_pinv(y) - A.A_pinv(A.A(decode(zc)))).reshape(1, -1))
        (g,) = torch.autograd.grad(loss, zc)
        zc = zc - lr * g
    z0y = (1 - s) * z0 + s * zc.detach()
    if s_next == 0:
        return z0y
    noise = math.sqrt(s_next) * z1 + math.sqrt(1 - s_next) * e
    return z0y + s_next * (noise - z0y)  # the public code's form of (1 - s') z0y + s' noise


@pytest.mark.parametrize("index", [0, 5, 27])
def test_one_step_equals_the_public_codes_loop_body(flux, index):
    stage = flux.build_stages("flowdps", {}, {})[0]
    cfg = stage.solver
    assert (cfg.steps, cfg.step_size, cfg.dc_steps, cfg.shift, cfg.grid) == (28, 15.0, 3, 4.0, "own")  # the SR defaults
    y = helpers.lr_image(4, size=32, seed=2)
    pixel = AvgPool(4, (3, 32, 32))
    den, op = stage.bind(pixel, y)
    ts = den.schedule.timesteps(28)
    t = ts[index]
    t_next = ts[index + 1] if index + 1 < len(ts) else -1
    s, s_next = den.schedule.sigma(t), den.schedule.sigma(t_next)
    cond = flux.encode_prompt("a red fox")
    z = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(index))  # on the flow path at s
    noise = Noise.from_seeds([7])
    e = Noise.from_seeds([7]).randn((4, 16, 16))
    with torch.no_grad():
        got = flowdps_step(den, Problem(op, y), z / flow_scale(s), t, t_next, cond, cfg, noise)
    ref = reference_step(den.velocity, flux.codec.decode, pixel, y, z, s, s_next, e, cond)
    torch.testing.assert_close(got.x_next * flow_scale(s_next), ref, rtol=0, atol=2e-5)
    if t_next == -1:
        assert torch.equal(got.x_next, got.x0)  # the last step returns x0_y


def test_its_grid_and_the_unsquared_norm(flux):
    cfg = make_config("flowdps")
    lv = cfg.flow_levels(28, 0.002994)  # SD3's smallest training level
    u = torch.linspace(1, 0.002994, 28, dtype=torch.float64)
    assert lv == pytest.approx((4 * u / (1 + 3 * u)).tolist(), abs=1e-15) and lv[0] == 1.0
    assert make_config("flowdps", grid="model").flow_levels(28, 0.003) is None
    # a residual twice as large gives the same gradient (unsquared norm): the step is scale-free in the residual
    from textsr.solvers.flowdps import data_consistency

    A = AvgPool(4, (1, 8, 8))
    z0 = torch.zeros(1, 1, 8, 8)
    one_step = make_config("flowdps", dc_steps=1, step_size=1.0)
    one = data_consistency(Problem(A, torch.ones(1, 1, 2, 2)), z0, one_step)
    two = data_consistency(Problem(A, 2 * torch.ones(1, 1, 2, 2)), z0, one_step)
    torch.testing.assert_close(one, two)
    with pytest.raises(ValueError, match="grid must be"):
        make_config("flowdps", grid="nope")
    with pytest.raises(ValueError, match="step_size"):
        make_config("flowdps", step_size=-1.0)


def test_norms_are_per_sample(flux):
    """A batch item equals the same seed alone (the public code's one norm over the batch would couple them)."""
    stage = flux.build_stages("flowdps", {"steps": 4}, {})[0]
    y = helpers.lr_image(4, size=32, seed=1)
    from textsr.cascade import run_cascade

    both = run_cascade([stage], y, 4, stage.solver, [3, 4], flux.encode_prompt("a")).x
    alone = run_cascade([stage], y, 4, stage.solver, [4], flux.encode_prompt("a")).x
    torch.testing.assert_close(both[1:], alone, rtol=0, atol=1e-5)
