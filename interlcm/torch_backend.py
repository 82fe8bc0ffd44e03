"""The torch backend: runs components as torch modules (the reference every other backend is checked against).

Inference runs under `torch.inference_mode` on the device it was given, in fp32 (the
reference), or in fp16/bf16 (`precision`): half weights with the fp16 export's fp32
islands (each component's `fp16_keep_fp32`: normalisation layers run in fp32 on fp32
weights, the timestep embedding sees the fp32 timestep), SDPA attention and, on CUDA,
channels-last convolution weights. Inputs are cast on the way in and outputs come back
fp32, so the sampler's arithmetic stays fp32 as with the fp16 ONNX files. Training
runs the same component wrappers with autograd on (`grad=True`), optionally
recomputing the activations of `checkpointed` components in backward
(`torch.utils.checkpoint`, non-reentrant): the UNet's and the decoder's are most
of the chain's memory. With `grad=True` the trainer owns modes and devices.
"""

from __future__ import annotations

import contextlib

import torch
from diffusers.models.attention_processor import AttnProcessor2_0
from torch import nn
from torch.utils.checkpoint import checkpoint

from interlcm.backend import BackendBase
from interlcm.checkpoint import WeightsError
from interlcm.choices import check_precision
from interlcm.components import BY_NAME, Component
from interlcm.config import PresetConfig
from interlcm.models.container import InterLCMModels
from interlcm.models.rrdbnet import UpsamplerModels

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# fp32 islands in torch terms: the module types of the ONNX ops named in Component.fp16_keep_fp32
ISLAND_MODULES: dict[str, tuple[type[nn.Module], ...]] = {
    "GroupNormalization": (nn.GroupNorm,),
    "LayerNormalization": (nn.LayerNorm,),
    "InstanceNormalization": (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d),
}
FP32_INPUTS = ("timestep",)  # feeds `time_proj`, an fp32 island (components.FP16_KEEP_TIME): t up to 999


def check_torch_precision(precision: str, device: torch.device) -> str:
    """`precision` if torch runs it on `device`, else one sentence with the fix.

    fp16 on a CPU is refused: CPUs without fp16 arithmetic (this project's CI machines among
    them) emulate it, slower than fp32, and torch lacks CPU half kernels for some ops. bf16
    runs on any CPU (slower than fp32 where the CPU has no bf16 instructions, faster with AMX).
    """
    check_precision("torch", precision)
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("torch runs fp16 on CUDA devices only, and this one is the CPU: "
                         "use --precision fp32 (or bf16), or a GPU")
    return precision


