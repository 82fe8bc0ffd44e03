"""Image I/O for aligned face crops.

Every image the toolkit reads goes through :func:`read_image`, which turns whatever Pillow can open
into a float32 ``(3, R, R)`` tensor in ``[-1, 1]``; every result goes out through :func:`write_image`,
which writes atomically so an interrupted batch never leaves half-written files behind.

Conventions, chosen once here so the rest of the code never has to think about them:

* Transparency (RGBA, LA, PA, palette or colour-key transparency) is composited over **white**,
  not dropped. The colour stored under fully transparent pixels is arbitrary (often black or
  leftovers from an editor), so dropping alpha can put a black or noisy background around a
  cut-out face; white is what the image looks like in a browser or viewer.
* 16-bit grayscale (``I;16*``, and ``I`` holding 0..65535, which is how Pillow opens 16-bit PNG
  and TIFF) is scaled by ``255 / 65535`` and rounded, instead of Pillow's ``convert`` which clips
  every value above 255 to white. 16-bit-per-channel colour PNG/TIFF are decoded to 8 bits by
  Pillow itself (it keeps the high byte, within one 8-bit level of exact).
* Non-square images are centre-cropped to a square before resizing: the model expects aligned
  face crops, which are square, and a crop keeps the face proportions that a stretch would not.
* Multi-frame files (animated GIF and WebP, multi-page TIFF) use their first frame, and say so: the
  readers take a ``notes`` list and append one line per such file for the caller to print.
* Size limits (:class:`PixelLimits`) are checked on the size the file's header states, before a
  pixel is decoded: a small file that would decode to a huge image costs nothing.
"""

from __future__ import annotations

import glob
import io
import os
import warnings
from collections.abc import Iterable, Sequence
from importlib.resources import files
from pathlib import Path
from typing import IO

import numpy as np
import torch
from PIL import Image, ImageOps

from interlcm.files import atomic_open
from interlcm.limits import PixelLimitError, PixelLimits

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageReadError",
    "decode_rgb",
    "demo_image_path",
    "encode_image",
    "encoded_image_complete",
    "demo_photo_path",
    "list_images",
    "read_image",
    "read_rgb",
    "read_source",
    "source_tag",
    "to_uint8",
    "write_image",
]

#: Extensions (lower case) that :func:`list_images` treats as images.
IMAGE_EXTENSIONS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"})

_WRITE_FORMATS: dict[str, tuple[str, dict[str, object]]] = {
    ".png": ("PNG", {"compress_level": 6}),
    ".jpg": ("JPEG", {"quality": 95, "subsampling": 0}),
    ".jpeg": ("JPEG", {"quality": 95, "subsampling": 0}),
    ".webp": ("WEBP", {"quality": 95, "method": 4}),
}
#: Key of the text an output carries naming the input it was made from (PNG tEXt, JPEG comment,
#: video container comment): how a rerun tells its own earlier outputs from other files (engines/outputs.py).
SOURCE_KEY = "interlcm-source"

_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "La", "RGBa"})
_GLOB_CHARS = frozenset("*?[")

# PixelLimits decide which sizes are read (checked right after Image.open, on the header). Pillow's
# warning for images over ~89 MP would only print, before our one-sentence refusal or a wanted large
# read, what the limits already decide; its error over ~179 MP stays.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


class ImageReadError(ValueError):
    """An input image cannot be read; the message names the file, the problem and the fix."""


# --------------------------------------------------------------------------- reading


def read_image(
    path: str | os.PathLike[str], resolution: int, *, notes: list[str] | None = None
) -> torch.Tensor:
    """Read an image file as a float32 ``(3, resolution, resolution)`` tensor in ``[-1, 1]``.

    Accepts any file Pillow opens (PNG, JPEG, WebP, BMP, TIFF, ...) in any common mode (see the
    module docstring for how alpha, palettes, CMYK and 16-bit data are converted). EXIF orientation
    is applied, a non-square image is centre-cropped to a square, then it is resized with bicubic
    filtering. Raises :class:`ImageReadError` for a missing file, a folder, a file that is not an
    image or is truncated, and a zero-size image. A multi-frame file adds a line to ``notes``.
    """
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution <= 0:
        raise ValueError(f"resolution must be a positive int, got {resolution!r}")
    path = Path(path)
    _check_is_file(path)
    rgb = _load_rgb(path, notes)
    rgb = _centre_crop_square(rgb)
    if rgb.size != (resolution, resolution):
        rgb = rgb.resize((resolution, resolution), Image.Resampling.BICUBIC)
    array = np.asarray(rgb, dtype=np.float32)
    return torch.from_numpy(array).permute(2, 0, 1).contiguous() / 127.5 - 1.0


