"""Run every backend, precision and batch in one process and measure them the same way.

One *row* is a backend at one precision and batch. For each row:

1. open the backend (load models, ONNX sessions or engines): `load_s`;
2. restore the same random batch `warmup + runs` times; the first run gives
   the time to first result (load + first run), the last `runs` the steady
   state: end-to-end and per-component latency (median, p90, min), images/s,
   CPU-seconds per wall-second of this process and of everything else on the
   machine (competition for cores shows here, not in the median);
3. peak host RSS over the row (and peak GPU memory on CUDA).

FLOPs per component come from torch's counter and the peak from a matmul
probe in this process with the same threads (see `flops`), so every "fraction
of peak" is measured, not looked up.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import gc
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from interlcm.backend import TimedBackend
from interlcm.benchmarks import onnx_cache
from interlcm.benchmarks.backends import ReleaseStyle
from interlcm.benchmarks.flops import ComponentFlops, PeakProbe, count_flops, matmul_peak
from interlcm.benchmarks.measure import CpuMeter, PeakRss, Stats, environment
from interlcm.benchmarks.schema import BenchReport, BenchSettings, ComponentTiming, Ratio, RowResult
from interlcm.choices import variant_for_steps
from interlcm.components import BY_NAME, DEFAULT_COMPONENTS
from interlcm.config import PresetConfig
from interlcm.engines.backend import BackendOptions, fast_path, open_backend
from interlcm.engines.restorer import RestoreOptions, Restorer
from interlcm.engines.trt_common import PRECISION
from interlcm.export.session import cuda_device_count
from interlcm.models.container import build_random
from interlcm.sampler import FUSED_STEP
from interlcm.torch_backend import TorchBackend, check_torch_precision
from interlcm.weights import load_models, weights_digest

Log = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- opening backends ------------------------------------------------------------------------------


@dataclass
class _Opened:
    backend: object
    device: str
    description: str
    load_s: float


def _load_models(settings: BenchSettings, cfg: PresetConfig, device: str):

    if settings.weights is None:
        models = build_random(cfg, seed=settings.seed)
    else:

        models = load_models(settings.weights, variant_for_steps(settings.steps).name, resolution=cfg.resolution)
    return models.to(device)


@functools.lru_cache(maxsize=4)
def _content_hash(root: Path, steps: int) -> str:
    """The weights folder's content hash (reads every file: seconds for sd15, so once per run)."""

    return weights_digest(root, variant_for_steps(steps).name)


def _weights_identity(settings: BenchSettings, models) -> tuple[bool, str]:
    if settings.weights is None:
        return True, models.origin
    ident = _content_hash(settings.weights, settings.steps)
    return models.origin.startswith("random"), f"{models.origin}, content sha256 {ident}"


def _open_exported(stack: contextlib.ExitStack, kind: str, folder: Path | None, engines: Path | None,
                   precision: str, threads: int, names: list[str] | None) -> _Opened:
    """ONNX Runtime or TensorRT through `open_backend`, closed when `stack` closes."""
    if kind == "tensorrt":
        devices, why = cuda_device_count()
        if not devices:
            raise _Skip(f"TensorRT needs an NVIDIA GPU: {why}")
        if engines is None:
            raise _Skip("the tensorrt rows need --engines DIR (build them with `interlcm-trt build`)")
        if precision != PRECISION:
            raise _Skip(f"TensorRT engines are built {PRECISION} only (strongly typed, from the {PRECISION} ONNX files)")
    start = time.perf_counter()
    options = BackendOptions(kind, onnx=folder, engines=engines, precision=precision, threads=threads)
    opened = stack.enter_context(open_backend(options, components=names))
    desc = opened.description + (f", intra-op threads: {threads}" if kind == "onnxruntime" else "")
    return _Opened(opened.backend, opened.device.type, desc, time.perf_counter() - start)


def _fused_names(settings: BenchSettings) -> list[str]:
    """The fused step's component, when a fused row is asked for (exported, counted and loaded with the rest)."""
    return [FUSED_STEP] if True in settings.fused else []


