"""Image loading, validation and saving; [0,1] <-> [-1,1] conversion.

Everything here is plain numpy + Pillow; torch is imported lazily (only by ``to_model`` /
``from_model``), so importing this module stays cheap.

Conventions:
  * an *array* is float32 (H, W, C) in [0, 1] (C = 3 for everything that comes out of
    ``load_image``), or uint8 (H, W, C) in [0, 255] where a function says so;
  * a *model tensor* is torch (N, C, H, W) in [-1, 1].

Every user-facing failure raises ``InputImageError`` / ``UsageError`` with a message that names
the problem and the fix; programming errors (wrong dtype passed by our own code) raise
``ValueError``/``TypeError``.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from textsr.display import terminal
from textsr.errors import InputImageError, RuntimeFailure, UsageError

if TYPE_CHECKING:  # pragma: no cover
    import torch

DEFAULT_MAX_PIXELS = 4_000_000
ALLOWED_SCALES = range(2, 33)

# ITU-R 601-2 luma, the weights Pillow uses for RGB -> "L".
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)

# EXIF Orientation tag (0x0112) value -> what ImageOps.exif_transpose does to undo it.
_ORIENTATION = {
    2: "mirrored left-right",
    3: "rotated 180 degrees",
    4: "mirrored top-bottom",
    5: "transposed (mirror + rotate 90)",
    6: "rotated 90 degrees clockwise",
    7: "transversed (mirror + rotate 270)",
    8: "rotated 90 degrees counter-clockwise",
}


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadedImage:
    """A decoded input image plus a record of every conversion applied to it.

    ``array`` is always float32 (H, W, 3) in [0, 1]: the models take RGB, so grayscale input is
    expanded to three equal channels and flagged with ``grayscale=True`` (use ``to_grayscale``
    to convert outputs back). ``original_size`` is (height, width) as stored in the file, i.e.
    before EXIF orientation was applied; ``array.shape[:2]`` is the size after it.
    """

    array: np.ndarray
    path: Path
    format: str | None
    mode: str
    original_size: tuple[int, int]
    grayscale: bool
    notes: tuple[str, ...]

    @property
    def height(self) -> int:
        return int(self.array.shape[0])

    @property
    def width(self) -> int:
        return int(self.array.shape[1])

    @property
    def channels(self) -> int:
        return int(self.array.shape[2])


def load_image(path: str | os.PathLike[str], *, max_pixels: int = DEFAULT_MAX_PIXELS) -> LoadedImage:
    """Read ``path`` (PNG, JPEG, WebP, TIFF, BMP, GIF, ...) into a float32 RGB array in [0, 1].

    Handled and recorded in ``notes``: EXIF orientation, palette, alpha (composited on *white*),
    1-bit / grayscale (expanded to RGB, ``grayscale=True``), 16-bit and 32-bit integer and float
    images, CMYK and other colour spaces, animated images (first frame), embedded ICC profiles
    (ignored; pixels are taken as sRGB).

    Raises ``InputImageError`` for a missing path, a folder, an empty, unreadable, corrupt,
    truncated or non-image file, a zero-size image, and an image with more than ``max_pixels``
    pixels. Pillow's own decompression-bomb guard stays on; its error and warning are turned
    into the same too-large message.
    """
    p = Path(path)
    _check_file(p)
    notes: list[str] = []
    try:
        with warnings.catch_warnings():
            # Pillow warns (and above 2x errors) for images over Image.MAX_IMAGE_PIXELS.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(p) as im:
                fmt, mode = im.format, im.mode
                height, width = im.height, im.width
                _check_size(p, width, height, max_pixels)
                notes.extend(_frame_notes(im, p))
                im.load()
                array, grayscale = _pil_to_rgb(im, notes)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise InputImageError(
            f"{terminal(p)}: the image is too large for Pillow's decompression-bomb guard ({e}). "
            f"Downscale it (at most {max_pixels:,} pixels) and try again."
        ) from None
    except UnidentifiedImageError:
        raise InputImageError(
            f"{terminal(p)}: not an image Pillow can read (corrupt, zero width/height, or an unsupported "
            "format). Use a PNG, JPEG, WebP, TIFF or BMP file."
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        # Pillow reports truncated/corrupt data as OSError ("image file is truncated"),
        # SyntaxError (broken headers) or ValueError/EOFError (bad tiles).
        what = "truncated" if "truncated" in str(e).lower() else "corrupt or unreadable"
        raise InputImageError(
            f"{terminal(p)}: the image file is {what} ({type(e).__name__}: {e}). "
            "Re-export or re-download it, e.g. save it again as PNG."
        ) from None
    return LoadedImage(
        array=array,
        path=p,
        format=fmt,
        mode=mode,
        original_size=(height, width),
        grayscale=grayscale,
        notes=tuple(notes),
    )


def pil_to_array(im: Image.Image) -> tuple[np.ndarray, list[str]]:
    """An in-memory PIL image -> (float32 (H, W, 3) in [0, 1], notes), converted as in
    ``load_image`` (EXIF orientation, palette, alpha on white, grayscale -> RGB, 16-bit...)."""
    notes: list[str] = []
    if im.width <= 0 or im.height <= 0:
        raise InputImageError(f"the image is empty ({im.width}x{im.height} pixels). Use a non-empty image.")
    array, _ = _pil_to_rgb(im, notes)
    return array, notes


def _pil_to_rgb(im: Image.Image, notes: list[str]) -> tuple[np.ndarray, bool]:
    return _to_rgb_array(_apply_orientation(im, notes), notes)


def _check_file(p: Path) -> None:
    if not p.exists():
        hint = f" (the folder {p.parent} does not exist either)" if not p.parent.exists() else ""
        raise InputImageError(f"{terminal(p)}: no such file{hint}. Check the path to the input image.")
    if p.is_dir():
        raise InputImageError(f"{terminal(p)}: is a folder, not an image file. Give the path of one image.")
    if not os.access(p, os.R_OK):
        raise InputImageError(f"{terminal(p)}: permission denied. Make the file readable or copy it elsewhere.")
    if p.stat().st_size == 0:
        raise InputImageError(f"{terminal(p)}: the file is empty (0 bytes). Re-export or re-download the image.")


def _check_size(p: Path, width: int, height: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise InputImageError(f"{terminal(p)}: the image is empty ({width}x{height} pixels). Use a non-empty image.")
    if width * height > max_pixels:
        raise InputImageError(
            f"{terminal(p)}: the image is {width}x{height} = {width * height:,} pixels, more than the limit "
            f"of {max_pixels:,}. This tool super-resolves *low*-resolution images: downscale or "
            "crop the input (or raise max_pixels if you really mean it)."
        )


def _frame_notes(im: Image.Image, p: Path) -> list[str]:
    notes = []
    n_frames = getattr(im, "n_frames", 1)
    if getattr(im, "is_animated", False) or n_frames > 1:
        notes.append(f"animated/multi-frame image ({n_frames} frames): using the first frame only")
    if im.info.get("icc_profile"):
        notes.append("embedded ICC colour profile ignored: pixel values are used as sRGB")
    if im.format == "PNG" and _png_bit_depth(p) == 16 and im.mode in ("RGB", "RGBA", "LA"):
        notes.append("16-bit colour PNG: Pillow decodes it at 8 bits per channel (precision reduced)")
    return notes


def _png_bit_depth(p: Path) -> int | None:
    """Bit depth from the PNG IHDR chunk (Pillow does not expose it for colour PNGs)."""
    with open(p, "rb") as f:
        head = f.read(26)
    if len(head) < 26 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    return head[24]


def _apply_orientation(im: Image.Image, notes: list[str]) -> Image.Image:
    orientation = im.getexif().get(0x0112)
    if orientation in _ORIENTATION:
        im = ImageOps.exif_transpose(im)
        notes.append(f"applied EXIF orientation {orientation}: image {_ORIENTATION[orientation]}")
    return im


def _to_rgb_array(im: Image.Image, notes: list[str]) -> tuple[np.ndarray, bool]:
    """Any Pillow mode -> (float32 (H, W, 3) in [0, 1], was_grayscale)."""
    mode = im.mode
    if mode == "P" or mode == "PA":
        has_alpha = mode == "PA" or "transparency" in im.info
        im = im.convert("RGBA" if has_alpha else "RGB")
        notes.append("converted palette image to RGB")
        mode = im.mode
    if mode == "1":
        im = im.convert("L")
        notes.append("1-bit image converted to 8-bit grayscale")
        mode = "L"
    if mode in ("RGBa", "La"):  # premultiplied alpha
        im = im.convert("RGBA" if mode == "RGBa" else "LA")
        mode = im.mode

    if mode in ("RGBA", "LA"):
        a = np.asarray(im, dtype=np.float32) / 255.0
        color, alpha = a[..., :-1], a[..., -1:]
        out = color * alpha + (1.0 - alpha)  # composite on white
        notes.append("dropped alpha channel by compositing on a white background")
        return _gray_or_rgb(out, notes)
    if mode == "RGB":
        return np.asarray(im, dtype=np.float32) / 255.0, False
    if mode == "L":
        return _gray_or_rgb(np.asarray(im, dtype=np.float32)[..., None] / 255.0, notes)
    if mode.startswith("I;16"):
        a = np.asarray(im).astype(np.float32) / 65535.0
        notes.append("16-bit image scaled to [0,1] (divided by 65535)")
        return _gray_or_rgb(a[..., None], notes)
    if mode in ("I", "F"):
        return _gray_or_rgb(_scale_wide(np.asarray(im), mode, notes)[..., None], notes)
    # CMYK, YCbCr, LAB, HSV, ...: Pillow knows how to get RGB.
    notes.append(f"converted {mode} image to RGB")
    return np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0, False


def _scale_wide(a: np.ndarray, mode: str, notes: list[str]) -> np.ndarray:
    """32-bit integer ("I") or float ("F") grayscale -> [0, 1], saying how."""
    a = a.astype(np.float64)
    if not np.isfinite(a).all():
        raise InputImageError("the image contains NaN or infinite pixel values. Re-export it as PNG.")
    lo, hi = float(a.min()), float(a.max())
    if mode == "F" and lo >= 0.0 and hi <= 1.0:
        notes.append("32-bit float image used as is (values already in [0,1])")
        return a.astype(np.float32)
    if mode == "I" and lo >= 0 and hi <= 65535:
        notes.append("16-bit image scaled to [0,1] (32-bit integer mode, divided by 65535)")
        return (a / 65535.0).astype(np.float32)
    span = hi - lo if hi > lo else 1.0
    notes.append(f"{'float' if mode == 'F' else '32-bit integer'} image min-max scaled from [{lo:g}, {hi:g}] to [0,1]")
    return ((a - lo) / span).astype(np.float32)


def _gray_or_rgb(a: np.ndarray, notes: list[str]) -> tuple[np.ndarray, bool]:
    if a.shape[-1] == 1:
        notes.append("grayscale image expanded to 3 equal RGB channels (grayscale=True)")
        return np.repeat(a, 3, axis=-1).astype(np.float32), True
    return a.astype(np.float32), False


def to_grayscale(array: np.ndarray) -> np.ndarray:
    """(H, W, 3) float -> (H, W, 1) luma with Pillow's "L" weights; (H, W, 1) passes through."""
    if array.ndim != 3 or array.shape[-1] not in (1, 3):
        raise ValueError(f"expected an (H, W, 1) or (H, W, 3) array, got shape {array.shape}")
    if array.shape[-1] == 1:
        return array
    return (array.astype(np.float32) @ _LUMA)[..., None]


