"""`interlcm-trt restore clip.mp4`: dispatch to the video path, one-line failures, nothing half-written."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from interlcm.engines.cli import main
from interlcm.testing import write_clip


@pytest.fixture
def clip(tmp_path):
    frames = [np.full((32, 48, 3), 40 + 10 * i, np.uint8) for i in range(4)]
    write_clip(tmp_path / "clip.mp4", frames, fps=2)
    return tmp_path / "clip.mp4"


def test_truncated_video_one_line_error_and_no_output(clip, tmp_path, tiny_weights):
    data = clip.read_bytes()
    bad = tmp_path / "cut.mov"
    bad.write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["restore", str(bad), "--weights", str(tiny_weights), "--out", str(out)])
    assert result.exit_code == 1
    failures = [line for line in result.output.splitlines() if line.startswith("failed:")]
    assert len(failures) == 1 and "cut.mov" in failures[0] and "Traceback" not in result.output
    assert not out.exists() or list(out.iterdir()) == []


def test_missing_realesrgan_weights_is_one_line(clip, tmp_path, tiny_weights):
    (tiny_weights / "realesrgan" / "RealESRGAN_x2plus.pth").rename(tmp_path / "moved.pth")
    try:
        result = CliRunner().invoke(
            main, ["restore", str(clip), "--weights", str(tiny_weights), "--bg-upsampler", "realesrgan",
                   "--out", str(tmp_path / "out")]
        )
    finally:
        (tmp_path / "moved.pth").rename(tiny_weights / "realesrgan" / "RealESRGAN_x2plus.pth")
    assert result.exit_code == 1 and "RealESRGAN_x2plus.pth" in result.output and "download" in result.output
    assert "Traceback" not in result.output


def test_video_dispatch(clip, tmp_path):
    out = tmp_path / "out"
    args = ["restore", str(clip), "--preset", "tiny", "--steps", "1", "--detector", "dlib",
            "--bg-upsampler", "realesrgan", "--bg-tile", "16", "--out", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert (out / "clip.mp4").is_file() and "4 frames at 2 fps, 96x64" in result.output


@pytest.mark.parametrize("failure", ["engine", "memory"])
def test_a_failing_video_is_one_line_and_the_next_goes_on(tmp_path, monkeypatch, failure):
    """An engine error or running out of memory on one video: one `failed:` line, the other video restored, exit 1."""
    from interlcm.engines.photo import PhotoRestorer
    from interlcm.engines.trt import EngineError

    dark, bright = tmp_path / "dark.mp4", tmp_path / "bright.mp4"
    write_clip(dark, [np.full((32, 48, 3), 20, np.uint8)] * 2, fps=2)
    write_clip(bright, [np.full((32, 48, 3), 200, np.uint8)] * 2, fps=2)
    run_device = PhotoRestorer.run_device  # the device stage of the pipeline the CLI runs videos through

    def fails_on_dark(self, photos):
        if photos[0].pixels.mean() < 100:
            raise EngineError("the engine lost its context\n(second line)") if failure == "engine" else MemoryError()
        return run_device(self, photos)

    monkeypatch.setattr(PhotoRestorer, "run_device", fails_on_dark)
    out = tmp_path / "out"
    args = ["restore", str(dark), str(bright), "--preset", "tiny", "--steps", "1", "--detector", "dlib", "--out", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    failures = [line for line in result.output.splitlines() if line.startswith("failed:")]
    reason = "the engine lost its context" if failure == "engine" else "out of memory; lower --batch or --upscale"
    assert failures == [f"failed: {dark}: {reason}" + ("" if failure == "engine" else ", or free memory")]
    assert sorted(p.name for p in out.iterdir()) == ["bright.mp4"]


def test_rotated_video_through_the_cli(tmp_path):
    """A portrait phone clip (stored 48x32, "rotate 90") comes out portrait, 64x96, and the CLI says it turned it."""
    stored = np.zeros((32, 48, 3), np.uint8)
    stored[:, :24] = 200
    write_clip(tmp_path / "phone.mov", [stored] * 2, fps=2, rotation=-90)
    out = tmp_path / "out"
    args = ["restore", str(tmp_path / "phone.mov"), "--preset", "tiny", "--steps", "1", "--detector", "dlib",
            "--out", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "2 frames at 2 fps, 64x96, turned upright (-90 degrees), 1 other stream(s) copied" in result.output
