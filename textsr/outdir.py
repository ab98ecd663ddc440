"""The output folder: checked before any work, written with results.json last, never mixed, never lost.

The atomic unit is the *run*, and results.json marks it complete: every other file is written first
(each one atomically: a hidden ``.NAME.XXXXXXXX.tmp`` file renamed into place) and results.json last.
So a folder with results.json holds one complete run; a folder with textsr's files but no
results.json holds an interrupted one (``textsr batch`` reruns it). If a write fails (disk full,
permissions changed, read-only file system), the files this write created are removed again, so no
PNG is ever left without its results.json, and the whole run is written to a fresh fallback folder
instead (``OutputWriteError`` says where).

textsr's own files, known by the names textsr writes and by the results.json it wrote::

    input.png  nearest.png  bicubic.png  grid.png  index.html  results.json
    NN-slug/sample-NN.png  NN-slug/std.png          (NN-slug: a prompt folder, e.g. 00-a-red-circle)
    every file that results.json lists
    .NAME.XXXXXXXX.tmp, .textsr-probe-XXXXXXXX.tmp   temporary files of those names (a killed run's)

A folder holds *another run* when any of these files (temporary files aside) is present. It is
refused unless ``overwrite``; then only these files are removed (results.json first, then the rest;
a prompt folder only when that leaves it empty); other files are left alone. Stale temporary files
of textsr's naming are removed whenever textsr writes to the folder.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path

from . import io
from .errors import OutputFolderError, OutputWriteError

RESULTS = "results.json"
TOP_FILES = ("input.png", "nearest.png", "bicubic.png", "grid.png", "index.html", RESULTS)
PROMPT_DIR = re.compile(r"^\d{2,}-[a-z0-9]+(?:-[a-z0-9]+)*$")
PROMPT_FILE = re.compile(r"^(?:sample-\d{2,}|std)\.png$")
# tempfile.mkstemp(prefix=".NAME.", suffix=".tmp"): 8 characters from [a-z0-9_] in between
TEMP_FILE = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp$")
PROBE_PREFIX = ".textsr-probe-"
PROBE_FILE = re.compile(r"^\.textsr-probe-[a-z0-9_]{8}\.tmp$")
RESCUE_PREFIX = "textsr-rescued-"


# --------------------------------------------------------------------------------------------
# What is in a folder
# --------------------------------------------------------------------------------------------


def own_files(out: Path) -> list[Path]:
    """textsr's files present in ``out`` (not temporary files), results.json first."""
    if not out.is_dir():
        return []
    found: dict[Path, None] = {}
    if (out / RESULTS).is_file():
        found[out / RESULTS] = None
    for name in TOP_FILES:
        if (out / name).is_file():
            found[out / name] = None
    for folder in _prompt_dirs(out):
        for f in sorted(folder.iterdir()):
            if PROMPT_FILE.match(f.name) and f.is_file():
                found[f] = None
    for rel in _listed_in_results(out):
        p = out / rel
        if p.is_file() and _inside(p, out):
            found[p] = None
    return list(found)


def stale_temps(out: Path) -> list[Path]:
    """Temporary files of textsr's naming in ``out`` and its prompt folders (left by a killed run)."""
    if not out.is_dir():
        return []
    hits = []
    for folder, names in [(out, TOP_FILES), *((d, None) for d in _prompt_dirs(out, with_temps=True))]:
        for f in folder.iterdir():
            m = TEMP_FILE.match(f.name)
            if names and PROBE_FILE.match(f.name):
                ours = True
            elif m:
                ours = m.group("name") in names if names else bool(PROMPT_FILE.match(m.group("name")))
            else:
                ours = False
            if ours and f.is_file():
                hits.append(f)
    return hits


def describe_run(out: Path, files: list[Path]) -> str:
    """'a complete textsr run (results.json, ...)' for messages."""
    kind = "a textsr run" if (out / RESULTS) in files else "files of an interrupted textsr run (no results.json)"
    more = f" and {len(files) - 4} more" if len(files) > 4 else ""
    shown = ", ".join(str(f.relative_to(out)) for f in files[:4]) + more
    return f"{kind}: {shown}"


def _prompt_dirs(out: Path, with_temps: bool = False) -> list[Path]:
    """Prompt folders (``NN-slug``) holding textsr's files (or, ``with_temps``, its temporary files)."""
    dirs = []
    for d in sorted(out.iterdir()):
        if not (PROMPT_DIR.match(d.name) and d.is_dir()):
            continue
        names = [f.name for f in d.iterdir()]
        if any(PROMPT_FILE.match(n) for n in names) or (
                with_temps and any((m := TEMP_FILE.match(n)) and PROMPT_FILE.match(m.group("name")) for n in names)):
            dirs.append(d)
    return dirs


def _listed_in_results(out: Path) -> list[str]:
    """Relative paths listed in a results.json that textsr wrote (nothing if it is not one)."""
    try:
        doc = json.loads((out / RESULTS).read_text("utf-8"))
    except (OSError, ValueError):
        return []
    if not isinstance(doc, dict) or "textsr_version" not in doc:
        return []
    files = doc.get("files")
    rels = [v for v in files.values() if isinstance(v, str)] if isinstance(files, dict) else []
    for entry in doc.get("prompts") or []:
        if isinstance(entry, dict):
            more = [entry.get("std_file")] + [s.get("file") for s in entry.get("samples") or [] if isinstance(s, dict)]
            rels += [r for r in more if isinstance(r, str)]
    return [r for r in rels if r and not os.path.isabs(r)]


def _inside(p: Path, root: Path) -> bool:
    try:
        p.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


# --------------------------------------------------------------------------------------------
# Before any work: can we write there, and is it free?
# --------------------------------------------------------------------------------------------


