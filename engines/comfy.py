"""ComfyUI nodes: load an InterLCM model once, restore the faces of IMAGE batches.

ComfyUI's node contract (its ``nodes.py``): a class with ``INPUT_TYPES`` (a classmethod returning
``{"required": {name: (type, options)}}``, where a list type is a combo box), ``RETURN_TYPES``,
``FUNCTION`` (the method ComfyUI calls with the inputs as keyword arguments) and ``CATEGORY``.
``IMAGE`` is a ``(B, H, W, C)`` float32 tensor in [0, 1]. The folder ``comfyui/interlcm_nodes`` of this
repository, symlinked or copied into ``ComfyUI/custom_nodes``, exports the mappings below.

* **InterLCM model loader**: a weights, ONNX or TensorRT engine folder (or a random preset), the backend
  and precision. The opened model is kept across prompts (one at a time: loading another closes it).
* **InterLCM restore faces**: whole photos, every face detected, restored and pasted back; each image of
  the batch is one photo, so a batch of video frames is restored with every frame's faces batched
  together. Same pixels as ``interlcm-trt restore`` with the same options and seed (upscale defaults to 1
  here, ComfyUI's habit of keeping sizes; the CLI's default is the release's 2).
* **InterLCM restore aligned face**: aligned face crops (the CLI's ``--aligned``), returned at the
  model's resolution.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from interlcm.choices import (
    BACKENDS,
    COLORFIXES,
    DEFAULT_STRENGTH,
    DEFAULT_VARIANT,
    PRECISIONS,
    STRENGTH_RANGE,
    UPSAMPLER,
    UPSAMPLER_CHOICES,
    VARIANTS,
)
from interlcm.cli.options import SEED_MAX
from interlcm.config import PRESETS
from interlcm.engines.backend import BackendOptions
from interlcm.engines.loaded import LoadedRestorer, RestoreRequest
from interlcm.engines.photo import PhotoOptions
from interlcm.faces.detectors import DEFAULT_DETECTOR, DETECTORS
from interlcm.upsampler import TileOptions

CATEGORY = "InterLCM"
MODEL = "INTERLCM_MODEL"  # the loader's output type, the restore nodes' input
SOURCES = ("preset", "weights", "onnx", "engines")  # what `folder` is; preset: random weights, no folder
VARIANT_COLORFIX = "variant"  # the colour fix the encoder variant is meant for (the CLI's default)

_held: dict[str, Any] = {}  # the one open model: {"key": loader arguments, "model": LoadedRestorer}


def load_model(source: str, folder: str, preset: str, backend: str, precision: str, variant: str,
               batch: int = 1, bg_tile: int = TileOptions.tile) -> LoadedRestorer:
    """The model these loader inputs name: the held one when they are unchanged, else opened (closing the old)."""
    key = repr((source, folder, preset, backend, precision, variant, batch, bg_tile))
    if _held.get("key") == key:
        return _held["model"]
    if source not in SOURCES:
        raise ValueError(f"source {source!r}: choose one of {', '.join(SOURCES)}")
    path = Path(folder).expanduser() if folder.strip() else None
    if source != "preset" and path is None:
        raise ValueError(f"source {source!r} needs a folder: give its path, or choose source 'preset' (random weights)")
    options = BackendOptions(kind=backend, preset=preset if source == "preset" else None, variant=variant,
                             precision=precision, batch=batch, **({source: path} if source != "preset" else {}))
    close_model()
    model = LoadedRestorer(options, tile=TileOptions(bg_tile))
    _held.update(key=key, model=model)
    return model


def close_model() -> None:
    model = _held.pop("model", None)
    _held.pop("key", None)
    if model is not None:
        model.close()


def to_photos(image: torch.Tensor) -> list[np.ndarray]:
    """ComfyUI IMAGE (B, H, W, C) float in [0, 1] -> B (H, W, 3) uint8 RGB photos (C 1: grey; C 4: alpha dropped)."""
    if image.ndim != 4 or image.shape[-1] not in (1, 3, 4):
        raise ValueError(f"expected an IMAGE of shape (batch, height, width, 1|3|4 channels), got {tuple(image.shape)}")
    pixels = np.clip(np.rint(image.detach().float().cpu().numpy() * 255.0), 0, 255).astype(np.uint8)
    pixels = np.repeat(pixels, 3, axis=-1) if pixels.shape[-1] == 1 else pixels[..., :3]
    return [np.ascontiguousarray(p) for p in pixels]


def to_image(photos: list[np.ndarray]) -> torch.Tensor:
    """(H, W, 3) uint8 RGB photos of one size -> ComfyUI IMAGE (B, H, W, 3) float32 in [0, 1]."""
    return torch.from_numpy(np.stack(photos)).float() / 255.0


def _restore(model: LoadedRestorer, image: torch.Tensor, request: RestoreRequest) -> torch.Tensor:
    results = model.restore(to_photos(image), request).results  # ComfyUI calls nodes under torch.inference_mode
    return to_image([r.image for r in results])


_SEED = ("INT", {"default": 0, "min": 0, "max": SEED_MAX, "tooltip": "Same seed, same picture on every backend."})
_STRENGTH = ("FLOAT", {"default": DEFAULT_STRENGTH, "min": STRENGTH_RANGE[0], "max": STRENGTH_RANGE[1], "step": 0.05,
                       "tooltip": "Mix of restored and original face: 1 restored, 0 the input unchanged."})
_COLORFIX = ([VARIANT_COLORFIX, *COLORFIXES], {"default": VARIANT_COLORFIX})


class InterLCMModelLoader:
    """Opens a backend on a weights / ONNX / engines folder (or random preset weights) and keeps it."""

    CATEGORY = CATEGORY
    RETURN_TYPES = (MODEL,)
    RETURN_NAMES = ("model",)
    FUNCTION = "load"
    DESCRIPTION = __doc__

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "source": (list(SOURCES), {"default": "weights"}),
            "folder": ("STRING", {"default": "", "tooltip": "interlcm-weights, interlcm-export or interlcm-trt build folder."}),
            "preset": (list(PRESETS), {"default": "tiny", "tooltip": "Source 'preset' only: random weights of this size."}),
            "backend": (list(BACKENDS), {"default": BACKENDS[0]}),
            "precision": (list(PRECISIONS), {"default": PRECISIONS[0], "tooltip": "ONNX files to run."}),
            "variant": (list(VARIANTS), {"default": DEFAULT_VARIANT}),
            "batch": ("INT", {"default": 1, "min": 1, "max": 63, "tooltip": "Faces per model batch."}),
        }}

    def load(self, source: str, folder: str, preset: str, backend: str, precision: str, variant: str,
             batch: int) -> tuple[LoadedRestorer]:
        return (load_model(source, folder, preset, backend, precision, variant, batch),)


class InterLCMRestoreFaces:
    """Every face of each image detected, aligned, restored and pasted back (whole photos)."""

    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "restore"
    DESCRIPTION = __doc__

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "model": (MODEL,),
            "image": ("IMAGE",),
            "seed": _SEED,
            "strength": _STRENGTH,
            "upscale": ("INT", {"default": 1, "min": 1, "max": 8, "tooltip": "Output size factor."}),
            "detector": (list(DETECTORS), {"default": DEFAULT_DETECTOR}),
            "only_center_face": ("BOOLEAN", {"default": False}),
            "colorfix": _COLORFIX,
            "bg_upsampler": (list(UPSAMPLER_CHOICES), {"default": UPSAMPLER_CHOICES[0]}),
            "face_upsample": ("BOOLEAN", {"default": False}),
        }}

    def restore(self, model: LoadedRestorer, image: torch.Tensor, seed: int, strength: float, upscale: int,
                detector: str, only_center_face: bool, colorfix: str, bg_upsampler: str,
                face_upsample: bool) -> tuple[torch.Tensor]:
        photo = PhotoOptions(upscale=upscale, only_center_face=only_center_face, strength=strength)
        request = RestoreRequest(photo, seed, None if colorfix == VARIANT_COLORFIX else colorfix, detector,
                                 bg_upsampler == UPSAMPLER, face_upsample)
        return (_restore(model, image, request),)


class InterLCMRestoreAlignedFace:
    """Aligned face crops (FFHQ-style, face centred) restored; returned at the model's resolution."""

    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "restore"
    DESCRIPTION = __doc__

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"model": (MODEL,), "image": ("IMAGE",), "seed": _SEED, "strength": _STRENGTH,
                             "colorfix": _COLORFIX}}

    def restore(self, model: LoadedRestorer, image: torch.Tensor, seed: int, strength: float,
                colorfix: str) -> tuple[torch.Tensor]:
        request = RestoreRequest(PhotoOptions(aligned=True, strength=strength), seed,
                                 None if colorfix == VARIANT_COLORFIX else colorfix)
        return (_restore(model, image, request),)


NODE_CLASS_MAPPINGS = {
    "InterLCMModelLoader": InterLCMModelLoader,
    "InterLCMRestoreFaces": InterLCMRestoreFaces,
    "InterLCMRestoreAlignedFace": InterLCMRestoreAlignedFace,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "InterLCMModelLoader": "InterLCM model loader",
    "InterLCMRestoreFaces": "InterLCM restore faces",
    "InterLCMRestoreAlignedFace": "InterLCM restore aligned face",
}
