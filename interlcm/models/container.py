"""InterLCM's five networks in one container, and seeded random ones for any preset."""

from __future__ import annotations

import ctypes
import gc
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial

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


NETWORKS = ("clip", "visual_encoder", "spatial_encoder", "unet", "vae")  # InterLCMModels' network fields


class ModelSource:
    """InterLCMModels' attributes, each network made on first use and dropped again by `release()`.

    For code that needs one network at a time (export and validation go component by component):
    it holds what the current component uses, not all five (sd15: the UNet's 3.4 GB, not 5.5 GB plus
    an export's working copies). `load_all()` makes the eager InterLCMModels, from the same makers.
    """

    def __init__(
        self,
        config: PresetConfig,
        makers: Mapping[str, Callable[[], nn.Module]],  # NETWORKS and face network names -> a fresh eval() module
        origin: str,
        identity: WeightsIdentity | None = None,
    ):
        self.config, self.origin, self.identity = config, origin, identity
        self._makers = dict(makers)
        self._alive: dict[str, nn.Module] = {}

    def network(self, name: str) -> nn.Module:
        if name not in self._alive:
            self._alive[name] = self._makers[name]().eval().requires_grad_(False)
        return self._alive[name]

    clip = property(lambda self: self.network("clip"))
    visual_encoder = property(lambda self: self.network("visual_encoder"))
    spatial_encoder = property(lambda self: self.network("spatial_encoder"))
    unet = property(lambda self: self.network("unet"))
    vae = property(lambda self: self.network("vae"))

    @property
    def faces(self) -> Mapping[str, nn.Module]:
        """The face networks this source can make, made when looked up."""
        return _Faces(self)

    def alive(self) -> list[str]:
        """The networks held now."""
        return list(self._alive)

    def release(self) -> None:
        """Drop every network held (their memory goes back when the caller holds no reference either)."""
        self._alive.clear()
        gc.collect()
        _trim_heap()

    def load_all(self) -> InterLCMModels:
        faces = [name for name in self._makers if name not in NETWORKS]
        return InterLCMModels(
            self.config, *(self.network(name) for name in NETWORKS), origin=self.origin,
            faces={name: self.network(name) for name in faces}, identity=self.identity,
        ).eval()


def _trim_heap() -> None:
    """Give freed heap pages back to the OS (glibc keeps them: after a 3.4 GB UNet is freed, the next
    network would otherwise add to the process's resident size instead of reusing them)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, Windows, musl): nothing to do
        pass


class _Faces(Mapping[str, nn.Module]):
    def __init__(self, source: ModelSource):
        self.source = source

    def __getitem__(self, name: str) -> nn.Module:
        if name in NETWORKS or name not in self.source._makers:
            raise KeyError(name)
        return self.source.network(name)

    def __iter__(self) -> Iterator[str]:
        return (name for name in self.source._makers if name not in NETWORKS)

    def __len__(self) -> int:
        return sum(1 for _ in self)


def release(models: InterLCMModels | ModelSource | object) -> None:
    """Let a ModelSource drop the networks it holds; an eager container keeps its own."""
    if isinstance(models, ModelSource):
        models.release()


def random_source(cfg: PresetConfig, seed: int = 0, faces: Iterable[str] = ()) -> ModelSource:
    """Seeded random networks for any preset (no download needed), plus the named face networks.

    Each network has its own seed, so the weights do not depend on which are made, or in what order.
    """
    def seeded(offset: int, make: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
        def made() -> nn.Module:
            torch.manual_seed(seed * 1000 + offset)  # per component: independent of build order
            module = make()
            _fill_zero_weights(module, torch.Generator().manual_seed(seed * 1000 + offset))
            return module

        return made

    makers = {
        "clip": seeded(1, lambda: ClipImageEncoder(cfg.clip)),
        "visual_encoder": seeded(2, lambda: VisualEncoder(cfg.visual_encoder, cfg.clip_tokens, cfg.clip_width)),
        "spatial_encoder": seeded(3, lambda: build_spatial_encoder(cfg.unet, cfg.spatial_encoder)),
        "unet": seeded(4, lambda: UNet2DConditionModel(**cfg.unet)),
        "vae": seeded(5, lambda: AutoencoderKL(**cfg.vae)),
    }
    for name in faces:
        makers[name] = partial(random_network, name, seed * 1000 + 10 + list(FACE_NETWORKS).index(name))
    return ModelSource(cfg, makers, f"random, seed {seed}", WeightsIdentity.random(cfg.name, seed))


def build_random(cfg: PresetConfig, seed: int = 0, faces: Iterable[str] = ()) -> InterLCMModels:
    """Every component with seeded random weights (no download needed), plus the named face networks."""
    return random_source(cfg, seed, faces).load_all()
