"""One description per deployable component.

Each `Component` says how to build its torch module from the loaded models, the
ordered names and shapes of its inputs and outputs for a preset and batch, which
axes are dynamic, and how close an exported copy must stay to torch. Export,
validation, engine building, the runtimes, the parity tests and the benchmarks
all iterate over `COMPONENTS`; none of them restates a name or a shape.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from interlcm.checkpoint import WeightsError
from interlcm.colorfix import AdaInColorFix, WaveletColorFix
from interlcm.config import PresetConfig, get_upsampler
from interlcm.faces import parsenet
from interlcm.faces.networks import FACE_NETWORKS, face_module
from interlcm.faces.retinaface import num_priors
from interlcm.models.container import InterLCMModels
from interlcm.models.lcm import UNetStep, VaeDecode, VaeEncode
from interlcm.models.rrdbnet import UpsamplerModels
from interlcm.models.spatial_encoder import SpatialCondition, SpatialEncoderStep

Shape = tuple[int, ...]
Dims = Mapping[str, int]  # run-time sizes by dimension name, e.g. {"height": 480, "width": 640}


class InputError(ValueError):
    """Inputs a component cannot take (names, dtypes, shapes, sizes); nothing was run. The first line says
    what to do, a row per problem follows."""


@dataclass(frozen=True)
class Limits:
    """What one call of a component may be given on a backend: the batch range of one engine call and the
    range of each run-time dim (an engine profile's, or an export's)."""

    batch: tuple[int, int | None] = (1, None)  # (min, max) of one engine call; max None: any. Larger calls are split
    dims: Mapping[str, tuple[int, int]] = field(default_factory=dict)  # dimension name -> (min, max)


@dataclass(frozen=True)
class TensorSpec:
    name: str
    # (preset, batch) -> full shape; axis 0 is the batch. A tensor with `dynamic` axes
    # takes the run-time sizes too: (preset, batch, dims) -> shape.
    shape: Callable[..., Shape]
    dtype: torch.dtype = torch.float32
    # Axes other than the batch sized at run time: axis -> dimension name (the ONNX dim_param).
    # Output dimensions may be derived ones ("priors"), computed by `shape` from the input dims.
    dynamic: Mapping[int, str] = field(default_factory=dict)
    value_range: tuple[float, float] | None = None  # sample inputs: uniform in this range when set

    def at(self, cfg: PresetConfig, batch: int, dims: Dims) -> Shape:
        return self.shape(cfg, batch, dims) if self.dynamic else self.shape(cfg, batch)


@dataclass(frozen=True)
class Tolerance:
    """max |onnx - torch| must stay below `rel` * max |torch| (+ `abs` for near-zero outputs)."""

    rel: float
    abs: float = 1e-6


# Kept in fp32 inside fp16 graphs: op types, or fragments of node names (module scopes).
# Normalisation statistics as everyone does; `time_proj` because the sinusoidal timestep
# embedding multiplies t (up to 999, an fp16 ulp of 0.5) by its frequencies. Softmax is NOT
# kept: attention stays MatMul -> Softmax -> MatMul in fp16, the pattern TensorRT fuses into
# its MHA kernels (which accumulate the softmax in fp32 themselves); an fp32 Softmax island put
# a Cast on either side and broke the fusion. Measured on tiny with ONNX Runtime (CPU): image
# PSNR vs torch fp32 77.11 dB (3-step) / 72.26 dB (1-step) against 77.36 / 72.21 with the
# island, every component within its fp16 tolerance (export/README.md). Not yet measured at sd15 size.
FP16_KEEP_FP32: tuple[str, ...] = ("InstanceNormalization", "LayerNormalization", "GroupNormalization")
FP16_KEEP_TIME: tuple[str, ...] = (*FP16_KEEP_FP32, "time_proj/")
TOL_FP16_SE = Tolerance(3e-2)  # ControlNet residuals: measured 8.5e-3 on tiny
# bf16 (torch only) is judged by the fp16 limits times this: bf16 keeps 8 significant bits and fp16 11,
# so its rounding error is 2**3 times larger. Measured on tiny (torch CPU bf16 vs fp32, 3-step, seed 3):
# worst stage 4.1e-2 of max |ref| (SE residuals, limit 2.4e-1), CLIP context 2.2e-2 (limit 8e-2).
BF16_OVER_FP16 = 8


@dataclass(frozen=True)
class Component:
    name: str
    build: Callable[[InterLCMModels | UpsamplerModels], nn.Module]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    # fp32 export vs torch: float reassociation only, so tight.
    tol_fp32: Tolerance = Tolerance(1e-4)
    # fp16 export vs torch fp32: measured on tiny up to 2.2e-3 (SE: 8.5e-3); ~5x margin (export/README.md).
    tol_fp16: Tolerance = Tolerance(1e-2)
    optional: bool = False  # exported only when asked (benchmark variants, face networks)
    # (min, opt, max) of each input dimension sized at run time (see TensorSpec.dynamic): the
    # engine profile's range; `opt` is the size traced at export and the default everywhere.
    dims: Mapping[str, tuple[int, int, int]] = field(default_factory=dict)
    fp16_keep_fp32: tuple[str, ...] = FP16_KEEP_FP32  # op types / node-name fragments left in fp32
    notes: str = ""

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.outputs)

    def sizes(self, which: str = "opt") -> dict[str, int]:
        """The run-time dims at the range's "min", "opt" or "max" ({} for fixed-size components)."""
        index = ("min", "opt", "max").index(which)
        return {name: r[index] for name, r in self.dims.items()}

    def with_dims(self, ranges: Mapping[str, tuple[int, int, int]]) -> Component:
        """This component with other (min, opt, max) ranges for the dims it has (others ignored)."""
        for name, (lo, opt, hi) in ranges.items():
            if not 1 <= lo <= opt <= hi:
                raise ValueError(f"{name} range {lo}:{opt}:{hi} must satisfy 1 <= min <= opt <= max")
        return replace(self, dims={n: tuple(ranges.get(n, r)) for n, r in self.dims.items()})

    def limits(self, batch: tuple[int, int | None] = (1, None)) -> Limits:
        """This description's ranges (its `dims` min and max) with a batch range: what a backend without an
        engine profile of its own accepts."""
        return Limits(batch, {name: (lo, hi) for name, (lo, _, hi) in self.dims.items()})

    def dims_of(self, shapes: Mapping[str, Shape]) -> dict[str, int]:
        """The run-time dims of a call, read off its inputs' `dynamic` axes (input name -> shape)."""
        dims: dict[str, int] = {}
        for spec in self.inputs:
            shape = shapes.get(spec.name)
            for axis, name in spec.dynamic.items():
                if shape is not None and len(shape) > axis:
                    dims.setdefault(name, int(shape[axis]))
        return dims

    def check(self, cfg: PresetConfig, inputs: Mapping[str, object], limits: Limits | None = None) -> tuple[int, dict[str, int]]:
        """The one input check of every backend: names, dtypes, shapes and run-time sizes against this
        description and `limits`, every problem in one InputError before anything runs.

        Returns the call's (batch, dims): the sizes its outputs are allocated at (`output_shapes`).
        """
        limits = limits or self.limits()
        problems: list[tuple[str, str, str]] = []  # (tensor, expected, got)
        fixes: list[str] = []
        problems += [(name, "not an input", "given") for name in inputs if name not in self.input_names]
        tensors: dict[str, torch.Tensor] = {}
        for spec in self.inputs:
            value = inputs.get(spec.name)
            if value is None:
                problems.append((spec.name, "an input", "missing"))
            elif not isinstance(value, torch.Tensor):
                problems.append((spec.name, "a tensor", type(value).__name__))
            else:
                tensors[spec.name] = value
        shapes = {name: tuple(t.shape) for name, t in tensors.items()}
        batches = {s[0] for s in shapes.values() if s}
        if len(batches) > 1:
            problems.append(("(batch)", "one batch size for all inputs", ", ".join(map(str, sorted(batches)))))
        batch = min(batches) if batches else 0
        dims = self.dims_of(shapes)
        for name, size in dims.items():
            lo, hi = limits.dims.get(name, (1, None))
            if size < lo or (hi is not None and size > hi):
                problems.append((f"({name})", f"{lo}..{hi if hi is not None else ''}", str(size)))
                fixes.append(f"{name} {size} is outside {lo}..{hi}: make the input fit, or re-export with "
                             f"--dims {name}=MIN:OPT:MAX and rebuild")
        if batch < limits.batch[0]:
            problems.append(("(batch)", f"at least {limits.batch[0]}", str(batch)))
        expected = self.input_shapes(cfg, max(batch, 1), {**self.sizes(), **dims})
        for spec in self.inputs:
            tensor = tensors.get(spec.name)
            if tensor is None:
                continue
            want = expected[spec.name]
            # any float dtype: runtimes convert to their graph's (autocast training hands bf16 to torch)
            if shapes[spec.name] != want or tensor.is_floating_point() != spec.dtype.is_floating_point:
                wanted = "(B" + "".join(f", {spec.dynamic.get(i, d)}" for i, d in enumerate(want) if i) + ")"
                problems.append((spec.name, f"{str(spec.dtype).removeprefix('torch.')} {wanted}",
                                 f"{str(tensor.dtype).removeprefix('torch.')} {shapes[spec.name]}"))
                if len(shapes[spec.name]) == len(want) and any(
                    g != w for i, (g, w) in enumerate(zip(shapes[spec.name], want)) if i and i not in spec.dynamic
                ):
                    fixes.append(f"the graphs were made for the {cfg.name} preset at {cfg.resolution} px: "
                                 "re-export (interlcm-export --resolution ...) for these inputs, or fix the caller")
        if problems:
            width = max(len(p[0]) for p in problems)
            rows = "\n".join(f"  {t:<{width}}  expected {e:<32}  got {g}" for t, e, g in problems)
            fix = fixes[0] if fixes else "fix the caller (component descriptions: interlcm/components.py)"
            raise InputError(f"{self.name}: {len(problems)} input problem(s), nothing was run; {fix}:\n{rows}")
        return batch, dims

    def input_shapes(self, cfg: PresetConfig, batch: int, dims: Dims | None = None) -> dict[str, Shape]:
        dims = self.sizes() if dims is None else dims
        return {t.name: t.at(cfg, batch, dims) for t in self.inputs}

    def output_shapes(self, cfg: PresetConfig, batch: int, dims: Dims | None = None) -> dict[str, Shape]:
        dims = self.sizes() if dims is None else dims
        return {t.name: t.at(cfg, batch, dims) for t in self.outputs}

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """The batch axis, and the `dynamic` axes of each tensor; the resolution of the LCM chain
        is fixed per export (recorded in the manifest)."""
        return {t.name: {0: "batch", **t.dynamic} for t in (*self.inputs, *self.outputs)}

    def profile(self, cfg: PresetConfig, batch: tuple[int, int, int]) -> dict[str, tuple[Shape, Shape, Shape]]:
        """(min, opt, max) shape per input for a batch range and the `dims` ranges: an engine's profile."""
        ends = tuple(zip(batch, ("min", "opt", "max")))
        return {t.name: tuple(t.at(cfg, b, self.sizes(w)) for b, w in ends) for t in self.inputs}

    def sample_inputs(
        self, cfg: PresetConfig, batch: int, seed: int = 0, dims: Dims | None = None
    ) -> dict[str, torch.Tensor]:
        """Random inputs in each tensor's realistic range, for export tracing and parity checks."""
        gen = torch.Generator().manual_seed(seed)
        out = {}
        for spec, shape in zip(self.inputs, self.input_shapes(cfg, batch, dims).values()):
            if spec.value_range is not None:
                lo, hi = spec.value_range
                out[spec.name] = torch.rand(shape, generator=gen) * (hi - lo) + lo
            elif spec.name == "timestep":
                # any of the distillation timesteps the sampler can use
                out[spec.name] = torch.randint(0, cfg.scheduler["num_train_timesteps"], shape, generator=gen).float()
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
IMAGE = TensorSpec("image", _image, value_range=(-1, 1))  # images live in [-1, 1]
SAMPLE = TensorSpec("sample", _latent)
TIMESTEP = TensorSpec("timestep", lambda c, b: (b,))
CONTEXT = TensorSpec("context", _context)
GUIDANCE = TensorSpec("guidance", lambda c, b: (b, c.guidance_dim))
# colour fix input: ONNX cannot name a graph input and output alike, and the output is the image
DECODED = TensorSpec("decoded", _image, value_range=(-1, 1))
# Real-ESRGAN tiles: any even height and width (x2 unshuffles by 2). The upsampler feeds tiles of
# up to tile + 2 * tile_pad (480 px with the release's 400 / 40), edge tiles down to the unshuffle
# grid (2 px); traced at 64 px. Values in [0, 1].
TILE_DIMS = {"tile_height": (2, 64, 480), "tile_width": (2, 64, 480)}
TILE = TensorSpec(
    "tile",
    lambda c, b, d: (b, 3, d["tile_height"], d["tile_width"]),
    dynamic={2: "tile_height", 3: "tile_width"},
    value_range=(0, 1),
)
UPSCALED = TensorSpec(
    "upscaled",
    lambda c, b, d: (b, 3, d["tile_height"] * get_upsampler(c.name).scale, d["tile_width"] * get_upsampler(c.name).scale),
    dynamic={2: "out_height", 3: "out_width"},
)
COND = TensorSpec("cond", lambda c, b: (b, c.unet["block_out_channels"][0], c.latent_size, c.latent_size))


