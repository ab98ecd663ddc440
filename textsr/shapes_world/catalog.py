"""The scene catalogue of the built-in world: one Gaussian component per scene.

Component k has mean ``mu_k`` (the rendered scene in model space [-1, 1]) and covariance

    Sigma_k = U_k U_k^T + s2 I,    U_k = [obj_std * m_k e_R, obj_std * m_k e_G, obj_std * m_k e_B,
                                          bg_std * (1 - m_k) e_R, bg_std * (1 - m_k) e_G, bg_std * (1 - m_k) e_B]

where ``m_k`` is the object's coverage mask and ``m e_c`` is the image that is ``m`` in channel c and 0
elsewhere: the object's colour and the background's colour vary independently per channel (3 + 3
directions), plus isotropic pixel noise.  Images are flattened channel-major, ``(3, H, W) -> 3*H*W``.

``U`` is stored **factored**: ``masks (K, H, W)`` plus the two stds; ``Catalog.U(index)`` (or ``Ut``) materialises
``(n, 3*H*W, 6)`` on demand.  (Dense U for the default 540 components at 64 px would be 159 MB in float32,
on top of 27 MB of means; the masks take 8.8 MB.)  The factored form is closed under average pooling:
pooling ``m e_c`` gives ``pool(m) e_c`` and ``pool(1 - m) = 1 - pool(m)``, so ``downsample`` pools the masks
and the means and is exactly the pushforward of every component through ``AvgPool(factor)``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from .prompts import Vocabulary, describe_tags
from .render import PALETTE, POSITION_NAMES, SHAPES, SIZES, colour_rgb, position_cell, render_scene, shape_mask

DEFAULT_COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow", "white")
DEFAULT_BACKGROUNDS: tuple[str, ...] = ("blue", "black")
DEFAULT_SIZES: tuple[str, ...] = ("small", "large")
DEFAULT_POSITIONS: tuple[tuple[int, int], ...] = ((1, 1), (0, 0), (0, 2), (2, 0), (2, 2))  # center + corners
OBJECT_STD = 0.08  # object colour std per channel, [-1, 1] units
BACKGROUND_STD = 0.05  # background colour std per channel, [-1, 1] units
S2 = 0.02**2  # isotropic pixel-noise variance, [-1, 1] units


@dataclass(frozen=True)
class Scene:
    """One scene: ``shape`` on a ``background``, with object ``colour``, ``size`` and grid ``position``
    (row, col).  ``tags`` and ``caption`` are derived: e.g. {"small", "red", "circle", "on blue",
    "top left"} and "a small red circle on blue, top left"."""

    shape: str
    colour: str
    background: str
    size: str
    position: tuple[int, int]
    tags: frozenset[str] = field(init=False, compare=False)
    caption: str = field(init=False, compare=False)

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}; known shapes: {', '.join(SHAPES)}")
        for what, name in (("colour", self.colour), ("background", self.background)):
            if name not in PALETTE:
                raise ValueError(f"unknown {what} {name!r}; known colours: {', '.join(PALETTE)}")
        if self.colour == self.background:
            raise ValueError(f"a {self.colour} object on a {self.background} background is invisible")
        if self.size not in SIZES:
            raise ValueError(f"unknown size {self.size!r}; known sizes: {', '.join(SIZES)}")
        object.__setattr__(self, "position", position_cell(self.position))
        tags = frozenset({self.shape, self.colour, f"on {self.background}", self.size, self.position_name})
        object.__setattr__(self, "tags", tags)
        object.__setattr__(self, "caption", "a " + describe_tags(tags))

    @property
    def position_name(self) -> str:
        return POSITION_NAMES[self.position]

    def render(self, image_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """``(image (H, W, 3) float64 in [0, 1], mask (H, W))`` of the component's mean scene."""
        return render_scene(self.shape, self.colour, self.background, self.size, self.position, image_size=image_size)


