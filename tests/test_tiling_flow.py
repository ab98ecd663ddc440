"""Tiling the flow-matching backends (FLUX.1 [dev]/[schnell], FLUX.2 [klein] distilled/base, SD3.5) on tiny random
models whose native square is set to 16 px, so that a 32 px output needs several windows: exact LR consistency
after the final projection, batch item k = the same seed alone, one shared grid (the window's) for every window,
the text fraction per guidance kind, the memory estimate, and the refusals
(docs/tiling.md, "Flow-matching models")."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from tests.backend_helpers import lr_image, lr_psnr  # noqa: E402
from textsr import explore  # noqa: E402
from textsr.cascade import run_cascade  # noqa: E402
from textsr.errors import InputImageError, UsageError  # noqa: E402
from textsr.model_registry import load_model  # noqa: E402
from textsr.operators import AvgPool  # noqa: E402
from textsr.solvers import make_config  # noqa: E402
from textsr.testing.tiny_flux import build_tiny_flux, build_tiny_flux2  # noqa: E402
from textsr.testing.tiny_sd3 import build_tiny_sd3  # noqa: E402
from textsr.tiling import TiledDenoiser  # noqa: E402
from textsr.tiling.codec import TiledCodec  # noqa: E402
from textsr.tiling.plan import TileRequest, Tiling  # noqa: E402

NATIVE = 16  # px: 8 latents for the x2 VAEs (4 x 4 tokens of 2 x 2 patches), 4 patchified latents for FLUX.2
BUILDERS = {"flux-dev": build_tiny_flux, "flux-schnell": lambda p: build_tiny_flux(p, schnell=True),
            "flux2": build_tiny_flux2, "flux2-base": lambda p: build_tiny_flux2(p, distilled=False),
            "sd3": build_tiny_sd3}


@pytest.fixture(scope="module")
def flow(tmp_path_factory):
    out = {}
    for kind, build in BUILDERS.items():
        be = load_model(build(tmp_path_factory.mktemp(kind)), device="cpu", offline=True)
        be.native_side = NATIVE
        out[kind] = be
    return out


def _lr(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((h, w, 3)).astype(np.float32)


@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_every_flow_backend_tiles_exactly_and_batches_like_single_seeds(flow, kind):
    """A 32 x 48 output of a 16 px model: transformer and VAE on windows, DDNM exact after the final projection,
    sample 1 of a batch = seed 1 alone, the plan in the notes and results.json."""
    be = flow[kind]
    kw = dict(scale=4, model=be, solver="ddnm", steps=2, tile="auto", tile_options={"batch": 3})
    r = explore(_lr(8, 12), ["a red fox"], samples=2, **kw)
    p = r.prompts[0]
    assert p.samples.shape == (2, 32, 48, 3) and min(p.lr_psnr) > 60
    alone = explore(_lr(8, 12), ["a red fox"], samples=1, seed=1, **kw)
    np.testing.assert_allclose(alone.prompts[0].samples[0], p.samples[1], atol=1e-5)
    rec = r.results_dict()["tiling"]
    assert rec["tiled"] and rec["memory"]["tiled_bytes"] > 0
    assert any("on windows of" in n and "(16x16 px)" in n for n in r.notes)
    stages = be.build_stages("ddnm", {"steps": 2}, {}, tiling=Tiling(TileRequest("auto"), (32, 48), 4))
    den, op = stages[0].bind(AvgPool(4, (3, 32, 48)), torch.zeros(1, 3, 8, 12))
    assert isinstance(op.codec, TiledCodec) and isinstance(den.base, TiledDenoiser)  # den: decode-project-encode


def test_flow_dps_runs_through_the_windows(flow):
    """The gradient of ``|| y - A D(z0_hat) ||`` goes through the windowed transformer and the tiled decoder."""
    r = explore(_lr(8, 8), ["a red fox"], scale=4, model=flow["flux-dev"], solver="flowdps", steps=2, samples=1,
                tile="auto")
    assert r.prompts[0].samples.shape == (1, 32, 32, 3) and np.isfinite(r.prompts[0].samples).all()
    assert r.results_dict()["tiling"]["tiled"]


class Recorder:
    """A ``FlowNet`` that records the flow level and the latent size of every call."""

    def __init__(self, net, calls):
        self.net, self.calls = net, calls

    def __call__(self, x_s, s, hidden, pooled):
        self.calls.append((s, tuple(x_s.shape[-2:])))
        return self.net(x_s, s, hidden, pooled)


@pytest.mark.parametrize("kind", ["flux-dev", "flux2-base"])
def test_every_window_walks_one_grid_its_own(flow, kind, monkeypatch):
    """FLUX's resolution-dependent shift is taken from the window's token count: at every step all windows (of
    the whole-image and of the weaker window model alike) see the same level, and the levels are the window's
    grid, not the whole image's."""
    be = flow[kind]
    calls: list = []
    make_net = be.make_net
    monkeypatch.setattr(be, "make_net", lambda o: Recorder(make_net(o), calls))
    steps, out = 6, (32, 64)
    stages = be.build_stages("ddnm", {"steps": steps}, {}, tiling=Tiling(TileRequest("auto"), out, 4))
    y = torch.rand(1, 3, 8, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    run_cascade(stages, y, 4, make_config("ddnm"), seeds=[0], cond=be.encode_prompt("a red fox"))
    f = be.codec.factor
    window, whole = be.latent_native, (out[0] // f, out[1] // f)
    assert {shape for _, shape in calls} == {window}  # only windows ran
    levels = list(dict.fromkeys(s for s, _ in calls))  # in call order; each level's calls are consecutive
    assert [s for s, _ in calls] == sorted((s for s, _ in calls), reverse=True)
    cfg = stages[0].solver
    assert levels == be.grid(cfg, window).levels
    assert be.grid(cfg, whole).levels != levels  # the whole image's token count would shift the grid further


@pytest.mark.parametrize("kind,base,window", [("sd3", 4.0, 1.0), ("flux2-base", 4.0, 1.0), ("flux-dev", 3.5, 0.875)])
def test_guidance_inside_windows_is_the_text_fraction(flow, kind, base, window):
    be = flow[kind]
    st = be.build_stages("ddnm", {"steps": 2}, {}, tiling=Tiling(TileRequest("auto", text=0.25), (32, 32), 4))[0]
    den = st.denoiser
    if kind == "flux-dev":  # the distilled guidance value is the transformer's input
        assert (den.base.velocity.net.guidance, den.window_base.velocity.net.guidance) == (base, window)
    else:
        assert (den.base.velocity.scale, den.window_base.velocity.scale) == (base, window)
    full = be.build_stages("ddnm", {"steps": 2}, {}, tiling=Tiling(TileRequest("auto", text=1.0), (32, 32), 4))[0]
    assert full.denoiser.window_base is None


@pytest.mark.parametrize("kind", ["flux-schnell", "flux2"])
def test_distilled_models_mix_the_empty_prompts_velocity_inside_windows(flow, kind):
    """No guidance scale (the text branch alone is scale 1): windows get ``v_null + F (v_text - v_null)``."""
    be = flow[kind]
    tiling = Tiling(TileRequest("auto", text=0.25), (32, 32), 4)
    den = be.build_stages("ddnm", {"steps": 2}, {}, tiling=tiling)[0].denoiser
    assert den.base.velocity.scale == 1.0
    C, n = be.codec.latent_channels, be.latent_native[0]
    z = torch.randn(2, C, n, n, generator=torch.Generator().manual_seed(0))
    cond = be.encode_prompt("a red fox")
    with torch.no_grad():
        v_text = den.base.velocity(z, 0.6, cond)
        v_null = den.base.velocity(z, 0.6, be.encode_prompt(""))
        v_win = den.window_base.velocity(z, 0.6, cond)
    assert (v_text - v_null).abs().max() > 1e-4
    torch.testing.assert_close(v_win, v_null + 0.25 * (v_text - v_null), rtol=0, atol=1e-5)


def test_auto_tiles_only_beyond_what_the_model_makes(flow):
    """A flow model makes any shape up to twice its native area whole (16 px native: 512 pixels)."""
    be = flow["flux-dev"]
    assert be.native_output() == (16, 16) and be.max_pixels == 512
    assert be.makes((16, 32)) and be.makes((8, 64)) and not be.makes((24, 24)) and not be.makes((32, 32))
    whole = explore(_lr(4, 8), [""], scale=4, model=be, steps=1, samples=1, tile="auto")  # 16 x 32: whole
    assert not whole.results_dict()["tiling"]["tiled"]
    with pytest.raises(InputImageError, match=r"32x32; FLUX.1 \[dev\] makes .*up to 512 pixels.*--tile auto"):
        explore(_lr(8, 8), [""], scale=4, model=be, steps=1, samples=1)


def test_bad_flow_tile_requests_name_the_valid_values(flow):
    be, img = flow["flux-dev"], _lr(8, 8)
    kw = dict(scale=4, steps=1, samples=1, model=be)
    with pytest.raises(UsageError, match=r"tile 18 is not a multiple of 4 .*use 16 or 20"):
        explore(img, [""], tile=18, **kw)
    with pytest.raises(UsageError, match="tile_overlap must be a multiple of 2"):
        explore(img, [""], tile=16, tile_overlap=3, **kw)
    with pytest.raises(UsageError, match=r"tile_overlap must be smaller than the window: 0 to 14 px"):
        explore(img, [""], tile="auto", tile_overlap=16, **kw)
    with pytest.raises(UsageError, match=r"tile 24 is larger than the images FLUX.1 \[dev\] makes .*from 4 to 20 px"):
        explore(img, [""], tile=24, **kw)
    with pytest.raises(InputImageError, match=r"27x24; FLUX.1 \[dev\] makes outputs whose sides are multiples of 4 "
                                              r"px \(its VAE's x2 times its x2 patches\): at x3 .*Crop the LR to 8x8 "
                                              r"\(-> 24x24\) or pad it to 12x8 \(-> 36x24\)\.$"):
        explore(_lr(9, 8), [""], tile="auto", **{**kw, "scale": 3})
    sd3 = flow["sd3"]
    sd3.native_side = 1024  # windows larger than its positional embedding (32 patches: 128 px) are refused
    try:
        with pytest.raises(UsageError, match=r"tile 1024 is larger .*from 4 to 128 px"):
            sd3.check_tiling((64, 64), 4, Tiling(TileRequest("auto"), (256, 256), 4))
        sd3.check_tiling((64, 64), 4, Tiling(TileRequest(128), (256, 256), 4))  # 256 px: fine on 128 px windows
    finally:
        sd3.native_side = NATIVE


def test_flow_memory_estimate_is_flat_with_windows_and_the_refusal_names_tile(flow, monkeypatch):
    from textsr.tiling import checks, memory

    be = flow["sd3"]

    def est(lr):
        return memory.estimate(be, (lr, lr), 4, Tiling(TileRequest("auto"), (4 * lr, 4 * lr), 4), 1)

    small, big = est(8), est(16)  # 32 px and 64 px outputs of a 16 px model
    tiled = lambda e: dict(e.parts_tiled)["transformer on windows (text 0.5)"]  # noqa: E731
    whole = lambda e: dict(e.parts_whole)["transformer"]  # noqa: E731
    assert tiled(big) == tiled(small) < whole(small) < whole(big)
    assert dict(big.parts_tiled)["autoencoder decoder"] == dict(small.parts_tiled)["autoencoder decoder"]
    monkeypatch.setattr(checks, "available_memory", lambda device: int(1.25 * big.tiled) + 1024)
    with pytest.raises(UsageError, match=r"needs about .* free on cpu: run on windows .*--tile auto"):
        checks.check_memory(be, (16, 16), 4, None, 1, grad=False, device=torch.device("cpu"))
    checks.check_memory(be, (16, 16), 4, Tiling(TileRequest("auto"), (64, 64), 4), 1, grad=False,
                        device=torch.device("cpu"))


def test_flow_windows_stay_exact_at_a_larger_size(flow):
    """96 x 96 from 24 x 24 (6 x 6 windows per step on the 16 px model): DDNM+ is exact after the projection."""
    be = flow["flux2"]
    y = lr_image(4, size=96, seed=2)
    tiling = Tiling(TileRequest("auto"), (96, 96), 4)
    st = be.build_stages("ddnm+", {"steps": 2}, {}, tiling=tiling)
    res = run_cascade(st, y, 4, make_config("ddnm+"), seeds=[0], cond=be.encode_prompt("a red fox"))
    x = be.postprocess(res.x, y, res.operators[-1])
    assert x.shape == (1, 3, 96, 96) and torch.all(lr_psnr(x, y, AvgPool(4, (3, 96, 96))) > 60)
