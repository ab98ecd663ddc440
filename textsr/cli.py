"""``textsr`` command line: thin: parse, call ``textsr.explore``, present.

Heavy libraries (torch, diffusers) are imported inside commands so ``--help`` stays fast.
Exit codes: 0 success, 2 usage/input errors, 1 runtime failures, 130 interrupted.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from dataclasses import MISSING
from pathlib import Path
from typing import Any

import click

from . import validate
from .console import Progress
from .display import prompt_label, spread, terminal


def echo(message: Any = "", err: bool = False) -> None:
    """Print a line: every control character escaped (``textsr.display.terminal``) but the message's own
    line breaks, so nothing user-given reaching the terminal can set its title, clear it or move the
    cursor; user-given values inside messages are escaped where they are put in (line breaks too)."""
    click.echo(terminal(message, keep_newlines=True), err=err)


def parse_kv(pairs, what: str) -> dict:
    """``KEY=VALUE`` pairs as a dict: the value parsed as JSON where it is JSON, else the string; dashes in
    keys become underscores.  Also used by the benchmarks' ``--tds-option``."""
    out = {}
    for p in pairs:
        if "=" not in p:
            raise click.BadParameter(f"expected KEY=VALUE, got {p!r}", param_hint=what)
        k, v = p.split("=", 1)
        try:
            out[k.strip().replace("-", "_")] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip().replace("-", "_")] = v
    return out


THREADS = click.option("--threads", type=click.IntRange(min=1), help="CPU threads for torch [default: the CPUs not "
                       "busy now: this machine's CPUs less its load average, at least 1; or OMP_NUM_THREADS].")
VERBOSE = click.option("--verbose", is_flag=True, help="Show the libraries' warnings and loading bars as they come "
                       "(default: one line at the end).")
QUIET = click.option("--quiet", "-q", is_flag=True, help="No progress (a bar on a terminal, a line every 10 s in a "
                     "log).")


def run_options(f):
    """``--threads``, ``--verbose`` and ``--quiet``: how a command that samples uses the CPU and what it shows."""
    return THREADS(VERBOSE(QUIET(f)))


@contextlib.contextmanager
def working(threads: int | None, verbose: bool):
    """A command's work: torch's threads set, the libraries quiet; their warnings summarised at the end."""
    from .console import quiet_libraries, set_threads, warning_summary

    with quiet_libraries(verbose) as caught:
        set_threads(threads)
        try:
            yield
        finally:
            line = warning_summary(caught)
            if line:
                echo(f"note: {line}", err=True)


def _checked(check):
    """A click callback running one of ``textsr.validate``'s checks (None passes: the default applies)."""

    def callback(ctx, param, value):
        from .errors import UsageError

        if value is None:
            return None
        try:
            return check(value)
        except UsageError as e:
            raise click.BadParameter(str(e)) from None

    return callback


def _out_folder(ctx, param, value) -> Path:
    """``--out`` as ``textsr.outdir.folder_arg`` takes it: an empty name (which click would read as the
    current folder) or an existing file is a usage error before any work."""
    from .errors import TextSRError
    from .outdir import folder_arg

    try:
        return folder_arg(value)
    except TextSRError as e:
        raise click.BadParameter(terminal(e)) from None


def _run_and_report(req: Any, out: Path, quiet: bool, overwrite: bool = False, caution: bool = True) -> None:
    """Run ``req`` into ``out`` and print what came of it: the model's caution first (the built-in toy
    world says what it is; ``caution=False``: the demo, whose header says it), notes, one line per prompt."""
    from .api import explore_request
    from .errors import TextSRError
    from .outdir import reserve

    bar = Progress(quiet)
    t0 = time.perf_counter()
    try:
        with reserve(out, overwrite=overwrite):  # before any work: a bad or busy folder costs nothing
            result = explore_request(req, callback=bar)
            files = result.save(out, overwrite=overwrite)
    except TextSRError as e:
        bar.close()
        echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
    except ValueError as e:  # configuration errors from the engine carry actionable messages
        bar.close()
        echo(f"error: {e}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        bar.close()
        echo("interrupted; the output folder has no new results.json (written last), so it holds no finished "
                   "run from this command", err=True)
        sys.exit(130)
    bar.close()
    if caution and result.settings.model.get("caution"):
        echo(f"caution: {result.settings.model['caution']}")
    for n in result.notes:
        echo(f"note: {n}")
    for line in result.summary():
        echo(line)
    if result.reference_metrics:
        import numpy as np

        ps = [v for row in result.reference_metrics["psnr"] for v in row]
        echo(f"vs. the original: PSNR mean {np.mean(ps):.2f} dB")
    index = files.get("index.html", out / "index.html")
    echo(f"done in {time.perf_counter() - t0:.1f} s; results in {terminal(out)}/ (open {terminal(index)})")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="textsr")