# --------------------------------------------------------------------------------------------
# Scale checks
# --------------------------------------------------------------------------------------------


def check_scale(height: int, width: int, scale: Any, allowed: range = ALLOWED_SCALES) -> int:
    """Validate ``scale`` and that a ``height`` x ``width`` image can be downscaled by it.

    Used where an image is *reduced* by ``scale`` (simulation mode: HR reference -> LR), which
    needs both sides divisible by it. Returns ``scale`` as an int; raises ``UsageError`` that
    names the allowed scales, or the crop that would fit.
    """
    s = _as_int_scale(scale, allowed)
    if height % s == 0 and width % s == 0:
        return s
    h2, w2 = (height // s) * s, (width // s) * s
    if h2 == 0 or w2 == 0:
        raise InputImageError(
            f"scale {s} needs height and width divisible by {s}, and the image ({width}x{height}) "
            f"is smaller than {s} pixels on one side. Use a larger image or a smaller scale."
        )
    good = [k for k in allowed if height % k == 0 and width % k == 0]
    also = f" Scales that fit {width}x{height} as is: {_ranges(good)}." if good else ""
    raise InputImageError(
        f"scale {s} needs height and width divisible by {s}; the image is {width}x{height} "
        f"(width x height) -> crop it to {w2}x{h2} (textsr.io.crop_to_multiple does a centre crop).{also}"
    )


def _as_int_scale(scale: Any, allowed: range) -> int:
    bad = f"scale must be a whole number in {allowed.start}..{allowed.stop - 1}, got {scale!r}"
    if isinstance(scale, bool):
        raise UsageError(bad)
    if isinstance(scale, str):
        text = scale.strip().lower().lstrip("x").rstrip("x")
        if not text.isdigit():
            raise UsageError(bad + " (write e.g. 8)")
        scale = int(text)
    if isinstance(scale, numbers.Integral):
        s = int(scale)
    elif isinstance(scale, numbers.Real) and math.isfinite(scale) and float(scale).is_integer():
        s = int(float(scale))
    else:
        raise UsageError(bad + " (fractional scales are not supported)")
    if s not in allowed:
        raise UsageError(bad)
    return s


def _ranges(values: list[int]) -> str:
    return ", ".join(str(v) for v in values) if len(values) <= 8 else f"{values[0]}, {values[1]}, ..., {values[-1]}"


def crop_to_multiple(array: np.ndarray, multiple: int) -> np.ndarray:
    """Centre-crop (H, W, ...) so both sides are divisible by ``multiple``."""
    h, w = array.shape[:2]
    h2, w2 = (h // multiple) * multiple, (w // multiple) * multiple
    top, left = (h - h2) // 2, (w - w2) // 2
    return array[top : top + h2, left : left + w2]


# --------------------------------------------------------------------------------------------
# Array <-> model tensor, resizing
# --------------------------------------------------------------------------------------------


def to_model(array: np.ndarray) -> torch.Tensor:
    """(H, W, C) or (H, W) image, float in [0, 1] or uint8 -> float32 torch (1, C, H, W) in [-1, 1]."""
    import torch

    a = _as_float01(array)
    return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))[None].mul(2.0).sub(1.0)


