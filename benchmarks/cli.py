"""`interlcm-bench`: latency per component and end to end, every backend, against this machine's peak."""

from __future__ import annotations

from pathlib import Path

import click

from interlcm.choices import COLORFIXES, STEPS
from interlcm.config import PRESETS

_PATH = click.Path(path_type=Path)


def _csv(kind: type):
    def parse(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple | None:
        if value is None:
            return None
        items = [v.strip() for v in value.split(",") if v.strip()]
        try:
            return tuple(kind(v) for v in items)
        except ValueError:
            raise click.BadParameter(f"{value!r}: expected a comma-separated list of {kind.__name__}") from None

    return parse


def _flags(off: str, on: str):
    """`off,on` -> (False, True): which of the two forms to measure."""

    def parse(ctx: click.Context, param: click.Parameter, value: str) -> tuple[bool, ...]:
        items = _csv(str)(ctx, param, value)
        bad = [v for v in items if v not in (off, on)]
        if bad or not items:
            raise click.BadParameter(f"{value!r}: expected {off}, {on} or {off},{on}")
        return tuple(v == on for v in items)

    return parse


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--preset", type=click.Choice(list(PRESETS)), default="tiny", show_default=True,
              help="Model sizes (random weights unless --weights).")
@click.option("--weights", type=_PATH, help="Weights folder (interlcm-weights); default: seeded random weights.")
@click.option("--onnx", type=_PATH, help="ONNX export folder; default: export once into --cache-dir.")
@click.option("--engines", type=_PATH, help="TensorRT engine folder (interlcm-trt build).")
@click.option("--backend", "backends", callback=_csv(str), default="torch,torch-release,onnxruntime",
              show_default=True, help="Comma-separated from torch, torch-release (torch as released: SE embedding every step), "
              "onnxruntime, tensorrt.")
@click.option("--precision", "precisions", callback=_csv(str), default="fp32", show_default=True,
              help="fp32,fp16,bf16 (torch: fp16 on CUDA only; onnxruntime: fp32,fp16; tensorrt: fp16)")
@click.option("--batch", "batches", callback=_csv(int), default="1", show_default=True, help="e.g. 1,4,8")
@click.option("--step", "step_forms", callback=_flags("separate", "fused"), default="separate", show_default=True,
              help="separate,fused: SE and UNet as two calls per step, and/or the fused denoise_step.")
@click.option("--cuda-graph", "graph_modes", callback=_flags("off", "on"), default="off", show_default=True,
              help="off,on: also replay the step chain as a CUDA graph (torch and tensorrt on a GPU).")
@click.option("--resolution", type=int, help="Face size in pixels (default: the preset's, 512 for sd15).")
@click.option("--steps", type=click.Choice([str(n) for n in STEPS]), default=str(STEPS[0]), show_default=True, help="Network steps.")
@click.option("--colorfix", type=click.Choice(COLORFIXES), default=COLORFIXES[0], show_default=True)
@click.option("--warmup", type=click.IntRange(1), default=2, show_default=True, help="Untimed runs per row.")
@click.option("--runs", type=click.IntRange(1), default=3, show_default=True, help="Timed runs per row.")
@click.option("--threads", type=click.IntRange(1), help="torch and onnxruntime intra-op threads (default: torch's).")
@click.option("--components", callback=_csv(str), help="Time only these components, alone, on sample inputs.")
@click.option("--probe-n", type=click.IntRange(64), default=4096, show_default=True, help="Largest matmul of the peak probe.")
@click.option("--cache-dir", type=_PATH, default=Path(".cache/bench-onnx"), show_default=True)
@click.option("--json", "json_path", type=_PATH, help="Write every number and the environment here.")
@click.option("--plot", "plot_path", type=_PATH, help="Write the stacked-bar PNG here.")
def main(preset, weights, onnx, engines, backends, precisions, batches, step_forms, graph_modes, resolution, steps,
         colorfix, warmup, runs, threads, components, probe_n, cache_dir, json_path, plot_path) -> None:
    """Measure InterLCM's latency per component and end to end, for every backend, precision and batch,
    in one process, against a matmul peak measured in the same process."""
    from interlcm.benchmarks.harness import run_benchmark
    from interlcm.benchmarks.report import plot, render, write_json
    from interlcm.benchmarks.schema import BenchSettings

    try:
        settings = BenchSettings(
            preset=preset, resolution=resolution, weights=weights, onnx=onnx, engines=engines,
            backends=backends, precisions=precisions, batches=batches, fused=step_forms,
            graphs=graph_modes, steps=int(steps), colorfix=colorfix,
            warmup=warmup, runs=runs, threads=threads, components=components or (), probe_max_n=probe_n,
            cache_dir=cache_dir,
        )
        report = run_benchmark(settings)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(render(report))
    if json_path:
        write_json(report, json_path)
        click.echo(f"\nJSON: {json_path}")
    if plot_path:
        plot(report, plot_path)
        click.echo(f"plot: {plot_path}")
    failed = [r.label for r in report.rows if r.failed]
    if failed:
        raise click.ClickException(f"{len(failed)} row(s) failed: {', '.join(failed)} (see FAILED above)")


if __name__ == "__main__":
    main()
