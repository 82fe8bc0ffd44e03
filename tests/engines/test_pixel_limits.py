"""Pixel limits (interlcm.limits.PixelLimits) through what users run: the CLI and the Ray job's decode
stage refuse a photo that is too large, or whose output would be, from its header, in one sentence,
and go on with the rest; --skip-existing judges a huge output complete without decoding it."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from interlcm.engines.cli import main
from interlcm.engines.outputs import source_id
from interlcm.testing import group_photo, pixel_bomb_png


def _restore(*args: str):
    return CliRunner().invoke(main, ["restore", *args])


def _failures(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("failed:")]


def test_a_pixel_bomb_is_one_failed_input_and_the_rest_go_on(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(src / "face.png")
    (src / "bomb.png").write_bytes(pixel_bomb_png(13000, 13000))  # 231 bytes, 169 MP by its header
    out = tmp_path / "out"
    result = _restore(str(src), "--aligned", "--preset", "tiny", "--out", str(out))
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and "restored 1/2" in result.output, result.output
    (failure,) = _failures(result.output)
    assert "bomb.png: 13000x13000 is 169 MP, over the 64 MP input limit" in failure and "--max-input-mp" in failure
    assert sorted(p.name for p in out.iterdir()) == ["face.png"]
    # the limit is the user's to set
    result = _restore(str(src / "face.png"), "--aligned", "--preset", "tiny", "--max-input-mp", "0.004",
                      "--out", str(tmp_path / "out2"))
    assert result.exit_code == 1, result.output
    (failure,) = _failures(result.output)
    assert "face.png: 64x64 is 0.0041 MP, over the 0.004 MP input limit" in failure


def test_an_output_over_the_limit_fails_before_any_work(tmp_path):
    """--upscale 8 on a 480x360 photo is 3840x2880 = 11.1 MP: over a 10 MP limit, refused; under 12, restored."""
    pytest.importorskip("dlib", reason="the faces-dlib extra is not installed (make install installs it)")
    src = tmp_path / "group.png"
    Image.fromarray(group_photo((480, 360))).save(src)
    common = [str(src), "--preset", "tiny", "--detector", "dlib", "--upscale", "8"]
    result = _restore(*common, "--max-output-mp", "10", "--out", str(tmp_path / "a"))
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    (failure,) = _failures(result.output)
    assert "480x360 at upscale 8 gives 3840x2880 = 11.1 MP, over the 10 MP output limit" in failure
    assert "whole-photo stages" not in result.output  # nothing was detected, restored or pasted
    result = _restore(*common, "--max-output-mp", "12", "--out", str(tmp_path / "b"))
    assert result.exit_code == 0, result.output
    with Image.open(tmp_path / "b" / "group.png") as img:
        assert img.size == (3840, 2880)


def test_skip_existing_judges_a_192_mp_output_without_decoding_it(tmp_path):
    """A complete 16000x12000 output (over Pillow's own ~179 MP bomb limit) is skipped, not a traceback."""
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(src / "big.png")
    out = tmp_path / "out"
    out.mkdir()
    # signature ... IEND: a whole PNG file, header says 192 MP, and it records its input (an earlier output)
    existing = pixel_bomb_png(16000, 12000, source=source_id(src / "big.png"))
    (out / "big.png").write_bytes(existing)
    result = _restore(str(src), "--aligned", "--preset", "tiny", "--skip-existing", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "skipped 1 image(s)" in result.output and "restored 0/1" in result.output, result.output
    assert (out / "big.png").read_bytes() == existing


def test_the_ray_job_refuses_from_the_header_too(tmp_path):
    pytest.importorskip("pyarrow")
    import pyarrow.fs as pafs

    from interlcm.engines.photo import PhotoOptions
    from interlcm.engines.ray_job import decode_stage
    from interlcm.limits import PixelLimits

    bomb, face = tmp_path / "bomb.png", tmp_path / "face.png"
    bomb.write_bytes(pixel_bomb_png(13000, 13000))
    Image.fromarray(np.zeros((40, 30, 3), np.uint8)).save(face)
    batch = {"src": np.array([str(bomb), str(face)], dtype=object), "dst": np.array(["x", "y"], dtype=object),
             "faces_dir": np.array(["", ""], dtype=object)}
    rows = decode_stage(batch, pafs.LocalFileSystem(), PhotoOptions(upscale=4, limits=PixelLimits(output=10_000)))
    assert "13000x13000 is 169 MP, over the 64 MP input limit" in rows["error"][0]
    assert "30x40 at upscale 4 gives 120x160 = 0.0192 MP, over the 0.01 MP output limit" in rows["error"][1]
    rows = decode_stage(batch, pafs.LocalFileSystem(), PhotoOptions(aligned=True))  # a crop is not upscaled
    assert rows["error"][1] == "" and rows["image"][1].shape == (40, 30, 3)
