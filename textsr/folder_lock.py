"""One textsr run at a time per output folder: an advisory lock on ``FOLDER/.textsr-lock``.

Why ``flock``: the operating system releases it when the process that holds it ends, however it
ends (``kill -9``, a crash, a power cut of the process), so a stale lock never blocks a later run;
no timeout, process-id or age guess is needed. The lock file itself may stay behind after a kill:
it holds nothing, and the next run takes it over. It holds the holder's process id, host and start
time, only for the message another run shows. Locks are per open file, so two threads of one
process exclude each other too; a thread that already holds a folder may take it again (nested
holds: the CLI holds the folder while sampling, ``write_run`` again while writing).

Limits: advisory (a program that ignores the lock is not kept out; textsr's own runs are); on
network file systems ``flock`` works where the server supports locks (NFSv4; NFSv3 needs lockd);
where the file system has no locks at all, the run goes on unlocked with a warning.
Needs POSIX file locks (``fcntl``: Linux, macOS, BSD); elsewhere writing a run raises
``OutputFolderError`` saying so.
"""

from __future__ import annotations

import errno
import json
import os
import re
import socket
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from .errors import OutputFolderError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX (Windows)
    fcntl = None  # type: ignore[assignment]

LOCK = ".textsr-lock"
# flock's answers on file systems without locks (NFSv3 without lockd, some FUSE and SMB mounts): the run
# goes on unlocked, with a warning, rather than refusing to write where it always could
_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS}

_mine = threading.local()  # .depth: {resolved folder: nesting depth} for the folders this thread holds


def _depths() -> dict[Path, int]:
    if not hasattr(_mine, "depth"):
        _mine.depth = {}
    return _mine.depth


def held(root: Path) -> bool:
    """Whether this thread holds the folder ``root`` (resolved)."""
    return _depths().get(root, 0) > 0


@contextmanager
def hold(root: Path, shown: Path) -> Iterator[None]:
    """Hold the folder ``root`` (resolved; ``shown`` is how messages name it) until the block ends, or
    raise ``OutputFolderError`` at once, naming the holder, if another run holds it."""
    depths = _depths()
    if depths.get(root, 0) == 0:
        fd = _acquire(root / LOCK, shown)
    else:
        fd = None
    depths[root] = depths.get(root, 0) + 1
    try:
        yield
    finally:
        depths[root] -= 1
        if depths[root] == 0:
            del depths[root]
            if fd is not None:
                _release(fd, root / LOCK)


def _acquire(path: Path, shown: Path) -> int:
    if fcntl is None:  # pragma: no cover - not POSIX
        raise OutputFolderError("textsr keeps two runs out of one output folder with POSIX file locks (fcntl), "
                                "which this platform does not have")
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise OutputFolderError(f"cannot write to the output folder {shown} ({e.strerror or e}: {path.name}). "
                                    "Choose another output folder, or make it writable.") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise OutputFolderError(
                f"the output folder {shown} is in use by another textsr run ({holder}); nothing was started. Wait "
                "until it finishes, or choose another output folder.") from None
        except OSError as e:
            if e.errno not in _NO_LOCKS:
                os.close(fd)
                raise OutputFolderError(f"cannot lock the output folder {shown} ({e.strerror or e}). Choose "
                                        "another output folder.") from None
            warnings.warn(f"the file system of the output folder {shown} does not support file locks "
                          f"({e.strerror or e}): textsr cannot keep a second run out of this folder while this "
                          "one runs", stacklevel=4)
        if _same_file(fd, path):
            break
        os.close(fd)  # the holder removed the file as we opened it: lock the one at the path now
    try:
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "since": datetime.now().isoformat(timespec="seconds")}).encode())
    except OSError as e:
        _release(fd, path)
        raise OutputFolderError(f"cannot write to the output folder {shown} ({e.strerror or e}). Choose another "
                                "output folder, or make it writable.") from None
    return fd


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.lstat(path)
    except FileNotFoundError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _release(fd: int, path: Path) -> None:
    try:
        if _same_file(fd, path):
            os.unlink(path)  # while still locked: a run that opened it meanwhile sees it gone and retries
    except OSError:  # e.g. the folder turned read-only: the file stays, and holds nothing once closed
        pass
    finally:
        os.close(fd)


_PLAIN = re.compile(r"[^A-Za-z0-9_.:+-]")


def _holder(fd: int) -> str:
    """'process 1234 on host, since 2025-01-31T12:00:03' from the lock file (anything odd dropped: the
    file lies in a folder others may write)."""
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        pid, host, since = int(info["pid"]), _PLAIN.sub("", str(info["host"]))[:64], _PLAIN.sub("", str(info["since"]))
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not written its id yet"
    here = " (this process)" if pid == os.getpid() and host == socket.gethostname() else ""
    return f"process {pid}{here} on {host}, since {since[:19]}"