@dataclass(frozen=True, eq=False)
class Catalog:
    """K components of a Gaussian mixture over ``(3, H, W)`` images in [-1, 1] (uniform weights).

    ``means`` (K, 3, H, W) float32; ``masks`` (K, H, W) float32 object coverage (the factored U);
    covariance of component k: ``U(k) U(k)^T + s2 I`` with ``U(k)`` of shape (3*H*W, 6)."""

    scenes: tuple[Scene, ...]
    means: np.ndarray
    masks: np.ndarray
    object_std: float = OBJECT_STD
    background_std: float = BACKGROUND_STD
    s2: float = S2
    rank: ClassVar[int] = 6

    def __post_init__(self) -> None:
        k = len(self.scenes)
        if k == 0:
            raise ValueError("a catalogue needs at least one scene")
        if self.means.ndim != 4 or self.means.shape[:2] != (k, 3) or self.means.dtype != np.float32:
            raise ValueError(f"means must be float32 (K={k}, 3, H, W), got {self.means.dtype} {self.means.shape}")
        if self.masks.shape != (k, *self.means.shape[2:]) or self.masks.dtype != np.float32:
            raise ValueError(f"masks must be float32 (K, H, W) matching the means, got {self.masks.shape}")
        if not (self.object_std >= 0 and self.background_std >= 0 and self.s2 > 0):
            raise ValueError("object_std and background_std must be >= 0 and s2 > 0")

    # -- sizes -----------------------------------------------------------------------------------
    @property
    def K(self) -> int:
        return len(self.scenes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.means.shape[1:])  # type: ignore[return-value]

    @property
    def image_size(self) -> int:
        return int(self.means.shape[-1])

    @property
    def dim(self) -> int:
        return int(np.prod(self.means.shape[1:]))

    @property
    def weights(self) -> np.ndarray:
        return np.full(self.K, 1.0 / self.K)

    def nbytes(self) -> dict[str, int]:
        """Memory held (means, masks) and what a dense U would take."""
        return {"means": self.means.nbytes, "masks": self.masks.nbytes, "dense_U": self.K * self.dim * self.rank * 4}

    # -- covariance factors ---------------------------------------------------------------------
    def _masks(self, index: int | slice | Sequence[int] | np.ndarray) -> tuple[np.ndarray, bool]:
        """The masks ``(n, H, W)`` of the components ``index`` picks, and whether it picked one (an int)."""
        single = isinstance(index, (int, np.integer))
        picked: Any = [index] if single else index
        return self.masks[picked], single

    def U(self, index: int | slice | Sequence[int] | np.ndarray = slice(None)) -> np.ndarray:
        """Colour-variation directions, float32: ``(3*H*W, 6)`` for an int, else ``(n, 3*H*W, 6)``.
        Columns 0-2: object colour R, G, B (``object_std * m e_c``); 3-5: background (``background_std
        * (1 - m) e_c``)."""
        m, single = self._masks(index)
        n, (h, w) = m.shape[0], m.shape[1:]
        u = np.zeros((n, 3, h, w, self.rank), dtype=np.float32)
        for c in range(3):
            u[:, c, :, :, c] = self.object_std * m
            u[:, c, :, :, 3 + c] = self.background_std * (1.0 - m)
        flat = u.reshape(n, 3 * h * w, self.rank)
        return flat[0] if single else flat

    def Ut(self, index: int | slice | Sequence[int] | np.ndarray = slice(None)) -> np.ndarray:
        """The transposed factor, contiguous float32: ``(6, 3*H*W)`` for an int, else ``(n, 6, 3*H*W)``
        (what ``textsr.gaussian_mixture.LowRankCov.from_factors`` takes after ``torch.from_numpy``, without a copy)."""
        m, single = self._masks(index)
        n, (h, w) = m.shape[0], m.shape[1:]
        ut = np.zeros((n, self.rank, 3, h, w), dtype=np.float32)
        for c in range(3):
            ut[:, c, c] = self.object_std * m
            ut[:, 3 + c, c] = self.background_std * (1.0 - m)
        flat = ut.reshape(n, self.rank, 3 * h * w)
        return flat[0] if single else flat

    def gram(self) -> np.ndarray:
        """``U_k^T U_k`` for every component, (K, 6, 6) float64, from the masks (no dense U)."""
        m = self.masks.reshape(self.K, -1).astype(np.float64)
        so, sb = self.object_std, self.background_std
        mm, m1, oo = (m * m).sum(1), (m * (1 - m)).sum(1), ((1 - m) ** 2).sum(1)
        g = np.zeros((self.K, 6, 6))
        for c in range(3):
            g[:, c, c] = so * so * mm
            g[:, 3 + c, 3 + c] = sb * sb * oo
            g[:, c, 3 + c] = g[:, 3 + c, c] = so * sb * m1
        return g

    # -- text ----------------------------------------------------------------------------------
    @property
    def tags(self) -> tuple[frozenset[str], ...]:
        return tuple(s.tags for s in self.scenes)

    @property
    def captions(self) -> tuple[str, ...]:
        return tuple(s.caption for s in self.scenes)

    @property
    def vocabulary(self) -> Vocabulary:
        """The tag values present in this catalogue (pass it to ``parse_prompt``)."""
        def used(attr: str) -> tuple[str, ...]:  # in order of first appearance
            return tuple(dict.fromkeys(getattr(s, attr) for s in self.scenes))

        return Vocabulary(shapes=used("shape"), colours=used("colour"), backgrounds=used("background"),
                          sizes=used("size"), positions=used("position_name"))

    def select(self, tags: Iterable[str]) -> np.ndarray:
        """Indices (int64) of the components whose tags include all of ``tags`` (all for no tags)."""
        want = frozenset(tags)
        return np.array([k for k, s in enumerate(self.scenes) if want <= s.tags], dtype=np.int64)

    def subset(self, index: Sequence[int] | np.ndarray) -> Catalog:
        """The catalogue restricted to some components (e.g. those matching a prompt)."""
        index = np.asarray(index, dtype=np.int64)
        return Catalog(tuple(self.scenes[i] for i in index), self.means[index], self.masks[index],
                       self.object_std, self.background_std, self.s2)

    def describe(self) -> dict:
        v = self.vocabulary
        return {"components": self.K, "image_shape": list(self.image_shape), "rank": self.rank,
                "object_std": self.object_std, "background_std": self.background_std, "s2": self.s2,
                "shapes": list(v.shapes), "colours": list(v.colours), "backgrounds": list(v.backgrounds),
                "sizes": list(v.sizes), "positions": list(v.positions), "bytes": self.nbytes()}

    def __repr__(self) -> str:
        return f"Catalog(K={self.K}, image_shape={self.image_shape}, s2={self.s2:.3g})"


