"""The pipelined runtime (engines/pipeline.py): the same bytes as the sequential runtime, failures per photo,
outcomes in input order, memory bounded while the device is slow, videos through it."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from interlcm.engines.cli import main
from interlcm.engines.outputs import plan_outputs
from interlcm.engines.photo import FacesRestored, PhotoInput, PhotoOptions, PhotoRestorer, PhotoResult
from interlcm.engines.pipeline import GROUPS_IN_FLIGHT, PhotoPipeline, restore_files
from interlcm.faces.detect import Detection
from interlcm.testing import face_landmarks, group_photo

POISON = (1, 2, 3)  # a photo whose first pixel is this makes the stand-in device fail


def _files(folder, sizes, bad=(), poisoned=(), gray=()) -> list:
    """Photos with two heads each (varied sizes), plus unreadable, device-poisoning and gray ones by index."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, size in enumerate(sizes):
        path = folder / f"p{i:02d}.png"
        if i in bad:
            path.write_bytes(b"not an image")
        else:
            photo = group_photo(size, ((0.3, 0.4, size[1] * 0.5, 3 * i), (0.72, 0.45, size[1] * 0.4, -4 * i)))
            if i in gray:
                photo = np.repeat(photo.mean(axis=2, keepdims=True).astype(np.uint8), 3, axis=2)
            if i in poisoned:
                photo[0, 0] = POISON
            Image.fromarray(photo).save(path)
        paths.append(path)
    return paths


