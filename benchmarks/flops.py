"""The cost model: FLOPs per component from torch's counter, and this machine's measured peak.

FLOPs follow `torch.utils.flop_counter`: 2 per multiply-add of every matmul,
convolution and attention product; elementwise work (norms, activations,
softmax) is not counted. Attention needs one addition: torch 2.13 has no
formula for the CPU kernel `aten._scaled_dot_product_flash_attention_for_cpu`,
so without `ATTENTION_FORMULAS` attention (16% of the sd15 UNet) would be
silently left out. The formulas are passed per counter (`custom_mapping`)
rather than with the global `register_flop_formula`, which raises on a second
registration and would then shadow torch's own formula if a later release
adds one.

FLOPs are counted once per component at batch 1; every op here works per
sample, so a batch of B costs B times as much. Big components are counted on
fake tensors (shapes only, no arithmetic: about 2 s per sd15 component instead
of up to 17 s); small ones on real tensors, where fake tensors' per-op
overhead would cost more than the arithmetic. Both give the same count.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from interlcm.components import BY_NAME
from interlcm.config import PresetConfig

aten = torch.ops.aten


def _cpu_flash_attention_flops(query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    """Same count as torch's formula for the CUDA flash kernel: Q K^T and P V."""
    return sdpa_flop_count(query_shape, key_shape, value_shape)


# op -> formula over input shapes (FlopCounterMode wraps it to receive shapes, not tensors)
ATTENTION_FORMULAS = {aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash_attention_flops}


@dataclass(frozen=True)
class ComponentFlops:
    name: str
    flops: int  # per call at batch 1
    by_op: dict[str, int]  # aten op -> flops, for reading where the arithmetic is
    counted_on: str  # "fake tensors" (big components) or "real tensors" (small ones, or fake was not possible)


# components with more parameters than this are counted on fake tensors
FAKE_ABOVE_PARAMS = 20_000_000


def count_component_flops(
    module: torch.nn.Module, inputs: dict[str, torch.Tensor], fake: bool | None = None
) -> tuple[int, dict[str, int]]:
    """Total FLOPs of one call, and the split by aten op (fake=None: fake tensors for big modules)."""
    if fake is None:
        fake = sum(p.numel() for p in module.parameters()) > FAKE_ABOVE_PARAMS
    with torch.inference_mode(), FlopCounterMode(display=False, custom_mapping=ATTENTION_FORMULAS) as counter:
        if fake:
            # parameters stay real tensors and are converted on the fly; nothing is computed
            with FakeTensorMode(allow_non_fake_inputs=True) as mode:
                module(*(mode.from_tensor(t) for t in inputs.values()))
        else:
            module(*inputs.values())
    by_op = {str(op): int(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}
    return int(counter.get_total_flops()), by_op


def count_flops(models, names: list[str], seed: int = 0) -> dict[str, ComponentFlops]:
    """FLOPs per call at batch 1 for each named component of `models`."""
    cfg: PresetConfig = models.config
    device = next(models.unet.parameters()).device
    out = {}
    for name in names:
        spec = BY_NAME[name]
        module = spec.build(models).eval()
        inputs = {k: v.to(device) for k, v in spec.sample_inputs(cfg, 1, seed).items()}
        fake = sum(p.numel() for p in module.parameters()) > FAKE_ABOVE_PARAMS
        try:
            flops, by_op = count_component_flops(module, inputs, fake=fake)
        except Exception:  # a data-dependent op (e.g. .item()) under fake tensors: count on real ones
            if not fake:
                raise
            fake = False
            flops, by_op = count_component_flops(module, inputs, fake=False)
        how = "fake tensors" if fake else "real tensors"
        out[name] = ComponentFlops(name, flops, by_op, how)
    return out


# --- the machine's peak ----------------------------------------------------------------------------

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class PeakProbe:
    """Best achieved FLOP/s of a square matmul, the practical ceiling for these networks."""

    precision: str
    device: str
    n: int  # (n x n) @ (n x n), 2 n^3 FLOPs
    threads: int
    gflops: float  # best of `repeats`
    median_gflops: float
    repeats: int


def matmul_peak(
    precision: str = "fp32",
    device: str = "cpu",
    max_n: int = 4096,
    min_seconds: float = 0.2,
    repeats: int = 5,
) -> PeakProbe:
    """Time (n x n) @ (n x n) in this process, with this process's thread settings.

    n doubles from 256 until one product takes `min_seconds` or n reaches `max_n`,
    so a precision the machine runs slowly (fp16 on most CPUs) cannot stall the probe.
    """
    dtype = DTYPES[precision]
    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def once(a: torch.Tensor, b: torch.Tensor) -> float:
        sync()
        start = time.perf_counter()
        torch.mm(a, b)
        sync()
        return time.perf_counter() - start

    gen = torch.Generator().manual_seed(0)
    n = min(256, max_n)
    while True:
        a = torch.randn(n, n, generator=gen).to(dev, dtype)
        b = torch.randn(n, n, generator=gen).to(dev, dtype)
        once(a, b)  # warm-up: first call allocates and picks the kernel
        seconds = once(a, b)
        if seconds >= min_seconds or n >= max_n:
            break
        n = min(2 * n, max_n)
    times = sorted(once(a, b) for _ in range(repeats))
    flops = 2 * n**3
    return PeakProbe(
        precision=precision,
        device=dev.type,
        n=n,
        threads=torch.get_num_threads(),
        gflops=flops / times[0] / 1e9,
        median_gflops=flops / times[len(times) // 2] / 1e9,
        repeats=repeats,
    )
