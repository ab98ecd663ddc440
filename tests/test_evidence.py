"""The evidence through explore, results.json and the CLI: --particles on real-model paths (tiny IF, tiny
pixel UNet), ``textsr rank`` against the exact evidence of the built-in world, P(prompt | y) arithmetic."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from textsr.cli import main
from textsr.errors import UsageError
from textsr.evidence import check_prior, combine, prompt_probabilities


def test_probabilities_and_combination():
    p = prompt_probabilities([0.0, math.log(3.0)])
    assert p == pytest.approx([0.25, 0.75])
    assert prompt_probabilities([0.0, 0.0], [3, 1]) == pytest.approx([0.75, 0.25])  # prior, normalised
    assert prompt_probabilities([float("-inf"), 1.0]) == pytest.approx([0.0, 1.0])
    assert prompt_probabilities([float("nan"), float("-inf")]) == [None, None]
    lz, spread = combine(torch.log(torch.tensor([1.0, 3.0], dtype=torch.float64)))
    assert lz == pytest.approx(math.log(2.0)) and spread == pytest.approx(float(torch.tensor([0.0, math.log(3)]).std()))
    for bad in ([1.0], [-1.0, 2.0], ["x", 1]):
        with pytest.raises(UsageError):
            check_prior(bad, 2)


def test_particles_need_a_particle_solver():
    from textsr.api import explore
    from textsr.demo import demo_image

    with pytest.raises(UsageError, match="particle solver"):
        explore(demo_image(), ["a"], scale=8, solver="ddnm+", particles=4, samples=1, steps=2)
    with pytest.raises(UsageError, match="particles"):
        explore(demo_image(), ["a"], scale=8, particles=0, samples=1, steps=2)


def _lr_png(path, size, seed=0):
    pixels = 64 + 128 * torch.rand(size, size, 3, generator=torch.Generator().manual_seed(seed))
    Image.fromarray(pixels.byte().numpy()).save(path)
    return path


def _run_cli(args):
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    return res


@pytest.mark.parametrize("builder, lr, scale, options", [
    ("tiny_deepfloyd_if", 4, 8, []),  # two stages; CFG 7 / 4 by default: not calibrated
    ("tiny_pixel", 4, 4, ["--option", "clip_scale=0.3"]),  # CLIP guidance: not calibrated
])
def test_cli_upscale_with_particles_end_to_end(tmp_path, builder, lr, scale, options):
    import importlib

    from textsr.schema import schema_errors

    mod = importlib.import_module(f"textsr.testing.{builder}")
    build = getattr(mod, "build_tiny_if" if builder == "tiny_deepfloyd_if" else "build_tiny_pixel")
    spec = build(tmp_path / "model")
    out = tmp_path / "out"
    _run_cli(["upscale", str(_lr_png(tmp_path / "lr.png", lr)), "--scale", str(scale), "--model", str(spec),
              "-p", "a photo of a cat", "-p", "a dog", "--particles", "4", "--steps", "2", "-n", "2", "-o", str(out),
              "-q", *options])
    doc = json.loads((out / "results.json").read_text())
    assert schema_errors(doc) == []
    assert doc["solver"]["solver"] == "tds" and all(s["particles"] == 4 for s in doc["solver"]["per_stage"])
    ev = [p["evidence"] for p in doc["prompts"]]
    assert sum(e["probability"] for e in ev) == pytest.approx(1.0)
    assert all(len(e["log_z_samples"]) == 2 and e["particles"] == 4 for e in ev)
    assert all(not e["calibrated"] and e["guidance"] for e in ev)  # guided runs say so


def _demo_png(tmp_path):
    from textsr.demo import demo_image

    img = tmp_path / "lr.png"
    Image.fromarray((demo_image() * 255).round().astype(np.uint8)).save(img)
    return img


def _exact(img, prompts, scale=8):
    from textsr.model_registry import load_model
    from textsr.operators import AvgPool

    backend = load_model("builtin-shapes")
    y = torch.from_numpy(np.asarray(Image.open(img), dtype=np.float32) / 255).permute(2, 0, 1)[None] * 2 - 1
    return {p: backend.exact_evidence(y, AvgPool(scale, (3, 64, 64)), p) for p in prompts}


def test_rank_defaults_to_the_exact_evidence_where_the_model_has_it(tmp_path):
    img = _demo_png(tmp_path)
    prompts = ["a red circle", "a red ring on blue", "a small red circle in the center", ""]
    exact = _exact(img, prompts)
    got = json.loads(_run_cli(["rank", str(img), "--scale", "8", *sum((["-p", p] for p in prompts), []),
                               "--json"]).output)
    assert set(got[0]) == {"prompt", "probability", "log_z"}
    assert [e["prompt"] for e in got] == sorted(prompts, key=lambda p: -exact[p])
    want = prompt_probabilities([exact[p] for p in prompts])
    assert {e["prompt"]: e["probability"] for e in got} == pytest.approx(dict(zip(prompts, want)), abs=1e-12)
    text = _run_cli(["rank", str(img), "--scale", "8", "-p", prompts[0], "-p", prompts[1], "-q"]).output
    assert "exact (closed form)" in text and "spread" not in text and prompts[0] in text


def test_rank_method_exact_without_a_closed_form_names_the_particle_method(tmp_path):
    from textsr.testing.tiny_pixel import build_tiny_pixel

    spec = build_tiny_pixel(tmp_path / "model")
    res = CliRunner().invoke(main, ["rank", str(_lr_png(tmp_path / "lr.png", 4)), "--scale", "4", "--model", str(spec),
                                    "-p", "a cat", "-p", "a dog", "--method", "exact"])
    assert res.exit_code == 2 and "--method particles" in res.output and "Traceback" not in res.output
    with pytest.raises(UsageError, match="method must be one of auto, exact, particles"):
        from textsr import rank

        rank(np.zeros((8, 8, 3)), ["a", "b"], scale=8, method="closed")


def _scene_lr(shape, colour, background, size, position, seed, scale):
    """A built-in-world image drawn from one component (colours varied, pixel noise), average-pooled."""
    from textsr.shapes_world import build_catalog
    from textsr.shapes_world.ambiguity import downsample_image, sample_component

    cat = build_catalog(64, shapes=(shape,), colours=(colour,), backgrounds=(background,), sizes=(size,),
                        positions=(position,))
    lr = downsample_image(sample_component(cat, 0, np.random.default_rng(seed)), scale)
    return ((lr.transpose(1, 2, 0) + 1) / 2).clip(0, 1).astype(np.float32)


@pytest.mark.parametrize("scene, scale, prompts", [
    # exact log p(y | prompt) 856.93 / 855.32 / 854.63: P 0.77 / 0.15 / 0.08
    (("circle", "red", "blue", "small", (1, 1), 1), 8,
     ["a red circle", "a red ring on blue", "a small red circle in the center"]),
    # 217.60 / 216.90 / -166.65: P 0.67 / 0.33 / 0
    (("ring", "blue", "black", "small", (0, 0), 10), 16, ["a blue ring", "a white ring", "a small blue ring on black"]),
])
def test_particle_rank_orders_near_tied_prompts_as_the_exact_evidence(scene, scale, prompts):
    """Prompts less than 2 nats apart: the particle estimate (few particles, few steps) puts the exact best first
    and its P within total variation 0.2 of the exact P (bench/rank_scenes.py measures the defaults)."""
    from textsr import rank
    from textsr.model_registry import load_model

    backend = load_model("builtin-shapes")
    lr = _scene_lr(*scene, scale=scale)
    exact = {e["prompt"]: e["probability"] for e in rank(lr, prompts, scale=scale, model=backend).entries}
    stages = []
    got = rank(lr, prompts, scale=scale, model=backend, particles=8, samples=2, steps=20,
               callback=lambda p: stages.append(p.stage))
    assert got.method == "particles" and set(stages) == {"16px"}  # only the evidence stage runs
    assert got.entries[0]["prompt"] == max(exact, key=exact.get)
    assert 0.5 * sum(abs(e["probability"] - exact[e["prompt"]]) for e in got.entries) < 0.2


def test_builtin_world_exact_evidence_is_the_cascade_evidence_and_shapes_sum_to_one():
    from textsr.demo import demo_image
    from textsr.gaussian_mixture import log_evidence
    from textsr.model_registry import load_model
    from textsr.operators import AvgPool

    backend = load_model("builtin-shapes")
    y = torch.from_numpy(demo_image()).permute(2, 0, 1)[None].double() * 2 - 1
    op = AvgPool(8, (3, 64, 64))
    full = backend.exact_evidence(y, op, "a red circle")
    # stage I of the default cascade: the 16 px prior (the 64 px one pooled 4x) observed through A_2
    lo = backend.mixture_lo.to(dtype=torch.float64).select(("circle", "red"))
    assert full == pytest.approx(float(log_evidence(lo, AvgPool(2, (3, 16, 16)), y, 0.0)[0]), abs=1e-6)
    shapes = backend.shape_posterior(y, op)
    assert sum(shapes.values()) == pytest.approx(1.0)
    assert set(shapes) == {"circle", "square", "triangle", "star", "ring", "cross"}  # 8x: the shape is open
    assert backend.shape_posterior(y, op, "a red star") == pytest.approx({"star": 1.0})
