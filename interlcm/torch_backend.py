"""The torch backend: runs components as torch modules (the reference every other backend is checked against).

Inference runs under `torch.inference_mode` on the device it was given. Training
runs the same component wrappers with autograd on (`grad=True`), optionally
recomputing the activations of `checkpointed` components in backward
(`torch.utils.checkpoint`, non-reentrant): the UNet's and the decoder's are most
of the chain's memory. With `grad=True` the trainer owns modes and devices.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from interlcm.backend import BackendBase
from interlcm.checkpoint import WeightsError
from interlcm.components import BY_NAME, Component
from interlcm.config import PresetConfig
from interlcm.models.container import InterLCMModels
from interlcm.models.rrdbnet import UpsamplerModels


class TorchBackend(BackendBase):
    name = "torch"

    def __init__(
        self,
        models: InterLCMModels | UpsamplerModels,
        device: torch.device | str = "cpu",
        *,
        max_batch: int | None = None,
        grad: bool = False,
        checkpointed: tuple[str, ...] = (),
    ):
        """`max_batch`: the most items one module call runs, larger calls are split (open_backend passes
        --batch, so ParseNet on a 35-face photo takes --batch faces of memory at a time); None: all at once."""
        if checkpointed and not grad:
            raise ValueError("checkpointed components only make sense with grad=True (training)")
        self.models = models
        self.device = torch.device(device)
        self.max_batch = max_batch
        self.grad = grad
        self.checkpointed = set(checkpointed)
        self._modules: dict[str, nn.Module] = {}

    @property
    def config(self) -> PresetConfig:
        return self.models.config

    def has(self, component: str) -> bool:
        """Whether the loaded models hold `component`'s networks (face networks and Real-ESRGAN are optional)."""
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

    def module(self, component: str) -> nn.Module:
        if component not in self._modules:
            module = BY_NAME[component].build(self.models)
            self._modules[component] = module if self.grad else module.to(self.device).eval()
        return self._modules[component]

    def _run(self, component: Component, inputs: dict[str, torch.Tensor], batch: int,
             dims: dict[str, int]) -> dict[str, torch.Tensor]:
        spec = component
        module = self.module(component.name)
        with contextlib.nullcontext() if self.grad else torch.inference_mode():
            args = [inputs[n] for n in spec.input_names]
            if component.name in self.checkpointed and torch.is_grad_enabled():
                out = checkpoint(module, *args, use_reentrant=False)
            else:
                out = module(*args)
        outs = out if isinstance(out, tuple) else (out,)
        return dict(zip(spec.output_names, outs))

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def close(self) -> None:
        self._modules.clear()