def from_model_float(tensor: torch.Tensor) -> np.ndarray:
    """torch (N, C, H, W) or (C, H, W) in [-1, 1] -> float32 numpy (N, H, W, C) in [0, 1] (clipped)."""
    t = tensor.detach()
    if t.ndim == 3:
        t = t[None]
    if t.ndim != 4:
        raise ValueError(f"expected a (N, C, H, W) or (C, H, W) tensor, got shape {tuple(t.shape)}")
    a = t.float().cpu().numpy()
    if not np.isfinite(a).all():
        raise RuntimeFailure(
            "the model produced NaN or infinite pixel values. Try dtype float32, fewer steps "
            "or a smaller guidance scale."
        )
    return np.clip((a.transpose(0, 2, 3, 1) + 1.0) / 2.0, 0.0, 1.0).astype(np.float32)


def from_model(tensor: torch.Tensor) -> np.ndarray:
    """torch (N, C, H, W) or (C, H, W) in [-1, 1] -> uint8 numpy (N, H, W, C), rounded."""
    return to_uint8(from_model_float(tensor))


def to_uint8(array: np.ndarray) -> np.ndarray:
    """Float in [0, 1] (clipped) -> uint8 with round-half-to-even; uint8 passes through."""
    if array.dtype == np.uint8:
        return array
    if not np.issubdtype(array.dtype, np.floating):
        raise TypeError(f"expected a float array in [0, 1] or uint8, got dtype {array.dtype}")
    return np.rint(np.clip(array, 0.0, 1.0) * 255.0).astype(np.uint8)