class _Skip(Exception):
    """A row that cannot run here; its message is the reason printed in its place."""


# --- measuring one row -----------------------------------------------------------------------------


def _timed_runs(settings: BenchSettings, work: Callable[[], object], clock: TimedBackend,
                row: RowResult, log: Log) -> tuple[list[float], list[list[tuple[str, float]]]]:
    """warmup + runs repetitions of `work`; fills the row's first-run and CPU fields."""
    e2e, per_run, cores, others = [], [], [], []
    for i in range(settings.warmup + settings.runs):
        clock.take()
        clock.synchronize()
        with CpuMeter() as meter:
            work()
            clock.synchronize()
        use = meter.result
        if i == 0:
            row.first_run_s = use.wall_s
        if i < settings.warmup:
            log(f"  warm-up {i + 1}/{settings.warmup}: {use.wall_s:.3f} s")
            continue
        log(f"  run {i - settings.warmup + 1}/{settings.runs}: {use.wall_s:.3f} s "
            f"(this process {use.process_cores:.2f} cores, others {use.other_cores:.2f})")
        e2e.append(use.wall_s)
        per_run.append(clock.take())
        cores.append(use.process_cores)
        others.append(use.other_cores)
    row.process_cores, row.other_cores = Stats.of(cores), Stats.of(others)
    return e2e, per_run


def _component_timings(per_run: list[list[tuple[str, float]]]) -> list[ComponentTiming]:
    order: list[str] = []
    for name, _ in per_run[0]:
        if name not in order:
            order.append(name)
    out = []
    for name in order:
        calls = [[s for n, s in run if n == name] for run in per_run]
        out.append(ComponentTiming(
            name=name,
            calls=len(calls[0]),
            per_call=Stats.of([s for run in calls for s in run]),
            per_restoration=Stats.of([sum(run) for run in calls]),
        ))
    return out


def _add_costs(row: RowResult, flops: dict[str, ComponentFlops], peaks: dict[tuple[str, str], PeakProbe]) -> None:
    peak = peaks.get((row.device, row.precision))
    total = 0.0
    for c in row.components:
        if c.name not in flops:
            continue
        c.gflop_per_call = flops[c.name].flops * row.batch / 1e9
        c.gflops = c.gflop_per_call / c.per_call.median
        c.fraction_of_peak = c.gflops / peak.gflops if peak else None
        total += c.gflop_per_call * c.calls
    if row.end_to_end is not None and row.components:  # graph rows time no components
        row.gflop_per_restoration = total
        row.gflops = total / row.end_to_end.median
        row.fraction_of_peak = row.gflops / peak.gflops if peak else None


def _measure_row(settings: BenchSettings, cfg: PresetConfig, opened: _Opened, row: RowResult,
                 release: bool, log: Log) -> None:
    """Measure one row; an error is recorded in the row (and fails the run) rather than losing the others."""
    try:
        _measure(settings, cfg, opened, row, release, log)
    except (RuntimeError, ValueError, OSError, MemoryError) as exc:
        row.failed = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        log(f"{row.label}: FAILED: {row.failed}")