def _cells(positions: Iterable[tuple[int, int] | str]) -> tuple[tuple[int, int], ...]:
    return tuple(position_cell(p) for p in positions)


def build_catalog(size: int = 64, *, shapes: Sequence[str] = SHAPES, colours: Sequence[str] = DEFAULT_COLOURS,
                  backgrounds: Sequence[str] = DEFAULT_BACKGROUNDS, sizes: Sequence[str] = DEFAULT_SIZES,
                  positions: Sequence[tuple[int, int] | str] = DEFAULT_POSITIONS, object_std: float = OBJECT_STD,
                  background_std: float = BACKGROUND_STD, s2: float = S2) -> Catalog:
    """Every (shape, size, position, colour, background) with colour != background, rendered at
    ``size`` x ``size`` px.  Defaults: 6 shapes x 2 sizes x 5 positions x 9 colour pairs = 540."""
    cells = _cells(positions)
    for name, values in (("shapes", shapes), ("colours", colours), ("backgrounds", backgrounds),
                         ("sizes", sizes), ("positions", cells)):
        if len(values) == 0:
            raise ValueError(f"build_catalog needs at least one of {name}")
        if len(set(values)) != len(values):
            raise ValueError(f"{name} repeated: {list(values)}")
    scenes = tuple(Scene(sh, col, bg, sz, pos) for sh, sz, pos, col, bg
                   in itertools.product(shapes, sizes, cells, colours, backgrounds) if col != bg)
    if not scenes:
        raise ValueError("no scenes: every colour equals the only background; add colours or backgrounds")
    masks = np.stack([shape_mask(s.shape, s.size, s.position, size) for s in scenes])  # (K, H, W) float64
    fg = np.stack([colour_rgb(s.colour) for s in scenes])[:, :, None, None]  # (K, 3, 1, 1)
    bg = np.stack([colour_rgb(s.background) for s in scenes])[:, :, None, None]
    m = masks[:, None]
    means = 2.0 * (bg * (1.0 - m) + fg * m) - 1.0  # [0, 1] -> model space [-1, 1]
    return Catalog(scenes, means.astype(np.float32), masks.astype(np.float32), float(object_std),
                   float(background_std), float(s2))


