"""Real-ESRGAN as the release runs it: the background and face upsampler, over tiles.

The release wraps RRDBNet x2plus in ``RealESRGANer(scale=2, tile=--bg_tile (400), tile_pad=40,
pre_pad=0)``: the image is reflect-padded to even height and width (x2 pixel-unshuffles by 2),
cut into ``tile`` x ``tile`` tiles, each run with ``tile_pad`` pixels of its neighbours around it,
and only the tile's own part of each output is kept. The result is clamped to [0, 1], rounded to
uint8 and, if the wanted scale is not the network's, resized with Lanczos (OpenCV
``INTER_LANCZOS4``).

Tiles go through the restoring backend's ``run("realesrgan", tile=...)`` like every other component
(`open_upsamplers`), so torch, ONNX Runtime and TensorRT run the same tiling on their own device.
Tiles of one size, and the faces of a photo, go in one call: the backend splits it to its batch.

Seams: an output pixel depends on input pixels up to ``RRDBConfig.receptive_radius`` away. When
``tile_pad`` is at least that, the tiled output equals the untiled one up to float
reassociation (the tiny preset: 39 px < 40). The released x2plus reaches ~700 px, so its tiles
differ from an untiled run where the far context matters; the padding keeps that below what shows
(the release's trade-off for bounded memory).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.nn import functional as F

from interlcm.backend import Backend
from interlcm.choices import UPSAMPLER
from interlcm.config import get_upsampler
from interlcm.models.rrdbnet import build_random_upsampler
from interlcm.torch_backend import TorchBackend
from interlcm.weights import load_upsampler

COMPONENT = UPSAMPLER  # the component every tile runs through


@dataclass(frozen=True)
class TileOptions:
    tile: int = 400  # tile side in input pixels; 0 runs the whole image at once (the release's --bg_tile)
    tile_pad: int = 40  # neighbour pixels around each tile (the release's tile_pad)


class TiledUpsampler:
    """A backend's Real-ESRGAN over tiles: uint8 RGB images in, upscaled uint8 RGB images out."""

    def __init__(self, backend: Backend, scale: int, unshuffle: int, options: TileOptions = TileOptions()):
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
        """(B, 3, H, W) in [0, 1], H and W multiples of `unshuffle` -> (B, 3, sH, sW) on the backend's device, not clamped."""
        tile, pad, s = self.options.tile, self.options.tile_pad, self.scale
        image = image.to(self.backend.device)
        b, c, h, w = image.shape
        if tile == 0:
            (_, max_h), (_, max_w) = (self.backend.limits(COMPONENT).dims[n] for n in ("tile_height", "tile_width"))
            if h > max_h or w > max_w:
                raise ValueError(f"--bg-tile 0 runs the whole {w}x{h} image at once, larger than the {max_w}x{max_h} "
                                 f"Real-ESRGAN takes on the {self.backend.name} backend: use --bg-tile 400")
            return self._run(image)
        # every tile with its neighbours, grouped by size: one backend call per size
        groups: dict[tuple[int, int], list[tuple[int, int, int, int, int, int]]] = {}
        for y0 in range(0, h, tile):
            for x0 in range(0, w, tile):
                y1, x1 = min(y0 + tile, h), min(x0 + tile, w)
                py0, px0 = max(y0 - pad, 0), max(x0 - pad, 0)
                py1, px1 = min(y1 + pad, h), min(x1 + pad, w)
                groups.setdefault((py1 - py0, px1 - px0), []).append((y0, y1, x0, x1, py0, px0))
        out = image.new_empty((b, c, h * s, w * s))
        for (th, tw), boxes in groups.items():
            crops = torch.cat([image[:, :, py0 : py0 + th, px0 : px0 + tw] for _, _, _, _, py0, px0 in boxes])
            got = self._run(crops).unflatten(0, (len(boxes), b))  # (tiles, B, 3, s th, s tw)
            for i, (y0, y1, x0, x1, py0, px0) in enumerate(boxes):
                oy, ox = (y0 - py0) * s, (x0 - px0) * s  # where the tile's own part starts in its output
                out[:, :, y0 * s : y1 * s, x0 * s : x1 * s] = got[i, :, :, oy : oy + (y1 - y0) * s, ox : ox + (x1 - x0) * s]
        return out

    def _run(self, tiles: torch.Tensor) -> torch.Tensor:
        return self.backend.run(COMPONENT, tile=tiles.contiguous())["upscaled"].float()

    def enhance(self, img: np.ndarray, outscale: float | None = None) -> np.ndarray:
        """(H, W, 3) uint8 RGB -> (round(H * outscale), ..., 3) uint8 RGB (default: the network's scale)."""
        return self.enhance_many([img], outscale)[0]

    def enhance_many(self, images: Sequence[np.ndarray], outscale: float | None = None) -> list[np.ndarray]:
        """`enhance` of several (H, W, 3) uint8 RGB images of one size (a photo's faces), in one batch."""
        if not images:
            return []
        h, w = images[0].shape[:2]
        x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0
        u = self.unshuffle
        mod_h, mod_w = (-h) % u, (-w) % u
        if mod_h or mod_w:  # the release pads by reflection to the unshuffle grid and crops afterwards
            x = F.pad(x, (0, mod_w, 0, mod_h), mode="reflect")
        y = self.upsample(x)[:, :, : h * self.scale, : w * self.scale]
        batch = (y.clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255.0).round().astype(np.uint8)
        out = []
        for up in batch:
            if outscale is not None and outscale != self.scale:
                size = (int(w * outscale), int(h * outscale))  # (W, H) for OpenCV, truncated as the release
                up = cv2.resize(up, size, interpolation=cv2.INTER_LANCZOS4)
            out.append(up)
        return out


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
    backend: Backend, weights: Path | None, background: bool, face: bool, options: TileOptions = TileOptions()
) -> tuple[Upsamplers, str]:
    """The upsamplers asked for, on the restoring backend, and a line saying where Real-ESRGAN runs ('' if none).

    ONNX Runtime and TensorRT run it when their export or engine folder has `realesrgan`; torch loads
    it into its models (from WEIGHTS/realesrgan/, or seeded random without --weights). Otherwise it runs
    on the CPU with torch, and the line says so and how to export it.
    """
    if not (background or face):
        return Upsamplers(), ""
    rrdb = get_upsampler(backend.config.name)
    runner: Backend = backend
    if backend.has(COMPONENT):
        why = f"realesrgan: on the {backend.name} backend"
    else:
        models = load_upsampler(weights, backend.config) if weights is not None else build_random_upsampler(backend.config)
        rrdb = models.realesrgan.cfg
        if isinstance(backend, TorchBackend):
            backend.load_upsampler(models)
            why = f"realesrgan: on the torch backend, weights: {models.origin}"
        else:
            runner = TorchBackend(models, "cpu")
            why = (f"note: the {backend.name} backend has no realesrgan, so Real-ESRGAN runs on the CPU with torch "
                   f"(slow; export it into the same folder: interlcm-export --components realesrgan), "
                   f"weights: {models.origin}")
    net = TiledUpsampler(runner, rrdb.scale, rrdb.unshuffle, options)
    return Upsamplers(net if background else None, net if face else None), why
