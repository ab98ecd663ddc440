"""DeepFloyd IF backend on a tiny random IF built in code, saved, and loaded back through the registry's
spec path (offline, CPU).  Random weights: only model-independent guarantees are tested.  What every backend
guarantees (exactness, batch = alone, prompts, half precision, option errors) is in test_backend_contract.py."""

import pytest
import torch
import torch.nn.functional as F

from textsr.backends.deepfloyd_if import STAGE_SOLVER_DEFAULTS, IFBackend, IFSRCond, IFText, dynamic_threshold
from textsr.cascade import run_cascade
from textsr.errors import InputImageError, UsageError
from textsr.model_registry import load_model
from textsr.operators import AvgPool
from textsr.solvers import Noise, make_config
from textsr.testing.tiny_deepfloyd_if import build_tiny_if

SCALE, LR = 8, 4  # 4x4 -> 32x32 output; stage I at 8x8 with A_2, stage II at 32x32 with A_8
STEPS = {"steps": 6}
PROMPT = "a photo of an old woman with a red hat"


@pytest.fixture(scope="module")
def tiny_spec(tmp_path_factory):
    return build_tiny_if(tmp_path_factory.mktemp("tiny_if"))


@pytest.fixture(scope="module")
def backend(tiny_spec):
    return load_model(tiny_spec, device="cpu", offline=True)


@pytest.fixture(scope="module")
def y():
    return torch.rand(1, 3, LR, LR, generator=torch.Generator().manual_seed(11)) * 2 - 1


def lr_psnr(x, y, factor):
    mse = ((AvgPool(factor, tuple(x.shape[1:])).A(x.double()) - y.double()) / 2).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1 / mse.clamp(min=1e-30))


def residual(x, y, factor):
    return (AvgPool(factor, tuple(x.shape[1:])).A(x) - y).flatten(1).norm(dim=1)


def run(backend, y, solver, seeds, prompt=PROMPT, solver_options=None, options=None):
    stages = backend.build_stages(solver, {**STEPS, **(solver_options or {})}, options or {})
    return run_cascade(stages, y, SCALE, make_config(solver), seeds, backend.encode_prompt(prompt))


def test_loads_through_spec_and_folder(tiny_spec, backend):
    assert isinstance(backend, IFBackend) and backend.stage_2 is not None
    assert backend.channels == 3 and backend.info.name == "tiny-if"
    again = load_model(tiny_spec.parent, offline=True)  # the folder holding textsr_model.json
    assert again.describe()["stages"] == backend.describe()["stages"]
    stages = backend.build_stages("ddnm", {}, {})
    assert [s.name for s in stages] == ["stage_1", "stage_2"] and [s.divisor for s in stages] == [4, 1]


