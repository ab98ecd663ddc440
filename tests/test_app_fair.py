"""One app request cannot take the machine (issue 21, defect 1, the app's side): the work one request may
ask for is capped before any work, and ``FairGate`` shares the server between clients (one request per
client, least work first, deadlines). Threads and fake work only: deterministic, no sampling."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from textsr.app import core
from textsr.app.gate import FairGate
from textsr.errors import UsageError
from textsr.request import ExploreRequest

LR = np.full((8, 8, 3), 0.5, dtype=np.float32)
pytestmark = [pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),  # inside gradio's queue (pandas 3)
              pytest.mark.filterwarnings("ignore:The copy keyword is deprecated")]


def wait_until(cond, timeout=10.0):
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.002)


class Client(threading.Thread):
    """Enters ``gate`` as ``name`` with ``work``, records when it started, holds its slot until released."""

    def __init__(self, gate: FairGate, name: str, work: int, order: list):
        super().__init__(daemon=True)
        self.gate, self.name_, self.work, self.order = gate, name, work, order
        self.release, self.error = threading.Event(), None

    def run(self):
        try:
            with self.gate.enter(self.name_, self.work):
                self.order.append(self.name_)
                self.release.wait(10)
        except UsageError as e:
            self.error = e


def start(gate, name, work, order, waiting=None):
    c = Client(gate, name, work, order)
    c.start()
    if waiting is not None:  # it is waiting once the gate lists it
        wait_until(lambda: name in gate.waiting() or name in gate.running())
    return c


def test_a_light_client_waits_only_for_the_running_request_not_a_heavy_clients_backlog():
    gate, order = FairGate(1), []
    heavy = start(gate, "heavy", 100_000, order, waiting=True)
    assert gate.running() == ["heavy"]
    with pytest.raises(UsageError, match="already have a request running or waiting"):  # no backlog
        with gate.enter("heavy", 100_000):
            pass
    light = start(gate, "light", 4, order, waiting=True)
    other_heavy = start(gate, "heavy-2", 50_000, order, waiting=True)
    assert gate.waiting() == ["light", "heavy-2"]  # least work first, not arrival order
    heavy.release.set()
    wait_until(lambda: order == ["heavy", "light"])
    light.release.set()
    wait_until(lambda: order == ["heavy", "light", "heavy-2"])
    other_heavy.release.set()
    for c in (heavy, light, other_heavy):
        c.join(5)
        assert c.error is None
    assert gate.running() == [] and gate.waiting() == []


def test_slots_run_at_once_and_a_client_may_come_back_after_its_request():
    gate, order = FairGate(2), []
    a, b = start(gate, "a", 1, order, waiting=True), start(gate, "b", 1, order, waiting=True)
    assert sorted(gate.running()) == ["a", "b"]
    c = start(gate, "c", 1, order, waiting=True)
    assert gate.waiting() == ["c"]
    a.release.set()
    wait_until(lambda: "c" in gate.running())
    again = start(gate, "a", 1, order, waiting=True)  # "a" finished: it may send the next one
    b.release.set(), c.release.set(), again.release.set()
    for t in (a, b, c, again):
        t.join(5)
        assert t.error is None
    assert order.count("a") == 2


def test_a_request_that_waits_too_long_is_refused_and_the_next_goes_on():
    gate, order = FairGate(1, max_wait_s=0.05), []
    busy = start(gate, "busy", 1, order, waiting=True)
    with pytest.raises(UsageError, match="busy with other requests"):
        with gate.enter("late", 1):
            pass
    assert gate.waiting() == []
    busy.release.set()
    busy.join(5)
    with gate.enter("late", 1):  # it may try again
        pass


def test_the_waiting_room_is_bounded():
    gate, order = FairGate(1, max_waiting=1), []
    first = start(gate, "first", 1, order, waiting=True)
    second = start(gate, "second", 1, order, waiting=True)
    with pytest.raises(UsageError, match="server is busy"):
        with gate.enter("third", 1):
            pass
    first.release.set(), second.release.set()
    first.join(5), second.join(5)


def test_a_running_request_stops_at_its_deadline():
    now = [0.0]
    gate = FairGate(1, max_run_s=60, clock=lambda: now[0])
    with gate.enter("a", 1) as ticket:
        ticket.check()
        now[0] = 61.0
        with pytest.raises(UsageError, match="time limit per request"):
            ticket.check()
    assert gate.running() == []  # the slot is free again


def test_a_heavy_request_is_delayed_by_lighter_ones_but_never_starved():
    now = [0.0]
    gate = FairGate(1, patience_s=100, clock=lambda: now[0])
    order: list = []
    holder = start(gate, "holder", 1, order, waiting=True)
    start(gate, "heavy", 1000, order, waiting=True)
    now[0] = 50.0
    start(gate, "light", 1, order, waiting=True)
    assert gate.waiting() == ["light", "heavy"]
    now[0] = 101.0  # heavy has waited its patience: it goes before the later, lighter one
    assert gate.waiting() == ["heavy", "light"]
    holder.release.set()
    wait_until(lambda: order[-1] == "heavy")


def test_gate_settings_are_checked():
    for bad in ({"slots": 0}, {"slots": True}, {"max_wait_s": 0}, {"max_waiting": -1}):
        with pytest.raises(ValueError):
            FairGate(**bad)
    with pytest.raises(ValueError, match="max_work"):
        core.Limits(max_work=0)


# -- the work cap, in the app's request path -------------------------------------------------------------------


class CountingPool:
    """A ModelPool stand-in: counts loads, returns the built-in model."""

    def __init__(self):
        self.loads = 0
        self.inner = core.ModelPool(["builtin-shapes"])

    def get(self, name, load=None):
        self.loads += 1
        return self.inner.get(name, load)


@pytest.fixture
def no_sampling(monkeypatch):
    calls = []
    monkeypatch.setattr("textsr.api.explore_request", lambda req, callback=None: calls.append(req) or _Result())
    return calls


class _Result:
    notes: list = []


def request(**kw):
    return ExploreRequest.build(image=LR, scale=8, model="builtin-shapes", **kw)


def test_the_issues_16_samples_x_64_particles_is_refused_before_any_work(no_sampling):
    pool = CountingPool()
    with pytest.raises(UsageError) as e:
        core.run_request(request(samples=16, particles=64, steps=100), pool, core.Limits())
    msg = str(e.value)
    assert "16 samples x 1 prompt(s) x 64 particles x 100 steps = 102,400" in msg
    assert "limit of 12,800" in msg and "at most 2 with these settings" in msg
    assert pool.loads == 0 and no_sampling == []  # before the model loads, before any sampling


def test_work_counts_every_factor(no_sampling):
    limits = core.Limits(max_work=1000)
    ok = request(samples=2, prompts=["a red circle", "a blue star"], steps=10, particles=5)
    assert core.check_work(ok, 10, limits) == 2 * 2 * 5 * 10
    assert core.request_work(request(samples=3, steps=10, travel=(2, 4)), 10) == 3 * 10 * 4  # time-travel passes
    assert core.request_work(request(samples=3, steps=10), 10) == 30  # no particles: one row per sample
    with pytest.raises(UsageError, match="lower the samples"):
        core.run_request(request(samples=2, prompts=["a", "b"], steps=10, particles=26), CountingPool(), limits)
    core.run_request(ok, CountingPool(), limits)
    assert len(no_sampling) == 1


def test_the_models_default_steps_count_when_the_page_leaves_them_out(no_sampling):
    """steps = 0 on the page: the model's defaults (the built-in model: 100 per stage, two stages) are
    counted once the model is at hand, before any sampling."""
    limits = core.Limits(max_work=1000)
    pool = CountingPool()
    with pytest.raises(UsageError, match=r"11 samples x 1 prompt\(s\) x 200 steps = 2,200"):
        core.run_request(request(samples=11), pool, limits)
    assert pool.loads == 1 and no_sampling == []
    core.run_request(request(samples=5), pool, limits)
    assert len(no_sampling) == 1


def test_run_request_waits_at_the_gate_and_frees_it(no_sampling):
    gate, order = FairGate(1), []
    other = start(gate, "other", 1, order, waiting=True)
    done = threading.Event()

    def mine():
        core.run_request(request(samples=1, steps=5), CountingPool(), core.Limits(), gate=gate, client="me")
        done.set()

    threading.Thread(target=mine, daemon=True).start()
    wait_until(lambda: gate.waiting() == ["me"])
    assert no_sampling == []  # waits for its turn
    other.release.set()
    assert done.wait(10) and len(no_sampling) == 1
    assert gate.running() == [] and gate.waiting() == []


def test_the_served_app_gates_each_browser_session_as_one_client(tmp_path, monkeypatch):
    """Through gradio: each gradio_client session reaches the gate under its own session hash."""
    pytest.importorskip("gradio", reason="the web app needs gradio")
    pytest.importorskip("gradio_client", reason="pip install gradio_client")
    from gradio_client import Client, handle_file
    from PIL import Image

    from textsr.app import launch

    seen = []
    real = core.run_request
    monkeypatch.setattr(core, "run_request", lambda *a, **kw: seen.append(kw["client"]) or real(*a, **kw))
    Image.fromarray(np.full((8, 8, 3), 128, np.uint8)).save(tmp_path / "lr.png")
    with socket_port() as port:
        app = launch(port=port, block=False, quiet=True, model_choices=["builtin-shapes"])
    try:
        args = (handle_file(str(tmp_path / "lr.png")), "a red circle", "", "", "builtin-shapes", "ddnm+", 8, 1, 0,
                False, 3, "avgpool")
        for _ in range(2):
            Client(app.local_url, verbose=False).predict(*args, api_name="/explore")
    finally:
        app.close()
        app.textsr_workdir.close()
    assert len(seen) == 2 and len(set(seen)) == 2 and "local" not in seen, seen
    assert app.textsr_handlers.gate.running() == []


class socket_port:
    """A free local port (closed again before the app binds it)."""

    def __enter__(self) -> int:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    def __exit__(self, *exc) -> None:
        return None