def check_output_folder(out: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Raise ``OutputFolderError`` unless ``out`` can be created and written and holds no other run
    (or ``overwrite``). Writes and removes a probe file; folders it had to create are removed again,
    so the check leaves nothing behind. Returns ``out`` as a Path."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputFolderError(f"output path {out} is a file, not a folder. Choose another output folder.")
    created = _make_dirs(out)
    try:
        _probe(out)
    finally:
        for d in reversed(created):
            try:
                d.rmdir()
            except OSError:
                pass
    if not overwrite:
        refuse_other_run(out)
    return out


def refuse_other_run(out: Path) -> None:
    files = own_files(out)
    if files:
        raise OutputFolderError(
            f"the output folder {out} already holds {describe_run(out, files)}. Choose another folder, or pass "
            "--overwrite (API: overwrite=True) to replace that run: only textsr's own files are removed.")


def _make_dirs(out: Path) -> list[Path]:
    """Create ``out`` and missing parents; return the folders created (outermost first)."""
    missing = []
    p = out
    while not p.exists():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputFolderError(f"cannot create the output folder {out} ({_why(e)}). Choose another output "
                                "folder.") from None
    return list(reversed(missing))


def _probe(out: Path) -> None:
    try:
        fd, name = tempfile.mkstemp(dir=out, prefix=PROBE_PREFIX, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(b"textsr write check\n")
                f.flush()
                os.fsync(f.fileno())
        finally:
            os.unlink(name)
    except OSError as e:
        raise OutputFolderError(f"cannot write to the output folder {out} ({_why(e)}). Choose another output "
                                "folder, or make it writable.") from None


def _why(e: OSError) -> str:
    return e.strerror or str(e)


# --------------------------------------------------------------------------------------------
# Writing a run
# --------------------------------------------------------------------------------------------


def clear_run(out: Path) -> list[Path]:
    """Remove textsr's own files (results.json first) and its stale temporary files from ``out``;
    prompt folders only when that leaves them empty. Returns what was removed."""
    removed = []
    for f in [*own_files(out), *stale_temps(out)]:
        try:
            f.unlink()
            removed.append(f)
        except FileNotFoundError:
            pass
    for d in {f.parent for f in removed if f.parent != out}:
        try:
            d.rmdir()
        except OSError:  # not empty: it holds someone else's files
            pass
    return removed


def write_run(out: str | os.PathLike[str], files: Mapping[str, bytes], *, overwrite: bool = False,
              rescue: bool = True) -> dict[str, Path]:
    """Write ``files`` ({relative POSIX path: content}, results.json among them) into ``out``.

    Refuses a folder holding another run unless ``overwrite`` (then that run's files are removed
    first). Removes stale temporary files. results.json is written last. On a write error the files
    written so far are removed and, with ``rescue``, everything goes to a fresh fallback folder;
    ``OutputWriteError`` names it. Returns {relative path: absolute Path}.
    """
    out = Path(out)
    if RESULTS not in files:
        raise ValueError("a run's files must include results.json (it marks the run complete)")
    check_output_folder(out, overwrite=overwrite)
    made = _make_dirs(out)
    try:
        if overwrite:
            clear_run(out)
        else:
            for f in stale_temps(out):
                f.unlink(missing_ok=True)
        return _write_all(out, files)
    except OSError as e:
        for d in reversed(made):  # the folders this write created go again (when empty)
            try:
                d.rmdir()
            except OSError:
                pass
        if not rescue:
            raise
        why = f"{_why(e)}" + (f": {e.filename}" if getattr(e, "filename", None) else "")
        raise _rescued(files, out, why) from None


def _write_all(out: Path, files: Mapping[str, bytes]) -> dict[str, Path]:
    order = [rel for rel in files if rel != RESULTS] + [RESULTS]  # results.json last: the run is complete
    written: list[Path] = []
    new_dirs = {(out / rel).parent for rel in order if not (out / rel).parent.exists()}
    try:
        for rel in order:
            path = out / rel
            io.write_bytes_atomic(files[rel], path)
            written.append(path)
    except OSError:
        _remove(written, new_dirs)
        raise
    return {rel: (out / rel).resolve() for rel in order}


def _remove(written: list[Path], dirs: set[Path]) -> None:
    for p in reversed(written):
        try:
            p.unlink()
        except OSError:
            pass
    for d in sorted(dirs, key=lambda d: len(d.parts), reverse=True):
        try:
            d.rmdir()
        except OSError:
            pass


def fallback_roots() -> list[Path]:
    """Where a run goes when its folder cannot take it: the temporary folder, then the home folder."""
    return [Path(tempfile.gettempdir()), Path.home()]


def _rescued(files: Mapping[str, bytes], out: Path, why: str) -> OutputWriteError:
    tried = []
    for root in fallback_roots():
        try:
            folder = Path(tempfile.mkdtemp(prefix=RESCUE_PREFIX, dir=root))
        except OSError as e:
            tried.append(f"{root} ({_why(e)})")
            continue
        try:
            _write_all(folder, files)
        except OSError as e:
            tried.append(f"{folder} ({_why(e)})")
            try:
                folder.rmdir()
            except OSError:
                pass
            continue
        return OutputWriteError(
            f"could not write the results to {out} ({why}); nothing was left half-written there. The complete "
            f"results were written to {folder} instead: copy them from there (free some space or fix the "
            "folder's permissions first).", rescued=folder)
    return OutputWriteError(
        f"could not write the results to {out} ({why}), nor to a fallback folder ({'; '.join(tried)}). "
        "Nothing was left half-written. From Python the Exploration still holds every sample: call "
        ".save() with another folder.", rescued=None)

