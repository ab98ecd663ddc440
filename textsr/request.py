"""The arguments of one exploration, declared once: ``ExploreRequest``.

Every front end builds this object: ``textsr.explore(image, prompts, **args)`` (the API), the command
line (``upscale`` and ``rank`` options are made from the fields below: flag, help, which command),
batch manifests (a job's fields are these names) and the web app.  Each field carries its check
(``textsr.validate``), run in ``__post_init__``; the checks across fields follow.  Nothing here reads
a file or loads a model: ``textsr.api.check_inputs`` does that (phase 1 of ``explore``).

A new argument is one field here, with its ``arg(...)``; ``textsr.api`` uses it; the CLI, manifests,
app and docs/reference.md follow (``tests/test_request.py`` holds them to this list).  Command-only
fields (``commands={"rank"}``, e.g. a ranking method) are declared here too.

Torch-free: importing it costs nothing (the CLI's ``--help`` reads it).
"""

from __future__ import annotations

import string
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, Field, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from . import validate
from .errors import UsageError

__all__ = ["Arg", "ExploreRequest", "expand_prompts", "request_args"]

BOTH = frozenset({"upscale", "rank"})
UPSCALE = frozenset({"upscale"})
RANK = frozenset({"rank"})
RANK_METHODS = ("auto", "exact", "particles")  # textsr.ranking


@dataclass(frozen=True)
class Arg:
    """How one field is offered: its check, help, command-line flags and the commands that take it.

    kind (how the command line reads it): ``value`` (one value of ``type``), ``flag`` (on/off),
    ``multiple`` (repeatable, a tuple), ``kv`` (repeatable ``KEY=VALUE``, a dict), ``pair`` (two
    integers), ``csv`` (comma-separated numbers).  ``choices``: a zero-argument function giving the
    allowed names.  ``defaults``: another default per command (``{"rank": 16}``)."""

    check: Callable[[Any], Any]
    help: str
    flags: tuple[str, ...] = ()
    kind: str = "value"
    type: type = str
    choices: Callable[[], list[str]] | None = None
    metavar: str | None = None
    commands: frozenset[str] = BOTH
    defaults: Mapping[str, Any] = field(default_factory=dict)


def arg(check: Callable[[Any], Any], help: str, *flags: str, default: Any = None, factory: Any = MISSING,
        **kw: Any) -> Any:
    """A request field: ``default`` (or ``factory``) plus its ``Arg`` in the field's metadata."""
    meta = {"arg": Arg(check, help, tuple(flags), **kw)}
    if factory is not MISSING:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def _names(module: str, func: str) -> Callable[[], list[str]]:
    """A registry's names, imported when asked (the registries are torch-free)."""

    def names() -> list[str]:
        import importlib

        return list(getattr(importlib.import_module(module), func)())

    return names


SOLVERS = _names("textsr.solver_registry", "solver_names")
OPERATORS = _names("textsr.operator_registry", "operator_names")
PRESETS = _names("textsr.presets", "preset_names")


def _image(v: Any) -> Any:
    if v is None:
        raise UsageError("image must be a path, a PIL image, a numpy array or a torch tensor; got None")
    return v


def _required_scale(v: Any) -> int:
    if v is None:
        raise UsageError("scale is required: the upscaling factor, e.g. 8")
    return validate.scale(v)


def is_backend(v: Any) -> bool:
    """Whether ``v`` is a loaded ``Backend`` (none can exist before ``textsr.backends.base`` is imported)."""
    base = sys.modules.get("textsr.backends.base")
    return base is not None and isinstance(v, base.Backend)


def _model(v: Any) -> Any:
    if v is None or isinstance(v, (str, Path)) or is_backend(v):
        return v
    raise UsageError(f"model must be a registry name (see `textsr models`), a model folder, a spec file or a "
                     f"loaded Backend; got {v!r} ({type(v).__name__})")


