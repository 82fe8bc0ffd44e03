"""`make gpu-check` (engines/gpu_check.py) on a machine without a GPU: the extra it picks, its plan, its report."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from interlcm.engines import gpu_check


@pytest.mark.parametrize("cuda, extra", [("12.2", "trt-cu12"), ("12.9", "trt-cu12"), ("13.0", "trt-cu13")])
def test_the_extra_follows_the_drivers_cuda_major(cuda, extra):
    assert gpu_check.extra_for(cuda) == extra


def test_the_plan_removes_cpu_onnxruntime_before_installing_the_gpu_extra(tmp_path):
    steps = gpu_check.plan(tmp_path, "trt-cu12", install=True, quick=False)
    names = [s.name for s in steps]
    assert names[:2] == ["uninstall cpu onnxruntime", "install .[trt-cu12]"]
    assert steps[1].command[-1] == ".[dev,trt-cu12]"
    for preset in gpu_check.PRESETS:  # export before build before check, per preset
        order = [names.index(f"{verb} {preset}") for verb in ("export", "build")]
        assert order == sorted(order) and names.index(f"check {preset} tensorrt") > order[-1]
    export = next(s for s in steps if s.name == "export sd15").command
    assert "denoise_step" in export[export.index("--components") + 1] and "1:1:8" in export
    assert [s.name for s in gpu_check.plan(tmp_path, "trt-cu13", install=False, quick=True)][0] == "export tiny"


def test_dry_run_prints_every_command_without_running(monkeypatch, tmp_path):
    monkeypatch.setattr(gpu_check, "driver_cuda", lambda: (None, "nvidia-smi did not run"))
    result = CliRunner().invoke(gpu_check.main, ["--dry-run", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "build tiny:" in result.output and "gpu/trt tests:" in result.output
    assert not list(tmp_path.iterdir())
    result = CliRunner().invoke(gpu_check.main, ["--out", str(tmp_path)])
    assert result.exit_code == 1 and "no NVIDIA GPU to check: nvidia-smi did not run" in result.output


def test_the_report_shows_failed_steps_with_their_output():
    steps = [gpu_check.Step("build tiny", ["x"], 1.5, True), gpu_check.Step("check tiny tensorrt", ["y"], 2.0, False,
                                                                           "Error: 3 of 15 comparison(s) out")]
    meta = {"date": "2026-11-23 22:00", "gpu": "NVIDIA L4", "driver_cuda": "12.4", "extra": "trt-cu12",
            "python": "3.11"}
    rows = [{"backend": "tensorrt fp16", "step": "fused", "graph": True, "batch": 8, "seconds": 0.5},
            {"backend": "onnxruntime fp16", "step": "fused", "graph": False, "batch": 8, "error": "no denoise_step"}]
    text = gpu_check.report_markdown(meta, steps, {"tiny": rows})
    assert "| build tiny | ok | 1.5 |" in text and "| check tiny tensorrt | FAILED | 2.0 |" in text
    assert "| tensorrt fp16 | fused | True | 8 | 0.5000 | 16.0 |" in text and "no denoise_step" in text
    assert "### check tiny tensorrt failed" in text and "3 of 15 comparison(s) out" in text
