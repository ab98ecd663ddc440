"""Two runs into one folder (issue 21, item 4): the folder is held from before the work, a second run is
refused at once, a run killed with kill -9 does not block the next one, and a run that held its folder
never loses its samples."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from cli_helpers import run_cli as run  # tests/ is on sys.path (pytest rootdir conftest); ``img`` is a conftest fixture

import textsr.api
from textsr.demo import demo_image
from textsr.errors import OutputFolderError
from textsr.outdir import check_output_folder, reserve

FAST = ["--steps", "3", "--samples", "2", "--quiet"]
LOCK = ".textsr-lock"


def holding(folder: Path, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    """Wait until ``proc`` holds ``folder`` (its process id is in the lock file)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else proc.returncode
        try:
            if json.loads((folder / LOCK).read_text()).get("pid") == proc.pid:
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"{proc.args} did not take {folder}")


def spawn(*args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, *args], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=env, text=True)


def test_a_second_cli_run_is_refused_before_work_and_a_killed_run_blocks_nothing(tmp_path, img, monkeypatch):
    """The issue's repro: `textsr upscale ... -n 6 -o same & textsr upscale ... -n 3 -o same`; then kill -9."""
    same = tmp_path / "same"
    first = spawn("-m", "textsr.cli", "upscale", str(img), "-x", "8", "-n", "6", "--steps", "100000", "-o", str(same),
                  "-q")
    try:
        holding(same, first)
        time.sleep(1.0)  # long past its check: a run that only checked its folder before sampling let go by now
        holding(same, first, timeout=0.5)  # still held: it samples for ~30 s
        real_explore = textsr.api.explore_request
        monkeypatch.setattr(textsr.api, "explore", lambda *a, **k: pytest.fail("the second run started work"))
        res = run(["upscale", img, "-x", 8, "-n", 3, "-o", same, "-q"])
        assert res.exit_code == 2, res.output
        assert f"in use by another textsr run (process {first.pid} on" in res.output
        assert "nothing was started" in res.output
    finally:
        first.kill()  # SIGKILL: no handler runs, the lock file stays
        first.wait()
    assert first.returncode == -9 and (same / LOCK).exists()
    monkeypatch.setattr(textsr.api, "explore", real_explore)
    res = run(["upscale", img, "-x", 8, "-o", same, *FAST])  # the killed run's lock holds nothing
    assert res.exit_code == 0, res.output
    assert (same / "results.json").is_file() and not (same / LOCK).exists()


def test_api_save_waits_for_no_one_and_loses_nothing(tmp_path):
    out = tmp_path / "o"
    holder = spawn("-c", "import sys; from textsr.outdir import reserve\n"
                         "with reserve(sys.argv[1]):\n    print('held', flush=True); sys.stdin.read()", str(out))
    r = textsr.api.explore(demo_image(), ["a circle"], scale=8, samples=1, steps=2)
    try:
        holding(out, holder)
        with pytest.raises(OutputFolderError, match=f"in use by another textsr run \\(process {holder.pid}"):
            r.save(out)
        assert os.listdir(out) == [LOCK]
    finally:
        holder.communicate("")  # the holder finishes normally: its lock file goes with it
    assert holder.returncode == 0 and not out.exists()  # it made the folder for the hold and removed it again
    r.save(out)  # the Exploration still holds everything
    assert (out / "results.json").is_file()


def test_threads_of_one_process_exclude_each_other(tmp_path):
    out = tmp_path / "o"
    seen: list[BaseException] = []
    with reserve(out) as root:
        assert root == out.resolve() and (out / LOCK).exists()
        assert check_output_folder(out) == out  # the same thread may nest holds (the CLI, then save)
        t = threading.Thread(target=lambda: _catch(seen, lambda: check_output_folder(out)))
        t.start()
        t.join()
    assert len(seen) == 1 and isinstance(seen[0], OutputFolderError) and "(this process)" in str(seen[0])
    assert not out.exists()  # created for the hold, removed with it: nothing was written
    check_output_folder(out)  # free again


def _catch(seen, f):
    try:
        f()
    except BaseException as e:  # noqa: BLE001 - handed to the test thread
        seen.append(e)


def test_a_held_run_that_its_folder_refuses_at_the_end_is_rescued(tmp_path, img, monkeypatch):
    """A file textsr did not write turns up in the folder while the run samples: the run goes to a fallback
    folder like a failed write, and the file stays."""
    out = tmp_path / "o"
    real_explore = textsr.api.explore_request

    def explore_then_someone_writes(*a, **k):
        result = real_explore(*a, **k)
        (out / "grid.png").write_bytes(b"someone's grid")
        return result

    monkeypatch.setattr(textsr.api, "explore_request", explore_then_someone_writes)
    res = run(["upscale", img, "-x", 8, "-p", "a circle", "-o", out, *FAST])
    assert res.exit_code == 2 and "were written to" in res.output, res.output
    rescued = Path(res.output.split("were written to ")[1].split(" instead")[0])
    try:
        doc = json.loads((rescued / "results.json").read_text())
        assert all((rescued / s["file"]).is_file() for p in doc["prompts"] for s in p["samples"])
    finally:
        shutil.rmtree(rescued)
    assert sorted(os.listdir(out)) == ["grid.png"] and (out / "grid.png").read_bytes() == b"someone's grid"


def test_a_file_system_without_locks_warns_and_writes(tmp_path, monkeypatch):
    import errno
    import fcntl

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.warns(UserWarning, match="does not support file locks .*No locks available"):
        check_output_folder(tmp_path / "o")
    assert not (tmp_path / "o").exists()
