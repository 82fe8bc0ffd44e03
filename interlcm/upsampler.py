"""Real-ESRGAN as the release runs it: the background and face upsampler, over tiles.

The release wraps RRDBNet x2plus in ``RealESRGANer(scale=2, tile=--bg_tile (400), tile_pad=40,
pre_pad=0)``: the image is reflect-padded to even height and width (x2 pixel-unshuffles by 2),
cut into ``tile`` x ``tile`` tiles, each run with ``tile_pad`` pixels of its neighbours around it,
and only the tile's own part of each output is kept. The result is clamped to [0, 1], rounded to
uint8 and, if the wanted scale is not the network's, resized with Lanczos (OpenCV
``INTER_LANCZOS4``).

Tiles go through a backend's ``run("realesrgan", tile=...)`` like every other component, so torch,
ONNX Runtime and TensorRT all run the same tiling.

Seams: an output pixel depends on input pixels up to ``RRDBConfig.receptive_radius`` away. When
``tile_pad`` is at least that, the tiled output equals the untiled one up to float
reassociation (the tiny preset: 39 px < 40). The released x2plus reaches ~700 px, so its tiles
differ from an untiled run where the far context matters; the padding keeps that below what shows
(the release's trade-off for bounded memory).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.nn import functional as F

from interlcm.backend import ComponentRunner
from interlcm.config import PresetConfig
from interlcm.models.rrdbnet import build_random_upsampler
from interlcm.torch_backend import TorchBackend
from interlcm.weights import load_upsampler

COMPONENT = "realesrgan"
UPSAMPLER_CHOICES = ("none", "realesrgan")


@dataclass(frozen=True)
class TileOptions:
    tile: int = 400  # tile side in input pixels; 0 runs the whole image at once (the release's --bg_tile)
    tile_pad: int = 40  # neighbour pixels around each tile (the release's tile_pad)


class TiledUpsampler:
    """A backend's Real-ESRGAN over tiles: uint8 RGB photos in, upscaled uint8 RGB photos out."""

    def __init__(self, backend: ComponentRunner, scale: int, unshuffle: int, options: TileOptions = TileOptions()):
        if options.tile < 0 or options.tile_pad < 0:
            raise ValueError(f"tile {options.tile} and tile padding {options.tile_pad} must be >= 0")
        if options.tile % unshuffle or options.tile_pad % unshuffle:
            # a tile starting off the unshuffle grid would see other pixel groups than the whole image
            raise ValueError(f"--bg-tile {options.tile} and its padding must be multiples of {unshuffle}")
        self.backend = backend
        self.scale = scale
        self.unshuffle = unshuffle
        self.options = options

    def upsample(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1], H and W multiples of `unshuffle` -> (B, 3, sH, sW), not clamped."""
        tile, pad, s = self.options.tile, self.options.tile_pad, self.scale
        if tile == 0:
            return self._run(image)
        b, c, h, w = image.shape
        out = image.new_empty((b, c, h * s, w * s))
        for y0 in range(0, h, tile):
            for x0 in range(0, w, tile):
                y1, x1 = min(y0 + tile, h), min(x0 + tile, w)
                py0, px0 = max(y0 - pad, 0), max(x0 - pad, 0)  # the tile with its neighbours
                py1, px1 = min(y1 + pad, h), min(x1 + pad, w)
                got = self._run(image[:, :, py0:py1, px0:px1])
                oy, ox = (y0 - py0) * s, (x0 - px0) * s  # where the tile's own part starts in `got`
                out[:, :, y0 * s : y1 * s, x0 * s : x1 * s] = got[
                    :, :, oy : oy + (y1 - y0) * s, ox : ox + (x1 - x0) * s
                ]
        return out

    def _run(self, tile: torch.Tensor) -> torch.Tensor:
        return self.backend.run(COMPONENT, tile=tile.contiguous())["upscaled"].float().cpu()

    def enhance(self, img: np.ndarray, outscale: float | None = None) -> np.ndarray:
        """(H, W, 3) uint8 RGB -> (round(H * outscale), ..., 3) uint8 RGB (default: the network's scale)."""
        h, w = img.shape[:2]
        x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float() / 255.0
        u = self.unshuffle
        mod_h, mod_w = (-h) % u, (-w) % u
        if mod_h or mod_w:  # the release pads by reflection to the unshuffle grid and crops afterwards
            x = F.pad(x, (0, mod_w, 0, mod_h), mode="reflect")
        y = self.upsample(x)[:, :, : h * self.scale, : w * self.scale]
        out = (y[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
        if outscale is not None and outscale != self.scale:
            size = (int(w * outscale), int(h * outscale))  # (W, H) for OpenCV, truncated as the release
            out = cv2.resize(out, size, interpolation=cv2.INTER_LANCZOS4)
        return out


def open_upsampler(
    cfg: PresetConfig,
    weights: Path | None = None,
    options: TileOptions = TileOptions(),
    device: str | torch.device = "cpu",
) -> tuple[TiledUpsampler, str]:
    """Real-ESRGAN for a preset on the torch backend: from WEIGHTS (realesrgan/...) or seeded random.

    Returns the upsampler and a one-line description of its weights.
    """
    models = load_upsampler(weights, cfg) if weights is not None else build_random_upsampler(cfg)
    rrdb = models.realesrgan.cfg
    backend = TorchBackend(models, device)  # type: ignore[arg-type]  # duck-typed models container
    return TiledUpsampler(backend, rrdb.scale, rrdb.unshuffle, options), f"realesrgan weights: {models.origin}"


@dataclass(frozen=True)
class Upsamplers:
    """What whole-photo mode upscales with Real-ESRGAN (the release's --bg_upsampler and --face_upsample).

    `background`: the canvas faces are pasted onto is Real-ESRGAN's output at `upscale` instead of a
    Lanczos resize; a photo (or frame) with no face is that canvas alone. `face`: each restored face
    is upscaled by `upscale` before it is warped back. Both are one network when both are on.
    """

    background: TiledUpsampler | None = None
    face: TiledUpsampler | None = None


def open_upsamplers(
    cfg: PresetConfig, weights: Path | None, background: bool, face: bool, options: TileOptions = TileOptions()
) -> tuple[Upsamplers, str]:
    """The upsamplers asked for ('' description when none is)."""
    if not (background or face):
        return Upsamplers(), ""
    net, why = open_upsampler(cfg, weights, options)
    return Upsamplers(net if background else None, net if face else None), why
