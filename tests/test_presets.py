"""preset="paper": resolution (overrides, errors), what results.json records, and the preset end to end
on the tiny DeepFloyd IF through the API, the CLI, a batch manifest and the app's request."""

import json
import math

import pytest
import torch

from textsr.errors import UsageError
from textsr.presets import PRESETS, check_preset, resolve_preset
from textsr.testing.tiny_deepfloyd_if import build_tiny_if

SCALE, LR = 8, 4
IF = "deepfloyd-if"


def resolve(solver="ddnm", operator=None, solver_options=None, model_options=None, name="paper", **kw):
    return resolve_preset(name, backend=IF, solver=solver, operator=operator, solver_options=solver_options,
                          model_options=model_options, **kw)


# ------------------------------------------------------------------------------------------- resolution

def test_paper_preset_per_solver():
    ddnm = resolve("ddnm")
    assert ddnm.name == "paper" and ddnm.operator == "bicubic-reflect"
    assert ddnm.model_options == {"guidance_scale": [7.0, 4.0], "noise_level": 250, "thresholding": True}
    assert ddnm.solver_options == {"stage_1": {"steps": 100, "step_kind": "ddpm", "init": "noise"},
                                   "stage_2": {"steps": 50, "step_kind": "ddpm", "init": "noise"}}
    assert resolve("ddnm+").solver_options == ddnm.solver_options
    dps = resolve("dps").solver_options
    assert dps["stage_1"] == {"steps": 250, "skip": 100, "init": "pinv", "step_kind": "ddpm", "zeta": 0.5}
    assert dps["stage_2"] == {"steps": 100, "step_kind": "ddpm", "init": "noise", "zeta": 0.5}
    pigdm = resolve("pigdm").solver_options
    assert pigdm["stage_1"]["weighting"] == pigdm["stage_2"]["weighting"] == "official"
    assert {k: v for k, v in pigdm["stage_1"].items() if k != "weighting"} == dps["stage_1"]


def test_explicit_options_override_the_preset():
    # an explicit operator, a model option, a nested stage option
    r = resolve("dps", operator="avgpool", model_options={"guidance_scale": 3},
                solver_options={"stage_2": {"zeta": 2.0}})
    assert r.operator == "avgpool" and r.model_options["guidance_scale"] == 3 and r.model_options["noise_level"] == 250
    assert r.solver_options["stage_2"]["zeta"] == 2.0 and r.solver_options["stage_1"]["zeta"] == 0.5
    # flat options apply to every stage: they leave the preset's stage keys out
    r = resolve("dps", solver_options={"zeta": 1.0, "steps": 20})
    assert r.solver_options["zeta"] == 1.0 and r.solver_options["steps"] == 20
    assert "zeta" not in r.solver_options["stage_1"] and "steps" not in r.solver_options["stage_2"]
    # other steps keep the late start where it begins: skip 100 of 250 -> start 0.6
    assert r.solver_options["stage_1"]["start"] == pytest.approx(0.6) and "skip" not in r.solver_options["stage_1"]
    # a late start of the user's replaces the preset's (both forms)
    r = resolve("pigdm", solver_options={"stage_1": {"start": 0.3}})
    assert r.solver_options["stage_1"]["start"] == 0.3 and "skip" not in r.solver_options["stage_1"]
    r = resolve("pigdm", solver_options={"skip": 50})
    assert r.solver_options["skip"] == 50 and "skip" not in r.solver_options["stage_1"]
    # IF options: steps replaces the preset's per-stage steps, warm_start its stage-I start
    r = resolve("dps", model_options={"steps": [30, 20], "warm_start": 0.5})
    assert "steps" not in r.solver_options["stage_1"] and "steps" not in r.solver_options["stage_2"]
    assert not {"skip", "start", "init"} & set(r.solver_options["stage_1"])
    # a one-stage model: the preset's stage-II options are dropped
    assert set(resolve("ddnm", stages=("stage_1",)).solver_options) == {"stage_1"}


def test_no_preset_keeps_the_options_and_the_default_operator():
    r = resolve_preset(None, backend="builtin-shapes", solver="ddnm", operator=None, solver_options={"steps": 3},
                       model_options={"a": 1})
    assert (r.name, r.operator, r.solver_options, r.model_options) == (None, "avgpool", {"steps": 3}, {"a": 1})


