"""How values are shown to people, one rule each, shared by the command line, the gallery page
(``index.html``, ``grid.png``) and the web app; results.json keeps the raw numbers.

* the no-prompt (unconditional) row is labelled ``NO_PROMPT``;
* LR-PSNR: one decimal in dB; from ``PSNR_EXACT`` dB up the sample matches the input to rounding error
  and shows as ``>=100`` (float32 arithmetic alone gives 130-330 dB there, digits that mean nothing);
* a spread over one run has no value: ``n/a``;
* ``terminal``: text bound for a terminal with every control character escaped (``\\x1b``, ``\\n`` in
  a prompt, ...), so user-given text cannot move the cursor, set the title or forge a line.

Torch-free.
"""

from __future__ import annotations

import math
import re
from typing import Any

NO_PROMPT = "(no prompt)"
PSNR_EXACT = 100.0

# C0 and C1 control characters, DEL, and the Unicode line/paragraph separators and bidi overrides
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def prompt_label(prompt: str) -> str:
    """A prompt as a row label: the text itself, or ``(no prompt)`` for the unconditional row."""
    return prompt or NO_PROMPT


def lr_psnr(value: float | None) -> str:
    """LR-PSNR without its unit: ``'41.3'``, ``'>=100'`` (consistent to rounding) or ``'n/a'``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f">={PSNR_EXACT:g}" if value >= PSNR_EXACT else f"{value:.1f}"


def spread(value: float | None, runs: int) -> str:
    """The spread of a quantity over ``runs`` runs: ``n/a`` for fewer than two (or no finite value)."""
    if runs < 2 or value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:.2f}"


def terminal(text: Any, keep_newlines: bool = False) -> str:
    """``text`` safe to print: control characters as ``\\xNN``/``\\uNNNN`` escapes; line breaks kept only
    when ``keep_newlines`` (for a message's own structure, never for user-given values)."""

    def esc(m: re.Match) -> str:
        c = m.group(0)
        if keep_newlines and c in "\n\t":
            return c
        return repr(c)[1:-1] if ord(c) < 0x100 else f"\\u{ord(c):04x}"

    return _CONTROL.sub(esc, str(text))


def quoted(text: Any) -> str:
    """A user-given value (prompt, path) inside a message: quoted, with control characters escaped."""
    return "'" + terminal(str(text)).replace("'", "\\'") + "'"
