"""Folders of photos through a PhotoRestorer: read, restore in groups, write, one failure per bad input."""

from __future__ import annotations

import time

import numpy as np
from tqdm import tqdm

from interlcm.engines.outputs import (
    InputResult,
    OutputPlan,
    RestoreReport,
    RunPlan,
    output_complete,
    source_id,
)
from interlcm.engines.photo import PhotoRestorer, PhotoResult
from interlcm.files import DiskFull, FilesError
from interlcm.imageio import ImageReadError, read_rgb, write_image
from interlcm.limits import PixelLimitError

__all__ = ["RestoreReport", "restore_files"]


def restore_files(
    photo_restorer: PhotoRestorer,
    plan: RunPlan,
    *,
    progress: bool = True,
    skip_existing: bool = False,
) -> RestoreReport:
    """Restore the photos of `plan` (engines.outputs.plan_outputs), a group per call; an input that cannot
    be read, restored or written is reported and skipped, the rest go on. A full disk stops the run
    (files.DiskFull): every later write would fail too.
    """
    report = RestoreReport()
    start = time.perf_counter()
    group = max(4, photo_restorer.restorer.options.batch)  # photos per call: their faces share batches
    todo = []
    for one in plan.photos:
        if skip_existing and one.source in plan.earlier and output_complete(one):
            report.add(InputResult(str(one.source), str(one.photo), "skipped"))
        else:
            todo.append(one)

    def failed(one: OutputPlan, reason: str) -> None:
        report.add(InputResult(str(one.source), str(one.photo), "failed", reason))

    def write(one: OutputPlan, result: PhotoResult) -> None:
        source = source_id(one.source)  # recorded in every output: a rerun recognises its own files
        for i, face in enumerate(result.faces):
            write_image(one.faces / f"{i:02d}.png", face, source=source)
        write_image(one.photo, result.image, source=source)  # last: its presence means the output is complete
        report.add(InputResult(str(one.source), str(one.photo), "written", faces=result.found,
                               notes=tuple(result.notes)))

    def run(batch: list[tuple[OutputPlan, np.ndarray, list[str]]]) -> None:
        try:
            results = photo_restorer.restore_photos([photo for _, photo, _ in batch])
        except (ValueError, RuntimeError, MemoryError) as exc:
            if len(batch) > 1:  # find the photo that failed; the others go on
                for one in batch:
                    run([one])
                return
            reason = "out of memory: lower --batch or --upscale, or free memory" if isinstance(exc, MemoryError) else str(exc)
            failed(batch[0][0], reason)
            return
        for (one, _, read_notes), result in zip(batch, results):
            result.notes[:0] = read_notes
            try:
                write(one, result)
            except DiskFull:
                raise
            except FilesError as exc:  # one sentence already: the path, why, the fix
                failed(one, str(exc))
            except (OSError, ValueError) as exc:
                failed(one, f"cannot write {one.photo}: {getattr(exc, 'strerror', None) or exc}")

    with tqdm(total=len(todo), unit="img", disable=not progress, desc="restoring") as bar:
        pending: list[tuple[OutputPlan, np.ndarray, list[str]]] = []
        for one in todo:
            try:
                read_notes: list[str] = []  # a multi-frame file: which frame was used
                options = photo_restorer.options  # over the pixel limits: refused from the header, one sentence
                photo = read_rgb(one.source, notes=read_notes, limits=options.limits, upscale=options.output_scale)
                pending.append((one, photo, read_notes))
            except (ImageReadError, PixelLimitError) as exc:
                failed(one, str(exc))
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
