"""Write a run's output folder from plain data: images, a labelled grid, results.json, index.html.

Nothing here knows about models: callers pass arrays in [0, 1] and a results dict (see
textsr/schema/results.schema.json). Layout of ``out_dir``::

    input.png  nearest.png  bicubic.png  grid.png  results.json  index.html
    00-a-red-circle/sample-00.png ... std.png       one folder per prompt, in results order

Every file is written atomically and results.json last (it marks the run complete); a folder holding
another run is refused unless ``overwrite``; other files already in ``out_dir`` are left alone (see
``textsr.outdir``).
"""

from __future__ import annotations

import html
import json
import math
import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from textsr import io, outdir
from textsr.display import lr_psnr, prompt_label
from textsr.schema import validate_results

# Anchor colours of matplotlib's viridis at 0, 1/8, ..., 1; interpolated to a 256-entry LUT.
_VIRIDIS_ANCHORS = np.array(
    [
        [0.267004, 0.004874, 0.329415],
        [0.282623, 0.140926, 0.457517],
        [0.229739, 0.322361, 0.545706],
        [0.172719, 0.448791, 0.557885],
        [0.127568, 0.566949, 0.550556],
        [0.157851, 0.683765, 0.501686],
        [0.369214, 0.788888, 0.382914],
        [0.678489, 0.863742, 0.189503],
        [0.993248, 0.906157, 0.143936],
    ]
)
VIRIDIS = np.rint(
    np.stack([np.interp(np.linspace(0, 1, 256), np.linspace(0, 1, 9), _VIRIDIS_ANCHORS[:, k]) for k in range(3)], -1)
    * 255
).astype(np.uint8)

# Grid geometry (pixels). Cells are scaled so that their longer side lies in [MIN_CELL, MAX_CELL].
MIN_CELL, MAX_CELL = 192, 384
LABEL_W, HEADER_H, PAD, FONT_SIZE = 220, 30, 6, 14


def write_outputs(
    out_dir: str | Path,
    *,
    lr: np.ndarray,
    samples: dict[str, list[np.ndarray]],
    std_maps: dict[str, np.ndarray],
    results: dict[str, Any],
    scale: int,
    notes: list[str],
    overwrite: bool = False,
) -> dict[str, Path]:
    """Write every output file; return {path relative to ``out_dir`` (POSIX): absolute Path}.

    ``lr`` is (h, w, C) in [0, 1]; ``samples[label]`` are (h*scale, w*scale, C) in [0, 1] with
    ``label`` matching ``results["prompts"][i]["label"]`` (same number of samples as entries in
    ``results["prompts"][i]["samples"]``); ``std_maps[label]`` is (H, W) (or (H, W, C), averaged),
    computed from the samples when missing. ``results`` is not modified: a copy gets the folder
    and file names, ``files``, ``std_map`` and ``notes`` (``notes`` appended), non-finite
    numbers become null, and it is validated against the schema before anything is written.

    The folder is written as one run (``textsr.outdir``): refused if it holds another run unless
    ``overwrite`` (then only textsr's files are removed), results.json last, and on a write error
    nothing half-written is left and the run goes to a fallback folder (``OutputWriteError``).
    """
    out = outdir.folder_arg(out_dir)  # None, '' (the current folder by accident) or a file: refused first
    lr = _image(lr, "lr")
    entries = _prompt_entries(results, samples)
    out_size = (lr.shape[0] * scale, lr.shape[1] * scale)
    imgs = {
        e["label"]: [_image(a, f"samples[{e['label']!r}][{k}]", out_size) for k, a in enumerate(samples[e["label"]])]
        for e in entries
    }
    stds = {lab: _std_map(std_maps.get(lab), imgs[lab], lab) for lab in imgs}
    vmax = max(float(s.max()) for s in stds.values())

    doc, run_notes = _plain_json(results)
    if doc.get("scale") != scale or doc.get("output_size") != list(out_size):
        raise ValueError(
            f"results say scale {doc.get('scale')} and output_size {doc.get('output_size')}, but the "
            f"images give scale {scale} and output size {list(out_size)}"
        )
    std_rgb: dict[str, np.ndarray] = {}
    written: dict[str, np.ndarray | Image.Image] = {
        "input.png": lr,
        "nearest.png": io.resize_nearest(lr, scale),
        "bicubic.png": io.resize_bicubic(lr, scale),
    }
    for entry, folder in zip(doc["prompts"], folder_names([e.get("prompt", "") for e in entries]), strict=True):
        entry["folder"], entry["std_file"] = folder, f"{folder}/std.png"
        for k, (sample, arr) in enumerate(zip(entry["samples"], imgs[entry["label"]], strict=True)):
            sample.setdefault("index", k)
            sample["file"] = f"{folder}/sample-{k:02d}.png"
            written[sample["file"]] = arr
        std_rgb[entry["label"]] = colorize(stds[entry["label"]], vmin=0.0, vmax=vmax if vmax > 0 else 1.0)
        written[entry["std_file"]] = std_rgb[entry["label"]]
    doc["files"] = {"input": "input.png", "nearest": "nearest.png", "bicubic": "bicubic.png",
                    "grid": "grid.png", "results": "results.json", "index": "index.html"}
    doc["std_map"] = {"colormap": "viridis", "vmin": 0.0, "vmax": vmax, "shared": True}
    doc["notes"] = [*doc.get("notes", []), *notes, *run_notes, _std_note(vmax)]
    validate_results(doc)

    written["grid.png"] = render_grid(
        lr, scale, [(e["prompt"], imgs[e["label"]], std_rgb[e["label"]]) for e in doc["prompts"]]
    )
    files = {rel: io.png_bytes(img) for rel, img in written.items()}  # encoded before the disk is touched
    files["index.html"] = render_html(doc, lr_size=(lr.shape[0], lr.shape[1])).encode("utf-8")
    files["results.json"] = io.json_bytes(doc)  # written last: it marks the run complete
    return outdir.write_run(out, files, overwrite=overwrite)