def _measure(settings: BenchSettings, cfg: PresetConfig, opened: _Opened, row: RowResult,
             release: bool, log: Log) -> None:

    clock = TimedBackend(opened.backend)
    row.device, row.description, row.load_s = opened.device, opened.description, opened.load_s
    row.threads = settings.threads
    if opened.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    if settings.isolated:
        feeds = {n: BY_NAME[n].sample_inputs(cfg, row.batch, settings.seed) for n in settings.components}

        def work() -> None:
            for name, inputs in feeds.items():
                clock.run(name, **inputs)
    else:
        options = RestoreOptions(steps=settings.steps, seed=settings.seed, colorfix=settings.colorfix, batch=row.batch,
                                 fused_step=row.fused, cuda_graph=row.graph)
        # a graph replays the whole step chain: only the raw backend can be captured (the clock synchronises)
        runner = opened.backend if row.graph else ReleaseStyle(clock) if release else clock
        restorer = Restorer(runner, options)
        (image_name,) = BY_NAME["se_condition"].input_names
        lq = BY_NAME["se_condition"].sample_inputs(cfg, row.batch, settings.seed)[image_name]  # (B, 3, R, R)

        def work() -> None:
            restorer.restore(lq)

    with PeakRss() as rss:
        e2e, per_run = _timed_runs(settings, work, clock, row, log)
    row.peak_rss_mb, row.rss_before_mb, row.rss_method = rss.peak / 2**20, rss.before / 2**20, rss.method
    if opened.device == "cuda":
        if opened.backend.__class__.__name__ == "TorchBackend":
            row.gpu_peak_mb = torch.cuda.max_memory_allocated() / 2**20
        free, total = torch.cuda.mem_get_info()
        row.gpu_used_mb = (total - free) / 2**20
    row.time_to_first_result_s = row.load_s + row.first_run_s
    row.components = _component_timings(per_run)
    if not settings.isolated:
        row.end_to_end = Stats.of(e2e)
        row.seconds_per_image = row.end_to_end.median / row.batch
        row.images_per_s = row.batch / row.end_to_end.median
        glue = [wall - sum(s for _, s in calls) for wall, calls in zip(e2e, per_run)]
        row.host_other_s = None if row.graph else Stats.of(glue).median


# --- the whole benchmark ---------------------------------------------------------------------------


def _ratios(rows: list[RowResult]) -> list[Ratio]:
    ran = [r for r in rows if r.ran]
    out: list[Ratio] = []

    def e2e(r: RowResult) -> float | None:
        return r.end_to_end.median if r.end_to_end else None

    for row in ran:
        if not row.plain:  # the fused step and graphs: against the same backend's separate calls
            twin = next((b for b in ran if (b.backend, b.precision, b.batch) == (row.backend, row.precision, row.batch)
                         and b.plain), None)
            if twin is not None and e2e(row) and e2e(twin):
                out.append(Ratio("step", "end to end", row.label, twin.label, e2e(row) / e2e(twin)))
            continue
        base = next((b for b in ran if b.backend == "torch" and b.precision == "fp32" and b.batch == row.batch
                     and b.plain), None)
        if base is None or row is base:
            continue
        if row.backend == "torch-release":  # ours over the release's way: below 1, ours is faster
            if e2e(row) and e2e(base):
                out.append(Ratio("release", "end to end", base.label, row.label, e2e(base) / e2e(row)))
            ours = sum(c.per_restoration.median for c in base.components if c.name in ("se_condition", "spatial_encoder"))
            theirs = sum(c.per_restoration.median for c in row.components if c.name == "spatial_encoder_full")
            if ours and theirs:
                out.append(Ratio("release", "spatial encoder", base.label, row.label, ours / theirs))
            continue
        if e2e(row) and e2e(base):
            out.append(Ratio("backend", "end to end", row.label, base.label, e2e(row) / e2e(base)))
        theirs = {c.name: c.per_call.median for c in base.components}
        for c in row.components:
            if c.name in theirs:
                out.append(Ratio("backend", c.name, row.label, base.label, c.per_call.median / theirs[c.name]))
    for row in ran:
        same = (row.backend, row.precision, row.fused, row.graph)
        first = min((r for r in ran if (r.backend, r.precision, r.fused, r.graph) == same), key=lambda r: r.batch)
        if row is not first and row.seconds_per_image and first.seconds_per_image:
            out.append(Ratio("batch", "s/image", row.label, first.label, row.seconds_per_image / first.seconds_per_image))
    return out


def run_benchmark(settings: BenchSettings, log: Log = _stderr) -> BenchReport:
    """Every requested row, measured in this process; rows that cannot run here say why."""
    previous_threads = torch.get_num_threads()
    try:
        return _run(settings, log)
    finally:
        torch.set_num_threads(previous_threads)