def main() -> None:
    """Zero-shot, text-guided, explorable image super-resolution.

    Every sample downsamples back to the input; the prompts choose which of the many consistent
    high-resolution images you get. Start with `textsr demo`.
    """


def request_options(command: str):
    """Click options for the ``ExploreRequest`` fields that ``command`` offers (``textsr.request``: the
    one declaration; flags, help and checks come from there).  Values not given stay None, so the
    request's defaults apply."""
    from .request import request_args

    def decorate(f):
        for fld in reversed(request_args(command)):
            a = fld.metadata["arg"]
            if not a.flags:
                continue
            default = a.defaults.get(command, fld.default if fld.default is not MISSING else None)
            shown = default if default not in (None, False, (), {}) else None
            help_text = a.help + (f" [default: {shown}]" if shown is not None else "")
            kw: dict[str, Any] = {"help": help_text, "metavar": a.metavar}
            if a.kind == "flag":
                kw.update(is_flag=True, default=False)
            elif a.kind in ("multiple", "kv"):
                kw.update(multiple=True)
            elif a.kind == "pair":
                kw.update(nargs=2, type=int, default=None)
            elif a.choices is not None:
                kw.update(type=click.Choice(a.choices(), case_sensitive=False), default=default)
            else:
                kw.update(type=a.type, default=default, required=fld.name == "scale")
            f = click.option(*a.flags, fld.name, **kw)(f)
        return f

    return decorate


def build_request(command: str, image: Any, values: dict) -> Any:
    """The ``ExploreRequest`` from a command's parsed options (the request's fields only; ``values``
    keeps the command's own options)."""
    from .request import ExploreRequest, request_args

    args: dict[str, Any] = {"image": image}
    for fld in request_args(command):
        if fld.name not in values:
            continue
        v, kind = values.pop(fld.name), fld.metadata["arg"].kind
        if kind == "kv":
            v = parse_kv(v, fld.metadata["arg"].flags[0]) or None
        elif kind == "multiple":
            v = tuple(v)
        elif kind == "csv" and v is not None:
            v = _parse_numbers(v, fld.metadata["arg"].flags[0])
        if v is not None and not (kind == "flag" and v is False):
            args[fld.name] = v
    return ExploreRequest.build(**args)


