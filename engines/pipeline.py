"""Folders of photos through a PhotoRestorer: read, restore in groups, write, one failure per bad input."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from interlcm.engines.outputs import OutputPlan, output_complete, plan_outputs
from interlcm.engines.photo import PhotoRestorer, PhotoResult
from interlcm.imageio import ImageReadError, read_rgb, write_image
from interlcm.limits import PixelLimitError


@dataclass
class RestoreReport:
    written: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)  # --skip-existing: complete outputs already there
    notes: list[tuple[Path, str]] = field(default_factory=list)
    seconds: float = 0.0



def restore_files(
    photo_restorer: PhotoRestorer,
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

    def write(plan: OutputPlan, result: PhotoResult) -> None:
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
