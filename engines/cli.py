"""`interlcm-trt`: restore faces with TensorRT, ONNX Runtime or torch; build engines."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from interlcm.choices import BACKENDS, COLORFIXES, PRECISIONS, STEPS, VARIANTS
from interlcm.config import PRESETS
from interlcm.faces.detectors import DEFAULT_DETECTOR, DETECTORS  # light: the choice list

_PATH = click.Path(path_type=Path)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Fast InterLCM face restoration."""


@main.command()
@click.argument("inputs", nargs=-1)
@click.option("--engines", type=_PATH, help="TensorRT engine folder (interlcm-trt build).")
@click.option("--onnx", type=_PATH, help="ONNX folder (interlcm-export).")
@click.option("--weights", type=_PATH, help="Weights folder (interlcm-weights) for the torch backend.")
@click.option("--preset", type=click.Choice(list(PRESETS)), help="Random weights of this size (no download).")
@click.option("--backend", type=click.Choice(BACKENDS), default=BACKENDS[0], show_default=True)
@click.option("--precision", type=click.Choice(PRECISIONS), default=PRECISIONS[0], show_default=True, help="ONNX files to run.")
@click.option("--variant", type=click.Choice(list(VARIANTS)), help="Encoder pair (default: the one --steps implies).")
@click.option("--steps", type=click.Choice([str(n) for n in STEPS]), default=str(STEPS[0]), show_default=True,
              help="3-step (paper) or 1-step model.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--colorfix", type=click.Choice(COLORFIXES), help="Colour fix (default: the variant's).")
@click.option("--batch", type=click.IntRange(1, 63), default=1, show_default=True, help="Faces per batch.")
@click.option("--threads", type=int, help="CPU threads (default: all cores).")
@click.option("--timing/--no-timing", default=False, show_default=True,
              help="Time every stage (synchronises the device after each call).")
@click.option("--aligned", is_flag=True, help="Inputs are aligned face crops (the release's --has_aligned).")
@click.option("--detector", type=click.Choice(list(DETECTORS)), default=DEFAULT_DETECTOR, show_default=True,
              help="Face detector for whole photos.")
