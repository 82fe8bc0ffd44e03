"""The pipelined runtime: the device restores one group of photos while CPU workers read and write others.

A photo goes through three stages (`PhotoRestorer`'s), run by `concurrent.futures` executors:

1. CPU workers: read and decode it (folders), `PhotoRestorer.prepare` it;
2. one device thread, the only caller of the backend: `PhotoRestorer.run_device` on a group of
   photos (detect, align, restore, parse, upsample), their faces sharing model batches;
3. CPU workers: `PhotoRestorer.finish` (paste-back), then the front end's own step (folders:
   encode and write the outputs atomically).

Folders (`restore_files`), videos (`PhotoPipeline.submit_photos`, interlcm.video) and Serve
(`PhotoPipeline.restore_photos`) run on it. ``workers=0`` runs every stage in the calling thread,
one after the other: the sequential runtime, the benchmark's baseline (benchmarks/pipeline.py).

Same results as sequential, byte for byte: groups are made of the same photos (input order,
unreadable ones left out), so faces share the same batches, and outcomes are recorded in input
order. A group whose device stage fails is retried one photo at a time, so one bad photo fails
alone, with one line. Memory: reads run at most one group ahead, and at most `GROUPS_IN_FLIGHT`
groups are between the device and their last write.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

from tqdm import tqdm

from interlcm.engines.outputs import (
    InputResult,
    OutputPlan,
    RestoreReport,
    RunPlan,
    output_complete,
    source_id,
)
from interlcm.engines.photo import FacesRestored, PhotoInput, PhotoRestorer, PhotoResult
from interlcm.files import DiskFull, FilesError
from interlcm.imageio import read_rgb, write_image

__all__ = ["DEFAULT_WORKERS", "PhotoPipeline", "PipelineThreads", "RestoreReport", "restore_files"]

DEFAULT_WORKERS = min(4, os.cpu_count() or 1)  # CPU workers: each holds at most one output canvas at a time
GROUPS_IN_FLIGHT = 2  # groups past the device stage and not yet written: the device works on the next meanwhile
PHOTO_FAILURES = (ValueError, RuntimeError, OSError, MemoryError)  # one photo's failure: reported, the rest go on

T = TypeVar("T")


class InlineExecutor(Executor):
    """Runs each task at once in the calling thread: the sequential runtime (workers=0)."""

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        future: Future[T] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as exc:  # handed to whoever asks for the result, as a thread pool does
            future.set_exception(exc)
        return future


@dataclass
class Batch:
    """A group of photos in the pipeline. `stage`: its device stage, whose result is one future per photo
    (paste-back and the front end's step; each raises that photo's failure)."""

    stage: Future[list[Future[Any]]]

    def outcomes(self) -> list[Future[Any]]:
        return self.stage.result()

    def result(self) -> list[Any]:
        """Every photo's result in order; raises the first failure (as `PhotoRestorer.restore_photos`)."""
        return [future.result() for future in self.outcomes()]


class PipelineThreads:
    """One device thread (the only caller of the backend) and `workers` CPU threads; 0: all inline.

    One per opened backend; Serve shares it between the pipelines of its per-request options.
    """

    def __init__(self, workers: int = DEFAULT_WORKERS):
        if workers < 0:
            raise ValueError(f"workers={workers}: use 0 (sequential) or more")
        self.workers = workers
        self.cpu: Executor = ThreadPoolExecutor(workers, "interlcm-cpu") if workers else InlineExecutor()
        self.device: Executor = ThreadPoolExecutor(1, "interlcm-device") if workers else InlineExecutor()

    def close(self) -> None:
        """Wait for the work under way; cancel what has not started."""
        self.device.shutdown(cancel_futures=True)  # first: a running device stage still hands its photos on
        self.cpu.shutdown(cancel_futures=True)


