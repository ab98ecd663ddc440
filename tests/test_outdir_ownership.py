"""--overwrite removes only what a textsr record vouches for, and nothing outside the output folder is ever
written or removed (issue 21, items 2, 3 and the API part of 7)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from textsr import io
from textsr.errors import OutputWriteError, UsageError

try:  # tests/ is not a package: pytest puts it on sys.path
    from test_outdir import listed, tree, write
except ImportError:  # pragma: no cover
    from tests.test_outdir import listed, tree, write


def snapshot(root: Path) -> dict[str, bytes]:
    return {rel: (root / rel).read_bytes() for rel in tree(root)}


# ----------------------------------------------------------------------------- item 2


FOREIGN = {  # files of textsr's names that textsr did not write
    "the issue's photo folder": {"2023-holiday/sample-01.png": b"x", "2023-holiday/std.png": b"x", "grid.png": b"x"},
    "a page of one's own": {"index.html": b"<p>mine</p>"},
    "a picture of one's own": {"input.png": b"mine"},
    "someone else's results.json": {"results.json": b'{"accuracy": 0.93}'},
    "a run whose results.json was deleted": {"input.png": b"png", "00-a-ring/sample-00.png": b"png"},
}


@pytest.mark.parametrize("overwrite", [False, True])
@pytest.mark.parametrize("kind", FOREIGN)
def test_files_no_record_lists_are_never_replaced_or_removed(tmp_path, kind, overwrite):
    out = tmp_path / "pics"
    for rel, data in FOREIGN[kind].items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(data)
    before = snapshot(out)
    with pytest.raises(UsageError, match="no textsr record .*not even with --overwrite") as e:
        write(out, overwrite=overwrite)
    assert all(rel in str(e.value) for rel in list(FOREIGN[kind])[:4])
    assert snapshot(out) == before and {p.name for p in out.iterdir()} == {p.split("/")[0] for p in before}


def test_the_issues_command_is_refused_before_sampling(tmp_path, monkeypatch):
    """`textsr upscale in.png --scale 8 -o pics --overwrite` with a photo folder 2023-holiday and a grid.png."""
    import textsr.api
    from textsr.cli import main
    from textsr.demo import demo_image

    img = tmp_path / "in.png"
    Image.fromarray((demo_image() * 255).round().astype(np.uint8)).save(img)
    pics = tmp_path / "pics"
    (pics / "2023-holiday").mkdir(parents=True)
    for rel in ("2023-holiday/sample-01.png", "2023-holiday/std.png", "grid.png"):
        (pics / rel).write_text("x\n")
    monkeypatch.setattr(textsr.api, "explore", lambda *a, **k: pytest.fail("sampled into a refused folder"))
    res = CliRunner().invoke(main, ["upscale", str(img), "--scale", "8", "-o", str(pics), "--overwrite", "-q"])
    assert res.exit_code == 2 and "2023-holiday/sample-01.png" in res.output and "grid.png" in res.output
    assert all((pics / rel).read_text() == "x\n" for rel in ("2023-holiday/sample-01.png", "2023-holiday/std.png",
                                                             "grid.png"))


def test_a_run_replaced_with_overwrite_leaves_every_other_file(tmp_path):
    write(tmp_path, prompts=("a ring", "a star"), n=4)
    mine = {"notes.txt": b"mine", "00-a-ring/notes.txt": b"mine", "photos/sample-00.png": b"mine",
            "2023-holiday/readme.md": b"mine", ".grid.png.tmp": b"mine"}
    for rel, data in mine.items():
        (tmp_path / rel).parent.mkdir(exist_ok=True)
        (tmp_path / rel).write_bytes(data)
    write(tmp_path, prompts=("a cross",), n=1, overwrite=True)
    doc = json.loads((tmp_path / "results.json").read_text())
    assert tree(tmp_path) == listed(doc) | set(mine)
    assert all((tmp_path / rel).read_bytes() == data for rel, data in mine.items())


# ----------------------------------------------------------------------------- item 3


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_prompt_folder_linked_out_of_the_folder_is_refused(tmp_path, overwrite):
    """The issue's repro: `ln -s ../userdata runC/00-a-red-circle`, then --overwrite."""
    run_c, userdata = tmp_path / "runC", tmp_path / "userdata"
    write(run_c, prompts=("a red circle",), n=2)
    userdata.mkdir()
    for k in (0, 1, 7):
        (userdata / f"sample-{k:02d}.png").write_bytes(b"precious")
    (userdata / "std.png").write_bytes(b"precious")
    for f in (run_c / "00-a-red-circle").iterdir():
        f.unlink()
    (run_c / "00-a-red-circle").rmdir()
    (run_c / "00-a-red-circle").symlink_to("../userdata")
    before, outside = snapshot(run_c), snapshot(userdata)
    with pytest.raises(UsageError, match="00-a-red-circle .*link"):
        write(run_c, prompts=("a red circle",), n=2, overwrite=overwrite)
    assert snapshot(userdata) == outside and snapshot(run_c) == before