def _parse_numbers(text: str, flag: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers, got {text!r}", param_hint=flag) from None


@main.command()
@click.argument("image", type=click.Path(path_type=Path))
@request_options("upscale")
@click.option("--out", "-o", default="textsr-output", show_default=True, callback=_out_folder,
              help="Output folder (refused if it holds another run, unless --overwrite).")
@click.option("--overwrite", is_flag=True,
              help="Replace the run already in the output folder (only textsr's own files are removed).")
@run_options
def upscale(image, out, overwrite, quiet, threads, verbose, **kw):
    """Sample high-resolution images of IMAGE for each prompt.

    IMAGE may be a folder: every image in it (PNG, JPEG, WebP, BMP, TIFF, GIF; not its sub-folders) runs
    with these options into OUT/<image name>; images already done there are skipped (--overwrite reruns
    them), failed images are listed at the end, and the exit code is 1 if any failed."""
    req = _request_or_exit("upscale", image, kw)
    with working(threads, verbose):
        if image.is_dir():
            _run_folder(req, image, out, quiet, overwrite)
        else:
            _run_and_report(req, out, quiet, overwrite)


def _run_folder(req: Any, folder: Path, out: Path, quiet: bool, overwrite: bool) -> None:
    from .errors import TextSRError
    from .folder import run_folder
    from .model_registry import MODELS

    named = MODELS.get(req.model) if isinstance(req.model, str) else None
    if named is not None and named.caution:
        echo(f"caution: {named.caution}")
    bar = Progress(quiet)
    t0 = time.perf_counter()

    def on_image(i: int, n: int, path: Path, result: Any) -> None:
        if result is None:
            return
        bar.close()
        what = {"done": f"done in {result.seconds:.1f} s", "skipped": "skipped (already done; --overwrite reruns it)",
                "failed": "failed"}[result.status]
        echo(f"[{i + 1}/{n}] {terminal(path.name)}: {what} -> {terminal(result.out)}")

    try:
        run = run_folder(req, folder, out, overwrite=overwrite, on_image=on_image, callback=bar)
    except TextSRError as e:
        bar.close()
        echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        bar.close()
        echo("interrupted; the images done so far are finished runs (results.json written last), the others are "
             "not: run the same command again to go on", err=True)
        sys.exit(130)
    bar.close()
    if run.ignored:
        echo(f"note: not images, not read: {', '.join(terminal(n) for n in run.ignored)}")
    counts = {s: sum(r.status == s for r in run.results) for s in ("done", "skipped", "failed")}
    echo(f"{len(run.images)} images in {time.perf_counter() - t0:.1f} s: {counts['done']} done, {counts['skipped']} "
         f"skipped, {counts['failed']} failed; results in {terminal(out)}/")
    for path, r in run.failed:
        echo(f"failed: {terminal(path.name)}: {r.error}", err=True)
    sys.exit(1 if run.failed else 0)


def _request_or_exit(command: str, image: Any, values: dict) -> Any:
    from .errors import UsageError

    try:
        return build_request(command, image, values)
    except UsageError as e:
        echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)


@main.command("rank")
@click.argument("image", type=click.Path(path_type=Path))
@request_options("rank")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of {prompt, probability, log_z}.")
@run_options
def rank_cmd(image, as_json, quiet, threads, verbose, **kw):
    """Rank the prompts by P(prompt | IMAGE): which description explains the low-resolution image, and how
    likely each is, in the model's belief at guidance scale 1, among the prompts given."""
    from .errors import TextSRError
    from .ranking import rank_request

    req = _request_or_exit("rank", image, kw)
    bar = Progress(quiet or as_json)
    try:
        with working(threads, verbose):
            r = rank_request(req, callback=bar)
    except (TextSRError, ValueError) as e:
        bar.close()
        echo(f"error: {e}", err=True)
        sys.exit(getattr(e, "exit_code", 2))
    bar.close()
    if as_json:
        echo(json.dumps(r.to_json(), indent=2))
        return
    neutral = ", ".join(f"{k}={v}" for k, v in r.neutral_options.items()) or "no guidance options"
    how = ("exact (closed form)" if r.method == "exact" else
           f"estimated by {r.particles} particles x {r.samples} runs per prompt")
    echo(f"P(prompt | image) among the {len(r.entries)} prompts given (uniform prior unless --prior), the model "
         f"at guidance scale 1 ({neutral}); {how}")
    width = 30
    for entry in r.entries:
        p = entry["probability"]
        bar_s = "#" * int(round((p or 0.0) * width))
        lz = "n/a" if entry["log_z"] is None or entry["log_z"] != entry["log_z"] else f"{entry['log_z']:.1f}"
        est = "" if r.method == "exact" else (f" (spread {spread(entry['spread'], r.samples)}, "
                                              f"ESS min {entry['ess_min']:.2f})")
        echo(f"{'n/a' if p is None else f'{p:6.3f}'} |{bar_s:<{width}}| {terminal(prompt_label(entry['prompt']))}   "
             f"log p(y|prompt) {lz}{est}")
    for n in r.notes:
        echo(f"note: {n}")


@main.command()
@click.option("--out", "-o", default="demo-output", show_default=True, callback=_out_folder,
              help="Output folder (refused if it holds another run, unless --overwrite).")
@click.option("--overwrite", is_flag=True,
              help="Replace the run already in the output folder (only textsr's own files are removed).")
@click.option("--samples", "-n", type=int, default=6, show_default=True,
              callback=_checked(lambda v: validate.samples(v)))
