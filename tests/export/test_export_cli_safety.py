"""`interlcm-export` refuses bad arguments, foreign folders and a second writer in one sentence."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from interlcm.export.cli import main
from interlcm.files import folder_lock


def _error(args) -> str:
    result = CliRunner().invoke(main, ["--preset", "tiny", *[str(a) for a in args]])
    assert result.exit_code != 0 and "Traceback" not in result.output, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, result.output
    return errors[0]


@pytest.mark.parametrize(
    "args, match",
    [
        (["--resolution", "0"], "0 is not in the range x>=1"),
        (["--resolution", "-64"], "-64 is not in the range x>=1"),
        (["--resolution", "60"], "resolution 60 is not a multiple of"),
        (["--opset", "5"], "5 is not in the range 17<=x<=20"),
        (["--threads", "0"], "0 is not in the range x>=1"),
        (["--seed", str(2**64)], "give a seed from 0 to"),
        (["--seed", "-3"], "give a seed from 0 to"),
        (["--variant", "4step"], "'4step' is not one of"),
    ],
)
def test_bad_arguments(tmp_path, args, match):
    out = tmp_path / "onnx"
    assert match in _error([*args, "--out", out, "--components", "colorfix_adain"])
    assert not out.exists() or not any(out.iterdir())


def test_out_holding_other_files_or_being_a_file(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "me.jpg").write_bytes(b"jpg")
    assert "not an export folder written by interlcm (no manifest.json" in _error(["--out", photos, "--force"])
    assert sorted(p.name for p in photos.iterdir()) == ["me.jpg"]
    (tmp_path / "file").write_text("x")
    assert "is not a folder" in _error(["--out", tmp_path / "file"])


def test_a_second_export_into_the_same_folder_fails_cleanly(tmp_path):
    out = tmp_path / "onnx"
    with folder_lock(out, "another export"):  # the first export, still running
        message = _error(["--out", out, "--components", "colorfix_adain", "--no-validate"])
    assert "is in use by another export" in message and "wait for it to finish or choose another --out" in message
    assert sorted(p.name for p in out.iterdir()) == [".interlcm.lock"]
