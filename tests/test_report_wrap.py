"""grid.png's prompt labels (issue 21, item 5): wrapping costs what the drawn lines cost, whatever the
prompt's length, and keeps every character it shows in order. The work is counted (characters
measured), never timed, so these tests cannot flake on a busy machine."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image, ImageDraw

from textsr import report

hypothesis = pytest.importorskip("hypothesis", reason="pip install hypothesis (the test extra)")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

FONT = report._font(report.FONT_SIZE)
WIDTH = report.LABEL_W - 2 * report.PAD  # as render_grid wraps


class CountingDraw:
    """An ImageDraw that counts the characters it is asked to measure: the work of wrapping."""

    def __init__(self):
        self.draw = ImageDraw.Draw(Image.new("RGB", (8, 8)))
        self.chars = 0

    def textlength(self, text, font=None):
        self.chars += len(text)
        return self.draw.textlength(text, font=font)


def work(text: str, max_lines: int = 21) -> int:
    d = CountingDraw()
    report._wrap(d, text, FONT, WIDTH, max_lines)  # type: ignore[arg-type]
    return d.chars


PROMPTS = {
    "one word": lambda n: "x" * n,
    "one-letter words": lambda n: "a " * (n // 2),
    "words then a long word": lambda n: "word " * (n // 10) + "y" * (n // 2),
    "wide letters": lambda n: "W" * n,
    "zero-width spaces": lambda n: "\u200b" * n,
    "Arabic": lambda n: ("مرحبا بالعالم " * n)[:n],
}


@pytest.mark.parametrize("kind", PROMPTS)
@pytest.mark.parametrize("n", [2_000, 20_000])
def test_wrapping_work_does_not_grow_with_the_prompt(kind, n):
    """10x the prompt, about the same work (a quadratic wrap does ~100x; the old one broke a 20,000-character
    word into ~700 lines, each measured in full, before cutting to the 21 shown)."""
    small, big = work(PROMPTS[kind](n)), work(PROMPTS[kind](10 * n))
    assert big <= 1.5 * small + 1_000, (small, big)


def test_wrapping_work_is_bounded_by_the_lines_drawn():
    max_lines = 21  # render_grid's for 384-pixel cells
    for make in PROMPTS.values():
        # at most ~log2(WIDTH) measurements of one line's worth of characters per line
        assert work(make(200_000), max_lines) <= 12 * max_lines * WIDTH


def test_save_path_draws_a_200k_character_prompt_with_bounded_work(monkeypatch):
    """render_grid (what save() calls) with a 200,000-character one-word prompt: the characters measured
    stay within the bound above (counted on Pillow's own ImageDraw)."""
    measured = [0]
    real = ImageDraw.ImageDraw.textlength

    def counting(self, text, *a, **k):
        measured[0] += len(text)
        return real(self, text, *a, **k)

    monkeypatch.setattr(ImageDraw.ImageDraw, "textlength", counting)
    lr = np.full((24, 24, 3), 0.5, np.float32)
    sample = np.full((192, 192, 3), 0.5, np.float32)
    grid = report.render_grid(lr, 8, [("x" * 200_000, [sample], np.zeros((192, 192, 3), np.uint8))])
    assert grid.size[0] > report.LABEL_W
    assert measured[0] <= 12 * (192 // (report.FONT_SIZE + 4)) * WIDTH + 1_000


@settings(derandomize=True, database=None, deadline=None, max_examples=150)
@given(text=st.text(st.sampled_from("ab WXiy.-\u00e9\u200b\t\n"), max_size=400),
       width=st.integers(8, 240), max_lines=st.integers(1, 8))
def test_wrap_shows_the_text_in_order_within_the_width(text, width, max_lines):
    draw = ImageDraw.Draw(Image.new("RGB", (8, 8)))
    lines = report._wrap(draw, text, FONT, width, max_lines)
    words = "".join(text.split())
    shown = "".join("".join(lines).split())
    assert 1 <= len(lines) <= max_lines
    if shown.endswith("...") and not words.startswith(shown):
        shown = shown[:-3]  # cut: the rest of the text is left out
        assert len(lines) == max_lines
    else:
        assert shown == words  # nothing lost, nothing added
    assert words.startswith(shown)
    for line in lines:
        one_char = len(line) == 1  # a single character is shown even where it is wider than the line
        # words are joined by summing their widths: kerning across a space may add a pixel
        assert one_char or line == "..." or draw.textlength(line, font=FONT) <= width + 1, (line, width)


def test_long_words_are_broken_and_short_ones_kept_whole():
    draw = ImageDraw.Draw(Image.new("RGB", (8, 8)))
    lines = report._wrap(draw, "a red " + "z" * 100 + " circle", FONT, 120, 10)
    assert lines[0] == "a red" and lines[-1].endswith("circle")
    assert "".join(lines[1:]).replace(" circle", "") == "z" * 100
    assert all(draw.textlength(line, font=FONT) <= 120 for line in lines)
    assert not any(re.search(r"z z", line) for line in lines)  # no space put into a broken word