class PhotoPipeline:
    """A PhotoRestorer's three stages on pipeline threads: its own (`workers`) or shared ones.

    A context manager: leaving it closes the threads it made.
    """

    def __init__(self, photos: PhotoRestorer, threads: PipelineThreads | int = DEFAULT_WORKERS):
        self.photos = photos
        self._owns = isinstance(threads, int)
        self.threads = PipelineThreads(threads) if isinstance(threads, int) else threads
        self.cpu, self.device = self.threads.cpu, self.threads.device

    def __enter__(self) -> PhotoPipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._owns:
            self.threads.close()

    @property
    def seconds(self) -> dict[str, float]:
        """Time per stage, summed over photos (stages overlap, so the sum may exceed the wall time)."""
        return self.photos.seconds

    def submit(
        self, photos: Sequence[PhotoInput | Future[PhotoInput]], then: Sequence[Callable[[PhotoResult], Any]] | None = None
    ) -> Batch:
        """Queue one group for the device: prepared photos (or futures of them: the device waits), and
        for each an optional step after its paste-back (`then(result)`, on a CPU worker)."""
        return Batch(self.device.submit(self._device_stage, photos, then))

    def submit_photos(self, photos: Sequence[Any]) -> Batch:
        """(H, W, 3) uint8 RGB photos: prepared on CPU workers, then as `submit`."""
        return self.submit([self.cpu.submit(self.photos.prepare, photo) for photo in photos])

    def restore_photos(self, photos: Sequence[Any]) -> list[PhotoResult]:
        """`PhotoRestorer.restore_photos` through the pipeline: blocks for this group's results."""
        return self.submit_photos(photos).result()

    def _device_stage(
        self, photos: Sequence[PhotoInput | Future[PhotoInput]], then: Sequence[Callable[[PhotoResult], Any]] | None
    ) -> list[Future[Any]]:
        restored = self._run_device([p.result() if isinstance(p, Future) else p for p in photos])
        steps = then or [None] * len(restored)
        return [self.cpu.submit(self._finish, item, step) for item, step in zip(restored, steps)]

    def _run_device(self, photos: list[PhotoInput]) -> list[FacesRestored | Exception]:
        """The device stages for a group; if the group fails, one photo at a time (which one failed?)."""
        try:
            return self.photos.run_device(photos)
        except (ValueError, RuntimeError, MemoryError) as exc:
            if len(photos) == 1:
                return [exc]
            return [item for photo in photos for item in self._run_device([photo])]

    def _finish(self, item: FacesRestored | Exception, then: Callable[[PhotoResult], Any] | None) -> Any:
        if isinstance(item, Exception):
            raise item
        result = self.photos.finish(item)
        return result if then is None else then(result)


@dataclass
class _Entry:
    """One input past its read, waiting to be recorded in input order (it holds no pixels)."""

    one: OutputPlan
    notes: tuple[str, ...] = ()  # from reading it, e.g. which frame of a multi-frame file
    failure: Exception | None = None  # its read failed
    group: int | None = None  # index of its group once sent to the device
    outcome: Callable[[], InputResult] | None = None  # after paste-back and the write; raises a failure before

    def ready(self, upto: int) -> bool:
        """Recordable once groups before `upto` are done: a failed read at once."""
        return self.failure is not None or (self.group is not None and self.group < upto)


