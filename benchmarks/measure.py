"""Small measuring instruments: order statistics, peak host memory, CPU use, the environment."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import numpy as np
import psutil
import torch


@dataclass(frozen=True)
class Stats:
    """Order statistics of repeated measurements (seconds unless the field says otherwise)."""

    median: float
    p90: float  # linear interpolation between order statistics, as numpy.percentile
    min: float
    n: int

    @classmethod
    def of(cls, values: list[float]) -> Stats:
        if not values:
            raise ValueError("no measurements: run at least once after warm-up (--runs 1 or more)")
        arr = np.asarray(values, dtype=np.float64)
        return cls(float(np.median(arr)), float(np.percentile(arr, 90)), float(arr.min()), len(values))


# --- peak resident memory ----------------------------------------------------------------------------

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _vm_hwm_bytes() -> int:
    for line in _STATUS.read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise OSError("no VmHWM in /proc/self/status")


def _reset_vm_hwm() -> bool:
    """Linux >= 4.0: writing 5 to clear_refs resets the peak RSS to the current RSS."""
    try:
        _CLEAR_REFS.write_text("5")
        _vm_hwm_bytes()
        return True
    except OSError:
        return False


class PeakRss:
    """Peak resident set size of this process inside a `with` block.

    Exact on Linux (the kernel's high-water mark, reset on entry); elsewhere a
    thread samples psutil every 5 ms, which can miss a short spike.
    """

    def __init__(self) -> None:
        self.before = 0
        self.peak = 0
        self.method = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakRss:
        self.before = psutil.Process().memory_info().rss
        if _reset_vm_hwm():
            self.method = "kernel high-water mark (VmHWM)"
        else:
            self.method = "psutil sampled every 5 ms"
            self.peak = self.before
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        proc = psutil.Process()
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, proc.memory_info().rss)

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
        else:
            self.peak = _vm_hwm_bytes()
        self.peak = max(self.peak, psutil.Process().memory_info().rss)


# --- CPU use -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CpuUse:
    wall_s: float
    process_cpu_s: float  # user + system of this process, all threads
    machine_busy_cores: float  # whole machine, every process: busy CPU-seconds / wall-second

    @property
    def process_cores(self) -> float:
        """CPU-seconds per wall-second of this process: about the thread count when it has the cores."""
        return self.process_cpu_s / self.wall_s

    @property
    def other_cores(self) -> float:
        """Cores the rest of the machine kept busy meanwhile: > 0.2 means the run competed for CPU."""
        return max(0.0, self.machine_busy_cores - self.process_cores)


def _machine_busy_seconds() -> float:
    t = psutil.cpu_times()
    idle = t.idle + getattr(t, "iowait", 0.0)
    return sum(t) - idle - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)  # guest is inside user


class CpuMeter:
    """Wall time, this process's CPU time and the whole machine's busy time over a `with` block."""

    def __enter__(self) -> CpuMeter:
        self._proc = psutil.Process()
        t = self._proc.cpu_times()
        self._cpu0 = t.user + t.system
        self._busy0 = _machine_busy_seconds()
        self._wall0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.perf_counter() - self._wall0
        t = self._proc.cpu_times()
        busy = _machine_busy_seconds() - self._busy0
        self.result = CpuUse(wall, t.user + t.system - self._cpu0, busy / wall if wall > 0 else 0.0)


# --- environment ---------------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    """Read-only git queries (commit, dirty files) of the checkout this code runs from."""
    try:
        out = subprocess.run(
            ["git", *args], cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def environment() -> dict:
    """Everything about the machine and software a reader needs to reproduce or discount a number."""
    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            gpus.append({"name": props.name, "memory_gb": round(props.total_memory / 2**30, 1)})
    dirty = _git("status", "--porcelain")
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "host": platform.node(),
        "os": platform.platform(),
        "cpu_model": cpu_model(),
        "logical_cores": psutil.cpu_count(logical=True),
        "physical_cores": psutil.cpu_count(logical=False),
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "gpus": gpus,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "versions": {
            "python": platform.python_version(),
            **{d: _version(d) for d in ("torch", "onnxruntime", "onnxruntime-gpu", "tensorrt", "diffusers",
                                        "transformers", "onnx", "numpy", "interlcm")},
            "cuda": torch.version.cuda,
        },
        "git_commit": _git("rev-parse", "--short", "HEAD"),
        "git_dirty": bool(dirty) if dirty is not None else None,
    }