def _pool(a: np.ndarray, factor: int) -> np.ndarray:
    *lead, h, w = a.shape
    return a.reshape(*lead, h // factor, factor, w // factor, factor).mean(axis=(-3, -1))


def downsample(catalog: Catalog, factor: int, *, s2: float | None = None) -> Catalog:
    """The catalogue at ``1/factor`` resolution by block averaging: means and masks are pooled (so
    ``downsample(c, f).U(k)`` equals ``AvgPool_f`` applied to each column of ``c.U(k)``) and the pixel noise
    becomes ``s2 / factor**2``, the exact variance of a block average of iid noise.  The result is the
    exact distribution of ``AvgPool_f(x)`` for x drawn from each component (the prior of a 16 px cascade
    stage).  ``s2`` overrides the pooled noise variance."""
    if not isinstance(factor, int) or isinstance(factor, bool) or factor < 1:
        raise ValueError(f"downsampling factor must be a positive integer, got {factor!r}")
    h, w = catalog.image_shape[1:]
    if h % factor or w % factor:
        raise ValueError(f"factor {factor} does not divide the catalogue's {h}x{w} images; "
                         f"use a divisor of {h} such as {', '.join(str(d) for d in (2, 4, 8, 16) if h % d == 0)}")
    new_s2 = catalog.s2 / factor**2 if s2 is None else float(s2)
    return Catalog(catalog.scenes, _pool(catalog.means.astype(np.float64), factor).astype(np.float32),
                   _pool(catalog.masks.astype(np.float64), factor).astype(np.float32), catalog.object_std,
                   catalog.background_std, new_s2)


def save_catalog_preview(path: str | Path, catalog: Catalog | None = None, *, indices: Sequence[int] | None = None,
                         columns: int = 12, zoom: int = 2, lowres_factor: int | None = None) -> Path:
    """Write a PNG contact sheet of catalogue means (default: one component per shape x size x position,
    colours cycling).  ``lowres_factor``: under each tile also show its average-pooled version
    (nearest-upsampled), to see what the LR input looks like."""
    from PIL import Image

    catalog = catalog if catalog is not None else build_catalog()
    if indices is None:
        groups: dict[tuple, list[int]] = {}
        for k, s in enumerate(catalog.scenes):
            groups.setdefault((s.shape, s.size, s.position), []).append(k)
        indices = [g[i % len(g)] for i, g in enumerate(groups.values())]
    tiles = (catalog.means[list(indices)].astype(np.float64) + 1.0) / 2.0  # (n, 3, H, W) in [0, 1]
    if lowres_factor:
        f = int(lowres_factor)
        low = np.repeat(np.repeat(_pool(tiles, f), f, axis=-2), f, axis=-1)
        tiles = np.concatenate([tiles, low], axis=-2)  # HR above LR
    n, _, th, tw = tiles.shape
    cols = max(1, min(columns, n))
    rows = -(-n // cols)
    gap = 2
    sheet = np.ones((rows * (th + gap) + gap, cols * (tw + gap) + gap, 3))
    for i in range(n):
        r, c = divmod(i, cols)
        y, x = gap + r * (th + gap), gap + c * (tw + gap)
        sheet[y:y + th, x:x + tw] = tiles[i].transpose(1, 2, 0)
    img = Image.fromarray(np.clip(sheet * 255.0 + 0.5, 0, 255).astype(np.uint8))
    if zoom > 1:
        img = img.resize((img.width * zoom, img.height * zoom), Image.Resampling.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path
