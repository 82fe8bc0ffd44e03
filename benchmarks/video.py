"""Video path: seconds per frame per stage, and flicker with shared vs fresh noise per frame.

    python -m interlcm.benchmarks.video --preset tiny --frames 8
    python -m interlcm.benchmarks.video --preset sd15 --frames 3 --no-flicker

Stages (per frame, averaged over the clip): decode, photos (everything `restore_photos` does:
detect + align + restore + paste in whole-photo mode; aligned mode has restore only), encode,
plus the photo restorer's own stage times when it keeps them (whole-photo mode) and the model's
per-component times. Frames are face crops of scikit-image's astronaut photo in aligned mode
until whole-photo mode is on this branch (pass --whole-photo then).

Flicker: the same face slowly translated (a crop window sliding `--shift` px per frame across
the photo, at the model's resolution so a shift is exactly `--shift` px in the output). For
each pair of neighbouring restored frames: the mean absolute difference of the centre half of
the face (uint8 levels), raw and motion-compensated (frame t+1 shifted back by the known
motion). Once with the contract's noise (the same for every frame), once with fresh noise per
frame (seed = frame index). A still face (`--shift 0`) with shared noise gives exactly 0.
Random weights restore nothing useful; the figures measure how much the noise alone moves.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from pathlib import Path

import click
import cv2
import numpy as np
import torch

from interlcm.config import get_preset
from interlcm.engines.photo import PhotoOptions, PhotoRestorer
from interlcm.engines.restorer import RestoreOptions, Restorer
from interlcm.models.container import build_random
from interlcm.testing import write_clip
from interlcm.torch_backend import TorchBackend
from interlcm.video import VideoOptions, restore_video


def _face_frames(resolution: int, count: int, shift: int) -> list[np.ndarray]:
    """(R, R, 3) uint8 crops of the astronaut's face, the window moving `shift` px right per frame."""
    from skimage import data

    img = data.astronaut()  # 512 x 512; the face is near (x 170..300, y 20..200)
    side = 240  # crop side in the photo, resized to R: moving the window by `shift` * side / R photo px
    big = cv2.resize(img, None, fx=resolution / side, fy=resolution / side, interpolation=cv2.INTER_AREA)
    x0, y0 = int(150 * resolution / side), int(0 * resolution / side)
    return [np.ascontiguousarray(big[y0 : y0 + resolution, x0 + i * shift : x0 + i * shift + resolution]) for i in range(count)]


def _flicker(frames: list[np.ndarray], shift: int) -> dict[str, float]:
    r = frames[0].shape[0]
    lo, hi = r // 4, 3 * r // 4  # the centre half: the face, away from crop borders
    raw, comp = [], []
    for a, b in zip(frames, frames[1:]):
        a, b = a.astype(np.float64), b.astype(np.float64)
        raw.append(np.abs(b[lo:hi, lo:hi] - a[lo:hi, lo:hi]).mean())
        # content moved left by `shift` px in b: b[:, x] shows what a showed at x + shift
        comp.append(np.abs(b[lo:hi, lo:hi] - a[lo:hi, lo + shift : hi + shift]).mean())
    return {"raw": float(np.mean(raw)), "motion_compensated": float(np.mean(comp))}


def _photo_restorer(models, seed: int, steps: int, batch: int, aligned: bool):
    restorer = Restorer(TorchBackend(models), RestoreOptions(steps=steps, seed=seed, batch=batch), timing=True)
    return PhotoRestorer(restorer, PhotoOptions(aligned=aligned))


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--preset", type=click.Choice(["tiny", "sd15"]), default="tiny", show_default=True)
@click.option("--frames", type=click.IntRange(2), default=8, show_default=True)
@click.option("--steps", type=click.Choice(["3", "1"]), default="3", show_default=True)
@click.option("--batch", type=click.IntRange(1, 63), default=1, show_default=True, help="Faces per model batch.")
@click.option("--shift", type=click.IntRange(0), default=1, show_default=True, help="Flicker clip: px per frame.")
@click.option("--flicker/--no-flicker", default=True, show_default=True)
@click.option("--whole-photo", is_flag=True, help="Whole-photo mode (needs issue 11's detector on this build).")
@click.option("--out", type=click.Path(path_type=Path), default=Path("benchmarks/results"), show_default=True)
def main(preset, frames, steps, batch, shift, flicker, whole_photo, out) -> None:
    """Per-stage seconds per frame on a synthetic clip, and flicker with shared vs fresh noise."""



    cfg = get_preset(preset)
    start = time.perf_counter()
    models = build_random(cfg, seed=0)
    click.echo(f"{preset}: random models built in {time.perf_counter() - start:.1f} s; torch threads {torch.get_num_threads()}")
    clip_frames = _face_frames(cfg.resolution, frames, shift)
    result: dict = {
        "preset": preset, "frames": frames, "steps": int(steps), "batch": batch, "mode": "whole" if whole_photo else "aligned",
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "load_average_at_start": list(os.getloadavg()),  # the 2 cores are shared: read times against it
    }
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "clip.mp4"
        write_clip(src, clip_frames, fps=8)
        photo = _photo_restorer(models, 0, int(steps), batch, aligned=not whole_photo)
        report = restore_video(photo, src, Path(tmp) / "out" / src.name, VideoOptions(frames_per_batch=max(batch, 1)))
    per_frame = {k: v / report.frames for k, v in report.seconds.items()}
    per_component = {k: v / report.frames for k, v in photo.restorer.backend.seconds.items()}
    result["seconds_per_frame"] = per_frame
    result["model_seconds_per_frame"] = per_component
    click.echo("seconds per frame: " + ", ".join(f"{k} {v:.3f}" for k, v in per_frame.items()))
    click.echo("  model components: " + ", ".join(f"{k} {v:.3f}" for k, v in per_component.items()))
    if flicker:
        shared = [r.image for r in photo.restore_photos(clip_frames)]
        fresh = [_photo_restorer(models, i, int(steps), 1, True).restore_photos([f])[0].image
                 for i, f in enumerate(clip_frames)]
        result["flicker"] = {"shift_px": shift, "input": _flicker(clip_frames, shift),
                             "shared_noise": _flicker(shared, shift), "fresh_noise": _flicker(fresh, shift)}
        for k, v in result["flicker"].items():
            click.echo(f"flicker {k}: {v}")
    out.mkdir(parents=True, exist_ok=True)
    result["load_average_at_end"] = list(os.getloadavg())
    path = out / f"video-{preset}-{result['mode']}{'-still' if shift == 0 else ''}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    click.echo(f"wrote {path}")


if __name__ == "__main__":
    main()
