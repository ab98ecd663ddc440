"""Prompts -> tags for the built-in shapes world, and prompt templates for attribute sweeps.

A prompt is lower-cased, split into words and read word by word: shape, colour, size and position
words (with synonyms: "disc" -> circle, "crimson" -> red, "box" -> square, "plus" -> cross, "donut"
-> ring, "big" -> large, "upper left" -> top left, plurals too) become tags; a colour is the
*background* when it follows "on"/"against"/"over" or precedes "background"; filler words ("a",
"the", "image", "photo", ...) are skipped; every other word is reported in ``unknown_words`` with a
note saying why (not a word the world knows, or a value this catalogue lacks), never silently
dropped.  An empty prompt gives no tags: the unconditional prior.

Tag vocabulary (one string per tag, unique across categories):

==========  ===================================================================
shape       circle, square, triangle, star, ring, cross
colour      red, orange, yellow, green, blue, purple, white, gray, black
background  "on <colour>" (e.g. "on blue")
size        small, medium, large
position    top left, top, top right, left, center, right, bottom left, bottom, bottom right
==========  ===================================================================
"""

from __future__ import annotations

import difflib
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import UsageError
from .render import PALETTE, POSITIONS, SHAPES, SIZES

CATEGORIES = ("shape", "colour", "background", "size", "position")


class PromptError(UsageError):
    """A prompt or template the built-in world cannot represent; the message says what to change."""


@dataclass(frozen=True)
class Vocabulary:
    """The tag values a catalogue has (defaults: everything the renderer knows)."""

    shapes: tuple[str, ...] = SHAPES
    colours: tuple[str, ...] = tuple(PALETTE)
    backgrounds: tuple[str, ...] = tuple(PALETTE)
    sizes: tuple[str, ...] = tuple(SIZES)
    positions: tuple[str, ...] = tuple(POSITIONS)

    def __post_init__(self) -> None:
        for name, values, known in (("shapes", self.shapes, SHAPES), ("colours", self.colours, PALETTE),
                                    ("backgrounds", self.backgrounds, PALETTE), ("sizes", self.sizes, SIZES),
                                    ("positions", self.positions, POSITIONS)):
            bad = [v for v in values if v not in known]
            if bad:
                raise ValueError(f"unknown {name} {bad}; known {name}: {', '.join(known)}")

    def values(self, category: str) -> tuple[str, ...]:
        """The tags of one category, e.g. ``values("background") == ("on blue", "on black")``."""
        if category == "background":
            return tuple(f"on {b}" for b in self.backgrounds)
        return {"shape": self.shapes, "colour": self.colours, "size": self.sizes,
                "position": self.positions}[category]

    @property
    def tags(self) -> frozenset[str]:
        return frozenset(t for c in CATEGORIES for t in self.values(c))

    def category(self, tag: str) -> str:
        """Which category a tag belongs to (for any tag the renderer knows, in this vocabulary or not)."""
        if tag.startswith("on ") and tag[3:] in PALETTE:
            return "background"
        for cat, known in (("shape", SHAPES), ("colour", PALETTE), ("size", SIZES), ("position", POSITIONS)):
            if tag in known:
                return cat
        raise ValueError(f"{tag!r} is not a tag of the built-in world")


DEFAULT_VOCABULARY = Vocabulary()


@dataclass(frozen=True)
class ParsedPrompt:
    """``tags``: what the prompt asks for (empty = unconditional); ``unknown_words``: words that were not
    understood or name values this catalogue lacks (in prompt order); ``normalized``: the canonical
    phrase for the tags ("small red circle on blue, top left"); ``notes``: one explanation per unknown
    word, ready to show to the user."""

    tags: frozenset[str]
    unknown_words: list[str]
    normalized: str
    notes: tuple[str, ...] = ()
    text: str = ""

    def category(self, category: str) -> str | None:
        """The tag of one category, or None, e.g. ``category("shape") == "circle"``."""
        found = [t for t in self.tags if DEFAULT_VOCABULARY.category(t) == category]
        return found[0] if found else None


