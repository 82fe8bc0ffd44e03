"""GPU benchmark for `make gpu-check`: torch vs ONNX Runtime CUDA vs TensorRT, two-call vs fused step.

    python -m interlcm.engines.gpu_bench --onnx DIR --engines DIR --batch 1 --batch 8 --json OUT.json

One restoration = the whole sampler (CLIP ... colour fix) on a batch of the demo face,
timed from host to host (the result is copied to the CPU, which waits for the GPU),
after two warm-up runs; the median of `--repeat` runs. Torch runs the random weights
the export records, in fp32 (the reference); ONNX Runtime and TensorRT run the fp16
files. A backend that cannot run records its one-line reason instead of a time.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import click
import torch


def _time(restore: Callable[[], torch.Tensor], repeat: int) -> float:
    for _ in range(2):
        restore()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        restore()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@contextmanager
def _backends(onnx: Path, engines: Path | None) -> Iterator[dict[str, object]]:
    """name -> opened backend (or the one-line reason it could not open), all closed on exit."""
    from interlcm.engines.backend import open_backend, reference_models
    from interlcm.torch_backend import TorchBackend

    with contextlib.ExitStack() as stack:
        ort = stack.enter_context(open_backend("onnxruntime", onnx=onnx, precision="fp16"))
        opened: dict[str, object] = {
            "torch fp32": TorchBackend(reference_models(ort).to("cuda"), "cuda"),
            "onnxruntime fp16": ort.backend,
        }
        if engines is not None:
            try:
                opened["tensorrt fp16"] = stack.enter_context(open_backend("tensorrt", engines=engines)).backend
            except RuntimeError as exc:
                opened["tensorrt fp16"] = str(exc)
        yield opened


def _restorer(backend, config, face: torch.Tensor, batch: int, fused: bool, graph: bool) -> Callable[[], torch.Tensor]:  # noqa: ANN001
    """One restoration of `batch` demo faces, host to host, with no per-component synchronisation
    (the sampler called directly, not through the runtime's per-stage timer); with `graph` the step
    chain is a CUDA-graph replay on the engines' stream."""
    from interlcm.engines.cuda_graph import GraphedStepChain
    from interlcm.engines.restorer import RestoreOptions, Restorer
    from interlcm.sampler import restore

    restorer = Restorer(backend, RestoreOptions(batch=batch, fused_step=fused))
    settings, noise = restorer.settings, restorer.noise(batch).cuda()
    lq = face.repeat(batch, 1, 1, 1).cuda()
    stream = backend.stream  # the engines' dedicated stream (TensorRT, ONNX Runtime); torch: None, the current one
    chain = GraphedStepChain(backend, settings, stream) if graph else None

    def run() -> torch.Tensor:
        with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
            return restore(backend, lq, noise, settings, chain=chain).cpu()

    return run


def benchmark(onnx: Path, engines: Path | None, batches: tuple[int, ...], repeat: int) -> list[dict]:
    from interlcm.export.manifest import load_manifest
    from interlcm.imageio import demo_image_path, read_image

    config = load_manifest(onnx, verify=False).config
    face = read_image(demo_image_path(), config.resolution)[None]
    rows = []
    with _backends(onnx, engines) as backends:
        for name, backend in backends.items():
            graphs = (False, True) if name.startswith("tensorrt") else (False,)
            for batch, fused, graph in itertools.product(batches, (False, True), graphs):
                row = {"backend": name, "step": "fused" if fused else "two-call", "graph": graph, "batch": batch}
                rows.append(row)
                if isinstance(backend, str):
                    row["error"] = backend
                    continue
                try:
                    row["seconds"] = _time(_restorer(backend, config, face, batch, fused, graph), repeat)
                except Exception as exc:  # noqa: BLE001 - one row's failure is recorded, the others run
                    row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                click.echo(json.dumps(row))
    return rows


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--onnx", type=click.Path(path_type=Path, exists=True), required=True,
              help="Export folder with fp16 files (and denoise_step for the fused rows).")
@click.option("--engines", type=click.Path(path_type=Path), help="Engine folder (interlcm-trt build).")
@click.option("--batch", "batches", type=int, multiple=True, default=(1, 8), show_default=True)
@click.option("--repeat", type=int, default=5, show_default=True)
@click.option("--json", "json_out", type=click.Path(path_type=Path), required=True)
def main(onnx: Path, engines: Path | None, batches: tuple[int, ...], repeat: int, json_out: Path) -> None:
    """Seconds per restored batch for each backend, step form and batch size."""
    from interlcm.files import atomic_write_text

    if not torch.cuda.is_available():
        raise click.ClickException("no CUDA device: this benchmark is for GPU machines (make gpu-check)")
    rows = benchmark(onnx, engines, tuple(batches), repeat)
    meta = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "repeat": repeat}
    atomic_write_text(json_out, json.dumps({"meta": meta, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
