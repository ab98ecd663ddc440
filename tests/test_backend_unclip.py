"""Karlo unCLIP backend on a tiny random Karlo built in code, saved, and loaded back through load_backend."""

import json
from functools import partial

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("diffusers")

from tests import backend_helpers as helpers  # noqa: E402
from textsr.backends.unclip import load_backend  # noqa: E402
from textsr.backends.unclip_prior import mix_embeddings, unclip_classes  # noqa: E402
from textsr.backends.unclip_unet import DecoderCond  # noqa: E402
from textsr.errors import InputImageError, ModelNotFoundError, UsageError  # noqa: E402
from textsr.operators import AvgPool  # noqa: E402
from textsr.testing.tiny_unclip import build_tiny_unclip  # noqa: E402

CPU = torch.device("cpu")
FAST = {"prior_steps": 2}
STEPS = {"steps": 4}


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    path = build_tiny_unclip(tmp_path_factory.mktemp("karlo"))
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def backend(spec):
    return load_backend(spec, device=CPU, dtype=torch.float32, offline=True)


@pytest.fixture(scope="module")
def text_only(spec):
    s = {**spec, "stages": {"pipeline": spec["stages"]["pipeline"]}}
    return load_backend(s, device=CPU, dtype=torch.float32, offline=True)


run = partial(helpers.run, steps=STEPS["steps"], fixed_options=FAST)


def lr_image(scale, seed=0, size=32):
    return helpers.lr_image(scale, seed, size)


def lr_psnr(res, y):
    return helpers.lr_psnr(res.x, y, res.operators[-1])


def test_reload_workaround_and_layout(spec):
    cls = unclip_classes()
    pipe = cls.UnCLIPPipeline.from_pretrained(spec["stages"]["pipeline"], local_files_only=True)
    assert type(pipe.text_proj).__name__ == "UnCLIPTextProjModel"


def test_describe_and_sizes(backend):
    d = backend.describe()
    assert d["decoder_size"] == [8, 8] and d["output_size"] == [32, 32] and d["image_encoder"]
    backend.check_size((8, 8), 4)
    backend.check_size((4, 4), 8)
    with pytest.raises(InputImageError, match="8x8 at x4"):
        backend.check_size((16, 16), 4)
    with pytest.raises(InputImageError, match="multiple of 4"):
        backend.check_size((16, 16), 2)


@pytest.mark.parametrize("solver,scale", [("ddnm", 4), ("ddnm", 8), ("ddnm+", 8)])
def test_ddnm_exact_lr_consistency(backend, solver, scale):
    y = lr_image(scale)
    res = run(backend, solver, y, scale, options={"unclip_lambda": 0.5})
    assert res.x.shape == (2, 3, 32, 32) and res.stage_outputs[0].shape == (2, 3, 8, 8)
    psnr = lr_psnr(res, y)
    assert (psnr >= 60).all(), psnr
    # the decoder stage is consistent with y at its own scale too (operator A_{s/4})
    A1 = res.operators[0]
    assert (A1.A(res.stage_outputs[0]) - y).abs().max() < 1e-3


def test_dps_and_pigdm_lower_the_residual(backend):
    y, seeds = lr_image(8, seed=1), (0, 1, 2)
    base = lr_psnr(run(backend, "plain", y, 8, seeds), y).mean()
    for solver in ("dps", "pigdm"):
        psnr = lr_psnr(run(backend, solver, y, 8, seeds), y).mean()
        assert psnr > base, (solver, float(psnr), float(base))


def test_lambda_zero_is_the_pure_text_path(backend, text_only):
    y = lr_image(8)
    with_encoder = run(backend, "ddnm", y, 8, options={"unclip_lambda": 0.0}).x
    without = run(text_only, "ddnm", y, 8).x
    assert torch.equal(with_encoder, without)
    with pytest.raises(UsageError, match="image encoder"):
        text_only.build_stages("ddnm", {}, {"unclip_lambda": 0.5})