# --------------------------------------------------------------------------------------------
# Checking and normalising the inputs
# --------------------------------------------------------------------------------------------


def _std_note(vmax: float) -> str:
    note = (
        "std maps: per-pixel standard deviation across samples (mean over channels, pixel values in [0,1]), "
        f"viridis colormap, shared scale 0 -> {vmax:.4g} across all prompts"
    )
    return note + (" (all zero: one sample per prompt or identical samples)" if vmax <= 0 else "")


def _image(a: np.ndarray, name: str, size: tuple[int, int] | None = None) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[-1] not in (1, 3):
        raise ValueError(f"{name}: expected an (H, W, 1|3) image array, got shape {a.shape}")
    if size is not None and a.shape[:2] != size:
        raise ValueError(f"{name}: expected size {size} (input size x scale), got {a.shape[:2]}")
    a = a.astype(np.float32) / 255.0 if a.dtype == np.uint8 else a.astype(np.float32)
    if not np.isfinite(a).all():
        raise ValueError(f"{name}: contains NaN or infinite values")
    return np.clip(a, 0.0, 1.0)


def _prompt_entries(results: dict[str, Any], samples: dict[str, list[np.ndarray]]) -> list[dict[str, Any]]:
    entries = results.get("prompts")
    if not isinstance(entries, list) or not entries:
        raise ValueError("results['prompts'] must be a non-empty list of prompt entries")
    labels = [e.get("label") for e in entries]
    if len(set(labels)) != len(labels):
        raise ValueError(f"results['prompts'] labels must be unique, got {labels}")
    if set(labels) != set(samples):
        raise ValueError(f"samples keys {sorted(samples)} do not match the prompt labels {labels}")
    for e in entries:
        n_meta, n_img = len(e.get("samples", [])), len(samples[e["label"]])
        if n_meta != n_img:
            raise ValueError(f"prompt {e['label']!r}: {n_img} sample images but {n_meta} entries in results")
    return entries


