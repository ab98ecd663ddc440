"""The web app (textsr.app): the page builds, its handlers return what the page shows, bad uploads get
clear errors, and a served app answers gradio_client requests, three at once, and survives a failing one.

The sampling runs on a stub backend (a closed-form Gaussian prior, instant) and, when it is installed,
on the built-in shapes model with few steps, so the file runs in well under a minute on 2 CPU cores.
"""

from __future__ import annotations

import re
import socket
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

gr = pytest.importorskip("gradio", reason="the web app needs gradio: pip install -c constraints.txt 'textsr[app]'")

from textsr.app import build_app, core, launch  # noqa: E402
from textsr.backends.base import Backend, ModelInfo  # noqa: E402
from textsr.cascade import Stage  # noqa: E402
from textsr.schedule import NoiseSchedule  # noqa: E402
from textsr.solvers import make_config  # noqa: E402

try:  # tests/ is not a package: pytest puts it on sys.path ("prepend" import mode)
    from oracles import GaussianDenoiser
except ImportError:  # pragma: no cover
    from tests.oracles import GaussianDenoiser

STEPS = 8
pytestmark = [pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),  # inside gradio's queue (pandas 3)
              pytest.mark.filterwarnings("ignore:The copy keyword is deprecated")]


class StubBackend(Backend):
    """A closed-form Gaussian prior whose mean a prompt shifts; text score = mean brightness."""

    info = ModelInfo(name="stub-gauss", backend="stub", description="closed-form Gaussian prior (tests)")

    def __init__(self, fail: bool = False):
        self.schedule = NoiseSchedule.linear(1000)
        self.fail = fail

    def check_size(self, lr_hw, scale):
        if lr_hw[0] * scale > 128 or lr_hw[1] * scale > 128:
            from textsr.errors import InputImageError

            raise InputImageError("the stub model makes images of at most 128x128 pixels")

    def encode_prompt(self, prompt):
        return 0.1 * (len(prompt) % 5) - 0.2 if prompt else None

    def build_stages(self, solver, solver_options, options):
        if self.fail:
            raise RuntimeError("the stub backend was told to fail")
        return [Stage("base", GaussianDenoiser(self.schedule, 0.0, 0.3), solver=make_config(solver, **solver_options))]

    def text_scores(self, x, prompt):
        return ((x.flatten(1).mean(1) + 1) / 2).clamp(0, 1)


def plain(markdown: str) -> str:
    """What a Markdown string escaped with ``core.md_text`` shows: the backslash escapes removed."""
    return re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", markdown)


def test_md_text_escapes_every_markup_character():
    evil = "<b>x</b> *y* [z](javascript:a) | $$q$$ `c` &amp; \\ _u_ # h"
    assert plain(core.md_text(evil)) == evil
    tokens = re.findall(r"\\.|.", core.md_text(evil), flags=re.S)  # an escape pair or one character
    assert not [t for t in tokens if t in set("<>*[]()|$`&_#\\")], "an unescaped markup character"


