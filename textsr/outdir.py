"""The output folder: checked and held before any work, written with results.json last, never mixed,
nothing lost, nothing touched that textsr did not write (the whole story: docs/output-folder.md).

- **Layout**: ``TOP_FILES`` and ``NN-slug/sample-NN.png``, ``NN-slug/std.png``: the only names written.
- **Records**: a file is textsr's only when a record lists it: results.json (written last, the run
  is complete) or ``.textsr-run.json`` (written first by every write, removed when it completes; a
  killed write leaves it, vouching for what it wrote). Records vouch for layout names only.
- **Refused**: files of layout names no record lists, with or without ``overwrite``; links where
  textsr writes; another run unless ``overwrite`` (then exactly the recorded files are removed).
- **Nothing outside**: the folder is resolved once; below it every path is checked right before it
  is written or removed (no link, folders are folders, files plain files).
- **One run at a time**: ``reserve`` holds the folder (``textsr.folder_lock``) from before the work;
  a run that held it and cannot write there at the end goes to a fallback folder, as does a failed
  write (files written atomically; on an error those written are removed again).
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from . import io
from ._version import __version__
from .errors import OutputFolderError, OutputWriteError, UsageError
from .folder_lock import held, hold

RESULTS = "results.json"
MARKER = ".textsr-run.json"
TOP_FILES = ("input.png", "nearest.png", "bicubic.png", "grid.png", "index.html", RESULTS)
PROMPT_DIR = re.compile(r"^\d{2,}-[a-z0-9]+(?:-[a-z0-9]+)*$")
PROMPT_FILE = re.compile(r"^(?:sample-\d{2,}|std)\.png$")
# tempfile.mkstemp(prefix=".NAME.", suffix=".tmp"): 8 characters from [a-z0-9_] in between
TEMP_FILE = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp$")
PROBE_PREFIX = ".textsr-probe-"
PROBE_FILE = re.compile(r"^\.textsr-probe-[a-z0-9_]{8}\.tmp$")
RESCUE_PREFIX = "textsr-rescued-"


def is_layout_name(rel: str) -> bool:
    """True for the relative POSIX paths textsr writes in a run's folder (see the module docstring)."""
    parts = rel.split("/")
    if len(parts) == 1:
        return parts[0] in TOP_FILES
    return len(parts) == 2 and bool(PROMPT_DIR.match(parts[0])) and bool(PROMPT_FILE.match(parts[1]))


def folder_arg(out: object) -> Path:
    """The output folder argument as a Path, or ``UsageError``: None, an empty name (which would mean
    the current folder by accident), something that is not a path, or an existing file."""
    if out is None:
        raise UsageError("no output folder given (got None): name a folder, e.g. save('textsr-output')")
    if not isinstance(out, (str, os.PathLike)) or isinstance(os.fspath(out), bytes):
        raise UsageError(f"the output folder must be a path (str or pathlib.Path), got {type(out).__name__}")
    if not os.fspath(out).strip():
        raise UsageError("the output folder name is empty: that would write into the current folder. Name a "
                         "folder, or pass '.' to mean the current folder.")
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise OutputFolderError(f"output path {path} is a file, not a folder. Choose another output folder.")
    return path


# --------------------------------------------------------------------------------------------
# What a folder holds, and what the records say about it
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Contents:
    """What a folder holds under the layout's names (paths relative to it, POSIX)."""

    vouched: tuple[str, ...] = ()  # plain files a textsr record lists (results.json first)
    foreign: tuple[str, ...] = ()  # plain files at layout names that no record lists: never touched
    links: tuple[str, ...] = ()  # layout names that are links, or neither plain files nor folders
    temps: tuple[str, ...] = ()  # temporary files of vouched names, probe files (a killed write's)
    finished: bool = False  # results.json is textsr's: a complete run

    def describe(self) -> str:
        kind = "a textsr run" if self.finished else "files of an interrupted textsr run (no results.json)"
        return f"{kind}: {_few(self.vouched)}"


def scan(root: Path) -> Contents:
    """Sort what ``root`` holds under the layout's names by what its records say. Follows no link."""
    finished, listed = _records(root)
    found: dict[str, list[str]] = {"vouched": [], "foreign": [], "links": [], "temps": []}

    def sort(rel: str, entry: os.DirEntry) -> None:
        if not entry.is_file(follow_symlinks=False):
            found["links"].append(rel)
        else:
            found["vouched" if rel in listed else "foreign"].append(rel)

    for entry in _entries(root):
        if entry.name in TOP_FILES:
            sort(entry.name, entry)
        elif PROMPT_DIR.match(entry.name):
            if not entry.is_dir(follow_symlinks=False):
                if entry.is_symlink():
                    found["links"].append(entry.name)
                continue
            for sub in _entries(Path(entry.path)):
                rel = f"{entry.name}/{sub.name}"
                if PROMPT_FILE.match(sub.name):
                    sort(rel, sub)
                elif _is_temp(sub, listed, entry.name):
                    found["temps"].append(rel)
        elif _is_temp(entry, listed, "") or (PROBE_FILE.match(entry.name) and entry.is_file(follow_symlinks=False)):
            found["temps"].append(entry.name)
    found["vouched"].sort(key=lambda r: r != RESULTS)  # results.json first: removed first
    return Contents(**{k: tuple(v) for k, v in found.items()}, finished=finished)


