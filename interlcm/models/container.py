"""InterLCM's five networks in one container, and seeded random ones for any preset."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
from torch import nn

from interlcm.config import PresetConfig
from interlcm.faces.networks import FACE_NETWORKS, random_network
from interlcm.identity import WeightsIdentity
from interlcm.models.clip import ClipImageEncoder
from interlcm.models.spatial_encoder import build_spatial_encoder
from interlcm.models.visual_encoder import VisualEncoder


@dataclass
class InterLCMModels:
    """The five networks of InterLCM plus where their weights came from."""

    config: PresetConfig
    clip: ClipImageEncoder
    visual_encoder: VisualEncoder
    spatial_encoder: ControlNetModel
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    origin: str  # "random, seed N" or the weights folder and its identity
    # face detector / parser networks by component name (interlcm.faces.networks), when loaded
    faces: dict[str, nn.Module] = field(default_factory=dict)
    identity: WeightsIdentity | None = None  # typed origin; None for a folder until hashed (weights.folder_identity)
    # Real-ESRGAN (interlcm.models.rrdbnet.RRDBNet), when the restoring backend runs it (TorchBackend.load_upsampler)
    realesrgan: nn.Module | None = None

    def modules(self) -> dict[str, nn.Module]:
        return {
            "clip": self.clip,
            "visual_encoder": self.visual_encoder,
            "spatial_encoder": self.spatial_encoder,
            "unet": self.unet,
            "vae": self.vae,
            **self.faces,
            **({"realesrgan": self.realesrgan} if self.realesrgan is not None else {}),
        }

    def eval(self) -> InterLCMModels:
        for m in self.modules().values():
            m.eval().requires_grad_(False)
        return self

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> InterLCMModels:
        kwargs = {k: v for k, v in (("device", device), ("dtype", dtype)) if v is not None}
        for m in self.modules().values():
            m.to(**kwargs)
        return self


def _fill_zero_weights(module: nn.Module, gen: torch.Generator) -> None:
    """Give all-zero weight tensors random values.

    A fresh ControlNet's output convolutions are zero-initialised, so its
    residuals would be exact zeros and every SE parity test would compare
    zeros with zeros. Random presets must exercise every layer.
    """
    for p in module.parameters():
        if p.dim() >= 2 and not p.detach().any():
            fan_in = p[0].numel()
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=gen) / fan_in**0.5)


def build_random(cfg: PresetConfig, seed: int = 0, faces: Iterable[str] = ()) -> InterLCMModels:
    """Every component with seeded random weights (no download needed), plus the named face networks."""
    def seeded(offset: int, make: Callable[[], nn.Module]) -> nn.Module:
        torch.manual_seed(seed * 1000 + offset)  # per component: independent of build order
        module = make()
        _fill_zero_weights(module, torch.Generator().manual_seed(seed * 1000 + offset))
        return module

    return InterLCMModels(
        config=cfg,
        clip=seeded(1, lambda: ClipImageEncoder(cfg.clip)),
        visual_encoder=seeded(2, lambda: VisualEncoder(cfg.visual_encoder, cfg.clip_tokens, cfg.clip_width)),
        spatial_encoder=seeded(3, lambda: build_spatial_encoder(cfg.unet, cfg.spatial_encoder)),
        unet=seeded(4, lambda: UNet2DConditionModel(**cfg.unet)),
        vae=seeded(5, lambda: AutoencoderKL(**cfg.vae)),
        origin=f"random, seed {seed}",
        faces={name: random_network(name, seed * 1000 + 10 + list(FACE_NETWORKS).index(name)) for name in faces},
        identity=WeightsIdentity.random(cfg.name, seed),
    ).eval()

