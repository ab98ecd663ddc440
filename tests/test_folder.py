"""Issue 19 item 3: ``textsr upscale DIR --out OUT`` runs every image of a folder (one run folder each,
named after the image), shows progress over the images, skips images already done, reports failed
images at the end without stopping the rest, and its exit code says whether all succeeded."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from cli_helpers import demo_png
from cli_helpers import run_cli as run
from PIL import Image

FAST = ["-x", 8, "-p", "a red circle", "--steps", 3, "-n", 1, "-q"]


def folder(tmp_path: Path) -> Path:
    d = tmp_path / "photos"
    d.mkdir()
    demo_png(d / "a.png")
    demo_png(d / "b.png")
    (d / "broken.png").write_text("not an image")
    (d / "notes.txt").write_text("x")
    (d / "sub").mkdir()
    demo_png(d / "sub" / "deeper.png")  # sub-folders are not read
    return d


def test_every_image_runs_into_its_own_folder_and_failures_come_last(tmp_path):
    d, out = folder(tmp_path), tmp_path / "out"
    res = run(["upscale", d, "-o", out, *FAST])
    assert res.exit_code == 1  # one image failed
    lines = res.output.splitlines()
    assert [line.split(":")[0] for line in lines[:3]] == ["[1/3] a.png", "[2/3] b.png", "[3/3] broken.png"]
    assert "3 images in" in res.output and "2 done, 0 skipped, 1 failed" in res.output
    assert lines[-1].startswith("failed: broken.png:") and "not an image" in lines[-1]
    assert "not images, not read: notes.txt, sub/" in res.output
    for name in ("a", "b"):
        doc = json.loads((out / name / "results.json").read_text())
        assert doc["input"]["path"].endswith(f"{name}.png")
    assert not (out / "broken" / "results.json").exists() and not (out / "deeper").exists()


def test_images_done_are_skipped_and_overwrite_reruns_them(tmp_path):
    d, out = folder(tmp_path), tmp_path / "out"
    (d / "broken.png").unlink()
    assert run(["upscale", d, "-o", out, *FAST]).exit_code == 0
    before = (out / "a" / "results.json").stat().st_mtime_ns
    res = run(["upscale", d, "-o", out, *FAST])
    assert res.exit_code == 0 and "0 done, 2 skipped, 0 failed" in res.output
    assert (out / "a" / "results.json").stat().st_mtime_ns == before
    res = run(["upscale", d, "-o", out, "--overwrite", *FAST])
    assert res.exit_code == 0 and "2 done, 0 skipped" in res.output
    assert (out / "a" / "results.json").stat().st_mtime_ns != before


def test_images_sharing_a_name_get_their_extension(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    demo_png(d / "cat.png")
    Image.open(d / "cat.png").save(d / "cat.bmp")
    res = run(["upscale", d, "-o", tmp_path / "out", *FAST])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["cat-bmp", "cat-png"]


def test_the_model_loads_once_for_the_folder(tmp_path, monkeypatch):
    import textsr.model_registry as reg
    from textsr.model_choice import builtin_world

    builtin_world.cache_clear()
    calls = []
    real = reg.load_model
    monkeypatch.setattr(reg, "load_model", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    d = folder(tmp_path)
    (d / "broken.png").unlink()
    assert run(["upscale", d, "-o", tmp_path / "out", *FAST]).exit_code == 0
    assert calls == ["builtin-shapes"]


def test_a_folder_of_photos_without_a_model_runs_nothing(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    demo_png(d / "scene.png")
    y, x = np.mgrid[0:64, 0:64] / 63
    Image.fromarray((np.stack([x, y, 0.5 + 0 * x], -1) * 255).astype(np.uint8)).save(d / "photo.png")
    res = run(["upscale", d, "-x", 8, "-o", tmp_path / "out", "-q", "--steps", 3])
    assert res.exit_code == 2 and "1 of the 2 images need a real one (photo.png); nothing was run" in res.output
    assert "deepfloyd-if" in res.output and not (tmp_path / "out").exists()
    res = run(["upscale", d, "-x", 8, "--model", "builtin-shapes", "-o", tmp_path / "out", "-q", "--steps", 3])
    assert res.exit_code == 0 and res.output.startswith("caution: builtin-shapes is the built-in TOY world")


def test_an_empty_folder_says_what_it_looked_for(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.txt").write_text("x")
    res = run(["upscale", tmp_path / "d", "-o", tmp_path / "out", *FAST])
    assert res.exit_code == 2 and "holds no images (looked for .png" in res.output and "found x.txt" in res.output
