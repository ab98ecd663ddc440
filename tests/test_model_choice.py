"""Issue 19 item 1: no toy answers to real photos.  Without a model, an input the built-in world cannot
explain (its exact evidence below what the world's own images reach with probability 1 - 1e-9) stops
before any work, listing the real models and their cache state; ``--model builtin-shapes`` runs and says
first that it is the toy world; the demo is unchanged."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from cli_helpers import run_cli as run
from PIL import Image

import textsr.api
from textsr import explore
from textsr.demo import demo_image
from textsr.model_choice import ModelChoiceError
from textsr.model_registry import MODELS, load_model
from textsr.operators import make_operator
from textsr.shapes_world import render_scene


def photo_like(kind: str, size: int = 64) -> np.ndarray:
    """Inputs no shapes scene looks like: smooth gradients and textures, noise."""
    y, x = np.mgrid[0:size, 0:size] / (size - 1)
    rng = np.random.default_rng(size)
    img = {"gradient": np.stack([x, y, 0.5 + 0 * x], -1),
           "texture": 0.5 + 0.2 * np.sin(7 * x + 3 * y)[..., None] * np.array([1.0, 0.8, 0.6]),
           "noise": rng.random((size, size, 3))}[kind]
    return np.clip(img, 0, 1).astype(np.float32)


def png(path, arr):
    Image.fromarray(np.rint(arr * 255).astype(np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def world():
    return load_model("builtin-shapes", device="cpu")


def lr_of(world, x64: np.ndarray, scale: int, op: str = "avgpool") -> tuple[torch.Tensor, object]:
    A = make_operator(op, scale, (3, 64, 64))
    return A.A(torch.from_numpy(x64).permute(2, 0, 1)[None].double() * 2 - 1), A


@pytest.mark.parametrize("scale", [4, 8, 16, 32])
def test_the_worlds_own_images_are_explained(world, scale):
    """Draws from the prior itself (with 8-bit rounding noise), and the rendered scenes saved as 8-bit
    images (clipped to the range) under every operator: none is refused."""
    g = torch.Generator().manual_seed(scale)
    xs = world.mixture.sample(4, generator=g).reshape(4, 3, 64, 64).double()
    means = torch.from_numpy(world.catalog.means[::67]).double().reshape(-1, 3, 64, 64)
    for op in ("avgpool", "bicubic", "bicubic-reflect", "gaussian"):
        A = make_operator(op, scale, (3, 64, 64))
        rounding = torch.round((A.A(xs) + 1) * 127.5) / 127.5 - 1  # rounded, not clipped: the noise model
        saved = torch.round((A.A(means).clamp(-1, 1) + 1) * 127.5) / 127.5 - 1
        for k, t in enumerate(world.typicality(torch.cat([A.A(xs), rounding, saved]), A)):
            assert t.explained, (op, k, t)
            assert k < 8 or t.chi2 < 0.5 * t.bound, (op, k, t)  # a rendered scene: far inside the bound


@pytest.mark.parametrize("kind", ["gradient", "texture", "noise"])
@pytest.mark.parametrize("scale", [4, 32])
def test_photo_like_inputs_are_not(world, kind, scale):
    y, A = lr_of(world, photo_like(kind), scale)
    t = world.typicality(y, A)[0]
    assert not t.explained and t.chi2 > 2 * t.bound, t


def test_a_photo_without_a_model_stops_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setattr(textsr.api, "resolve_backend", lambda *a, **k: pytest.fail("a model was loaded"))
    monkeypatch.setattr(textsr.api, "sample_prompt", lambda *a, **k: pytest.fail("sampling started"))
    src = png(tmp_path / "cheetah64.png", photo_like("texture"))
    res = run(["upscale", src, "--scale", 4, "-p", "a cheetah", "-o", tmp_path / "out", "-q"])
    assert res.exit_code == 2
    assert "no model was named, and the input needs a real one" in res.output
    assert "deepfloyd-if" in res.output and "[not cached]" in res.output and "--model" in res.output
    assert not (tmp_path / "out").exists()  # nothing written


def test_the_message_shows_the_cache_state(tmp_path, monkeypatch):
    import textsr.hub

    monkeypatch.setattr(textsr.hub, "cached_repo_ids", lambda: set(MODELS["deepfloyd-if-m"].hub_ids))
    with pytest.raises(ModelChoiceError) as e:
        explore(photo_like("gradient", 16), "a cat", scale=4)
    lines = {line.split()[0]: line for line in str(e.value).splitlines() if line.startswith("  ")}
    assert "[cached]" in lines["deepfloyd-if-m"] and "[not cached]" in lines["deepfloyd-if"]
    assert "builtin-shapes" not in lines
    with pytest.raises(ModelChoiceError, match="cannot take it"):  # a scale the world cannot make
        explore(demo_image(), "a red circle", scale=3)


def test_the_toy_world_runs_when_named_and_says_so_first(tmp_path):
    src = png(tmp_path / "cheetah64.png", photo_like("texture"))
    out = tmp_path / "out"
    res = run(["upscale", src, "--scale", 4, "-p", "a red circle", "--model", "builtin-shapes", "-o", out, "-q",
               "--steps", 3, "-n", 1])
    assert res.exit_code == 0, res.output
    assert res.output.splitlines()[0].startswith("caution: builtin-shapes is the built-in TOY world")
    html = (out / "index.html").read_text()
    assert html.index("TOY world") < html.index("<h2>Input")  # at the top of the gallery
    assert json.loads((out / "results.json").read_text())["model"]["caution"].startswith("builtin-shapes")


def test_a_scene_without_a_model_runs_on_the_world(tmp_path):
    img, _ = render_scene("star", "yellow", "blue", "large", (1, 1))
    src = png(tmp_path / "star.png", img.reshape(16, 4, 16, 4, 3).mean(axis=(1, 3)))
    out = tmp_path / "out"
    res = run(["upscale", src, "--scale", 4, "-p", "a star", "-o", out, "-q", "--steps", 3, "-n", 1])
    assert res.exit_code == 0, res.output
    assert "the built-in shapes world (a toy) explains this input" in res.output


def test_the_demo_is_unchanged(tmp_path):
    res = run(["demo", "-o", tmp_path / "d", "-n", 1, "-q"])
    assert res.exit_code == 0, res.output
    assert res.output.startswith("textsr demo: a 64x64 scene") and "caution:" not in res.output


@pytest.mark.parametrize("model,lr,scale,msg", [
    ("deepfloyd-if", (17, 20), 4, "multiples of 32; a 20x17 input at x4 gives 80x68. At x4 use input sides that are "
                                  "multiples of 8: crop it to 16x16"),
    ("deepfloyd-if-m", (16, 16), 6, "takes the scales 4, 8, 12, 16, 20, 24, 28, 32; got x6"),
    ("karlo", (32, 32), 4, "makes 256x256 images only; a 32x32 input at x4 gives 128x128. Use an input of 64x64 at x4"),
    ("ddpm-celebahq", (16, 16), 8, "makes 256x256 images only"),
    ("stable-diffusion", (30, 30), 8, "multiples of 64"),
])
def test_an_output_the_model_cannot_make_is_refused_before_it_loads(monkeypatch, model, lr, scale, msg):
    """Registry models' sizes are known without their weights (which are not here): the size is refused
    before the model is looked for in the cache (which would ask for a download first) or loaded."""
    import textsr.model_registry as reg
    from textsr.errors import InputImageError

    monkeypatch.setattr(reg, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(InputImageError, match=re.escape(msg)):
        explore(np.zeros((*lr, 3), np.float32), "a cat", scale=scale, model=model)


def test_with_tile_a_registry_model_is_not_refused_for_a_size_it_makes_on_windows(monkeypatch):
    """``--tile`` makes outputs larger than the model's fixed size: the registry's whole-image size rule does
    not apply before loading (the loaded backend's check_tiling decides); here the model is then looked for
    in the (empty, offline) cache, which fails for that reason, not for the size."""
    import textsr.model_registry as reg
    from textsr.errors import InputImageError, ModelNotFoundError

    monkeypatch.setattr(reg, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    image = np.zeros((128, 128, 3), np.float32)  # x4 -> 512x512, twice the DDPM's 256x256
    with pytest.raises(InputImageError, match="makes 256x256 images only"):
        explore(image, "a face", scale=4, model="ddpm-celebahq")
    with pytest.raises(ModelNotFoundError):
        explore(image, "a face", scale=4, model="ddpm-celebahq", tile="auto")
