"""EXPERIMENTAL flow-matching backends (FLUX.1, FLUX.2 [klein], SD3.5) on tiny random models built in code and
loaded back through the real loading code: the one loop reproduces each diffusers pipeline's own sampler,
packing and codecs round-trip, the grid follows the size and the solver, sizes, guidance kinds, prompts, load
options and the LR-consistency record (the shared contract is tests/test_backend_contract.py)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from tests import backend_helpers as helpers  # noqa: E402
from textsr import explore  # noqa: E402
from textsr.backends.flux import pack, unpack  # noqa: E402
from textsr.backends.flux2 import patchify, unpatchify  # noqa: E402
from textsr.errors import InputImageError, UsageError  # noqa: E402
from textsr.model_registry import load_model  # noqa: E402
from textsr.operators import AvgPool  # noqa: E402
from textsr.solvers import Noise, Problem, sample  # noqa: E402
from textsr.testing.tiny_flux import build_tiny_flux, build_tiny_flux2  # noqa: E402
from textsr.testing.tiny_sd3 import build_tiny_sd3  # noqa: E402

BUILDERS = {"flux": build_tiny_flux, "flux-schnell": lambda p: build_tiny_flux(p, schnell=True),
            "flux2": build_tiny_flux2, "flux2-base": lambda p: build_tiny_flux2(p, distilled=False),
            "sd3": build_tiny_sd3}


@pytest.fixture(scope="module")
def specs(tmp_path_factory):
    return {k: b(tmp_path_factory.mktemp(k)) for k, b in BUILDERS.items()}


@pytest.fixture(scope="module")
def backends(specs):
    return {k: load_model(p, device="cpu", offline=True) for k, p in specs.items()}


def _pipeline(spec_path):
    from diffusers import DiffusionPipeline

    folder = json.loads(spec_path.read_text())["stages"]["pipeline"]
    return DiffusionPipeline.from_pretrained(folder, local_files_only=True).to(torch.float32)


def _our_latents(be, options: dict, steps: int, z: torch.Tensor, prompt: str) -> torch.Tensor:
    """The plain flow sampler (DDIM eta 0 = the flow ODE's Euler step) through the backend's stage."""
    stage = be.build_stages("plain", {"steps": steps, "eta": 0.0, "step_kind": "ddim"}, options)[0]
    y = helpers.lr_image(4, size=32)
    den, op = stage.bind(AvgPool(4, (3, 32, 32)), y)
    noise = Noise.from_seeds(list(range(z.shape[0])))
    with torch.no_grad():
        return sample(den, Problem(op, y), stage.solver, noise, be.encode_prompt(prompt), x_T=z).x


@pytest.mark.parametrize("kind,options,steps", [("flux", {"guidance_scale": 3.5}, 5), ("flux-schnell", {}, 4),
                                                ("flux2", {}, 4), ("flux2-base", {"guidance_scale": 2.5}, 5),
                                                ("sd3", {"guidance_scale": 3.0}, 6)])
def test_the_one_loop_reproduces_the_diffusers_pipeline(specs, backends, kind, options, steps):
    """Same latents in, same final latents out as the model's own pipeline (output_type="latent"): the grid (shift,
    resolution-dependent mu), the transformer's time input, packing and ids, text encoding and guidance all match."""
    be, pipe = backends[kind], _pipeline(specs[kind])
    C = be.codec.latent_channels
    z = torch.randn(2, C, 32 // be.codec.factor, 32 // be.codec.factor, generator=torch.Generator().manual_seed(3))
    ours = _our_latents(be, options, steps, z, "a red fox")
    kw = dict(prompt=["a red fox"] * 2, num_inference_steps=steps, height=32, width=32, output_type="latent")
    if "guidance_scale" in options or kind.startswith("flux2"):
        kw["guidance_scale"] = options.get("guidance_scale", 1.0)
    if kind == "flux-schnell":
        kw["max_sequence_length"] = 256  # [schnell]'s T5 length (its model card); the pipeline defaults to 512
    with torch.no_grad():
        if kind.startswith("flux2"):
            ref = pipe(latents=z, **kw).images
            mean, std = be.codec._stats(ours)
            ours = unpatchify(ours * std + mean)
        elif kind.startswith("flux"):
            ref = unpack(pipe(latents=pack(z), **kw).images, z.shape[2], z.shape[3])
        else:
            ref = pipe(latents=z, **kw).images
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, rtol=0, atol=2e-4)