def test_unknown_preset_and_other_backends_are_usage_errors():
    with pytest.raises(UsageError, match="unknown preset 'papr'; choose one of paper"):
        check_preset("papr")
    for backend in ("builtin-shapes", "unclip", "latent", "kandinsky", "pixel", "gaussian-mixture"):
        with pytest.raises(UsageError,
                           match=f"preset 'paper' is for deepfloyd-if models .*; this model is a '{backend}'"):
            resolve_preset("paper", backend=backend, solver="ddnm", operator=None, solver_options={}, model_options={})
    assert set(PRESETS["paper"].solver_options) == {"plain", "ddnm", "ddnm+", "dps", "pigdm"}


# ------------------------------------------------------------------------------------------- end to end

@pytest.fixture(scope="module")
def tiny_spec(tmp_path_factory):
    return build_tiny_if(tmp_path_factory.mktemp("tiny_if_preset"))


@pytest.fixture(scope="module")
def lr_image():
    return (0.25 + 0.5 * torch.rand(LR, LR, 3, generator=torch.Generator().manual_seed(3))).numpy()


def test_explore_records_the_preset_and_every_stage(tiny_spec, lr_image, tmp_path):
    from textsr import explore
    from textsr.schema import schema_errors

    out = explore(lr_image, ["a photo of a cat"], scale=SCALE, model=str(tiny_spec), solver="pigdm", samples=1,
                  steps=4, preset="paper", model_options={"guidance_scale": [5, 3]}, device="cpu")
    out.save(tmp_path / "run")
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert res["preset"] == "paper" and res["operator"] == "bicubic-reflect"
    assert res["model_options"] == {"guidance_scale": [5, 3], "noise_level": 250, "thresholding": True}
    s1, s2 = res["solver"]["per_stage"]
    assert (s1["stage"], s1["steps"], s1["step_kind"], s1["init"], s1["weighting"], s1["zeta"]) == \
        ("stage_1", 4, "ddpm", "pinv", "official", 0.5)
    assert s1["start"] == pytest.approx(0.6) and s1["skip"] == 0
    assert (s2["steps"], s2["step_kind"], s2["init"], s2["start"], s2["weighting"]) == \
        (4, "ddpm", "noise", 1.0, "official")
    assert s1["model_options"] == {"guidance_scale": 5.0, "thresholding": True}
    assert s2["model_options"] == {"guidance_scale": 3.0, "thresholding": True, "noise_level": 250}
    assert schema_errors(res) == []
    plain = explore(lr_image, ["a cat"], scale=SCALE, model=str(tiny_spec), solver="ddnm", samples=1, steps=2,
                    device="cpu").results_dict()
    assert plain["preset"] is None and plain["operator"] == "avgpool"


def test_explore_refuses_the_preset_for_other_models_before_loading(lr_image, monkeypatch):
    from textsr import api, explore

    monkeypatch.setattr(api, "resolve_backend", lambda req: pytest.fail("the model was loaded"))
    with pytest.raises(UsageError,
                       match="preset 'paper' is for deepfloyd-if models .*; this model is a 'shapes' model"):
        explore(lr_image, ["a red circle"], scale=SCALE, model="builtin-shapes", preset="paper")
    with pytest.raises(UsageError, match="preset must be one of paper; got 'fast'"):
        explore(lr_image, ["a red circle"], scale=SCALE, model="builtin-shapes", preset="fast")


def cli(args):
    from click.testing import CliRunner

    from textsr.cli import main

    return CliRunner().invoke(main, args)


@pytest.fixture(scope="module")
def lr_png(tmp_path_factory):
    from PIL import Image

    path = tmp_path_factory.mktemp("lr") / "lr.png"
    pixels = 64 + 128 * torch.rand(LR, LR, 3, generator=torch.Generator().manual_seed(0))
    Image.fromarray(pixels.byte().numpy()).save(path)
    return path


