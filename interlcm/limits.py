"""How large a photo the toolkit reads and makes (one limit for the CLI, the Ray job and the server),
and what the server admits.

Light on purpose (no torch, no Pillow, no Ray): the command lines show the defaults in ``--help``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

MEGAPIXEL = 1_000_000


class PixelLimitError(ValueError):
    """An input image, or the output it would give, is larger than the :class:`PixelLimits` allow."""

    def __init__(self, reason: str, which: str):
        super().__init__(reason)
        self.which = which  # "input" or "output": which limit refused it


@dataclass(frozen=True)
class PixelLimits:
    """The largest photo read and the largest photo made, in pixels (width x height).

    The defaults admit any phone photo (up to 50 MP, e.g. 8160x6144) at ``--upscale 2``, and a
    12 MP one at ``--upscale 4``: 256 MP of output is 0.77 GB as 8-bit RGB. An output is the
    input's size times ``upscale`` squared (aligned face crops: ``upscale`` 1). Both are checked
    on the size in the file's header, before it is decoded and before any work.
    """

    input: int = 64 * MEGAPIXEL  # e.g. 8000x8000; a 13000x13000 "pixel bomb" PNG (164 KB) is refused
    output: int = 256 * MEGAPIXEL  # e.g. 16000x16000

    def __post_init__(self) -> None:
        if self.input < 1 or self.output < 1:
            raise ValueError(f"pixel limits must be positive, got input={self.input}, output={self.output}")

    def check(self, size: tuple[int, int], upscale: int, name: str | os.PathLike[str]) -> None:
        """Raise PixelLimitError if a ``(width, height)`` image, or its output at ``upscale``, is too large."""
        width, height = size
        if width * height > self.input:
            raise PixelLimitError(
                f"{name}: {width}x{height} is {_mp(width * height)}, over the {_mp(self.input)} input limit; "
                "send a smaller image or raise the limit (--max-input-mp)", "input")
        out = width * height * upscale * upscale
        if out > self.output:
            raise PixelLimitError(
                f"{name}: {width}x{height} at upscale {upscale} gives {width * upscale}x{height * upscale} = "
                f"{_mp(out)}, over the {_mp(self.output)} output limit; lower the upscale or raise the limit "
                "(--max-output-mp)", "output")


def _mp(pixels: int) -> str:
    return f"{pixels / MEGAPIXEL:.3g} MP"


@dataclass(frozen=True)
class ServeLimits:
    """What one server (engines/serve.py) admits; `interlcm-serve` sets each field. Every refusal is one line."""

    max_bytes: int = 20 << 20  # request body; over it: 413, counted as it streams (chunked bodies too)
    body_timeout_s: float = 30.0  # the whole body must arrive within this; slower: 408
    # input over it: 413; output (input x upscale^2) over it: 422. A 24 MP photo, or a 9 MP one at
    # upscale 2: a response of at most ~100 MB, where the CLI's defaults allow 256 MP.
    pixels: PixelLimits = field(default_factory=lambda: PixelLimits(input=24 * MEGAPIXEL, output=36 * MEGAPIXEL))
    max_ongoing: int | None = None  # per model replica: photos being restored or gathered (None: 2 x batch)
    max_queued: int = 32  # photos waiting for a model replica beyond those; more: 503 + Retry-After
    max_open: int = 256  # per front replica: requests being received or waiting (slow uploads included)
    max_open_queued: int = 64  # requests waiting for a front replica beyond those; more: 503 + Retry-After
    retry_after_s: int = 5  # Retry-After of a 503

    def __post_init__(self) -> None:
        if self.max_bytes < 1 or self.body_timeout_s <= 0 or self.max_queued < 0 or self.max_open < 1:
            raise ValueError(f"server limits must be positive: {self}")
