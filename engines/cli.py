"""`interlcm-trt`: restore faces with TensorRT, ONNX Runtime or torch; build engines."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from interlcm.choices import BACKENDS, COLORFIXES, PRECISIONS, STEPS, VARIANTS
from interlcm.cli.options import SEED, Command, Group
from interlcm.config import PRESETS
from interlcm.faces.detectors import DEFAULT_DETECTOR, DETECTORS  # light: the choice list

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
    click.option("--precision", type=click.Choice(PRECISIONS), default=PRECISIONS[0], show_default=True,
                 help="ONNX files to run."),
    click.option("--variant", type=click.Choice(list(VARIANTS)), help="Encoder pair (default: the one --steps implies)."),
    click.option("--steps", type=click.Choice([str(n) for n in STEPS]), default=str(STEPS[0]), show_default=True,
                 help="3-step (paper) or 1-step model."),
    click.option("--threads", type=int, help="CPU threads (default: all cores)."),
)


def backend_options(command):  # noqa: ANN001, ANN201 - click decorator
    for option in reversed(_BACKEND_OPTIONS):
        command = option(command)
    return command


def _backend_args(backend, weights, onnx, engines, preset, precision, variant, steps, threads, batch) -> dict:  # noqa: ANN001
    """The backend options as engines.backend.open_backend's keyword arguments."""
    return dict(kind=backend, weights=weights, onnx=onnx, engines=engines, preset=preset,
                variant=_variant(variant, steps).name, precision=precision, threads=threads, batch=batch)


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
@click.option("--save-faces", is_flag=True, help="Also write the restored faces, in NAME_faces/ beside each output.")
@click.option("--skip-existing", is_flag=True, help="Skip inputs whose earlier output (of that very input) is complete.")
@click.option("--overwrite", is_flag=True,
              help="Replace files in OUT that are not earlier outputs of the same inputs (refused without it).")
@click.option("--out", default="outputs/restored", show_default=True, help="Output folder (with --ray also a URI: s3://...).")
# --- scale out ---
@click.option("--ray", "ray_address", metavar="local|ADDRESS",
              help="Run as a Ray Data job: `--ray local` starts a local cluster, `--ray ADDRESS` joins one (e.g. auto). "
              "Resumable: outputs that exist are skipped; OUT/results.jsonl lists every input.")
@click.option("--actors", type=click.IntRange(1), help="With --ray: restoring actors (default: one per GPU, else 1).")
# --- video and upsamplers ---
@click.option("--bg-upsampler", type=click.Choice(["none", "realesrgan"]), default="none", show_default=True,
              help="Upscale the background with Real-ESRGAN x2plus (whole photos and video frames).")
@click.option("--bg-tile", type=click.IntRange(0), default=400, show_default=True,
              help="Real-ESRGAN tile size in pixels (0: whole image at once); tiles overlap by 40 px.")
