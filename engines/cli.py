"""`interlcm-trt`: restore faces with TensorRT, ONNX Runtime or torch; build engines."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import click

from interlcm.choices import (
    BACKENDS,
    COLORFIXES,
    DEFAULT_STRENGTH,
    EXPORT_PRECISIONS,
    PRECISIONS,
    STEPS,
    STRENGTH_RANGE,
    UPSAMPLER,
    UPSAMPLER_CHOICES,
    VARIANTS,
)
from interlcm.cli.options import SEED, Command, Group
from interlcm.config import PRESETS
from interlcm.faces.detectors import DEFAULT_DETECTOR, DETECTORS  # light: the choice list
from interlcm.limits import MEGAPIXEL, PixelLimits, ServeLimits

_PATH = click.Path(path_type=Path)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Fast InterLCM face restoration."""


_BACKEND_OPTIONS = (  # which backend runs and how it is opened: shared by `restore` and `interlcm-serve`
    click.option("--engines", type=_PATH, help="TensorRT engine folder (interlcm-trt build)."),
    click.option("--onnx", type=_PATH, help="ONNX folder (interlcm-export)."),
    click.option("--weights", type=_PATH, help="Weights folder (interlcm-weights) for the torch backend."),
    click.option("--preset", type=click.Choice(list(PRESETS)), help="Random weights of this size (no download)."),
    click.option("--backend", type=click.Choice(BACKENDS), default=BACKENDS[0], show_default=True),
    click.option("--precision", type=click.Choice(PRECISIONS),
                 help="torch: fp32, fp16 (CUDA) or bf16, half weights with fp32 norms; onnxruntime: the export's "
                 "fp32 or fp16 files; tensorrt: fp16. Default: fp32 (tensorrt fp16)."),
    click.option("--variant", type=click.Choice(list(VARIANTS)), help="Encoder pair (default: the one --steps implies)."),
    click.option("--steps", type=click.Choice([str(n) for n in STEPS]), default=str(STEPS[0]), show_default=True,
                 help="3-step (paper) or 1-step model."),
    click.option("--threads", type=int, help="CPU threads (default: all cores)."),
    click.option("--fused-step/--no-fused-step", default=None,
                 help="SE + UNet as one denoise_step call per step (default: on GPUs when the backend has it)."),
    click.option("--cuda-graph/--no-cuda-graph", default=None,
                 help="Replay the step chain as a CUDA graph (default: on GPUs for torch and tensorrt)."),
)


def backend_options(command):
    """Adds the backend options to `command` and hands it one `BackendOptions` as `backend`
    (with the command's own `--batch`, which it also keeps)."""

    @functools.wraps(command)
    def with_options(*args, engines, onnx, weights, preset, backend, precision, variant, steps, threads,
                     fused_step, cuda_graph, batch, **kwargs):
        from interlcm.engines.backend import BackendOptions

        options = BackendOptions(kind=backend, weights=weights, onnx=onnx, engines=engines, preset=preset,
                                 variant=_variant(variant, steps).name, precision=precision, threads=threads,
                                 batch=batch, fused_step=fused_step, cuda_graph=cuda_graph)
        return command(*args, backend=options, batch=batch, **kwargs)

    for option in reversed(_BACKEND_OPTIONS):
        with_options = option(with_options)
    return with_options


def pixel_options(defaults: PixelLimits):
    """--max-input-mp / --max-output-mp, in megapixels, with these defaults (interlcm.limits.PixelLimits)."""
    megapixels = click.FloatRange(0.0, min_open=True)
    options = (
        click.option("--max-input-mp", type=megapixels, default=defaults.input / MEGAPIXEL, show_default=True,
                     help="Largest input photo, in megapixels (judged from the file header, before decoding)."),
        click.option("--max-output-mp", type=megapixels, default=defaults.output / MEGAPIXEL, show_default=True,
                     help="Largest output photo (input x upscale^2), in megapixels; a larger one fails before any work."),
    )

    def decorate(command):
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