def _as_float01(array: np.ndarray) -> np.ndarray:
    a = np.asarray(array)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3:
        raise ValueError(f"expected an (H, W) or (H, W, C) image array, got shape {a.shape}")
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255.0
    if not np.issubdtype(a.dtype, np.floating):
        raise TypeError(f"expected a float array in [0, 1] or uint8, got dtype {a.dtype}")
    return a.astype(np.float32, copy=False)


def resize_nearest(array: np.ndarray, scale: int) -> np.ndarray:
    """Integer nearest-neighbour upscaling of (H, W, C) by ``scale`` (exact pixel replication)."""
    a = _as_float01(array)
    return np.repeat(np.repeat(a, scale, axis=0), scale, axis=1)


def resize_bicubic(array: np.ndarray, scale: int) -> np.ndarray:
    """Bicubic upscaling of (H, W, C) float in [0, 1] by ``scale`` with Pillow, per channel in
    32-bit float (no 8-bit quantisation), clipped to [0, 1]."""
    a = _as_float01(array)
    h, w, c = a.shape
    size = (w * scale, h * scale)
    chans = [
        np.asarray(Image.fromarray(np.ascontiguousarray(a[..., k])).resize(size, Image.Resampling.BICUBIC))
        for k in range(c)
    ]
    return np.clip(np.stack(chans, axis=-1), 0.0, 1.0).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Atomic writes
