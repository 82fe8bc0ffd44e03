"""What a benchmark run is asked (`BenchSettings`) and what it reports (rows, ratios, the report).

The JSON written by `interlcm-bench` is `BenchReport.to_dict()`; `report.py` renders it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from interlcm.benchmarks.flops import ComponentFlops, PeakProbe
from interlcm.benchmarks.measure import Stats
from interlcm.choices import COLORFIXES, PRECISIONS
from interlcm.components import BY_NAME
from interlcm.config import PresetConfig, get_preset

# torch: this project's torch path; torch-release: the same at fp32 with the SE's image
# embedding recomputed every step, as the released code runs it.
BACKEND_KINDS = ("torch", "torch-release", "onnxruntime", "tensorrt")

PAPER = {
    "seconds_per_image": 0.421,
    "resolution": 512,
    "hardware": "NVIDIA RTX 3090",
    "backend": "torch (the authors' release)",
    "source": "InterLCM, Li et al., ICLR 2025 (arXiv:2502.02215)",
    "note": "other hardware: shown beside our numbers, never in a ratio",
}


@dataclass(frozen=True)
class BenchSettings:
    preset: str = "tiny"
    resolution: int | None = None  # None: the preset's (512 for sd15)
    weights: Path | None = None  # None: seeded random weights (real cost, noise for output)
    onnx: Path | None = None  # export folder for onnxruntime; None: export into cache_dir once
    engines: Path | None = None  # TensorRT engine folder (interlcm-trt build)
    backends: tuple[str, ...] = ("torch", "torch-release", "onnxruntime")
    precisions: tuple[str, ...] = ("fp32",)
    batches: tuple[int, ...] = (1,)
    # step forms: False the separate SE and UNet calls, True the fused `denoise_step` (where the backend has it)
    fused: tuple[bool, ...] = (False,)
    # True: the step chain replayed as a CUDA graph (torch and TensorRT on a GPU; end to end only, since
    # timing each component would synchronise inside the graph)
    graphs: tuple[bool, ...] = (False,)
    steps: int = 3  # network steps: 3 (paper) or 1
    colorfix: str = COLORFIXES[0]
    warmup: int = 2  # untimed restorations per row; the first is the time to first result
    runs: int = 3  # timed restorations per row
    threads: int | None = None  # torch and onnxruntime intra-op threads; None: every logical core
    # non-empty: time these components alone on sample inputs instead of whole restorations
    components: tuple[str, ...] = ()
    seed: int = 0
    probe_max_n: int = 4096  # matmul peak probe: up to (n x n) @ (n x n)
    cache_dir: Path = Path(".cache/bench-onnx")

    def __post_init__(self) -> None:
        problems = []
        for kind in self.backends:
            if kind not in BACKEND_KINDS:
                problems.append(f"backend {kind!r} (choose from {', '.join(BACKEND_KINDS)})")
        for p in self.precisions:
            if p not in PRECISIONS:
                problems.append(f"precision {p!r} (choose from {', '.join(PRECISIONS)})")
        for name in self.components:
            if name not in BY_NAME:
                problems.append(f"component {name!r} (choose from {', '.join(BY_NAME)})")
        if not self.fused or not self.graphs:
            problems.append("fused and graphs need at least one value each")
        if self.isolated and (True in self.fused or True in self.graphs):
            problems.append("--components times components alone: the fused step and CUDA graphs need whole restorations")
        if not self.batches or min(self.batches) < 1:
            problems.append(f"batches {self.batches} (each at least 1)")
        if self.warmup < 1:
            problems.append(f"warmup {self.warmup} (at least 1: the first run pays one-off costs and is never timed)")
        if self.runs < 1:
            problems.append(f"runs {self.runs} (at least 1)")
        if problems:
            raise ValueError("invalid benchmark settings: " + "; ".join(problems))

    @property
    def isolated(self) -> bool:
        return bool(self.components)

    def config(self) -> PresetConfig:
        cfg = get_preset(self.preset)
        return cfg if self.resolution in (None, cfg.resolution) else cfg.with_resolution(self.resolution)


# --- results ---------------------------------------------------------------------------------------


@dataclass
class ComponentTiming:
    name: str
    calls: int  # per restoration (1 when timed alone)
    per_call: Stats  # seconds
    per_restoration: Stats  # seconds: its calls within one restoration, summed
    gflop_per_call: float | None = None  # at this row's batch
    gflops: float | None = None  # achieved: gflop_per_call / per_call.median
    fraction_of_peak: float | None = None  # gflops / the probe's peak at this precision and device


@dataclass
class RowResult:
    backend: str
    precision: str
    batch: int
    fused: bool = False  # the fused SE+UNet `denoise_step` instead of separate SE and UNet calls
    graph: bool = False  # the step chain replayed as a CUDA graph (no per-component times)
    device: str = ""
    description: str = ""
    skipped: str | None = None  # why this row could not run here
    failed: str | None = None  # the error that stopped it mid-measurement (the other rows are kept)
    load_s: float | None = None  # opening the backend; rows of one backend and precision share it
    load_shared_with: str | None = None  # the row whose load this one reuses
    first_run_s: float | None = None
    time_to_first_result_s: float | None = None  # load_s + first_run_s: what a fresh process waits
    end_to_end: Stats | None = None  # seconds per restoration of `batch` faces
    seconds_per_image: float | None = None
    images_per_s: float | None = None
    host_other_s: float | None = None  # median over runs of end to end minus its component calls: sampler glue
    components: list[ComponentTiming] = field(default_factory=list)
    gflop_per_restoration: float | None = None
    gflops: float | None = None  # achieved end to end
    fraction_of_peak: float | None = None
    peak_rss_mb: float | None = None
    rss_before_mb: float | None = None
    rss_method: str = ""
    gpu_peak_mb: float | None = None  # torch's allocator (torch rows); others: see gpu_used_mb
    gpu_used_mb: float | None = None  # whole device after the row (every process)
    process_cores: Stats | None = None  # this process's CPU-seconds per wall-second, per run
    other_cores: Stats | None = None  # cores the rest of the machine kept busy meanwhile, per run
    threads: int | None = None

    @property
    def ran(self) -> bool:
        return self.skipped is None and self.failed is None

    @property
    def label(self) -> str:
        return f"{self.backend} {self.precision} b{self.batch}" + (" fused" if self.fused else "") + (
            " graph" if self.graph else "")

    @property
    def plain(self) -> bool:
        """Separate SE and UNet, no graph: the form the step ratios divide by."""
        return not (self.fused or self.graph)


@dataclass(frozen=True)
class Ratio:
    # "backend" (X / torch), "release" (ours / release-style), "batch" (s/image vs batch 1),
    # "step" (fused step and/or CUDA graph / separate SE and UNet calls, same backend, precision, batch)
    kind: str
    what: str  # "end to end", "s/image" or a component name
    numerator: str  # row label
    denominator: str  # row label
    value: float  # numerator time / denominator time: below 1, the numerator is faster


@dataclass
class BenchReport:
    settings: dict
    preset: str
    resolution: int
    steps: int
    random_weights: bool
    weights: str  # "random, seed 0" or the weights folder with its content hash
    environment: dict
    threads: dict
    peaks: list[PeakProbe]
    flops: dict[str, ComponentFlops]  # per call at batch 1
    onnx: dict | None
    rows: list[RowResult]
    ratios: list[Ratio]
    paper: dict = field(default_factory=lambda: dict(PAPER))
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        out = asdict(self)
        for row, d in zip(self.rows, out["rows"]):
            d["label"] = row.label
        return out
