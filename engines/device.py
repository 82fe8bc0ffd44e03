"""What differs per device for the engine backends: streams, their ordering, copies, allocation.

ONNX Runtime and TensorRT run the same backend code on every device (STYLE.md 13); only this
layer differs. `streams_for(device)` gives:

- `CudaStreams`: torch's CUDA streams. `wait(a, b)` makes stream `a`'s later work start after
  the work queued on `b` so far (an event, no host synchronisation).
- `CpuStreams`: the same calls on the CPU, where work runs when it is issued. Its streams are
  names with non-zero handles (the caller's stays 0, like CUDA's legacy default stream), and it
  records every copy, wait, launch and synchronisation in `log`, so a test can check the order
  the CUDA path would issue them in. Its buffers are registered in `HOST_MEMORY`, so the
  TensorRT stand-in (engines/trt_standin.py) can read and write through the addresses it is
  given, as the real engine does, and refuse a write past a buffer's end.
"""

from __future__ import annotations

import itertools
import math
import weakref
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

Shape = tuple[int, ...]
ALIGNMENT = 256  # bytes: TensorRT's requirement for every I/O tensor address


class CudaStreams:
    """torch's CUDA streams on one device."""

    def __init__(self, device: torch.device):
        if not torch.cuda.is_available():
            raise RuntimeError(f"{device} was asked for but torch {torch.__version__} has no CUDA "
                               "(a CPU-only build, or no usable GPU): install a CUDA build of torch, or run on the CPU")
        self.device = device

    def new_stream(self) -> Any:
        """A dedicated stream (never the legacy default stream, handle 0)."""
        return torch.cuda.Stream(self.device)

    def current(self) -> Any:
        return torch.cuda.current_stream(self.device)

    def handle(self, stream: Any) -> int:
        return int(stream.cuda_stream)

    def wait(self, waiter: Any, waited: Any) -> None:
        if waiter != waited:
            waiter.wait_stream(waited)

    def copy(self, dst: torch.Tensor, src: torch.Tensor, stream: Any) -> None:
        with torch.cuda.stream(stream):
            dst.copy_(src)

    def launched(self, stream: Any, what: str) -> None:
        pass  # the launch itself is the runtime's call; nothing to record on a GPU

    def synchronize(self, stream: Any) -> None:
        stream.synchronize()

    def empty(self, shape: Shape, dtype: torch.dtype) -> torch.Tensor:
        return torch.empty(shape, dtype=dtype, device=self.device)

    def use(self, stream: Any) -> Any:
        return torch.cuda.stream(stream)


@dataclass(eq=False)
class CpuStream:
    """A named stand-in for a torch.cuda.Stream (the same methods), recording into its streams' log."""

    name: str
    cuda_stream: int  # the handle TensorRT and ONNX Runtime are given (0: the caller's, like the legacy default)
    log: deque

    def wait_stream(self, other: CpuStream) -> None:
        if other is not self:
            self.log.append(("wait", self.name, other.name))

    def synchronize(self) -> None:
        self.log.append(("sync", self.name))


class HostMemory:
    """CPU buffers by address: what an engine stand-in reads and writes through the addresses it is bound to.

    Only buffers allocated through `CpuStreams.empty` are known; a buffer freed since is unknown again.
    """

    def __init__(self) -> None:
        self._blocks: dict[int, tuple[int, weakref.ref]] = {}  # start address -> (bytes, the tensor)

    def register(self, tensor: torch.Tensor) -> None:
        self._blocks[tensor.data_ptr()] = (tensor.numel() * tensor.element_size(), weakref.ref(tensor))

    def view(self, address: int, shape: Shape, dtype: torch.dtype, what: str) -> torch.Tensor:
        """The tensor of `shape` and `dtype` at `address`; MemoryError if it is not inside one live buffer."""
        need = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        for start, (size, ref) in list(self._blocks.items()):
            tensor = ref()
            if tensor is None:
                del self._blocks[start]
                continue
            if start <= address < start + max(size, 1):
                if address + need > start + size:
                    raise MemoryError(f"{what}: {need} bytes at {address:#x} overrun the {size}-byte buffer bound there "
                                      f"(by {address + need - start - size} bytes)")
                flat = tensor.reshape(-1).view(torch.uint8)[address - start : address - start + need]
                return flat.view(dtype).view(shape)
        raise MemoryError(f"{what}: {address:#x} is not in any live buffer (freed, or never allocated)")


HOST_MEMORY = HostMemory()


class CpuStreams:
    """The CPU's stand-ins for streams: every call is done at once and recorded in `log`."""

    def __init__(self, device: torch.device | None = None):
        self.device = device or torch.device("cpu")
        self.log: deque = deque(maxlen=10_000)  # ("copy" | "wait" | "launch" | "sync", stream name, ...)
        self._handles = itertools.count(0x5EED)
        self._current = CpuStream("caller", 0, self.log)

    def new_stream(self) -> CpuStream:
        handle = next(self._handles)
        return CpuStream(f"stream-{handle:x}", handle, self.log)

    def current(self) -> CpuStream:
        return self._current

    def handle(self, stream: CpuStream) -> int:
        return stream.cuda_stream

    def wait(self, waiter: CpuStream, waited: CpuStream) -> None:
        waiter.wait_stream(waited)

    def copy(self, dst: torch.Tensor, src: torch.Tensor, stream: CpuStream) -> None:
        dst.copy_(src)
        self.log.append(("copy", stream.name, dst.data_ptr()))

    def launched(self, stream: CpuStream, what: str) -> None:
        self.log.append(("launch", stream.name, what))

    def synchronize(self, stream: CpuStream) -> None:
        stream.synchronize()

    def empty(self, shape: Shape, dtype: torch.dtype) -> torch.Tensor:
        return torch.empty(shape, dtype=dtype)

    @contextmanager
    def use(self, stream: CpuStream) -> Iterator[None]:
        """Make `stream` the current one (torch.cuda.stream's counterpart)."""
        previous, self._current = self._current, stream
        try:
            yield
        finally:
            self._current = previous


Streams = CudaStreams | CpuStreams


def streams_for(device: torch.device) -> Streams:
    return CudaStreams(device) if device.type == "cuda" else CpuStreams(device)


def aligned_empty(shape: Shape, dtype: torch.dtype, streams: Streams) -> torch.Tensor:
    """An uninitialised contiguous tensor whose data starts on an ALIGNMENT-byte boundary.

    torch's CUDA allocator already aligns to 512 bytes; this makes it a property of the
    code rather than of the allocator (and holds for CPU tensors, aligned to 64). On the
    CPU the tensor is registered in HOST_MEMORY with its exact size.
    """
    itemsize = torch.empty((), dtype=dtype).element_size()
    numel = math.prod(shape)
    base = streams.empty((numel + ALIGNMENT // itemsize,), dtype)
    skip = (-base.data_ptr() % ALIGNMENT) // itemsize
    tensor = base[skip : skip + numel].view(shape)
    if isinstance(streams, CpuStreams):
        HOST_MEMORY.register(tensor)
    return tensor