def _entries(folder: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(folder) as it:
            return sorted(it, key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        return []


def _is_temp(entry: os.DirEntry, listed: set[str], folder: str) -> bool:
    m = TEMP_FILE.match(entry.name)
    if not m or not entry.is_file(follow_symlinks=False):
        return False
    target = f"{folder}/{m.group('name')}" if folder else m.group("name")
    return target in listed or target == MARKER


def _records(root: Path) -> tuple[bool, set[str]]:
    """(results.json is textsr's, the layout names that results.json and the marker list)."""
    results, marker = _read_record(root / RESULTS), _read_record(root / MARKER)
    listed = set(listed_files(results)) | ({RESULTS} if results is not None else set())
    if marker is not None and isinstance(marker.get("files"), list):
        listed |= {r for r in marker["files"] if isinstance(r, str)}
    return results is not None, {r for r in listed if is_layout_name(r)}


def _read_record(path: Path) -> dict | None:
    """A plain file holding a JSON object that textsr wrote (it has ``textsr_version``), else None."""
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return None
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and "textsr_version" in doc else None


def listed_files(doc: dict | None) -> list[str]:
    """The relative paths a results.json document lists (its ``files`` and every prompt's files)."""
    if doc is None:
        return []
    files = doc.get("files")
    rels = [v for v in files.values() if isinstance(v, str)] if isinstance(files, dict) else []
    for entry in doc.get("prompts") or []:
        if isinstance(entry, dict):
            more = [entry.get("std_file")] + [s.get("file") for s in entry.get("samples") or [] if isinstance(s, dict)]
            rels += [r for r in more if isinstance(r, str)]
    return rels


def _few(rels: Iterable[str]) -> str:
    rels = list(rels)
    more = f" and {len(rels) - 4} more" if len(rels) > 4 else ""
    return ", ".join(rels[:4]) + more


def refuse(shown: Path, c: Contents, overwrite: bool) -> None:
    """Raise ``OutputFolderError`` unless a run may be written into a folder holding ``c``."""
    if c.links:
        raise OutputFolderError(
            f"the output folder {shown} has {_few(c.links)} where textsr writes its files, as a link (or something "
            "other than a plain file or folder); textsr never writes or removes anything through a link. Remove or "
            "rename it, or choose another output folder.")
    if c.foreign:
        raise OutputFolderError(
            f"the output folder {shown} holds {_few(c.foreign)}: files under the names textsr writes that no textsr "
            f"record ({RESULTS} or {MARKER}) lists, so textsr cannot tell them from your own files and will not "
            "replace or remove them, not even with --overwrite. Move them elsewhere, or choose another output folder.")
    if c.vouched and not overwrite:
        raise OutputFolderError(
            f"the output folder {shown} already holds {c.describe()}. Choose another folder, or pass --overwrite "
            "(API: overwrite=True) to replace that run: only the files textsr's records list are removed.")


# --------------------------------------------------------------------------------------------
# Before any work: can we write there, is it free, and keep it ours
# --------------------------------------------------------------------------------------------


@contextmanager
def reserve(out: str | os.PathLike[str], *, overwrite: bool = False) -> Iterator[Path]:
    """Hold the output folder ``out`` for one run, from before its work until its files are written.

    Creates ``out`` if needed, takes the folder's lock (``OutputFolderError`` naming the holder if
    another run has it), checks it can be written (a probe file) and holds nothing the run may not
    replace (``refuse``). Yields the resolved folder. On leaving, the lock file goes and so do the
    folders this call created, if still empty. Nested calls in one thread share one hold (the CLI
    reserves before sampling, ``write_run`` again while writing)."""
    shown = folder_arg(out)
    root = shown.resolve()
    created = _make_dirs(shown)
    try:
        with hold(root, shown):
            _probe(root, shown)
            refuse(shown, scan(root), overwrite)
            yield root
    finally:
        for d in reversed(created):
            try:
                d.rmdir()
            except OSError:  # not empty: it holds the run (or someone's files)
                pass


def check_output_folder(out: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Raise ``OutputFolderError`` unless ``out`` can be created and written, holds no other run (or
    ``overwrite``), no file of textsr's names that textsr did not write, no link where textsr writes,
    and no other run is writing it now. Leaves nothing behind. Returns ``out`` as a Path.
    To keep other runs out while you work, use ``reserve`` instead."""
    with reserve(out, overwrite=overwrite):
        pass
    return Path(out)


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


def _probe(root: Path, shown: Path) -> None:
    try:
        fd, name = tempfile.mkstemp(dir=root, prefix=PROBE_PREFIX, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(b"textsr write check\n")
                f.flush()
                os.fsync(f.fileno())
        finally:
            os.unlink(name)
    except OSError as e:
        raise OutputFolderError(f"cannot write to the output folder {shown} ({_why(e)}). Choose another output "
                                "folder, or make it writable.") from None


def _why(e: OSError) -> str:
    return e.strerror or str(e)


# --------------------------------------------------------------------------------------------
# Writing a run
# --------------------------------------------------------------------------------------------


def write_run(out: str | os.PathLike[str], files: Mapping[str, bytes], *, overwrite: bool = False,
              rescue: bool = True) -> dict[str, Path]:
    """Write ``files`` ({layout name: content}, results.json among them, listing the others) into ``out``.

    Reserves the folder (``reserve``: refused if it holds another run unless ``overwrite``, or files
    textsr did not write), writes the marker, removes the replaced run's files, writes results.json
    last. On a write error the files written so far are removed and, with ``rescue``, everything goes
    to a fresh fallback folder (``OutputWriteError`` names it); so does a run whose caller reserved
    the folder before its work when the folder can no longer take it. Returns {name: absolute Path}.
    """
    _check_files(files)
    shown = folder_arg(out)
    reserved_before = held(shown.resolve())
    try:
        with reserve(shown, overwrite=overwrite) as root:
            return _replace_run(root, files)
    except OutputFolderError as e:
        if not (rescue and reserved_before):
            raise
        raise _rescued(files, shown, str(e)) from None
    except OSError as e:
        if not rescue:
            raise
        why = f"{_why(e)}" + (f": {e.filename}" if getattr(e, "filename", None) else "")
        raise _rescued(files, shown, why) from None


def _check_files(files: Mapping[str, bytes]) -> None:
    if RESULTS not in files:
        raise ValueError("a run's files must include results.json (it marks the run complete)")
    odd = [rel for rel in files if not is_layout_name(rel)]
    if odd:
        raise ValueError(f"not names of textsr's output layout: {odd}")
    unlisted = set(files) - set(listed_files(json.loads(files[RESULTS]))) - {RESULTS}
    if unlisted:
        raise ValueError(f"results.json must list every file of the run (it vouches for them); it misses "
                         f"{sorted(unlisted)}")


def _replace_run(root: Path, files: Mapping[str, bytes]) -> dict[str, Path]:
    old = scan(root)  # checked by reserve: nothing foreign, no links
    listed = sorted({*old.vouched, *files})
    marker = {"textsr_version": __version__, "files": listed,
              "note": "textsr is writing this folder; if this file stays, that write was interrupted"}
    io.write_bytes_atomic(json.dumps(marker, indent=1).encode(), _checked(root, MARKER))
    try:
        _remove(root, [*old.vouched, *old.temps])
        written = _write_all(root, files)
    except OSError:
        if not any(os.path.lexists(root / rel) for rel in listed):
            _checked(root, MARKER).unlink(missing_ok=True)
        raise
    _checked(root, MARKER).unlink()  # complete: results.json vouches for the run now
    return written


def _checked(root: Path, rel: str, folder: bool = False) -> Path:
    """``root / rel`` after checking, right now, that no component below ``root`` is a link, folders
    are folders and an existing ``rel`` is a plain file (a folder with ``folder``): nothing outside
    ``root`` is reached."""
    parts = rel.split("/")
    if os.path.isabs(rel) or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"not a relative path inside the output folder: {rel!r}")
    p = root
    for i, part in enumerate(parts):
        p = p / part
        try:
            mode = os.lstat(p).st_mode
        except FileNotFoundError:
            break  # the rest does not exist yet: it will be created as a folder / plain file
        if not (stat.S_ISREG(mode) if i == len(parts) - 1 and not folder else stat.S_ISDIR(mode)):
            raise OSError(errno.ELOOP, "a link or not a plain file/folder (textsr never writes or removes through "
                          "links)", str(p))
    return root / rel


def _remove(root: Path, rels: Iterable[str]) -> None:
    """Remove these files (checked paths); then their prompt folders when that leaves them empty."""
    folders = set()
    for rel in rels:
        _checked(root, rel).unlink(missing_ok=True)
        if "/" in rel:
            folders.add(rel.split("/")[0])
    for d in sorted(folders):
        try:
            _checked(root, d, folder=True).rmdir()
        except OSError:  # not empty: it holds someone else's files
            pass


def _write_all(out: Path, files: Mapping[str, bytes]) -> dict[str, Path]:
    order = [rel for rel in files if rel != RESULTS] + [RESULTS]  # results.json last: the run is complete
    written: list[Path] = []
    new_dirs = {(out / rel).parent for rel in order if not (out / rel).parent.exists()}
    try:
        for rel in order:
            path = _checked(out, rel)
            io.write_bytes_atomic(files[rel], path)
            written.append(path)
    except OSError:
        _undo(written, new_dirs)
        raise
    return {rel: (out / rel).resolve() for rel in order}


def _undo(written: list[Path], dirs: set[Path]) -> None:
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
            f"results were written to {folder} instead: copy them from there once the folder can take them "
            "(free some space, fix its permissions, or move away what is in the way).", rescued=folder)
    return OutputWriteError(
        f"could not write the results to {out} ({why}), nor to a fallback folder ({'; '.join(tried)}). "
        "Nothing was left half-written. From Python the Exploration still holds every sample: call "
        ".save() with another folder.", rescued=None)
