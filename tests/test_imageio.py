"""Tests for interlcm.imageio: reading every common Pillow mode, atomic writes, input listing."""

from __future__ import annotations

import io
import os
import re
import struct
import sys
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from interlcm.imageio import (
    ImageReadError,
    demo_image_path,
    list_images,
    read_image,
    read_rgb,
    to_uint8,
    write_image,
)


def _pixel(image: torch.Tensor, y: int = 0, x: int = 0) -> tuple[int, ...]:
    """8-bit RGB value at (y, x) of a tensor returned by read_image."""
    return tuple(int(v) for v in to_uint8(image)[y, x])


def _assert_close(actual: tuple[int, ...], expected: tuple[int, ...], tol: int = 0) -> None:
    assert all(abs(a - e) <= tol for a, e in zip(actual, expected, strict=True)), (actual, expected)


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _raw_png(pixels: np.ndarray, color_type: int, width: int | None = None) -> bytes:
    """Hand-encode a 16-bit PNG (Pillow cannot write 16-bit-per-channel colour PNGs)."""
    height, w = pixels.shape[:2]
    rows = pixels.astype(">u2").reshape(height, -1)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)
    header = struct.pack(">IIBBBBB", w if width is None else width, height, 16, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(raw))
        + _png_chunk(b"IEND", b"")
    )


# --------------------------------------------------------------------------- round trip, to_uint8


