"""The page: inputs on the left, results on the right; handlers turn ``core``'s errors into ``gr.Error``."""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # no telemetry, no version check: nothing leaves this machine

import gradio as gr  # noqa: E402

from ..display import NO_PROMPT  # noqa: E402
from ..errors import TextSRError  # noqa: E402
from ..operator_registry import operator_names  # noqa: E402
from ..presets import preset_names  # noqa: E402
from ..request import MEMORY_OPTIONS  # noqa: E402
from ..validate import MAX_PROMPT_CHARS  # noqa: E402
from . import core, present  # noqa: E402
from .gate import FairGate  # noqa: E402

log = logging.getLogger("textsr.app")

DEFAULT = "default"  # operator: the preset's, else avgpool
NO_PRESET = "none"
SCALES = [2, 3, 4, 6, 8, 12, 16, 24, 32]
TITLE = "textsr · explorable super-resolution"
STD_LABEL = "Uncertainty: std across samples"
WAITING = 16  # requests waiting at the gate at most (each holds a worker thread while it waits)

INTRO = """# textsr · explorable super-resolution
Upload a low-resolution image, type what it might show (one prompt per line) and press **Explore**.
Every sample downsamples back to your input; the prompts choose *which* of the many consistent
high-resolution images you get. Click a sample to check it against the input."""

