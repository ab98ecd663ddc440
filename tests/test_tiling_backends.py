"""Tiling through every backend: outputs larger than the tiny models make stay exactly LR-consistent, each
window sees its crop of the condition, cascades plan a whole-image low-resolution pass, the autoencoder
runs on windows, bad tile requests and oversized untiled requests are refused before any work, and the
memory estimate is flat in the image size with windows."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from tests.backend_helpers import lr_image, lr_psnr
from textsr import explore
from textsr.cascade import run_cascade
from textsr.cli import main
from textsr.errors import InputImageError, UsageError
from textsr.model_registry import load_model
from textsr.operators import AvgPool
from textsr.solvers import make_config
from textsr.tiling import TiledDenoiser
from textsr.tiling.cascade import CascadeSizes
from textsr.tiling.codec import TiledCodec
from textsr.tiling.plan import TileRequest, Tiling


def _load(module: str, name: str, tmp_path_factory):
    import importlib

    build = getattr(importlib.import_module(f"textsr.testing.{module}"), name)
    return load_model(str(build(tmp_path_factory.mktemp(name))), device="cpu", offline=True)


@pytest.fixture(scope="module")
def pixel(tmp_path_factory):
    from textsr.testing.tiny_pixel import build_tiny_pixel

    spec = build_tiny_pixel(tmp_path_factory.mktemp("pixel"), clip=False)  # a 16 px UNet
    return load_model(str(spec), device="cpu", offline=True)


@pytest.fixture(scope="module")
def tiny_if(tmp_path_factory):
    return _load("tiny_deepfloyd_if", "build_tiny_if", tmp_path_factory)  # 8 px stage I, 32 px stage II


def test_cascade_plans_whole_low_resolution_pass_then_super_resolution_passes():
    cs = CascadeSizes("stage_1", (64, 64), 8, "stage_2", (256, 256), 8)
    plan = lambda lr, s: [(p.name, p.size[0], p.low) for p in cs.passes((lr * s, lr * s), s, True)]  # noqa: E731
    assert plan(64, 4) == [("stage_1", 64, True), ("stage_2", 256, False)]  # fits: the usual cascade
    assert plan(128, 4) == [("stage_1", 128, True), ("stage_2", 512, False)]  # x4: stage I on windows
    assert plan(64, 8) == [("stage_1", 128, True), ("stage_2", 512, False)]
    assert plan(64, 16) == [("stage_1", 64, True), ("stage_2@256x256", 256, False), ("stage_2", 1024, False)]
    assert plan(32, 16) == [("stage_1", 32, True), ("stage_2@128x128", 128, False), ("stage_2", 512, False)]
    assert plan(64, 32) == [("stage_1", 128, True), ("stage_2@512x512", 512, False), ("stage_2", 2048, False)]


def test_pixel_model_makes_any_size_through_explore(pixel):
    """16 px model -> 64 x 48 output: exact DDNM consistency, batch item = same seed alone, recorded."""
    y = np.random.default_rng(0).random((12, 16, 3)).astype(np.float32)
    kw = dict(scale=4, model=pixel, solver="ddnm", steps=3, tile="auto", tile_options={"batch": 3},
              model_options={"clip_scale": 0.0})
    r = explore(y, [""], samples=2, **kw)
    assert r.prompts[0].samples.shape == (2, 48, 64, 3) and min(r.prompts[0].lr_psnr) > 60
    alone = explore(y, [""], samples=1, seed=1, **kw)
    np.testing.assert_allclose(alone.prompts[0].samples[0], r.prompts[0].samples[1], atol=1e-5)
    rec = r.results_dict()["tiling"]
    assert rec["tiled"] and rec["request"]["tile"] == "auto"
    assert rec["memory"]["tiled_bytes"] < rec["memory"]["whole_bytes"]
    assert any("windows of 16x16" in n for n in r.notes)


def test_if_stage_2_windows_see_their_crop_of_the_condition(tiny_if):
    """Pixels only one window covers equal the stage-II UNet run on that crop with the cropped condition."""
    stages = tiny_if.build_stages("ddnm", {"steps": 2}, {}, tiling=Tiling(TileRequest("auto"), (64, 64), 8))
    den = stages[-1].denoiser
    assert isinstance(den, TiledDenoiser) and den.window == (32, 32) and den.overlap == (8, 8)
    g = torch.Generator().manual_seed(0)
    x, prev = torch.randn(2, 3, 64, 64, generator=g), torch.rand(2, 3, 16, 16, generator=g) * 2 - 1
    from textsr.solvers import Noise

    cond = stages[-1].condition(tiny_if.encode_prompt("a red fox"), prev, Noise.from_seeds([0, 1]))
    fixed = TiledDenoiser(den.base, den.window, den.overlap, shift=False)
    assert {(w.top, w.left) for w in fixed.grid((64, 64), 300)} == {(r, c) for r in (0, 16, 32) for c in (0, 16, 32)}
    with torch.no_grad():
        fused = fixed(x, 300, cond).x0
        crop = den.base(x[..., 32:, :32], 300, dataclasses.replace(cond, image=cond.image[..., 32:, :32])).x0
    # rows 48-63, columns 0-15: only the window at (32, 0) covers them
    torch.testing.assert_close(fused[..., 48:, :16], crop[..., 16:, :16], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(fused[..., 32:48, :16], crop[..., :16, :16], atol=1e-3)  # blended with (16, 0)


@pytest.mark.parametrize("lr,scale,stages", [(8, 8, ["stage_1", "stage_2"]),
                                             (4, 16, ["stage_1", "stage_2@16x16", "stage_2"])])
def test_if_on_windows_stays_exact(tiny_if, lr, scale, stages):
    y = torch.rand(1, 3, lr, lr, generator=torch.Generator().manual_seed(1)) * 2 - 1
    tiling = Tiling(TileRequest("auto"), (lr * scale,) * 2, scale)
    assert tiny_if.check_tiling((lr, lr), scale, tiling)
    st = tiny_if.build_stages("ddnm", {"steps": 2}, {}, tiling=tiling)
    assert [s.name for s in st] == stages
    res = run_cascade(st, y, scale, make_config("ddnm"), seeds=[0, 1], cond=tiny_if.encode_prompt("a red fox"))
    assert res.x.shape == (2, 3, lr * scale, lr * scale)
    assert torch.all(lr_psnr(res.x, y, AvgPool(scale, (3, lr * scale, lr * scale))) > 60)


@pytest.mark.parametrize("module,name,options", [
    ("tiny_unclip", "build_tiny_unclip", {"prior_steps": 2}),
    ("tiny_latent", "build_tiny_latent", {}),
    ("tiny_kandinsky", "build_tiny_kandinsky", {"prior_steps": 2}),
])
def test_cascade_and_latent_backends_on_windows(module, name, options, tmp_path_factory):
    be = _load(module, name, tmp_path_factory)
    lr, scale = 8, 8  # 64 px: Karlo's 32 px super-resolution, SD's 16 px (8 latents) on windows
    tiling = Tiling(TileRequest("auto"), (64, 64), scale)
    be.check_tiling((lr, lr), scale, tiling)
    st = be.build_stages("ddnm", {"steps": 2}, {**options}, tiling=tiling)
    y = lr_image(scale, size=64)
    res = run_cascade(st, y, scale, make_config("ddnm"), seeds=[0, 1], cond=be.encode_prompt("a red fox"))
    x = be.postprocess(res.x, y, res.operators[-1])
    assert x.shape == (2, 3, 64, 64) and torch.all(lr_psnr(x, y, AvgPool(scale, (3, 64, 64))) > 60)
    if module != "tiny_unclip":  # the latent stage's autoencoder decodes on windows too
        assert isinstance(res.operators[-1].codec, TiledCodec)


class LocalCodec:
    """An autoencoder without any context: decode = tanh then x2 nearest, encode = 2x2 mean then atanh."""

    factor, latent_channels = 2, 3

    def decode(self, z):
        return torch.tanh(z).repeat_interleave(2, -2).repeat_interleave(2, -1)

    def encode(self, x):
        return torch.atanh(torch.nn.functional.avg_pool2d(x, 2).clamp(-0.999, 0.999))


def test_tiled_codec_equals_the_whole_image_codec_when_the_codec_is_local():
    z = torch.randn(2, 3, 21, 30, dtype=torch.float64)
    t = TiledCodec(LocalCodec(), (8, 8), (2, 2), batch=3)
    torch.testing.assert_close(t.decode(z), LocalCodec().decode(z), rtol=0, atol=1e-12)
    x = t.decode(z)
    torch.testing.assert_close(t.encode(x), LocalCodec().encode(x), rtol=0, atol=1e-9)


# -- refusals before any work ------------------------------------------------------------------------
def test_bad_tile_requests_name_the_valid_values(pixel, tiny_if, tmp_path_factory):
    img = np.random.default_rng(0).random((16, 16, 3)).astype(np.float32)
    kw = dict(scale=4, steps=2, samples=1)
    with pytest.raises(UsageError, match=r"tile_overlap must be smaller than the tile: 0 to 15"):
        explore(img, [""], model=pixel, tile=16, tile_overlap=16, **kw)
    with pytest.raises(UsageError, match="off, auto or a window side"):
        explore(img, [""], model=pixel, tile="big", **kw)
    with pytest.raises(UsageError, match="unknown tile option"):
        explore(img, [""], model=pixel, tile="auto", tile_options={"shfit": False}, **kw)
    with pytest.raises(UsageError, match=r"tile 33 is not a multiple of 2 .*use 32 or 34"):
        explore(img, [""], model=tiny_if, tile=33, **kw)
    latent = _load("tiny_latent", "build_tiny_latent", tmp_path_factory)
    with pytest.raises(UsageError, match=r"not a multiple of 4 .*use 16 or 20"):
        explore(img, [""], model=latent, tile=18, **kw)
    with pytest.raises(UsageError, match="tile_overlap must be a multiple of 2"):
        explore(img, [""], model=latent, tile=16, tile_overlap=3, **kw)
    with pytest.raises(UsageError, match="exact world of 64x64 scenes.*leave --tile out"):
        explore(img[:4, :4], ["a red circle"], model="builtin-shapes", tile=32, **{**kw, "scale": 16})
    # an untiled request far above the model's size is refused, naming --tile
    with pytest.raises(InputImageError, match=r"more than 2x the 32x32 images .*--tile auto"):
        explore(img, [""], model=tiny_if, scale=8, steps=2, samples=1)
    with pytest.raises(InputImageError, match="--tile auto"):
        explore(img, [""], model=pixel, **kw)


def test_memory_refusal_names_tile_and_estimate_is_flat_with_windows(pixel, monkeypatch):
    from textsr.tiling import checks, memory

    def est(lr):
        return memory.estimate(pixel, (lr, lr), 4, Tiling(TileRequest("auto"), (4 * lr, 4 * lr), 4), 2)

    small, big = est(16), est(64)  # 64 px and 256 px outputs of a 16 px model
    act = lambda e, k: dict(getattr(e, k))["pixel UNet"]  # noqa: E731
    assert act(big, "parts_tiled") == act(small, "parts_tiled")  # windows: flat in the image size
    assert 12 < act(big, "parts_whole") / act(small, "parts_whole") < 20  # whole image: ~16x for 16x pixels
    monkeypatch.setattr(checks, "available_memory", lambda device: int(1.25 * small.tiled) + 1024)
    img = np.random.default_rng(0).random((16, 16, 3)).astype(np.float32)
    with pytest.raises(UsageError, match=r"needs about .* free on cpu: run on windows .*--tile auto"):
        checks.check_memory(pixel, (16, 16), 4, None, 2, grad=False, device=torch.device("cpu"))
    r = explore(img, [""], model=pixel, scale=4, steps=1, samples=2, tile="auto")  # fits on windows
    assert r.results_dict()["tiling"]["memory"]["tiled_bytes"] == small.tiled


def test_cli_tile_options(tmp_path):
    from PIL import Image

    from textsr.testing.tiny_pixel import build_tiny_pixel

    spec = build_tiny_pixel(tmp_path / "model", clip=False)
    img = tmp_path / "lr.png"
    Image.fromarray((np.random.default_rng(0).random((16, 16, 3)) * 255).astype(np.uint8)).save(img)
    runner = CliRunner()
    base = ["upscale", str(img), "-x", "4", "-m", str(spec), "--steps", "2", "-n", "1", "-q"]
    bad = runner.invoke(main, [*base, "--tile", "huge", "-o", str(tmp_path / "a")])
    assert bad.exit_code == 2 and "off, auto or a window side" in bad.output
    ok = runner.invoke(main, [*base, "--tile", "auto", "--tile-overlap", "6", "--tile-option", "shift=false",
                              "--tile-option", "batch=4", "-o", str(tmp_path / "b")])
    assert ok.exit_code == 0, ok.output
    rec = json.loads((tmp_path / "b" / "results.json").read_text())["tiling"]
    assert rec["tiled"] and rec["request"] == {"tile": "auto", "overlap": 6, "shift": False, "batch": 4, "text": 0.5,
                                               "seed": 0}


def test_text_inside_windows_is_a_fraction_of_the_guidance(tiny_if):
    tiling = Tiling(TileRequest("auto", text=0.25), (64, 64), 8)
    st = tiny_if.build_stages("ddnm", {"steps": 2}, {"guidance_scale": [6.0, 4.0]}, tiling=tiling)
    assert [s.denoiser.base.guidance_scale for s in st] == [6.0, 4.0]
    assert [s.denoiser.window_base.guidance_scale for s in st] == [1.5, 1.0]
    full = tiny_if.build_stages("ddnm", {"steps": 2}, {}, tiling=Tiling(TileRequest("auto", text=1.0), (64, 64), 8))
    assert all(s.denoiser.window_base is None for s in full)


def test_particles_on_windows_go_through_the_denoiser_in_chunks_with_the_same_numbers(tmp_path):
    """A tiled particle run (TDS on windows of a 16 px model, float64: float32 rounding that depends on the batch
    can flip a resampling draw): the particles reach the tiled denoiser in chunks of the batch size, and the
    samples and evidence equal the run with every particle at once."""
    from textsr.testing.tiny_pixel import build_tiny_pixel

    pixel = load_model(str(build_tiny_pixel(tmp_path, clip=False)), device="cpu", dtype="float64", offline=True)
    y = np.random.default_rng(1).random((8, 8, 3)).astype(np.float32)
    kw = dict(scale=4, model=pixel, particles=2, steps=2, samples=2, tile="auto", tile_options={"shift": False},
              model_options={"clip_scale": 0.0})
    rows, real = [], TiledDenoiser.__call__

    def counted(self, x, t, cond=None):
        rows.append(x.shape[0])
        return real(self, x, t, cond)

    TiledDenoiser.__call__ = counted
    try:
        whole = explore(y, [""], **kw)  # 4 particles per call
        assert max(rows) == 4
        rows.clear()
        chunked = explore(y, [""], batch_size=1, **kw)  # one sample's 2 particles per batch, 1 per call
        assert max(rows) == 1 and chunked.results_dict()["tiling"]["tiled"]
    finally:
        TiledDenoiser.__call__ = real
    np.testing.assert_array_equal(chunked.prompts[0].samples, whole.prompts[0].samples)
    assert chunked.prompts[0].evidence.log_z_samples == whole.prompts[0].evidence.log_z_samples
