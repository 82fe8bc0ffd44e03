"""`interlcm-trt restore` as a user runs it: folders, bad files, backend choice, exit codes.

These give aligned face crops (`--aligned`); whole photos: test_photo_cli.py.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from interlcm.engines.cli import main


def _faces(folder, n=2, size=80):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / f"face{i}.png")
    return folder


def test_folder_with_a_bad_file_restores_the_rest(tmp_path, tiny_weights):
    src = _faces(tmp_path / "in", n=3)
    (src / "broken.png").write_bytes(b"this is not a png")
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main, ["restore", str(src), "--aligned", "--weights", str(tiny_weights), "--batch", "2", "--out", str(out),
               "--seed", "1"]
    )
    assert result.exit_code == 1, result.output  # something failed, and the exit code says so
    assert sorted(p.name for p in out.iterdir()) == ["face0.png", "face1.png", "face2.png"]
    assert "broken.png" in result.output and "restored 3/4" in result.output
    assert "backend: torch" in result.output and "weights given" in result.output
    with Image.open(out / "face0.png") as img:
        assert img.size == (64, 64) and img.mode == "RGB"


def test_inputs_are_never_overwritten(tmp_path, tiny_weights):
    src = _faces(tmp_path / "in", n=1)
    before = (src / "face0.png").read_bytes()
    result = CliRunner().invoke(main, ["restore", str(src), "--aligned", "--weights", str(tiny_weights), "--out", str(src)])
    assert result.exit_code == 1 and "overwrite an input" in result.output
    assert (src / "face0.png").read_bytes() == before


def test_same_seed_same_picture_on_torch_and_onnxruntime(tmp_path, tiny_weights, tiny_onnx, tiny_models):
    """The ONNX folder was exported from random seed-0 tiny weights, which tiny_weights also holds."""
    src = _faces(tmp_path / "in", n=1)
    outs = {}
    for name, flags in (("torch", ["--weights", str(tiny_weights)]), ("ort", ["--onnx", str(tiny_onnx)])):
        result = CliRunner().invoke(
            main, ["restore", str(src), "--aligned", *flags, "--seed", "5", "--out", str(tmp_path / name)]
        )
        assert result.exit_code == 0, result.output
        outs[name] = np.asarray(Image.open(tmp_path / name / "face0.png"), dtype=np.int16)
        if name == "ort":  # auto picked ONNX Runtime and said why, naming what really runs
            assert "onnxruntime fp32 on CPU" in result.output and "CUDA" in result.output
    assert np.abs(outs["torch"] - outs["ort"]).max() <= 1  # 8-bit rounding at most


def test_backend_errors_are_one_line(tmp_path):
    src = _faces(tmp_path / "in", n=1)
    for args, expected in (
        (["--backend", "tensorrt"], "needs --engines"),
        (["--backend", "onnxruntime"], "needs --onnx"),
        (["--engines", str(tmp_path)], "NVIDIA GPU"),
    ):
        result = CliRunner().invoke(main, ["restore", str(src), "--aligned", *args, "--out", str(tmp_path / "o")])
        assert result.exit_code != 0 and expected in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1


def test_no_images_found(tmp_path):
    result = CliRunner().invoke(main, ["restore", str(tmp_path / "nothing*.png")])
    assert result.exit_code != 0 and "no images found" in result.output


@pytest.mark.parametrize("flag", [[], ["--preset", "tiny"]])
def test_demo_face_by_default(tmp_path, flag):
    result = CliRunner().invoke(main, ["restore", "--aligned", *flag, "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    assert "demo face" in result.output and "random weights" in result.output
    assert (tmp_path / "o" / "face.png").is_file()




# --- outputs never replace what was there -----------------------------------------------------------


def _run(*args: str):
    return CliRunner().invoke(main, ["restore", "--aligned", *args])


def test_outputs_never_replace_files_that_were_in_out(tmp_path, tiny_weights):
    """`restore album/new --out album` and two cameras' IMG_0001.png in two runs into one OUT."""
    w = ["--weights", str(tiny_weights)]
    album = _faces(tmp_path / "album", n=1)  # the album's own face0.png
    _faces(album / "new", n=1)  # new/face0.png: another picture of the same name
    mine = (album / "face0.png").read_bytes()
    result = _run(str(album / "new"), *w, "--out", str(album))
    assert result.exit_code == 1 and "would replace files this run did not write" in result.output, result.output
    assert "--overwrite" in result.output and len(result.output.strip().splitlines()) == 1
    assert (album / "face0.png").read_bytes() == mine and "backend:" not in result.output  # before any work

    cam1, cam2 = _faces(tmp_path / "cam1", n=1), tmp_path / "cam2"
    cam2.mkdir()
    Image.new("RGB", (80, 80), (200, 10, 10)).save(cam2 / "face0.png")
    out = tmp_path / "out"
    assert _run(str(cam1), *w, "--out", str(out)).exit_code == 0
    first = (out / "face0.png").read_bytes()
    assert _run(str(cam1), *w, "--out", str(out), "--seed", "3").exit_code == 0  # a rerun of the same input
    assert (out / "face0.png").read_bytes() != first  # replaced: it was its own earlier output
    first = (out / "face0.png").read_bytes()
    result = _run(str(cam2), *w, "--out", str(out))
    assert result.exit_code == 1 and "not an output of" in result.output and "cam2" in result.output
    assert (out / "face0.png").read_bytes() == first
    assert _run(str(cam2), *w, "--out", str(out), "--overwrite").exit_code == 0  # asked for
    assert (out / "face0.png").read_bytes() != first