def _solver(v: Any) -> str | None:
    if v is None:
        return None
    from .solver_registry import canonical_name

    try:
        return canonical_name(v)
    except ValueError as e:
        raise UsageError(str(e)) from None


def _device_or_dtype(name: str, kinds: str) -> Callable[[Any], Any]:
    def check(v: Any) -> Any:
        if v is not None and not isinstance(v, str) and type(v).__module__ != "torch":
            raise UsageError(f"{name} must be a string ({kinds}) or None, got {v!r}")
        return None if v == "auto" else v

    return check


def _optional(check: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda v: None if v is None else check(v)


def _prior(v: Any) -> tuple[float, ...] | None:
    if v is None:
        return None
    if isinstance(v, (str, bytes)) or not isinstance(v, Sequence):
        raise UsageError(f"prompt_prior must be a list of numbers, one per prompt; got {v!r}")
    return tuple(v)


def _tile(v: Any) -> str | int | None:
    if v is None or (isinstance(v, int) and not isinstance(v, bool)):
        return v
    if isinstance(v, str):
        return v.strip().lower()
    raise UsageError(f"tile must be off, auto or a window side in pixels (e.g. 256), got {v!r}")


def _flag(name: str) -> Callable[[Any], bool]:
    return lambda v: validate.flag(v, name)


@dataclass(frozen=True, kw_only=True)
class ExploreRequest:
    """One exploration, as asked.  The fields' ``arg`` metadata is the documentation of each; the
    derived ``all_prompts`` (prompts plus the template sweep) and ``solver_name`` are filled in."""

    # -- the input
    image: Any = arg(_image, "The low-resolution image: a path (a folder on the command line: every image in "
                     "it), a PIL image, or an array/tensor in [0, 1] (uint8 accepted), (H, W), (H, W, C) or (C, H, W)")
    scale: int = arg(_required_scale, "Upscaling factor (2-32).", "--scale", "-x", type=int)
    simulate: bool = arg(_flag("simulate"), "IMAGE is a high-res original: downsample it first and score "
                         "against it.", "--simulate", default=False, kind="flag", commands=UPSCALE)
    max_pixels: int = arg(validate.max_pixels, "Largest input accepted (pixels).", "--max-pixels",
                          default=4_000_000, type=int)
    # -- the prompts
    prompts: tuple[str, ...] = arg(lambda v: tuple(validate.prompts(v)), "Text prompt (repeat for several; "
                                   "none: the unconditional row).", "--prompt", "-p", factory=tuple, kind="multiple")
    template: str | None = arg(lambda v: validate.text(v, "template"), "Prompt template with one slot, e.g. "
                               "'a {shape} on blue'.", "--template")
    values: Any = arg(validate.sweep_values, "Values for the template's slot, comma-separated, e.g. "
                      "'circle,star,ring'.", "--values")
    prompt_prior: tuple[float, ...] | None = arg(_prior, "Prior probabilities of the prompts for the evidence, "
                                                 "comma-separated (default: uniform; needs --particles).",
                                                 "--prior", kind="csv", metavar="P1,P2,...")
    # -- the model
    model: Any = arg(_model, "Model: a name (`textsr models`), a folder or a JSON spec. Default: the built-in "
                     "shapes world for inputs it can explain; otherwise the run stops and lists the real models.",
                     "--model", "-m")
    model_options: dict = arg(lambda v: validate.options(v, "model_options"), "Model option, e.g. "
                              "guidance_scale=7 (see docs/reference.md).", "--option", factory=dict, kind="kv",
                              metavar="KEY=VALUE")
    device: Any = arg(_device_or_dtype("device", "cpu, cuda, cuda:N or auto"), "auto, cpu, cuda, cuda:1 ...",
                      "--device")
    dtype: Any = arg(_device_or_dtype("dtype", "float32, float16, bfloat16 or auto"), "Weights' dtype: auto "
                     "(float16 on CUDA, else float32), float32, float16, bfloat16.", "--dtype")
    cpu_offload: bool = arg(_flag("cpu_offload"), "Memory: keep only the model part in use on the GPU (diffusers' "
                            "model CPU offload; slower).", "--cpu-offload", default=False, kind="flag")
    sequential_cpu_offload: bool = arg(_flag("sequential_cpu_offload"), "Memory: stream each layer to the GPU when it "
                                   "runs (least memory, much slower).", "--sequential-cpu-offload", default=False,
                                   kind="flag")
    attention_slicing: bool = arg(_flag("attention_slicing"), "Memory: compute attention in slices.",
                                  "--attention-slicing", default=False, kind="flag")
    vae_tiling: bool = arg(_flag("vae_tiling"), "Memory: encode/decode the latent models' VAE in tiles.",
                           "--vae-tiling", default=False, kind="flag")
    vae_slicing: bool = arg(_flag("vae_slicing"), "Memory: decode a batch one image at a time (latent models).",
                            "--vae-slicing", default=False, kind="flag")
    # -- the measurement y = A x + sigma_y n
    operator: str | None = arg(_optional(lambda v: validate.choice(v, "operator", OPERATORS())),
                               "Downsampling operator A (default: the preset's, else avgpool).", "--operator",
                               choices=OPERATORS)
    operator_options: dict = arg(lambda v: validate.options(v, "operator_options"), "Operator parameter, e.g. "
                                 "width=0.5 for gaussian.", "--operator-option", factory=dict, kind="kv",
                                 metavar="KEY=VALUE")
    sigma_y: float = arg(validate.sigma_y, "Noise std of the LR image in [-1,1] units (half the [0,1] value), "
                         "0 to 2.", "--sigma-y", default=0.0, type=float)
    # -- sampling
    solver: str | None = arg(_solver, "Solver (default: ddnm+; tds with --particles).", "--solver", "-s",
                             choices=SOLVERS, commands=UPSCALE)
    samples: int = arg(validate.samples, "Samples per prompt (1-256).", "--samples", "-n", default=4, type=int)
    seed: int = arg(validate.seed, f"0 to {validate.SEED_MAX}; sample k uses seed+k.", "--seed", default=0, type=int)
    steps: int | None = arg(validate.steps, "Denoising steps per stage (default: the solver's/model's).",
                            "--steps", type=int)
    particles: int | None = arg(validate.particles, "Particle solver (tds) with N particles per sample: "
                                "sample frequencies consistent as N grows, and the evidence P(prompt | y) (rank: 16 "
                                "when its method is particles).",
                                "--particles", type=int)
    batch_size: int | None = arg(validate.batch_size, "Samples per forward batch (lower to save memory).",
                                 "--batch-size", type=int)
    preset: str | None = arg(_optional(lambda v: validate.choice(v, "preset", PRESETS())),
                             "Named settings: paper = the text-guided SR paper's DeepFloyd IF setting; explicit "
                             "options override it.", "--preset", choices=PRESETS, commands=UPSCALE)
    eta: float | None = arg(_optional(lambda v: validate.number(v, "eta", lo=0.0, hi=1.0)),
                            "Step stochasticity (0-1).", "--eta", type=float, commands=UPSCALE)
    zeta: float | None = arg(_optional(lambda v: validate.number(v, "zeta", lo=0.0, hi=1e6)), "DPS/PiGDM step size.",
                             "--zeta", type=float, commands=UPSCALE)
    travel: tuple[int, int] | None = arg(validate.travel, "Time-travel: jump back L steps, R passes per block "
                                         f"(R = 1 off, at most {validate.MAX_TRAVEL_REPEAT}).", "--travel",
                                         kind="pair", metavar="L R", commands=UPSCALE)
    solver_options: dict = arg(lambda v: validate.options(v, "solver_options"), "Any solver setting, e.g. "
                               "mode=simplified.", "--solver-option", factory=dict, kind="kv", metavar="KEY=VALUE",
                               commands=UPSCALE)
    # -- any output size (docs/tiling.md); checked together by textsr.tiling.plan.TileRequest
    tile: str | int | None = arg(_tile, "Any output size: run the model on overlapping windows of its own size "
                                 "where the image exceeds it (auto) or of N px; the projection, guidance and "
                                 "particle weights still act on the whole image [default: off].", "--tile",
                                 metavar="auto|N")
    tile_overlap: int | None = arg(_optional(lambda v: validate.integer(v, "tile_overlap", lo=0)),
                                   "Window overlap in output pixels [default: a quarter of the window].",
                                   "--tile-overlap", type=int, metavar="PX")
    tile_options: dict = arg(lambda v: validate.options(v, "tile_options"), "shift=true|false (random grid shift "
                             "per step), batch=N (windows per call), text=F (text guidance inside windows, a "
                             "fraction of the whole image's).", "--tile-option", factory=dict, kind="kv",
                             metavar="KEY=VALUE")
    # -- rank's own fields (commands={"rank"}), one field each
    method: str | None = arg(_optional(lambda v: validate.choice(v, "method", list(RANK_METHODS))),
                             "How rank computes P(prompt | image): exact (the closed-form evidence, where the model "
                             "has one: the built-in world), particles (the particle solver's estimate), auto (exact "
                             "where it exists and --particles is not given, else particles).", "--method",
                             choices=lambda: list(RANK_METHODS), commands=RANK, defaults={"rank": "auto"})

    # -- derived (not arguments)
    all_prompts: tuple[str, ...] = field(init=False, default=())
    solver_name: str = field(init=False, default="ddnm+")

    def __post_init__(self) -> None:
        for f in request_args():
            object.__setattr__(self, f.name, f.metadata["arg"].check(getattr(self, f.name)))
        object.__setattr__(self, "all_prompts", tuple(expand_prompts(self.prompts, self.template, self.values)))
        self._check_solver()
        self._check_operator()
        self.tile_request()  # tile, tile_overlap and tile_options checked together

    def tile_request(self) -> Any:
        """The tiling asked for (``textsr.tiling.plan.TileRequest``; off unless ``tile`` is given)."""
        from .tiling.plan import TileRequest

        return TileRequest.of(self.tile, self.tile_overlap, self.tile_options)

    def _check_solver(self) -> None:
        from .solver_registry import config_class

        name = self.solver or ("tds" if self.particles is not None else "ddnm+")
        object.__setattr__(self, "solver_name", name)
        cls = config_class(name)
        if self.particles is not None and not cls.takes_particles:
            raise UsageError(f"particles needs a particle solver (tds); solver {name!r} keeps one sample per seed. "
                             "Leave the solver out or use --solver tds")
        if self.prompt_prior is not None:
            if not cls.takes_particles and self.method is None:  # a ranking (method set) weighs any evidence
                raise UsageError("a prompt prior weighs the prompts' evidence, which only the particle solver "
                                 "computes: add --particles N (e.g. 16), or leave the prior out")
            from .evidence import check_prior

            check_prior(self.prompt_prior, len(self.all_prompts))
        known = {f.name for f in fields(cls)}
        flat = {k for k, v in self.engine_solver_options().items() if not isinstance(v, Mapping)}
        unknown = sorted(flat - known)
        if unknown:
            raise UsageError(f"unknown option(s) {unknown} for solver {name!r}; known: {sorted(known)}")

    def _check_operator(self) -> None:
        if self.operator_options and self.operator is None:
            raise UsageError("operator options need an operator: e.g. --operator gaussian --operator-option width=0.5")
        if self.operator is not None:
            from .operator_registry import check_operator

            check_operator(self.operator, self.operator_options)

    def engine_solver_options(self) -> dict:
        """``solver_options`` with the shorthands (steps, eta, zeta, travel, particles) written in."""
        out = dict(self.solver_options)
        for key in ("steps", "eta", "zeta", "particles"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.travel is not None:
            out["travel_length"], out["travel_repeat"] = self.travel
        return out

    def load_options(self) -> dict:
        """The memory options as a model spec's ``load`` entry (only those switched on)."""
        return {k: True for k in MEMORY_OPTIONS if getattr(self, k)}

    def with_model(self, backend: Any) -> ExploreRequest:
        """This request on an already loaded model (loaded with this request's memory options)."""
        return replace(self, model=backend, cpu_offload=False, sequential_cpu_offload=False, attention_slicing=False,
                       vae_tiling=False, vae_slicing=False)

    @property
    def seeds(self) -> list[int]:
        """Sample k uses ``seed + k`` (its own generator: a batch item equals the same seed alone)."""
        return [self.seed + k for k in range(self.samples)]

    @classmethod
    def build(cls, **args: Any) -> ExploreRequest:
        """``ExploreRequest(**args)`` with an unknown name refused as a ``UsageError`` listing the known ones."""
        known = {f.name for f in request_args()}
        unknown = sorted(set(args) - known)
        if unknown:
            raise UsageError(f"unknown argument(s) {unknown}; known: {sorted(known)}")
        return cls(**args)


MEMORY_OPTIONS = ("cpu_offload", "sequential_cpu_offload", "attention_slicing", "vae_tiling", "vae_slicing")


def request_args(command: str | None = None) -> list[Field]:
    """The request's argument fields (in declaration order), those offered by ``command`` if given."""
    return [f for f in fields(ExploreRequest) if "arg" in f.metadata
            and (command is None or command in f.metadata["arg"].commands)]


def expand_prompts(prompts: Sequence[str] | str | None, template: str | None = None,
                   values: Sequence[str] | str | None = None) -> list[str]:
    """Prompts plus a template sweep: ``template="a {shape} on blue", values="circle,star"``."""
    if isinstance(prompts, str):
        prompts = [prompts]
    out = [p.strip() for p in (prompts or [])]
    if template is not None or values is not None:
        if template is None or values is None:
            raise UsageError("a prompt sweep needs both a template (e.g. 'a {shape} on blue') and values")
        if isinstance(values, str):
            values = [v for v in values.split(",")]
        vals = [v.strip() for v in values if v.strip()]
        if not vals:
            raise UsageError("the sweep's values are empty; give a comma-separated list like 'circle,star,ring'")
        try:
            slots = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
        except ValueError:  # an unmatched brace
            slots = []
        if len(slots) != 1:
            raise UsageError(f"the template {template!r} needs exactly one {{slot}}, e.g. 'a {{shape}} on blue'")
        out += [template.replace("{" + slots[0] + "}", v) for v in vals]
    if not out:
        out = [""]
    for k, p in enumerate(out):
        validate.prompt_length(p, f"prompt {k + 1}" if len(out) > 1 else "the prompt")
    if len(out) != len(set(out)):
        raise UsageError("the same prompt is given twice; each prompt must be distinct")
    return out


def markdown_table() -> str:
    """The arguments as a Markdown table (docs/reference.md holds this text; ``python -m textsr.request``
    prints it, ``tests/test_request.py`` holds the page to it)."""
    rows = ["| argument | command line | commands | default | meaning |", "|---|---|---|---|---|"]
    for f in request_args():
        a = f.metadata["arg"]
        default = f.default_factory() if f.default_factory is not MISSING else f.default  # type: ignore[misc]
        extra = "".join(f"; {c}: {v}" for c, v in a.defaults.items())
        flags = ", ".join(f"`{x}`" for x in a.flags) or ("IMAGE" if f.name == "image" else "(API and manifests)")
        rows.append(f"| `{f.name}` | {flags} | {', '.join(sorted(a.commands))} | `{default!r}`{extra} | "
                    f"{a.help.replace('|', '/')} |")
    return "\n".join(rows)


if __name__ == "__main__":  # pragma: no cover
    print(markdown_table())