def test_lambda_one_is_the_image_embedding_path(backend):
    y = lr_image(8)
    e_img = backend.image_embedding(y)
    e_prior = torch.randn(3, e_img.shape[-1], generator=torch.Generator().manual_seed(0))
    # "mix" norm: lambda = 1 is exactly the image embedding, whatever the prior said
    assert torch.allclose(mix_embeddings(e_prior, e_img, 1.0, "mix"), e_img.expand(3, -1), atol=1e-5)
    # "prior" norm (default): the image embedding's direction at the prior's norm
    e = mix_embeddings(e_prior, e_img, 1.0, "prior")
    assert torch.allclose(F.normalize(e, dim=-1), F.normalize(e_img, dim=-1).expand(3, -1), atol=1e-5)
    assert torch.allclose(e.norm(dim=-1), e_prior.norm(dim=-1), atol=1e-4)
    assert torch.equal(mix_embeddings(e_prior, e_img, 0.0), e_prior)
    # the decoder's conditioning embedding after binding to y
    stage = backend.build_stages("ddnm", STEPS, {**FAST, "unclip_lambda": 1.0, "unclip_norm": "mix"})[0]
    den, _ = stage.bind(AvgPool(2, (3, 8, 8)), y)
    assert torch.allclose(den.embedding(e_prior), e_img.expand(3, -1), atol=1e-5)
    # end to end: with lambda = 1 ("mix") the prior no longer matters, with lambda = 0.5 it does
    out = {g: run(backend, "ddnm", y, 8, options={"unclip_lambda": 1.0, "unclip_norm": "mix", "prior_guidance": g}).x
           for g in (1.0, 4.0)}
    assert torch.allclose(out[1.0], out[4.0], atol=1e-5)
    half = {g: run(backend, "ddnm", y, 8, options={"unclip_lambda": 0.5, "prior_guidance": g}).x for g in (1.0, 4.0)}
    assert (half[1.0] - half[4.0]).abs().max() > 1e-4


def test_cfg_scale_one_is_the_text_branch(backend):
    """eps(w) = eps_u + w (eps_c - eps_u): w = 1 (text branch only, one call) equals the midpoint of w = 0 and 2
    (compared without Karlo's x0 clipping, which is not linear)."""
    from dataclasses import replace

    stages = backend.build_stages("ddnm", STEPS, {**FAST, "decoder_guidance": 1.0})
    den1 = stages[0].denoiser
    den1 = replace(den1, adapter=replace(den1.adapter, clip=None))
    den0, den2 = replace(den1, guidance=0.0), replace(den1, guidance=2.0)
    text = backend.encode_prompt("a red fox")
    from textsr.solvers import Noise

    cond = DecoderCond(text, backend.sample_prior(text, Noise.from_seeds([0, 1]), 4.0, 2))
    x_t = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        e1, e0, e2 = (d(x_t, 500, cond).eps for d in (den1, den0, den2))
    assert torch.allclose(e1, (e0 + e2) / 2, atol=1e-5)


def test_options_and_errors(backend, spec, tmp_path):
    with pytest.raises(UsageError, match="stage"):
        backend.build_stages("ddnm", {"stage_9": {"steps": 3}}, {})
    with pytest.raises(UsageError):
        backend.build_stages("ddnm", {}, {"unclip_lambda": 2.0})
    st = backend.build_stages("dps", {"super_res": {"steps": 7}}, {})
    assert st[0].solver.steps == 250 and st[0].solver.zeta == 0.5 and st[1].solver.steps == 7
    with pytest.raises(ModelNotFoundError):
        load_backend({"backend": "unclip", "stages": {"pipeline": str(tmp_path / "nothing")}},
                     device=CPU, dtype=torch.float32, offline=True)
    with pytest.raises(UsageError, match="unknown"):
        load_backend({**spec, "defaults": {"nope": 1}}, device=CPU, dtype=torch.float32, offline=True)


def test_image_variations_layout(backend, spec, tmp_path):
    """An image encoder folder laid out like Karlo's image-variation repository (image_encoder/ +
    feature_extractor/) loads too and gives the same embedding."""
    from textsr.testing.tiny_clip import tiny_image_processor

    backend.image_encoder.save_pretrained(tmp_path / "image_encoder")
    tiny_image_processor(32).save_pretrained(tmp_path / "feature_extractor")
    be = load_backend({**spec, "stages": {**spec["stages"], "image_encoder": str(tmp_path)}}, device=CPU,
                      dtype=torch.float32, offline=True)
    y = lr_image(8)
    assert torch.allclose(be.image_embedding(y), backend.image_embedding(y), atol=1e-6)


def test_text_scores(backend):
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    s = backend.text_scores(x, "a red fox")
    assert s.shape == (2,) and (s >= 0).all() and (s <= 1).all()
    assert backend.text_scores(x, "") is None


def test_registry_loads_the_spec_and_a_bare_pipeline_folder(spec):
    from pathlib import Path

    from textsr.model_registry import load_model

    folder = Path(spec["stages"]["pipeline"])
    assert load_model(str(folder.parent / "textsr_model.json"), device="cpu", offline=True).image_encoder is not None
    assert type(load_model(str(folder), device="cpu", offline=True)).__name__ == "UnCLIPBackend"
