"""Issue 19 item 2: memory options by name (model CPU offload, sequential offload, attention slicing, VAE
tiling) for every real backend, from the CLI, API, app and manifests; an out-of-memory error names them.

On this CPU-only machine the options cannot save GPU memory; what is checked is that each backend
applies the ones it supports without changing a sample, refuses the others saying why, that model CPU
offload moves a module when it (or a child) runs, and that the out-of-memory message names the remedies."""

from __future__ import annotations

import json

import pytest
import torch
from cli_helpers import run_cli as run
from test_backend_contract import CASES, lr_input

from textsr import explore
from textsr.backends.options import LoadOptions, Residency
from textsr.errors import RuntimeFailure, UsageError
from textsr.model_registry import load_model
from textsr.request import MEMORY_OPTIONS


@pytest.fixture(scope="module", params=CASES, ids=lambda c: c.name)
def case(request, tmp_path_factory):
    c = request.param
    return c, c.model if c.build is None else str(c.build(tmp_path_factory.mktemp(c.name)))


def sample(c, model, **kw):
    return explore(lr_input(c), [c.prompts[0]], scale=c.scale, model=model, solver="ddnm", samples=1,
                   steps=2, model_options=c.options, **kw).prompts[0].samples


def test_each_backend_applies_its_memory_options_and_refuses_the_others(case):
    c, source = case
    plain = load_model(source, device="cpu", offline=True)
    ref = sample(c, plain)
    assert "memory" not in plain.describe()
    for option in MEMORY_OPTIONS:
        if option in type(plain).memory_options:
            got = sample(c, source, **{option: True})  # loaded by explore with the option
            assert abs(got - ref).max() < 1e-4, option  # slicing sums attention in another order
            be = load_model(source, device="cpu", offline=True, load={option: True})
            assert be.describe()["memory"] == {option: True}
        else:
            with pytest.raises(UsageError, match=f"{option} does not apply to the .* model .*; its memory options"):
                sample(c, source, **{option: True})
    if c.name != "builtin-shapes":  # every real backend offers both kinds of offload
        assert {"cpu_offload", "sequential_cpu_offload"} <= set(type(plain).memory_options)


def test_the_cli_and_manifests_take_them_by_name(tmp_path):
    from textsr.testing.tiny_latent import build_tiny_latent

    spec = build_tiny_latent(tmp_path / "m")
    from PIL import Image

    Image.new("RGB", (4, 4), (120, 80, 40)).save(tmp_path / "in.png")
    out = tmp_path / "o"
    res = run(["upscale", tmp_path / "in.png", "-x", 4, "--model", spec, "--cpu-offload", "--vae-tiling",
               "--vae-slicing", "--attention-slicing", "--steps", 2, "-n", 1, "-q", "-o", out])
    assert res.exit_code == 0, res.output
    doc = json.loads((out / "results.json").read_text())
    assert doc["model"]["memory"] == {"cpu_offload": True, "attention_slicing": True, "vae_tiling": True,
                                      "vae_slicing": True}
    help_text = run(["upscale", "--help"]).output
    assert all(f"--{o.replace('_', '-')}" in help_text for o in MEMORY_OPTIONS)
    (tmp_path / "m.jsonl").write_text(json.dumps({"image": "in.png", "scale": 4, "model": str(spec), "steps": 2,
                                                  "samples": 1, "sequential_cpu_offload": True, "out": "b"}))
    res = run(["batch", tmp_path / "m.jsonl"])
    assert res.exit_code == 0, res.output
    memory = json.loads((tmp_path / "b" / "results.json").read_text())["model"]["memory"]
    assert memory == {"sequential_cpu_offload": True}
    res = run(["upscale", tmp_path / "in.png", "-x", 4, "--model", spec, "--cpu-offload", "--sequential-cpu-offload",
               "-q", "-o", tmp_path / "p"])
    assert res.exit_code == 2 and "choose one" in res.output