# ----------------------------------------------------------------------------------------------
# lexicon

_SYNONYMS: dict[str, dict[str, tuple[str, ...]]] = {
    "shape": {
        "circle": ("circle", "circular", "disc", "disk", "round", "dot", "ball", "sphere", "orb", "blob"),
        "square": ("square", "box", "rectangle", "rectangular", "block", "cube", "quadrilateral"),
        "triangle": ("triangle", "triangular", "pyramid", "wedge"),
        "star": ("star", "starry", "pentagram", "starfish"),
        "ring": ("ring", "donut", "doughnut", "annulus", "hoop", "loop", "torus"),
        "cross": ("cross", "plus", "crosshair", "crucifix"),
    },
    "colour": {
        "red": ("red", "crimson", "scarlet", "ruby", "cherry", "vermilion"),
        "orange": ("orange", "amber", "tangerine"),
        "yellow": ("yellow", "gold", "golden", "lemon"),
        "green": ("green", "lime", "emerald", "olive"),
        "blue": ("blue", "navy", "azure", "cobalt", "sapphire", "royal"),
        "purple": ("purple", "violet", "lilac", "lavender", "magenta"),
        "white": ("white", "ivory", "snow"),
        "gray": ("gray", "grey", "silver"),
        "black": ("black", "ebony", "jet"),
    },
    "size": {
        "small": ("small", "tiny", "little", "mini", "smaller", "smallest"),
        "medium": ("medium", "mid", "moderate"),
        "large": ("large", "big", "huge", "giant", "larger", "bigger", "biggest", "largest", "enormous"),
    },
    "vertical": {"top": ("top", "upper", "uppermost", "topmost"), "bottom": ("bottom", "lower", "lowermost",
                                                                           "bottommost")},
    "horizontal": {"left": ("left", "leftmost"), "right": ("right", "rightmost")},
    "center": {"center": ("center", "centre", "middle", "central", "centered", "centred")},
}
_BACKGROUND_NOUNS = frozenset({"background", "backdrop", "backgrounds", "bg", "field", "canvas"})
_BACKGROUND_PREPOSITIONS = frozenset({"on", "against", "over", "onto", "upon"})
_SKIP_BETWEEN = frozenset({"a", "an", "the", "plain", "solid", "flat", "uniform", "colored", "coloured", "color",
                           "colour"})
_STOP_WORDS = frozenset({
    "a", "an", "the", "on", "with", "of", "in", "at", "and", "to", "its", "it", "is", "this", "that", "there",
    "one", "single", "some", "onto", "upon", "against", "over", "near", "by", "inside", "within", "placed",
    "image", "photo", "photograph", "picture", "pic", "drawing", "render", "rendering", "scene", "view",
    "shape", "shaped", "object", "thing", "sign", "symbol", "figure", "icon", "corner", "side", "part",
    "area", "region", "position", "located", "sized", "size", "plain", "solid", "flat", "uniform", "colored",
    "coloured", "color", "colour", "background", "backdrop", "backgrounds", "bg", "field", "canvas",
})
_COUNT_WORDS = frozenset({"two", "three", "four", "five", "six", "several", "many", "multiple", "pair", "couple",
                          "both", "2", "3", "4", "5", "6", "7", "8", "9", "10"})

_LEXICON: dict[str, tuple[str, str]] = {
    word: (cat, canon) for cat, table in _SYNONYMS.items() for canon, words in table.items() for word in words
}
_KNOWN_WORDS = sorted(set(_LEXICON) | _STOP_WORDS)


def _lookup(word: str) -> tuple[str, str] | None:
    """``(category, canonical value)`` of a content word, plurals included, else None."""
    if word in _LEXICON:
        return _LEXICON[word]
    for suffix in ("es", "s"):
        if word.endswith(suffix) and word[: -len(suffix)] in _LEXICON:
            return _LEXICON[word[: -len(suffix)]]
    return None