@pytest.mark.parametrize("solver", ["plain", "ddnm", "ddnm+", "dps", "pigdm"])
def test_cli_upscale_preset_paper_every_solver(tiny_spec, lr_png, tmp_path, solver):
    """``textsr upscale ... --preset paper`` on the tiny IF with every solver (few steps: --steps 3);
    noiseless DDNM and DDNM+ reach LR-PSNR >= 100 dB against the preset's bicubic-reflect operator."""
    out = tmp_path / "out"
    res = cli(["upscale", str(lr_png), "--scale", str(SCALE), "--model", str(tiny_spec), "-p", "a photo of a cat",
               "--solver", solver, "--preset", "paper", "--steps", "3", "-n", "2", "-o", str(out), "-q"])
    assert res.exit_code == 0, res.output
    doc = json.loads((out / "results.json").read_text())
    assert doc["preset"] == "paper" and doc["operator"] == "bicubic-reflect"
    assert [s["step_kind"] for s in doc["solver"]["per_stage"]] == ["ddpm", "ddpm"]
    psnr = [s["lr_psnr"] for s in doc["prompts"][0]["samples"]]
    assert all(math.isfinite(p) or p == math.inf for p in psnr)
    if solver in ("ddnm", "ddnm+"):
        assert min(psnr) >= 100, psnr


def test_cli_preset_errors_exit_2(lr_png, tmp_path):
    res = cli(["upscale", str(lr_png), "--scale", str(SCALE), "-p", "a red circle", "--preset", "paper",
               "-o", str(tmp_path / "o"), "-q"])
    assert res.exit_code == 2 and "deepfloyd-if models" in res.output and "Traceback" not in res.output
    res = cli(["upscale", str(lr_png), "--scale", str(SCALE), "--preset", "best", "-o", str(tmp_path / "o"), "-q"])
    assert res.exit_code == 2 and "paper" in res.output


def test_batch_manifest_takes_a_preset(tiny_spec, lr_png, tmp_path):
    from textsr.batch import load_manifest, run_job

    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"image": str(lr_png), "scale": SCALE, "model": str(tiny_spec), "solver": "ddnm",
                                    "prompts": ["a cat"], "samples": 1, "steps": 2, "preset": "paper",
                                    "out": "job"}) + "\n")
    (job,) = load_manifest(manifest)
    assert job.kwargs["preset"] == "paper"
    assert run_job(job).status == "done"
    assert json.loads((tmp_path / "job" / "results.json").read_text())["preset"] == "paper"


def test_app_request_takes_a_preset(tiny_spec, lr_image):
    pytest.importorskip("gradio")
    from textsr.app import core
    from textsr.model_registry import load_model

    backend = load_model(tiny_spec, device="cpu", offline=True)

    class Pool:
        def get(self, name, load=None):
            return backend

    req, _ = core.page_request(lr_image, "a cat", template=None, values=None, model="tiny", solver="ddnm",
                               scale=SCALE, samples=1, seed=0, steps=2, preset="paper")
    out = core.run_request(req, Pool(), core.Limits())
    assert out.settings.preset == "paper" and out.settings.operator == "bicubic-reflect"


@pytest.mark.parametrize("solver", ["ddnm+", pytest.param("ddnm", marks=pytest.mark.slow),
                                    pytest.param("dps", marks=pytest.mark.slow),
                                    pytest.param("pigdm", marks=pytest.mark.slow)])
def test_cli_real_paper_preset(tiny_spec, lr_png, tmp_path, solver):
    """The preset's real step counts (DDNM 100 + 50, DPS/PiGDM 150 of 250 + 100): measured 2.5-3.4 s
    (DDNM, DDNM+) and 10.5-11 s (DPS, PiGDM) per call on 2 shared cores; DDNM+ runs in the suite."""
    out = tmp_path / "out"
    res = cli(["upscale", str(lr_png), "--scale", str(SCALE), "--model", str(tiny_spec), "-p", "a photo of a cat",
               "--solver", solver, "--preset", "paper", "-n", "1", "-o", str(out), "-q"])
    assert res.exit_code == 0, res.output
    doc = json.loads((out / "results.json").read_text())
    steps = [s["steps"] for s in doc["solver"]["per_stage"]]
    assert steps == ([100, 50] if solver.startswith("ddnm") else [250, 100])
    if solver.startswith("ddnm"):
        assert doc["prompts"][0]["samples"][0]["lr_psnr"] >= 100
