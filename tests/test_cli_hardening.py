"""Issue 10 on the command line: the output folder is checked before any work (1), another run is
refused unless --overwrite (4), bad values give a message and exit 2, never a traceback (8, 9)."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pytest
from cli_helpers import run_cli as run

import textsr.api
from textsr import io
from textsr.demo import demo_image

FAST = ["--steps", "3", "--samples", "2", "--quiet"]




def tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()} if root.exists() else set()


@pytest.fixture()
def no_sampling(monkeypatch):
    """explore must not even start."""

    def refuse(*a, **k):
        raise AssertionError("the run started: the folder was not checked before the work")

    monkeypatch.setattr(textsr.api, "explore_request", refuse)


# ----------------------------------------------------------------------------- item 1


def test_unwritable_output_folder_is_refused_before_sampling(tmp_path, img, no_sampling):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    res = run(["upscale", img, "-x", 8, "-o", blocker / "out", *FAST])
    assert res.exit_code == 2 and "cannot create the output folder" in res.output


def test_unwritable_folder_probe_is_refused_before_sampling(tmp_path, img, no_sampling, monkeypatch):
    def denied(*a, **k):  # tests run as root, who may write anywhere: the probe's write is refused instead
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr("tempfile.mkstemp", denied)
    res = run(["demo", "-o", tmp_path / "ro", "-q", "-n", 1])
    assert res.exit_code == 2 and "cannot write to the output folder" in res.output
    assert "Permission denied" in res.output


def test_full_disk_at_the_end_keeps_the_samples(tmp_path, img, monkeypatch):
    out = (tmp_path / "out").resolve()
    real = io.write_bytes_atomic
    count = {"n": 0}

    def fills_up(data, path):
        if Path(path).resolve().is_relative_to(out):
            count["n"] += 1
            if count["n"] > 4:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(data, path)

    monkeypatch.setattr(io, "write_bytes_atomic", fills_up)
    res = run(["upscale", img, "-x", 8, "-p", "a circle", "-o", out, *FAST])
    assert res.exit_code == 2, res.output
    assert "No space left on device" in res.output and "were written to" in res.output
    rescued = Path(res.output.split("were written to ")[1].split(" instead")[0])
    try:
        doc = json.loads((rescued / "results.json").read_text())
        assert (rescued / doc["prompts"][0]["samples"][1]["file"]).is_file() and (rescued / "index.html").is_file()
    finally:
        shutil.rmtree(rescued)
    assert tree(out) == set()  # nothing half-written: no PNG without results.json


# ----------------------------------------------------------------------------- item 4


def test_a_second_run_into_the_same_folder_is_refused(tmp_path, img):
    out = tmp_path / "o"
    first = run(["upscale", img, "-x", 8, "-p", "a circle", "-p", "a star", "-o", out, "-n", 3, "--steps", 3, "-q"])
    assert first.exit_code == 0
    before = tree(out)
    res = run(["upscale", img, "-x", 8, "-p", "a ring", "-o", out, *FAST])
    assert res.exit_code == 2 and "already holds a textsr run" in res.output and "--overwrite" in res.output
    assert tree(out) == before
    (out / "notes.txt").write_text("mine")
    res = run(["upscale", img, "-x", 8, "-p", "a ring", "-o", out, "--overwrite", *FAST])
    assert res.exit_code == 0, res.output
    assert tree(out) == {"input.png", "nearest.png", "bicubic.png", "grid.png", "results.json", "index.html",
                         "notes.txt", "00-a-ring/sample-00.png", "00-a-ring/sample-01.png", "00-a-ring/std.png"}


def test_demo_refuses_another_run_too(tmp_path):
    out = tmp_path / "d"
    assert run(["demo", "-o", out, "-n", 1, "-q"]).exit_code == 0
    res = run(["demo", "-o", out, "-n", 1, "-q"])
    assert res.exit_code == 2 and "--overwrite" in res.output
    assert run(["demo", "-o", out, "-n", 1, "-q", "--overwrite"]).exit_code == 0


def test_api_save_refuses_another_run(tmp_path):
    from textsr.errors import UsageError

    r = textsr.api.explore(demo_image(), ["a circle"], scale=8, samples=1, steps=3)
    r.save(tmp_path)
    with pytest.raises(UsageError, match="overwrite=True"):
        r.save(tmp_path)
    r.save(tmp_path, overwrite=True)


# ----------------------------------------------------------------------------- items 8, 9


@pytest.mark.parametrize("args,needle", [
    (["--sigma-y", "1e308"], "sigma_y must be a number from 0 to 2"),
    (["--sigma-y", "inf"], "sigma_y must be a number from 0 to 2"),
    (["--sigma-y", "nan"], "sigma_y must be a number from 0 to 2"),
    (["--sigma-y", "-0.1"], "sigma_y must be a number from 0 to 2"),
    (["--seed", "9223372036854775807"], "seed must be a whole number from 0 to 4294967295"),
    (["--seed", "-1"], "seed must be a whole number from 0 to 4294967295"),
    (["--batch-size", "-1"], "batch_size must be a whole number >= 1"),
    (["--batch-size", "0"], "batch_size must be a whole number >= 1"),
    (["--samples", "0"], "samples must be a whole number from 1 to 256"),
    (["--steps", "0"], "steps must be a whole number >= 1"),
    (["--max-pixels", "0"], "max_pixels must be"),
])
def test_bad_values_exit_2_with_a_message(tmp_path, img, args, needle, no_sampling):
    res = run(["upscale", img, "-x", 8, "-o", tmp_path / "o", "-q", *args])
    assert res.exit_code == 2 and needle in res.output, res.output
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("args,needle", [
    (["--port", "99999"], "99999 is not in the range 1<=x<=65535"),
    (["--port", "0"], "is not in the range"),
    (["--concurrency", "0"], "0 is not in the range 1<=x<=64"),
])
def test_app_bad_port_and_concurrency(args, needle, monkeypatch):
    import textsr.app

    monkeypatch.setattr(textsr.app, "launch", lambda **k: pytest.fail("launched"), raising=False)
    res = run(["app", *args])
    assert res.exit_code == 2 and needle in res.output, res.output


def test_seed_at_the_top_of_its_range_runs(tmp_path, img):
    res = run(["upscale", img, "-x", 8, "-o", tmp_path / "o", "--seed", str(2**32 - 1), *FAST])
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "o" / "results.json").read_text())
    assert [s["seed"] for s in doc["prompts"][0]["samples"]] == [2**32 - 1, 2**32]


# ----------------------------------------------------------------------------- item 1 on real file systems


def test_immutable_folder_is_refused_before_sampling(tmp_path, img, no_sampling):
    """The issue's repro: chattr +i (even root cannot write there). Skipped where chattr is not allowed."""
    import subprocess

    ro = tmp_path / "ro"
    ro.mkdir()
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(ro)], capture_output=True).returncode:
        pytest.skip("chattr +i is not available here (needs root and a file system that supports it)")
    try:
        res = run(["upscale", img, "-x", 8, "-o", ro, *FAST])
        assert res.exit_code == 2 and "cannot write to the output folder" in res.output
    finally:
        subprocess.run(["chattr", "-i", str(ro)], capture_output=True)


def test_a_really_full_disk_keeps_the_samples(tmp_path, img):
    """The issue's repro: a 64 KiB tmpfs as the output folder (16 KiB here). Skipped where mounting is not allowed."""
    import subprocess

    full = tmp_path / "full"
    full.mkdir()
    if shutil.which("mount") is None or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(full)],
                                                       capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        res = run(["upscale", img, "-x", 8, "-p", "a circle", "-p", "a star", "-o", full / "out", *FAST])
        assert res.exit_code == 2 and "No space left on device" in res.output, res.output
        rescued = Path(res.output.split("were written to ")[1].split(" instead")[0])
        doc = json.loads((rescued / "results.json").read_text())
        assert all((rescued / s["file"]).is_file() for p in doc["prompts"] for s in p["samples"])
        shutil.rmtree(rescued)
        assert tree(full) == set()
    finally:
        subprocess.run(["umount", str(full)], capture_output=True)
