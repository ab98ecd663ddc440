"""Issue 10 item 10: steps above what the schedule allows are clamped, and results.json records the
steps that ran (with the requested number and a note), not the request."""

from __future__ import annotations

import json

import numpy as np
import pytest

from textsr.api import explore
from textsr.backends.base import Backend, ModelInfo
from textsr.cascade import Stage
from textsr.schedule import NoiseSchedule
from textsr.solvers import make_config

try:  # tests/ is not a package: pytest puts it on sys.path
    from oracles import GaussianDenoiser
except ImportError:  # pragma: no cover
    from tests.oracles import GaussianDenoiser


class ShortSchedule(Backend):
    """A closed-form Gaussian prior on a 20-step schedule, two stages."""

    info = ModelInfo(name="short-schedule", backend="stub", description="tests")

    def __init__(self, T: int = 20):
        self.schedule = NoiseSchedule.linear(T)

    def check_size(self, lr_hw, scale):
        pass

    def encode_prompt(self, prompt):
        return None

    def build_stages(self, solver, solver_options, options):
        den = GaussianDenoiser(self.schedule, 0.0, 0.3)
        return [Stage("base", den, divisor=2, solver=make_config(solver, **solver_options)),
                Stage("sr", den, solver=make_config(solver, **{**solver_options, "steps": 5}))]

    def text_scores(self, x, prompt):
        return None


def test_steps_above_the_schedule_record_what_ran(tmp_path):
    lr = np.full((4, 4, 3), 0.5, np.float32)
    r = explore(lr, ["a"], scale=4, model=ShortSchedule(20), solver="ddnm", samples=1,
                steps=1_000_000_000)
    per_stage = r.settings.solver_dict()["per_stage"]
    assert [s["steps"] for s in per_stage] == [20, 5]
    assert per_stage[0]["steps_requested"] == 1_000_000_000 and "steps_requested" not in per_stage[1]
    assert r.settings.solver["steps"] == [20, 5] and r.settings.solver["steps_requested"] == 1_000_000_000
    assert any("1000000000 steps requested" in n and "ran 20" in n for n in r.notes), r.notes
    doc = json.loads(r.save(tmp_path / "o")["results.json"].read_text())
    assert doc["solver"]["steps"] == [20, 5] and [s["steps"] for s in doc["solver"]["per_stage"]] == [20, 5]
    assert any("ran 20" in n for n in doc["input"]["notes"] + doc.get("notes", []))


def test_start_below_one_clamps_the_steps_too():
    lr = np.full((4, 4, 3), 0.5, np.float32)
    r = explore(lr, ["a"], scale=4, model=ShortSchedule(20), solver="ddnm", samples=1, steps=15,
                solver_options={"start": 0.5})
    assert [s["steps"] for s in r.settings.solver_dict()["per_stage"]] == [10, 5]


def test_steps_within_the_schedule_are_recorded_unchanged():
    lr = np.full((4, 4, 3), 0.5, np.float32)
    r = explore(lr, ["a"], scale=4, model=ShortSchedule(20), solver="ddnm", samples=1, steps=7)
    assert [s["steps"] for s in r.settings.solver_dict()["per_stage"]] == [7, 5]
    assert r.settings.solver["steps"] == [7, 5] and "steps_requested" not in r.settings.solver
    assert not any("steps requested" in n for n in r.notes)


@pytest.mark.parametrize("steps", [10**9])
def test_cli_records_the_steps_that_ran(tmp_path, steps):
    from click.testing import CliRunner
    from PIL import Image

    from textsr.cli import main
    from textsr.demo import demo_image

    Image.fromarray((demo_image() * 255).round().astype(np.uint8)).save(tmp_path / "in.png")
    res = CliRunner().invoke(main, ["upscale", str(tmp_path / "in.png"), "-x", "8", "-n", "1", "-q",
                                    "--steps", str(steps),
                                    "--solver-option", "start=0.004", "-o", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "o" / "results.json").read_text())
    ran = [s["steps"] for s in doc["solver"]["per_stage"]]
    assert max(ran) < 10 and doc["solver"]["steps_requested"] == steps
    assert "steps requested" in res.output