def read_rgb(
    path: str | os.PathLike[str], *, notes: list[str] | None = None, limits: PixelLimits | None = None,
    upscale: int = 1,
) -> np.ndarray:
    """Read a whole photo as an ``(H, W, 3)`` uint8 RGB array: EXIF orientation applied, no crop or resize.

    Modes are converted as :func:`read_image` converts them; failures raise :class:`ImageReadError`;
    a multi-frame file adds a line to ``notes``. With ``limits``, a photo over them (or whose output
    at ``upscale`` would be) raises :class:`PixelLimitError` before it is decoded.
    """
    path = Path(path)
    _check_is_file(path)
    return np.asarray(_load_rgb(path, notes, limits=limits, upscale=upscale), dtype=np.uint8).copy()


def decode_rgb(data: bytes, name: str, *, limits: PixelLimits | None = None, upscale: int = 1) -> np.ndarray:
    """Decode image file bytes (from any filesystem) as :func:`read_rgb` reads a file; ``name`` is for messages."""
    return np.asarray(_load_rgb(Path(name), source=io.BytesIO(data), limits=limits, upscale=upscale),
                      dtype=np.uint8).copy()


def _check_is_file(path: Path) -> None:
    if path.is_dir():
        raise ImageReadError(f"{path}: is a folder, not an image file (use list_images to expand folders)")
    if not path.exists():
        raise ImageReadError(f"{path}: no such file")


def _load_rgb(path: Path, notes: list[str] | None = None, source: io.BytesIO | None = None,
              limits: PixelLimits | None = None, upscale: int = 1) -> Image.Image:
    """Open `path` (or the bytes in `source`), fully decode and convert to 8-bit RGB; failures are ImageReadError.

    A multi-frame file (animation, pages) uses its first frame and says so in `notes`. `limits` are
    checked on the header's size (Image.open reads only the header), before decoding.
    """
    try:
        with Image.open(path if source is None else source) as img:
            if limits is not None:
                limits.check(img.size, upscale, path)
            img.load()  # decode now, so a truncated file fails here and not in a later resize
            frames = getattr(img, "n_frames", 1)
            if frames > 1 and notes is not None:
                notes.append(f"{path}: has {frames} frames (animation or pages); only the first was used")
            if img.width == 0 or img.height == 0:
                raise ImageReadError(f"{path}: image has zero size ({img.width}x{img.height})")
            return _to_rgb8(ImageOps.exif_transpose(img), path)
    except (ImageReadError, PixelLimitError):
        raise
    except Image.DecompressionBombError as exc:  # Pillow's own check: over ~179 MP
        raise PixelLimitError(f"{path}: image too large to decode safely ({exc})", "input") from exc
    except Image.UnidentifiedImageError as exc:
        raise ImageReadError(
            f"{path}: not an image Pillow can read (wrong or unsupported format, or not an image at all)"
        ) from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:  # Pillow raises all of these for bad data
        if isinstance(exc, OSError) and exc.errno is not None:  # the OS refused, e.g. permission denied
            raise ImageReadError(
                f"{path}: cannot open ({exc.strerror}); check the path and its permissions"
            ) from exc
        reason = str(exc) or type(exc).__name__
        raise ImageReadError(
            f"{path}: cannot decode image ({reason}); the file may be truncated or corrupt"
        ) from exc