class TorchBackend(BackendBase):
    name = "torch"

    def __init__(
        self,
        models: InterLCMModels | UpsamplerModels,
        device: torch.device | str = "cpu",
        *,
        precision: str = "fp32",
        max_batch: int | None = None,
        grad: bool = False,
        checkpointed: tuple[str, ...] = (),
    ):
        """`precision` other than fp32 converts `models` in place (they are the backend's from then on).
        `max_batch`: the most items one module call runs, larger calls are split (open_backend passes
        --batch, so ParseNet on a 35-face photo takes --batch faces of memory at a time); None: all at once."""
        if checkpointed and not grad:
            raise ValueError("checkpointed components only make sense with grad=True (training)")
        self.models = models
        self.device = torch.device(device)
        self.precision = check_torch_precision(precision, self.device)
        if grad and precision != "fp32":
            raise ValueError(f"training runs fp32 (with autocast where it wants), not a {precision} backend")
        self.dtype = DTYPES[precision]
        self.max_batch = max_batch
        self.grad = grad
        self.checkpointed = set(checkpointed)
        self._modules: dict[str, nn.Module] = {}
        self._converted: set[int] = set()  # ids of submodules already cast (components share them)

    @property
    def config(self) -> PresetConfig:
        return self.models.config

    def has(self, component: str) -> bool:
        """Whether the loaded models hold `component`'s networks (face networks and Real-ESRGAN are optional;
        the fused denoise_step shares the SE's and UNet's weights)."""
        if component not in BY_NAME:
            return False
        try:
            self.module(component)
        except (WeightsError, AttributeError):
            return False
        return True

    def load_upsampler(self, upsampler: UpsamplerModels) -> None:
        """Real-ESRGAN joins the backend's models: `run("realesrgan", ...)` runs it here, on this device."""
        self.models.realesrgan = upsampler.realesrgan.to(self.device)  # type: ignore[union-attr]
        self._modules.pop("realesrgan", None)

    def describe(self) -> str:
        """What runs, e.g. "fp16 (fp32 norms and timestep embedding, SDPA attention, channels-last)"."""
        if self.dtype == torch.float32:
            return "fp32"
        layout = ", channels-last convolutions" if self.device.type == "cuda" else ""
        return f"{self.precision} weights (fp32 norms and timestep embedding, SDPA attention{layout})"

    def module(self, component: str) -> nn.Module:
        if component not in self._modules:
            spec = BY_NAME[component]
            module = spec.build(self.models)
            if not self.grad:
                if self.dtype != torch.float32:
                    self._reduce_precision(module, spec)
                module = module.to(self.device).eval()
            self._modules[component] = module
        return self._modules[component]

    def _reduce_precision(self, module: nn.Module, spec: Component) -> None:
        """Cast each submodule's own weights once: islands stay fp32 behind casting hooks, the rest to `dtype`."""
        types = tuple(t for key in spec.fp16_keep_fp32 for t in ISLAND_MODULES.get(key, ()))
        scopes = tuple(key.rstrip("/") for key in spec.fp16_keep_fp32 if "/" in key)  # e.g. "time_proj/"
        channels_last = self.device.type == "cuda"
        for name, sub in module.named_modules():
            if id(sub) in self._converted:
                continue
            self._converted.add(id(sub))
            if isinstance(sub, types) or name.rsplit(".", 1)[-1] in scopes:
                sub.register_forward_pre_hook(_to_fp32)
                sub.register_forward_hook(lambda m, args, out, dtype=self.dtype: out.to(dtype))
                continue
            if hasattr(sub, "set_attn_processor"):  # diffusers models: the SDPA processor, explicitly
                sub.set_attn_processor(AttnProcessor2_0())
            if hasattr(sub, "set_attn_implementation"):  # transformers models (CLIP)
                sub.set_attn_implementation("sdpa")
            for param in sub.parameters(recurse=False):
                param.data = _cast(param.data, self.dtype, channels_last)
            for key, buf in sub.named_buffers(recurse=False):
                setattr(sub, key, _cast(buf, self.dtype, channels_last))

    def _run(self, component: Component, inputs: dict[str, torch.Tensor], batch: int,
             dims: dict[str, int]) -> dict[str, torch.Tensor]:
        spec = component
        module = self.module(component.name)
        with contextlib.nullcontext() if self.grad else torch.inference_mode():
            args = [inputs[n] if self.grad else self._input(n, inputs[n]) for n in spec.input_names]
            if component.name in self.checkpointed and torch.is_grad_enabled():
                out = checkpoint(module, *args, use_reentrant=False)
            else:
                out = module(*args)
        outs = out if isinstance(out, tuple) else (out,)
        if self.dtype != torch.float32:  # the sampler's arithmetic stays fp32, as with the fp16 ONNX files
            outs = tuple(o.to(torch.float32, memory_format=torch.contiguous_format) for o in outs)
        return dict(zip(spec.output_names, outs))

    def _input(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        if self.dtype == torch.float32 or name in FP32_INPUTS or not tensor.is_floating_point():
            return tensor.to(self.device)
        return tensor.to(self.device, self.dtype)

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def close(self) -> None:
        self._modules.clear()


def _to_fp32(module: nn.Module, args: tuple) -> tuple:
    return tuple(a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args)


def _cast(tensor: torch.Tensor, dtype: torch.dtype, channels_last: bool) -> torch.Tensor:
    if not tensor.is_floating_point():
        return tensor
    if channels_last and tensor.dim() == 4:  # convolution weights: tensor-core kernels want NHWC
        return tensor.to(dtype, memory_format=torch.channels_last)
    return tensor.to(dtype)
