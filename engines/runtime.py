"""Restore batches of faces on any backend, and stream folders of photos through it."""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from interlcm.choices import COLORFIXES, GUIDANCE_SCALE
from interlcm.config import PresetConfig
from interlcm.engines.backend import Backend, TimedBackend
from interlcm.imageio import ImageReadError, encoded_image_complete, read_rgb, write_image
from interlcm.limits import PixelLimitError
from interlcm.sampler import SamplerSettings, Trace, restore
from interlcm.schedule import inference_steps_for, make_schedule, noise_for


@dataclass(frozen=True)
class RestoreOptions:
    steps: int = 3  # network steps: 3 (paper) or 1; the LCM schedule has steps + 1 timesteps
    seed: int = 0
    colorfix: str = COLORFIXES[0]
    batch: int = 1
    guidance_scale: float = GUIDANCE_SCALE
    fused_step: bool = False  # SE + UNet as one `denoise_step` call per step (the backend must have it)


class Restorer:
    """The sampler bound to one backend, preset and set of options."""

    def __init__(self, backend: Backend, options: RestoreOptions, timing: bool = False):
        self.backend: Backend = TimedBackend(backend) if timing else backend
        self.config: PresetConfig = backend.config
        self.options = options
        self.settings = SamplerSettings(
            make_schedule(self.config.scheduler, inference_steps_for(options.steps)),
            guidance_scale=options.guidance_scale,
            guidance_dim=self.config.guidance_dim,
            colorfix=options.colorfix,
            fused_step=options.fused_step,
        )

    def noise(self, batch: int) -> torch.Tensor:
        return noise_for(self.config, self.settings.schedule, self.options.seed, batch)

    @property
    def timings(self) -> TimedBackend | None:
        return self.backend if isinstance(self.backend, TimedBackend) else None

    def restore(self, lq: torch.Tensor, trace: Trace | None = None) -> torch.Tensor:
        """(B, 3, R, R) in [-1, 1] -> restored (B, 3, R, R), on the CPU."""
        lq = lq.to(self.backend.device)
        out = restore(self.backend, lq, self.noise(lq.shape[0]), self.settings, trace)
        return out.float().cpu()


@dataclass
class RestoreReport:
    written: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)  # --skip-existing: complete outputs already there
    notes: list[tuple[Path, str]] = field(default_factory=list)
    seconds: float = 0.0


# --- output names ---------------------------------------------------------------------------------

_JPEG_SUFFIXES = frozenset({".jpg", ".jpeg"})


class OutputClash(ValueError):
    """Two inputs would write the same output, or an output would replace an input."""


@dataclass(frozen=True)
class OutputPlan:
    source: Path
    photo: Path  # the restored photo (JPEG for JPEG inputs, else PNG)
    faces: Path | None = None  # folder of restored faces (--save-faces), written before the photo


def plan_outputs(paths: list[Path], out_dir: Path, *, save_faces: bool = False) -> list[OutputPlan]:
    """Where each input's results go: the one place that decides output names.

    The inputs' folders are mirrored under `out_dir` below their common folder, so
    `A/face.png` and `B/face.png` become `out/A/face.png` and `out/B/face.png`. A JPEG input gives
    a `.jpg` output, anything else `.png`; inputs in one folder whose outputs would share a name
    (`a.png` + `a.webp`, `x.png` + `x.PNG`) keep their extension in the name (`a_png.png`,
    `a_webp.png`). A clash that remains, or an output that would replace an input, raises
    OutputClash before any work starts.
    """
    out_dir = Path(out_dir)
    absolute = [Path(os.path.abspath(p)) for p in paths]
    root = Path(os.path.commonpath([p.parent for p in absolute])) if absolute else Path()
    names: list[tuple[Path, str, str]] = []  # (folder under out, default name, name keeping the extension)
    for src in absolute:
        suffix = ".jpg" if src.suffix.lower() in _JPEG_SUFFIXES else ".png"
        ext = src.suffix[1:]
        names.append((src.parent.relative_to(root), src.stem + suffix, f"{src.stem}_{ext}{suffix}"))
    default_count = Counter((folder, name) for folder, name, _ in names)

    plans, claimed = [], _Claims(out_dir)
    for src, (folder, name, with_ext) in zip(absolute, names):
        final = name if default_count[(folder, name)] == 1 else with_ext
        photo = out_dir / folder / final
        faces = out_dir / folder / f"{Path(final).stem}_faces" if save_faces else None
        for target in (photo, faces):
            if target is not None:
                claimed.claim(target, src)
        plans.append(OutputPlan(src, photo, faces))
    inputs = {os.path.realpath(p) for p in absolute}
    for plan in plans:
        if os.path.realpath(plan.photo) in inputs:
            raise OutputClash(f"output {plan.photo} would overwrite an input: choose another --out")
    return plans