def test_pipelined_cli_writes_the_sequential_bytes(tmp_path):
    """`restore` with --workers 0 (sequential) and with the default pipeline: every output file byte for byte,
    the same lines. Nine photos (two groups of 4 at --batch 2 and one more), an unreadable file between them,
    a gray photo; dlib finds the faces, tiny random weights restore them."""
    pytest.importorskip("dlib", reason="the faces-dlib extra is not installed (make install installs it)")
    sizes = [(480, 360), (360, 480), (400, 300), (480, 360), (480, 320), (480, 360), (360, 360), (480, 360), (320, 400)]
    src = tmp_path / "in"
    _files(src, sizes, bad=(3,), gray=(5,))
    outputs, lines = {}, {}
    for workers in ("0", "2"):
        out = tmp_path / f"out{workers}"
        result = CliRunner().invoke(main, ["restore", str(src), "--preset", "tiny", "--detector", "dlib", "--batch", "2",
                                           "--save-faces", "--seed", "7", "--workers", workers, "--out", str(out)])
        assert result.exit_code == 1, result.output  # the unreadable file
        outputs[workers] = {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
        # failures and notes (progress bars and times aside), and the count
        lines[workers] = [line for line in result.output.splitlines() if line.startswith(("failed:", "  "))]
        lines[workers].append(re.search(r"restored \d+/\d+", result.output)[0])
    assert len(outputs["0"]) > 8 + 8  # 8 photos and their faces
    assert outputs["2"].keys() == outputs["0"].keys()
    for name in outputs["0"]:
        assert outputs["2"][name] == outputs["0"][name], name
    assert lines["2"] == lines["0"]
    assert any("p03.png" in line and line.startswith("failed:") for line in lines["0"])


class _SlowDevice:
    """Stand-ins for the device stages: a detector (two faces per photo, `seconds` per photo, fails on
    POISON) and an identity restorer; they count the photos read but not yet pasted back."""

    landmark_kind = "retinaface"

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.config = SimpleNamespace(resolution=32)
        self.options = SimpleNamespace(batch=2)
        self.groups: list[int] = []  # photos per detect call
        self.lock = threading.Lock()
        self.alive = self.most_alive = 0

    def detect(self, photos: list[np.ndarray]) -> list[list[Detection]]:
        self.groups.append(len(photos))
        time.sleep(self.seconds * len(photos))  # releases the GIL, as a GPU would
        if any(tuple(p[0, 0]) == POISON for p in photos):
            raise RuntimeError("the stand-in device fails on this photo")
        w = photos[0].shape[1]
        return [[Detection(np.zeros(4), face_landmarks((x * p.shape[1], 0.4 * p.shape[0]), 0.1 * w, 0), 1.0)
                 for x in (0.3, 0.7)] for p in photos]

    def restore(self, lq: torch.Tensor) -> torch.Tensor:
        return lq

    def count(self, step: int) -> None:
        with self.lock:
            self.alive += step
            self.most_alive = max(self.most_alive, self.alive)


class _CountingPhotos(PhotoRestorer):
    def __init__(self, device: _SlowDevice):
        super().__init__(device, PhotoOptions(), device)  # type: ignore[arg-type]  # the stand-ins duck-type
        self.device = device

    def prepare(self, photo: np.ndarray) -> PhotoInput:
        self.device.count(+1)
        return super().prepare(photo)

    def finish(self, item: FacesRestored) -> PhotoResult:
        result = super().finish(item)
        self.device.count(-1)
        return result


@pytest.mark.parametrize("workers", [0, 2])
def test_failures_stay_with_their_photo_outcomes_in_input_order_memory_bounded(tmp_path, workers):
    """40 photos, a slow device: at most a few groups are read ahead (not all 40); a group with a failing
    photo is retried one photo at a time; unreadable and failing photos are one line each, in input order."""
    paths = _files(tmp_path / "in", [(64, 48)] * 40, bad=(6, 21), poisoned=(9, 30))
    device = _SlowDevice(seconds=0.01)
    plan = plan_outputs(paths, tmp_path / "out")
    report = restore_files(_CountingPhotos(device), plan, progress=False, workers=workers)
    failed = {Path(r.input).name: r.reason for r in report.where("failed")}
    assert list(failed) == ["p06.png", "p09.png", "p21.png", "p30.png"]
    assert "the stand-in device fails" in failed["p09.png"]
    assert [Path(r.input).name for r in report.results] == [p.name for p in paths]  # input order, each once
    assert [Path(r.output).name for r in report.where("written")] == [
        p.name for i, p in enumerate(paths) if i not in (6, 9, 21, 30)]
    # 38 readable photos in groups of 4 (the last of 2); the two groups with a poisoned photo again one by one
    assert sorted(device.groups) == [1] * 8 + [2] + [4] * 9
    group = 4
    bound = group * (GROUPS_IN_FLIGHT + 1) + 2 * group + 1  # in flight + being formed + read ahead + one
    assert device.most_alive <= (bound if workers else 2 * group + 1), device.most_alive
    assert device.alive == 2  # the poisoned photos never reach paste-back


def test_a_video_through_the_pipeline_gives_the_sequential_frames(tmp_path, tiny_models):
    """Decoded ahead, restored on the device thread, encoded behind: frame n is restore_photos' frame n,
    byte for byte (the same batches of 2), in order."""
    import av

    from interlcm.engines.restorer import RestoreOptions, Restorer
    from interlcm.testing import write_clip
    from interlcm.torch_backend import TorchBackend
    from interlcm.video import VideoOptions, frames_folder, restore_video

    rng = np.random.default_rng(0)
    write_clip(tmp_path / "clip.mp4", [rng.integers(0, 256, (24, 24, 3), dtype=np.uint8) for _ in range(11)], fps=4)
    photos = PhotoRestorer(Restorer(TorchBackend(tiny_models), RestoreOptions(steps=1, batch=2)),
                           PhotoOptions(aligned=True))
    with av.open(str(tmp_path / "clip.mp4")) as clip:
        decoded = [frame.to_ndarray(format="rgb24") for frame in clip.decode(video=0)]
    want = [r.image for i in range(0, len(decoded), 2) for r in photos.restore_photos(decoded[i : i + 2])]
    options = VideoOptions(frames_per_batch=2, progress=False)
    dst = tmp_path / "out" / "clip.mp4"
    with PhotoPipeline(photos, 2) as pipeline:
        report = restore_video(pipeline, tmp_path / "clip.mp4", dst, options, frames_dir=frames_folder(dst))
    saved = sorted(frames_folder(dst).iterdir())
    assert report.frames == len(saved) == len(want) == 11
    for n, (path, image) in enumerate(zip(saved, want)):
        assert np.array_equal(np.asarray(Image.open(path)), image), n


_INTERRUPTED_RUN = """
import os, signal, sys
from interlcm.engines.cli import main
from interlcm.engines.photo import PhotoRestorer

finish, done = PhotoRestorer.finish, []

def finish_then_ctrl_c(self, item):  # a paste-back on a CPU worker: Ctrl-C while the device works on the next
    done.append(1)
    if len(done) == 2:
        os.kill(os.getpid(), signal.SIGINT)
    return finish(self, item)

PhotoRestorer.finish = finish_then_ctrl_c
main(["restore", "--aligned", sys.argv[1], "--preset", "tiny", "--steps", "1", "--workers", "2", "--out", sys.argv[2]])
"""


def test_ctrl_c_during_a_pipelined_run_exits_130_leaving_only_complete_files(tmp_path):
    """A real SIGINT while the device thread and the CPU workers are busy: the threads are closed, the
    command ends with main's one line and exit code 130, and every file in OUT is whole (no temporaries)."""
    import subprocess
    import sys

    from interlcm.files import TEMP_PREFIX

    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):  # three groups of 4
        Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(src / f"face{i:02d}.png")
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, "-c", _INTERRUPTED_RUN, str(src), str(out)], capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 130, run.stderr[-2000:]
    assert run.stderr.strip().splitlines()[-1].startswith("interrupted (Ctrl-C)"), run.stderr[-2000:]
    written = sorted(out.iterdir())
    assert len(written) < 12 and not any(p.name.startswith(TEMP_PREFIX) for p in written), written
    for path in written:
        with Image.open(path) as image:
            image.load()  # whole: a cut file raises here
