"""The built-in shapes world: rendering, catalogue, downsampling, prompts, templates, LR ambiguity."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from textsr.errors import UsageError
from textsr.shapes_world import (
    DEFAULT_VOCABULARY,
    PALETTE,
    SHAPES,
    SIZES,
    Catalog,
    PromptError,
    Scene,
    SceneObject,
    Vocabulary,
    build_catalog,
    downsample,
    parse_prompt,
    render_objects,
    render_scene,
    save_catalog_preview,
    shape_mask,
    template_prompts,
)
from textsr.shapes_world.ambiguity import lr_distance, shape_posterior
from textsr.shapes_world.render import coverage, half_extent, polygons_area, shape_polygons


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return build_catalog()


@pytest.fixture(scope="module")
def small_catalog() -> Catalog:
    return build_catalog(64, colours=("red", "white"), backgrounds=("blue",), positions=((1, 1), (0, 0)))


def _pool(a: np.ndarray, f: int) -> np.ndarray:
    *lead, h, w = a.shape
    return a.reshape(*lead, h // f, f, w // f, f).mean(axis=(-3, -1))


# ----------------------------------------------------------------------------------------------
# rendering


def test_render_is_anti_aliased_between_background_and_object():
    image, mask = render_scene("circle", "red", "blue", "large", (1, 1))
    assert image.shape == (64, 64, 3) and mask.shape == (64, 64)
    assert image.min() >= 0 and image.max() <= 1
    edge = (mask > 0) & (mask < 1)
    assert edge.sum() > 20  # the rim of the disc is partially covered
    fg, bg = np.array(PALETTE["red"]), np.array(PALETTE["blue"])
    lo, hi = np.minimum(fg, bg), np.maximum(fg, bg)
    assert np.all((image[edge] > lo) & (image[edge] < hi))  # strictly between, every channel
    np.testing.assert_allclose(image, bg * (1 - mask[..., None]) + fg * mask[..., None], atol=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("size", list(SIZES))
def test_coverage_is_exact_area_split_equally_around_the_grid_point(shape, size):
    mask = shape_mask(shape, size, (1, 1))
    area = SIZES[size] * 64 * 64
    assert polygons_area(shape_polygons(shape, size, (1, 1))) == pytest.approx(area, rel=1e-12)
    assert mask.sum() == pytest.approx(area, rel=1e-9)  # exact per-pixel area, not a sampled estimate
    quadrants = [mask[:32, :32].sum(), mask[:32, 32:].sum(), mask[32:, :32].sum(), mask[32:, 32:].sum()]
    np.testing.assert_allclose(quadrants, area / 4, rtol=1e-9)  # area median on the grid point


def test_shapes_differ_and_fit_their_blocks():
    masks = {s: shape_mask(s, "small", (1, 1)) for s in SHAPES}
    for a, b in itertools.combinations(SHAPES, 2):
        assert np.abs(masks[a] - masks[b]).sum() > 10, (a, b)
    for s in SHAPES:
        assert half_extent(s, "small") <= 8  # inside the 2x2 blocks of 8x pooling around the point
        assert half_extent(s, "large") <= 16  # inside the 2x2 blocks of 16x pooling


def test_render_at_16_is_the_block_average_of_render_at_64():
    for shape in SHAPES:
        hr, _ = render_scene(shape, "yellow", "black", "large", (0, 2), image_size=64)
        lr, _ = render_scene(shape, "yellow", "black", "large", (0, 2), image_size=16)
        np.testing.assert_allclose(lr, _pool(hr.transpose(2, 0, 1), 4).transpose(1, 2, 0), atol=1e-9)


def test_two_objects_paint_in_order():
    r = render_objects("black", [SceneObject("square", "red", "large", (1, 1)),
                                 SceneObject("circle", "white", "small", (1, 1))])
    assert len(r.masks) == 2
    np.testing.assert_allclose(r.masks[0] + r.masks[1], r.mask, atol=1e-12)
    assert np.allclose(r.image[32, 32], PALETTE["white"])  # the later object is on top


def test_render_errors_name_the_known_values():
    with pytest.raises(ValueError, match="known shapes"):
        render_scene("hexagon", "red")
    with pytest.raises(ValueError, match="known colours"):
        render_scene("circle", "mauve")
    with pytest.raises(ValueError, match="known sizes"):
        render_scene("circle", "red", size="huge")
    with pytest.raises(ValueError, match="outside"):
        render_scene("circle", "red", position=(3, 0))
    with pytest.raises(ValueError, match="does not fit"):
        coverage([np.array([[-1.0, 0], [4, 0], [4, 4]])], 8, 8)


# ----------------------------------------------------------------------------------------------
# catalogue


def test_catalog_shapes_dtypes_ranges(catalog):
    k = catalog.K
    assert k == 6 * 2 * 5 * 9 and k <= 600
    assert catalog.means.shape == (k, 3, 64, 64) and catalog.means.dtype == np.float32
    assert catalog.masks.shape == (k, 64, 64) and catalog.masks.dtype == np.float32
    assert -1 <= catalog.means.min() and catalog.means.max() <= 1
    assert 0 <= catalog.masks.min() and catalog.masks.max() <= 1
    assert catalog.dim == 3 * 64 * 64 and catalog.s2 == pytest.approx(0.02**2)
    sizes = catalog.nbytes()
    assert sizes["means"] + sizes["masks"] < 40e6 and sizes["means"] + sizes["dense_U"] <= 200e6
    u = catalog.U(slice(3, 5))
    assert u.shape == (2, catalog.dim, 6) and u.dtype == np.float32
    assert catalog.U(3).shape == (catalog.dim, 6)
    ut = catalog.Ut(slice(3, 5))
    assert ut.flags["C_CONTIGUOUS"] and ut.dtype == np.float32
    np.testing.assert_array_equal(ut, u.transpose(0, 2, 1))
    np.testing.assert_array_equal(catalog.Ut(4), u[1].T)


def test_U_columns_are_object_and_background_colour_directions(catalog):
    k = 17
    u = catalog.U(k).reshape(3, 64, 64, 6)
    m = catalog.masks[k]
    for c in range(3):
        for other in range(3):
            expect_obj = catalog.object_std * m if c == other else 0 * m
            expect_bg = catalog.background_std * (1 - m) if c == other else 0 * m
            np.testing.assert_allclose(u[c, :, :, other], expect_obj, atol=1e-7)
            np.testing.assert_allclose(u[c, :, :, 3 + other], expect_bg, atol=1e-7)
    dense = catalog.U(slice(0, 4)).astype(np.float64)
    np.testing.assert_allclose(catalog.gram()[:4], np.einsum("kdi,kdj->kij", dense, dense), rtol=1e-5, atol=1e-8)


def test_means_are_rendered_scenes_in_model_space(catalog):
    for k in (0, 101, catalog.K - 1):
        image, mask = catalog.scenes[k].render()
        np.testing.assert_allclose(catalog.means[k], 2 * image.transpose(2, 0, 1) - 1, atol=1e-6)
        np.testing.assert_allclose(catalog.masks[k], mask, atol=1e-6)


def test_tags_and_captions_are_consistent(catalog):
    vocab = catalog.vocabulary
    assert vocab.shapes == SHAPES and vocab.backgrounds == ("blue", "black")
    assert vocab.positions == ("center", "top left", "top right", "bottom left", "bottom right")
    for s in catalog.scenes:
        assert s.colour != s.background
        assert s.tags == {s.shape, s.colour, f"on {s.background}", s.size, s.position_name}
        assert s.caption == f"a {s.size} {s.colour} {s.shape} on {s.background}, {s.position_name}"
        assert parse_prompt(s.caption, vocab).tags == s.tags  # captions read back to their own tags
    assert len(set(catalog.captions)) == catalog.K
    stars = catalog.select({"star", "on black"})
    assert len(stars) == 2 * 5 * 5 and all(catalog.scenes[i].shape == "star" for i in stars)
    assert len(catalog.select(set())) == catalog.K
    assert Scene("ring", "red", "blue", "small", "top left").position == (0, 0)
    with pytest.raises(ValueError, match="invisible"):
        Scene("ring", "red", "red", "small", (0, 0))


def test_downsample_is_block_averaging_of_means_and_U(small_catalog):
    for f in (2, 4, 8, 16):
        low = downsample(small_catalog, f)
        assert low.image_shape == (3, 64 // f, 64 // f)
        assert low.s2 == pytest.approx(small_catalog.s2 / f**2)
        np.testing.assert_allclose(low.means, _pool(small_catalog.means.astype(np.float64), f), atol=1e-6)
        for k in (0, small_catalog.K - 1):
            hr_u = small_catalog.U(k).reshape(3, 64, 64, 6).transpose(3, 0, 1, 2)
            pooled = _pool(hr_u.astype(np.float64), f).transpose(1, 2, 3, 0).reshape(-1, 6)
            np.testing.assert_allclose(low.U(k), pooled, atol=1e-6)
    direct = build_catalog(16, colours=("red", "white"), backgrounds=("blue",), positions=((1, 1), (0, 0)))
    np.testing.assert_allclose(direct.means, downsample(small_catalog, 4).means, atol=1e-5)
    with pytest.raises(ValueError, match="does not divide"):
        downsample(small_catalog, 3)


def test_preview_is_a_png(tmp_path, small_catalog):
    path = save_catalog_preview(tmp_path / "sheet.png", small_catalog, columns=4, zoom=1, lowres_factor=8)
    img = Image.open(path)
    assert img.mode == "RGB" and img.width == 4 * 66 + 2 and img.height > 2 * 64


# ----------------------------------------------------------------------------------------------
# LR ambiguity: the reason the text matters


def test_small_shapes_are_ambiguous_at_8x_and_16x_but_not_at_4x(small_catalog):
    idx = {(s.shape, s.size, s.position, s.colour): k for k, s in enumerate(small_catalog.scenes)}
    circle, square = idx["circle", "small", (1, 1), "red"], idx["square", "small", (1, 1), "red"]
    lr = downsample(small_catalog, 8).means
    np.testing.assert_allclose(lr[circle], lr[square], atol=1e-6)  # identical 8x8 LR images
    assert lr_distance(small_catalog, circle, square, 8) < 1.0  # within the colour/noise spread
    assert lr_distance(small_catalog, circle, square, 16) < 1.0
    assert lr_distance(small_catalog, circle, square, 4) > 10.0
    assert lr_distance(small_catalog, circle, square, 1) > 10.0
    big_c, big_s = idx["circle", "large", (1, 1), "red"], idx["square", "large", (1, 1), "red"]
    assert lr_distance(small_catalog, big_c, big_s, 8) > 10.0  # large shapes show at 8x ...
    assert lr_distance(small_catalog, big_c, big_s, 16) < 1.0  # ... but not at 16x


def test_exact_posterior_spreads_over_shapes_at_8x(small_catalog):
    k = int(small_catalog.select({"star", "small", "red", "center"})[0])
    y8 = _pool(small_catalog.means[k].astype(np.float64), 8)
    post = shape_posterior(small_catalog, y8, 8)
    assert all(p == pytest.approx(1 / 6, abs=1e-3) for p in post.values())
    post4 = shape_posterior(small_catalog, _pool(small_catalog.means[k].astype(np.float64), 4), 4)
    assert post4["star"] > 0.999


# ----------------------------------------------------------------------------------------------
# prompts


@pytest.mark.parametrize("text, tags", [
    ("a red circle on blue", {"red", "circle", "on blue"}),
    ("A crimson DISC on a navy background", {"red", "circle", "on blue"}),
    ("scarlet disk", {"red", "circle"}),
    ("a round thing", {"circle"}),
    ("box", {"square"}),
    ("a plus sign", {"cross"}),
    ("a donut", {"ring"}),
    ("annulus", {"ring"}),
    ("triangular", {"triangle"}),
    ("big stars", {"large", "star"}),
    ("tiny crosses", {"small", "cross"}),
    ("blue background with a yellow triangle", {"on blue", "yellow", "triangle"}),
    ("a white ring, black background", {"white", "ring", "on black"}),
    ("in the upper-left corner", {"top left"}),
    ("left top", {"top left"}),
    ("bottom right", {"bottom right"}),
    ("in the centre", {"center"}),
    ("a photo of a green star in the middle", {"green", "star", "center"}),
])
def test_parse_prompt_synonyms(text, tags):
    parsed = parse_prompt(text)
    assert parsed.tags == frozenset(tags) and parsed.unknown_words == []


def test_parse_prompt_empty_is_unconditional():
    for text in ("", "   ", "a photo of"):
        parsed = parse_prompt(text)
        assert parsed.tags == frozenset() and parsed.unknown_words == [] and parsed.normalized == ""


def test_parse_prompt_reports_unknown_words_with_notes():
    parsed = parse_prompt("a fluffy red circel")
    assert parsed.tags == {"red"}
    assert parsed.unknown_words == ["fluffy", "circel"]
    assert len(parsed.notes) == 2 and "did you mean 'circle'" in parsed.notes[1]


def test_parse_prompt_reports_values_this_catalogue_lacks(catalog):
    parsed = parse_prompt("a purple star at the top", catalog.vocabulary)
    assert parsed.tags == {"star"}
    assert parsed.unknown_words == ["purple", "top"]
    assert "red, green, blue, yellow, white" in parsed.notes[0]
    assert parse_prompt("a purple star at the top").tags == {"purple", "star", "top"}  # full vocabulary


def test_parse_prompt_normalized():
    assert parse_prompt("on navy, a tiny scarlet disc, upper left").normalized == "small red circle on blue, top left"
    assert parse_prompt("on black").normalized == "on black"


@pytest.mark.parametrize("text, match", [
    ("a circle and a square", "one object"),
    ("a red green star", "two object colours"),
    ("a star on red and blue background", "two background colours"),
    ("small big ring", "two sizes"),
    ("top bottom", "two vertical"),
    ("two circles", "several objects"),
    ("a blue circle on blue", "invisible"),
])
def test_parse_prompt_conflicts_explain_the_world(text, match):
    with pytest.raises(PromptError, match=match):
        parse_prompt(text)
    assert issubclass(PromptError, UsageError)


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=40))
def test_parse_prompt_never_crashes_and_drops_nothing_silently(text):
    try:
        parsed = parse_prompt(text)
    except PromptError:
        return
    assert parsed.tags <= DEFAULT_VOCABULARY.tags
    assert len(parsed.notes) == len(parsed.unknown_words)


def test_vocabulary_validates():
    with pytest.raises(ValueError, match="known shapes"):
        Vocabulary(shapes=("hexagon",))
    assert DEFAULT_VOCABULARY.category("on blue") == "background"
    assert DEFAULT_VOCABULARY.category("top left") == "position"


def test_template_prompts_expand_and_validate():
    assert template_prompts("a {shape} on blue", "circle,star,ring") == [
        "a circle on blue", "a star on blue", "a ring on blue"]
    assert template_prompts("a {} {{braces}}", [" big ", "small"]) == ["a big {braces}", "a small {braces}"]
    assert template_prompts("{c} circle, {c}", "red") == ["red circle, red"]
    for template, values, match in [
        ("a circle on blue", "x", "no slot"),
        ("a {shape}", "", "no template values"),
        ("a {shape}", " , ", "no template values"),
        ("a {shape}", "circle,,star", "empty template value"),
        ("a {shape} on {bg}", "x", "different slots"),
        ("a {shape", "x", "malformed"),
        ("a {shape}", "star,star", "repeated"),
        ("", "x", "empty"),
    ]:
        with pytest.raises(PromptError, match=match):
            template_prompts(template, values)