# --- fused variant (benchmark option, like NVIDIA's demo fusing ControlNet into the UNet) -----


class DenoiseStep(nn.Module):
    """SE then UNet in one graph: eps from (z_t, t, c_v, w, cond)."""

    def __init__(self, se: SpatialEncoderStep, unet: UNetStep):
        super().__init__()
        self.se, self.unet = se, unet

    def forward(self, sample, timestep, context, guidance, cond):
        return self.unet(sample, timestep, context, guidance, *self.se(sample, timestep, context, cond))


class SpatialEncoderFull(nn.Module):
    """The release's SE call: the conditioning embedding is recomputed from the image every step."""

    def __init__(self, cond: SpatialCondition, step: SpatialEncoderStep):
        super().__init__()
        self.cond, self.step = cond, step

    def forward(self, sample, timestep, context, image):
        return self.step(sample, timestep, context, self.cond(image))


def _loaded(module: nn.Module | None, what: str) -> nn.Module:
    if module is None:
        raise WeightsError(f"no {what} weights loaded: load them with the models (interlcm-weights download --realesrgan)")
    return module


# --- face networks (whole-photo mode; optional: the LCM chain does not need them) --------------

_SQUARE = {2: "size", 3: "size"}

# Photos of any size: RGB pixels in [0, 255] at the detection size (H and W sized at run time).
PIXELS = TensorSpec(
    "pixels", lambda c, b, d: (b, 3, d["height"], d["width"]), dynamic={2: "height", 3: "width"}, value_range=(0, 255)
)
# Engine profile of the detectors: from tiny test photos to 4096 px sides; traced at 640 px, the short
# side the release detects at. The release detects at the photo's own size (its resize=640 only
# enlarges), so a 12 MP phone photo (4032x3024, either way up) is detected at 4032x3024: 4096 holds
# it. Larger detection views are shrunk to fit, the scale carried back (faces/detectors.py).
# Cost: TensorRT sizes a detector context's memory for the profile's max (batch max x 4096^2).
DETECTOR_DIMS = {"height": (64, 640, 4096), "width": (64, 640, 4096)}
# fp16 detectors vs torch fp32: measured on random weights (export/README.md); ~5x margin.
TOL_FP16_DETECTOR = Tolerance(1e-2)


