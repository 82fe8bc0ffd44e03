"""An export remembers its weights and encoder variant; other weights or steps are refused, not ignored."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from interlcm.checkpoint import WeightsError
from interlcm.engines.cli import main
from interlcm.export.manifest import ManifestError, load_manifest
from interlcm.identity import WeightsIdentity
from interlcm.weights import check_identity, folder_identity


def _fails_in_one_sentence(args, match):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and match in errors[0], result.output
    return errors[0]


def test_manifest_records_a_typed_identity(tiny_onnx):
    assert load_manifest(tiny_onnx).identity == WeightsIdentity.random("tiny", 0, "3step")


def test_onnx_with_other_weights_is_refused(tiny_onnx, tiny_weights, tmp_path):
    args = ["--onnx", tiny_onnx, "--weights", tiny_weights]
    _fails_in_one_sentence(["restore", *args, "--out", tmp_path / "out"], "was made from random tiny weights, seed 0")
    _fails_in_one_sentence(["check", *args], "not from --weights")
    assert not (tmp_path / "out").exists()  # refused before any work, nothing created


@pytest.mark.parametrize("flag", [["--steps", "1"], ["--variant", "colorization"]])
def test_onnx_of_one_variant_with_another_is_refused(tiny_onnx, tmp_path, flag):
    _fails_in_one_sentence(
        ["restore", "--onnx", tiny_onnx, *flag, "--out", tmp_path / "out"], "was exported from the 3step encoders"
    )


def test_same_identity_passes_and_another_seed_does_not(tmp_path, tiny_weights):
    folder = folder_identity(tiny_weights, "3step")
    check_identity(folder, weights=tiny_weights, variant="3step", what="x")  # the same weights: accepted
    with pytest.raises(WeightsError, match="1step encoders"):
        check_identity(folder, variant="1step", what="x")
    with pytest.raises(WeightsError, match="was made from random tiny weights, seed 0, 3step, not from --weights"):
        check_identity(WeightsIdentity.random("tiny", 0), weights=tiny_weights, what="x")
    assert not WeightsIdentity.random("tiny", 0).same_weights(WeightsIdentity.random("tiny", 1))


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda m: m.update(resolution=128), "says resolution 128 but its preset says 64"),
        (lambda m: m["entries"][0]["inputs"][0].update(shape=["batch", 3, 128, 128]), "disagree with the tiny preset"),
        (lambda m: m.pop("identity"), "does not record which weights"),
    ],
)
def test_an_edited_manifest_is_refused_in_one_sentence(tiny_onnx, tmp_path, edit, match):
    folder = shutil.copytree(tiny_onnx, tmp_path / "onnx")
    manifest = json.loads((folder / "manifest.json").read_text())
    edit(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match=match):
        load_manifest(folder)
    _fails_in_one_sentence(["restore", "--onnx", folder, "--out", tmp_path / "out"], match)