def test_packing_and_the_flux2_codec_round_trip(backends):
    from diffusers import Flux2KleinPipeline, FluxPipeline

    z = torch.randn(2, 4, 6, 10)
    assert torch.equal(pack(z), FluxPipeline._pack_latents(z, 2, 4, 6, 10))
    assert torch.equal(unpack(pack(z), 6, 10), z)
    assert torch.equal(patchify(z), Flux2KleinPipeline._patchify_latents(z))
    assert torch.equal(unpatchify(patchify(z)), z)
    codec = backends["flux2"].codec
    x = helpers.lr_image(1, size=32)
    with torch.no_grad():
        lat = codec.encode(x)
        assert lat.shape == (1, 16, 8, 8) and codec.factor == 4
        mean, std = codec._stats(lat)  # E = normalised patchified posterior mean
        raw = codec.vae.encode(x).latent_dist.mode()
        torch.testing.assert_close(lat, (patchify(raw) - mean) / std)
        torch.testing.assert_close(codec.decode(lat), codec.vae.decode(raw).sample, rtol=0, atol=1e-5)


def test_the_grid_follows_the_output_size_and_the_solver(backends):
    flux, sd3 = backends["flux"], backends["sd3"]
    cfg = flux.build_stages("ddnm", {"steps": 8}, {})[0].solver
    small, large = flux.grid(cfg, (16, 16)).levels, flux.grid(cfg, (128, 128)).levels
    assert small[0] == large[0] == 1.0 and all(b > a for a, b in zip(small[1:], large[1:]))  # FLUX: mu grows
    assert sd3.grid(cfg, (16, 16)).levels == sd3.grid(cfg, (128, 128)).levels  # SD3: no resolution shift
    fd = flux.build_stages("flowdps", {}, {})[0].solver
    own = flux.grid(fd, (16, 16)).levels
    assert len(own) == 28 and own[0] == 1.0 and own[-1] == pytest.approx(4e-3 / (1 + 3e-3), rel=1e-6)  # shift 4
    den, _ = flux.build_stages("flowdps", {"grid": "model", "steps": 8}, {})[0].bind(
        AvgPool(4, (3, 32, 32)), helpers.lr_image(4, size=32))
    assert den.schedule.levels == small
    for solver in ("pigdm", "tds"):
        with pytest.raises(UsageError, match=r"SVD.*use one of .*flowdps"):
            flux.build_stages(solver, {}, {})


@pytest.mark.parametrize("lr,scale,ok", [((8, 8), 4, True), ((4, 12), 4, True), ((1, 1), 32, True), ((3, 8), 4, True),
                                         ((5, 8), 3, False), ((9, 8), 2, False)])
def test_sizes_the_model_makes(backends, lr, scale, ok):
    be = backends["flux"]  # x2 VAE, 2 x 2 patches: sides multiples of 4
    if ok:
        be.check_size(lr, scale)
        return
    with pytest.raises(InputImageError, match=r"multiples of 4 px.*LR sides must be multiples of") as e:
        be.check_size(lr, scale)
    offered = re.findall(r"to (\d+)x(\d+) \(", str(e.value))
    assert offered
    for h, w in offered:
        be.check_size((int(h), int(w)), scale)  # every size the message offers works


def test_sizes_at_real_multiples_and_the_2_megapixel_cap(backends, monkeypatch):
    be = backends["sd3"]
    with pytest.raises(InputImageError, match=r"positional embedding covers output sides up to 128 px"):
        be.check_size((4, 40), 4)  # 16 x 160: few pixels, but longer than the tiny SD3's embedding (32 patches)
    monkeypatch.setattr(be, "patch", 8)  # x2 VAE x 8: the real models' multiple of 16
    monkeypatch.setattr(be, "max_side", lambda: None)
    be.check_size((64, 64), 16)
    be.check_size((256, 192), 4)  # 1024 x 768: non-square
    with pytest.raises(InputImageError, match=r"800x600.*multiples of 16 px.*Crop the LR to 200x148 \(-> 800x592\) "
                                              r"or pad it to 200x152 \(-> 800x608\)"):
        be.check_size((200, 150), 4)
    with pytest.raises(InputImageError, match=r"2048x2048.*up to 2.1 MP.*fits at x2 \(-> 1024x1024\); at x4 the LR "
                                              r"may have about 131,072 pixels \(e.g. 360x360\)"):
        be.check_size((512, 512), 4)
    be.check_size((360, 360), 4)