def test_a_loaded_model_does_not_take_memory_options():
    be = load_model("builtin-shapes", device="cpu")
    with pytest.raises(UsageError, match="apply when textsr loads the model.*load_model"):
        explore(lr_input(CASES[0]), "a red circle", scale=4, model=be, cpu_offload=True)


class Part(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = torch.nn.Linear(2, 2)
        self.moves: list[str] = []

    def forward(self, x):
        return self.inner(x)

    def decode(self, x):  # another entry point (a VAE's decode): runs a child, not forward
        return self.inner(x)

    def to(self, *a, **k):
        self.moves.append(str(a[0]) if a else str(k.get("device")))
        return super().to(*a, **k)


def test_model_offload_moves_the_part_that_runs():
    a, b = Part(), Part()
    res = Residency(torch.device("cpu"), {"a": a, "b": b})
    a.moves.clear(), b.moves.clear()
    with torch.no_grad():
        a(torch.zeros(1, 2))
        assert res.active == "a" and a.moves == ["cpu"] and b.moves == ["cpu"]  # b sent away, a brought in
        b.decode(torch.zeros(1, 2))  # through a child
        assert res.active == "b"
    a.moves.clear(), b.moves.clear()
    a(torch.zeros(1, 2))  # gradients recorded: nothing is sent away (backward needs b where it ran)
    assert res.active == "a" and b.moves == [] and a.moves == ["cpu"]
    off = Residency(torch.device("cpu"), {"a": Part()}, enabled=False)
    off.activate("a")
    assert off.active is None


@pytest.mark.parametrize("error", [torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                                   RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate"),
                                   MemoryError()])
def test_out_of_memory_names_the_remedies(tmp_path, monkeypatch, error):
    import textsr.api

    def oom(*a, **k):
        raise error

    monkeypatch.setattr(textsr.api, "sample_prompt", oom)
    with pytest.raises(RuntimeFailure, match=r"(?s)out of memory.*--batch-size 1.*--samples"):
        explore(lr_input(CASES[0]), "a red circle", scale=4, model="builtin-shapes")
    from textsr.testing.tiny_deepfloyd_if import build_tiny_if

    spec = build_tiny_if(tmp_path / "if")
    with pytest.raises(RuntimeFailure) as e:
        explore(lr_input(CASES[1]), "a fox", scale=8, model=str(spec))
    msg = str(e.value)
    assert "--cpu-offload" in msg and "--sequential-cpu-offload" in msg and "--attention-slicing" in msg
    assert "--vae-tiling" not in msg  # IF has no VAE: only the options this model supports


def test_out_of_memory_on_the_command_line(img, tmp_path, monkeypatch):
    import textsr.api

    def oom(*a, **k):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(textsr.api, "sample_prompt", oom)
    res = run(["upscale", img, "-x", 8, "-q", "-o", tmp_path / "o"])
    assert res.exit_code == 1 and "error: out of memory (CUDA out of memory. Tried to allocate 20.00 GiB)" in res.output
    assert "--batch-size 1" in res.output and not (tmp_path / "o" / "results.json").exists()


def test_load_options_checks():
    assert LoadOptions.of({}, "pixel", known=("cpu_offload",)) == LoadOptions()
    with pytest.raises(UsageError, match="vae_tiling does not apply to the pixel model .*no VAE.*cpu_offload"):
        LoadOptions.of({"load": {"vae_tiling": True}}, "pixel", known=("cpu_offload",))
    with pytest.raises(UsageError, match=r"unknown pixel load option\(s\) \['bogus'\]"):
        LoadOptions.of({"load": {"bogus": 1}}, "pixel", known=("cpu_offload",))
    with pytest.raises(UsageError, match="attention_slicing must be true or false"):
        LoadOptions.of({"load": {"attention_slicing": 1}}, "latent", known=("attention_slicing",))
