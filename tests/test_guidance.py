"""CLIP guidance wrapper and the differentiable CLIP helper, on a toy denoiser and a tiny random CLIP."""

import math

import pytest
import torch

pytest.importorskip("transformers")

from textsr.backends.hf_common import load_clip_model  # noqa: E402
from textsr.denoiser import Prediction  # noqa: E402
from textsr.guidance import CLIPGuidance, GuidedCond, clip_energy  # noqa: E402
from textsr.operators import AvgPool  # noqa: E402
from textsr.schedule import NoiseSchedule  # noqa: E402
from textsr.testing.tiny_clip import build_tiny_clip  # noqa: E402


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = build_tiny_clip(tmp_path_factory.mktemp("clip"))
    return load_clip_model(str(path), device=torch.device("cpu"), dtype=torch.float32, offline=True)


class ToyDenoiser:
    """A smooth nonlinear denoiser: eps = tanh(W * x_t) with a fixed per-channel mixing."""

    def __init__(self):
        self.schedule = NoiseSchedule.linear(100)
        g = torch.Generator().manual_seed(0)
        self.W = torch.randn(3, 3, generator=g) * 0.3

    def __call__(self, x_t, t, cond=None):
        eps = torch.tanh(torch.einsum("ij,bjhw->bihw", self.W, x_t))
        return Prediction.from_eps(x_t, eps, self.schedule.abar(t))


def _x(seed, B=2, size=16):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, 3, size, size, generator=g)