def test_guidance_kinds_and_their_errors(backends):
    with pytest.raises(UsageError, match=r"FLUX.1 \[schnell\] is distilled and takes no guidance.*guidance_scale.*"
                                         r"options: none"):
        backends["flux-schnell"].build_stages("ddnm", {}, {"guidance_scale": 3.0})
    with pytest.raises(UsageError, match=r"FLUX.1 \[dev\] takes a distilled guidance.*negative_prompt.*guidance_scale"):
        backends["flux"].build_stages("ddnm", {}, {"negative_prompt": "blurry"})
    with pytest.raises(UsageError, match=r"(?s)bogus.*known"):
        backends["sd3"].build_stages("ddnm", {}, {"bogus": 1})
    be = backends["sd3"]
    cond = be.encode_prompt("a red fox")
    z = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    vel = {w: be.make_denoiser(be.parse_options({"guidance_scale": w})).velocity for w in (0.0, 1.0, 2.0)}
    with torch.no_grad():
        v0, v1, v2 = (vel[w](z, 0.6, cond) for w in (0.0, 1.0, 2.0))
    torch.testing.assert_close(v1, (v0 + v2) / 2, rtol=0, atol=1e-5)  # linear in w; w = 1: the text branch
    neg = be.make_denoiser(be.parse_options({"guidance_scale": 2.0, "negative_prompt": "blurry"})).velocity
    with torch.no_grad():
        assert (neg(z, 0.6, cond) - v2).abs().max() > 1e-4
    dev = backends["flux"]
    a, b = (dev.make_denoiser(dev.parse_options({"guidance_scale": g})).velocity for g in (1.0, 5.0))
    zf = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (a(zf, 0.5, dev.encode_prompt("x")) - b(zf, 0.5, dev.encode_prompt("x"))).abs().max() > 1e-4


def test_long_prompts_are_truncated_with_a_note(backends):
    long = " ".join(["red"] * 300)
    for kind in ("flux", "flux2", "sd3"):
        notes = backends[kind].prompt_notes(long)
        assert notes and all("truncated" in n for n in notes), (kind, notes)
        assert backends[kind].prompt_notes("a red fox") == []
    out = explore(np.full((8, 8, 3), 0.5, np.float32), [long], scale=4, model=backends["sd3"], samples=1, steps=2)
    assert any("truncated" in n for n in out.notes)


def test_load_options(specs):
    be = load_model(specs["flux"], device="cpu", offline=True, load={"vae_tiling": True, "cpu_offload": True})
    assert be.codec.vae.use_tiling and be.describe()["memory"] == {"cpu_offload": True, "vae_tiling": True}
    seq = load_model(specs["sd3"], device="cpu", offline=True, load={"sequential_cpu_offload": True})
    ref = load_model(specs["sd3"], device="cpu", offline=True)
    a, b = (explore(np.full((8, 8, 3), 0.4, np.float32), ["a"], scale=4, model=m, solver="dps", samples=1, steps=2)
            for m in (seq, ref))
    np.testing.assert_allclose(a.prompts[0].samples, b.prompts[0].samples, atol=1e-5)  # streamed weights: same answer
    with pytest.raises(UsageError, match="attention_slicing does not apply.*fused attention"):
        load_model(specs["flux2"], device="cpu", offline=True, load={"attention_slicing": True})
    with pytest.raises(UsageError, match=r"unknown flux load option.*known"):
        load_model(specs["flux"], device="cpu", offline=True, load={"turbo": True})