def _detector(name: str) -> Component:
    anchors = FACE_NETWORKS[name].config

    def per_prior(values: int) -> Callable[..., Shape]:
        return lambda c, b, d: (b, num_priors(anchors, d["height"], d["width"]), values)

    return Component(
        name,
        lambda m: face_module(m.faces, name),
        inputs=(PIXELS,),
        outputs=tuple(
            TensorSpec(out, per_prior(values), dynamic={1: "priors"})
            for out, values in (("loc", 4), ("conf", 2), ("landmarks", 10))
        ),
        optional=True,
        dims=DETECTOR_DIMS,
        tol_fp16=TOL_FP16_DETECTOR,
        notes="RetinaFace: box offsets, softmax face scores and landmark offsets per prior box",
    )


FACE_COMPONENTS: tuple[Component, ...] = (
    _detector("retinaface_resnet50"),
    _detector("retinaface_mobile"),
    Component(
        "parsenet",
        lambda m: face_module(m.faces, "parsenet"),
        inputs=(
            TensorSpec("face", lambda c, b, d: (b, 3, d["size"], d["size"]), dynamic=_SQUARE, value_range=(-1, 1)),
        ),
        outputs=(TensorSpec("parsing", lambda c, b, d: (b, parsenet.NUM_CLASSES, d["size"], d["size"]), dynamic=_SQUARE),),
        optional=True,
        # Always 512 px in use (the released network's size). The graph is fully convolutional,
        # so tests export it at a few dozen pixels: a 512-px forward takes ~40 s on a shared CPU.
        dims={"size": (parsenet.IN_SIZE,) * 3},
        notes="ParseNet class logits of an aligned 512-px face (paste-back mask)",
    ),
)

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
        inputs=(DECODED, TensorSpec("reference", _image, value_range=(-1, 1))),
        outputs=(IMAGE,),
    ),
    Component(
        "colorfix_adain",
        lambda m: AdaInColorFix(),
        inputs=(DECODED, TensorSpec("reference", _image, value_range=(-1, 1))),
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
    *FACE_COMPONENTS,
    Component(
        "realesrgan",
        lambda m: _loaded(m.realesrgan, "Real-ESRGAN (realesrgan/RealESRGAN_x2plus.pth)"),
        inputs=(TILE,),
        outputs=(UPSCALED,),
        optional=True,
        dims=TILE_DIMS,
        notes="background / face upsampler (RRDBNet); dynamic tile height and width",
    ),
)

BY_NAME: dict[str, Component] = {c.name: c for c in COMPONENTS}
DEFAULT_COMPONENTS: tuple[str, ...] = tuple(c.name for c in COMPONENTS if not c.optional)


def get_component(name: str) -> Component:
    try:
        return BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown component {name!r}: choose from {', '.join(BY_NAME)}") from None