def _pixel_limits(max_input_mp: float, max_output_mp: float) -> PixelLimits:
    return PixelLimits(input=round(max_input_mp * MEGAPIXEL), output=round(max_output_mp * MEGAPIXEL))


@main.command()
@click.argument("inputs", nargs=-1)
@backend_options
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--colorfix", type=click.Choice(COLORFIXES), help="Colour fix (default: the variant's).")
@click.option("--batch", type=click.IntRange(1, 63), default=1, show_default=True, help="Faces per batch.")
@click.option("--timing/--no-timing", default=False, show_default=True,
              help="Time every stage (synchronises the device after each call).")
@click.option("--aligned", is_flag=True, help="Inputs are aligned face crops (the release's --has_aligned).")
@click.option("--detector", type=click.Choice(list(DETECTORS)), default=DEFAULT_DETECTOR, show_default=True,
              help="Face detector for whole photos.")
@click.option("--only-center-face", is_flag=True, help="Restore only the face nearest each photo's centre.")
@click.option("--upscale", type=click.IntRange(1, 8), default=2, show_default=True, help="Whole photos: output size factor.")
@click.option("--strength", type=click.FloatRange(*STRENGTH_RANGE), default=DEFAULT_STRENGTH, show_default=True,
              help="Mix of restored and original face (A1111's visibility, facefusion's blend): "
              "1 the restored face, 0 the input unchanged.")
@click.option("--save-faces", is_flag=True, help="Also write the restored faces, in NAME_faces/ beside each output.")
@click.option("--skip-existing", is_flag=True, help="Skip inputs whose earlier output (of that very input) is complete.")
@click.option("--overwrite", is_flag=True,
              help="Replace files in OUT that are not earlier outputs of the same inputs (refused without it).")
@click.option("--workers", type=click.IntRange(0), default=None,
              help="CPU threads decoding, pasting back and writing while the device restores "
              "[default: cores, at most 4]; 0 runs every stage in turn.")
@pixel_options(PixelLimits())
@click.option("--out", default="outputs/restored", show_default=True, help="Output folder (with --ray also a URI: s3://...).")
# --- scale out ---
@click.option("--ray", "ray_address", metavar="local|ADDRESS",
              help="Run as a Ray Data job: `--ray local` starts a local cluster, `--ray ADDRESS` joins one (e.g. auto). "
              "Resumable: outputs that exist are skipped; OUT/results.jsonl lists every input.")
@click.option("--actors", type=click.IntRange(1), help="With --ray: restoring actors (default: one per GPU, else 1).")
# --- video and upsamplers ---
@click.option("--bg-upsampler", type=click.Choice(UPSAMPLER_CHOICES), default=UPSAMPLER_CHOICES[0], show_default=True,
              help="Upscale the background with Real-ESRGAN x2plus (whole photos and video frames).")
@click.option("--bg-tile", type=click.IntRange(0), default=400, show_default=True,
              help="Real-ESRGAN tile size in pixels (0: whole image at once); tiles overlap by 40 px.")
@click.option("--face-upsample", is_flag=True, help="Also upscale restored faces with Real-ESRGAN before paste-back.")
@click.option("--save-frames", is_flag=True, help="Videos: also write every restored frame, in OUT/NAME_frames/.")
def restore(inputs, backend, seed, colorfix, batch, timing, aligned, detector, only_center_face, upscale,
            strength, save_faces, skip_existing, overwrite, workers, max_input_mp, max_output_mp, out, ray_address,
            actors, bg_upsampler, bg_tile, face_upsample, save_frames) -> None:
    """Restore every face of whole photos (default) or aligned face crops: files, folders or globs.

    Videos (.mp4 .mov .avi .mkv .webm) are restored frame by frame, audio kept. With no input,
    restores the bundled demo photo (or, with --aligned, the demo face crop). Outputs never replace
    an input, nor a file in OUT other than an earlier output of the same input (see --overwrite).
    """
    from dataclasses import replace

    from interlcm.choices import get_variant
    from interlcm.engines.backend import open_backend
    from interlcm.engines.outputs import plan_outputs
    from interlcm.engines.photo import PhotoOptions, open_photo_restorer
    from interlcm.engines.pipeline import DEFAULT_WORKERS, restore_files
    from interlcm.engines.restorer import RestoreOptions
    from interlcm.files import clean_stale_temporaries, make_folder
    from interlcm.imageio import demo_image_path, demo_photo_path, list_images
    from interlcm.video import is_video

    if not out.strip():  # `--out "$DIR"` with DIR unset: never the current folder by accident
        raise click.UsageError("--out is empty (an unset shell variable?): give the output folder")
    chosen = get_variant(backend.variant)
    if timing and backend.cuda_graph is None:  # --timing synchronises after every call: no graph to capture
        backend = replace(backend, cuda_graph=False)
    workers = DEFAULT_WORKERS if workers is None else workers
    if not inputs:
        inputs = (str(demo_image_path() if aligned else demo_photo_path()),)
        click.echo(f"no input given: restoring the embedded demo {'face' if aligned else 'photo'} {inputs[0]}")
    videos = [Path(i) for i in inputs if is_video(i)]
    inputs = tuple(i for i in inputs if not is_video(i))
    options = RestoreOptions(steps=chosen.steps, seed=seed, colorfix=colorfix or chosen.colorfix, batch=batch)
    photo_options = PhotoOptions(aligned=aligned, upscale=upscale, only_center_face=only_center_face,
                                 save_faces=save_faces, keep_gray=chosen.keep_gray, strength=strength,
                                 limits=_pixel_limits(max_input_mp, max_output_mp))
    if ray_address is not None:
        if videos:
            raise click.UsageError(f"--ray restores photos, not videos ({videos[0]}): restore videos without --ray")
        _restore_on_ray(inputs, out, ray_address, actors, backend, options, photo_options, detector, overwrite)
        return
    out = Path(out)
    report, video_failed = None, False
    try:
        paths = list_images(inputs) if inputs else []
        # every output of the run, checked against each other, the inputs and OUT, before any work
        plan = plan_outputs(paths, out, videos=videos, save_faces=save_faces, save_frames=save_frames,
                            overwrite=overwrite)
        with open_backend(backend) as opened:
            upsamplers = _upsamplers(opened.backend, backend.weights, bg_upsampler, bg_tile, face_upsample)
            photo_restorer = open_photo_restorer(opened.backend, opened.fast.apply(options), photo_options, detector,
                                                 backend.weights, timing, upsamplers)
            make_folder(out)  # --out a file, read-only or uncreatable: one sentence before any work
            for folder in plan.folders():  # temporaries of killed runs (never a live run's)
                clean_stale_temporaries(folder)
            click.echo(f"backend: {opened.description}; {opened.fast.describe()}")
            if not aligned:
                click.echo(f"detector: {detector}")
            if opened.random_weights:
                click.echo("note: random weights: the output shows the pipeline runs, not a restoration "
                           "(get real weights with `interlcm-weights download`)")
            if plan.videos:
                video_failed = _restore_videos(photo_restorer, plan, skip_existing, workers)
            if plan.photos:
                report = restore_files(photo_restorer, plan, skip_existing=skip_existing, workers=workers)
    except (ValueError, RuntimeError, FileNotFoundError) as exc:  # incl. FilesError: disk full while writing
        raise click.ClickException(str(exc)) from None
    if report is not None:
        _print_summary(photo_restorer, report)
    if (report is not None and report.count("failed")) or video_failed:
        sys.exit(1)


def _variant(variant: str | None, steps: str):
    """--variant wins; else the variant --steps implies."""
    from interlcm.choices import get_variant, variant_for_steps

    return get_variant(variant) if variant else variant_for_steps(int(steps))


def _restore_on_ray(inputs, out: str, address: str, actors, backend, options, photo_options,
                    detector: str, overwrite: bool) -> None:
    """The restore command as a Ray Data job (engines/ray_job.py); same options, same outputs."""
    import ray

    from interlcm.engines.ray_job import JobSpec, connect, run_job

    spec = JobSpec(backend, options, photo_options, actors, detector)
    try:
        started = connect(address)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise click.ClickException(f"cannot reach the Ray cluster at {address!r}: {str(exc).splitlines()[0]}") from None
    try:
        report = run_job(spec, inputs, out, overwrite=overwrite)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    except ray.exceptions.RayError as exc:  # e.g. an actor could not open the backend
        raise click.ClickException(f"the Ray job failed: {_last_line(exc)}") from None
    finally:
        if started:
            ray.shutdown()
    _print_failures(report)
    click.echo(report.summary())
    if report.count("failed"):
        sys.exit(1)


def _last_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def _upsamplers(backend, weights, bg_upsampler: str, bg_tile: int, face_upsample: bool):
    """Real-ESRGAN for the background (and faces), as asked, on the restoring backend; says where it runs."""
    from interlcm.upsampler import TileOptions, open_upsamplers

    upsamplers, why = open_upsamplers(backend, weights, bg_upsampler == UPSAMPLER, face_upsample, TileOptions(bg_tile))
    if why:
        click.echo(why)
    return upsamplers


def _restore_videos(photo_restorer, plan, skip_existing: bool, workers: int) -> bool:
    """Each planned video through the photo pipeline (frames decoded ahead, encoded behind); True if any failed.

    A failure belongs to its video (one `failed:` line) and the next video goes on, whatever
    failed: reading, writing, the engine or memory. A full disk stops the run: every later
    write would fail too.
    """
    from interlcm.engines.outputs import source_id
    from interlcm.engines.pipeline import PhotoPipeline
    from interlcm.files import DiskFull
    from interlcm.video import VideoOptions, restore_video

    failed = False
    batch = photo_restorer.restorer.options.batch
    for one in plan.videos:
        if skip_existing and one.source in plan.earlier:  # written atomically: there means complete
            click.echo(f"skipped {one.source}: {one.video} is already its restoration (--skip-existing)")
            continue
        try:
            with PhotoPipeline(photo_restorer, workers) as pipeline:  # frames decoded ahead, encoded behind
                report = restore_video(pipeline, one.source, one.video, VideoOptions(frames_per_batch=max(batch, 8)),
                                       frames_dir=one.frames, source=source_id(one.source))
        except DiskFull:
            raise
        except (ValueError, RuntimeError, OSError, MemoryError) as exc:  # VideoError, FilesError, EngineError ...
            click.echo(f"failed: {_video_failure(one.source, exc)}", err=True)
            failed = True
            continue
        per_frame = ", ".join(f"{k} {v / report.frames:.3f}" for k, v in report.seconds.items())
        turned = f", turned upright ({report.rotation} degrees)" if report.rotation else ""
        click.echo(f"{one.source} -> {report.output}: {report.frames} frames at {report.fps} fps, "
                   f"{report.size[0]}x{report.size[1]}{turned}, {len(report.copied)} other stream(s) copied "
                   f"({report.packets_copied} packets); s per frame: {per_frame}")
        for note in report.notes:
            click.echo(f"  note: {note}")
    return failed


def _video_failure(src: Path, exc: BaseException) -> str:
    """One line naming the video: the error's first line, with the video's name in front unless it has it."""
    if isinstance(exc, MemoryError):
        return f"{src}: out of memory; lower --batch or --upscale, or free memory"
    lines = [line for line in str(exc).splitlines() if line.strip()]
    reason = lines[0] if lines else type(exc).__name__
    return reason if str(src) in reason else f"{src}: {reason}"


_NAMED = 5  # photos named per note in the summary


def _print_summary(photo_restorer, report) -> None:
    from collections import defaultdict

    written = report.where("written")
    total = len(report.results)
    folder = Path(written[0].output).parent if written else "-"
    click.echo(f"restored {len(written)}/{total} image(s) in {report.seconds:.2f} s -> {folder}")
    if report.count("skipped"):
        click.echo(f"skipped {report.count('skipped')} image(s) whose output is already complete (--skip-existing)")
    by_note: dict[str, list[str]] = defaultdict(list)
    for result in written:
        for note in result.notes:
            by_note[note].append(Path(result.input).name)
    for note, names in by_note.items():  # which photos: a count alone does not say which to look at
        more = f" and {len(names) - _NAMED} more" if len(names) > _NAMED else ""
        click.echo(f"  {note} ({len(names)} image(s): {', '.join(names[:_NAMED])}{more})")
    if photo_restorer.seconds:
        click.echo("whole-photo stages (s): " + ", ".join(f"{k} {v:.3f}" for k, v in photo_restorer.seconds.items()))
    timed = photo_restorer.restorer.timings
    if timed is not None and timed.seconds:
        click.echo("time per stage (s, total over all images):")
        for name, secs in sorted(timed.seconds.items(), key=lambda kv: -kv[1]):
            click.echo(f"  {name:<18} {secs:8.3f}  ({timed.counts[name]} calls)")
    _print_failures(report)


def _print_failures(report) -> None:
    for result in report.where("failed"):  # the reason names the file unless it came from elsewhere
        reason = result.reason if result.input in result.reason else f"{result.input}: {result.reason}"
        click.echo(f"failed: {reason}", err=True)


@main.command()
@click.option("--onnx", type=_PATH, required=True, help="ONNX folder with fp16 files (interlcm-export --fp16).")
@click.option("--out", type=_PATH, required=True, help="Engine folder.")
@click.option("--components", multiple=True, help="Only these components (repeatable).")
@click.option("--opt-level", type=click.IntRange(0, 5), default=3, show_default=True, help="Builder optimisation level.")
@click.option("--timing-cache", type=_PATH, help="Timing cache file (default: OUT/timing.cache).")
@click.option("--rebuild", type=click.Choice(["auto", "never", "always"]), default="auto", show_default=True,
              help="auto: rebuild stale engines; never: refuse them; always: rebuild everything.")
def build(onnx, out, components, opt_level, timing_cache, rebuild) -> None:
    """Build fp16 TensorRT engines from an export folder (needs an NVIDIA GPU)."""
    from interlcm.engines.trt_build import INDEX_FILE, build_engines
    from interlcm.engines.trt_common import EngineError, check_cuda
    from interlcm.files import FilesError, check_replaceable

    try:
        check_replaceable(out, INDEX_FILE, "an engine folder", action="build into")  # never into others' files
    except FilesError as exc:
        raise click.ClickException(str(exc)) from None
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
@click.option("--engines", type=_PATH, help="TensorRT engine folder to check (fp16).")
@click.option("--onnx", type=_PATH, help="ONNX folder to check (ONNX Runtime).")
@click.option("--weights", type=_PATH,
              help="Weights the export was made from (default: the random weights the export or engines record).")
@click.option("--precision", type=click.Choice(EXPORT_PRECISIONS), default=EXPORT_PRECISIONS[0], show_default=True,
              help="ONNX files to check (engines are always fp16).")
@click.option("--variant", type=click.Choice(list(VARIANTS)), help="Encoder pair (default: the one --steps implies).")
@click.option("--steps", type=click.Choice([str(n) for n in STEPS]), default=str(STEPS[0]), show_default=True)
@click.option("--batch", type=click.IntRange(1, 63), default=1, show_default=True)
@click.option("--seed", type=SEED, default=0, show_default=True)
def check(engines, onnx, weights, precision, variant, steps, batch, seed) -> None:
    """Compare a backend with the torch reference stage by stage, on the demo face; exit 1 on any failure.

    Each stage is judged by the tolerance of the component that produced it (components.py).
    """
    from interlcm.engines.backend import BackendOptions, open_backend, reference_models
    from interlcm.engines.restorer import RestoreOptions, Restorer
    from interlcm.imageio import demo_image_path, read_image
    from interlcm.parity import ParityError, compare_traces, format_table, require
    from interlcm.sampler import Trace
    from interlcm.torch_backend import TorchBackend

    if (engines is None) == (onnx is None):
        raise click.UsageError("give exactly one of --engines or --onnx")
    precision = "fp16" if engines else precision
    chosen = _variant(variant, steps)
    options = RestoreOptions(steps=chosen.steps, seed=seed, colorfix=chosen.colorfix)
    try:
        with open_backend(BackendOptions("tensorrt" if engines else "onnxruntime", onnx=onnx, engines=engines,
                                          precision=precision, variant=chosen.name, batch=batch)) as opened:
            models = reference_models(opened, weights)
            click.echo(f"checking {opened.description}\nagainst torch fp32, weights: {models.origin}")
            lq = read_image(demo_image_path(), opened.config.resolution)[None].repeat(batch, 1, 1, 1)
            ours, ref = Trace(), Trace()
            Restorer(opened.backend, options).restore(lq, ours)
            Restorer(TorchBackend(models), options).restore(lq, ref)
    except (ValueError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from None
    rows = compare_traces(ours, ref, precision)
    click.echo(format_table(rows))
    try:
        require(rows, f"{'engines ' + str(engines) if engines else f'{precision} ONNX {onnx}'} vs torch")
    except ParityError as exc:
        raise click.ClickException(f"{exc}\nwrong --weights, or a broken export/build: re-export or rebuild") from None
    click.echo(f"all {len(rows)} stages within tolerance")


_SERVE = ServeLimits()  # the server's defaults


@click.command(cls=Command, context_settings={"help_option_names": ["-h", "--help"]})
@backend_options
@click.option("--batch", type=click.IntRange(1, 63), default=4, show_default=True,
              help="Most faces per engine batch; concurrent requests are gathered up to this.")
@click.option("--batch-wait-ms", type=click.IntRange(0), default=20, show_default=True,
              help="How long a replica waits for a batch to fill.")
@click.option("--replicas", type=click.IntRange(1), default=1, show_default=True, help="One per GPU on GPU machines.")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True, help="Port on 127.0.0.1.")
@click.option("--ray", "ray_address", default="local", show_default=True, metavar="local|ADDRESS",
              help="Start a local Ray cluster (on loopback only) or join one.")
# --- what one request may be, and how many wait ---
@click.option("--max-mb", type=click.FloatRange(0.01), default=_SERVE.max_bytes / 2**20, show_default=True,
              help="Request body limit (413).")
@click.option("--body-timeout", type=click.FloatRange(0.1), default=_SERVE.body_timeout_s, show_default=True,
              help="Seconds the whole body may take to arrive (slower: 408).")
@pixel_options(_SERVE.pixels)
@click.option("--max-ongoing", type=click.IntRange(1),
              help="Photos a replica restores or gathers at once (default: 2 x --batch).")
@click.option("--max-queued", type=click.IntRange(0), default=_SERVE.max_queued, show_default=True,
              help="Photos waiting for a replica beyond those; more get 503 with Retry-After.")
@click.option("--retry-after", type=click.IntRange(0), default=_SERVE.retry_after_s, show_default=True,
              help="Retry-After (s) of a 503.")
def serve_main(backend, batch, batch_wait_ms, replicas, port, ray_address, max_mb, body_timeout,
               max_input_mp, max_output_mp, max_ongoing, max_queued, retry_after) -> None:
    """Serve POST /restore and GET /healthz on 127.0.0.1:PORT with Ray Serve (Ctrl-C stops)."""
    import time

    from interlcm.engines.ray_job import connect

    try:
        connect(ray_address)  # before Ray is imported here: a local cluster listens on loopback only
        import ray

        from interlcm.engines.serve import build_app, start

        limits = ServeLimits(max_bytes=int(max_mb * 2**20), body_timeout_s=body_timeout,
                             pixels=_pixel_limits(max_input_mp, max_output_mp), max_ongoing=max_ongoing,
                             max_queued=max_queued, retry_after_s=retry_after)
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= replicas else 0.0
        app = build_app(backend, replicas=replicas, max_batch=batch, batch_wait_s=batch_wait_ms / 1000,
                        limits=limits, gpus=gpus)
        start(app, port=port)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise click.ClickException(f"cannot start the server: {_last_line(exc)}") from None
    click.echo(f"serving on http://127.0.0.1:{port}/restore (GET /healthz); Ctrl-C stops")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        from ray import serve

        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
