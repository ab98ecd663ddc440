"""Pixel-space UNet2DModel backend + CLIP guidance on a tiny random DDPM and CLIP, saved and loaded back."""

import json
from functools import partial

import pytest
import torch

pytest.importorskip("diffusers")

from tests import backend_helpers as helpers  # noqa: E402
from textsr.backends.pixel import load_backend  # noqa: E402
from textsr.errors import InputImageError, ModelNotFoundError, UsageError  # noqa: E402
from textsr.guidance import clip_energy  # noqa: E402
from textsr.operators import AvgPool  # noqa: E402
from textsr.testing.tiny_pixel import build_tiny_pixel  # noqa: E402

CPU = torch.device("cpu")
STEPS = {"steps": 8}


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    return json.loads(build_tiny_pixel(tmp_path_factory.mktemp("pixel")).read_text())


@pytest.fixture(scope="module")
def backend(spec):
    return load_backend(spec, device=CPU, dtype=torch.float32, offline=True)


run = partial(helpers.run, steps=STEPS["steps"])


def lr_image(scale, seed=0, size=16):
    return helpers.lr_image(scale, seed, size)


def lr_psnr(res, y):
    return helpers.lr_psnr(res.x, y, res.operators[-1])


def test_sizes(backend):
    backend.check_size((4, 4), 4)
    with pytest.raises(InputImageError, match="4x4 at x4"):
        backend.check_size((8, 8), 4)


@pytest.mark.parametrize("solver,scale,grad", [("ddnm", 4, "x0"), ("ddnm+", 4, "xt"), ("ddnm", 8, "x0")])
def test_ddnm_exact_with_and_without_clip_guidance(backend, solver, scale, grad):
    y = lr_image(scale)
    for clip_scale in (0.0, 0.3):
        res = run(backend, solver, y, scale, options={"clip_scale": clip_scale, "clip_grad": grad})
        psnr = lr_psnr(res, y)
        assert (psnr >= 60).all(), (clip_scale, psnr)


def test_dps_and_pigdm_lower_the_residual(backend):
    y, seeds = lr_image(4, seed=1), (0, 1, 2)
    base = lr_psnr(run(backend, "plain", y, 4, seeds, options={"clip_scale": 0.0}), y).mean()
    for solver in ("dps", "pigdm"):
        psnr = lr_psnr(run(backend, solver, y, 4, seeds, options={"clip_scale": 0.0}), y).mean()
        assert psnr > base, (solver, float(psnr), float(base))


@pytest.mark.parametrize("solver,grad", [("ddnm", "x0"), ("ddnm", "xt"), ("dps", "x0")])
def test_clip_guidance_lowers_the_clip_energy(backend, solver, grad):
    """Mean CLIP energy over 4 seeds is lower with guidance than without (same seeds, random tiny CLIP)."""
    y, seeds = lr_image(4, seed=2), (0, 1, 2, 3)
    text = backend.encode_prompt("a red fox").clip_text
    energy = {}
    for scale in (0.0, 0.3):
        res = run(backend, solver, y, 4, seeds, options={"clip_scale": scale, "clip_grad": grad})
        energy[scale] = clip_energy(backend.clip, res.x, text).mean().item()
    assert energy[0.3] < energy[0.0], energy


def test_null_space_projection_is_bound_to_the_run_operator(backend):
    stage = backend.build_stages("dps", {}, {"clip_scale": 0.2})[0]
    op = AvgPool(4, (3, 16, 16))
    den, op2 = stage.bind(op, lr_image(4))
    assert op2 is op and den.project_null is op and stage.denoiser.project_null is None
    stage = backend.build_stages("dps", {}, {"clip_scale": 0.2, "clip_project_null": False})[0]
    assert stage.bind is None


def test_no_prompt_switches_clip_guidance_off(backend):
    # (that a prompt changes the output: tests/test_backend_contract.py)
    y = lr_image(4)
    c = run(backend, "ddnm", y, 4, prompt="", options={"clip_scale": 0.3}).x
    d = run(backend, "ddnm", y, 4, prompt="a red fox", options={"clip_scale": 0.0}).x
    assert torch.equal(c, d)


def test_options_and_errors(backend, spec, tmp_path):
    for bad in ({"clip_grad": "eps"}, {"clip_window": [0.2]}, {"clip_scale": -1}, {"clip_project_null": "yes"}):
        with pytest.raises(UsageError):
            backend.build_stages("ddnm", {}, bad)
    st = backend.build_stages("dps", {}, {"clip_window": [0.9, 0.1]})[0]
    assert st.solver.steps == 250 and st.denoiser.window == (0.9, 0.1)
    no_clip = load_backend({**spec, "stages": {"unet": spec["stages"]["unet"]}}, device=CPU, dtype=torch.float32,
                           offline=True)
    with pytest.raises(UsageError, match="CLIP"):
        no_clip.encode_prompt("a red fox")
    assert no_clip.text_scores(torch.zeros(1, 3, 16, 16), "a red fox") is None
    with pytest.raises(ModelNotFoundError):
        load_backend({"backend": "pixel", "stages": {"unet": str(tmp_path / "nothing")}}, device=CPU,
                     dtype=torch.float32, offline=True)


def test_single_folder_layout(backend, tmp_path):
    """The old google/ddpm-* layout: the UNet's config.json and scheduler_config.json at the root."""
    from diffusers import DDPMScheduler

    backend.unet.save_pretrained(tmp_path)
    DDPMScheduler(num_train_timesteps=1000).save_pretrained(tmp_path)
    be = load_backend({"backend": "pixel", "stages": {"unet": str(tmp_path)}}, device=CPU, dtype=torch.float32,
                      offline=True)
    assert be.size == (16, 16) and be.schedule.T == 1000


def test_text_scores(backend):
    s = backend.text_scores(torch.rand(2, 3, 16, 16) * 2 - 1, "a red fox")
    assert s.shape == (2,) and (s >= 0).all() and (s <= 1).all()
