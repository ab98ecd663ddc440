"""EXPERIMENTAL latent backend (Stable Diffusion components) on a tiny random SD, saved and loaded back."""

import json
from dataclasses import replace
from functools import partial

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("diffusers")

from tests import backend_helpers as helpers  # noqa: E402
from textsr.backends.latent import load_backend  # noqa: E402
from textsr.backends.latent_base import LatentOperator  # noqa: E402
from textsr.errors import InputImageError, ModelNotFoundError, UsageError  # noqa: E402
from textsr.operators import AvgPool  # noqa: E402
from textsr.testing.tiny_latent import build_tiny_latent  # noqa: E402

CPU = torch.device("cpu")
STEPS = {"steps": 6}


@pytest.fixture(scope="module")
def spec_path(tmp_path_factory):
    return build_tiny_latent(tmp_path_factory.mktemp("sd"))


@pytest.fixture(scope="module")
def backend(spec_path):
    return load_backend(json.loads(spec_path.read_text()), device=CPU, dtype=torch.float32, offline=True)


run = partial(helpers.run, steps=STEPS["steps"])
lr_image, psnr = helpers.lr_image, helpers.lr_psnr


def test_sizes(backend):
    backend.check_size((4, 4), 4)
    with pytest.raises(InputImageError, match="multiples of 4"):
        backend.check_size((5, 5), 5)


def test_latent_operator(backend):
    pixel = AvgPool(4, (3, 16, 16))
    op = LatentOperator(pixel, backend.codec)
    assert op.in_shape == (4, 8, 8) and op.out_shape == (3, 4, 4)
    z = torch.randn(2, 4, 8, 8, requires_grad=True)
    (g,) = torch.autograd.grad(op.A(z).square().sum(), z)  # differentiable through the VAE decoder (DPS)
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    y = lr_image(4)
    assert torch.allclose(op.A_pinv(y), backend.codec.encode(pixel.A_pinv(y)))  # warm start: E(A+ y)
    assert LatentOperator(pixel, backend.codec, projected=True).A_pinv(y).abs().max() == 0
    with pytest.raises(UsageError, match="singular values"):
        op.spectral(z, lambda s: s)


@pytest.mark.parametrize("solver", ["ddnm", "ddnm+", "dps", "plain"])
def test_final_projection_makes_every_sample_exact(backend, solver):
    y = lr_image(4)
    res = run(backend, solver, y, 4)
    op = res.operators[-1]
    assert isinstance(op, LatentOperator) and res.x.shape == (2, 4, 8, 8)
    before = psnr(backend.decode(res.x), y, op.pixel)
    after = psnr(backend.postprocess(res.x, y, op), y, op.pixel)
    print(f"latent {solver}: LR-PSNR before {before.tolist()} after {after.tolist()}")
    assert (after >= 60).all() and (after > before).all()
    # the pixel operator itself is accepted too
    assert torch.allclose(backend.postprocess(res.x, y, op.pixel), backend.postprocess(res.x, y, op))


def test_ddnm_projects_inside_the_denoiser(backend):
    """The bound DDNM denoiser returns E(p) with p consistent: its decoded x0 is closer to y than the raw one."""
    y = lr_image(4)
    stage = backend.build_stages("ddnm", STEPS, {})[0]
    pixel = AvgPool(4, (3, 16, 16))
    den, op = stage.bind(pixel, y)
    assert op.projected
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    cond = backend.encode_prompt("a red fox")
    with torch.no_grad():
        raw, proj = stage.denoiser(z, 300, cond), den(z, 300, cond)
        x_raw, x = backend.codec.decode(raw.x0), backend.codec.decode(backend.codec.encode(
            backend.codec.decode(raw.x0) - pixel.A_pinv(pixel.A(backend.codec.decode(raw.x0)) - y)))
        assert torch.allclose(backend.codec.decode(proj.x0), x, atol=1e-5)
    assert (proj.x0 - raw.x0).abs().max() > 0 and x_raw.shape == x.shape


def test_dps_lowers_the_residual(backend):
    y, seeds = lr_image(4, seed=1), (0, 1, 2)
    pixel = AvgPool(4, (3, 16, 16))
    base = psnr(backend.decode(run(backend, "plain", y, 4, seeds).x), y, pixel).mean()
    dps = psnr(backend.decode(run(backend, "dps", y, 4, seeds, solver_options={"zeta": 1.0}).x), y, pixel).mean()
    assert dps > base, (float(dps), float(base))


def test_unsupported_solvers(backend):
    with pytest.raises(UsageError, match="SVD"):
        backend.build_stages("pigdm", {}, {})
    with pytest.raises(UsageError, match="singular values"):
        run(backend, "ddnm+", lr_image(4), 4, sigma_y=0.05)


def test_cfg_scale_one_is_the_text_branch(backend):
    stage = backend.build_stages("dps", STEPS, {"guidance_scale": 1.0})[0]
    den1 = stage.denoiser
    den0, den2 = replace(den1, guidance=0.0), replace(den1, guidance=2.0)
    cond = backend.encode_prompt("a red fox")
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        e1, e0, e2 = (d(z, 500, cond).eps for d in (den1, den0, den2))
    assert torch.allclose(e1, (e0 + e2) / 2, atol=1e-5)


def test_negative_prompt_changes_output(backend):
    y = lr_image(4)
    a = run(backend, "ddnm", y, 4, prompt="a red fox").x
    c = run(backend, "ddnm", y, 4, prompt="a red fox", options={"negative_prompt": "blurry"}).x
    assert (a - c).abs().max() > 1e-4


def test_options_and_errors(backend, tmp_path):
    with pytest.raises(ModelNotFoundError):
        load_backend({"backend": "latent", "stages": {"pipeline": str(tmp_path / "nothing")}}, device=CPU,
                     dtype=torch.float32, offline=True)
    assert backend.describe()["experimental"] is True


@pytest.mark.slow
def test_trained_vae_decode_project_encode(spec_path):
    """With a VAE that round-trips images (trained here for a few hundred steps), DDNM's decode-project-encode
    brings the LR residual before the final projection down to about the VAE's round-trip error, far below
    the plain sampler's; the final projection then makes it exact."""
    be = load_backend(json.loads(spec_path.read_text()), device=CPU, dtype=torch.float32, offline=True)
    vae = be.codec.vae.train().requires_grad_(True)
    opt = torch.optim.Adam(vae.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(400):
        x = F.interpolate(torch.rand(16, 3, 4, 4, generator=g) * 2 - 1, size=(16, 16), mode="bicubic",
                          align_corners=False).clamp(-1, 1)
        loss = (be.codec.decode(be.codec.encode(x)) - x).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    vae.eval().requires_grad_(False)
    y, seeds, pixel = lr_image(4, seed=5), (0, 1, 2, 3), AvgPool(4, (3, 16, 16))
    before, after = {}, {}
    for solver in ("plain", "ddnm", "dps"):
        res = run(be, solver, y, 4, seeds, solver_options={"steps": 20})
        before[solver] = psnr(be.decode(res.x), y, pixel).mean().item()
        after[solver] = psnr(be.postprocess(res.x, y, res.operators[-1]), y, pixel).min().item()
    print(f"trained tiny VAE (round trip {10 * torch.log10(4 / loss).item():.1f} dB): LR-PSNR before {before}, "
          f"after (min) {after}")
    assert before["ddnm"] > before["plain"] + 5
    assert min(after.values()) >= 60
