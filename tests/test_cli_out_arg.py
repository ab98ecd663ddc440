"""``-o ""`` (or blanks) is refused on every command that writes, never read as the current folder
(issue 21, defect 7 on the command line; the API's ``save("")`` is refused by the same check)."""

from __future__ import annotations

import json

import pytest

try:  # tests/ is not a package: pytest puts it on sys.path ("prepend" import mode)
    from cli_helpers import demo_png, run_cli
except ImportError:  # pragma: no cover
    from tests.cli_helpers import demo_png, run_cli

EMPTY = "the output folder name is empty"


@pytest.fixture
def cwd(tmp_path, monkeypatch):
    demo_png(tmp_path / "lr.png")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("out", ["", "  "])
@pytest.mark.parametrize("command", [["upscale", "lr.png", "-x", 8, "-n", 1, "--steps", 2, "-q"],
                                     ["demo", "-n", 1, "-q"]])
def test_an_empty_output_folder_is_refused_and_nothing_is_written(cwd, command, out):
    res = run_cli([*command, "-o", out])
    assert res.exit_code == 2 and EMPTY in res.output, res.output
    assert sorted(p.name for p in cwd.iterdir()) == ["lr.png"]


def test_dot_still_means_the_current_folder(cwd):
    res = run_cli(["upscale", "lr.png", "-x", 8, "-n", 1, "--steps", 2, "-q", "-o", "."])
    assert res.exit_code == 0, res.output
    assert (cwd / "results.json").is_file()


def test_an_output_path_that_is_a_file_is_refused_with_its_name_escaped(cwd):
    odd = "f\x1b]0;PWNED\x07.png"
    (cwd / odd).write_bytes(b"x")
    res = run_cli(["upscale", "lr.png", "-x", 8, "-o", odd])
    assert res.exit_code == 2 and "is a file, not a folder" in res.output
    assert "\x1b" not in res.output and "\\x1b]0;PWNED" in res.output


def test_a_manifest_job_with_an_empty_out_is_refused_before_any_job(cwd):
    (cwd / "jobs.jsonl").write_text("\n".join(json.dumps({"image": "lr.png", "scale": 8, "out": o}) for o in ("a", "")))
    res = run_cli(["batch", "jobs.jsonl"])
    assert res.exit_code == 2 and "job 1 (line 2): out must be the path" in res.output
    assert sorted(p.name for p in cwd.iterdir()) == ["jobs.jsonl", "lr.png"]
