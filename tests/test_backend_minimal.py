"""The Backend contract is the whole interface: a backend that implements only the abstract hooks
(and inherits every documented default) runs through ``explore`` end to end."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

from tests.oracles import GaussianDenoiser
from textsr import explore
from textsr.backends.base import Backend, ModelInfo
from textsr.cascade import Stage
from textsr.schedule import NoiseSchedule
from textsr.solvers import make_config


class MinimalBackend(Backend):
    info = ModelInfo(name="minimal", backend="minimal", description="N(0, 0.3^2 I) prior (tests)")

    def check_size(self, lr_hw, scale):
        pass

    def encode_prompt(self, prompt):
        return None

    def build_stages(self, solver, solver_options, options):
        return [Stage("base", GaussianDenoiser(NoiseSchedule.linear(1000), 0.0, 0.3),
                      solver=make_config(solver, **solver_options))]


def test_abstract_hooks_are_exactly_the_required_ones():
    assert Backend.__abstractmethods__ == {"check_size", "encode_prompt", "build_stages"}


def test_minimal_backend_explores_with_the_defaults():
    lr = np.random.default_rng(0).random((4, 4, 3)).astype(np.float32)
    out = explore(lr, ["a", "b"], scale=2, model=MinimalBackend(), solver="ddnm", samples=2, steps=10)
    assert [p.prompt for p in out.prompts] == ["a", "b"]
    assert all(v > 100 for p in out.prompts for v in p.lr_psnr)  # exact DDNM on a Gaussian prior, float32
    assert all(p.text_consistency is None and p.extra == {} and p.tags is None for p in out.prompts)
    assert out.settings.model == {"name": "minimal", "backend": "minimal", "device": "cpu", "dtype": "float32"}
    assert out.settings.stages[0]["steps"] == 10


def test_explore_probes_no_undeclared_hooks():
    """explore's phases call backend hooks by name only; every one of them is declared on Backend."""
    from textsr import api

    src = inspect.getsource(api)
    assert "getattr(backend" not in src and "hasattr(backend" not in src
    import re

    called = set(re.findall(r"\bbackend\.([A-Za-z_]\w*)", src))
    declared = {n for n in dir(Backend) if not n.startswith("_")}
    assert called <= declared, called - declared


@pytest.mark.parametrize("bad", [object(), "no-such-model"])
def test_a_model_that_is_neither_backend_nor_known_is_refused(bad):
    from textsr.errors import TextSRError

    with pytest.raises((TextSRError, TypeError)):
        explore(torch.rand(4, 4, 3).numpy(), scale=2, model=bad, samples=1, steps=2)