class _Claims:
    """Every output path, owned by one input; the folders mirrored above them may be shared."""

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir
        self.owner: dict[Path, tuple[bool, Path]] = {}  # path -> (is a mirrored folder, first input using it)

    def claim(self, target: Path, src: Path) -> None:
        parts = target.relative_to(self.out_dir).parts
        for depth in range(1, len(parts)):
            self._take(self.out_dir.joinpath(*parts[:depth]), True, src)
        self._take(target, False, src)

    def _take(self, path: Path, folder: bool, src: Path) -> None:
        was_folder, first = self.owner.setdefault(path, (folder, src))
        if was_folder != folder or (not folder and first != src):
            raise OutputClash(
                f"{first} and {src} would both write {path}: rename one of them or restore them separately"
            )


def output_complete(plan: OutputPlan) -> bool:
    """The photo is there and whole (written last, atomically: then the faces are there too).

    Judged by the file's start and end markers, not by decoding it: a 192 MP output is as quick to
    check as a small one, and Pillow's decompression-bomb guard never fires on our own outputs.
    """
    return encoded_image_complete(plan.photo)


# --- restoring files ------------------------------------------------------------------------------


def restore_files(
    photo_restorer,  # engines.photo.PhotoRestorer  # noqa: ANN001 - imported lazily (it imports this module)
    paths: list[Path],
    out_dir: Path,
    *,
    progress: bool = True,
    skip_existing: bool = False,
) -> RestoreReport:
    """Restore image files, a group of photos per call; a bad image is reported and skipped, the rest go on.

    Output names are settled first (`plan_outputs`), so a clash fails before any work.
    """
    plans = plan_outputs(paths, out_dir, save_faces=photo_restorer.options.save_faces)
    report = RestoreReport()
    start = time.perf_counter()
    group = max(4, photo_restorer.restorer.options.batch)  # photos per call: their faces share batches
    todo = []
    for plan in plans:
        if skip_existing and output_complete(plan):
            report.skipped.append(plan.source)
        else:
            todo.append(plan)

    def write(plan: OutputPlan, result) -> None:  # noqa: ANN001 - PhotoResult
        for i, face in enumerate(result.faces):
            write_image(plan.faces / f"{i:02d}.png", face)
        write_image(plan.photo, result.image)  # last: its presence means the output is complete
        report.written.append(plan.photo)
        report.notes += [(plan.source, note) for note in result.notes]

    def run(batch: list[tuple[OutputPlan, np.ndarray]]) -> None:
        try:
            results = photo_restorer.restore_photos([photo for _, photo in batch])
        except (ValueError, RuntimeError) as exc:
            if len(batch) > 1:  # find the photo that failed; the others go on
                for one in batch:
                    run([one])
                return
            report.failed.append((batch[0][0].source, str(exc)))
            return
        for (plan, _), result in zip(batch, results):
            try:
                write(plan, result)
            except OSError as exc:
                report.failed.append((plan.source, f"cannot write {plan.photo}: {exc.strerror or exc}"))

    with tqdm(total=len(todo), unit="img", disable=not progress, desc="restoring") as bar:
        pending: list[tuple[OutputPlan, np.ndarray]] = []
        for plan in todo:
            try:
                read_notes: list[str] = []  # a multi-frame file: which frame was used
                options = photo_restorer.options  # over the pixel limits: refused from the header, one sentence
                photo = read_rgb(plan.source, notes=read_notes, limits=options.limits, upscale=options.output_scale)
                pending.append((plan, photo))
                report.notes += [(plan.source, note) for note in read_notes]
            except (ImageReadError, PixelLimitError) as exc:
                report.failed.append((plan.source, str(exc)))
                bar.update(1)
            if len(pending) == group:
                run(pending)
                bar.update(len(pending))
                pending = []
        if pending:
            run(pending)
            bar.update(len(pending))
    report.seconds = time.perf_counter() - start
    return report