@pytest.mark.parametrize("name", ["grid.png", "results.json", "01-a-star/std.png"])
def test_a_file_linked_out_of_the_folder_is_refused(tmp_path, name):
    write(tmp_path / "run")
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / "run" / name).unlink()
    (tmp_path / "run" / name).symlink_to(victim)
    with pytest.raises(UsageError, match="link"):
        write(tmp_path / "run", overwrite=True)
    assert victim.read_text() == "precious" and (tmp_path / "run" / name).is_symlink()


def test_an_edited_results_json_gets_nothing_removed_that_textsr_did_not_write(tmp_path):
    run = tmp_path / "run"
    write(run)
    mine = {run / "sub" / "x.txt": "mine", tmp_path / "x.txt": "mine too", run / "notes.txt": "mine three",
            run / "00-a-red-circle" / "photo.jpg": "mine four"}
    for p, text in mine.items():
        p.parent.mkdir(exist_ok=True)
        p.write_text(text)
    doc = json.loads((run / "results.json").read_text())
    doc["files"].update({"a": "sub/x.txt", "b": "../x.txt", "c": str(tmp_path / "x.txt"), "d": "notes.txt",
                         "e": "sub/../../x.txt", "f": "00-a-red-circle/photo.jpg"})
    doc["prompts"][0]["samples"].append({**doc["prompts"][0]["samples"][0], "file": "../x.txt"})
    (run / "results.json").write_text(json.dumps(doc))
    write(run, prompts=("a ring",), overwrite=True)
    assert all(p.read_text() == text for p, text in mine.items())


def test_a_record_edited_to_drop_a_file_leaves_that_file_alone(tmp_path):
    write(tmp_path)
    doc = json.loads((tmp_path / "results.json").read_text())
    doc["prompts"][0]["std_file"] = "../elsewhere.png"
    (tmp_path / "results.json").write_text(json.dumps(doc))
    before = snapshot(tmp_path)
    with pytest.raises(UsageError, match="00-a-red-circle/std.png: files under the names textsr writes that no"):
        write(tmp_path, overwrite=True)
    assert snapshot(tmp_path) == before


def test_a_link_put_in_during_the_write_is_not_followed(tmp_path, monkeypatch):
    """Every path is checked again right before it is removed or written: a prompt folder swapped for a
    link after the folder was checked gets nothing written or removed through it."""
    run, userdata = tmp_path / "run", tmp_path / "userdata"
    write(run, prompts=("a red circle",), n=2)
    userdata.mkdir()
    (userdata / "sample-00.png").write_bytes(b"precious")
    real = io.write_bytes_atomic

    def swap_then_write(data, path):
        if Path(path).name == ".textsr-run.json":  # written first, after the check
            d = run / "00-a-red-circle"
            for f in d.iterdir():
                f.unlink()
            d.rmdir()
            d.symlink_to(userdata)
        return real(data, path)

    monkeypatch.setattr(io, "write_bytes_atomic", swap_then_write)
    with pytest.raises(OutputWriteError, match="link") as e:
        write(run, prompts=("a red circle",), n=2, overwrite=True)
    import shutil

    shutil.rmtree(e.value.rescued)
    assert snapshot(userdata) == {"sample-00.png": b"precious"}


# ----------------------------------------------------------------------------- item 7 (API)


@pytest.fixture(scope="module")
def exploration():
    import textsr
    from textsr.demo import demo_image

    return textsr.explore(demo_image(), ["a circle"], scale=8, samples=1, steps=2)


@pytest.mark.parametrize("folder, needle", [
    (None, "no output folder given"),
    ("", "name is empty: that would write into the current folder"),
    ("   ", "name is empty"),
    (7, "must be a path .* got int"),
    (b"out", "must be a path .* got bytes"),
])
def test_save_needs_a_folder(tmp_path, monkeypatch, exploration, folder, needle):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError, match=needle):
        exploration.save(folder)
    assert os.listdir(tmp_path) == []


def test_save_into_the_current_folder_on_purpose(tmp_path, monkeypatch, exploration):
    monkeypatch.chdir(tmp_path)
    exploration.save(".")
    assert (tmp_path / "results.json").is_file()
