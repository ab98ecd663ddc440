"""End-to-end command-line tests on the built-in offline model (small step counts)."""

import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from textsr.cli import main
from textsr.demo import demo_image
from textsr.schema import validate_results

FAST = ["--steps", "4", "--samples", "2", "--quiet"]


@pytest.fixture(scope="module")
def lr_rgb():
    return (demo_image() * 255).round().astype(np.uint8)  # 8x8 RGB


def _run(args):
    return CliRunner().invoke(main, args, catch_exceptions=False)


def test_help_is_fast_because_imports_are_lazy():
    code = "import sys, textsr.cli; print('torch' in sys.modules, 'diffusers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
    res = subprocess.run([sys.executable, "-m", "textsr.cli", "--help"], capture_output=True, text=True)
    assert res.returncode == 0 and "upscale" in res.stdout and "demo" in res.stdout


@pytest.mark.parametrize("fmt,mode", [("png", "RGB"), ("jpeg", "RGB"), ("webp", "RGB"), ("png", "L"),
                                      ("png", "RGBA"), ("png", "I;16"), ("tiff", "RGB"), ("bmp", "RGB")])
def test_upscale_formats(tmp_path, lr_rgb, fmt, mode):
    if mode == "L":
        im = Image.fromarray(lr_rgb).convert("L")
    elif mode == "RGBA":
        im = Image.fromarray(np.dstack([lr_rgb, np.full(lr_rgb.shape[:2], 255, np.uint8)]), "RGBA")
    elif mode == "I;16":
        im = Image.fromarray((lr_rgb.mean(-1) * 257).astype(np.uint16))
    else:
        im = Image.fromarray(lr_rgb)
    src = tmp_path / f"in.{fmt}"
    im.save(src, format=fmt.upper() if fmt != "jpeg" else "JPEG", **({"quality": 95} if fmt == "jpeg" else {}))
    out = tmp_path / "out"
    # named: lossy (JPEG, WebP) and grey copies of a scene are no longer scenes of the world (test_model_choice)
    res = _run(["upscale", str(src), "--scale", "8", "-p", "a circle", "-o", str(out), "--model", "builtin-shapes",
                *FAST])
    assert res.exit_code == 0, res.output
    assert "results in" in res.output and "LR-PSNR" in res.output
    doc = json.loads((out / "results.json").read_text())
    validate_results(doc)
    assert doc["output_size"] == [64, 64]
    for f in ("input.png", "nearest.png", "bicubic.png", "grid.png", "index.html"):
        assert (out / f).exists()
    assert all(s["lr_psnr"] is None or s["lr_psnr"] > 45 for p in doc["prompts"] for s in p["samples"])
    if mode in ("L", "RGBA", "I;16"):
        assert doc["input"]["notes"], "what was done to the input must be said"


def test_template_sweep_and_exactness(tmp_path, lr_rgb):
    src = tmp_path / "in.png"
    Image.fromarray(lr_rgb).save(src)
    out = tmp_path / "o"
    res = _run(["upscale", str(src), "-x", "8", "--template", "a red {shape}", "--values", "circle,star,ring",
                "-o", str(out), "--steps", "30", "-n", "3", "-q"])
    assert res.exit_code == 0, res.output
    doc = json.loads((out / "results.json").read_text())
    assert [p["prompt"] for p in doc["prompts"]] == ["a red circle", "a red star", "a red ring"]
    for p in doc["prompts"]:
        assert p["text_consistency"] == 1.0
        assert all(s["lr_psnr"] is None or s["lr_psnr"] > 100 for s in p["samples"])


def test_simulate_reports_reference_scores(tmp_path):
    from textsr.shapes_world import render_scene

    img, _ = render_scene("star", "yellow", "black", "large", (1, 1))
    src = tmp_path / "hr.png"
    Image.fromarray((img * 255).round().astype(np.uint8)).save(src)
    res = _run(["upscale", str(src), "-x", "4", "--simulate", "-p", "a star", "-o", str(tmp_path / "o"), *FAST])
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "o" / "results.json").read_text())
    assert "reference" in doc and "vs. the original" in res.output


@pytest.mark.parametrize(
    "args,needle",
    [
        (["upscale", "{missing}", "-x", "8"], "no such file"),
        (["upscale", "{notimage}", "-x", "8"], "image"),
        (["upscale", "{img}", "-x", "1"], "scale"),
        (["upscale", "{img}", "-x", "8", "--model", "no-such-model"], "unknown model"),
        (["upscale", "{img}", "-x", "8", "--max-pixels", "10"], "pixels"),
        (["upscale", "{img}", "-x", "8", "-p", "a circle and a star"], "one object"),
        (["upscale", "{img}", "-x", "8", "--solver-option", "eta=3"], "eta"),
        (["upscale", "{img}", "-x", "8", "--option", "bogus=1"], "bogus"),
        (["upscale", "{img}", "-x", "8", "--template", "no slot", "--values", "a,b"], "slot"),
        (["upscale", "{img}", "-x", "8", "--model", "{spec}"], "download"),
    ],
)
def test_bad_input_clear_error_nonzero_exit(tmp_path, lr_rgb, args, needle):
    img = tmp_path / "in.png"
    Image.fromarray(lr_rgb).save(img)
    notimage = tmp_path / "x.png"
    notimage.write_text("this is not a png")
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"backend": "deepfloyd-if", "stages": {"stage_1": "nobody/not-cached-IF-I",
                                                                         "stage_2": "nobody/not-cached-IF-II"}}))
    fill = {"{missing}": str(tmp_path / "nope.png"), "{notimage}": str(notimage), "{img}": str(img),
            "{spec}": str(spec)}
    args = [fill.get(a, a) for a in args] + ["-o", str(tmp_path / "out"), "-q"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2, (res.exit_code, res.output)
    assert needle in res.output.lower(), res.output
    assert "Traceback" not in res.output


def test_models_lists_builtin_offline():
    res = _run(["models"])
    assert res.exit_code == 0 and "builtin-shapes" in res.output and "deepfloyd-if" in res.output
    rows = json.loads(_run(["models", "--json"]).output)
    assert any(r["name"] == "builtin-shapes" for r in rows)