# --------------------------------------------------------------------------------------------


@contextmanager
def _atomic_file(path: str | os.PathLike[str]) -> Iterator[IO[bytes]]:
    """Yield a binary temp file next to ``path``; on success it replaces ``path`` atomically,
    on any exception it is deleted and an existing ``path`` is left untouched."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    mode = target.stat().st_mode & 0o777 if target.exists() else 0o644
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_bytes_atomic(data: bytes, path: str | os.PathLike[str]) -> Path:
    with _atomic_file(path) as f:
        f.write(data)
    return Path(path)


def _write_atomic_with(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None]) -> Path:
    with _atomic_file(path) as f:
        write(f)
    return Path(path)


def write_json_atomic(obj: Any, path: str | os.PathLike[str]) -> Path:
    """Write ``obj`` as indented UTF-8 JSON. numpy scalars/arrays and Paths are converted;
    NaN/inf are rejected (``ValueError``) because they are not valid JSON."""
    return write_bytes_atomic(json_bytes(obj), path)


def strict_json_loads(text: str) -> Any:
    """``json.loads`` that refuses a key given twice in one object (plain ``json`` keeps the last one
    silently) with a ``UsageError`` naming the key."""

    def pairs(items: list[tuple[str, Any]]) -> dict:
        out: dict[str, Any] = {}
        for k, v in items:
            if k in out:
                raise UsageError(f"the key {k!r} is given twice in one object; give each key once")
            out[k] = v
        return out

    return json.loads(text, object_pairs_hook=pairs)


def json_default(o: Any) -> Any:
    """``json.dumps(default=...)`` hook: numpy scalars/arrays -> Python, paths -> str."""
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, os.PathLike):
        return os.fspath(o)
    raise TypeError(f"cannot write {type(o).__name__} to JSON: {o!r}")


def json_bytes(obj: Any) -> bytes:
    """``obj`` as indented UTF-8 JSON bytes (as ``write_json_atomic`` writes it)."""
    text = json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False, default=json_default)
    return (text + "\n").encode("utf-8")


def png_bytes(image: np.ndarray | Image.Image) -> bytes:
    """A PIL image or an (H, W), (H, W, 1|3|4) array (float in [0, 1] or uint8) encoded as PNG."""
    import io as _io

    im = image if isinstance(image, Image.Image) else _array_to_pil(image)
    buf = _io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def save_png_atomic(image: np.ndarray | Image.Image, path: str | os.PathLike[str]) -> Path:
    """Save a PIL image or an (H, W), (H, W, 1|3|4) array (float in [0, 1] or uint8) as PNG."""
    im = image if isinstance(image, Image.Image) else _array_to_pil(image)
    return _write_atomic_with(path, lambda f: im.save(f, format="PNG"))


def _array_to_pil(array: np.ndarray) -> Image.Image:
    a = to_uint8(np.asarray(array))
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 2 or (a.ndim == 3 and a.shape[-1] in (3, 4)):
        return Image.fromarray(np.ascontiguousarray(a))  # L, RGB or RGBA from the shape
    raise ValueError(f"cannot save an array of shape {a.shape} as PNG: expected (H, W) or (H, W, 1|3|4)")
