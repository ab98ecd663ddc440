"""The output folder (issue 10, items 1, 4, 6, 7): checked before any work, never mixed with another
run, results.json written last, nothing lost or half-written when writing fails."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from textsr import io, report
from textsr.errors import UsageError

try:  # tests/ is not a package: pytest puts it on sys.path
    from test_report import make_run
except ImportError:  # pragma: no cover
    from tests.test_report import make_run


def write(out, prompts=("a red circle", "a star"), n=3, **kw):
    lr, samples, std_maps, results = make_run(prompts=prompts, n=n)
    return report.write_outputs(out, lr=lr, samples=samples, std_maps=std_maps, results=results,
                                scale=results["scale"], notes=[], **kw)


def tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def listed(doc: dict) -> set[str]:
    out = set(doc["files"].values())
    for e in doc["prompts"]:
        out |= {e["std_file"], *(s["file"] for s in e["samples"])}
    return out


class DiskFull:
    """``io.write_bytes_atomic`` that fails with ENOSPC after ``ok`` files under ``root`` (elsewhere it
    writes): a disk that fills up midway through a run."""

    def __init__(self, monkeypatch, root: Path, ok: int, err: int = errno.ENOSPC):
        self.root, self.ok, self.err, self.real = root.resolve(), ok, err, io.write_bytes_atomic
        monkeypatch.setattr(io, "write_bytes_atomic", self)

    def __call__(self, data, path):
        if Path(path).resolve().is_relative_to(self.root):
            if self.ok <= 0:
                raise OSError(self.err, os.strerror(self.err), str(path))
            self.ok -= 1
        return self.real(data, path)


# ----------------------------------------------------------------------------- item 1


# fails on the marker (written first), the first file, midway, on results.json (the 15th write)
@pytest.mark.parametrize("ok", [0, 1, 6, 14])
def test_full_disk_midway_keeps_the_run_in_a_fallback_folder(tmp_path, monkeypatch, ok):
    from textsr.errors import OutputWriteError

    out = tmp_path / "out"
    DiskFull(monkeypatch, out, ok)
    with pytest.raises(OutputWriteError) as e:
        write(out)
    msg = str(e.value)
    assert "No space left on device" in msg and str(e.value.rescued) in msg
    rescued = Path(e.value.rescued)
    try:
        doc = json.loads((rescued / "results.json").read_text())
        assert listed(doc) <= tree(rescued)  # every file results.json lists is there
        assert len(tree(rescued)) == 14
    finally:
        import shutil

        shutil.rmtree(rescued)
    # nothing of this run is left: no PNG without results.json, no temp file, not even the folder it made
    assert not out.exists()


def test_full_disk_keeps_foreign_files_and_leaves_no_partial_run(tmp_path, monkeypatch):
    from textsr.errors import OutputWriteError

    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    DiskFull(monkeypatch, out, 5)
    with pytest.raises(OutputWriteError) as e:
        write(out)
    import shutil

    shutil.rmtree(e.value.rescued)
    assert tree(out) == {"mine.txt"}


def test_unwritable_folder_is_refused_before_writing(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(UsageError, match="cannot create the output folder"):
        write(blocker / "out")  # a folder under a regular file: not even root can create it


def test_check_output_folder_probes_and_leaves_nothing(tmp_path, monkeypatch):
    from textsr.outdir import check_output_folder

    target = tmp_path / "new" / "deeper"
    assert check_output_folder(target) == target
    assert not (tmp_path / "new").exists()  # the folders it made for the probe are gone again

    def no_write(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr("tempfile.mkstemp", no_write)
    with pytest.raises(UsageError, match="cannot write to the output folder .*Permission denied"):
        check_output_folder(tmp_path)


# ----------------------------------------------------------------------------- item 4


def test_a_folder_holding_another_run_is_refused(tmp_path):
    write(tmp_path)
    before = {p: (tmp_path / p).read_bytes() for p in tree(tmp_path)}
    with pytest.raises(UsageError, match="already holds a textsr run.*--overwrite"):
        write(tmp_path, prompts=("a ring",))
    assert {p: (tmp_path / p).read_bytes() for p in tree(tmp_path)} == before  # untouched


def interrupted(out, monkeypatch, at="index.html", **kw):
    """A write killed (kill -9: nothing cleaned up) as it reached ``at``; leaves textsr's marker."""
    real = io.write_bytes_atomic

    def dies_at(data, path):
        if Path(path).name == at:
            raise Killed
        return real(data, path)

    monkeypatch.setattr(io, "write_bytes_atomic", dies_at)
    with pytest.raises(Killed):
        write(out, **kw)
    monkeypatch.setattr(io, "write_bytes_atomic", real)