@click.option("--only-center-face", is_flag=True, help="Restore only the face nearest each photo's centre.")
@click.option("--upscale", type=click.IntRange(1, 8), default=2, show_default=True, help="Whole photos: output size factor.")
@click.option("--save-faces", is_flag=True, help="Also write the restored faces, in NAME_faces/ beside each output.")
@click.option("--skip-existing", is_flag=True, help="Skip inputs whose output is already complete.")
@click.option("--out", type=_PATH, default=Path("outputs/restored"), show_default=True)
def restore(inputs, engines, onnx, weights, preset, backend, precision, variant, steps, seed, colorfix, batch,  # noqa: ANN001
            threads, timing, aligned, detector, only_center_face, upscale, save_faces, skip_existing, out) -> None:
    """Restore every face of whole photos (default) or aligned face crops: files, folders or globs.

    With no input, restores the bundled demo photo (or, with --aligned, the demo face crop).
    """
    from interlcm.engines.backend import open_backend
    from interlcm.engines.photo import PhotoOptions, PhotoRestorer
    from interlcm.engines.runtime import RestoreOptions, Restorer, plan_outputs, restore_files
    from interlcm.faces.detectors import DetectorContext, open_detector
    from interlcm.imageio import demo_image_path, demo_photo_path, list_images

    chosen = _variant(variant, steps)
    if not inputs:
        inputs = (str(demo_image_path() if aligned else demo_photo_path()),)
        click.echo(f"no input given: restoring the embedded demo {'face' if aligned else 'photo'} {inputs[0]}")
    options = RestoreOptions(steps=chosen.steps, seed=seed, colorfix=colorfix or chosen.colorfix, batch=batch)
    photo_options = PhotoOptions(aligned=aligned, upscale=upscale, only_center_face=only_center_face,
                                 save_faces=save_faces, keep_gray=chosen.name != "colorization")
    try:
        paths = list_images(inputs)
        plan_outputs(paths, out, save_faces=save_faces)  # a name clash fails here, before any work
        with open_backend(backend, weights=weights, onnx=onnx, engines=engines, preset=preset, variant=chosen.name,
                          precision=precision, threads=threads, batch=batch) as opened:
            found_by = None if aligned else open_detector(
                detector, DetectorContext(weights=weights, backend=opened.backend)
            )
            click.echo(f"backend: {opened.description}")
            if found_by is not None:
                click.echo(f"detector: {detector}")
            if opened.random_weights:
                click.echo("note: random weights: the output shows the pipeline runs, not a restoration "
                           "(get real weights with `interlcm-weights download`)")
            photo_restorer = PhotoRestorer(Restorer(opened.backend, options, timing=timing), photo_options, found_by)
            report = restore_files(photo_restorer, paths, out, skip_existing=skip_existing)
    except (ValueError, RuntimeError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from None
    _print_summary(photo_restorer, report, len(paths))
    if report.failed:
        sys.exit(1)


def _variant(variant: str | None, steps: str):  # noqa: ANN202 - interlcm.choices.Variant
    """--variant wins; else the variant --steps implies."""
    from interlcm.choices import get_variant, variant_for_steps

    return get_variant(variant) if variant else variant_for_steps(int(steps))


def _print_summary(photo_restorer, report, total: int) -> None:  # noqa: ANN001
    from collections import Counter

    click.echo(f"restored {len(report.written)}/{total} image(s) in {report.seconds:.2f} s -> "
               f"{report.written[0].parent if report.written else '-'}")
    if report.skipped:
        click.echo(f"skipped {len(report.skipped)} image(s) whose output is already complete (--skip-existing)")
    for note, count in Counter(note for _, note in report.notes).items():
        click.echo(f"  {note} ({count} image(s))")
    if photo_restorer.seconds:
        click.echo("whole-photo stages (s): " + ", ".join(f"{k} {v:.3f}" for k, v in photo_restorer.seconds.items()))
    timed = photo_restorer.restorer.timings
    if timed is not None and timed.seconds:
        click.echo("time per stage (s, total over all images):")
        for name, secs in sorted(timed.seconds.items(), key=lambda kv: -kv[1]):
            click.echo(f"  {name:<18} {secs:8.3f}  ({timed.counts[name]} calls)")
    for path, reason in report.failed:
        click.echo(f"failed: {path}: {reason}", err=True)


@main.command()
@click.option("--onnx", type=_PATH, required=True, help="ONNX folder with fp16 files (interlcm-export --fp16).")
@click.option("--out", type=_PATH, required=True, help="Engine folder.")
@click.option("--components", multiple=True, help="Only these components (repeatable).")
@click.option("--opt-level", type=click.IntRange(0, 5), default=3, show_default=True, help="Builder optimisation level.")
@click.option("--timing-cache", type=_PATH, help="Timing cache file (default: OUT/timing.cache).")
@click.option("--rebuild", type=click.Choice(["auto", "never", "always"]), default="auto", show_default=True,
              help="auto: rebuild stale engines; never: refuse them; always: rebuild everything.")
def build(onnx, out, components, opt_level, timing_cache, rebuild) -> None:  # noqa: ANN001
    """Build fp16 TensorRT engines from an export folder (needs an NVIDIA GPU)."""
    from interlcm.engines.trt import EngineError, build_engines, check_cuda

    ok, why = check_cuda()
    if not ok:
        raise click.ClickException(f"cannot build TensorRT engines here: {why}")
    try:
        built = build_engines(onnx, out, components=list(components) or None, opt_level=opt_level,
                              timing_cache=timing_cache, rebuild=rebuild)
    except EngineError as exc:
        raise click.ClickException(str(exc)) from None
    for name, path in built.items():
        click.echo(f"{name}: {path}")


@main.command()
@click.option("--engines", type=_PATH, help="TensorRT engine folder to check.")
@click.option("--onnx", type=_PATH, help="ONNX folder to check (ONNX Runtime).")
@click.option("--weights", type=_PATH, help="Weights the export was made from (default: the manifest's random preset).")
@click.option("--precision", type=click.Choice(PRECISIONS), default=PRECISIONS[0], show_default=True)
@click.option("--variant", type=click.Choice(list(VARIANTS)), help="Encoder pair (default: the one --steps implies).")
@click.option("--steps", type=click.Choice([str(n) for n in STEPS]), default=str(STEPS[0]), show_default=True)
@click.option("--batch", type=click.IntRange(1, 63), default=1, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
def check(engines, onnx, weights, precision, variant, steps, batch, seed) -> None:  # noqa: ANN001
    """Compare a backend with the torch reference stage by stage, on the demo face."""
    from interlcm.engines.backend import open_backend, reference_models
    from interlcm.engines.parity import compare_traces, format_table
    from interlcm.engines.runtime import RestoreOptions, Restorer
    from interlcm.engines.torch_backend import TorchBackend
    from interlcm.imageio import demo_image_path, read_image
    from interlcm.sampler import Trace

    if (engines is None) == (onnx is None):
        raise click.UsageError("give exactly one of --engines or --onnx")
    chosen = _variant(variant, steps)
    options = RestoreOptions(steps=chosen.steps, seed=seed, colorfix=chosen.colorfix)
    try:
        with open_backend("tensorrt" if engines else "onnxruntime", onnx=onnx, engines=engines, precision=precision,
                          variant=chosen.name, batch=batch) as opened:
            models = reference_models(opened, weights)
            click.echo(f"checking {opened.description}\nagainst torch fp32, weights: {models.origin}")
            lq = read_image(demo_image_path(), opened.config.resolution)[None].repeat(batch, 1, 1, 1)
            ours, ref = Trace(), Trace()
            Restorer(opened.backend, options).restore(lq, ours)
            Restorer(TorchBackend(models), options).restore(lq, ref)
    except (ValueError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(format_table(compare_traces(ours, ref)))


if __name__ == "__main__":
    main()
