"""Shared by the command-line tests: the demo's LR image as a PNG, and a CLI run that must not crash."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from click.testing import CliRunner
from PIL import Image

from textsr.cli import main
from textsr.demo import demo_image


def demo_png(path: Path) -> Path:
    """The demo's 8x8 LR image (8-bit) at ``path``."""
    Image.fromarray((demo_image() * 255).round().astype(np.uint8)).save(path)
    return path


def run_cli(args):
    """``textsr ARGS`` in-process; it ends with an exit code, never a traceback."""
    res = CliRunner().invoke(main, [str(a) for a in args])
    assert "Traceback" not in res.output, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    return res
