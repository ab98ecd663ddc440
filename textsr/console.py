"""What the command line shows while it works, and how it shares the CPU.

* ``Progress``: on a terminal, a bar per prompt and stage (tqdm); in a log file (stderr not a terminal),
  one line every ``PROGRESS_INTERVAL`` seconds with the overall fraction and the time left.
* ``quiet_libraries``: diffusers/transformers/huggingface_hub loading bars and log chatter off, and the
  Python warnings the libraries raise kept and summarised once at the end (``--verbose`` shows them all
  as they come).
* ``default_threads``/``set_threads``: torch's CPU threads (``--threads``).  torch starts one per core,
  and on cores that other work keeps busy those threads spin: on this project's 2 shared cores the demo
  spent 5-6x its single-thread CPU time that way (bench/README.md, "CPU threads").

Everything user-given is escaped before it reaches the terminal (``textsr.display.terminal``).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import warnings
from collections.abc import Iterator
from typing import Any, TextIO

from .display import prompt_label, terminal

PROGRESS_INTERVAL = 10.0  # seconds between progress lines when stderr is not a terminal

# read by diffusers / transformers / huggingface_hub when they are imported (after this module is)
_LIBRARY_QUIET_ENV = {"DIFFUSERS_VERBOSITY": "error", "TRANSFORMERS_VERBOSITY": "error",
                      "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}


class Progress:
    """The ``explore`` progress callback of the command line; silent when ``quiet``."""

    def __init__(self, quiet: bool, stream: TextIO | None = None, interval: float | None = None):
        self.quiet = quiet
        self.stream = stream or sys.stderr
        self.interval = PROGRESS_INTERVAL if interval is None else interval
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.bar: Any = None  # a tqdm bar (terminal)
        self.key: tuple[int, str] | None = None  # (prompt index, stage name)
        self.t0: float | None = None
        self.last = 0.0

    def __call__(self, p: Any) -> None:
        if self.quiet:
            return
        now = time.perf_counter()
        if self.t0 is None:
            self.t0 = self.last = now
        label = terminal(prompt_label(p.prompt)[:40])
        stage = f" stage {terminal(p.stage)}" if p.stages > 1 else ""
        if not self.tty:
            if now - self.last >= self.interval:
                self.last = now
                done = p.fraction
                left = (now - self.t0) * (1 - done) / done if done > 0 else float("nan")
                print(f"progress: {100 * done:.0f}% (prompt {p.prompt_index + 1}/{p.prompts} {label}{stage}, step "
                      f"{p.step}/{p.total}); {now - self.t0:.0f} s so far, about {left:.0f} s left",
                      file=self.stream, flush=True)
            return
        from tqdm import tqdm

        key = (p.prompt_index, p.stage)
        if key != self.key:
            self.close()
            self.bar = tqdm(total=p.total, desc=f"[{p.prompt_index + 1}/{p.prompts}] {label}{stage}", unit="step",
                            leave=False, file=self.stream)
            self.key = key
        self.bar.n = p.step
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
            self.key = None


@contextlib.contextmanager
def quiet_libraries(verbose: bool = False) -> Iterator[list[warnings.WarningMessage]]:
    """Inside: the libraries' loading bars and log messages off, their Python warnings collected into the
    yielded list (for one summary line: ``warning_summary``).  ``verbose``: everything shown as usual."""
    if verbose:
        yield []
        return
    for k, v in _LIBRARY_QUIET_ENV.items():
        os.environ.setdefault(k, v)
    for name in ("diffusers", "transformers"):  # already imported: their own switches
        mod = sys.modules.get(f"{name}.utils.logging")
        if mod is not None:
            mod.set_verbosity_error()
            mod.disable_progress_bar()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield caught


def warning_summary(caught: list[warnings.WarningMessage]) -> str | None:
    """One line for the warnings ``quiet_libraries`` kept (None if there were none)."""
    if not caught:
        return None
    kinds = sorted({w.category.__name__ for w in caught})
    first = str(caught[0].message).splitlines()[0][:160]
    return (f"{len(caught)} warning(s) from the libraries ({', '.join(kinds)}; the first: {first}); --verbose "
            "shows them")


def default_threads() -> int:
    """CPU threads for torch without oversubscribing the machine: ``OMP_NUM_THREADS`` when it is set,
    else the CPUs this process may run on less the load already on them (the 1-minute load average,
    rounded), at least 1."""
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return max(1, min(cpus, cpus - round(load)))


def set_threads(n: int | None) -> int:
    """Give torch ``n`` CPU threads (None: ``default_threads()``); returns the number set."""
    import torch

    n = default_threads() if n is None else n
    torch.set_num_threads(n)
    return n