def _to_rgb8(img: Image.Image, path: Path) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB (alpha composited over white, 16-bit data scaled)."""
    if img.mode in _SIXTEEN_BIT_MODES:
        return _sixteen_bit_to_rgb8(img, path)
    if img.mode == "F":
        raise ImageReadError(f"{path}: 32-bit float images are not supported; save it as 8- or 16-bit RGB")
    if img.mode in _ALPHA_MODES or "transparency" in img.info:  # alpha, or palette / colour-key tRNS
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    try:
        return img.convert("RGB")
    except ValueError as exc:
        raise ImageReadError(f"{path}: unsupported pixel mode {img.mode!r}; save it as 8-bit RGB") from exc


def _sixteen_bit_to_rgb8(img: Image.Image, path: Path) -> Image.Image:
    """Scale 16-bit grayscale (or ``I`` holding 0..65535) to 8 bits, rounding, then to RGB."""
    data = np.asarray(img).astype(np.float64)
    if data.size and (data.min() < 0 or data.max() > 65535):
        raise ImageReadError(
            f"{path}: integer image with values outside 0..65535 ({data.min():g}..{data.max():g}) "
            "is not supported; save it as 8- or 16-bit"
        )
    gray = np.rint(data * (255.0 / 65535.0)).astype(np.uint8)
    return Image.fromarray(gray).convert("RGB")


def _centre_crop_square(img: Image.Image) -> Image.Image:
    """Centre-crop to the largest square (aligned face crops are square; cropping keeps proportions)."""
    width, height = img.size
    side = min(width, height)
    if width == height:
        return img
    left, top = (width - side) // 2, (height - side) // 2
    return img.crop((left, top, left + side, top + side))


# --------------------------------------------------------------------------- writing


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """Convert a ``(3, H, W)`` tensor in ``[-1, 1]`` to an ``(H, W, 3)`` uint8 array.

    Values are clamped to ``[-1, 1]`` and **rounded** to the nearest level, not truncated:
    truncation darkens every pixel by half a level on average, and rounding makes
    ``read_image`` followed by ``to_uint8`` reproduce 8-bit inputs exactly.
    Raises ValueError for a wrong shape or NaN/inf values (a sign the model diverged).
    """
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"image must be a torch.Tensor, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"image must have shape (3, H, W), got {tuple(image.shape)}")
    image = image.detach().to("cpu", torch.float32)
    if not torch.isfinite(image).all():
        raise ValueError("image contains NaN or inf values; refusing to write a corrupt result")
    levels = ((image.clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)
    return levels.permute(1, 2, 0).contiguous().numpy()


def write_image(
    path: str | os.PathLike[str],
    image: torch.Tensor | np.ndarray,
    *,
    overwrite: bool = True,
    source: str | None = None,
) -> Path:
    """Write a ``(3, H, W)`` tensor in ``[-1, 1]`` (clamped), or an ``(H, W, 3)`` uint8 RGB array, as an
    8-bit PNG, JPEG or WebP.

    The format follows the suffix (``.png``, ``.jpg``/``.jpeg``, ``.webp``, any case). Parent folders are
    created. The write is atomic: data goes to a temporary file in the same folder which is then
    renamed over ``path`` with ``os.replace``, so ``path`` is either the old file or the complete
    new one, and the temporary file is removed if anything fails. With ``overwrite=False`` an
    existing ``path`` raises FileExistsError (checked before writing, not atomically). ``source``
    is recorded in the file (see :func:`encode_image`). Returns ``path`` as a Path.
    """
    path = Path(path)
    _write_format(path)  # an unsupported suffix fails before anything is created
    pixels = _uint8_rgb(image)
    if not overwrite and path.exists():
        raise FileExistsError(f"{path}: already exists (pass overwrite=True to replace it)")
    with atomic_open(path) as handle:  # temporary + fsync + rename, umask honoured (interlcm.files)
        handle.write(encode_image(pixels, path, source=source))
    return path


def encode_image(pixels: np.ndarray, name: str | os.PathLike[str], *, source: str | None = None) -> bytes:
    """``(H, W, 3)`` uint8 RGB -> the file bytes :func:`write_image` writes for a file called ``name``
    (its suffix picks the format; the name appears in errors). One encoder for files, Ray and Serve.

    ``source`` (an id of the input, engines/outputs.py) is stored in the header as
    :func:`source_tag` text: a PNG tEXt chunk or a JPEG comment, read back by :func:`read_source`.
    """
    fmt, options = _write_format(Path(name))
    if source is not None:
        options = {**options, **_source_options(fmt, source)}
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format=fmt, **options)
    return buffer.getvalue()


def source_tag(source: str) -> str:
    """The text an output carries to name its input: ``interlcm-source=<id>``."""
    return f"{SOURCE_KEY}={source}"


def parse_source_tag(text: str | bytes | None) -> str | None:
    """The id in a :func:`source_tag` text, or None for any other text."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    prefix = f"{SOURCE_KEY}="
    return text[len(prefix):] if isinstance(text, str) and text.startswith(prefix) else None


