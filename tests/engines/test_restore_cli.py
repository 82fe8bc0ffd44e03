"""`interlcm-trt restore` as a user runs it: folders, bad files, backend choice, exit codes.

These give aligned face crops (`--aligned`); whole photos: test_photo_cli.py.
"""

from __future__ import annotations

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