def test_results_and_gallery_record_the_final_projection(backends, tmp_path):
    out = explore(helpers.lr_image(4, size=32)[0].permute(1, 2, 0).numpy() / 2 + 0.5, ["a red fox"], scale=4,
                  model=backends["flux2"], solver="ddnm", samples=2, steps=3)
    p = out.prompts[0]
    assert min(p.lr_psnr) > 60 and all(b < a for a, b in zip(p.lr_psnr, p.projection["lr_psnr_before"]))
    assert all(r > 0 for r in p.projection["correction_rms"])
    out.save(tmp_path / "run")
    doc = json.loads((tmp_path / "run" / "results.json").read_text())
    s0 = doc["prompts"][0]["samples"][0]
    assert s0["lr_psnr_before_projection"] == pytest.approx(p.projection["lr_psnr_before"][0])
    assert s0["projection_correction_rms"] > 0 and s0["projection_correction_max"] >= s0["projection_correction_rms"]
    assert "before the final projection" in (tmp_path / "run" / "index.html").read_text()
    assert "before the final projection" in out.summary()[0]


REGISTRY = {"flux.1-schnell": ("flux-schnell", "none"), "flux.1-dev": ("flux", "distilled"),
            "flux.2-klein-4b": ("flux2", "none"), "flux.2-klein-base-4b": ("flux2-base", "cfg"),
            "sd3.5-medium": ("sd3", "cfg"), "sd3.5-large": ("sd3", "cfg")}


def test_every_flow_model_loads_by_registry_name_from_the_hub_cache_offline(specs, tmp_path, monkeypatch):
    from tests.test_model_registry import put_in_cache
    from textsr.errors import ModelNotFoundError
    from textsr.model_registry import MODELS

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    with pytest.raises(ModelNotFoundError, match=r'(?s)gated.*hf download black-forest-labs/FLUX.1-dev --include '
                                                 r'"model_index.json" "transformer/\*"'):
        load_model("flux.1-dev", offline=True)
    for name, (kind, guidance) in REGISTRY.items():
        folder = json.loads(specs[kind].read_text())["stages"]["pipeline"]
        put_in_cache(cache, MODELS[name].hub_ids[0], __import__("pathlib").Path(folder))
        be = load_model(name, offline=True, device="cpu")
        assert be.info is MODELS[name] and be.guidance_kind == guidance
        assert be.describe()["name"] == name
    # SD3.5: guidance 2.0 from the registry spec; its text encoders' fp16 files load when asked for float16
    assert load_model("sd3.5-medium", offline=True, device="cpu").parse_options({}).guidance_scale == 2.0
    half = load_model("sd3.5-medium", offline=True, device="cpu", dtype="float16")
    assert half.text.clips[0][1].dtype == torch.float16 and half.transformer.dtype == torch.float16
    snap = next((cache / "models--black-forest-labs--FLUX.2-klein-4B" / "snapshots").iterdir())
    for f in (snap / "transformer").glob("*.safetensors"):
        f.unlink()
    with pytest.raises(ModelNotFoundError, match=r"FLUX.2-klein-4B \(cached without transformer \(weights\)\)"):
        load_model("flux.2-klein-4b", offline=True, device="cpu")


def test_ddnm_decode_project_encode_keeps_the_models_eps(backends):
    """DDNM on latents: the bound denoiser returns ``z0' = E(D(z0) - A+(A D(z0) - y))`` with the model's own eps
    (DDNM eq. 13 keeps the network's noise estimate beside the corrected x0)."""
    be = backends["sd3"]
    stage = be.build_stages("ddnm", {"steps": 4}, {})[0]
    y, pixel = helpers.lr_image(4, size=32, seed=3), AvgPool(4, (3, 32, 32))
    den, op = stage.bind(pixel, y)
    assert op.projected
    z = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    cond = be.encode_prompt("a red fox")
    with torch.no_grad():
        raw, proj = den.base(z, 2, cond), den(z, 2, cond)
        x = be.codec.decode(raw.x0)
        expect = be.codec.encode(x - pixel.A_pinv(pixel.A(x) - y))
    assert torch.equal(proj.eps, raw.eps)
    torch.testing.assert_close(proj.x0, expect, rtol=0, atol=1e-5)