def _source_options(fmt: str, source: str) -> dict[str, object]:
    if fmt == "PNG":
        from PIL.PngImagePlugin import PngInfo

        info = PngInfo()
        info.add_text(SOURCE_KEY, source)  # tEXt, written before the pixel data
        return {"pnginfo": info}
    if fmt == "JPEG":
        return {"comment": source_tag(source).encode()}  # a COM segment, before the pixel data
    raise ValueError(f"a {fmt} file cannot record its source: write PNG or JPEG")


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def read_source(file: str | os.PathLike[str] | IO[bytes]) -> str | None:
    """The input id a PNG or JPEG written with ``source`` records, or None (no id, or not such a file).

    Reads the header segments only, never the pixels (and never Pillow's size limit): an output
    of any size is recognised in microseconds.
    """
    if isinstance(file, (str, os.PathLike)):
        try:
            with open(file, "rb") as handle:
                return read_source(handle)
        except OSError:
            return None
    head = file.read(8)
    if head == _PNG_SIGNATURE:
        return _png_text(file, SOURCE_KEY.encode())
    if head[:2] == b"\xff\xd8":
        return parse_source_tag(_jpeg_comment(file, head[2:]))
    return None


def _png_text(file: IO[bytes], key: bytes) -> str | None:
    """The tEXt chunk `key` before the first IDAT (chunks: 4-byte length, 4-byte type, data, 4-byte CRC)."""
    while len(head := file.read(8)) == 8:
        size, kind = int.from_bytes(head[:4], "big"), head[4:]
        if kind in (b"IDAT", b"IEND") or size > 1 << 24:
            return None
        data = file.read(size + 4)[:size]
        if kind == b"tEXt":
            name, _, value = data.partition(b"\0")
            if name == key:
                return value.decode("latin-1")
    return None


def _jpeg_comment(file: IO[bytes], rest: bytes) -> bytes | None:
    """The first COM segment before the scan (segments: 0xFF, marker, 2-byte length counting itself, data)."""
    buffer = rest
    while True:
        buffer += file.read(max(0, 4 - len(buffer)))
        if len(buffer) < 4 or buffer[0] != 0xFF:
            return None
        marker, size = buffer[1], int.from_bytes(buffer[2:4], "big")
        if marker in (0xDA, 0xD9) or size < 2:  # start of scan / end of image: no comment
            return None
        data = buffer[4:] + file.read(max(0, size - 2 - len(buffer[4:])))
        if marker == 0xFE:
            return data[: size - 2]
        buffer = data[size - 2 :]


_END_MARKERS = {  # what the last bytes of a whole file are, per format (as Pillow writes them)
    ".png": b"IEND\xaeB`\x82",  # the IEND chunk's type and CRC
    ".jpg": b"\xff\xd9",  # EOI
    ".jpeg": b"\xff\xd9",
}
_START_MARKERS = {".png": _PNG_SIGNATURE, ".jpg": b"\xff\xd8", ".jpeg": b"\xff\xd8"}


def encoded_image_complete(path: str | os.PathLike[str]) -> bool:
    """True if ``path`` is a whole PNG or JPEG file: its signature at the start, its end marker at the end.

    Reads a few bytes at each end and decodes nothing, so a 200 MP output is judged as fast as a
    small one. Other suffixes, a missing file or a truncated one give False.
    """
    path = Path(path)
    start, end = _START_MARKERS.get(path.suffix.lower()), _END_MARKERS.get(path.suffix.lower())
    if start is None or end is None:
        return False
    try:
        with open(path, "rb") as f:
            head = f.read(len(start))
            f.seek(0, os.SEEK_END)
            if f.tell() < len(start) + len(end):
                return False
            f.seek(-len(end), os.SEEK_END)
            return head == start and f.read() == end
    except OSError:
        return False


