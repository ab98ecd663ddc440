"""Procedural, exactly anti-aliased scenes: a background colour and one (or more) coloured shapes.

Every shape is a polygon (a circle is a 128-gon, a ring an outer 128-gon minus an inner one) and the
rasteriser computes, per pixel, the *exact* area of the polygon inside the pixel square (signed-area
accumulation, as in font-rs), so a pixel's coverage is its true fractional area, not a supersampled
estimate.  Images are ``(H, W, 3)`` float64 in [0, 1]; coverage masks ``(H, W)`` in [0, 1].

Geometry is chosen to make low-resolution views genuinely ambiguous:

* all shapes of one size have the **same area** (``SIZES`` gives it as a fraction of the image), and
* each shape is placed with its **area median** on the grid point: it is mirror-symmetric left/right,
  and shifted vertically so that exactly half of its area lies above the grid point.

Grid points sit at multiples of ``image_size / 4`` (16, 32, 48 px at 64 px), which are block corners
for average pooling by 2, 4, 8 and 16.  So whenever a shape fits inside the 2x2 pooling blocks around
its grid point (small shapes at 8x and 16x, large ones at 16x) each of the four blocks holds exactly a
quarter of its area, whatever the shape: the pooled images of a small circle and a small star of the
same colour are identical, and only the text can tell them apart.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache, lru_cache

import numpy as np

RGB = tuple[float, float, float]
Colour = str | Sequence[float]

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "ring", "cross")

# Named colours in [0, 1] sRGB, kept away from 0 and 1 so colour variations stay mostly in range.
PALETTE: dict[str, RGB] = {
    "red": (0.90, 0.12, 0.12),
    "orange": (0.95, 0.55, 0.10),
    "yellow": (0.95, 0.85, 0.12),
    "green": (0.12, 0.72, 0.22),
    "blue": (0.15, 0.25, 0.85),
    "purple": (0.55, 0.20, 0.75),
    "white": (0.95, 0.95, 0.95),
    "gray": (0.50, 0.50, 0.50),
    "black": (0.05, 0.05, 0.05),
}

# Object area as a fraction of the image area (at 64 px: 64, 144 and 256 square pixels).
SIZES: dict[str, float] = {"small": 1.0 / 64.0, "medium": 9.0 / 256.0, "large": 1.0 / 16.0}

GRID = 3  # grid points per side, at (i + 1) * image_size / (GRID + 1)
POSITION_NAMES: dict[tuple[int, int], str] = {
    (0, 0): "top left", (0, 1): "top", (0, 2): "top right",
    (1, 0): "left", (1, 1): "center", (1, 2): "right",
    (2, 0): "bottom left", (2, 1): "bottom", (2, 2): "bottom right",
}
POSITIONS: dict[str, tuple[int, int]] = {name: rc for rc, name in POSITION_NAMES.items()}

_CIRCLE_VERTICES = 128  # divisible by 4 and offset by half a step: symmetric under x -> -x, y -> -y
_STAR_INNER = 0.5  # inner/outer radius of the five-pointed star
_RING_INNER = 0.55  # inner/outer radius of the ring
_CROSS_ARM = 0.34  # arm half-width / arm half-length of the upright cross


# ----------------------------------------------------------------------------------------------
# names -> values


def colour_rgb(colour: Colour) -> np.ndarray:
    """A palette name or an RGB triple in [0, 1] -> float64 array (3,)."""
    if isinstance(colour, str):
        try:
            return np.array(PALETTE[colour], dtype=np.float64)
        except KeyError:
            raise ValueError(f"unknown colour {colour!r}; known colours: {', '.join(PALETTE)}") from None
    rgb = np.asarray(colour, dtype=np.float64)
    if rgb.shape != (3,) or not np.all(np.isfinite(rgb)) or rgb.min() < 0 or rgb.max() > 1:
        raise ValueError(f"a colour must be a palette name or 3 numbers in [0, 1], got {colour!r}")
    return rgb


def position_cell(position: tuple[int, int] | str) -> tuple[int, int]:
    """A grid cell ``(row, col)`` or its name ("top left", "center", ...) -> ``(row, col)``."""
    if isinstance(position, str):
        try:
            return POSITIONS[position]
        except KeyError:
            raise ValueError(f"unknown position {position!r}; known positions: {', '.join(POSITIONS)}") from None
    row, col = (int(v) for v in position)
    if not (0 <= row < GRID and 0 <= col < GRID):
        raise ValueError(f"position {position!r} is outside the {GRID}x{GRID} grid (rows and columns 0..{GRID - 1})")
    return row, col


def grid_point(position: tuple[int, int] | str, image_size: int) -> tuple[float, float]:
    """Pixel coordinates ``(x, y)`` of a grid cell's anchor (pixel i spans [i, i + 1])."""
    row, col = position_cell(position)
    step = image_size / (GRID + 1)
    return (col + 1) * step, (row + 1) * step


