"""`interlcm-trt check` and the backend-opening checks: thresholds, exit codes, engines without --weights."""

from __future__ import annotations

import json
import shutil

from click.testing import CliRunner

from interlcm.engines.cli import main


def test_check_passes_within_the_components_tolerances(tiny_onnx):
    result = CliRunner().invoke(main, ["check", "--onnx", str(tiny_onnx)])
    assert result.exit_code == 0, result.output
    assert "step1.eps" in result.output and "limit" in result.output
    assert result.output.rstrip().endswith("stages within tolerance")


def test_check_fails_with_a_table_against_other_weights(tiny_onnx, tmp_path):
    """The export of seed 0 checked against seed 1 (what --weights of another model does): exit 1, every failure listed."""
    work = tmp_path / "onnx"
    shutil.copytree(tiny_onnx, work)
    manifest = json.loads((work / "manifest.json").read_text())
    manifest["identity"]["seed"] = 1  # the manifest now claims other (random) weights
    (work / "manifest.json").write_text(json.dumps(manifest))
    result = CliRunner().invoke(main, ["check", "--onnx", str(work)])
    assert result.exit_code == 1, result.output
    assert "Error:" in result.output and "out of tolerance" in result.output and "FAIL" in result.output
    assert "Traceback" not in result.output


def test_engines_know_their_weights_so_check_needs_no_weights_folder(engines, tiny_cfg):
    from interlcm.engines.backend import BackendOptions, open_backend, reference_models

    with open_backend(BackendOptions("tensorrt", engines=engines)) as opened:
        assert opened.weights == "random tiny weights, seed 0, 3step"
        models = reference_models(opened)  # no --weights: rebuilt from the identity the engines record
    assert models.origin == "random, seed 0" and models.config == tiny_cfg


def test_batch_over_the_engine_profile_is_one_line_at_open(engines, tmp_path):
    result = CliRunner().invoke(main, ["restore", "--engines", str(engines), "--backend", "tensorrt",
                                       "--batch", "8", "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and errors[0].startswith("Error: --batch 8 is above the tensorrt backend's limit of 4")
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()
