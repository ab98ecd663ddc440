"""``textsr`` command line: thin: parse, call ``textsr.explore``, present.

Heavy libraries (torch, diffusers) are imported inside commands so ``--help`` stays fast.
Exit codes: 0 success, 2 usage/input errors, 1 runtime failures, 130 interrupted.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import click

from . import validate
from .presets import preset_names  # torch-free
from .solver_registry import solver_names  # torch-free: the names only

SOLVER_CHOICES = solver_names()
OPERATOR_CHOICES = ["avgpool", "bicubic", "bicubic-reflect"]  # textsr.operators.OPERATORS (no torch import for --help)
PRESET_CHOICES = preset_names()


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


class _ProgressBar:
    """tqdm bar per (prompt, stage) with ETA; silent when quiet."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.bar: Any = None  # a tqdm bar
        self.key: tuple[int, str] | None = None  # (prompt index, stage name)

    def __call__(self, p) -> None:
        if self.quiet:
            return
        from tqdm import tqdm

        key = (p.prompt_index, p.stage)
        if key != self.key:
            self.close()
            label = p.prompt or "(no prompt)"
            stage = f" stage {p.stage}" if p.stages > 1 else ""
            self.bar = tqdm(total=p.total, desc=f"[{p.prompt_index + 1}/{p.prompts}] {label[:40]}{stage}",
                            unit="step", leave=False, file=sys.stderr,
                            disable=None)  # None: no bar when stderr is not a terminal
            self.key = key
        self.bar.n = p.step
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


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


def _run_and_report(kwargs: dict, out: Path, quiet: bool, overwrite: bool = False) -> None:
    from .api import explore
    from .errors import TextSRError
    from .outdir import check_output_folder

    bar = _ProgressBar(quiet)
    t0 = time.perf_counter()
    try:
        check_output_folder(out, overwrite=overwrite)  # before any work: a bad folder costs nothing
        result = explore(callback=bar, **kwargs)
        files = result.save(out, overwrite=overwrite)
    except TextSRError as e:
        bar.close()
        click.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
    except ValueError as e:  # configuration errors from the engine carry actionable messages
        bar.close()
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        bar.close()
        click.echo("interrupted; the output folder has no new results.json (written last), so it holds no finished "
                   "run from this command", err=True)
        sys.exit(130)
    except torch_oom_types() as e:  # pragma: no cover - needs a GPU
        bar.close()
        click.echo(f"error: out of memory ({e}); try --samples smaller, --batch-size 1 or --dtype float16", err=True)
        sys.exit(1)
    bar.close()
    for n in result.notes:
        click.echo(f"note: {n}")
    for line in result.summary():
        click.echo(line)
    if result.reference_metrics:
        import numpy as np

        ps = [v for row in result.reference_metrics["psnr"] for v in row]
        click.echo(f"vs. the original: PSNR mean {np.mean(ps):.2f} dB")
    index = files.get("index.html", out / "index.html")
    click.echo(f"done in {time.perf_counter() - t0:.1f} s; results in {out}/ (open {index})")


def torch_oom_types() -> tuple:
    try:
        import torch

        return (torch.cuda.OutOfMemoryError,)
    except Exception:  # pragma: no cover
        return ()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="textsr")
def main() -> None:
    """Zero-shot, text-guided, explorable image super-resolution.

    Every sample downsamples back to the input; the prompts choose which of the many consistent
    high-resolution images you get. Start with `textsr demo`.
    """