# ----------------------------------------------------------------------------------------------
# geometry: unit templates, equal area, area-median placement


def _regular(n: int, radius: float, phase: float) -> np.ndarray:
    t = phase + 2 * np.pi * np.arange(n) / n
    return np.stack([radius * np.cos(t), radius * np.sin(t)], axis=1)


def _templates(shape: str) -> list[np.ndarray]:
    """Polygons (x right, y down) centred near the origin; holes have the opposite orientation."""
    if shape == "circle":
        return [_regular(_CIRCLE_VERTICES, 1.0, np.pi / _CIRCLE_VERTICES)]
    if shape == "square":
        return [np.array([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])]
    if shape == "triangle":  # equilateral, apex up
        h = math.sqrt(3.0)
        return [np.array([[0.0, -2 * h / 3], [1.0, h / 3], [-1.0, h / 3]])]
    if shape == "star":  # five points, one pointing up
        t = -np.pi / 2 + np.pi * np.arange(10) / 5
        r = np.where(np.arange(10) % 2 == 0, 1.0, _STAR_INNER)
        return [np.stack([r * np.cos(t), r * np.sin(t)], axis=1)]
    if shape == "ring":
        outer = _regular(_CIRCLE_VERTICES, 1.0, np.pi / _CIRCLE_VERTICES)
        return [outer, _regular(_CIRCLE_VERTICES, _RING_INNER, np.pi / _CIRCLE_VERTICES)[::-1]]
    if shape == "cross":  # upright plus sign
        w = _CROSS_ARM
        return [np.array([[-w, -1], [w, -1], [w, -w], [1, -w], [1, w], [w, w], [w, 1], [-w, 1],
                          [-w, w], [-1, w], [-1, -w], [-w, -w]], dtype=np.float64)]
    raise ValueError(f"unknown shape {shape!r}; known shapes: {', '.join(SHAPES)}")


