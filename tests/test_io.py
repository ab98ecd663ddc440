"""textsr.io: every supported input format loads with the right shape and notes, every bad input
gives a clear InputImageError, scale checks, model conversions and atomic writes."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms

from textsr import io
from textsr.errors import InputImageError, RuntimeFailure, UsageError

H, W = 20, 30


def _rgb(h: int = H, w: int = W) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), np.full_like(x, 128)], -1).astype(np.uint8)


def _save(tmp_path: Path, im: Image.Image, name: str, **kw) -> Path:
    p = tmp_path / name
    im.save(p, **kw)
    return p


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def _png16_rgb(a: np.ndarray) -> bytes:
    """A 16-bit-per-channel RGB PNG (Pillow cannot write one)."""
    h, w, _ = a.shape
    raw = b"".join(b"\x00" + a[y].astype(">u2").tobytes() for y in range(h))
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(raw))
            + _png_chunk(b"IEND", b""))


# ------------------------------------------------------------------------------------------
# Formats and modes
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fmt, name, exact",
    [("PNG", "a.png", True), ("BMP", "a.bmp", True), ("TIFF", "a.tif", True), ("WEBP", "a.webp", False),
     ("JPEG", "a.jpg", False)],
)
def test_rgb_formats_load(tmp_path, fmt, name, exact):
    a = _rgb()
    kw = {"lossless": True} if fmt == "WEBP" else {}
    li = io.load_image(_save(tmp_path, Image.fromarray(a), name, **kw))
    assert li.array.shape == (H, W, 3) and li.array.dtype == np.float32
    assert 0.0 <= li.array.min() and li.array.max() <= 1.0
    assert li.format == fmt and li.mode == "RGB" and not li.grayscale and li.notes == ()
    assert (li.height, li.width, li.channels) == (H, W, 3) and li.original_size == (H, W)
    err = np.abs(li.array - a / 255.0).max()
    assert err < 1e-6 if exact or fmt == "WEBP" else err < 0.1


def test_grayscale_is_expanded_and_flagged(tmp_path):
    g = _rgb()[..., 0]
    li = io.load_image(_save(tmp_path, Image.fromarray(g), "g.png"))
    assert li.array.shape == (H, W, 3) and li.grayscale and li.mode == "L"
    assert any("grayscale" in n for n in li.notes)
    np.testing.assert_allclose(li.array[..., 0], g / 255.0, atol=1e-6)
    assert np.array_equal(li.array[..., 0], li.array[..., 2])
    np.testing.assert_allclose(io.to_grayscale(li.array)[..., 0], li.array[..., 0], atol=1e-5)


def test_one_bit_image(tmp_path):
    im = Image.fromarray(_rgb()[..., 0] > 127)
    li = io.load_image(_save(tmp_path, im, "b.png"))
    assert li.array.shape == (H, W, 3) and li.grayscale
    assert any("1-bit" in n for n in li.notes)
    assert set(np.unique(li.array)) <= {0.0, 1.0}


def test_palette_image(tmp_path):
    im = Image.fromarray(_rgb()).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    li = io.load_image(_save(tmp_path, im, "p.png"))
    assert li.array.shape == (H, W, 3) and li.mode == "P" and not li.grayscale
    assert "converted palette image to RGB" in li.notes
    np.testing.assert_allclose(li.array, np.asarray(im.convert("RGB")) / 255.0, atol=1e-6)


def test_palette_with_transparency_composites_on_white(tmp_path):
    im = Image.new("P", (W, H), 1)
    im.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    im.paste(0, (0, 0, 10, H))
    p = tmp_path / "pt.png"
    im.save(p, transparency=0)
    li = io.load_image(p)
    assert any("palette" in n for n in li.notes) and any("white" in n for n in li.notes)
    np.testing.assert_allclose(li.array[0, 0], [1, 1, 1])  # transparent -> white
    np.testing.assert_allclose(li.array[0, -1], [1, 0, 0])  # opaque red stays red


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_is_composited_on_white(tmp_path, mode):
    a = np.zeros((H, W, 4), np.uint8)
    a[..., 0] = 200
    a[:, :10, 3] = 0  # transparent
    a[:, 10:20, 3] = 255  # opaque
    a[:, 20:, 3] = 128  # half
    im = Image.fromarray(a).convert(mode)
    li = io.load_image(_save(tmp_path, im, "a.png"))
    assert li.array.shape == (H, W, 3) and li.grayscale == (mode == "LA")
    assert "dropped alpha channel by compositing on a white background" in li.notes
    np.testing.assert_allclose(li.array[0, 0], [1, 1, 1], atol=1e-6)
    opaque = li.array[0, 15]
    assert opaque.max() < 1.0
    assert np.all(li.array[0, 25] > opaque - 1e-6)  # half transparent is lighter


@pytest.mark.parametrize("fmt, name", [("PNG", "g16.png"), ("TIFF", "g16.tif")])
def test_16bit_grayscale(tmp_path, fmt, name):
    a = np.zeros((H, W), np.uint16)
    a[0, 0], a[0, 1], a[0, 2] = 65535, 32768, 257
    li = io.load_image(_save(tmp_path, Image.fromarray(a), name))
    assert li.mode.startswith("I;16") and li.grayscale and li.array.shape == (H, W, 3)
    assert any("16-bit image scaled to [0,1]" in n for n in li.notes)
    np.testing.assert_allclose(li.array[0, :3, 0], [1.0, 32768 / 65535, 257 / 65535], rtol=1e-6)


def test_16bit_big_endian_tiff(tmp_path):
    a = (np.arange(H * W).reshape(H, W) * 60).astype(np.uint16)
    im = Image.frombytes("I;16B", (W, H), a.astype(">u2").tobytes())
    li = io.load_image(_save(tmp_path, im, "b16.tif"))
    assert li.mode == "I;16B"
    np.testing.assert_allclose(li.array[..., 0], a / 65535.0, rtol=1e-6)


def test_16bit_rgb_png_is_noted(tmp_path):
    a = np.random.default_rng(0).integers(0, 65536, (H, W, 3), dtype=np.uint16)
    p = tmp_path / "rgb16.png"
    p.write_bytes(_png16_rgb(a))
    li = io.load_image(p)
    assert li.array.shape == (H, W, 3) and not li.grayscale
    assert any("16-bit colour PNG" in n for n in li.notes)
    np.testing.assert_allclose(li.array, (a >> 8) / 255.0, atol=1e-6)


def test_32bit_integer_and_float_tiff(tmp_path):
    small = (np.arange(H * W).reshape(H, W) * 10).astype(np.int32)
    li = io.load_image(_save(tmp_path, Image.fromarray(small), "i.tif"))
    assert li.mode == "I" and any("65535" in n for n in li.notes)
    big = small * 1000 - 7
    li = io.load_image(_save(tmp_path, Image.fromarray(big), "i2.tif"))
    assert any("min-max scaled" in n for n in li.notes)
    assert li.array.min() == 0.0 and li.array.max() == 1.0
    f = np.linspace(0, 1, H * W, dtype=np.float32).reshape(H, W)
    li = io.load_image(_save(tmp_path, Image.fromarray(f), "f.tif"))
    assert li.mode == "F" and any("float" in n for n in li.notes)
    np.testing.assert_allclose(li.array[..., 1], f, atol=1e-6)


def test_cmyk_jpeg(tmp_path):
    im = Image.fromarray(_rgb()).convert("CMYK")
    li = io.load_image(_save(tmp_path, im, "c.jpg"))
    assert li.array.shape == (H, W, 3) and "converted CMYK image to RGB" in li.notes


def test_exif_orientation_is_applied(tmp_path):
    a = np.zeros((H, W, 3), np.uint8)  # stored: left half red, right half blue
    a[:, : W // 2, 0] = 255
    a[:, W // 2 :, 2] = 255
    im = Image.fromarray(a)
    exif = im.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    li = io.load_image(_save(tmp_path, im, "rot.jpg", exif=exif, quality=95))
    assert li.original_size == (H, W) and li.array.shape == (W, H, 3)
    assert any("EXIF orientation 6" in n and "clockwise" in n for n in li.notes)
    assert li.array[2, H // 2, 0] > 0.8 and li.array[-3, H // 2, 2] > 0.8  # top red, bottom blue


def test_animated_gif_uses_first_frame(tmp_path):
    frames = [Image.new("RGB", (W, H), c) for c in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    p = tmp_path / "anim.gif"
    frames[0].save(p, save_all=True, append_images=frames[1:], duration=50, loop=0)
    li = io.load_image(p)
    assert any("3 frames" in n and "first frame" in n for n in li.notes)
    np.testing.assert_allclose(li.array[0, 0], [1, 0, 0], atol=0.02)


def test_icc_profile_is_noted(tmp_path):
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    li = io.load_image(_save(tmp_path, Image.fromarray(_rgb()), "icc.png", icc_profile=icc))
    assert any("ICC" in n for n in li.notes)


def test_pil_to_array_matches_load_image(tmp_path):
    im = Image.fromarray(_rgb()).convert("LA")
    arr, notes = io.pil_to_array(im)
    li = io.load_image(_save(tmp_path, im, "la.png"))
    np.testing.assert_array_equal(arr, li.array)
    assert notes == list(li.notes)


def test_import_does_not_import_torch():
    code = "import sys, textsr.io; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ------------------------------------------------------------------------------------------
# Bad inputs: always InputImageError with the problem and the fix, never a traceback
# ------------------------------------------------------------------------------------------


def _load_error(path, **kw) -> str:
    with pytest.raises(InputImageError) as e:
        io.load_image(path, **kw)
    assert isinstance(e.value, UsageError) and e.value.exit_code == 2
    assert e.value.__cause__ is None  # no chained traceback to show
    return str(e.value)


def test_missing_file(tmp_path):
    assert "no such file" in _load_error(tmp_path / "nope.png")


def test_directory(tmp_path):
    assert "folder" in _load_error(tmp_path)


def test_empty_file(tmp_path):
    p = tmp_path / "empty.png"
    p.write_bytes(b"")
    assert "empty (0 bytes)" in _load_error(p)


def test_not_an_image(tmp_path):
    p = tmp_path / "notes.png"
    p.write_text("hello, I am text\n" * 10)
    msg = _load_error(p)
    assert "not an image" in msg and "PNG, JPEG" in msg


def test_zero_width_png(tmp_path):
    p = tmp_path / "zero.png"
    ihdr = struct.pack(">IIBBBBB", 0, 5, 8, 2, 0, 0, 0)
    p.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IEND", b""))
    assert "zero width/height" in _load_error(p)


@pytest.mark.parametrize("name", ["t.png", "t.jpg"])
def test_truncated_file(tmp_path, name):
    full = tmp_path / f"full-{name}"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(full)
    p = tmp_path / name
    p.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    msg = _load_error(p)
    assert "truncated" in msg and "Re-export" in msg


def test_corrupt_png_data(tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(good)
    data = bytearray(good.read_bytes())
    start = data.index(b"IDAT") + 4
    data[start + 10 : start + 200] = bytes(190)  # garbage inside the compressed stream
    p = tmp_path / "bad.png"
    p.write_bytes(bytes(data))
    msg = _load_error(p)
    assert ("corrupt" in msg or "truncated" in msg) and str(p) in msg


def test_too_many_pixels(tmp_path):
    p = _save(tmp_path, Image.new("RGB", (100, 100)), "big.png")
    msg = _load_error(p, max_pixels=5000)
    assert "100x100" in msg and "5,000" in msg and "downscale" in msg
    assert io.load_image(p, max_pixels=10_000).array.shape == (100, 100, 3)


@pytest.mark.parametrize("side", [40, 50])  # 40*40 > limit: Pillow warns; 50*50 > 2*limit: Pillow raises
def test_decompression_bomb_guard_stays_on(tmp_path, monkeypatch, side):
    p = _save(tmp_path, Image.new("RGB", (side, side)), "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    msg = _load_error(p, max_pixels=10**9)
    assert "decompression-bomb" in msg and "Downscale" in msg


# ------------------------------------------------------------------------------------------
# check_scale
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [8, "8", "x8", 8.0, np.int64(8)])
def test_check_scale_accepts_whole_numbers(scale):
    assert io.check_scale(96, 56, scale) == 8


@pytest.mark.parametrize("scale", [2.5, "eight", True, 1, 33, 0, -4, float("nan"), None])
def test_check_scale_rejects_bad_scale(scale):
    with pytest.raises(UsageError, match="scale must be a whole number in 2..32"):
        io.check_scale(96, 96, scale)


def test_check_scale_names_the_crop():
    with pytest.raises(InputImageError) as e:
        io.check_scale(100, 60, 8)
    msg = str(e.value)
    assert "divisible by 8" in msg and "60x100" in msg and "crop it to 56x96" in msg
    assert "Scales that fit 60x100 as is: 2, 4, 5, 10, 20" in msg


def test_check_scale_too_small():
    with pytest.raises(InputImageError, match="smaller than 16 pixels"):
        io.check_scale(10, 64, 16)


def test_crop_to_multiple_is_centred():
    a = np.arange(100 * 60).reshape(100, 60)
    c = io.crop_to_multiple(a, 8)
    assert c.shape == (96, 56) and c[0, 0] == a[2, 2]
    io.check_scale(*c.shape, 8)


# ------------------------------------------------------------------------------------------
# Model conversions and resizing
# ------------------------------------------------------------------------------------------


def test_to_model_and_back_round_trips_uint8():
    a = _rgb()
    t = io.to_model(a)
    assert tuple(t.shape) == (1, 3, H, W) and str(t.dtype) == "torch.float32"
    assert float(t.min()) >= -1 and float(t.max()) <= 1
    back = io.from_model(t)
    assert back.shape == (1, H, W, 3) and back.dtype == np.uint8
    np.testing.assert_array_equal(back[0], a)
    np.testing.assert_allclose(io.from_model_float(t[0])[0], a / 255.0, atol=1e-6)


def test_to_model_accepts_2d_float():
    t = io.to_model(np.ones((4, 5), np.float32))
    assert tuple(t.shape) == (1, 1, 4, 5) and float(t.min()) == 1.0


def test_from_model_clips_and_rejects_nan():
    import torch

    t = torch.tensor([-3.0, 0.0, 3.0]).reshape(1, 1, 1, 3)
    np.testing.assert_array_equal(io.from_model(t)[0, 0, :, 0], [0, 128, 255])
    with pytest.raises(RuntimeFailure, match="NaN"):
        io.from_model(torch.full((1, 3, 2, 2), float("nan")))


def test_resize_nearest_is_exact_replication():
    a = np.random.default_rng(3).random((4, 5, 3)).astype(np.float32)
    r = io.resize_nearest(a, 4)
    assert r.shape == (16, 20, 3)
    np.testing.assert_array_equal(r[::4, ::4], a)
    np.testing.assert_array_equal(r[3::4, 3::4], a)


def test_resize_bicubic_shape_range_and_constants():
    a = np.random.default_rng(4).random((6, 7, 3)).astype(np.float32)
    r = io.resize_bicubic(a, 8)
    assert r.shape == (48, 56, 3) and r.dtype == np.float32 and r.min() >= 0 and r.max() <= 1
    const = io.resize_bicubic(np.full((5, 5, 1), 0.3, np.float32), 4)
    np.testing.assert_allclose(const, 0.3, atol=1e-5)
    assert abs(r.mean() - a.mean()) < 0.05


# ------------------------------------------------------------------------------------------
# Atomic writes
# ------------------------------------------------------------------------------------------


def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_write_json_atomic_writes_numpy_and_paths(tmp_path):
    data = {"a": np.float32(1.5), "b": np.arange(3), "c": Path("x/y"), "u": "é"}
    p = io.write_json_atomic(data, tmp_path / "sub" / "r.json")
    assert json.loads(p.read_text("utf-8")) == {"a": 1.5, "b": [0, 1, 2], "c": "x/y", "u": "é"}
    assert oct(p.stat().st_mode & 0o777) == oct(0o644)


@pytest.mark.parametrize("bad", [{"x": object()}, {"x": float("nan")}])
def test_write_json_atomic_failure_keeps_old_file(tmp_path, bad):
    p = tmp_path / "r.json"
    io.write_json_atomic({"old": True}, p)
    with pytest.raises((TypeError, ValueError)):
        io.write_json_atomic(bad, p)
    assert json.loads(p.read_text()) == {"old": True}
    assert _leftovers(tmp_path) == []


def test_save_png_atomic_failure_midway_keeps_old_file(tmp_path, monkeypatch):
    p = tmp_path / "img.png"
    io.save_png_atomic(np.zeros((4, 4, 3), np.float32), p)
    before = p.read_bytes()

    def broken_save(self, fp, format=None, **kw):  # writes part of a file, then fails
        fp.write(b"\x89PNG partial")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        io.save_png_atomic(np.ones((4, 4, 3), np.float32), p)
    assert p.read_bytes() == before
    assert _leftovers(tmp_path) == []


def test_write_bytes_atomic_keeps_mode_and_replaces(tmp_path):
    p = tmp_path / "b.bin"
    p.write_bytes(b"old")
    os.chmod(p, 0o600)
    io.write_bytes_atomic(b"new", p)
    assert p.read_bytes() == b"new" and p.stat().st_mode & 0o777 == 0o600


def test_atomic_write_cleans_up_on_interrupt(tmp_path):
    p = tmp_path / "k.bin"
    p.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        with io._atomic_file(p) as f:
            f.write(b"half")
            raise KeyboardInterrupt
    assert p.read_bytes() == b"old" and _leftovers(tmp_path) == []


@pytest.mark.parametrize("shape", [(5, 6), (5, 6, 1), (5, 6, 3), (5, 6, 4)])
def test_save_png_atomic_shapes(tmp_path, shape):
    a = np.random.default_rng(5).random(shape).astype(np.float32)
    p = io.save_png_atomic(a, tmp_path / "s.png")
    back = np.asarray(Image.open(p))
    assert back.shape == tuple(s for s in shape if s != 1 or len(shape) == 2)
    np.testing.assert_array_equal(back.reshape(a.shape), io.to_uint8(a))


def test_save_png_atomic_rejects_bad_shape(tmp_path):
    with pytest.raises(ValueError, match="cannot save"):
        io.save_png_atomic(np.zeros((5, 6, 2), np.float32), tmp_path / "x.png")
    assert list(tmp_path.iterdir()) == []
