"""The contract every backend keeps, run through ``textsr.explore`` (the way users call it) on every
backend's tiny model: exact DDNM consistency, the prompt changes the output, a batch item equals the
same seed alone, half-precision weights load and keep the solver exact, bad options say what to fix.

Adding a backend: its module plus one ``Case`` line in ``CASES``.  Backend-specific behaviour (option
semantics, conditioning details, loading layouts) stays in ``tests/test_backend_<name>.py``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

from textsr import explore
from textsr.errors import UsageError
from textsr.model_registry import load_model


@dataclass(frozen=True)
class Case:
    """One backend's tiny model and the settings that make the contract checks fast on it.

    build: tiny-model builder ``folder -> spec path`` (None: ``model`` is a registry name); lr, scale:
    an input size and scale the model supports; options: model options (fast prior, CLIP guidance on so
    that the prompt matters); min_lr_psnr: DDNM's worst LR-PSNR with a noiseless input (dB); half: the
    model has weights that can load in half precision; refused: solvers the model must refuse;
    batch_steps: steps of the batch-vs-alone check per solver.
    """

    name: str
    build: Callable[[Path], Path] | None
    model: str = ""
    lr: int = 4
    scale: int = 4
    steps: int = 4
    options: dict = field(default_factory=dict)
    prompts: tuple[str, str] = ("a red fox", "a blue car")
    min_lr_psnr: float = 60.0
    half: bool = True
    refused: tuple[str, ...] = ()
    batch_steps: dict = field(default_factory=dict)


def _builder(module: str, name: str) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        import importlib

        return getattr(importlib.import_module(f"textsr.testing.{module}"), name)(folder)

    return build


CASES = [
    # float64 exact world: DDNM is exact to ~1e-15
    Case("builtin-shapes", None, model="builtin-shapes", lr=16, scale=4, prompts=("a red circle", "a blue square"),
         min_lr_psnr=250.0, half=False),
    Case("tiny-if", _builder("tiny_deepfloyd_if", "build_tiny_if"), lr=4, scale=8),
    # at x4 the decoder's operator is the identity and the super-resolution stage takes no text: x8
    Case("tiny-unclip", _builder("tiny_unclip", "build_tiny_unclip"), lr=4, scale=8, options={"prior_steps": 2}),
    Case("tiny-pixel", _builder("tiny_pixel", "build_tiny_pixel"), lr=4, scale=4, options={"clip_scale": 0.3}),
    # latent models: exact after the final pixel projection; no SVD in latent space
    Case("tiny-latent", _builder("tiny_latent", "build_tiny_latent"), refused=("pigdm", "tds")),
    # (on this random model DPS latents grow to ~50 within a few steps, where float round-off between batch
    # sizes grows chaotically; 2 steps agree to 1e-5)
    Case("tiny-kandinsky", _builder("tiny_kandinsky", "build_tiny_kandinsky"), options={"prior_steps": 2},
         refused=("pigdm", "tds"), batch_steps={"dps": 2}),
    # flow-matching latent models (docs/flow.md): 8x8 at x4 -> 32x32
    Case("tiny-flux", _builder("tiny_flux", "build_tiny_flux"), lr=8, refused=("pigdm", "tds")),
    Case("tiny-flux2-klein", _builder("tiny_flux", "build_tiny_flux2"), lr=8, refused=("pigdm", "tds")),
    Case("tiny-sd3", _builder("tiny_sd3", "build_tiny_sd3"), lr=8, refused=("pigdm", "tds")),
]


@pytest.fixture(scope="module", params=CASES, ids=lambda c: c.name)
def case(request, tmp_path_factory):
    """(case, model source, loaded backend): the model is built and loaded once per module."""
    c = request.param
    source = c.model if c.build is None else str(c.build(tmp_path_factory.mktemp(c.name)))
    return c, source, load_model(source, device="cpu", offline=True)


def lr_input(c: Case, seed: int = 0) -> np.ndarray:
    """A smooth random LR image (h, w, 3) in [0, 1] of the size the case supports."""
    g = np.random.default_rng(seed)
    coarse = torch.from_numpy(g.random((1, 3, 2, 2))).float()
    up = torch.nn.functional.interpolate(coarse, size=(c.lr, c.lr), mode="bilinear", align_corners=True)
    return up[0].permute(1, 2, 0).numpy()


def run(c: Case, model, solver: str = "ddnm", prompts=None, *, samples: int = 2, seed: int = 0,
        steps: int | None = None, **kw):
    return explore(lr_input(c), list(prompts or c.prompts[:1]), scale=c.scale, model=model, solver=solver,
                   samples=samples, seed=seed, steps=steps or c.steps, model_options=c.options, **kw)


def test_noiseless_ddnm_is_exactly_consistent_and_the_prompt_changes_the_output(case):
    c, _, backend = case
    out = run(c, backend, "ddnm", c.prompts)
    worst = min(v for p in out.prompts for v in p.lr_psnr)
    assert worst >= c.min_lr_psnr, worst
    a, b = (p.samples for p in out.prompts)  # same seeds, different prompts
    assert a.shape == b.shape == (2, c.lr * c.scale, c.lr * c.scale, 3)
    assert np.abs(a - b).max() > 1e-4
    # what ran is what was asked for: every stage took the requested steps
    assert out.settings.model["backend"] == backend.info.backend
    assert [s["steps"] for s in out.settings.stages] == [c.steps] * len(out.settings.stages)


@pytest.mark.parametrize("solver", ["ddnm", "dps"])
def test_a_batch_item_equals_the_same_seed_alone(case, solver):
    c, _, backend = case
    steps = c.batch_steps.get(solver, c.steps)
    batch = run(c, backend, solver, samples=3, seed=4, steps=steps).prompts[0]
    alone = run(c, backend, solver, samples=1, seed=5, steps=steps).prompts[0]
    assert batch.seeds[1] == alone.seeds[0] == 5
    # [0, 1] units; batch-size dependent kernels differ at float32 rounding, which steps amplify
    np.testing.assert_allclose(batch.samples[1], alone.samples[0], rtol=0, atol=5e-5)
    assert np.abs(batch.samples[0] - batch.samples[1]).max() > 1e-4  # and the seed matters


def _cpu_runs_float16() -> bool:
    try:
        w = torch.ones(1, 1, 3, 3, dtype=torch.float16)
        torch.nn.functional.conv2d(torch.ones(1, 1, 4, 4, dtype=torch.float16), w)
        return True
    except RuntimeError:
        return False


def test_half_precision_weights_load_and_the_solver_stays_exact(case):
    c, source, _ = case
    if not c.half:
        pytest.skip(f"{c.name} has no weights")
    if not _cpu_runs_float16():
        pytest.skip("this torch build cannot run float16 convolutions on the CPU")
    out = run(c, source, "ddnm", samples=1, steps=2, dtype="float16", device="cpu")
    assert out.settings.dtype == "float16" and out.settings.model["dtype"] == "float16"
    assert min(out.prompts[0].lr_psnr) >= c.min_lr_psnr  # the solver's arithmetic stays float32


def test_bad_options_say_what_to_fix(case):
    c, _, backend = case
    with pytest.raises(UsageError, match=r"(?s)bogus.*known"):
        explore(lr_input(c), ["a"], scale=c.scale, model=backend, samples=1, steps=1, model_options={"bogus": 1})
    with pytest.raises(UsageError, match="bogus"):
        explore(lr_input(c), ["a"], scale=c.scale, model=backend, samples=1, solver_options={"bogus": 1})
    for solver in c.refused:
        with pytest.raises(UsageError, match=r"use one of .*ddnm"):
            explore(lr_input(c), ["a"], scale=c.scale, model=backend, solver=solver, samples=1, steps=1)


def test_particles_give_every_prompt_its_evidence_and_a_batch_item_equals_its_seed_alone(case):
    """``explore(..., particles=N)`` through every stage of every backend that has a linear operator (latent
    models refuse the particle solver, see ``test_bad_options_say_what_to_fix``)."""
    c, _, backend = case
    if "tds" in c.refused:
        pytest.skip(f"{c.name} refuses the particle solver (no linear operator in latent space)")
    prompts = list(c.prompts)
    out = run(c, backend, None, prompts, samples=2, seed=4, steps=2, particles=3)
    assert [s["particles"] for s in out.settings.stages] == [3] * len(out.settings.stages)
    ev = [p.evidence for p in out.prompts]
    assert all(e is not None and e.particles == 3 and len(e.log_z_samples) == 2 for e in ev)
    assert all(math.isfinite(e.log_z) and 0.0 <= e.ess_min <= 1.0 for e in ev)
    assert sum(e.probability for e in ev) == pytest.approx(1.0)
    alone = run(c, backend, None, prompts[:1], samples=1, seed=5, steps=2, particles=3).prompts[0]
    np.testing.assert_allclose(out.prompts[0].samples[1], alone.samples[0], rtol=0, atol=5e-5)
    # float32 models: log Z agrees to float32 precision
    assert alone.evidence.log_z_samples[0] == pytest.approx(ev[0].log_z_samples[1], rel=1e-5, abs=1e-3)