def test_text_features_normalised_and_prompt_dependent(clip):
    f = clip.text_features(["a red fox", "a blue car"])
    assert f.shape == (2, clip.text_features("x").shape[-1])
    assert torch.allclose(f.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert (f[0] - f[1]).abs().max() > 1e-3


def test_preprocess_matches_clip_image_processor(clip):
    """Our torch resize + crop + normalise agrees with transformers' (non-differentiable) processor."""
    from transformers import CLIPImageProcessor

    proc = CLIPImageProcessor(size={"shortest_edge": clip.image_size},
                              crop_size={"height": clip.image_size, "width": clip.image_size},
                              image_mean=list(clip.mean), image_std=list(clip.std), do_convert_rgb=False)
    lo = torch.rand(1, 3, 6, 9, generator=torch.Generator().manual_seed(1))
    x = torch.nn.functional.interpolate(lo, size=(48, 72), mode="bilinear", align_corners=False)  # smooth, non-square
    ref = proc(images=[((x[0] * 255).round() / 255).permute(1, 2, 0).numpy()], return_tensors="pt",
               do_rescale=False).pixel_values
    ours = clip.preprocess(x * 2 - 1)
    assert ours.shape == ref.shape == (1, 3, clip.image_size, clip.image_size)
    assert (ours - ref).abs().mean() < 0.05  # PIL vs torch bicubic kernels differ slightly


def test_image_features_differentiable(clip):
    x = _x(0).requires_grad_(True)
    e = clip_energy(clip, x, clip.text_features("a red fox"))
    (g,) = torch.autograd.grad(e.sum(), x)
    assert g.shape == x.shape and torch.isfinite(g).all() and g.abs().sum() > 0


@pytest.mark.parametrize("grad_wrt", ["x0", "xt"])
def test_step_lowers_energy_and_keeps_eps_consistent(clip, grad_wrt):
    den = ToyDenoiser()
    text = clip.text_features("a red fox")
    guided = CLIPGuidance(den, clip, text, scale=0.2, grad_wrt=grad_wrt)
    x_t, t = _x(1), 60
    with torch.no_grad():
        base, new = den(x_t, t), guided(x_t, t)
    assert clip_energy(clip, new.x0, text).mean() < clip_energy(clip, base.x0, text).mean()
    abar = den.schedule.abar(t)
    recon = math.sqrt(abar) * new.x0 + math.sqrt(1 - abar) * new.eps
    assert torch.allclose(recon, x_t, atol=1e-5)
    # normalised step: RMS of the x0 change = scale * sqrt(1 - abar_t), per sample
    rms = (new.x0 - base.x0).flatten(1).pow(2).mean(1).sqrt()
    assert torch.allclose(rms, torch.full_like(rms, 0.2 * math.sqrt(1 - abar)), rtol=1e-4)


def test_null_space_projection_keeps_A_x0(clip):
    den = ToyDenoiser()
    A = AvgPool(4, (3, 16, 16))
    guided = CLIPGuidance(den, clip, clip.text_features("a red fox"), scale=0.3, project_null=A)
    x_t = _x(2)
    with torch.no_grad():
        base, new = den(x_t, 50), guided(x_t, 50)
    assert (new.x0 - base.x0).abs().max() > 1e-3
    assert torch.allclose(A.A(new.x0), A.A(base.x0), atol=1e-5)
    # the operator may also come from a zero-argument callable (bound at run time)
    lazy = CLIPGuidance(den, clip, clip.text_features("a red fox"), scale=0.3, project_null=lambda: A)
    with torch.no_grad():
        assert torch.allclose(lazy(x_t, 50).x0, new.x0, atol=1e-6)


def test_window_scale_zero_and_empty_text_are_identity(clip):
    den = ToyDenoiser()
    text = clip.text_features("a red fox")
    x_t = _x(3)
    with torch.no_grad():
        ref = den(x_t, 80).x0
        assert torch.equal(CLIPGuidance(den, clip, text, scale=0.0)(x_t, 80).x0, ref)
        assert torch.equal(CLIPGuidance(den, clip, text, scale=0.3, window=(0.5, 0.0))(x_t, 80).x0, ref)
        assert not torch.equal(CLIPGuidance(den, clip, text, scale=0.3, window=(0.0, 0.9))(x_t, 80).x0, ref)
        assert torch.equal(CLIPGuidance(den, clip, None, scale=0.3)(x_t, 80, GuidedCond(None)).x0, ref)
        from_cond = CLIPGuidance(den, clip, None, scale=0.3)(x_t, 80, GuidedCond(text)).x0
        assert torch.allclose(from_cond, CLIPGuidance(den, clip, text, scale=0.3)(x_t, 80).x0)


def test_raw_gradient_step(clip):
    den = ToyDenoiser()
    text = clip.text_features("a red fox")
    x_t = _x(4)
    with torch.no_grad():
        base = den(x_t, 40).x0
        new = CLIPGuidance(den, clip, text, scale=5.0, normalize=False)(x_t, 40).x0
    x = base.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(clip_energy(clip, x, text).sum(), x)
    assert torch.allclose(new, base - 5.0 * g, atol=1e-6)


def test_batch_items_independent(clip):
    den = ToyDenoiser()
    guided = CLIPGuidance(den, clip, clip.text_features("a red fox"), scale=0.2, grad_wrt="xt")
    x_t = _x(5, B=3)
    with torch.no_grad():
        full = guided(x_t, 30).x0
        one = guided(x_t[1:2], 30).x0
    assert torch.allclose(full[1:2], one, atol=1e-5)


def test_differentiable_for_dps(clip):
    """Under autograd (as DPS/PiGDM call it) the returned x0 still depends on x_t through the base."""
    den = ToyDenoiser()
    for grad_wrt in ("x0", "xt"):
        guided = CLIPGuidance(den, clip, clip.text_features("a red fox"), scale=0.2, grad_wrt=grad_wrt)
        x_t = _x(6).requires_grad_(True)
        pred = guided(x_t, 30)
        (g,) = torch.autograd.grad(pred.x0.square().sum(), x_t)
        assert torch.isfinite(g).all() and g.abs().sum() > 0


def test_validation(clip):
    den = ToyDenoiser()
    with pytest.raises(ValueError):
        CLIPGuidance(den, clip, None, scale=-1.0)
    with pytest.raises(ValueError):
        CLIPGuidance(den, clip, None, grad_wrt="eps")
    with pytest.raises(ValueError):
        CLIPGuidance(den, clip, None, window=(0.5, 1.5))
