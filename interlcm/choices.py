"""Every list of choices a user picks from, stated once.

CLIs (`click.Choice(...)`), configs and checks read these; nobody restates them.
This module imports nothing heavy, so `--help` stays instant. Presets are data in
`interlcm.config` (`PRESETS`); components are described in `interlcm.components`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Variant:
    """A released pair of Visual and Spatial Encoder checkpoints."""

    name: str
    steps: int  # network steps it was trained for; the LCM schedule has steps + 1 timesteps
    suffix: str  # released file names: visual_encoder_<suffix>.pth, spatial_encoder_<suffix>.pth
    colorfix: str  # the colour fix it is meant to run with (the spec: colourisation/inpainting use none)
    colourises: bool = False  # gives grey photos colour: their faces are not turned back to grey

    @property
    def keep_gray(self) -> bool:
        """Whether a grayscale photo gets gray faces back (every variant but the colourisation one)."""
        return not self.colourises

    @property
    def files(self) -> tuple[str, str]:
        """The released (Visual Encoder, Spatial Encoder) checkpoint names."""
        return f"visual_encoder_{self.suffix}.pth", f"spatial_encoder_{self.suffix}.pth"


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("3step", 3, "3step", "wavelet"),  # the paper's setting
        Variant("1step", 1, "1step", "wavelet"),
        Variant("colorization", 1, "colorization_1step", "none", colourises=True),
        Variant("inpainting", 1, "inpainting_1step", "none"),
    )
}
DEFAULT_VARIANT = "3step"
STEPS: tuple[int, ...] = tuple(sorted({v.steps for v in VARIANTS.values()}, reverse=True))  # (3, 1)

COLORFIXES: tuple[str, ...] = ("wavelet", "adain", "none")  # wavelet is the paper's; each but none is a component
BACKENDS: tuple[str, ...] = ("auto", "tensorrt", "onnxruntime", "torch")
UPSAMPLER = "realesrgan"  # Real-ESRGAN x2plus, also the name of its component (interlcm.upsampler)
UPSAMPLER_CHOICES: tuple[str, ...] = ("none", UPSAMPLER)  # --bg-upsampler
# Precisions a user can ask for. An export holds fp32 and/or fp16 ONNX files; TensorRT engines are built
# from the fp16 files; torch casts its weights (fp16/bf16, with the fp16 export's fp32 islands).
EXPORT_PRECISIONS: tuple[str, ...] = ("fp32", "fp16")
PRECISIONS: tuple[str, ...] = (*EXPORT_PRECISIONS, "bf16")
BACKEND_PRECISIONS: dict[str, tuple[str, ...]] = {
    "torch": PRECISIONS,  # fp16 needs a CUDA device (interlcm.torch_backend.check_precision)
    "onnxruntime": EXPORT_PRECISIONS,
    "tensorrt": ("fp16",),
}
GUIDANCE_SCALE = 8.0  # the release's value; the UNet sees w = guidance_scale - 1 = 7


def get_variant(name: str) -> Variant:
    try:
        return VARIANTS[name]
    except KeyError:
        raise ValueError(f"unknown variant {name!r}: choose one of {', '.join(VARIANTS)}") from None


def variant_for_steps(steps: int) -> Variant:
    """The restoration variant with this many network steps (`--steps 3` or `--steps 1`)."""
    for variant in VARIANTS.values():
        if variant.steps == steps:
            return variant
    raise ValueError(f"no released checkpoints for {steps}-step InterLCM: use --steps {' or --steps '.join(map(str, STEPS))}")


def check_precision(kind: str, precision: str) -> str:
    """`precision` if the `kind` backend runs it, else one sentence naming what it runs."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    runs = BACKEND_PRECISIONS[kind]
    if precision not in runs:
        raise ValueError(f"the {kind} backend runs {' or '.join(runs)}, not {precision}: "
                         f"use --precision {runs[0]}" + (" or --backend torch" if kind != "torch" else ""))
    return precision


def check_colorfix(mode: str) -> str:
    if mode not in COLORFIXES:
        raise ValueError(f"unknown colour fix {mode!r}: choose one of {', '.join(COLORFIXES)}")
    return mode


# How much of each restored face is pasted over the original: 1.0 the restored face (the default), 0.0 the
# input unchanged, in between a per-pixel mix. A1111 calls it "visibility", facefusion "blend".
STRENGTH_RANGE: tuple[float, float] = (0.0, 1.0)
DEFAULT_STRENGTH = 1.0


def check_strength(value: float) -> float:
    low, high = STRENGTH_RANGE
    if not low <= value <= high:  # also refuses NaN
        raise ValueError(f"strength {value!r} is out of range: use {low:g} (the input) to {high:g} (the restored face)")
    return float(value)