def tokenize(text: str) -> list[str]:
    """Lower-case words (letters and digits of any script): apostrophes dropped, every other
    character separates words, so no word is lost, only punctuation."""
    return re.findall(r"[^\W_]+", text.lower().replace("'", "").replace("\u2019", ""))


def _neighbour(tokens: list[str], i: int, step: int) -> str | None:
    j = i + step
    while 0 <= j < len(tokens) and tokens[j] in _SKIP_BETWEEN:
        j += step
    return tokens[j] if 0 <= j < len(tokens) else None


def describe_tags(tags: frozenset[str] | set[str]) -> str:
    """The canonical phrase for a tag set: ``"small red circle on blue, top left"`` ("" for no tags)."""
    by_cat = {DEFAULT_VOCABULARY.category(t): t for t in tags}
    head = " ".join(by_cat[c] for c in ("size", "colour", "shape") if c in by_cat)
    if "background" in by_cat:
        head = f"{head} {by_cat['background']}".strip()
    if "position" in by_cat:
        head = f"{head}, {by_cat['position']}" if head else by_cat["position"]
    return head


def _conflict(category: str, values: list[str]) -> PromptError:
    listed = " and ".join(values)
    if category == "shape":
        return PromptError(
            f"the prompt names {len(values)} shapes ({listed}), but every scene of the built-in shapes world "
            "holds exactly one object: ask for one shape per prompt, and compare shapes with several prompts "
            "(e.g. --template 'a {shape} on blue' --values 'circle,square')")
    what = {"colour": "object colours", "background": "background colours", "size": "sizes",
            "vertical": "vertical positions", "horizontal": "horizontal positions"}[category]
    count = "two" if len(values) == 2 else str(len(values))
    return PromptError(f"the prompt names {count} {what} ({listed}), but every scene of the built-in shapes world "
                       "holds exactly one object on a plain background: keep one per prompt")


def parse_prompt(text: str, vocabulary: Vocabulary | None = None) -> ParsedPrompt:
    """Read ``text`` into tags of ``vocabulary`` (default: every value the renderer knows).

    Raises ``PromptError`` when the prompt cannot describe one scene of the world: two shapes, two
    object colours, two backgrounds, two sizes, contradictory positions, a count of objects ("two
    circles"), or an object coloured like its background."""
    if not isinstance(text, str):
        raise PromptError(f"a prompt must be text, got {type(text).__name__}")
    vocab = vocabulary if vocabulary is not None else DEFAULT_VOCABULARY
    tokens = tokenize(text)
    found: dict[str, dict[str, str]] = {c: {} for c in ("shape", "colour", "background", "size", "vertical",
                                                          "horizontal", "center")}
    unknown: list[str] = []
    for i, word in enumerate(tokens):
        if word in _COUNT_WORDS:
            raise PromptError(f"the prompt asks for several objects ({word!r}), but every scene of the built-in "
                              "shapes world holds exactly one object: describe one object per prompt")
        hit = _lookup(word)
        if hit is None:
            if word not in _STOP_WORDS and word not in unknown:
                unknown.append(word)
            continue
        category, value = hit
        if category == "colour" and (_neighbour(tokens, i, -1) in _BACKGROUND_PREPOSITIONS
                                     or _neighbour(tokens, i, 1) in _BACKGROUND_NOUNS):
            category = "background"
        found[category].setdefault(value, word)
    for category, values in found.items():
        if len(values) > 1 and category != "center":
            raise _conflict(category, list(values))
    colour, background = next(iter(found["colour"]), None), next(iter(found["background"]), None)
    if colour is not None and colour == background:
        raise PromptError(f"the prompt asks for a {colour} object on a {colour} background, which would be "
                          "invisible: pick different colours for the object and the background")

    candidates: dict[str, tuple[str, str]] = {}  # tag -> (category, word that produced it)
    for category in ("shape", "colour", "size"):
        for value, word in found[category].items():
            candidates[value] = (category, word)
    for value, word in found["background"].items():
        candidates[f"on {value}"] = ("background", word)
    position = _position(found)
    if position is not None:
        candidates[position[0]] = ("position", position[1])

    tags: set[str] = set()
    notes = {}
    for word in unknown:
        close = difflib.get_close_matches(word, _KNOWN_WORDS, n=1, cutoff=0.75)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        notes[word] = f"{word!r} is not a word the built-in shapes world knows{hint}; it was not used"
    for tag, (category, word) in candidates.items():
        if tag in vocab.values(category):
            tags.add(tag)
        else:
            unknown.append(word)
            notes[word] = (f"{word!r} means the {category} {tag!r}, which this model's scenes do not have "
                           f"(its {category} tags: {', '.join(vocab.values(category))}); it was not used")
    first = {w: i for i, w in reversed(list(enumerate(tokens)))}
    unknown.sort(key=lambda w: first.get(w.split()[0], len(tokens)))
    frozen = frozenset(tags)
    return ParsedPrompt(tags=frozen, unknown_words=unknown, normalized=describe_tags(frozen),
                        notes=tuple(notes[w] for w in unknown),
                        text=text)


