"""EXPERIMENTAL Kandinsky 2.2 backend (unCLIP prior + MoVQ latent decoder) on a tiny random model."""

import json
from dataclasses import replace
from functools import partial

import pytest
import torch

pytest.importorskip("diffusers")

from tests import backend_helpers as helpers  # noqa: E402
from textsr.backends.kandinsky import KandinskyCond, load_backend  # noqa: E402
from textsr.backends.latent_base import LatentOperator  # noqa: E402
from textsr.errors import InputImageError, ModelNotFoundError, UsageError  # noqa: E402
from textsr.operators import AvgPool  # noqa: E402
from textsr.solvers import Noise  # noqa: E402
from textsr.testing.tiny_kandinsky import build_tiny_kandinsky  # noqa: E402

CPU = torch.device("cpu")
FAST = {"prior_steps": 2}
STEPS = {"steps": 6}


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    spec = json.loads(build_tiny_kandinsky(tmp_path_factory.mktemp("k22")).read_text())
    return load_backend(spec, device=CPU, dtype=torch.float32, offline=True)


run = partial(helpers.run, steps=STEPS["steps"], fixed_options=FAST)
lr_image, psnr = helpers.lr_image, helpers.lr_psnr


def test_sizes(backend):
    backend.check_size((4, 4), 4)
    with pytest.raises(InputImageError, match="multiples of 4"):
        backend.check_size((5, 5), 5)


@pytest.mark.parametrize("solver", ["ddnm", "dps"])
def test_final_projection_exact_and_ddnm_projects_in_latents(backend, solver):
    y, pixel = lr_image(4), AvgPool(4, (3, 16, 16))
    res = run(backend, solver, y, 4, options={"unclip_lambda": 0.5})
    assert isinstance(res.operators[-1], LatentOperator) and res.x.shape == (2, 4, 8, 8)
    after = psnr(backend.postprocess(res.x, y, res.operators[-1]), y, pixel)
    assert (after >= 60).all(), after
    if solver == "ddnm":  # decode-project-encode: closer to y before the final projection than plain sampling
        plain = run(backend, "plain", y, 4, options={"unclip_lambda": 0.5})
        assert psnr(backend.decode(res.x), y, pixel).mean() > psnr(backend.decode(plain.x), y, pixel).mean()


def test_dps_lowers_the_residual(backend):
    y, seeds, pixel = lr_image(4, seed=1), (0, 1, 2), AvgPool(4, (3, 16, 16))
    base = psnr(backend.decode(run(backend, "plain", y, 4, seeds).x), y, pixel).mean()
    dps = psnr(backend.decode(run(backend, "dps", y, 4, seeds, solver_options={"zeta": 1.0}).x), y, pixel).mean()
    assert dps > base, (float(dps), float(base))


def test_embedding_averaging(backend):
    y = lr_image(4)
    zero = run(backend, "ddnm", y, 4, options={"unclip_lambda": 0.0}).x
    half = run(backend, "ddnm", y, 4, options={"unclip_lambda": 0.5}).x
    assert (zero - half).abs().max() > 1e-4
    # lambda = 1 with the "mix" norm conditions on the LR image's embedding alone: the prior no longer matters
    out = [run(backend, "ddnm", y, 4, options={"unclip_lambda": 1.0, "unclip_norm": "mix", "prior_guidance": g}).x
           for g in (1.0, 4.0)]
    assert torch.allclose(out[0], out[1], atol=1e-5)


def test_cfg_scale_one_is_the_conditional_branch(backend):
    den1 = backend.build_stages("dps", STEPS, {**FAST, "guidance_scale": 1.0})[0].denoiser
    den0, den2 = replace(den1, guidance=0.0), replace(den1, guidance=2.0)
    text = backend.encode_prompt("a red fox")
    from textsr.backends.unclip_prior import sample_prior

    cond = KandinskyCond(sample_prior(backend.prior, backend.prior_scheduler, text, Noise.from_seeds([0, 1]), 4.0, 2,
                                      CPU), backend.zero_embedding())
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        e1, e0, e2 = (d(z, 500, cond).eps for d in (den1, den0, den2))
    assert torch.allclose(e1, (e0 + e2) / 2, atol=1e-5)


def test_options_and_errors(backend, tmp_path):
    with pytest.raises(UsageError, match="SVD"):
        backend.build_stages("pigdm", {}, {})
    with pytest.raises(ModelNotFoundError):
        load_backend({"backend": "kandinsky", "stages": {"prior": str(tmp_path / "a"), "decoder": str(tmp_path / "b")}},
                     device=CPU, dtype=torch.float32, offline=True)
    s = backend.text_scores(torch.rand(2, 3, 16, 16) * 2 - 1, "a red fox")
    assert s.shape == (2,) and (s >= 0).all()