@click.option("--face-upsample", is_flag=True, help="Also upscale restored faces with Real-ESRGAN before paste-back.")
@click.option("--save-frames", is_flag=True, help="Videos: also write every restored frame, in OUT/NAME_frames/.")
def restore(inputs, engines, onnx, weights, preset, backend, precision, variant, steps, seed, colorfix, batch,  # noqa: ANN001
            threads, timing, aligned, detector, only_center_face, upscale, save_faces, skip_existing, overwrite, out,
            ray_address, actors, bg_upsampler, bg_tile, face_upsample, save_frames) -> None:
    """Restore every face of whole photos (default) or aligned face crops: files, folders or globs.

    Videos (.mp4 .mov .avi .mkv .webm) are restored frame by frame, audio kept. With no input,
    restores the bundled demo photo (or, with --aligned, the demo face crop). Outputs never replace
    an input, nor a file in OUT other than an earlier output of the same input (see --overwrite).
    """
    from interlcm.engines.backend import open_backend
    from interlcm.engines.outputs import plan_outputs
    from interlcm.engines.photo import PhotoOptions, open_photo_restorer
    from interlcm.engines.pipeline import restore_files
    from interlcm.engines.restorer import RestoreOptions
    from interlcm.files import clean_stale_temporaries, make_folder
    from interlcm.imageio import demo_image_path, demo_photo_path, list_images
    from interlcm.video import is_video

    if not out.strip():  # `--out "$DIR"` with DIR unset: never the current folder by accident
        raise click.UsageError("--out is empty (an unset shell variable?): give the output folder")
    chosen = _variant(variant, steps)
    if not inputs:
        inputs = (str(demo_image_path() if aligned else demo_photo_path()),)
        click.echo(f"no input given: restoring the embedded demo {'face' if aligned else 'photo'} {inputs[0]}")
    videos = [Path(i) for i in inputs if is_video(i)]
    inputs = tuple(i for i in inputs if not is_video(i))
    options = RestoreOptions(steps=chosen.steps, seed=seed, colorfix=colorfix or chosen.colorfix, batch=batch)
    photo_options = PhotoOptions(aligned=aligned, upscale=upscale, only_center_face=only_center_face,
                                 save_faces=save_faces, keep_gray=chosen.name != "colorization")
    backend_args = _backend_args(backend, weights, onnx, engines, preset, precision, variant, steps, threads, batch)
    if ray_address is not None:
        if videos:
            raise click.UsageError(f"--ray restores photos, not videos ({videos[0]}): restore videos without --ray")
        _restore_on_ray(inputs, out, ray_address, actors, backend_args, options, photo_options, detector, overwrite)
        return
    out = Path(out)
    report, video_failed = None, False
    try:
        paths = list_images(inputs) if inputs else []
        # every output of the run, checked against each other, the inputs and OUT, before any work
        plan = plan_outputs(paths, out, videos=videos, save_faces=save_faces, save_frames=save_frames,
                            overwrite=overwrite)
        with open_backend(**backend_args) as opened:
            upsamplers = _upsamplers(opened.config, weights, bg_upsampler, bg_tile, face_upsample)
            photo_restorer = open_photo_restorer(opened.backend, options, photo_options, detector, weights, timing,
                                                 upsamplers)
            make_folder(out)  # --out a file, read-only or uncreatable: one sentence before any work
            for folder in plan.folders():  # temporaries of killed runs (never a live run's)
                clean_stale_temporaries(folder)
            click.echo(f"backend: {opened.description}")
            if not aligned:
                click.echo(f"detector: {detector}")
            if opened.random_weights:
                click.echo("note: random weights: the output shows the pipeline runs, not a restoration "
                           "(get real weights with `interlcm-weights download`)")
            if plan.videos:
                video_failed = _restore_videos(photo_restorer, plan, skip_existing)
            if plan.photos:
                report = restore_files(photo_restorer, plan, skip_existing=skip_existing)
    except (ValueError, RuntimeError, FileNotFoundError) as exc:  # incl. FilesError: disk full while writing
        raise click.ClickException(str(exc)) from None
    if report is not None:
        _print_summary(photo_restorer, report)
    if (report is not None and report.count("failed")) or video_failed:
        sys.exit(1)


def _variant(variant: str | None, steps: str):  # noqa: ANN202 - interlcm.choices.Variant
    """--variant wins; else the variant --steps implies."""
    from interlcm.choices import get_variant, variant_for_steps

    return get_variant(variant) if variant else variant_for_steps(int(steps))


def _restore_on_ray(inputs, out: str, address: str, actors, backend_args: dict, options, photo_options,  # noqa: ANN001
                    detector: str, overwrite: bool) -> None:
    """The restore command as a Ray Data job (engines/ray_job.py); same options, same outputs."""
    import ray

    from interlcm.engines.ray_job import JobSpec, connect, run_job

    spec = JobSpec(backend_args, options, photo_options, actors, detector)
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


def _upsamplers(cfg, weights, bg_upsampler: str, bg_tile: int, face_upsample: bool):  # noqa: ANN001, ANN202
    """Real-ESRGAN for the background (and faces), as asked; says where its weights come from."""
    from interlcm.upsampler import TileOptions, open_upsamplers

    upsamplers, why = open_upsamplers(cfg, weights, bg_upsampler == "realesrgan", face_upsample, TileOptions(bg_tile))
    if why:
        click.echo(why)
    return upsamplers


