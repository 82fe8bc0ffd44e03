"""CLIP vision tower with the release's preprocessing inside the module."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """Crop the centre `size` x `size`, rounding the offset as torchvision does."""
    h, w = (int(d) for d in x.shape[-2:])  # python ints even while tracing for ONNX (resolution is fixed)
    top = int(round((h - size) / 2.0))
    left = int(round((w - size) / 2.0))
    return x[..., top : top + size, left : left + size]


class ClipImageEncoder(nn.Module):
    """Aligned face in [-1, 1] -> CLIP tokens after the final layer norm.

    The release feeds `encode_image` a tensor through torchvision 0.14 transforms:
    map to [0, 1], resize the short side with bicubic and *no antialiasing* (the
    tensor path of that version), centre crop, CLIP normalisation. It keeps every
    token (CLS + patches) after `ln_post` and has no projection head.
    """

    def __init__(self, config: dict | CLIPVisionConfig, antialias: bool = False):
        super().__init__()
        if isinstance(config, dict):
            config = CLIPVisionConfig(**config)
        self.model = CLIPVisionModel(config)
        self.image_size = config.image_size
        self.antialias = antialias  # False reproduces the release; True is the "correct" resize
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_model(cls, model: CLIPVisionModel) -> ClipImageEncoder:
        enc = cls(model.config)
        enc.model = model
        return enc

    @property
    def post_layernorm(self) -> nn.LayerNorm:
        # transformers >= 5 keeps it on CLIPVisionModel, older versions under .vision_model
        return getattr(self.model, "vision_model", self.model).post_layernorm

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        x = (image + 1.0) / 2.0  # (B, 3, H, W) in [0, 1]
        h, w = x.shape[-2:]
        scale = self.image_size / min(h, w)
        size = (self.image_size, int(w * scale)) if h <= w else (int(h * scale), self.image_size)
        x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=self.antialias)
        x = center_crop(x, self.image_size)
        return (x - self.mean) / self.std

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        pixels = self.preprocess(image)  # (B, 3, 224, 224)
        hidden = self.model(pixel_values=pixels).last_hidden_state  # (B, 197, 768)
        return self.post_layernorm(hidden)  # every token, not only CLS