def _std_map(std: np.ndarray | None, imgs: list[np.ndarray], label: str) -> np.ndarray:
    if std is None:
        s = np.stack(imgs).std(axis=0)
    else:
        s = np.asarray(std, dtype=np.float32)
    if s.ndim == 3:
        s = s.mean(axis=-1)
    if s.shape != imgs[0].shape[:2]:
        raise ValueError(f"std map for {label!r}: expected shape {imgs[0].shape[:2]}, got {s.shape}")
    if not np.isfinite(s).all():
        raise ValueError(f"std map for {label!r} contains NaN or infinite values")
    return s.astype(np.float32)


def _plain_json(results: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Deep copy as plain JSON types (numpy -> Python); NaN/inf -> null, each noted."""
    doc = json.loads(json.dumps(results, default=io.json_default))
    notes: list[str] = []

    def fix(node: Any, path: str) -> Any:
        if isinstance(node, dict):
            return {k: fix(v, f"{path}/{k}") for k, v in node.items()}
        if isinstance(node, list):
            return [fix(v, f"{path}/{i}") for i, v in enumerate(node)]
        if isinstance(node, float) and not math.isfinite(node):
            notes.append(f"{path.lstrip('/')} was {node} (not valid JSON): stored as null")
            return None
        return node

    return fix(doc, ""), notes


def slugify(text: str, max_len: int = 40) -> str:
    """Lower-case ASCII letters, digits and '-' only; 'no-text' for an empty result."""
    t = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    t = re.sub(r"[^a-z0-9]+", "-", t.lower()).strip("-")
    return t[:max_len].rstrip("-") or "no-text"


def folder_names(prompts: list[str]) -> list[str]:
    """'00-a-red-circle', '01-...': the index prefix makes them unique even for equal prompts."""
    width = max(2, len(str(len(prompts) - 1)))
    return [f"{i:0{width}d}-{slugify(p)}" for i, p in enumerate(prompts)]


def colorize(values: np.ndarray, *, vmin: float = 0.0, vmax: float | None = None) -> np.ndarray:
    """(H, W) -> uint8 (H, W, 3) through the viridis LUT; values outside [vmin, vmax] are clipped."""
    v = np.asarray(values, dtype=np.float64)
    hi = float(v.max()) if vmax is None else vmax
    span = hi - vmin if hi > vmin else 1.0
    idx = np.rint(np.clip((v - vmin) / span, 0.0, 1.0) * 255).astype(np.intp)
    return VIRIDIS[idx]


# --------------------------------------------------------------------------------------------
# grid.png
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GridLayout:
    """Pixel geometry of grid.png: a label column, a header row, then rows x cols cells."""

    rows: int
    cols: int
    cell_h: int
    cell_w: int

    @staticmethod
    def for_images(rows: int, n_samples: int, h: int, w: int) -> GridLayout:
        """Columns: input (nearest), bicubic, n_samples samples, std map."""
        long_side = max(h, w)
        if long_side < MIN_CELL:
            f = math.ceil(MIN_CELL / long_side)  # integer zoom keeps pixels square and sharp
            ch, cw = h * f, w * f
        elif long_side > MAX_CELL:
            ch, cw = max(1, round(h * MAX_CELL / long_side)), max(1, round(w * MAX_CELL / long_side))
        else:
            ch, cw = h, w
        return GridLayout(rows=rows, cols=n_samples + 3, cell_h=ch, cell_w=cw)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the whole image."""
        return (LABEL_W + self.cols * (self.cell_w + PAD) + PAD, HEADER_H + self.rows * (self.cell_h + PAD) + PAD)

    def origin(self, row: int, col: int) -> tuple[int, int]:
        """(x, y) of the top-left pixel of a cell."""
        return (LABEL_W + PAD + col * (self.cell_w + PAD), HEADER_H + PAD + row * (self.cell_h + PAD))


def render_grid(
    lr: np.ndarray, scale: int, rows: list[tuple[str, list[np.ndarray], np.ndarray]]
) -> Image.Image:
    """rows = [(prompt, samples (H, W, C) in [0, 1], std map uint8 (H, W, 3))] -> labelled RGB grid."""
    h, w = rows[0][1][0].shape[:2]
    n = max(len(s) for _, s, _ in rows)
    lay = GridLayout.for_images(len(rows), n, h, w)
    canvas = Image.new("RGB", lay.size, "white")
    draw = ImageDraw.Draw(canvas)
    font = _font(FONT_SIZE)
    headers = [f"input (nearest x{scale})", f"bicubic x{scale}", *(f"sample {k}" for k in range(n)),
               "std (uncertainty)"]
    for c, text in enumerate(headers):
        x, _ = lay.origin(0, c)
        draw.text((x, PAD), _fit(draw, text, font, lay.cell_w), fill="black", font=font)
    base = [io.resize_nearest(lr, scale), io.resize_bicubic(lr, scale)]
    for r, (prompt, samples, std) in enumerate(rows):
        x, y = lay.origin(r, 0)
        max_lines = max(1, lay.cell_h // (FONT_SIZE + 4))
        lines = _wrap(draw, f"{r}. {prompt_label(prompt)}", font, LABEL_W - 2 * PAD, max_lines)
        draw.multiline_text((PAD, y), "\n".join(lines), fill="black", font=font, spacing=4)
        cells = [*base, *samples, *[None] * (n - len(samples)), std]
        for c, img in enumerate(cells):
            if img is not None:
                canvas.paste(_cell(img, lay), lay.origin(r, c))
    return canvas


def _cell(img: np.ndarray, lay: GridLayout) -> Image.Image:
    a = io.to_uint8(img) if img.dtype != np.uint8 else img
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    im = Image.fromarray(np.ascontiguousarray(a))
    if im.size == (lay.cell_w, lay.cell_h):
        return im
    upscaling = lay.cell_w > im.width
    return im.resize((lay.cell_w, lay.cell_h), Image.Resampling.NEAREST if upscaling else Image.Resampling.LANCZOS)


@lru_cache(maxsize=4)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def _fit(draw: ImageDraw.ImageDraw, text: str, font: Any, width: float, cut: bool = False) -> str:
    """``text`` if it fits in ``width`` pixels (and is not ``cut``), else its longest prefix that fits
    with an ellipsis appended (binary search)."""
    if not cut and draw.textlength(text, font=font) <= width:
        return text
    lo, hi = 0, len(text) + 1  # longest prefix that fits with "..." lies in [lo, hi)
    while lo < hi - 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if draw.textlength(text[:mid] + "...", font=font) <= width else (lo, mid)
    return text[:lo] + "..."


def _wrap(draw: ImageDraw.ImageDraw, text: str, font: Any, width: float, max_lines: int) -> list[str]:
    """Greedy word wrap to ``width`` pixels in at most ``max_lines`` lines, the last ending in '...'
    when text was cut; a word wider than a line is broken.

    The work is bounded by the lines drawn, not by ``len(text)``: words are read one at a time and
    reading stops when the lines are full; a line holds at most ``int(width)`` characters (one pixel
    each, which any visible character exceeds), so no measurement covers more than one line's worth of
    text; a line's width is the sum of its words' (kerning across a space is ignored). A
    200,000-character one-word prompt costs what a 2,000-character one does."""
    chars = max(1, int(width))
    space = draw.textlength(" ", font=font)
    lines: list[str] = []
    widths: list[float] = []
    for m in re.finditer(r"\S+", text):
        start, end = m.span()
        while start < end:
            piece = _longest_fit(draw, text[start:min(end, start + chars)], font, width)
            w = draw.textlength(piece, font=font)
            whole = start == m.start() and len(piece) == end - start  # the whole word: it may join a line
            if whole and lines and len(lines[-1]) + 1 + len(piece) <= chars and widths[-1] + space + w <= width:
                lines[-1] += " " + piece
                widths[-1] += space + w
            elif len(lines) == max_lines:  # no room for another line: the rest is cut
                sep = " " if start == m.start() else ""
                return [*lines[:-1], _fit(draw, lines[-1] + sep + piece, font, width, cut=True)]
            else:
                lines.append(piece)
                widths.append(w)
            start += len(piece)
    return lines or [""]


def _longest_fit(draw: ImageDraw.ImageDraw, word: str, font: Any, width: float) -> str:
    """The longest prefix of ``word`` (at least one character) that fits in ``width`` pixels."""
    if draw.textlength(word, font=font) <= width:
        return word
    lo, hi = 1, len(word)  # word[:lo] is taken (one character at least), word[:hi] is too wide
    while lo < hi - 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if draw.textlength(word[:mid], font=font) <= width else (lo, mid)
    return word[:lo]


# --------------------------------------------------------------------------------------------
# index.html
# --------------------------------------------------------------------------------------------

_CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;max-width:1400px;padding:16px;
color:#222}
h1{margin:.2em 0}h2{margin:1.2em 0 .3em;border-bottom:1px solid #ddd}.sub{color:#666;margin:0 0 1em}
.caution{background:#fff3cd;border:1px solid #e0b000;padding:.5em .8em;margin:.5em 0}
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(220px,1fr));gap:12px}
figure{margin:0;background:#f6f6f6;padding:6px;border-radius:4px}figure img{width:100%;height:auto;display:block}
figcaption{font-size:13px;color:#333;margin-top:4px}.px img{image-rendering:pixelated}
table{border-collapse:collapse;font-size:14px}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f3f3f3}.bar{height:12px;border-radius:2px}.barlab{display:flex;justify-content:space-between;font-size:12px}
.meta{color:#444;font-size:14px}code{background:#f3f3f3;padding:0 3px}
"""


def _e(value: Any) -> str:
    """HTML-escape anything (quotes too, so it is safe inside attributes)."""
    return html.escape(value if isinstance(value, str) else _fmt(value), quote=True)


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _url(rel: str) -> str:
    return html.escape(quote(rel), quote=True)


def _figure(rel: str, caption: str, cls: str = "") -> str:
    return (f'<figure class="{cls}"><a href="{_url(rel)}"><img src="{_url(rel)}" alt="{_e(caption)}"></a>'
            f"<figcaption>{_e(caption)}</figcaption></figure>")


def render_html(doc: dict[str, Any], *, lr_size: tuple[int, int]) -> str:
    """The offline gallery page for a filled, validated results dict (no external resources)."""
    scale, (oh, ow) = doc["scale"], doc["output_size"]
    src = doc["input"].get("path") or "in-memory image"
    src_name = Path(src).name if doc["input"].get("path") else src
    parts = [
        '<!doctype html><html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width,initial-scale=1">',
        f"<title>textsr: {_e(src_name)} x{_e(scale)}</title><style>{_CSS}</style></head><body>",
        "<h1>textsr results</h1>",
        *([f'<p class="caution"><strong>{_e(doc["model"]["caution"])}</strong></p>']
          if doc["model"].get("caution") else []),
        f'<p class="sub">{_e(src)}: {lr_size[1]}x{lr_size[0]} &rarr; {_e(ow)}x{_e(oh)} '
        f'(x{_e(scale)}) &middot; {_e(doc["created"])} &middot; <a href="grid.png">grid.png</a> &middot; '
        '<a href="results.json">results.json</a></p>',
        '<h2>Input</h2><div class="gallery">',
        _figure("input.png", f"input {lr_size[1]}x{lr_size[0]} (shown enlarged)", "px"),
        _figure("nearest.png", f"nearest x{scale}", "px"),
        _figure("bicubic.png", f"bicubic x{scale}"),
        "</div>",
    ]
    for i, entry in enumerate(doc["prompts"]):
        parts.append(_prompt_section(i, entry, doc.get("std_map", {}), _reference_at(doc.get("reference"), i)))
    parts += ["<h2>Settings</h2>", _settings_table(doc)]
    notes = list(dict.fromkeys([*doc["input"].get("notes", []), *doc.get("notes", [])]))  # dedupe, keep order
    if notes:
        parts += ["<h2>Notes</h2><ul>", *(f"<li>{_e(n)}</li>" for n in notes), "</ul>"]
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _reference_at(reference: dict[str, Any] | None, i: int) -> dict[str, list[Any]]:
    """Simulation mode: per-sample reference metrics of prompt ``i`` when given as [prompt][sample]."""
    out = {}
    for key, value in (reference or {}).items():
        if isinstance(value, list) and i < len(value) and isinstance(value[i], list):
            out[key] = value[i]
    return out


def _prompt_section(i: int, entry: dict[str, Any], std_map: dict[str, Any], ref: dict[str, list[Any]]) -> str:
    div = entry.get("diversity", {})
    tags = entry.get("tags") or []
    if isinstance(tags, dict):
        tags = [f"{k}={_fmt(v)}" for k, v in tags.items()]
    meta = [f"label <code>{_e(entry['label'])}</code>", f"text consistency {_e(entry.get('text_consistency'))}",
            f"diversity: pairwise L2 {_e(div.get('pairwise_l2'))}, mean std {_e(div.get('mean_std'))}"]
    if tags:
        meta.append("tags: " + ", ".join(_e(t) for t in tags))
    figs = []
    for k, s in enumerate(entry["samples"]):
        psnr = s.get("lr_psnr")  # null in results.json: not finite, i.e. A x = y exactly
        caption = (f"sample {s['index']:02d} · seed {s['seed']} · LR-PSNR "
                   f"{lr_psnr(math.inf if psnr is None else psnr)} dB{_projection_caption(s)} · "
                   f"text {_fmt(s.get('text_score'), 3)}")
        caption += "".join(f" · ref {key.upper()} {_fmt(v[k], 4)}" for key, v in ref.items() if k < len(v))
        figs.append(_figure(s["file"], caption))
    vmax = std_map.get("vmax", 0.0)
    stops = ",".join(f"rgb({r},{g},{b})" for r, g, b in VIRIDIS[::32].tolist() + [VIRIDIS[-1].tolist()])
    std_fig = (f'<figure><a href="{_url(entry["std_file"])}"><img src="{_url(entry["std_file"])}" '
               f'alt="std map"></a><figcaption>std across samples (uncertainty)</figcaption>'
               f'<div class="bar" style="background:linear-gradient(to right,{stops})"></div>'
               f'<div class="barlab"><span>0</span><span>{_e(float(vmax))}</span></div></figure>')
    return "\n".join([
        f'<section id="prompt-{i}"><h2>{i}. &ldquo;{_e(entry["prompt"])}&rdquo;</h2>',
        f'<p class="meta">{" &middot; ".join(meta)} &middot; folder <a href="{_url(entry["folder"])}/">'
        f'{_e(entry["folder"])}/</a></p>',
        '<div class="gallery">', *figs, std_fig, "</div></section>",
    ])


def _projection_caption(sample: dict[str, Any]) -> str:
    """Latent models: the LR-PSNR before the final pixel projection and that correction's size."""
    if "lr_psnr_before_projection" not in sample:
        return ""
    before = sample["lr_psnr_before_projection"]
    return (f" (before the final projection {lr_psnr(math.inf if before is None else before)} dB, correction RMS "
            f"{_fmt(sample.get('projection_correction_rms'), 4)}, "
            f"max {_fmt(sample.get('projection_correction_max'), 4)})")


def _settings_table(doc: dict[str, Any]) -> str:
    rows: list[tuple[str, Any]] = [("scale", doc["scale"]), ("output size (H, W)", doc["output_size"])]
    for group in ("model", "solver"):
        rows += [(f"{group}.{k}", v) for k, v in doc[group].items()]
    rows += [(k, doc[k]) for k in ("sigma_y", "seed", "device", "dtype")]
    for group in ("timings", "reference", "exact", "library_versions"):
        rows += [(f"{group}.{k}", v) for k, v in (doc.get(group) or {}).items()]
    rows += [("textsr_version", doc["textsr_version"]), ("created", doc["created"])]
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"