@click.option("--seed", type=int, default=0, show_default=True, callback=_checked(lambda v: validate.seed(v)))
@run_options
def demo(out, overwrite, samples, seed, quiet, threads, verbose):
    """Built-in offline demo: a rendered scene, downsampled 8x, explored with 4 prompts."""
    from .demo import demo_kwargs
    from .request import ExploreRequest

    kwargs = demo_kwargs(out, samples=samples, seed=seed)
    echo(f"textsr demo: a 64x64 scene downsampled 8x to {kwargs['image'].shape[1]}x{kwargs['image'].shape[0]}; "
               f"{len(kwargs['prompts'])} prompts x {samples} samples with DDNM+ on the built-in shapes model")
    with working(threads, verbose):
        _run_and_report(ExploreRequest.build(**kwargs), out, quiet, overwrite, caution=False)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def models(as_json):
    """Known models: hub ids, GPU memory, whether the weights are cached locally."""
    from .model_registry import model_table

    rows = model_table()
    if as_json:
        echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        cached = r.get("cached")
        mark = "builtin" if cached == "builtin" else ("cached" if cached else "not cached")
        vram = r.get("vram_gb")
        approx = "~" if "estimate" in str(r.get("notes", "")).lower() else ""
        vram_s = f"{approx}{vram:g} GB" if isinstance(vram, (int, float)) else (vram or "-")
        echo(f"{r['name']:<18} {r.get('backend', ''):<14} VRAM {vram_s:<10} [{mark}]  {r.get('description', '')}")
        for hid in r.get("hub_ids", []):
            echo(f"{'':<20}{hid}")
        if r.get("license"):
            echo(f"{'':<20}licence: {r['license']}")


@main.command()
@click.argument("manifest", type=click.Path(path_type=Path))
@click.option("--ray", "use_ray", is_flag=True, help="Run jobs as Ray tasks (pip install 'textsr[cluster]').")
@click.option("--address", help="Ray cluster address (default: start or join a local one; 'auto' for a cluster).")
@click.option("--gpus-per-job", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="GPUs each Ray worker holds (1: one worker per GPU).")
@click.option("--cpus-per-job", type=click.FloatRange(min=0), default=1.0, show_default=True)
@click.option("--workers", type=click.IntRange(min=1),
              help="Ray workers, each keeping its model loaded (default: as many as the cluster fits).")
@click.option("--force", "--overwrite", "force", is_flag=True,
              help="Re-run jobs whose results.json exists, replacing their runs (only textsr's own files are removed).")
@THREADS
@VERBOSE
def batch(manifest, use_ray, address, gpus_per_job, cpus_per_job, workers, force, threads, verbose):
    """Run every job of a JSON/JSONL MANIFEST (docs/cluster.md).

    Resumes: a job whose folder holds results.json is skipped; a half-finished one is rerun. Each model
    is loaded once per worker and reused across jobs."""
    from .batch import load_manifest, run_batch
    from .errors import TextSRError

    try:
        jobs = load_manifest(manifest)
        with working(threads, verbose):
            results = run_batch(jobs, use_ray=use_ray, address=address, gpus_per_job=gpus_per_job,
                                cpus_per_job=cpus_per_job, workers=workers, force=force)
    except TextSRError as e:
        echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
    for r in results:
        echo(f"{r.status:<8} {terminal(r.out)}  ({r.seconds:.1f} s)" + (f"\n         {r.error}" if r.error else ""))
    failed = sum(r.status == "failed" for r in results)
    echo(f"{len(results) - failed} of {len(results)} jobs done or skipped; {failed} failed")
    sys.exit(1 if failed else 0)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=7860, type=click.IntRange(1, 65535), show_default=True)
@click.option("--concurrency", default=1, type=click.IntRange(1, 64), show_default=True,
              help="Requests run at once (1-64).")
@click.option("--share", is_flag=True, hidden=True)
@THREADS
def app(host, port, concurrency, share, threads):
    """Open the web app for interactive exploration."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        from .app import launch
    except ImportError as e:
        echo(f"error: the web app needs gradio ({e}); install with: pip install 'textsr[app]'", err=True)
        sys.exit(2)
    if host not in ("127.0.0.1", "localhost", "::1"):
        echo(f"warning: serving on {host}: anyone who can reach this address can use the app", err=True)
    from .console import set_threads
    from .errors import TextSRError

    set_threads(threads)
    try:
        launch(host=host, port=port, concurrency=concurrency)
    except TextSRError as e:
        echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)


if __name__ == "__main__":  # pragma: no cover
    main()