@pytest.mark.parametrize("solver", ["ddnm", "ddnm+"])
def test_every_stage_is_exactly_consistent_at_its_own_scale(backend, y, solver):
    # (the final output's consistency for every backend: tests/test_backend_contract.py)
    res = run(backend, y, solver, [0, 1, 2])
    assert res.x.shape == (3, 3, LR * SCALE, LR * SCALE)
    assert res.stage_outputs[0].shape == (3, 3, LR * SCALE // 4, LR * SCALE // 4)
    assert torch.all(lr_psnr(res.x, y, SCALE) >= 60)
    assert torch.all(lr_psnr(res.stage_outputs[0], y, SCALE // 4) >= 60)


@pytest.mark.parametrize("solver,options", [("dps", {"zeta": 10.0}), ("pigdm", {})])
def test_gradient_solvers_lower_the_lr_residual(backend, y, solver, options):
    """With a handful of steps DPS needs a larger step than its 1000-step default (0.5) to move at all."""
    seeds = [0, 1, 2]
    plain = residual(run(backend, y, "plain", seeds).x, y, SCALE)
    guided = residual(run(backend, y, solver, seeds, solver_options=options).x, y, SCALE)
    assert guided.mean() < 0.95 * plain.mean()


def test_guidance_scale_one_is_the_text_branch(backend, y):
    cond = backend.encode_prompt(PROMPT)
    den = backend.build_stages("ddnm", STEPS, {"guidance_scale": 1.0, "thresholding": False})[0].denoiser
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    eps = backend.stage_1.unet(x, torch.tensor(500), encoder_hidden_states=cond.embeds.expand(2, -1, -1)).sample[:, :3]
    torch.testing.assert_close(den(x, 500, cond).eps, eps, rtol=0, atol=0)
    # CFG with the prompt as negative prompt: uncond = text branch, so any scale gives the text branch
    same = backend.build_stages("ddnm", STEPS, {"guidance_scale": 7.0, "negative_prompt": PROMPT})
    ref = backend.build_stages("ddnm", STEPS, {"guidance_scale": 1.0})
    torch.testing.assert_close(same[0].denoiser(x, 500, cond).x0, ref[0].denoiser(x, 500, cond).x0,
                               rtol=1e-5, atol=1e-5)
    a = run(backend, y, "ddnm", [3], options={"guidance_scale": [7, 4], "negative_prompt": PROMPT}).x
    b = run(backend, y, "ddnm", [3], options={"guidance_scale": 1}).x
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_cfg_is_batched_and_matches_the_formula(backend):
    cond, null = backend.encode_prompt(PROMPT), backend.encode_prompt("")
    st = backend.build_stages("ddnm", STEPS, {"guidance_scale": [3.0, 2.0], "thresholding": False})[1]
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    img = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    unet = backend.stage_2.unet

    def eps(e):
        out = unet(torch.cat([x, img], 1), torch.tensor(300), encoder_hidden_states=e.expand(2, -1, -1),
                   class_labels=torch.full((2,), 250)).sample
        return out[:, :3]

    expected = eps(null.embeds) + 2.0 * (eps(cond.embeds) - eps(null.embeds))
    got = st.denoiser(x, 300, IFSRCond(text=cond, image=img, noise_level=250)).eps
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_adapter_matches_the_ddpm_scheduler_x0(backend):
    """Our x0_hat (eps channels, CFG, dynamic thresholding) equals the scheduler's pred_original_sample
    for the pipeline's noise_pred (CFG'd eps + text-branch variance)."""
    sched = backend.stage_1.scheduler
    sched.set_timesteps(1000)
    cond, null = backend.encode_prompt(PROMPT), backend.encode_prompt("")
    den = backend.build_stages("ddnm", STEPS, {"guidance_scale": 7.0})[0].denoiser
    x = 3 * torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    t = 700
    embeds = torch.cat([null.embeds.expand(2, -1, -1), cond.embeds.expand(2, -1, -1)])  # [neg; pos] as IF
    out = backend.stage_1.unet(torch.cat([x, x]), torch.tensor(t), encoder_hidden_states=embeds).sample
    u, c = out.chunk(2)
    noise_pred = torch.cat([u[:, :3] + 7.0 * (c[:, :3] - u[:, :3]), c[:, 3:]], 1)
    ref = sched.step(noise_pred, t, x, generator=torch.Generator().manual_seed(0)).pred_original_sample
    torch.testing.assert_close(den(x, t, cond).x0, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("t,s", [(700, 690), (30, 20), (0, -1)])
def test_ddpm_step_matches_the_if_scheduler_step(backend, t, s):
    """step_kind="ddpm": the adapter's x0 (CFG'd eps, thresholded) and learned variance (the text branch's
    variance channels, v = (model_var + 1) / 2) give IF's own sampler step, DDPMScheduler.step with the
    pipeline's noise_pred (float32 both: diffusers' float32 coefficients agree to ~1e-6 here)."""
    from textsr.solvers import Problem
    from textsr.solvers.plain import plain_step

    sched = backend.stage_1.scheduler
    sched.set_timesteps(100)
    cond, null = backend.encode_prompt(PROMPT), backend.encode_prompt("")
    den = backend.build_stages("plain", {"steps": 100, "step_kind": "ddpm"}, {"guidance_scale": 7.0})[0].denoiser
    x = 2 * torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    embeds = torch.cat([null.embeds.expand(2, -1, -1), cond.embeds.expand(2, -1, -1)])  # [neg; pos] as IF
    out = backend.stage_1.unet(torch.cat([x, x]), torch.tensor(t), encoder_hidden_states=embeds).sample
    u, c = out.chunk(2)
    noise_pred = torch.cat([u[:, :3] + 7.0 * (c[:, :3] - u[:, :3]), c[:, 3:]], 1)
    ref = sched.step(noise_pred, t, x, generator=torch.Generator().manual_seed(0)).prev_sample
    op = AvgPool(1, (3, 8, 8))
    ours = plain_step(den, Problem(op, torch.zeros(2, 3, 8, 8)), x, t, s, cond, make_config("plain", step_kind="ddpm"),
                      Noise.batched(0, 2)).x_next
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    # and the variance matters: beta_tilde instead of the model's variance gives another sample
    if s >= 0:
        den.unet, real = _ZeroVariance(den.unet), den.unet
        try:
            other = plain_step(den, Problem(op, torch.zeros(2, 3, 8, 8)), x, t, s, cond,
                               make_config("plain", step_kind="ddpm"), Noise.batched(0, 2)).x_next
        finally:
            den.unet = real
        assert (other - ref).abs().max() > 1e-3


class _ZeroVariance(torch.nn.Module):
    """The wrapped UNet with its variance channels set to -1 (v = 0: beta_tilde)."""

    def __init__(self, unet):
        super().__init__()
        self.inner, self.config = unet, unet.config

    def forward(self, *a, **kw):
        out = self.inner(*a, **kw)[0]
        C = out.shape[1] // 2
        return (torch.cat([out[:, :C], -torch.ones_like(out[:, C:])], 1),)


def test_prompts_are_lowercased_and_stripped_as_in_ifpipeline(backend):
    """IFPipeline lowercases and strips prompts before T5 (clean_caption=False); so must we."""
    from diffusers import IFPipeline

    a = backend.encode_prompt("a photo of an old woman")
    b = backend.encode_prompt("  A Photo of an OLD Woman ")
    torch.testing.assert_close(a.embeds, b.embeds, rtol=0, atol=0)
    pipe = IFPipeline(tokenizer=backend.tokenizer, text_encoder=backend.text_encoder, unet=backend.stage_1.unet,
                      scheduler=backend.stage_1.scheduler, safety_checker=None, feature_extractor=None,
                      watermarker=None, requires_safety_checker=False)
    ref, _ = pipe.encode_prompt("  A Photo of an OLD Woman ", do_classifier_free_guidance=False, clean_caption=False)
    torch.testing.assert_close(b.embeds, ref.to(b.embeds.dtype), rtol=1e-6, atol=1e-6)


def test_dynamic_threshold_matches_diffusers(backend):
    sched = backend.stage_1.scheduler
    x0 = 2 * torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    x0[1] *= 0.3  # one sample below the threshold: plain clipping at 1
    ref = sched._threshold_sample(x0.clone())
    got = dynamic_threshold(x0, sched.config.dynamic_thresholding_ratio, sched.config.sample_max_value)
    torch.testing.assert_close(got, ref)


@pytest.mark.parametrize("n", [1, 2, 7, 192, 12288, 3 * 256 * 256])
@pytest.mark.parametrize("q", [0.0, 0.33, 0.5, 0.95, 0.995, 1.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kthvalue_quantile_equals_torch_quantile(n, q, dtype):
    """The order-statistic quantile (two kthvalue calls, torch's rank and lerp) gives torch.quantile's
    values to 1e-7 (in practice bit for bit), with ties and a row of equal values too."""
    from textsr.backends.deepfloyd_if_unet import quantile_rows

    g = torch.Generator().manual_seed(n)
    a = (3 * torch.randn(3, n, generator=g, dtype=dtype)).abs()
    a[1] = a[1].round()  # ties
    a[2] = 0.5
    torch.testing.assert_close(quantile_rows(a, q), torch.quantile(a, q, dim=1), rtol=0, atol=1e-7)


def test_stage_2_condition_mirrors_the_sr_pipeline(backend):
    """Upsampled bilinearly (align_corners=True) and noised with image_noising_scheduler.add_noise."""
    prev = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(6)) * 2 - 1
    st = backend.build_stages("ddnm", STEPS, {"noise_level": 100})[1]
    cond = backend.encode_prompt(PROMPT)
    got = st.condition(cond, prev, Noise.from_seeds([7, 8]))
    z = Noise.from_seeds([7, 8]).randn((3, 32, 32))
    up = F.interpolate(prev, (32, 32), mode="bilinear", align_corners=True)
    ref = backend.stage_2.noising_scheduler.add_noise(up, z, torch.tensor([100, 100]))
    torch.testing.assert_close(got.image, ref, rtol=1e-5, atol=1e-6)
    assert got.noise_level == 100 and got.text is cond


def test_every_solver_runs(backend, y):
    for solver in ("plain", "ddnm", "ddnm+", "dps", "pigdm"):
        x = run(backend, y, solver, [0], solver_options={"steps": 3}).x
        assert x.shape == (1, 3, 32, 32) and torch.isfinite(x).all()


def test_per_stage_solver_defaults_and_overrides(backend):
    for name, (d1, d2) in STAGE_SOLVER_DEFAULTS.items():
        cfgs = [s.solver for s in backend.build_stages(name, {}, {})]
        assert cfgs[0].steps == d1["steps"] and cfgs[1].steps == d2["steps"]
    dps = [s.solver for s in backend.build_stages("dps", {}, {})]
    assert [c.zeta for c in dps] == [0.5, 0.5]
    warm = [s.solver for s in backend.build_stages("pigdm", {}, {"warm_start": 0.6, "steps": [30, 20]})]
    assert (warm[0].start, warm[0].init, warm[0].steps) == (0.6, "pinv", 30)
    assert (warm[1].start, warm[1].steps) == (1.0, 20)
    user = [s.solver for s in backend.build_stages("ddnm", {"steps": 7, "eta": 0.5}, {})]
    assert [(c.steps, c.eta) for c in user] == [(7, 0.5), (7, 0.5)]
    nested = [s.solver for s in backend.build_stages("dps", {"zeta": 2.0, "stage_2": {"steps": 9}}, {})]
    assert [(c.steps, c.zeta) for c in nested] == [(250, 2.0), (9, 2.0)]


def test_warm_start_runs_and_stays_consistent(backend, y):
    res = run(backend, y, "ddnm", [0], options={"warm_start": 0.5})
    assert torch.all(lr_psnr(res.x, y, SCALE) >= 60)


@pytest.mark.parametrize("options,match", [
    ({"guidence_scale": 3}, "unknown DeepFloyd IF option"),
    ({"guidance_scale": [1, 2, 3]}, "one value or two"),
    ({"guidance_scale": -1}, ">= 0"),
    ({"noise_level": 1000}, "below 1000"),
    ({"noise_level": 2.5}, "integer"),
    ({"steps": [0, 3]}, "positive"),
    ({"warm_start": 1.5}, r"\(0, 1\]"),
    ({"thresholding": "yes"}, "true or false"),
])
def test_bad_options_raise_usage_errors(backend, options, match):
    with pytest.raises(UsageError, match=match):
        backend.build_stages("ddnm", {}, options)


def test_bad_solver_and_conflicting_options(backend):
    with pytest.raises(UsageError, match="unknown solver"):
        backend.build_stages("ddrm", {}, {})
    with pytest.raises(UsageError, match="unknown option"):
        backend.build_stages("ddnm", {"zeta": 1.0}, {})
    with pytest.raises(UsageError, match="not both"):
        backend.build_stages("ddnm", {"steps": 3}, {"steps": [3, 3]})
    with pytest.raises(UsageError, match="no such stage"):
        backend.build_stages("ddnm", {"stage_3": {"steps": 3}}, {})
    with pytest.raises(UsageError, match="warm_start"):
        backend.build_stages("ddnm", {"stage_1": {"init": "pinv"}}, {"warm_start": 0.5})
    with pytest.raises(UsageError, match=r"unknown deepfloyd-if load option\(s\) \['offload'\]"):
        load_model(backend.locations["stage_1"], offline=True, load={"offload": True})
    with pytest.raises(UsageError, match="vae_tiling does not apply to the deepfloyd-if model .it has no VAE"):
        load_model(backend.locations["stage_1"], offline=True, load={"vae_tiling": True})


def test_check_size_names_the_sizes_that_work(backend):
    backend.check_size((4, 4), 8)
    backend.check_size((16, 16), 16)  # 256 px, the trained size
    with pytest.raises(InputImageError, match="multiple of 4"):
        backend.check_size((16, 16), 6)
    # the tiny UNets halve once: stage I (1/4 size) needs even sides, so outputs need multiples of 8
    assert backend.output_multiple() == 8
    with pytest.raises(InputImageError, match=r"multiples of 8.*68x72.*multiples of 2.*crop it to 16x18"):
        backend.check_size((17, 18), 4)


def test_cpu_offload_and_attention_slicing_load_options(tiny_spec, y):
    be = load_model(tiny_spec, offline=True, load={"cpu_offload": True, "attention_slicing": True})
    res = run(be, y, "ddnm", [0], solver_options={"steps": 2})
    assert torch.all(lr_psnr(res.x, y, SCALE) >= 60)
    assert be.describe()["memory"] == {"cpu_offload": True, "attention_slicing": True}


def test_stage_1_only_pipeline_folder(tmp_path):
    spec = build_tiny_if(tmp_path, two_stages=False)
    be = load_model(spec.parent / "stage_1", offline=True)  # a bare IFPipeline folder
    stages = be.build_stages("ddnm", {"steps": 3}, {})
    assert len(stages) == 1 and stages[0].divisor == 1
    be.check_size((4, 4), 4)
    y = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(0)) * 2 - 1
    res = run_cascade(stages, y, 4, make_config("ddnm"), [0, 1], be.encode_prompt("a dog"))
    assert res.x.shape == (2, 3, 16, 16) and torch.all(lr_psnr(res.x, y, 4) >= 60)


def test_prompt_encoding_is_cached_and_padded_to_77(backend):
    a = backend.encode_prompt(PROMPT)
    assert isinstance(a, IFText) and a.embeds.shape[:2] == (1, 77)
    assert backend.encode_prompt(PROMPT) is a
    both = backend.encode_prompt(["a cat", "a dog"])
    assert both.embeds.shape[0] == 2


def test_cli_upscale_with_the_tiny_spec(tiny_spec, tmp_path):
    from click.testing import CliRunner
    from PIL import Image

    from textsr.cli import main

    img = tmp_path / "lr.png"
    pixels = 64 + 128 * torch.rand(LR, LR, 3, generator=torch.Generator().manual_seed(0))
    Image.fromarray(pixels.byte().numpy()).save(img)
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["upscale", str(img), "--scale", str(SCALE), "--model", str(tiny_spec), "-p",
                                    "a photo of a cat", "--solver", "ddnm", "--steps", "2", "-n", "2", "-o", str(out),
                                    "-q", "--option", "guidance_scale=[5, 3]"])
    assert res.exit_code == 0, res.output
    assert any(out.rglob("*.png"))
    bad = CliRunner().invoke(main, ["upscale", str(img), "--scale", "6", "--model", str(tiny_spec), "-p", "x",
                                    "-o", str(tmp_path / "out2"), "-q"])
    assert bad.exit_code == 2 and "multiple of 4" in bad.output
