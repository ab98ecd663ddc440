"""Fuzz tests (issue 10): random command lines and random or damaged image files. Every outcome is exit
code 0 or 2 with a message, never a traceback, and never a half-written output folder: after exit 0
the folder holds a complete run (results.json and every file it lists), after exit 2 nothing.

Bounded and deterministic (``derandomize``): the built-in model with at most 3 steps and 2 samples.
"""

from __future__ import annotations

import io as _io
import json
import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

hypothesis = pytest.importorskip("hypothesis", reason="pip install hypothesis (the test extra)")
from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from textsr.cli import main  # noqa: E402
from textsr.demo import demo_image  # noqa: E402
from textsr.errors import InputImageError  # noqa: E402
from textsr.io import load_image  # noqa: E402

# damaged TIFF/EXIF data makes Pillow warn while it refuses the file: expected here
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:PIL.TiffImagePlugin")

CLI_EXAMPLES = 30
LOADER_EXAMPLES = 150
FUZZ = settings(derandomize=True, database=None, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

junk = st.text(max_size=12)
any_int = st.integers(min_value=-(2**70), max_value=2**70)
any_float = st.floats(allow_nan=True, allow_infinity=True)


def _num(strategy):
    return st.one_of(strategy.map(str), junk)


# Each option: values that should work, and odd or wrong values (the among them). A command line
# takes a few options with working values and makes at most two of them odd, so runs get past the
# first check and reach sampling and writing.
VALID = {
    "--scale": st.sampled_from(["8", "4", "2"]),
    "--samples": st.sampled_from(["1", "2"]),
    "--seed": st.one_of(st.sampled_from(["0", str(2**32 - 1)]), st.integers(0, 2**32 - 1).map(str)),
    "--steps": st.sampled_from(["1", "2", "3"]),
    "--sigma-y": st.one_of(st.sampled_from(["0", "0.1", "2"]), st.floats(0, 2).map(str)),
    "--batch-size": st.sampled_from(["1", "2", "5"]),
    "--eta": st.floats(0, 1).map(str),
    "--operator": st.sampled_from(["avgpool", "bicubic"]),
    "--solver": st.sampled_from(["ddnm+", "ddnm", "dps", "pigdm", "plain"]),
    "--prompt": st.sampled_from(["a red circle", "a crimson star", "a red ring"]),
    "--solver-option": st.sampled_from(["eta=0.5", "mode=simplified", "start=0.5", "init=pinv", "steps=2"]),
    "--device": st.sampled_from(["auto", "cpu"]),
    "--dtype": st.sampled_from(["auto", "float32"]),
    "--max-pixels": st.sampled_from(["64", "4000000"]),
}
ODD = {
    "--scale": st.one_of(st.sampled_from(["1", "33", "0", "-8", "8.5", "x8", ""]), any_int.map(str), junk),
    "--samples": st.one_of(st.sampled_from(["0", "-1", "257", "1.5"]), any_int.map(str), junk),
    "--seed": st.one_of(st.sampled_from(["9223372036854775807", "-1", str(2**32), "1e3", "abc"]), any_int.map(str),
                        junk),
    "--steps": st.sampled_from(["0", "-1", "1.5", "x", ""]),
    "--sigma-y": st.one_of(st.sampled_from(["1e308", "inf", "-inf", "nan", "-0.1", "2.0001", "0.1.2"]),
                           any_float.map(str), junk),
    "--batch-size": st.one_of(st.sampled_from(["-1", "0", "0.5"]), any_int.map(str), junk),
    "--eta": st.one_of(any_float.map(str), junk),
    "--zeta": st.one_of(any_float.map(str), junk),
    "--operator": st.sampled_from(["nearest", "", "AVGPOOL"]),
    "--solver": st.sampled_from(["euler", "DDNM", ""]),
    "--model": st.sampled_from(["no-such-model", "", "/", "{}", "/etc/passwd", "."]),
    "--prompt": st.one_of(st.sampled_from(["a circle and a star", "<script>alert(1)</script>", "\x00",
                                           "a red circle\n"]), junk),
    "--template": st.one_of(st.sampled_from(["a {shape}", "a red {s} on blue", "{a}{b}", "no slot", "{}", "{0}"]),
                            junk),
    "--values": st.one_of(st.sampled_from(["circle,star", ",", "ring", ""]), junk),
    "--solver-option": st.one_of(st.sampled_from(["bogus=1", "eta", "eta=nan", "travel_length=3", "steps=0", "start=2",
                                                  "steps=99999999999999999999", "=", "mode=[1]"]), junk),
    "--option": st.one_of(st.sampled_from(["guidance_scale=7", "bogus=1", "x"]), junk),
    "--device": st.sampled_from(["cuda", "tpu", "cuda:9", "", "meta"]),
    "--dtype": st.sampled_from(["int8", "float16", "", "bfloat16", "complex64"]),
    "--max-pixels": st.one_of(st.sampled_from(["0", "-1", "1"]), any_int.map(str), junk),
}


# always given unless drawn: little work per run (a prompted row is cheap on the built-in model)
SMALL_WORK = {"--steps": "2", "--samples": "2", "--prompt": "a red circle"}


@st.composite
def command_lines(draw):
    chosen = draw(st.lists(st.sampled_from(sorted(VALID)), max_size=5, unique=True))
    args = {name: draw(VALID[name]) for name in chosen}
    for name in draw(st.lists(st.sampled_from(sorted(ODD)), max_size=2, unique=True)):
        args[name] = draw(ODD[name])
    argv = [a for kv in args.items() for a in kv]
    if draw(st.integers(0, 4)) == 0:
        argv += ["--travel", draw(st.integers(-2, 5).map(str)), draw(st.integers(-2, 5).map(str))]
    if draw(st.integers(0, 4)) == 0:
        argv += ["--simulate"]
    return argv


def _safe_work(args: list[str]) -> bool:
    """Keep each run small: no huge sample counts or scales that would take long on a CPU."""
    def val(name):
        return args[args.index(name) + 1] if name in args else None

    for name, limit in (("--samples", 2), ("--scale", 16), ("--batch-size", 10**9)):
        v = val(name)
        if v is not None and v.strip().lstrip("+-").isdigit() and int(v) > limit:
            return False
    return True


def check_folder(out: Path, exit_code: int) -> None:
    if exit_code == 0:
        doc = json.loads((out / "results.json").read_text())
        listed = set(doc["files"].values())
        for e in doc["prompts"]:
            listed |= {e["std_file"], *(s["file"] for s in e["samples"])}
        missing = [f for f in listed if not (out / f).is_file()]
        assert not missing, f"results.json lists missing files {missing}"
    else:
        assert not out.exists() or not any(out.rglob("*")), f"exit {exit_code} left files: {list(out.rglob('*'))}"


@pytest.fixture(scope="module")
def lr_png(tmp_path_factory):
    p = tmp_path_factory.mktemp("fuzz") / "in.png"
    Image.fromarray((demo_image() * 255).round().astype(np.uint8)).save(p)
    return p


@settings(FUZZ, max_examples=CLI_EXAMPLES)
@given(args=command_lines())
@example(args=["--sigma-y", "1e308"])  # the cases run first, then the generated ones
@example(args=["--sigma-y", "nan"])
@example(args=["--seed", "9223372036854775807"])
@example(args=["--batch-size", "-1"])
@example(args=["--steps", "2", "--samples", "1", "--prompt", ""])
def test_random_command_lines_exit_0_or_2(lr_png, args):
    hypothesis.assume(_safe_work(args))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        argv = ["upscale", str(lr_png), *(["-x", "8"] if "--scale" not in args else []),
                *[a for k, v in SMALL_WORK.items() if k not in args for a in (k, v)], *args, "-o", str(out), "-q"]
        res = CliRunner().invoke(main, argv)
        hypothesis.event(f"exit {res.exit_code}")  # --hypothesis-show-statistics shows how many ran through
        assert res.exception is None or isinstance(res.exception, SystemExit), (argv, repr(res.exception))
        assert res.exit_code in (0, 2), (argv, res.exit_code, res.output)
        assert "Traceback" not in res.output, (argv, res.output)
        if res.exit_code == 2:
            assert res.output.strip(), argv  # a message says what is wrong
        check_folder(out, res.exit_code)


# -------------------------------------------------------------------------------------------- loader


def _encoded(fmt: str, w: int, h: int, mode: str, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, (h, w, 4), dtype=np.uint8)
    im = Image.fromarray(a, "RGBA").convert(mode)
    buf = _io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


@st.composite
def damaged_images(draw):
    fmt = draw(st.sampled_from(["PNG", "JPEG", "WEBP", "TIFF", "BMP", "GIF"]))
    modes = {"JPEG": ["RGB", "L", "CMYK"], "BMP": ["RGB", "L", "P"], "GIF": ["P", "L"], "WEBP": ["RGB", "RGBA"]}
    mode = draw(st.sampled_from(modes.get(fmt, ["RGB", "RGBA", "L", "LA", "P", "I;16", "1"])))
    data = bytearray(_encoded(fmt, draw(st.integers(1, 12)), draw(st.integers(1, 12)), mode, draw(st.integers(0, 99))))
    how = draw(st.sampled_from(["truncate", "flip", "both", "intact"]))
    if how in ("truncate", "both"):
        data = data[:draw(st.integers(0, max(0, len(data) - 1)))]
    if how in ("flip", "both") and data:
        for _ in range(draw(st.integers(1, 8))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return fmt, bytes(data)


def _load_or_refuse(data: bytes, suffix: str) -> np.ndarray | None:
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / f"in{suffix}"
        p.write_bytes(data)
        try:
            li = load_image(p, max_pixels=4096)
        except InputImageError as e:
            assert str(e).strip()
            hypothesis.event("refused")
            return None
    hypothesis.event("loaded")
    a = li.array
    assert a.dtype == np.float32 and a.ndim == 3 and a.shape[2] == 3 and np.isfinite(a).all()
    assert 0.0 <= float(a.min()) and float(a.max()) <= 1.0
    return a


@settings(FUZZ, max_examples=LOADER_EXAMPLES)
@given(data=st.binary(max_size=600), suffix=st.sampled_from([".png", ".jpg", ".webp", ".tif", ".bin"]))
def test_random_bytes_load_or_give_a_clear_error(data, suffix):
    _load_or_refuse(data, suffix)


@settings(FUZZ, max_examples=LOADER_EXAMPLES)
@given(img=damaged_images())
def test_damaged_images_load_or_give_a_clear_error(img):
    fmt, data = img
    _load_or_refuse(data, "." + fmt.lower())


@settings(FUZZ, max_examples=12)
@given(img=damaged_images())
def test_damaged_images_through_the_cli(img):
    fmt, data = img
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / f"in.{fmt.lower()}", Path(tmp) / "out"
        src.write_bytes(data)
        argv = ["upscale", str(src), "-x", "2", "-n", "1", "--steps", "1", "-q", "-o", str(out)]
        res = CliRunner().invoke(main, argv)
        assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
        assert res.exit_code in (0, 2) and "Traceback" not in res.output, res.output
        check_folder(out, res.exit_code)


def test_fuzz_budget_is_bounded():
    assert CLI_EXAMPLES <= 60 and LOADER_EXAMPLES <= 300 and math.isfinite(CLI_EXAMPLES)