def test_an_empty_out_is_refused(tmp_path, tiny_weights):
    """`--out "$DIR"` with DIR unset must not write into the current folder."""
    src = _faces(tmp_path / "in", n=1)
    runner = CliRunner()
    with runner.isolated_filesystem(temp_dir=tmp_path) as here:
        result = runner.invoke(main, ["restore", str(src), "--aligned", "--weights", str(tiny_weights), "--out", ""])
        assert result.exit_code == 2 and "--out is empty" in result.output, result.output
        assert os.listdir(here) == []


def test_outputs_keep_the_suffix_case(tmp_path, tiny_weights):
    """Camera cards (FAT/exFAT) are case-insensitive: IMG_0001.jpg next to IMG_0001.JPG would be the input."""
    src = tmp_path / "card"
    src.mkdir()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(src / "IMG_0001.JPG")
    out = tmp_path / "out"
    assert _run(str(src), "--weights", str(tiny_weights), "--out", str(out)).exit_code == 0
    assert os.listdir(out) == ["IMG_0001.JPG"]
    with Image.open(out / "IMG_0001.JPG") as img:
        assert img.format == "JPEG"


def test_an_output_that_cannot_be_written_fails_only_its_input(tmp_path, tiny_weights):
    """A legal 254-byte name whose faces folder (`<stem>_faces`) is over 255 bytes: one failure, the rest go on."""
    src = _faces(tmp_path / "in", n=1)
    long_name = "x" * 250 + ".png"
    Image.open(src / "face0.png").save(src / long_name)
    out = tmp_path / "out"
    result = _run(str(src), "--weights", str(tiny_weights), "--save-faces", "--out", str(out))
    assert result.exit_code == 1, result.output
    assert "restored 1/2" in result.output and "name is too long" in result.output
    assert sorted(os.listdir(out)) == ["face0.png", "face0_faces"]


def test_stale_temporaries_of_killed_runs_are_removed(tmp_path, tiny_weights):
    import subprocess
    import sys

    from interlcm.files import TEMP_PREFIX

    src = _faces(tmp_path / "in" / "sub", n=1)
    _faces(tmp_path / "in", n=1)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    out = tmp_path / "out"
    stale = [out / f"{TEMP_PREFIX}{dead.stdout.strip()}-0000-face0.png", src.parent.parent / "out" / "sub" /
             f"{TEMP_PREFIX}{dead.stdout.strip()}-0001-face0.png"]
    live = out / f"{TEMP_PREFIX}{os.getpid()}-0002-face0.png"  # a run still going: never touched
    for path in (*stale, live):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half a png")
    inputs = [str(tmp_path / "in" / "face0.png"), str(src / "face0.png")]  # OUT and OUT/sub are written
    assert _run(*inputs, "--weights", str(tiny_weights), "--out", str(out)).exit_code == 0
    assert not any(p.exists() for p in stale) and live.exists()


def test_ctrl_c_exits_130_with_one_line(tmp_path, tiny_weights, monkeypatch):
    from interlcm.engines import pipeline

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "restore_files", interrupted)
    src = _faces(tmp_path / "in", n=1)
    result = _run(str(src), "--weights", str(tiny_weights), "--out", str(tmp_path / "out"))
    assert result.exit_code == 130, result.output
    assert result.output.strip().splitlines()[-1].startswith("interrupted (Ctrl-C)") and "Aborted" not in result.output


def test_a_photo_in_a_videos_frames_folder_is_refused_before_any_work(tmp_path):
    """With --save-frames, `clip_frames/000001.png` (a photo input) and the video's first frame are one file."""
    src = _faces(tmp_path / "in", n=1)
    (src / "clip.mp4").write_bytes(b"not decoded: the plan refuses first")
    (src / "clip_frames").mkdir()
    Image.open(src / "face0.png").save(src / "clip_frames" / "000001.png")
    out = tmp_path / "out"
    inputs = [str(src / "face0.png"), str(src / "clip_frames" / "000001.png"), str(src / "clip.mp4")]
    result = _run(*inputs, "--preset", "tiny", "--save-frames", "--out", str(out))
    assert result.exit_code == 1 and "clip_frames" in result.output and "backend:" not in result.output, result.output
    assert not out.exists()
