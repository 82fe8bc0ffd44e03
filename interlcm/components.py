"""One description per deployable component.

Each `Component` says how to build its torch module from the loaded models, the
ordered names and shapes of its inputs and outputs for a preset and batch, which
axes are dynamic, and how close an exported copy must stay to torch. Export,
validation, engine building, the runtimes, the parity tests and the benchmarks
all iterate over `COMPONENTS`; none of them restates a name or a shape.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from interlcm.colorfix import AdaInColorFix, WaveletColorFix
from interlcm.config import PresetConfig
from interlcm.models.container import InterLCMModels
from interlcm.models.lcm import UNetStep, VaeDecode, VaeEncode
from interlcm.models.spatial_encoder import SpatialCondition, SpatialEncoderStep

Shape = tuple[int, ...]


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: Callable[[PresetConfig, int], Shape]  # (preset, batch) -> full shape; axis 0 is the batch
    dtype: torch.dtype = torch.float32


@dataclass(frozen=True)
class Tolerance:
    """max |onnx - torch| must stay below `rel` * max |torch| (+ `abs` for near-zero outputs)."""

    rel: float
    abs: float = 1e-6


# Kept in fp32 inside fp16 graphs: op types, or fragments of node names (module scopes).
# Normalisation statistics and softmax as everyone does; `time_proj` because the sinusoidal
# timestep embedding multiplies t (up to 999, an fp16 ulp of 0.5) by its frequencies.
FP16_KEEP_FP32: tuple[str, ...] = ("InstanceNormalization", "LayerNormalization", "GroupNormalization", "Softmax")
FP16_KEEP_TIME: tuple[str, ...] = (*FP16_KEEP_FP32, "time_proj/")
TOL_FP16_SE = Tolerance(3e-2)  # ControlNet residuals: measured 8.5e-3 on tiny


@dataclass(frozen=True)
class Component:
    name: str
    build: Callable[[InterLCMModels], nn.Module]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    # fp32 export vs torch: float reassociation only, so tight.
    tol_fp32: Tolerance = Tolerance(1e-4)
    # fp16 export vs torch fp32: measured on tiny up to 2.2e-3 (SE: 8.5e-3); ~5x margin (export/README.md).
    tol_fp16: Tolerance = Tolerance(1e-2)
    optional: bool = False  # exported only when asked (benchmark variants)
    fp16_keep_fp32: tuple[str, ...] = FP16_KEEP_FP32  # op types / node-name fragments left in fp32
    notes: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.outputs)

    def input_shapes(self, cfg: PresetConfig, batch: int) -> dict[str, Shape]:
        return {t.name: t.shape(cfg, batch) for t in self.inputs}

    def output_shapes(self, cfg: PresetConfig, batch: int) -> dict[str, Shape]:
        return {t.name: t.shape(cfg, batch) for t in self.outputs}

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """Only the batch axis is dynamic; resolution is fixed per export (recorded in the manifest)."""
        return {n: {0: "batch"} for n in (*self.input_names, *self.output_names)}

    def profile(self, cfg: PresetConfig, batch: tuple[int, int, int]) -> dict[str, tuple[Shape, Shape, Shape]]:
        """(min, opt, max) shape per input for a batch range: an engine's optimisation profile."""
        lo, opt, hi = batch
        return {t.name: (t.shape(cfg, lo), t.shape(cfg, opt), t.shape(cfg, hi)) for t in self.inputs}

    def sample_inputs(self, cfg: PresetConfig, batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
        """Random inputs in each tensor's realistic range, for export tracing and parity checks."""
        gen = torch.Generator().manual_seed(seed)
        out = {}
        for spec in self.inputs:
            shape = spec.shape(cfg, batch)
            if spec.name == "timestep":
                # any of the distillation timesteps the sampler can use
                out[spec.name] = torch.randint(0, cfg.scheduler["num_train_timesteps"], shape, generator=gen).float()
            elif spec.name in ("image", "decoded", "reference"):
                out[spec.name] = torch.rand(shape, generator=gen) * 2 - 1  # images live in [-1, 1]
            else:
                out[spec.name] = torch.randn(shape, generator=gen)
        return out


# --- shapes -------------------------------------------------------------------------------


def _image(cfg: PresetConfig, b: int) -> Shape:
    return (b, 3, cfg.resolution, cfg.resolution)


def _latent(cfg: PresetConfig, b: int) -> Shape:
    return (b, cfg.latent_channels, cfg.latent_size, cfg.latent_size)


def _context(cfg: PresetConfig, b: int) -> Shape:
    return (b, cfg.visual_encoder.out_channels, cfg.clip_width)  # (B, 77, 768)


def residual_shapes(cfg: PresetConfig, b: int) -> list[Shape]:
    """Shapes of the SE's down residuals (conv_in, then each resnet and downsampler) and mid residual."""
    chans = cfg.unet["block_out_channels"]
    size = cfg.latent_size
    shapes = [(b, chans[0], size, size)]
    for i, ch in enumerate(chans):
        shapes += [(b, ch, size, size)] * cfg.unet["layers_per_block"]
        if i < len(chans) - 1:
            size //= 2
            shapes.append((b, ch, size, size))
    return shapes + [(b, chans[-1], size, size)]


# 12 down + 1 mid residuals: the SD-1.5 layout, which every preset keeps
RESIDUALS = tuple(TensorSpec(f"res_{i}", lambda c, b, i=i: residual_shapes(c, b)[i]) for i in range(13))
IMAGE = TensorSpec("image", _image)
SAMPLE = TensorSpec("sample", _latent)
TIMESTEP = TensorSpec("timestep", lambda c, b: (b,))
CONTEXT = TensorSpec("context", _context)
GUIDANCE = TensorSpec("guidance", lambda c, b: (b, c.guidance_dim))
# colour fix input: ONNX cannot name a graph input and output alike, and the output is the image
DECODED = TensorSpec("decoded", _image)
COND = TensorSpec("cond", lambda c, b: (b, c.unet["block_out_channels"][0], c.latent_size, c.latent_size))


# --- fused variant (benchmark option, like NVIDIA's demo fusing ControlNet into the UNet) -----


class DenoiseStep(nn.Module):
    """SE then UNet in one graph: eps from (z_t, t, c_v, w, cond)."""

    def __init__(self, se: SpatialEncoderStep, unet: UNetStep):
        super().__init__()
        self.se, self.unet = se, unet

    def forward(self, sample, timestep, context, guidance, cond):  # noqa: ANN001 - tensors
        return self.unet(sample, timestep, context, guidance, *self.se(sample, timestep, context, cond))


class SpatialEncoderFull(nn.Module):
    """The release's SE call: the conditioning embedding is recomputed from the image every step."""

    def __init__(self, cond: SpatialCondition, step: SpatialEncoderStep):
        super().__init__()
        self.cond, self.step = cond, step

    def forward(self, sample, timestep, context, image):  # noqa: ANN001 - tensors
        return self.step(sample, timestep, context, self.cond(image))


COMPONENTS: tuple[Component, ...] = (
    Component(
        "clip",
        lambda m: m.clip,
        inputs=(IMAGE,),
        outputs=(TensorSpec("tokens", lambda c, b: (b, c.clip_tokens, c.clip_width)),),
    ),
    Component(
        "visual_encoder",
        lambda m: m.visual_encoder,
        inputs=(TensorSpec("tokens", lambda c, b: (b, c.clip_tokens, c.clip_width)),),
        outputs=(CONTEXT,),
    ),
    Component("se_condition", lambda m: SpatialCondition(m.spatial_encoder), inputs=(IMAGE,), outputs=(COND,)),
    Component(
        "spatial_encoder",
        lambda m: SpatialEncoderStep(m.spatial_encoder),
        inputs=(SAMPLE, TIMESTEP, CONTEXT, COND),
        outputs=RESIDUALS,
        fp16_keep_fp32=FP16_KEEP_TIME,
        tol_fp16=TOL_FP16_SE,
    ),
    Component(
        "unet",
        lambda m: UNetStep(m.unet),
        inputs=(SAMPLE, TIMESTEP, CONTEXT, GUIDANCE, *RESIDUALS),
        outputs=(TensorSpec("eps", _latent),),
        fp16_keep_fp32=FP16_KEEP_TIME,
    ),
    Component("vae_encoder", lambda m: VaeEncode(m.vae), inputs=(IMAGE,), outputs=(TensorSpec("latent", _latent),)),
    Component("vae_decoder", lambda m: VaeDecode(m.vae), inputs=(TensorSpec("latent", _latent),), outputs=(IMAGE,)),
    Component(
        "colorfix_wavelet",
        lambda m: WaveletColorFix(),
        inputs=(DECODED, TensorSpec("reference", _image)),
        outputs=(IMAGE,),
    ),
    Component(
        "colorfix_adain",
        lambda m: AdaInColorFix(),
        inputs=(DECODED, TensorSpec("reference", _image)),
        outputs=(IMAGE,),
    ),
    Component(
        "denoise_step",
        lambda m: DenoiseStep(SpatialEncoderStep(m.spatial_encoder), UNetStep(m.unet)),
        inputs=(SAMPLE, TIMESTEP, CONTEXT, GUIDANCE, COND),
        outputs=(TensorSpec("eps", _latent),),
        optional=True,
        fp16_keep_fp32=FP16_KEEP_TIME,
        tol_fp16=TOL_FP16_SE,
        notes="SE + UNet fused in one graph",
    ),
    Component(
        "spatial_encoder_full",
        lambda m: SpatialEncoderFull(SpatialCondition(m.spatial_encoder), SpatialEncoderStep(m.spatial_encoder)),
        inputs=(SAMPLE, TIMESTEP, CONTEXT, IMAGE),
        outputs=RESIDUALS,
        optional=True,
        fp16_keep_fp32=FP16_KEEP_TIME,
        tol_fp16=TOL_FP16_SE,
        notes="as released: image embedding recomputed every step",
    ),
)

BY_NAME: dict[str, Component] = {c.name: c for c in COMPONENTS}
DEFAULT_COMPONENTS: tuple[str, ...] = tuple(c.name for c in COMPONENTS if not c.optional)


def get_component(name: str) -> Component:
    try:
        return BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown component {name!r}: choose from {', '.join(BY_NAME)}") from None
