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

from interlcm.components import BY_NAME
from interlcm.config import PresetConfig
from interlcm.models.container import InterLCMModels


class TorchBackend:
    name = "torch"
    max_batch: int | None = None  # no profile: any batch that fits in memory

    def __init__(
        self,
        models: InterLCMModels,
        device: torch.device | str = "cpu",
        *,
        grad: bool = False,
        checkpointed: tuple[str, ...] = (),
    ):
        if checkpointed and not grad:
            raise ValueError("checkpointed components only make sense with grad=True (training)")
        self.models = models
        self.device = torch.device(device)
        self.grad = grad
        self.checkpointed = set(checkpointed)
        self._modules: dict[str, nn.Module] = {}

    @property
    def config(self) -> PresetConfig:
        return self.models.config

    def module(self, component: str) -> nn.Module:
        if component not in self._modules:
            module = BY_NAME[component].build(self.models)
            self._modules[component] = module if self.grad else module.to(self.device).eval()
        return self._modules[component]

    def run(self, component: str, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        spec = BY_NAME[component]
        missing = set(spec.input_names) - set(inputs)
        if missing:
            raise ValueError(f"{component} needs inputs {sorted(missing)}")
        module = self.module(component)
        with contextlib.nullcontext() if self.grad else torch.inference_mode():
            args = [inputs[n] if self.grad else inputs[n].to(self.device) for n in spec.input_names]
            if component in self.checkpointed and torch.is_grad_enabled():
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