def _restore_videos(photo_restorer, plan, skip_existing: bool) -> bool:  # noqa: ANN001
    """Each planned video through the photo pipeline; True if any failed (each failure: one line)."""
    from interlcm.engines.outputs import source_id
    from interlcm.files import DiskFull, FilesError
    from interlcm.video import VideoError, VideoOptions, restore_video

    failed = False
    batch = photo_restorer.restorer.options.batch
    for one in plan.videos:
        if skip_existing and one.source in plan.earlier:  # written atomically: there means complete
            click.echo(f"skipped {one.source}: {one.video} is already its restoration (--skip-existing)")
            continue
        try:
            report = restore_video(photo_restorer, one.source, one.video, VideoOptions(frames_per_batch=max(batch, 8)),
                                   frames_dir=one.frames, source=source_id(one.source))
        except DiskFull:
            raise
        except (VideoError, FilesError) as exc:
            click.echo(f"failed: {exc}", err=True)
            failed = True
            continue
        except OSError as exc:  # the input vanished or cannot be read
            click.echo(f"failed: {one.source}: {exc.strerror or exc}", err=True)
            failed = True
            continue
        per_frame = ", ".join(f"{k} {v / report.frames:.3f}" for k, v in report.seconds.items())
        click.echo(f"{one.source} -> {report.output}: {report.frames} frames at {report.fps} fps, "
                   f"{report.size[0]}x{report.size[1]}, {report.audio_packets} audio packets copied; "
                   f"s per frame: {per_frame}")
    return failed


_NAMED = 5  # photos named per note in the summary


def _print_summary(photo_restorer, report) -> None:  # noqa: ANN001
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


def _print_failures(report) -> None:  # noqa: ANN001
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
def build(onnx, out, components, opt_level, timing_cache, rebuild) -> None:  # noqa: ANN001
    """Build fp16 TensorRT engines from an export folder (needs an NVIDIA GPU)."""
    from interlcm.engines.trt import INDEX_FILE, EngineError, build_engines, check_cuda
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
@click.option("--precision", type=click.Choice(PRECISIONS), default=PRECISIONS[0], show_default=True,
              help="ONNX files to check (engines are always fp16).")
@click.option("--variant", type=click.Choice(list(VARIANTS)), help="Encoder pair (default: the one --steps implies).")
@click.option("--steps", type=click.Choice([str(n) for n in STEPS]), default=str(STEPS[0]), show_default=True)
@click.option("--batch", type=click.IntRange(1, 63), default=1, show_default=True)
@click.option("--seed", type=SEED, default=0, show_default=True)
def check(engines, onnx, weights, precision, variant, steps, batch, seed) -> None:  # noqa: ANN001
    """Compare a backend with the torch reference stage by stage, on the demo face; exit 1 on any failure.

    Each stage is judged by the tolerance of the component that produced it (components.py).
    """
    from interlcm.engines.backend import open_backend, reference_models
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
    rows = compare_traces(ours, ref, precision)
    click.echo(format_table(rows))
    try:
        require(rows, f"{'engines ' + str(engines) if engines else f'{precision} ONNX {onnx}'} vs torch")
    except ParityError as exc:
        raise click.ClickException(f"{exc}\nwrong --weights, or a broken export/build: re-export or rebuild") from None
    click.echo(f"all {len(rows)} stages within tolerance")


@click.command(cls=Command, context_settings={"help_option_names": ["-h", "--help"]})
@backend_options
@click.option("--batch", type=click.IntRange(1, 63), default=4, show_default=True,
              help="Most faces per engine batch; concurrent requests are gathered up to this.")
@click.option("--batch-wait-ms", type=click.IntRange(0), default=20, show_default=True,
              help="How long a replica waits for a batch to fill.")
@click.option("--replicas", type=click.IntRange(1), default=1, show_default=True, help="One per GPU on GPU machines.")
@click.option("--max-mb", type=click.FloatRange(0.01), default=20.0, show_default=True, help="Request size limit.")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True, help="Port on 127.0.0.1.")
@click.option("--ray", "ray_address", default="local", show_default=True, metavar="local|ADDRESS",
              help="Start a local Ray cluster or join one.")
def serve_main(engines, onnx, weights, preset, backend, precision, variant, steps, threads,  # noqa: ANN001
               batch, batch_wait_ms, replicas, max_mb, port, ray_address) -> None:
    """Serve POST /restore and GET /healthz on 127.0.0.1:PORT with Ray Serve (Ctrl-C stops)."""
    import time

    import ray

    from interlcm.engines.ray_job import connect
    from interlcm.engines.serve import build_app, start

    backend_args = _backend_args(backend, weights, onnx, engines, preset, precision, variant, steps, threads, batch)
    try:
        connect(ray_address)
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= replicas else 0.0
        app = build_app(backend_args, replicas=replicas, max_batch=batch, batch_wait_s=batch_wait_ms / 1000,
                        max_bytes=int(max_mb * 2**20), gpus=gpus)
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