def _uint8_rgb(image: torch.Tensor | np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        return to_uint8(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"an image array must be (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}")
    return np.ascontiguousarray(image)


def _write_format(path: Path) -> tuple[str, dict[str, object]]:
    try:
        return _WRITE_FORMATS[path.suffix.lower()]
    except KeyError:
        supported = ", ".join(sorted(_WRITE_FORMATS))
        raise ValueError(
            f"{path}: cannot write {path.suffix or 'a file without suffix'!r}; use one of {supported}"
        ) from None


# --------------------------------------------------------------------------- listing


def list_images(
    inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], *, recursive: bool = False
) -> list[Path]:
    """Expand image files, folders and glob patterns into a sorted, de-duplicated list of image files.

    * A file is kept if its extension is one of :data:`IMAGE_EXTENSIONS` (case-insensitive), else
      ValueError: naming a non-image file explicitly is a mistake worth reporting.
    * A folder contributes its image files, non-recursively unless ``recursive=True``.
    * Anything else containing ``*``, ``?`` or ``[`` is a glob pattern (``**`` matches across
      folders); matched folders are expanded like folders, other non-image files are skipped.
    * Folder and glob expansion skip hidden names (starting with ``.``), such as macOS ``._x.jpg``
      resource files and this module's own temporary files.

    Duplicates (the same file reached twice, including via symlinks) are kept once. An input that
    yields no images raises ValueError: "no images found at 'x': give image files, folders or glob
    patterns".
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    if not inputs:
        raise ValueError("no inputs given: give image files, folders or glob patterns")
    found: dict[str, Path] = {}
    for item in inputs:
        matches = _expand_input(os.fspath(item), recursive)
        if not matches:
            raise ValueError(
                f"no images found at {os.fspath(item)!r}: give image files, folders or glob patterns"
            )
        for match in matches:
            found.setdefault(os.path.realpath(match), match)
    return sorted(found.values())


def _expand_input(item: str, recursive: bool) -> list[Path]:
    path = Path(item)
    if path.is_file():
        if not _is_image_name(path):
            supported = " ".join(sorted(IMAGE_EXTENSIONS))
            raise ValueError(f"{item!r} is not an image file (supported extensions: {supported})")
        return [path]
    if path.is_dir():
        return _images_in_folder(path, recursive)
    if _GLOB_CHARS.intersection(item):
        return _images_from_glob(item, recursive)
    return []


def _images_in_folder(folder: Path, recursive: bool) -> list[Path]:
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    return [p for p in candidates if _visible_image(p, folder)]


def _images_from_glob(pattern: str, recursive: bool) -> list[Path]:
    images: list[Path] = []
    for match in sorted(glob.glob(pattern, recursive=True)):  # glob already skips hidden names
        path = Path(match)
        if path.is_dir():
            images.extend(_images_in_folder(path, recursive))
        elif path.is_file() and _is_image_name(path):
            images.append(path)
    return images


def _visible_image(path: Path, root: Path) -> bool:
    hidden = _any_hidden(path.relative_to(root).parts)
    return not hidden and path.is_file() and _is_image_name(path)


def _any_hidden(parts: Iterable[str]) -> bool:
    return any(part.startswith(".") for part in parts)


def _is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


# --------------------------------------------------------------------------- demo asset


def demo_photo_path() -> Path:
    """Path of the bundled demo whole photo (JPEG crop of scikit-image's public-domain astronaut photo).

    Regenerate it with ``scripts/make_demo_asset.py``.
    """
    path = Path(str(files("interlcm") / "assets" / "photo.jpg"))
    if not path.is_file():
        raise FileNotFoundError(f"{path}: demo asset missing; regenerate it with scripts/make_demo_asset.py")
    return path


def demo_image_path() -> Path:
    """Path of the bundled demo face crop (256x256 PNG from scikit-image's public-domain astronaut photo).

    Regenerate it with ``scripts/make_demo_asset.py``. Needs the package installed as files on disk
    (the normal case), not imported from a zip archive.
    """
    path = Path(str(files("interlcm") / "assets" / "face.png"))
    if not path.is_file():
        raise FileNotFoundError(f"{path}: demo asset missing; regenerate it with scripts/make_demo_asset.py")
    return path