def _position(found: dict[str, dict[str, str]]) -> tuple[str, str] | None:
    """Combine vertical/horizontal/center words into one position tag and the words that named it."""
    vertical, horizontal = found["vertical"], found["horizontal"]
    parts = [(v, w) for v, w in list(vertical.items()) + list(horizontal.items())]
    if parts:
        return " ".join(v for v, _ in parts), " ".join(w for _, w in parts)
    if found["center"]:
        return "center", next(iter(found["center"].values()))
    return None


# ----------------------------------------------------------------------------------------------
# templates


def template_prompts(template: str, values: str | Sequence[str]) -> list[str]:
    """Expand a template with one slot over values: ``template_prompts("a {shape} on blue",
    "circle,star")  == ["a circle on blue", "a star on blue"]``.  ``values`` is a comma-separated
    string or a sequence; the slot may be named or empty (``{}``) and may appear more than once;
    ``{{``/``}}`` are literal braces."""
    if not isinstance(template, str) or not template.strip():
        raise PromptError("the template is empty: give one with a slot, e.g. 'a {shape} on blue'")
    try:
        fields = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        raise PromptError(f"the template {template!r} is malformed ({e}); write a slot as {{name}} and a "
                          "literal brace as {{ or }}") from None
    names = {f for f, _, _ in fields}
    if not names:
        raise PromptError(f"the template {template!r} has no slot: add one, e.g. 'a {{shape}} on blue'")
    if len(names) > 1:
        raise PromptError(f"the template {template!r} has {len(names)} different slots "
                          f"({', '.join('{' + n + '}' for n in sorted(names))}); use one slot per sweep")
    if any(spec or conv for _, spec, conv in fields):
        raise PromptError(f"the template {template!r} uses a format spec or conversion; write the slot plainly "
                          "as {name}")
    name = next(iter(names))
    if name.isdigit() and name != "0":
        raise PromptError(f"the template {template!r} uses slot {{{name}}}; use a named slot such as {{shape}}")
    items = values.split(",") if isinstance(values, str) else list(values)
    if not all(isinstance(v, str) for v in items):
        raise PromptError(f"template values must be text, got {values!r}")
    items = [v.strip() for v in items]
    if not items or all(not v for v in items):
        raise PromptError("no template values given: pass them comma-separated, e.g. 'circle,star,ring'")
    if any(not v for v in items):
        raise PromptError(f"empty template value in {values!r}: remove the extra comma")
    duplicates = sorted({v for v in items if items.count(v) > 1})
    if duplicates:
        raise PromptError(f"template value(s) repeated: {', '.join(duplicates)}; give each value once")
    if name == "" or name == "0":
        return [template.format(*([v] * len(fields))) if name == "" else template.format(v) for v in items]
    return [template.format(**{name: v}) for v in items]