def _run(settings: BenchSettings, log: Log) -> BenchReport:

    cfg = settings.config()
    threads = settings.threads or torch.get_num_threads()
    settings = BenchSettings(**{**asdict(settings), "threads": threads})
    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # only settable before any inter-op work has run
        torch.set_num_interop_threads(1)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = [RowResult(kind, p, b, fused, graph) for kind in settings.backends for p in settings.precisions
            for b in settings.batches for fused in settings.fused for graph in settings.graphs]
    notes: list[str] = []

    # 1. ONNX files first, in a child process, before this one holds the models
    onnx_info, onnx_skip = None, None
    if "onnxruntime" in settings.backends:
        onnx_info, onnx_skip = _prepare_onnx(settings, cfg, log, onnx_cache)

    # 2. this machine's peak, per device and precision the rows will run at
    peaks: dict[tuple[str, str], PeakProbe] = {}
    for p in settings.precisions:
        for dev in sorted({device, "cpu"} if "onnxruntime" in settings.backends else {device}):
            log(f"matmul peak probe: {p} on {dev}, threads: {torch.get_num_threads()}")
            peaks[(dev, p)] = matmul_peak(p, dev, max_n=settings.probe_max_n)

    # 3. models: FLOPs, then the torch rows; the models are freed before the exported runtimes run
    flops, random_weights, weights = _torch_phase(settings, cfg, rows, device, log)
    gc.collect()

    # 4. the exported runtimes, each opened once per precision
    for kind in ("onnxruntime", "tensorrt"):
        for precision in settings.precisions:
            group = [r for r in rows if r.backend == kind and r.precision == precision]
            if group:
                _run_group(settings, cfg, kind, precision, group, onnx_info, onnx_skip, log)

    for row in rows:
        if row.ran:
            _add_costs(row, flops, peaks)
        elif row.skipped:
            log(f"{row.label}: skipped: {row.skipped}")
    if random_weights:
        notes.append("random weights: timings are real (the arithmetic does not depend on the values), outputs are noise")
    return BenchReport(
        settings={k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(settings).items()},
        preset=cfg.name,
        resolution=cfg.resolution,
        steps=settings.steps,
        random_weights=random_weights,
        weights=weights,
        environment=environment(),
        threads={"torch": torch.get_num_threads(), "onnxruntime_intra_op": threads},
        peaks=list(peaks.values()),
        flops=flops,
        onnx=onnx_info,
        rows=rows,
        ratios=_ratios(rows),
        notes=notes,
    )


def _torch_phase(settings: BenchSettings, cfg: PresetConfig, rows: list[RowResult], device: str,
                 log: Log) -> tuple[dict[str, ComponentFlops], bool, str]:
    """Build or load the models, count FLOPs, run the torch rows; the models die with this frame."""

    log(f"building {cfg.name} models ({'random weights' if settings.weights is None else settings.weights}) on {device}")
    start = time.perf_counter()
    models = _load_models(settings, cfg, device)
    models_load_s = time.perf_counter() - start
    random_weights, weights = _weights_identity(settings, models)
    names = sorted(set(DEFAULT_COMPONENTS) | set(settings.components) | set(_fused_names(settings))
                   | ({"spatial_encoder_full"} if "torch-release" in settings.backends else set()))
    log(f"counting FLOPs of {len(names)} components")
    flops = count_flops(models, names, seed=settings.seed)

    owners: dict[str, str] = {}  # precision -> the row that paid for the models at that precision
    backends: dict[str, TorchBackend] = {}
    loads: dict[str, float] = {}  # precision -> seconds to build or load (and cast) its models
    for row in rows:
        if row.backend not in ("torch", "torch-release"):
            continue
        if row.backend == "torch-release" and settings.isolated:
            row.skipped = "release-style differs only inside a restoration: time spatial_encoder_full with --backend torch"
            continue
        if row.backend == "torch-release" and not row.plain:
            row.skipped = "release-style runs the release's separate SE and UNet calls, without a graph"
            continue
        try:
            check_torch_precision(row.precision, torch.device(device))
            if row.precision not in backends:  # fp16/bf16 cast a copy: the fp32 models stay the reference
                start = time.perf_counter()
                models_at = models if row.precision == "fp32" else copy.deepcopy(models)
                backends[row.precision] = TorchBackend(models_at, device, precision=row.precision)
                owners[row.precision] = row.label
                loads[row.precision] = models_load_s + (time.perf_counter() - start)
            fast_path(backends[row.precision], row.fused, row.graph)
        except ValueError as exc:
            row.skipped = str(exc)
            continue
        backend = backends[row.precision]
        opened = _Opened(backend, device, f"torch {backend.describe()} on {device}, threads: {torch.get_num_threads()}",
                         loads[row.precision])
        row.load_shared_with = None if owners[row.precision] == row.label else owners[row.precision]
        log(f"{row.label}: {opened.description}")
        _measure_row(settings, cfg, opened, row, release=row.backend == "torch-release", log=log)
    return flops, random_weights, weights