def _common_options(f):
    opts = [
        click.option("--prompt", "-p", "prompts", multiple=True, help="Text prompt (repeat for several)."),
        click.option("--template", help="Prompt template with one slot, e.g. 'a {shape} on blue'."),
        click.option("--values", help="Comma-separated values for the template slot, e.g. 'circle,star,ring'."),
        click.option("--model", "-m", default="builtin-shapes", show_default=True,
                     help="Model name (see `textsr models`), local folder or JSON model spec."),
        click.option("--solver", "-s", type=click.Choice(SOLVER_CHOICES, case_sensitive=False), default=None,
                     help="Solver [default: ddnm+; tds with --particles]."),
        click.option("--particles", type=int, help="Particle solver (tds) with N particles per sample: sample "
                     "frequencies consistent as N grows, and the evidence P(prompt | y) per prompt (unreliable "
                     "when the ESS note appears)."),
        click.option("--prior", "prompt_prior", help="Prior probabilities of the prompts for the evidence, "
                     "comma-separated (default: uniform)."),
        click.option("--samples", "-n", type=int, default=4, show_default=True, help="Samples per prompt (1-256).",
                     callback=_checked(lambda v: validate.samples(v))),
        click.option("--seed", type=int, default=0, show_default=True,
                     help=f"0 to {2**32 - 1}; sample k uses seed+k.", callback=_checked(lambda v: validate.seed(v))),
        click.option("--out", "-o", type=click.Path(file_okay=False, path_type=Path), default=Path("textsr-output"),
                     show_default=True, help="Output folder (refused if it holds another run, unless --overwrite)."),
        click.option("--overwrite", is_flag=True,
                     help="Replace the run already in the output folder (only textsr's own files are removed)."),
        click.option("--operator", type=click.Choice(OPERATOR_CHOICES),
                     help="Downsampling model A: avgpool (block mean; the default), bicubic (PIL / torch "
                          "antialias), bicubic-reflect (MATLAB imresize, SR benchmarks' LR images; the paper "
                          "preset's)."),
        click.option("--preset", type=click.Choice(PRESET_CHOICES),
                     help="Named settings: paper = the text-guided SR paper's DeepFloyd IF setting (see README); "
                          "explicit options override it."),
        click.option("--sigma-y", type=float, default=0.0, show_default=True,
                     callback=_checked(lambda v: validate.sigma_y(v)),
                     help="Noise std of the LR image in [-1,1] units (half the [0,1] value), 0 to 2."),
        click.option("--steps", type=int, help="Denoising steps per stage (default: the solver's/model's).",
                     callback=_checked(lambda v: validate.steps(v))),
        click.option("--eta", type=float, help="Step stochasticity."),
        click.option("--zeta", type=float, help="DPS step size."),
        click.option("--travel", nargs=2, type=int, metavar="L R", help="Time-travel: jump back L steps, R passes."),
        click.option("--solver-option", "solver_opts", multiple=True, metavar="KEY=VALUE",
                     help="Any solver setting, e.g. mode=simplified."),
        click.option("--option", "model_opts", multiple=True, metavar="KEY=VALUE",
                     help="Model option, e.g. guidance_scale=7 (see README)."),
        click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1 ..."),
        click.option("--dtype", default="auto", show_default=True, help="auto (fp16 on CUDA), float32, float16 ..."),
        click.option("--tile", default=None, metavar="auto|N",
                     help="Any output size: run the model on overlapping windows of its own size where the image "
                          "exceeds it (auto) or of N px; the projection, guidance and particle weights still act "
                          "on the whole image [default: off]."),
        click.option("--tile-overlap", type=int, metavar="PX", help="Window overlap in pixels [default: a quarter "
                     "of the window]."),
        click.option("--tile-option", "tile_opts", multiple=True, metavar="KEY=VALUE",
                     help="shift=true|false (random grid shift per step), batch=N (windows per call), "
                          "text=F (text guidance inside windows, a fraction of the whole image's)."),
        click.option("--batch-size", type=int, help="Samples per forward batch (lower to save memory).",
                     callback=_checked(lambda v: validate.batch_size(v))),
        click.option("--max-pixels", type=int, default=4_000_000, show_default=True, help="Largest input accepted.",
                     callback=_checked(lambda v: validate.max_pixels(v))),
        click.option("--quiet", "-q", is_flag=True, help="No progress bar."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _parse_prior(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers, got {text!r}", param_hint="--prior") from None


def _build_kwargs(image, scale, prompts, template, values, model, solver, samples, seed, operator, preset, sigma_y,
                  steps, eta, zeta, travel, solver_opts, model_opts, device, dtype, batch_size, max_pixels,
                  particles=None, prompt_prior=None, tile=None, tile_overlap=None, tile_opts=()) -> dict:
    sopts = parse_kv(solver_opts, "--solver-option")
    for k, v in (("eta", eta), ("zeta", zeta)):
        if v is not None:
            sopts[k] = v
    if travel:
        sopts["travel_length"], sopts["travel_repeat"] = travel
    return dict(image=image, prompts=list(prompts), template=template, values=values, scale=scale, model=model,
                solver=solver, samples=samples, seed=seed, operator=operator, preset=preset, sigma_y=sigma_y,
                steps=steps,
                solver_options=sopts, model_options=parse_kv(model_opts, "--option"), device=device, dtype=dtype,
                batch_size=batch_size, max_pixels=max_pixels, particles=particles,
                prompt_prior=_parse_prior(prompt_prior), tile=tile, tile_overlap=tile_overlap,
                tile_options=parse_kv(tile_opts, "--tile-option"))


@main.command()
@click.argument("image", type=click.Path(path_type=Path))
@click.option("--scale", "-x", type=int, required=True, help="Upscaling factor (2-32).",
              callback=_checked(lambda v: validate.scale(v)))
@click.option("--simulate", is_flag=True,
              help="IMAGE is a high-res original: downsample it first and score against it.")
@_common_options
def upscale(image, scale, simulate, out, overwrite, quiet, **kw):
    """Sample high-resolution images of IMAGE for each prompt."""
    kwargs = _build_kwargs(image, scale, **kw)
    kwargs["simulate"] = simulate
    _run_and_report(kwargs, out, quiet, overwrite)


@main.command("rank")
@click.argument("image", type=click.Path(path_type=Path))
@click.option("--scale", "-x", type=int, required=True, help="Upscaling factor (2-32).")
@click.option("--prompt", "-p", "prompts", multiple=True, required=True, help="A description (give two or more).")
@click.option("--particles", type=int, default=16, show_default=True, help="Particles per sample.")
@click.option("--samples", "-n", type=int, default=4, show_default=True, help="Independent particle runs per prompt.")
@click.option("--steps", type=int, help="Denoising steps per stage (default: the model's).")
@click.option("--prior", "prompt_prior", help="Prior probabilities of the prompts, comma-separated (default: uniform).")
@click.option("--model", "-m", default="builtin-shapes", show_default=True, help="Model name, folder or JSON spec.")
@click.option("--option", "model_opts", multiple=True, metavar="KEY=VALUE", help="Model option (guidance is set to 1).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--operator", type=click.Choice(["avgpool", "bicubic"]), default="avgpool", show_default=True)
@click.option("--sigma-y", type=float, default=0.0, show_default=True, help="LR noise std in [-1,1] units.")
@click.option("--device", default="auto", show_default=True)
@click.option("--dtype", default="auto", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of {prompt, probability, log_z}.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def rank_cmd(image, scale, prompts, particles, samples, steps, prompt_prior, model, model_opts, seed, operator, sigma_y,
             device, dtype, as_json, quiet):
    """Rank the prompts by P(prompt | IMAGE): which description explains the low-resolution image, and how
    likely each is, in the model's belief at guidance scale 1, among the prompts given."""
    from .api import rank
    from .errors import TextSRError

    bar = _ProgressBar(quiet or as_json)
    try:
        r = rank(image, list(prompts), scale=scale, model=model, particles=particles, samples=samples, seed=seed,
                 prompt_prior=_parse_prior(prompt_prior), model_options=parse_kv(model_opts, "--option"), steps=steps,
                 operator=operator, sigma_y=sigma_y, device=device, dtype=dtype, callback=bar)
    except (TextSRError, ValueError) as e:
        bar.close()
        click.echo(f"error: {e}", err=True)
        sys.exit(getattr(e, "exit_code", 2))
    bar.close()
    if as_json:
        click.echo(json.dumps(r.to_json(), indent=2))
        return
    neutral = ", ".join(f"{k}={v}" for k, v in r.neutral_options.items()) or "no guidance options"
    click.echo(f"P(prompt | image) among the {len(r.entries)} prompts given (uniform prior unless --prior), the model "
               f"at guidance scale 1 ({neutral}); {particles} particles x {samples} runs per prompt")
    width = 30
    for entry in r.entries:
        p = entry["probability"]
        bar_s = "#" * int(round((p or 0.0) * width))
        lz = "n/a" if entry["log_z"] is None or entry["log_z"] != entry["log_z"] else f"{entry['log_z']:.1f}"
        click.echo(f"{'n/a' if p is None else f'{p:6.3f}'} |{bar_s:<{width}}| {entry['prompt'] or '(no prompt)'}   "
                   f"log p(y|prompt) {lz} (spread {entry['spread']:.1f}, ESS min {entry['ess_min']:.2f})")
    for n in r.exploration.notes:
        click.echo(f"note: {n}")


@main.command()
@click.option("--out", "-o", type=click.Path(file_okay=False, path_type=Path), default=Path("demo-output"),
              show_default=True, help="Output folder (refused if it holds another run, unless --overwrite).")
@click.option("--overwrite", is_flag=True,
              help="Replace the run already in the output folder (only textsr's own files are removed).")
@click.option("--samples", "-n", type=int, default=6, show_default=True,
              callback=_checked(lambda v: validate.samples(v)))
@click.option("--seed", type=int, default=0, show_default=True, callback=_checked(lambda v: validate.seed(v)))
@click.option("--quiet", "-q", is_flag=True)
def demo(out, overwrite, samples, seed, quiet):
    """Built-in offline demo: a rendered scene, downsampled 8x, explored with 4 prompts."""
    from .demo import demo_kwargs

    kwargs = demo_kwargs(out, samples=samples, seed=seed)
    click.echo(f"textsr demo: a 64x64 scene downsampled 8x to {kwargs['image'].shape[1]}x{kwargs['image'].shape[0]}; "
               f"{len(kwargs['prompts'])} prompts x {samples} samples with DDNM+ on the built-in shapes model")
    _run_and_report(kwargs, out, quiet, overwrite)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def models(as_json):
    """Known models: hub ids, GPU memory, whether the weights are cached locally."""
    from .model_registry import model_table

    rows = model_table()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        cached = r.get("cached")
        mark = "builtin" if cached == "builtin" else ("cached" if cached else "not cached")
        vram = r.get("vram_gb")
        approx = "~" if "estimate" in str(r.get("notes", "")).lower() else ""
        vram_s = f"{approx}{vram:g} GB" if isinstance(vram, (int, float)) else (vram or "-")
        click.echo(f"{r['name']:<18} {r.get('backend', ''):<14} VRAM {vram_s:<10} [{mark}]  {r.get('description', '')}")
        for hid in r.get("hub_ids", []):
            click.echo(f"{'':<20}{hid}")


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
def batch(manifest, use_ray, address, gpus_per_job, cpus_per_job, workers, force):
    """Run every job of a JSON/JSONL MANIFEST (see README, "Running on a cluster").

    Resumes: a job whose folder holds results.json is skipped; a half-finished one is rerun. Each model
    is loaded once per worker and reused across jobs."""
    from .batch import load_manifest, run_batch
    from .errors import TextSRError

    try:
        jobs = load_manifest(manifest)
        results = run_batch(jobs, use_ray=use_ray, address=address, gpus_per_job=gpus_per_job,
                            cpus_per_job=cpus_per_job, workers=workers, force=force)
    except TextSRError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
    for r in results:
        click.echo(f"{r.status:<8} {r.out}  ({r.seconds:.1f} s)" + (f"\n         {r.error}" if r.error else ""))
    failed = sum(r.status == "failed" for r in results)
    click.echo(f"{len(results) - failed} of {len(results)} jobs done or skipped; {failed} failed")
    sys.exit(1 if failed else 0)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=7860, type=click.IntRange(1, 65535), show_default=True)
@click.option("--concurrency", default=1, type=click.IntRange(1, 64), show_default=True,
              help="Requests run at once (1-64).")
@click.option("--share", is_flag=True, hidden=True)
def app(host, port, concurrency, share):
    """Open the web app for interactive exploration."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        from .app import launch
    except ImportError as e:
        click.echo(f"error: the web app needs gradio ({e}); install with: pip install 'textsr[app]'", err=True)
        sys.exit(2)
    if host not in ("127.0.0.1", "localhost", "::1"):
        click.echo(f"warning: serving on {host}: anyone who can reach this address can use the app", err=True)
    from .errors import TextSRError

    try:
        launch(host=host, port=port, concurrency=concurrency)
    except TextSRError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)


if __name__ == "__main__":  # pragma: no cover
    main()