def _signed_area(poly: np.ndarray) -> float:
    x, y = poly[:, 0], poly[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def polygons_area(polys: Sequence[np.ndarray]) -> float:
    """Area covered by a shape given as polygons with holes in the opposite orientation."""
    return abs(sum(_signed_area(p) for p in polys))


def _clip_above(poly: np.ndarray, c: float) -> np.ndarray:
    """Sutherland-Hodgman: the part of ``poly`` with y <= c (exact area for any simple polygon)."""
    out = []
    n = len(poly)
    for i in range(n):
        p, q = poly[i], poly[(i + 1) % n]
        p_in, q_in = p[1] <= c, q[1] <= c
        if p_in:
            out.append(p)
        if p_in != q_in:
            t = (c - p[1]) / (q[1] - p[1])
            out.append(p + t * (q - p))
    return np.array(out) if len(out) >= 3 else np.zeros((0, 2))


def _area_above(polys: Sequence[np.ndarray], c: float) -> float:
    return abs(sum(_signed_area(q) for q in (_clip_above(p, c) for p in polys) if len(q)))


@cache
def _unit_geometry(shape: str) -> tuple[tuple[np.ndarray, ...], float]:
    """Template polygons with unit area whose area median (horizontal line) is y = 0, and their
    half-extent (max |x|, |y| of a vertex)."""
    polys = _templates(shape)
    k = 1.0 / math.sqrt(polygons_area(polys))
    scaled = [k * p for p in polys]
    lo = min(float(p[:, 1].min()) for p in scaled)
    hi = max(float(p[:, 1].max()) for p in scaled)
    for _ in range(200):  # bisection on the line that halves the area
        mid = 0.5 * (lo + hi)
        if _area_above(scaled, mid) < 0.5:
            lo = mid
        else:
            hi = mid
    c = 0.5 * (lo + hi)
    centred = tuple(p - np.array([0.0, c]) for p in scaled)
    for p in centred:
        p.setflags(write=False)
    extent = max(float(np.abs(p).max()) for p in centred)
    return centred, extent


def shape_polygons(shape: str, size: str, position: tuple[int, int] | str, image_size: int = 64) -> list[np.ndarray]:
    """The shape's polygons in pixel coordinates (x right, y down; pixel (i, j) spans [j, j+1] x [i, i+1])."""
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; known sizes: {', '.join(SIZES)}")
    polys, _ = _unit_geometry(shape)
    scale = math.sqrt(SIZES[size]) * image_size
    cx, cy = grid_point(position, image_size)
    return [scale * p + np.array([cx, cy]) for p in polys]


def half_extent(shape: str, size: str, image_size: int = 64) -> float:
    """Largest |dx| or |dy| of the shape from its grid point, in pixels (the shape fits in a square
    of side 2 * half_extent around the grid point)."""
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; known sizes: {', '.join(SIZES)}")
    return _unit_geometry(shape)[1] * math.sqrt(SIZES[size]) * image_size


# ----------------------------------------------------------------------------------------------
# exact-area rasterisation


def _accumulate_edge(acc: np.ndarray, p0: np.ndarray, p1: np.ndarray) -> None:
    """Add one directed edge's signed area to the accumulation buffer (port of font-rs draw_line).
    After all edges, ``cumsum(acc, axis=1)`` is the signed winding-weighted coverage of each pixel."""
    if abs(p0[1] - p1[1]) <= 1e-15:
        return
    direction = 1.0
    if p0[1] > p1[1]:
        direction, p0, p1 = -1.0, p1, p0
    x0, y0, x1, y1 = float(p0[0]), float(p0[1]), float(p1[0]), float(p1[1])
    dxdy = (x1 - x0) / (y1 - y0)
    x = x0
    for row in range(int(math.floor(y0)), int(math.ceil(y1))):
        dy = min(row + 1.0, y1) - max(float(row), y0)
        xnext = x + dxdy * dy
        d = dy * direction
        xa, xb = (x, xnext) if x < xnext else (xnext, x)
        xa_floor = math.floor(xa)
        ia = int(xa_floor)
        ib = int(math.ceil(xb))
        if ib <= ia + 1:  # the edge stays inside one pixel column in this row
            xmf = 0.5 * (x + xnext) - xa_floor
            acc[row, ia] += d - d * xmf
            acc[row, ia + 1] += d * xmf
        else:
            s = 1.0 / (xb - xa)
            xaf = xa - xa_floor
            a0 = 0.5 * s * (1.0 - xaf) ** 2
            xbf = xb - ib + 1.0
            am = 0.5 * s * xbf * xbf
            acc[row, ia] += d * a0
            if ib == ia + 2:
                acc[row, ia + 1] += d * (1.0 - a0 - am)
            else:
                a1 = s * (1.5 - xaf)
                acc[row, ia + 1] += d * (a1 - a0)
                acc[row, ia + 2:ib - 1] += d * s
                a2 = a1 + (ib - ia - 3) * s
                acc[row, ib - 1] += d * (1.0 - a2 - am)
            acc[row, ib] += d * am
        x = xnext


def coverage(polygons: Sequence[np.ndarray], height: int, width: int) -> np.ndarray:
    """Exact per-pixel area coverage ``(height, width)`` in [0, 1] of polygons (holes reversed).
    Every vertex must lie inside the canvas ``[0, width] x [0, height]``."""
    acc = np.zeros((height, width + 2), dtype=np.float64)
    for poly in polygons:
        poly = np.asarray(poly, dtype=np.float64)
        if poly[:, 0].min() < 0 or poly[:, 1].min() < 0 or poly[:, 0].max() > width or poly[:, 1].max() > height:
            raise ValueError(f"shape does not fit inside the {width}x{height} image: pick a smaller size or a "
                             "position nearer the centre")
        for i in range(len(poly)):
            _accumulate_edge(acc, poly[i], poly[(i + 1) % len(poly)])
    cov = np.abs(np.cumsum(acc, axis=1)[:, :width])
    cov[cov < 1e-12] = 0.0  # round-off of the running sum outside and inside the shape
    cov[cov > 1.0 - 1e-12] = 1.0
    return cov


@lru_cache(maxsize=512)
def _cached_mask(shape: str, size: str, position: tuple[int, int], image_size: int) -> np.ndarray:
    mask = coverage(shape_polygons(shape, size, position, image_size), image_size, image_size)
    mask.setflags(write=False)
    return mask


def shape_mask(shape: str, size: str, position: tuple[int, int] | str, image_size: int = 64) -> np.ndarray:
    """Exact coverage ``(image_size, image_size)`` float64 in [0, 1] of one shape (a fresh copy)."""
    if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 4:
        raise ValueError(f"image_size must be an integer >= 4, got {image_size!r}")
    return _cached_mask(shape, size, position_cell(position), image_size).copy()


# ----------------------------------------------------------------------------------------------
# scenes


@dataclass(frozen=True)
class SceneObject:
    """One object of a scene: shape name, colour (palette name or RGB in [0, 1]), size name, grid cell."""

    shape: str
    colour: Colour
    size: str = "small"
    position: tuple[int, int] | str = (1, 1)


@dataclass(frozen=True)
class Rendering:
    """``image`` (H, W, 3) in [0, 1]; ``mask`` (H, W): coverage by any object; ``masks``: the visible
    coverage of each object (later objects are painted over earlier ones)."""

    image: np.ndarray
    mask: np.ndarray
    masks: tuple[np.ndarray, ...]


def render_objects(background: Colour, objects: Sequence[SceneObject], *, image_size: int = 64) -> Rendering:
    """Paint ``objects`` in order over a flat ``background`` (coverage-weighted compositing)."""
    bg = colour_rgb(background)
    image = np.broadcast_to(bg, (image_size, image_size, 3)).copy()
    covers = [shape_mask(o.shape, o.size, o.position, image_size) for o in objects]
    for obj, m in zip(objects, covers):
        image = image * (1.0 - m[..., None]) + colour_rgb(obj.colour) * m[..., None]
    visible = []
    for i, m in enumerate(covers):
        v = m.copy()
        for later in covers[i + 1:]:
            v *= 1.0 - later
        visible.append(v)
    union = 1.0 - np.prod([1.0 - m for m in covers], axis=0) if covers else np.zeros((image_size, image_size))
    return Rendering(image=np.clip(image, 0.0, 1.0), mask=union, masks=tuple(visible))


def render_scene(shape: str, colour: Colour, background: Colour = "black", size: str = "small",
           position: tuple[int, int] | str = (1, 1), *, image_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """One object on a flat background -> ``(image (H, W, 3) float64 in [0, 1], mask (H, W) in [0, 1])``."""
    r = render_objects(background, [SceneObject(shape, colour, size, position)], image_size=image_size)
    return r.image, r.mask
