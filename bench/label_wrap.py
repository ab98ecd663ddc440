"""``Exploration.save()`` with a very long one-word prompt: the grid label's wrapping (issue 21, item 5).

For each prompt length, saves one exploration (built-in model, 4 samples, 8x) whose prompt is that many
``x`` and prints wall time (min and median of ``--repeat`` saves) and the characters Pillow was asked
to measure (``ImageDraw.textlength``: the wrapping's work, the same on every machine).

    python bench/label_wrap.py                             # 5,000 / 20,000 / 200,000 characters, 3 saves each
    python bench/label_wrap.py --sizes 5000 20000 --repeat 1
    PYTHONPATH=/path/to/another/checkout python bench/label_wrap.py   # the same on other code
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from PIL import ImageDraw

import textsr
from textsr.demo import demo_image


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[5_000, 20_000, 200_000])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    result = textsr.explore(demo_image(), ["a circle"], scale=8, samples=4, steps=3)
    measured = [0]
    real = ImageDraw.ImageDraw.textlength

    def counting(self, text, *a, **k):
        measured[0] += len(text)
        return real(self, text, *a, **k)

    ImageDraw.ImageDraw.textlength = counting  # type: ignore[method-assign]
    try:
        print(f"textsr from {Path(textsr.__file__).parent}")
        print(f"{'prompt chars':>12} | {'save s (min)':>12} | {'save s (median)':>15} | {'chars measured':>14}")
        for n in args.sizes:
            result.prompts[0].prompt = "x" * n
            times = []
            for _ in range(args.repeat):
                measured[0] = 0
                with tempfile.TemporaryDirectory() as tmp:
                    t0 = time.perf_counter()
                    result.save(Path(tmp) / "out")
                    times.append(time.perf_counter() - t0)
            print(f"{n:>12,} | {min(times):>12.3f} | {statistics.median(times):>15.3f} | {measured[0]:>14,}",
                  flush=True)
    finally:
        ImageDraw.ImageDraw.textlength = real  # type: ignore[method-assign]

if __name__ == "__main__":
    main()