def restore_files(
    photo_restorer: PhotoRestorer,
    plan: RunPlan,
    *,
    progress: bool = True,
    skip_existing: bool = False,
    workers: int = DEFAULT_WORKERS,
) -> RestoreReport:
    """Restore the photos of `plan` (engines.outputs.plan_outputs), a group per device call; an input that
    cannot be read, restored or written is reported and skipped, the rest go on. A full disk stops the run
    (files.DiskFull): every later write would fail too.

    `workers`: CPU threads reading and writing beside the device thread; 0 runs sequentially.
    """
    report = RestoreReport()
    start = time.perf_counter()
    group_size = max(4, photo_restorer.restorer.options.batch)  # photos per device call: their faces share batches
    todo = []
    for one in plan.photos:
        if skip_existing and one.source in plan.earlier and output_complete(one):
            report.add(InputResult(str(one.source), str(one.photo), "skipped"))
        else:
            todo.append(one)

    def read(one: OutputPlan) -> tuple[PhotoInput, list[str]]:
        notes: list[str] = []  # a multi-frame file: which frame was used
        options = photo_restorer.options  # over the pixel limits: refused from the header, one sentence
        photo = read_rgb(one.source, notes=notes, limits=options.limits, upscale=options.output_scale)
        return photo_restorer.prepare(photo), notes

    def write(one: OutputPlan, read_notes: tuple[str, ...], result: PhotoResult) -> InputResult:
        """On a CPU worker: the outputs, atomically; the record (the pixels go: memory holds only what is in flight)."""
        try:
            source = source_id(one.source)  # recorded in every output: a rerun recognises its own files
            for i, face in enumerate(result.faces):
                write_image(one.faces / f"{i:02d}.png", face, source=source)
            write_image(one.photo, result.image, source=source)  # last: its presence means the output is complete
        except DiskFull:
            raise  # stops the run (_record)
        except FilesError as exc:  # one sentence already: the path, why, the fix
            return _failed(one, str(exc))
        except (OSError, ValueError) as exc:
            return _failed(one, f"cannot write {one.photo}: {getattr(exc, 'strerror', None) or exc}")
        return InputResult(str(one.source), str(one.photo), "written", faces=result.found,
                           notes=(*read_notes, *result.notes))

    with PhotoPipeline(photo_restorer, workers) as pipeline, tqdm(
        total=len(todo), unit="img", disable=not progress, desc="restoring"
    ) as bar:
        entries: deque[_Entry] = deque()  # in input order, not yet recorded
        group: list[tuple[_Entry, PhotoInput]] = []  # read, not yet sent to the device
        launched = recorded = 0  # groups sent to the device; groups whose every photo is recorded

        def record(upto: int) -> None:
            """Record the outcomes of groups before `upto`, and failed reads among them, in input order."""
            while entries and entries[0].ready(upto):
                _record(entries.popleft(), report)
                bar.update(1)

        def launch() -> None:
            nonlocal launched, recorded
            steps = [partial(write, e.one, e.notes) for e, _ in group]
            batch = pipeline.submit([photo for _, photo in group], steps)
            for i, (entry, _) in enumerate(group):
                entry.group, entry.outcome = launched, partial(_nth_outcome, batch, i)
            launched += 1
            group.clear()
            if launched - recorded > GROUPS_IN_FLIGHT:  # bounded: wait for the oldest group's writes
                recorded += 1
                record(recorded)

        for one, future in _ahead(partial(pipeline.cpu.submit, read), todo, group_size):
            try:
                photo, notes = future.result()  # waits for the read; input order
            except PHOTO_FAILURES as exc:  # ImageReadError and PixelLimitError are ValueErrors
                entries.append(_Entry(one, failure=exc))
                record(recorded)  # ahead of every unfinished group: report it now
                continue
            entries.append(_Entry(one, tuple(notes)))
            group.append((entries[-1], photo))
            if len(group) == group_size:
                launch()
        if group:
            launch()
        record(launched)
    report.seconds = time.perf_counter() - start
    return report


def _ahead(submit: Callable[[T], Future[Any]], items: Iterable[T], depth: int) -> Iterator[tuple[T, Future[Any]]]:
    """(item, submit(item)) in order, keeping `depth` submitted beyond the one handed out."""
    window: deque[tuple[T, Future[Any]]] = deque()
    for item in items:
        window.append((item, submit(item)))
        if len(window) > depth:
            yield window.popleft()
    yield from window


def _nth_outcome(batch: Batch, i: int) -> Any:
    return batch.outcomes()[i].result()


def _record(entry: _Entry, report: RestoreReport) -> None:
    if entry.failure is not None:
        report.add(_failed(entry.one, _reason(entry.failure)))
        return
    assert entry.outcome is not None
    try:
        report.add(entry.outcome())  # written, or its write failed
    except DiskFull:
        raise  # every later write would fail too
    except PHOTO_FAILURES as exc:  # its device stage or paste-back failed
        report.add(_failed(entry.one, _reason(exc)))


def _failed(one: OutputPlan, reason: str) -> InputResult:
    return InputResult(str(one.source), str(one.photo), "failed", reason)


def _reason(exc: BaseException) -> str:
    """One sentence for the report."""
    if isinstance(exc, MemoryError):
        return "out of memory: lower --batch or --upscale, or free memory"
    return str(exc).strip() or type(exc).__name__