def _prepare_onnx(settings: BenchSettings, cfg: PresetConfig, log: Log, onnx_cache) -> tuple[dict | None, str | None]:
    if settings.onnx is not None:
        return {"folder": str(settings.onnx), "exported_now": False, "export_s": 0.0}, None
    if settings.weights is None:
        tag = f"random-seed{settings.seed}"
    else:

        tag = f"{variant_for_steps(settings.steps).name}-{_content_hash(settings.weights, settings.steps)}"
    request = onnx_cache.ExportRequest(
        preset=settings.preset,
        resolution=cfg.resolution,
        weights=None if settings.weights is None else str(settings.weights),
        weights_tag=tag,
        seed=settings.seed,
        steps=settings.steps,
        components=tuple(sorted(set(DEFAULT_COMPONENTS) | set(settings.components) | set(_fused_names(settings)))),
        precisions=tuple(settings.precisions),
        batch=(min(settings.batches), min(settings.batches), max(settings.batches)),
    )
    try:
        result = onnx_cache.ensure_onnx(settings.cache_dir, request, log=log)
    except onnx_cache.ExportUnavailable as exc:
        return None, str(exc)
    log(f"onnx: {'cached' if result.cached else 'exported'} {result.folder}")
    return {"folder": str(result.folder), "exported_now": not result.cached, "export_s": result.seconds}, None


def _run_group(settings: BenchSettings, cfg: PresetConfig, kind: str, precision: str, group: list[RowResult],
               onnx_info: dict | None, onnx_skip: str | None, log: Log) -> None:
    """Rows of one exported runtime and precision: open once, run every batch, close."""
    names = list(settings.components) or [
        n for n in DEFAULT_COMPONENTS if not n.startswith("colorfix_") or n == f"colorfix_{settings.colorfix}"
    ]
    if kind == "tensorrt" and True in settings.fused:  # every engine of the folder, the fused step's if it has one
        names = None
    with contextlib.ExitStack() as stack:
        try:
            if kind == "onnxruntime" and onnx_info is None:
                raise _Skip(onnx_skip or "no ONNX folder")
            folder = Path(onnx_info["folder"]) if kind == "onnxruntime" and onnx_info else None
            opened = _open_exported(stack, kind, folder, settings.engines, precision, settings.threads, names)
            got = opened.backend.config.resolution
            if got != cfg.resolution:
                raise _Skip(f"the ONNX files in {folder} are for {got} px, not {cfg.resolution}")
        except _Skip as exc:
            for row in group:
                row.skipped = str(exc)
            return
        except (ImportError, FileNotFoundError, ValueError, RuntimeError) as exc:
            for row in group:
                row.skipped = f"{kind} could not start: {exc}"
            return
        owner = None
        hi = opened.backend.max_batch
        for row in group:
            if hi is not None and row.batch > hi:
                row.skipped = f"the engines take batch up to {hi}: rebuild them with a wider profile"
                continue
            try:
                fast_path(opened.backend, row.fused, row.graph)
            except ValueError as exc:
                row.skipped = str(exc)
                continue
            row.load_shared_with, owner = owner, owner or row.label
            log(f"{row.label}: {opened.description}")
            _measure_row(settings, cfg, opened, row, release=False, log=log)