def test_files_of_an_interrupted_run_count_as_another_run(tmp_path, monkeypatch):
    interrupted(tmp_path, monkeypatch)
    assert (tmp_path / "00-a-red-circle" / "sample-00.png").exists() and not (tmp_path / "results.json").exists()
    with pytest.raises(UsageError, match="interrupted textsr run.*--overwrite"):
        write(tmp_path)
    write(tmp_path, prompts=("a ring",), overwrite=True)  # the marker vouches for them: replaced
    assert not (tmp_path / "00-a-red-circle").exists() and not (tmp_path / ".textsr-run.json").exists()


def test_overwrite_removes_only_textsr_files(tmp_path):
    write(tmp_path, prompts=("a ring", "a star", "a cross"), n=5)
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "00-a-ring" / "mine.txt").write_text("mine too")
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "sample-00.png").write_bytes(b"not textsr's: not in a prompt folder")
    write(tmp_path, prompts=("a red circle",), n=2, overwrite=True)
    doc = json.loads((tmp_path / "results.json").read_text())
    assert [p["prompt"] for p in doc["prompts"]] == ["a red circle"]
    assert tree(tmp_path) == listed(doc) | {"notes.txt", "00-a-ring/mine.txt", "photos/sample-00.png"}
    assert not (tmp_path / "01-a-star").exists() and not (tmp_path / "02-a-cross").exists()


def test_files_listed_in_results_json_are_textsrs(tmp_path):
    from textsr.outdir import scan

    write(tmp_path)
    doc = json.loads((tmp_path / "results.json").read_text())
    assert set(scan(tmp_path).vouched) == listed(doc) and scan(tmp_path).finished
    (tmp_path / "notes.txt").write_text("mine")
    assert "notes.txt" not in set(scan(tmp_path).vouched) | set(scan(tmp_path).foreign)


def test_foreign_files_alone_are_not_another_run(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "00-my-folder").mkdir()
    (tmp_path / "00-my-folder" / "photo.png").write_bytes(b"mine")
    write(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert (tmp_path / "00-my-folder" / "photo.png").read_bytes() == b"mine"


# ----------------------------------------------------------------------------- item 6


def test_stale_temp_files_of_an_interrupted_write_are_removed_with_it(tmp_path, monkeypatch):
    interrupted(tmp_path, monkeypatch)  # its marker lists the names the temporary files stand for
    stale = [tmp_path / ".results.json.k2j_9x0a.tmp", tmp_path / ".grid.png.abcdefgh.tmp",
             tmp_path / "00-a-red-circle" / ".sample-00.png.x1y2z3w4.tmp",
             tmp_path / ".textsr-probe-12345678.tmp"]
    foreign = [tmp_path / ".notes.txt.abcdefgh.tmp", tmp_path / ".grid.png.tmp",
               tmp_path / "00-a-red-circle" / ".sample-77.png.abcdefgh.tmp"]  # not a name the marker lists
    for f in stale + foreign:
        f.write_bytes(b"partial")
    write(tmp_path, overwrite=True)
    assert not any(f.exists() for f in stale)
    assert all(f.exists() for f in foreign)


def test_temp_files_no_record_lists_are_neither_a_run_nor_removed(tmp_path):
    (tmp_path / "01-a-star").mkdir()
    (tmp_path / "01-a-star" / ".sample-03.png.abcdefgh.tmp").write_bytes(b"partial")
    write(tmp_path)  # not refused
    assert (tmp_path / "01-a-star" / ".sample-03.png.abcdefgh.tmp").read_bytes() == b"partial"


# ----------------------------------------------------------------------------- item 7


class Killed(BaseException):
    """Stands for kill -9: no handler runs, nothing is cleaned up."""


@pytest.mark.parametrize("victim", ["index.html", "grid.png", "01-a-star/std.png"])
def test_results_json_is_written_last(tmp_path, monkeypatch, victim):
    real = io.write_bytes_atomic

    def dies_at(data, path):
        parent = Path(victim).parent.name or tmp_path.name
        if Path(path).name == Path(victim).name and Path(path).parent.name == parent:
            raise Killed
        return real(data, path)

    monkeypatch.setattr(io, "write_bytes_atomic", dies_at)
    with pytest.raises(Killed):
        write(tmp_path)
    assert not (tmp_path / "results.json").exists(), "a run killed before all its files marks itself complete"


def test_check_output_folder_is_public(tmp_path):
    import textsr

    write(tmp_path / "o")
    with pytest.raises(UsageError, match="already holds"):
        textsr.check_output_folder(tmp_path / "o")
    assert textsr.check_output_folder(tmp_path / "o", overwrite=True) == tmp_path / "o"
