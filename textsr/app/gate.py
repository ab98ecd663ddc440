"""Fair sharing of the app between clients: ``FairGate``.

gradio's queue serves events first come, first served, so one client who sends many heavy requests makes
everyone else wait behind all of them.  The gate sits behind gradio's queue (which lets every request
through to it) and decides who runs:

- at most ``slots`` requests run at once (the app's ``--concurrency``);
- one request per client (gradio's ``session_hash``: one browser tab or API client) running or waiting;
  a second is refused at once with a message, so nobody can queue a backlog;
- a free slot goes to the waiting request with the least work (``core.request_work``), ties in arrival
  order; a request that has waited ``patience_s`` goes before any that came later, so a heavy request is
  delayed by light ones but never starved;
- deadlines: a request that waited ``max_wait_s`` is refused ("busy, try again"), and a running one is
  stopped at its next step once it has run ``max_run_s`` (``Ticket.check``, called from the progress
  callback); at most ``max_waiting`` requests wait.

Plain threading, no gradio: tests drive it with threads and fake work.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from ..errors import UsageError


@dataclass
class Ticket:
    """One admitted request: ``check()`` raises once it has run past its deadline."""

    client: str
    work: int
    seq: int
    since: float  # when it arrived (clock seconds)
    clock: Callable[[], float] = field(repr=False, default=time.monotonic)
    deadline: float = float("inf")  # set when it starts running

    def check(self) -> None:
        if self.clock() > self.deadline:
            raise UsageError("this request ran past the server's time limit per request and was stopped; ask for "
                             "fewer samples, prompts, particles or steps")


class FairGate:
    """Who of the requests at the app runs now (the module docstring has the rules); ``enter`` holds a slot."""

    def __init__(self, slots: int = 1, *, max_waiting: int = 64, max_wait_s: float = 600.0,
                 max_run_s: float = 1800.0, patience_s: float = 120.0,
                 clock: Callable[[], float] = time.monotonic):
        if isinstance(slots, bool) or not isinstance(slots, int) or slots < 1:
            raise ValueError(f"slots must be a positive integer, got {slots!r}")
        for name, v in (("max_waiting", max_waiting), ("max_wait_s", max_wait_s), ("max_run_s", max_run_s),
                        ("patience_s", patience_s)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise ValueError(f"{name} must be a positive number, got {v!r}")
        self.slots, self.max_waiting = slots, max_waiting
        self.max_wait_s, self.max_run_s, self.patience_s = float(max_wait_s), float(max_run_s), float(patience_s)
        self.clock = clock
        self._cond = threading.Condition()
        self._waiting: list[Ticket] = []
        self._running: list[Ticket] = []
        self._seq = itertools.count()

    def waiting(self) -> list[str]:
        """The waiting clients, in the order they would start now."""
        with self._cond:
            return [t.client for t in sorted(self._waiting, key=self._rank)]

    def running(self) -> list[str]:
        with self._cond:
            return [t.client for t in self._running]

    @contextmanager
    def enter(self, client: str, work: int) -> Iterator[Ticket]:
        """Wait for a slot (see the module docstring), run the block holding it, free it."""
        ticket = self._admit(client, work)
        try:
            yield ticket
        finally:
            with self._cond:
                self._running.remove(ticket)
                self._cond.notify_all()

    def _admit(self, client: str, work: int) -> Ticket:
        with self._cond:
            if any(t.client == client for t in self._waiting + self._running):
                raise UsageError("you already have a request running or waiting on this server: wait for it to "
                                 "finish (one request per client at a time)")
            if len(self._waiting) >= self.max_waiting:
                raise UsageError(f"the server is busy ({len(self._waiting)} requests waiting); try again later")
            now = self.clock()
            ticket = Ticket(client, int(work), next(self._seq), now, self.clock)
            self._waiting.append(ticket)
            while not (len(self._running) < self.slots and self._next() is ticket):
                left = ticket.since + self.max_wait_s - self.clock()
                if left <= 0:
                    self._waiting.remove(ticket)
                    self._cond.notify_all()  # the next in line may be able to start now
                    raise UsageError(f"the server was busy with other requests for {self.max_wait_s:.0f} s and "
                                     "this one did not start; try again later, or ask for less work")
                # woken when a slot frees or a request leaves; at the latest when someone's patience runs out
                self._cond.wait(timeout=min(left, self.patience_s))
            self._waiting.remove(ticket)
            ticket.deadline = self.clock() + self.max_run_s
            self._running.append(ticket)
            self._cond.notify_all()  # another slot may still be free for the next in line
            return ticket

    def _next(self) -> Ticket:
        return min(self._waiting, key=self._rank)

    def _rank(self, t: Ticket) -> tuple:
        """Those that waited ``patience_s`` first (oldest first), then least work, then arrival."""
        if self.clock() - t.since >= self.patience_s:
            return (0, t.seq, 0)
        return (1, t.work, t.seq)