def builtin_available() -> str | None:
    """None if builtin-shapes loads, else why not."""
    try:
        from textsr.model_registry import load_model

        load_model("builtin-shapes", device="cpu")
    except Exception as e:  # noqa: BLE001 - reported as the skip reason
        return f"builtin-shapes does not load here: {type(e).__name__}: {e}"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def lr_image(path: Path, size: int = 8) -> Path:
    y, x = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    img = np.stack([0.2 + 0.6 * x, 0.3 + 0.4 * y, 0.5 + 0.0 * x], -1)
    Image.fromarray(np.rint(img * 255).astype(np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def app():
    a = build_app(model_choices={"stub": StubBackend(), "broken": StubBackend(fail=True)}, max_upload_pixels=4096)
    yield a
    a.textsr_workdir.close()


def run(handlers, image, prompts="a red circle\na blue square", samples=3, model="stub", **kw):
    args = dict(template="", values="", model=model, solver="ddnm+", scale=8, samples=samples, seed=5,
                randomize=False, steps=STEPS, operator="avgpool")
    args.update(kw)
    return handlers.run(image, prompts, args["template"], args["values"], args["model"], args["solver"],
                        args["scale"], args["samples"], args["seed"], args["randomize"], args["steps"],
                        args["operator"])


# --------------------------------------------------------------------------------------------
# Pieces without a server
# --------------------------------------------------------------------------------------------


def test_build_app_offers_only_registry_names(app):
    assert isinstance(app, gr.Blocks)
    cfg = app.get_config_file()
    dropdowns = [c for c in cfg["components"] if c["type"] == "dropdown" and c["props"].get("elem_id") == "model"]
    assert [v for _, v in dropdowns[0]["props"]["choices"]] == ["stub", "broken"]
    with pytest.raises(gr.Error, match="unknown model &#x27;/etc/passwd&#x27;"):  # error pop-ups render HTML
        run(app.textsr_handlers, str(lr_image(Path(app.textsr_workdir.path) / "x.png")), model="/etc/passwd")


def test_default_choices_are_the_registry():
    from textsr.model_registry import MODELS

    pool = core.ModelPool()
    assert set(pool.names) == set(MODELS) and pool.names[0] == "builtin-shapes"
    with pytest.raises(core.UsageError, match="unknown model"):
        pool.get("./some/folder")
    with pytest.raises(ValueError, match="registry models only"):
        core.ModelPool(["builtin-shapes", "/home/me/model"])


def test_run_handler_returns_images_and_metrics(app, tmp_path):
    out = run(app.textsr_handlers, str(lr_image(tmp_path / "lr.png")), samples=3)
    gallery, std, baselines, summary, archive, seed, result, cmp_in, cmp_down, cmp_diff, cmp_text = out
    assert len(gallery) == 2 * 3
    for (img, caption), prompt in zip(gallery, ["a red circle"] * 3 + ["a blue square"] * 3):
        assert img.shape == (64, 64, 3) and img.dtype == np.uint8
        assert caption.startswith(prompt) and "LR-PSNR" in caption and " dB" in caption and "text 0." in caption
    assert [c for _, c in std][0].startswith("a red circle · mean 0.") and len(std) == 2
    assert len(baselines) == 2 and baselines[1][0].shape == (64, 64, 3)
    assert "text consistency" in summary and "a blue square" in summary and seed == 5
    assert cmp_in.shape == cmp_down.shape == cmp_diff.shape and "differs from the input by at most" in cmp_text
    names = zipfile.ZipFile(archive).namelist()
    assert any(n.endswith("/results.json") for n in names) and any(n.endswith("/grid.png") for n in names)
    assert sum(n.endswith(".png") and "/sample-" in n for n in names) == 6
    # DDNM+ without noise: every sample is consistent with the input (up to the 8-bit input)
    assert min(min(p.lr_psnr) for p in result.prompts) > 40


def test_select_compares_the_clicked_sample(app, tmp_path):
    h = app.textsr_handlers
    result = run(h, str(lr_image(tmp_path / "lr.png")), samples=2)[6]
    lr_view, down, diff, text = h.select(result, gr.SelectData(None, {"index": 3, "value": None}))
    assert "a blue square" in text and "sample #1" in text
    assert lr_view.shape == down.shape == diff.shape and abs(lr_view.astype(int) - down.astype(int)).max() <= 8
    with pytest.raises(gr.Error, match="run an exploration first"):
        h.select(None, gr.SelectData(None, {"index": 0, "value": None}))


def test_sweep_random_seed_and_progress(app, tmp_path):
    seen = []

    class Recorder:
        def __call__(self, frac, desc=None, **kw):
            seen.append((frac, desc))

    h = app.textsr_handlers
    out = h.run(str(lr_image(tmp_path / "lr.png")), "", "a {shape} on blue", "circle, star, ring", "stub", "ddnm",
                8, 2, 0, True, STEPS, "bicubic", progress=Recorder())
    assert len(out[0]) == 3 * 2 and out[0][2][1].startswith("a star on blue")
    assert out[5] != 0 or out[6].settings.seed == out[5]  # the random seed is reported back
    fracs = [f for f, _ in seen]
    assert fracs == sorted(fracs) and fracs[-1] == 1.0 and any("prompt 3/3" in (d or "") for _, d in seen)
    assert plain(core.sweep_preview("x", "a {shape}", "circle,star")) == "3 prompts: 'x', 'a circle', 'a star'"
    assert core.sweep_preview("", "a {shape}", "").startswith("⚠")


def test_oversized_upload_gets_a_clear_error(app, tmp_path):
    big = lr_image(tmp_path / "holiday.png", size=80)  # 6400 pixels > the limit of 4096
    h = app.textsr_handlers
    with pytest.raises(gr.Error) as e:
        h.check_upload(str(big))
    msg = e.value.message
    assert "80x80 = 6,400 pixels, more than the limit of 4,096" in msg and "downscale or crop" in msg
    assert msg.startswith("holiday.png:") and str(tmp_path) not in msg  # the user's name, not the server's path
    assert plain(h.input_info(str(big), 8)).startswith("⚠ holiday.png")
    with pytest.raises(gr.Error, match="more than the limit"):
        run(h, str(big))


def test_other_bad_requests(app, tmp_path):
    h, img = app.textsr_handlers, str(lr_image(tmp_path / "lr.png"))
    with pytest.raises(gr.Error, match="upload a low-resolution image first"):
        run(h, None)
    with pytest.raises(gr.Error, match="at most 128x128"):
        run(h, img, scale=32)
    with pytest.raises(gr.Error, match="same prompt is given twice"):
        run(h, img, prompts="a\na")
    with pytest.raises(gr.Error, match="internal error.*told to fail.*still running"):
        run(h, img, model="broken")
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    with pytest.raises(gr.Error, match="notes.png: not an image"):
        run(h, str(bad))
    with pytest.raises(core.UsageError, match="output would be 4096x4096"):
        core.check_request_size((512, 512), 8, 1, 1, core.Limits())


def test_demo_scene_button(app):
    pytest.importorskip("textsr.demo", reason="textsr.demo is not installed")
    h = build_app(model_choices=["builtin-shapes"]).textsr_handlers
    image, prompts, scale, steps, model, solver = h.demo()
    assert image.dtype == np.uint8 and image.shape == (64 // scale, 64 // scale, 3)
    assert "(no prompt)" in prompts.splitlines() and core.parse_prompts(prompts)[-1] == ""
    assert model == "builtin-shapes" and solver in ("ddnm+", "ddnm") and steps >= 0
    with pytest.raises(gr.Error, match="needs the model &#x27;builtin-shapes&#x27;"):
        app.textsr_handlers.demo()  # an app that does not offer the demo's model says so
    h.workdir.close()


def test_builtin_model_handler(tmp_path):
    why = builtin_available()
    if why:
        pytest.skip(why)
    a = build_app(model_choices=["builtin-shapes"])
    try:
        t0 = time.perf_counter()
        out = run(a.textsr_handlers, str(lr_image(tmp_path / "lr.png")), prompts="a red circle\na yellow star",
                  samples=2, model="builtin-shapes", steps=20)
        seconds = time.perf_counter() - t0
    finally:
        a.textsr_workdir.close()
    assert len(out[0]) == 4 and all("LR-PSNR" in c and "text" in c for _, c in out[0])
    print(f"builtin-shapes, 2 prompts x 2 samples x 20 steps, first result in {seconds:.2f} s")


# --------------------------------------------------------------------------------------------
# A served app, through gradio_client
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served():
    pytest.importorskip("gradio_client", reason="pip install gradio_client")
    port = free_port()
    a = launch(port=port, concurrency=2, block=False, quiet=True, max_file_size="200kb", max_upload_pixels=4096,
               model_choices={"stub": StubBackend(), "broken": StubBackend(fail=True)})
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        a.close()
        a.textsr_workdir.close()


def client_args(path, prompts="a red circle\na blue square", seed=0, samples=3, model="stub"):
    from gradio_client import handle_file

    return (handle_file(str(path)), prompts, "", "", model, "ddnm+", 8, samples, seed, False, STEPS, "avgpool")


def test_client_api(served, tmp_path):
    from gradio_client import Client

    c = Client(served, verbose=False)
    assert "/explore" in c.view_api(return_format="dict", print_info=False)["named_endpoints"]
    gallery, std, baselines, summary, archive, seed, *cmp = c.predict(*client_args(lr_image(tmp_path / "a.png")),
                                                                      api_name="/explore")
    assert len(gallery) == 6 and all("LR-PSNR" in g["caption"] and "text" in g["caption"] for g in gallery)
    assert all(Path(g["image"]).is_file() for g in gallery) and len(std) == 2 and len(baselines) == 2
    assert "text consistency" in summary and zipfile.is_zipfile(archive) and len(cmp) == 4


def test_failures_stay_with_their_request(served, tmp_path):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    c = Client(served, verbose=False)
    with pytest.raises(AppError, match="internal error"):
        c.predict(*client_args(lr_image(tmp_path / "a.png"), model="broken"), api_name="/explore")
    with pytest.raises(AppError, match="not in the list of choices"):  # no paths through the API either
        c.predict(*client_args(lr_image(tmp_path / "a.png"), model="/etc/passwd"), api_name="/explore")
    with pytest.raises(AppError, match="more than the limit of 4,096"):
        c.predict(*client_args(lr_image(tmp_path / "big.png", size=80)), api_name="/explore")
    noise = np.random.default_rng(0).integers(0, 256, (300, 300, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "huge.png")  # ~270 kB > max_file_size
    with pytest.raises(Exception, match="(?i)file size|too large|exceeds"):
        c.predict(*client_args(tmp_path / "huge.png"), api_name="/explore")
    out = c.predict(*client_args(lr_image(tmp_path / "a.png")), api_name="/explore")  # still serving
    assert len(out[0]) == 6


def test_nothing_leaves_the_machine(monkeypatch, tmp_path):
    """No analytics, version checks or fonts: the server resolves no host but this one."""
    from gradio_client import Client

    looked_up = []
    real = socket.getaddrinfo

    def spy(host, *a, **kw):
        looked_up.append(host)
        return real(host, *a, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", spy)
    port = free_port()
    a = launch(port=port, block=False, quiet=True, model_choices={"stub": StubBackend()})
    try:
        out = Client(f"http://127.0.0.1:{port}/", verbose=False).predict(*client_args(lr_image(tmp_path / "a.png")),
                                                                         api_name="/explore")
        assert len(out[0]) == 6
        time.sleep(0.5)  # a telemetry thread would have started by now
    finally:
        a.close()
        a.textsr_workdir.close()
    assert set(looked_up) <= {"127.0.0.1", "localhost", "::1", b"127.0.0.1", b"localhost"}, looked_up


def test_apps_keep_their_own_files(tmp_path):
    """gradio deletes the cached files an app created when it stops, and names them by content: two
    apps showing the same images must not delete each other's."""
    from gradio_client import Client

    apps = [launch(port=free_port(), block=False, quiet=True, model_choices={"stub": StubBackend()}) for _ in range(2)]
    try:
        for a in apps:
            Client(a.local_url, verbose=False).predict(*client_args(lr_image(tmp_path / "a.png")), api_name="/explore")
        kept = sorted(apps[0].textsr_workdir.cache.rglob("*.png"))
        assert len(kept) >= 6 and apps[1].textsr_workdir.cache != apps[0].textsr_workdir.cache
        apps[1].close()
        apps[1].textsr_workdir.close()
        assert all(f.is_file() for f in kept)
    finally:
        for a in apps:
            a.close()
            a.textsr_workdir.close()


def test_three_concurrent_requests(served, tmp_path):
    from gradio_client import Client

    img = lr_image(tmp_path / "a.png")
    t0 = time.perf_counter()
    jobs = [Client(served, verbose=False).submit(*client_args(img, seed=100 * i), api_name="/explore")
            for i in range(3)]
    outs = [j.result(timeout=60) for j in jobs]
    seconds = time.perf_counter() - t0
    assert [len(o[0]) for o in outs] == [6, 6, 6]
    assert [o[5] for o in outs] == [0, 100, 200]
    assert len({o[4] for o in outs}) == 3  # each request its own download
    print(f"3 concurrent requests (concurrency 2, stub model, {STEPS} steps): all done in {seconds:.2f} s")


def test_particles_show_how_plausible_each_prompt_is(app, tmp_path):
    h = app.textsr_handlers
    gallery, _, _, summary, _, _, result, *_ = h.run(
        str(lr_image(tmp_path / "lr.png")), "a red circle\na blue square", "", "", "stub", "ddnm+", 8, 2, 5, False,
        STEPS, "avgpool", particles=3)
    assert "P(prompt \\| image)" in summary and "guidance scale 1" in summary
    assert "tds ran instead of ddnm" in summary  # the solver switch is said, not silent
    probs = [p.evidence.probability for p in result.prompts]
    assert sum(probs) == pytest.approx(1.0)
    assert f"P(prompt | image) {probs[0]:.2f}" in gallery[0][1]
    with pytest.raises(gr.Error, match="particles"):
        h.run(str(lr_image(tmp_path / "lr.png")), "a", "", "", "stub", "tds", 8, 1, 5, False, STEPS, "avgpool",
              particles=10_000)


def test_errors_keep_their_line_breaks_and_stay_on_the_page(app, tmp_path):
    """Issue 19 item 7: the pop-up keeps the message's lines and stays until closed; after it is closed
    the summary panel still shows the message, line by line."""
    from types import SimpleNamespace

    h, session = app.textsr_handlers, SimpleNamespace(session_hash="s-1")
    img = str(lr_image(tmp_path / "lr.png"))
    with pytest.raises(gr.Error) as e:
        h.run(img, "a\na", "", "", "stub", "ddnm+", 8, 1, 5, False, STEPS, "avgpool", request=session)
    assert e.value.duration is None and "same prompt is given twice" in e.value.message
    shown = h.last_error(session)
    assert shown.startswith("**⚠ Cannot run this**") and "same prompt is given twice" in plain(shown)
    assert h.errors == {}  # shown once
    with pytest.raises(gr.Error) as e:
        h.run(img, "a", "", "", "broken", "ddnm+", 8, 1, 5, False, STEPS, "avgpool", request=session)
    assert e.value.title == "Internal error"
    from textsr.app.ui import user_errors

    record: dict = {}
    with pytest.raises(gr.Error) as e, user_errors(record, "s-2"):
        raise core.UsageError("weights missing:\n  hf download a/b\n  hf download c/d")
    assert e.value.message == "weights missing:<br>  hf download a/b<br>  hf download c/d"
    assert record["s-2"] == ("Cannot run this", "weights missing:\n  hf download a/b\n  hf download c/d")
    assert h.last_error(SimpleNamespace(session_hash="none")).startswith("**⚠ Error**")
    h.errors.update(record)
    assert plain(h.last_error(SimpleNamespace(session_hash="s-2"))).splitlines() == \
        ["**⚠ Cannot run this**", "", "weights missing:  ", "  hf download a/b  ", "  hf download c/d"]


def test_the_toy_world_says_so_at_the_top_of_the_summary(tmp_path):
    a = build_app(model_choices=["builtin-shapes"])
    try:
        out = run(a.textsr_handlers, str(lr_image(tmp_path / "lr.png")), prompts="a red circle", samples=1,
                  model="builtin-shapes", steps=3)
    finally:
        a.textsr_workdir.close()
    assert out[3].startswith("**⚠ builtin\\-shapes is the built\\-in TOY world")