def test_png_round_trip_is_exact(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    original = rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
    tensor = torch.from_numpy(original).permute(2, 0, 1).float() / 127.5 - 1.0
    out = write_image(tmp_path / "x.png", tensor)
    loaded = read_image(out, 16)
    assert loaded.dtype == torch.float32 and loaded.shape == (3, 16, 16)
    assert loaded.min() >= -1.0 and loaded.max() <= 1.0
    np.testing.assert_array_equal(to_uint8(loaded), original)
    with Image.open(out) as img:
        assert img.format == "PNG" and img.mode == "RGB"


@pytest.mark.parametrize(("suffix", "fmt"), [(".jpg", "JPEG"), (".JPEG", "JPEG"), (".webp", "WEBP")])
def test_lossy_formats_follow_suffix(tmp_path: Path, suffix: str, fmt: str) -> None:
    tensor = torch.full((3, 8, 8), 0.2)
    tensor[0] = -0.6
    out = write_image(tmp_path / f"x{suffix}", tensor)
    with Image.open(out) as img:
        assert img.format == fmt
    _assert_close(_pixel(read_image(out, 8), 4, 4), (51, 153, 153), tol=3)


def test_write_rejects_unknown_suffix(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\.gif"):
        write_image(tmp_path / "x.gif", torch.zeros(3, 4, 4))
    assert list(tmp_path.iterdir()) == []


def test_to_uint8_rounds_and_clamps() -> None:
    image = torch.tensor([0.6 / 127.5 - 1.0, 0.4 / 127.5 - 1.0, 3.0, -7.0]).reshape(1, 1, 4).expand(3, 1, 4)
    out = to_uint8(image)
    assert out.shape == (1, 4, 3) and out.dtype == np.uint8
    assert out[0, :, 0].tolist() == [1, 0, 255, 0]  # 0.6 rounds up: truncation would give 0


@pytest.mark.parametrize("bad", [torch.zeros(4, 4), torch.zeros(1, 4, 4), torch.zeros(4, 4, 3)])
def test_to_uint8_rejects_wrong_shape(bad: torch.Tensor) -> None:
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        to_uint8(bad)


def test_write_rejects_nan(tmp_path: Path) -> None:
    image = torch.zeros(3, 4, 4)
    image[1, 2, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        write_image(tmp_path / "x.png", image)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- modes


def _save(img: Image.Image, path: Path, **kwargs: Any) -> Path:
    img.save(path, **kwargs)
    return path


def test_grayscale_l(tmp_path: Path) -> None:
    path = _save(Image.new("L", (4, 4), 100), tmp_path / "l.png")
    assert _pixel(read_image(path, 4)) == (100, 100, 100)


def test_one_bit(tmp_path: Path) -> None:
    img = Image.new("1", (4, 4), 0)
    img.putpixel((1, 0), 1)
    image = read_image(_save(img, tmp_path / "b.png"), 4)
    assert _pixel(image, 0, 0) == (0, 0, 0) and _pixel(image, 0, 1) == (255, 255, 255)


def test_la_composites_over_white(tmp_path: Path) -> None:
    img = Image.new("LA", (4, 4), (100, 255))
    img.putpixel((1, 0), (0, 0))  # fully transparent black -> white
    img.putpixel((2, 0), (0, 128))  # half-transparent black -> mid grey
    image = read_image(_save(img, tmp_path / "la.png"), 4)
    assert _pixel(image, 0, 0) == (100, 100, 100)
    assert _pixel(image, 0, 1) == (255, 255, 255)
    _assert_close(_pixel(image, 0, 2), (127, 127, 127), tol=1)


def test_rgba_composites_over_white(tmp_path: Path) -> None:
    img = Image.new("RGBA", (4, 4), (10, 20, 30, 255))
    img.putpixel((1, 0), (255, 0, 0, 0))  # dropping alpha would show red here
    img.putpixel((2, 0), (0, 0, 255, 128))
    image = read_image(_save(img, tmp_path / "rgba.png"), 4)
    assert _pixel(image, 0, 0) == (10, 20, 30)
    assert _pixel(image, 0, 1) == (255, 255, 255)
    _assert_close(_pixel(image, 0, 2), (127, 127, 255), tol=1)


def _palette_image() -> Image.Image:
    img = Image.new("P", (4, 4), 1)
    img.putpalette([0, 0, 0, 10, 200, 30] + [0] * (254 * 3))
    img.putpixel((0, 0), 0)
    return img


def test_palette(tmp_path: Path) -> None:
    image = read_image(_save(_palette_image(), tmp_path / "p.png"), 4)
    assert _pixel(image, 0, 0) == (0, 0, 0)
    assert _pixel(image, 1, 1) == (10, 200, 30)


def test_palette_with_transparency(tmp_path: Path) -> None:
    path = _save(_palette_image(), tmp_path / "pt.png", transparency=0)
    with Image.open(path) as img:
        assert img.mode == "P" and "transparency" in img.info
    image = read_image(path, 4)
    assert _pixel(image, 0, 0) == (255, 255, 255)  # transparent index 0 (black) -> white
    assert _pixel(image, 1, 1) == (10, 200, 30)


def test_rgb_colour_key_transparency(tmp_path: Path) -> None:
    img = Image.new("RGB", (4, 4), (10, 20, 30))
    img.putpixel((0, 0), (1, 2, 3))
    image = read_image(_save(img, tmp_path / "key.png", transparency=(1, 2, 3)), 4)
    assert _pixel(image, 0, 0) == (255, 255, 255)
    assert _pixel(image, 1, 1) == (10, 20, 30)


def test_cmyk(tmp_path: Path) -> None:
    img = Image.new("CMYK", (4, 4), (0, 255, 255, 0))
    img.putpixel((1, 0), (0, 0, 0, 255))
    path = _save(img, tmp_path / "cmyk.tif")
    with Image.open(path) as reopened:
        assert reopened.mode == "CMYK"
    image = read_image(path, 4)
    assert _pixel(image, 0, 0) == (255, 0, 0)
    assert _pixel(image, 0, 1) == (0, 0, 0)


def test_sixteen_bit_grayscale_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.array([[0, 65535, 32768, 100 * 257]], dtype=np.uint16).repeat(4, axis=0)
    path = _save(Image.fromarray(values), tmp_path / "g16.png")
    with Image.open(path) as img:
        assert img.mode == "I;16"
    image = read_image(path, 4)
    # Pillow's own convert("L") would give 0, 255, 255, 255.
    assert [_pixel(image, 0, x)[0] for x in range(4)] == [0, 255, 128, 100]
    assert _pixel(image, 0, 3) == (100, 100, 100)


def test_thirty_two_bit_int_holding_sixteen_bit_data(tmp_path: Path) -> None:
    values = np.array([[0, 65535, 1000, 30000]], dtype=np.int32).repeat(4, axis=0)
    path = _save(Image.fromarray(values), tmp_path / "i32.tif")
    with Image.open(path) as img:
        assert img.mode == "I"
    assert [_pixel(read_image(path, 4), 0, x)[0] for x in range(4)] == [0, 255, 4, 117]


def test_thirty_two_bit_int_out_of_range_is_an_error(tmp_path: Path) -> None:
    values = np.full((4, 4), 70000, dtype=np.int32)
    path = _save(Image.fromarray(values), tmp_path / "big.tif")
    with pytest.raises(ImageReadError, match="0..65535"):
        read_image(path, 4)


def test_sixteen_bit_rgb_png(tmp_path: Path) -> None:
    # Pillow cannot write 16-bit RGB (fromarray rejects (H, W, 3) uint16), so the PNG is hand-encoded.
    values = np.array([[[65535, 0, 32896], [2570, 51500, 128]]], dtype=np.uint16)
    path = tmp_path / "rgb16.png"
    path.write_bytes(_raw_png(np.tile(values, (2, 1, 1)), color_type=2))
    image = read_image(path, 2)
    for x in range(2):
        expected = tuple(round(int(v) * 255 / 65535) for v in values[0, x])
        _assert_close(_pixel(image, 0, x), expected, tol=1)


def test_float_mode_is_rejected(tmp_path: Path) -> None:
    path = _save(Image.new("F", (4, 4), 0.5), tmp_path / "f.tif")
    with pytest.raises(ImageReadError, match="float"):
        read_image(path, 4)


# --------------------------------------------------------------------------- geometry


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    img = Image.new("RGB", (4, 4), (0, 0, 0))
    img.putpixel((0, 0), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 3  # rotate 180
    path = _save(img, tmp_path / "rot.png", exif=exif.tobytes())
    image = read_image(path, 4)
    assert _pixel(image, 3, 3) == (255, 0, 0)
    assert _pixel(image, 0, 0) == (0, 0, 0)


@pytest.mark.parametrize("size", [(6, 4), (4, 6)])
def test_non_square_is_centre_cropped(tmp_path: Path, size: tuple[int, int]) -> None:
    width, height = size
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[...] = (0, 255, 0)
    if width > height:  # paint the first and last column (or row) red
        pixels[:, [0, -1]] = (255, 0, 0)
    else:
        pixels[[0, -1], :] = (255, 0, 0)
    img = Image.fromarray(pixels)
    image = read_image(_save(img, tmp_path / "wide.png"), 4)
    assert (to_uint8(image) == np.array([0, 255, 0], dtype=np.uint8)).all()  # a stretch would keep red


def test_resize_to_resolution(tmp_path: Path) -> None:
    path = _save(Image.new("RGB", (40, 40), (200, 50, 0)), tmp_path / "big.png")
    for resolution in (8, 64):
        image = read_image(path, resolution)
        assert image.shape == (3, resolution, resolution)
        assert _pixel(image, resolution // 2, resolution // 2) == (200, 50, 0)


@pytest.mark.parametrize("resolution", [0, -4, 2.5, True])
def test_bad_resolution(tmp_path: Path, resolution: object) -> None:
    path = _save(Image.new("RGB", (4, 4)), tmp_path / "x.png")
    with pytest.raises(ValueError, match="resolution"):
        read_image(path, resolution)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- read errors


def _assert_read_error(path: Path, pattern: str) -> None:
    with pytest.raises(ImageReadError) as info:
        read_image(path, 8)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    # Match the reason without the path, whose tmp_path folder is named after the test.
    assert re.search(pattern, message.removeprefix(f"{path}: ")), message


def test_text_file_is_not_an_image(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("this is not an image\n")
    _assert_read_error(path, "not an image")


def test_random_bytes_are_not_an_image(tmp_path: Path) -> None:
    path = tmp_path / "noise.jpg"
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    _assert_read_error(path, "not an image")


def test_truncated_png(tmp_path: Path) -> None:
    noise = np.random.default_rng(2).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="PNG")
    path = tmp_path / "cut.png"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    _assert_read_error(path, "truncated or corrupt")


def test_zero_size_png(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.write_bytes(_raw_png(np.zeros((1, 0, 3), dtype=np.uint16), color_type=2, width=0))
    _assert_read_error(path, "not an image")  # Pillow itself refuses a 0-wide PNG


def test_zero_size_image_from_a_lenient_decoder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "empty.bmp"
    path.write_bytes(b"")
    monkeypatch.setattr(Image, "open", lambda _path: Image.new("RGB", (0, 4)))
    _assert_read_error(path, r"zero size \(0x4\)")


def test_missing_file(tmp_path: Path) -> None:
    _assert_read_error(tmp_path / "absent.png", "no such file")


def test_folder_is_not_a_file(tmp_path: Path) -> None:
    folder = tmp_path / "dir.png"
    folder.mkdir()
    _assert_read_error(folder, "is a folder, not an image file")


# --------------------------------------------------------------------------- atomic write


def _failing_save(self: Image.Image, fp: object, *args: object, **kwargs: object) -> None:
    fp.write(b"\x89PNG partial")  # type: ignore[attr-defined]
    raise RuntimeError("disk full")


def test_write_is_atomic_on_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image.Image, "save", _failing_save)
    target = tmp_path / "out" / "x.png"
    with pytest.raises(RuntimeError, match="disk full"):
        write_image(target, torch.zeros(3, 4, 4))
    assert not target.exists()
    assert list(target.parent.iterdir()) == []  # no temporary file left behind


def test_failed_write_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = write_image(tmp_path / "x.png", torch.ones(3, 4, 4))
    before = target.read_bytes()
    monkeypatch.setattr(Image.Image, "save", _failing_save)
    with pytest.raises(RuntimeError):
        write_image(target, -torch.ones(3, 4, 4))
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["x.png"]


def test_write_creates_parents_and_overwrites(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "x.png"
    write_image(target, torch.ones(3, 4, 4))
    write_image(target, -torch.ones(3, 4, 4))
    assert _pixel(read_image(target, 4)) == (0, 0, 0)
    assert [p.name for p in target.parent.iterdir()] == ["x.png"]


def test_write_without_overwrite(tmp_path: Path) -> None:
    target = write_image(tmp_path / "x.png", torch.ones(3, 4, 4))
    with pytest.raises(FileExistsError, match="overwrite"):
        write_image(target, -torch.ones(3, 4, 4), overwrite=False)
    assert _pixel(read_image(target, 4)) == (255, 255, 255)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permission bits")
def test_written_file_honours_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        target = write_image(tmp_path / "x.png", torch.zeros(3, 4, 4))
    finally:
        os.umask(old)
    assert target.stat().st_mode & 0o777 == 0o644


# --------------------------------------------------------------------------- list_images


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """photos/{b.png, a.JPG, c.WebP, notes.txt, ._a.jpg, sub/d.tiff}"""
    root = tmp_path / "photos"
    (root / "sub").mkdir(parents=True)
    for name in ("b.png", "a.JPG", "c.WebP", "._a.jpg", "sub/d.tiff"):
        (root / name).write_bytes(b"")
    (root / "notes.txt").write_text("x")
    return root


def test_list_folder_non_recursive(photos: Path) -> None:
    assert list_images([photos]) == [photos / "a.JPG", photos / "b.png", photos / "c.WebP"]


def test_list_folder_recursive(photos: Path) -> None:
    found = list_images([str(photos)], recursive=True)
    assert found == [photos / "a.JPG", photos / "b.png", photos / "c.WebP", photos / "sub" / "d.tiff"]


def test_list_files_and_single_string(photos: Path) -> None:
    assert list_images([photos / "sub" / "d.tiff", photos / "b.png"]) == [
        photos / "b.png",
        photos / "sub" / "d.tiff",
    ]
    assert list_images(str(photos / "b.png")) == [photos / "b.png"]


def test_list_glob(photos: Path) -> None:
    assert list_images([str(photos / "*")]) == [
        photos / "a.JPG",
        photos / "b.png",
        photos / "c.WebP",
        photos / "sub" / "d.tiff",
    ]
    assert list_images([str(photos / "[ab].*")]) == [photos / "a.JPG", photos / "b.png"]
    assert list_images([str(photos / "**" / "*.tiff")]) == [photos / "sub" / "d.tiff"]


def test_list_deduplicates(photos: Path) -> None:
    link = photos.parent / "link.png"
    link.symlink_to(photos / "b.png")
    inputs: list[str | Path] = [photos / "b.png", str(photos / "b.png"), photos, str(photos / "*.png"), link]
    assert list_images(inputs) == [photos / "a.JPG", photos / "b.png", photos / "c.WebP"]


@pytest.mark.parametrize("name", ["missing", "notes-*.png", "empty"])
def test_list_nothing_found(photos: Path, name: str) -> None:
    (photos / "empty").mkdir()
    item = str(photos / name)
    with pytest.raises(ValueError) as info:
        list_images([photos / "b.png", item])
    assert str(info.value) == f"no images found at {item!r}: give image files, folders or glob patterns"


def test_list_explicit_non_image_file(photos: Path) -> None:
    with pytest.raises(ValueError, match="not an image file"):
        list_images([photos / "notes.txt"])


def test_list_no_inputs() -> None:
    with pytest.raises(ValueError, match="no inputs"):
        list_images([])


# --------------------------------------------------------------------------- demo asset


def test_demo_asset_loads() -> None:
    path = demo_image_path()
    assert path.name == "face.png" and path.stat().st_size < 200 * 1024
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size == (256, 256) and img.mode == "RGB"
    image = read_image(path, 512)
    assert image.shape == (3, 512, 512)
    assert image.std() > 0.2  # a real photo, not a blank image
    # The face is in the middle: skin tones (red > blue) around the centre.
    red, _, blue = to_uint8(read_image(path, 256))[128, 128]
    assert int(red) > int(blue) + 30


# --------------------------------------------------------------------------- GIF and multi-frame files


def test_single_frame_gif_is_listed_and_read(tmp_path: Path) -> None:
    Image.new("RGB", (8, 8), (255, 0, 0)).save(tmp_path / "face.gif")
    assert list_images(tmp_path) == [tmp_path / "face.gif"]
    notes: list[str] = []
    _assert_close(_pixel(read_image(tmp_path / "face.gif", 8, notes=notes)), (255, 0, 0), tol=2)
    assert notes == []  # one frame: nothing to say


@pytest.mark.parametrize("suffix", [".gif", ".webp", ".tiff"])
def test_multi_frame_files_use_the_first_frame_and_say_so(tmp_path: Path, suffix: str) -> None:
    frames = [Image.new("RGB", (8, 8), colour) for colour in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    path = tmp_path / f"anim{suffix}"
    lossless = {"lossless": True} if suffix == ".webp" else {}
    frames[0].save(path, save_all=True, append_images=frames[1:], **lossless)
    notes: list[str] = []
    _assert_close(_pixel(read_image(path, 8, notes=notes)), (255, 0, 0), tol=2)
    assert notes == [f"{path}: has 3 frames (animation or pages); only the first was used"]
    from interlcm.imageio import read_rgb

    read_rgb(path, notes=notes)
    assert len(notes) == 2


def test_write_image_takes_uint8_arrays(tmp_path):
    """Whole photos are (H, W, 3) uint8 arrays: PNG keeps them exactly, JPEG closely; other arrays are refused."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (12, 20, 3), dtype=np.uint8)
    assert np.array_equal(read_rgb(write_image(tmp_path / "a.png", pixels)), pixels)
    smooth = np.broadcast_to(np.linspace(0, 255, 20, dtype=np.uint8)[None, :, None], (12, 20, 3)).copy()
    assert np.abs(read_rgb(write_image(tmp_path / "a.jpg", smooth)).astype(int) - smooth).max() <= 4
    with pytest.raises(ValueError, match="uint8 RGB"):
        write_image(tmp_path / "b.png", pixels.astype(np.float32))


# --------------------------------------------------------------------------- pixel limits, completeness


def test_pixel_limits_refuse_from_the_header_before_decoding() -> None:
    from interlcm.imageio import decode_rgb
    from interlcm.limits import PixelLimitError, PixelLimits
    from interlcm.testing import pixel_bomb_png

    with pytest.raises(PixelLimitError, match=r"13000x13000 is 169 MP, over the 64 MP input limit") as refused:
        decode_rgb(pixel_bomb_png(13000, 13000), "bomb.png", limits=PixelLimits())
    assert refused.value.which == "input"
    small = io.BytesIO()
    Image.new("RGB", (300, 200)).save(small, format="PNG")
    limits = PixelLimits(input=100_000, output=1_000_000)
    assert decode_rgb(small.getvalue(), "a.png", limits=limits, upscale=3).shape == (200, 300, 3)  # 0.54 MP out
    with pytest.raises(PixelLimitError, match=r"300x200 at upscale 4 gives 1200x800 = 0.96 MP") as refused:
        decode_rgb(small.getvalue(), "a.png", limits=PixelLimits(input=100_000, output=900_000), upscale=4)
    assert refused.value.which == "output"
    with pytest.raises(ValueError, match="positive"):
        PixelLimits(input=0)


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".JPG", ".jpeg"])
def test_encoded_image_complete_reads_only_the_ends(tmp_path: Path, suffix: str) -> None:
    from interlcm.imageio import encoded_image_complete

    path = write_image(tmp_path / f"a{suffix.lower()}", np.full((32, 48, 3), 128, np.uint8)).rename(tmp_path / f"a{suffix}")
    assert encoded_image_complete(path)
    whole = path.read_bytes()
    for broken in (whole[:-1], whole[: len(whole) // 2], whole[:4], b"", b"\x00" + whole[1:]):
        path.write_bytes(broken)
        assert not encoded_image_complete(path), len(broken)
    assert not encoded_image_complete(tmp_path / "missing.png")


def test_encoded_image_complete_is_only_for_what_we_write(tmp_path: Path) -> None:
    from interlcm.imageio import encoded_image_complete

    assert not encoded_image_complete(write_image(tmp_path / "a.webp", np.zeros((8, 8, 3), np.uint8)))