# System fonts only: the page loads nothing from outside this server.
SANS = ["ui-sans-serif", "system-ui", "-apple-system", "Segoe UI", "Roboto", "Helvetica Neue", "Arial", "sans-serif"]
MONO = ["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "Liberation Mono", "monospace"]

CSS = """
.pixelated img, .pixelated canvas { image-rendering: pixelated; }
#lr-input img { width: 100%; height: 100%; object-fit: contain; }
.captioned .thumbnail-item { aspect-ratio: auto; display: flex; flex-direction: column; }
.captioned .thumbnail-item img { aspect-ratio: 1 / 1; }
.captioned .caption-label { position: static; transform: none; max-width: 100%; white-space: normal;
  overflow: visible; text-overflow: clip; font-size: 0.78em; line-height: 1.25; margin: 4px 2px 2px;
  padding: 2px 4px; text-align: left; }
.captioned .grid-wrap { min-height: 0; max-height: none; height: auto; }
.captioned, .captioned .gallery-container { height: auto; }
#run-button { min-height: 48px; font-size: 1.05em; }
#summary table { font-size: 0.92em; }
#summary { min-height: 2em; }
footer { display: none !important; }
"""


def theme() -> gr.themes.Base:
    return gr.themes.Soft(primary_hue="indigo", secondary_hue="sky", neutral_hue="slate", font=SANS, font_mono=MONO)


@contextlib.contextmanager
def user_errors(record: dict | None = None, session: str | None = None):
    """Errors reach the person who caused them as ``gr.Error`` (its line breaks kept; it stays until
    closed); with ``record``, ``record[session]`` keeps (title, message) for the page to show after the
    pop-up is closed (``Handlers.last_error``).  The app keeps serving."""
    try:
        yield
    except gr.Error:
        raise
    except Exception as e:  # noqa: BLE001 - every failure becomes a message for the page
        title, message = _user_message(e)
        if record is not None and session is not None:
            record[session] = (title, message)
        raise gr.Error(core.html_text(message).replace("\n", "<br>"), title=title, duration=None,
                       print_exception=False) from None


def _user_message(e: Exception) -> tuple[str, str]:
    """(title, message) for a failed request."""
    from ..device import is_out_of_memory, out_of_memory_message

    if isinstance(e, (TextSRError, ValueError)):  # the engine's ValueErrors are configuration errors
        log.info("request refused: %s", e, exc_info=log.isEnabledFor(logging.DEBUG))
        return "Cannot run this", str(e)
    if is_out_of_memory(e):
        return "Out of memory", out_of_memory_message(e)
    log.exception("request failed")
    return "Internal error", (f"internal error ({type(e).__name__}: {e}); the app is still running, please try "
                              "again or report this")


@contextlib.contextmanager
def private_cache(workdir: present.Workdir):
    """Components built and servers started in this block keep their files in ``workdir.cache``
    (gradio reads the cache folder from GRADIO_TEMP_DIR when a component or server is created; at
    request time it checks files against the shared root, which holds this sub-folder)."""
    old = os.environ.get("GRADIO_TEMP_DIR")
    os.environ["GRADIO_TEMP_DIR"] = str(workdir.cache)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("GRADIO_TEMP_DIR", None)
        else:
            os.environ["GRADIO_TEMP_DIR"] = old


class Handlers:
    """The page's event handlers, callable without a browser (tests call them directly)."""

    def __init__(self, pool: core.ModelPool, limits: core.Limits, workdir: present.Workdir,
                 gate: FairGate | None = None):
        self.pool, self.limits, self.workdir = pool, limits, workdir
        self.errors: dict[str | None, tuple[str, str]] = {}  # session -> the last failed run's (title, message)
        self.gate = gate or FairGate()

    def input_info(self, image: str | None, scale: float | None) -> str:
        """Size of the uploaded image and of the samples (a warning line when the image is unusable)."""
        if image is None:
            return ""
        try:
            lr, notes = core.load_upload(image, self.limits)
        except TextSRError as e:
            return f"⚠ {core.md_text(e)}"
        return core.describe_input(lr, int(scale) if scale else None, notes)

    def check_upload(self, image: str | None) -> None:
        """On upload: a too large or unreadable file gets its error at once, as a pop-up."""
        if image is not None:
            with user_errors():
                core.load_upload(image, self.limits)

    def preview(self, prompts: str, template: str, values: str) -> str:
        return core.sweep_preview(prompts, template, values)

    def demo(self) -> tuple:
        """The demo scene: its LR image, prompts, scale, steps, model and solver (as ``textsr demo``)."""
        with user_errors():
            d = core.demo_scene()
            if d["model"] not in self.pool.names:
                raise core.UsageError(f"the demo scene needs the model {d['model']!r}, which this app does not offer")
        return (present.to_uint8(d["image"]), core.prompts_text(d["prompts"]), int(d["scale"]),
                int(d.get("steps") or 0), d["model"], d.get("solver", "ddnm+"))

    def run(self, image, prompts, template, values, model, solver, scale, samples, seed, randomize, steps,
            operator, preset=NO_PRESET, particles=0, memory=(), *operator_values, request: gr.Request = None,
            progress=gr.Progress()) -> tuple:  # noqa: B008 - gradio's way to ask for progress
        """``operator_values``: the registry's operator parameters in ``operator_params()`` order (the
        chosen operator's are used).  ``request``: gradio's; its session is the client at the gate, and a
        failure is kept for ``last_error`` under it."""
        t0 = time.perf_counter()
        with user_errors(self.errors, getattr(request, "session_hash", None)):
            if image is None:
                raise core.UsageError("upload a low-resolution image first (or press \"Use the demo scene\")")
            lr, notes = core.load_upload(image, self.limits)
            used_seed = core.choose_seed(seed, bool(randomize))
            op = None if operator in (None, "", DEFAULT) else str(operator)
            req, more = core.page_request(
                lr, prompts or "", template=template, values=values, model=str(model), solver=str(solver),
                particles=_int(particles, "particles") if particles else None, scale=_int(scale, "scale"),
                samples=_int(samples, "samples"), seed=used_seed, steps=_int(steps, "steps") or None, operator=op,
                operator_options=operator_options(op, operator_values),
                preset=None if preset in (None, "", NO_PRESET) else str(preset),
                **{k: True for k in (memory or ())})
            progress(0.0, desc=f"loading {req.model}")

            def on_step(p):
                progress(p.fraction, desc=core.progress_text(p))

            result = core.run_request(req, self.pool, self.limits, callback=on_step, notes=[*notes, *more],
                                      gate=self.gate, client=client_of(request))
            progress(1.0, desc="writing the download")
            archive = self.workdir.zip_result(result)
            seconds = time.perf_counter() - t0
            cmp = present.compare(result, 0)
        log.info("explored %d prompt(s) x %d sample(s) in %.2f s", len(result.prompts), req.samples, seconds)
        return (present.gallery_items(result), present.std_items(result), present.baseline_items(result),
                present.summary_markdown(result, used_seed, seconds), str(archive), used_seed, result, *cmp)

    def last_error(self, request: gr.Request = None) -> str:
        """The failed run's message for the summary panel, line breaks kept: it stays on the page when the
        pop-up is closed."""
        title, message = self.errors.pop(getattr(request, "session_hash", None), ("Error", "the run failed"))
        return f"**⚠ {core.md_text(title)}**\n\n" + core.md_lines(message)

    def layout(self, result) -> tuple[gr.Gallery, gr.Gallery]:
        """One gallery row per prompt (as many columns as samples); the std maps' colour scale."""
        if result is None or not result.prompts:
            return gr.Gallery(), gr.Gallery()
        k, n = len(result.prompts[0].seeds), len(result.prompts)
        return (gr.Gallery(columns=min(k, 8)),
                gr.Gallery(columns=min(n, 4), label=f"{STD_LABEL}, 0–{present.std_scale(result):.2f}"))

    def select(self, result, evt: gr.SelectData) -> tuple:
        with user_errors():
            if result is None:
                raise core.UsageError("run an exploration first")
            return present.compare(result, evt.index)


def client_of(request: gr.Request | None) -> str:
    """Who asks, for the gate: gradio's session (a browser tab, an API client); a direct call (no request:
    tests, embedding applications) is its thread."""
    return getattr(request, "session_hash", None) or f"thread-{threading.get_ident()}"


def operator_params() -> list[tuple[str, Any]]:
    """Every registered operator parameter as (operator name, ``OperatorParam``): one page field each."""
    from ..operator_registry import OPERATORS

    return [(name, p) for name, e in OPERATORS.items() for p in e.params]


def operator_options(operator: str | None, values: Sequence[Any]) -> dict:
    """The chosen operator's parameters from the page's parameter fields (``operator_params`` order)."""
    return {p.name: float(v) for (name, p), v in zip(operator_params(), values) if name == operator and v is not None}


def _int(v: Any, what: str) -> int:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise core.UsageError(f"{what} must be a whole number, got {v!r}") from None
    if not f.is_integer():
        raise core.UsageError(f"{what} must be a whole number, got {v!r}")
    return int(f)


def build_app(concurrency: int = 1, max_upload_pixels: int = core.Limits.max_upload_pixels,
              model_choices: Sequence[str] | Mapping[str, Any] | None = None, *,
              limits: core.Limits | None = None, max_queue: int = 64) -> gr.Blocks:
    """The page as a ``gr.Blocks`` (not launched). ``model_choices``: registry names to offer (default:
    all), or a mapping name -> loaded Backend / factory. The handlers are ``app.textsr_handlers``."""
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ValueError(f"concurrency must be a positive integer, got {concurrency!r}")
    limits = limits or core.Limits(max_upload_pixels=max_upload_pixels)
    pool = core.ModelPool(model_choices)
    from gradio.utils import get_upload_folder

    workdir = present.Workdir(cache_root=get_upload_folder())
    atexit.register(workdir.close)
    gate = FairGate(concurrency, max_waiting=WAITING)
    h = Handlers(pool, limits, workdir, gate)
    from ..solvers import solver_names

    with private_cache(workdir), gr.Blocks(title=TITLE, analytics_enabled=False, delete_cache=(1800, 3600)) as app:
        gr.Markdown(INTRO)
        state = gr.State(None)
        with gr.Row(equal_height=False):
            with gr.Column(scale=2, min_width=320):
                image = gr.Image(label="Low-resolution input", type="filepath", image_mode=None, format="png",
                                 sources=["upload", "clipboard"], height=220, elem_id="lr-input",
                                 elem_classes=["pixelated"])
                with gr.Row():
                    demo_btn = gr.Button("Use the demo scene", size="sm", variant="secondary", elem_id="demo-button")
                info = gr.Markdown(elem_id="input-info", latex_delimiters=[])
                prompts = gr.Textbox(label="Prompts (one per line)", lines=3, max_lines=10, elem_id="prompts",
                                     max_length=limits.max_prompts * (MAX_PROMPT_CHARS + 1),
                                     placeholder=f"a red circle\na crimson star\n{NO_PROMPT}",
                                     info=f"A line \"{NO_PROMPT}\" adds the unconditional row.")
                with gr.Accordion("Prompt sweep: a template with one {slot} and values", open=False):
                    template = gr.Textbox(label="Template", placeholder="a {shape} on blue", elem_id="template",
                                          max_length=MAX_PROMPT_CHARS)
                    values = gr.Textbox(label="Values (comma-separated)", placeholder="circle, star, ring",
                                        elem_id="values", max_length=limits.max_prompts * (MAX_PROMPT_CHARS + 1))
                preview = gr.Markdown(core.sweep_preview("", "", ""), elem_id="prompt-preview", latex_delimiters=[])
                with gr.Row():
                    model = gr.Dropdown(pool.choices(), value=pool.default, label="Model", elem_id="model", scale=3)
                    solver = gr.Dropdown(solver_names(), value="ddnm+", label="Solver", elem_id="solver", scale=2,
                                         min_width=100)
                with gr.Row():
                    scale = gr.Dropdown(SCALES, value=8, label="Scale (×)", elem_id="scale")
                    samples = gr.Slider(1, limits.max_samples, value=min(4, limits.max_samples), step=1,
                                        label="Samples per prompt", elem_id="n-samples")
                with gr.Row():
                    seed = gr.Number(0, precision=0, minimum=0, label="Seed", info="sample k uses seed + k",
                                     elem_id="seed")
                    randomize = gr.Checkbox(False, label="Random seed", elem_id="random-seed")
                with gr.Accordion("Advanced", open=False):
                    steps = gr.Number(0, precision=0, minimum=0, maximum=limits.max_steps,
                                      label="Steps per stage (0 = the model's default)", elem_id="steps")
                    operator = gr.Dropdown([DEFAULT] + operator_names(), value=DEFAULT,
                                           label="Downsampling operator A", info="default: the preset's, else avgpool",
                                           elem_id="operator")
                    op_fields = [gr.Number(p.default, label=f"{p.name} ({name} operator)", info=p.help,
                                           minimum=p.lo, maximum=p.hi, elem_id=f"operator-{name}-{p.name}")
                                 for name, p in operator_params()]
                    preset = gr.Dropdown([NO_PRESET] + preset_names(), value=NO_PRESET, label="Preset",
                                         info="paper: the paper's DeepFloyd IF setting (DeepFloyd IF models only)",
                                         elem_id="preset")
                    particles = gr.Number(0, precision=0, minimum=0, maximum=limits.max_particles,
                                          label="Particles per sample (0 = off)", elem_id="particles",
                                          info="> 0: the particle solver (tds), and how plausible each prompt is "
                                               "given the input, P(prompt | image), next to its samples")
                    memory = gr.CheckboxGroup(list(MEMORY_OPTIONS), value=[], label="Memory options (GPU)",
                                              info="applied when the model loads (the README's troubleshooting)",
                                              elem_id="memory")
                run_btn = gr.Button("Explore", variant="primary", elem_id="run-button")
            with gr.Column(scale=5, min_width=480):
                summary = gr.Markdown(elem_id="summary", latex_delimiters=[])
                gallery = gr.Gallery(label="Samples (one row per prompt; caption: LR-PSNR and text score)",
                                     columns=4, format="png", height="auto", object_fit="contain",
                                     elem_id="sample-gallery", elem_classes=["pixelated", "captioned"],
                                     interactive=False)
                with gr.Row(equal_height=False):
                    std = gr.Gallery(label=STD_LABEL, columns=4, format="png", scale=3,
                                     height="auto", elem_id="std-gallery", elem_classes=["pixelated", "captioned"],
                                     interactive=False)
                    baselines = gr.Gallery(label="Baselines", columns=2, format="png", height="auto", scale=2,
                                           elem_id="baseline-gallery", elem_classes=["pixelated", "captioned"],
                                           interactive=False)
                gr.Markdown("### Consistency check of the selected sample")
                with gr.Row():
                    cmp_in = gr.Image(label="input y", format="png", height=180, interactive=False,
                                      elem_classes=["pixelated"], elem_id="cmp-input")
                    cmp_down = gr.Image(label="A(sample)", format="png", height=180, interactive=False,
                                        elem_classes=["pixelated"], elem_id="cmp-down")
                    cmp_diff = gr.Image(label="|A(sample) − y|", format="png", height=180, interactive=False,
                                        elem_classes=["pixelated"], elem_id="cmp-diff")
                cmp_text = gr.Markdown(elem_id="cmp-text", latex_delimiters=[])
                download = gr.File(label="Download the result folder (zip: the CLI's --out)", interactive=False,
                                   elem_id="download")

        image.upload(h.check_upload, image, None, api_visibility="private", queue=False)
        for trigger in (image.change, scale.change):
            trigger(h.input_info, [image, scale], info, api_visibility="private", queue=False,
                    show_progress="hidden")
        for box in (prompts, template, values):
            box.change(h.preview, [prompts, template, values], preview, api_visibility="private", queue=False,
                       show_progress="hidden")
        demo_btn.click(h.demo, None, [image, prompts, scale, steps, model, solver], api_visibility="private",
                       queue=False)

        def explore(request: gr.Request, progress=gr.Progress(), *values):  # noqa: B008
            """``h.run`` for gradio, which hands over its request and progress only to parameters before ``*``."""
            return h.run(*values, request=request, progress=progress)

        ran = run_btn.click(explore, [image, prompts, template, values, model, solver, scale, samples, seed, randomize,
                                      steps, operator, preset, particles, memory, *op_fields],
                            [gallery, std, baselines, summary, download, seed, state, cmp_in, cmp_down, cmp_diff,
                             cmp_text], api_name="explore", concurrency_id="explore", show_progress_on=[gallery],
                            concurrency_limit=concurrency + WAITING)  # the gate (FairGate) decides who runs
        ran.success(h.layout, state, [gallery, std], api_visibility="private", queue=False, show_progress="hidden")
        ran.failure(h.last_error, None, summary, api_visibility="private", queue=False, show_progress="hidden")
        gallery.select(h.select, state, [cmp_in, cmp_down, cmp_diff, cmp_text], api_visibility="private",
                       queue=False)
    app.queue(default_concurrency_limit=concurrency, max_size=max_queue)
    app.textsr_handlers = h
    app.textsr_workdir = workdir
    return app


def launch(host: str = "127.0.0.1", port: int = 7860, concurrency: int = 1, *, block: bool = True,
           max_file_size: str | int = "20mb", quiet: bool = False, **build_kwargs) -> gr.Blocks:
    """Build and serve the app on ``host:port``; ``block=False`` returns the running app (``.close()``)."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    app = build_app(concurrency=concurrency, **build_kwargs)
    try:
        with private_cache(app.textsr_workdir):
            app.launch(server_name=host, server_port=port, prevent_thread_lock=True, share=False, show_error=True,
                       max_file_size=max_file_size, quiet=True, theme=theme(), css=CSS, ssr_mode=False, pwa=False,
                       mcp_server=False, enable_monitoring=False, footer_links=[])
    except OSError as e:
        app.textsr_workdir.close()
        why = "the port is in use" if "empty port" in str(e) else str(e)
        raise core.UsageError(f"cannot serve on {host}:{port}: {why}; choose another port (--port)") from None
    if not quiet:
        print(f"textsr app: open {app.local_url} in a browser ({concurrency} request(s) at a time; Ctrl+C stops it)",
              flush=True)
    if block:
        _stop_on_sigterm()
        try:
            app.block_thread()
        finally:
            app.textsr_workdir.close()
    return app


def _stop_on_sigterm() -> None:
    """``kill`` stops the app like Ctrl+C does (gradio closes the server, the temporary files go)."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        def stop(signum, frame):
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, stop)
