"""scripts/gpu_check.py (`make gpu-check`) on a machine without a GPU: its plan, its judgement of each step, the
backends it names with their reason, its report, with a recording runner in place of the subprocesses."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gpu_check.py"
spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
gpu_check = sys.modules["gpu_check"] = importlib.util.module_from_spec(spec)  # dataclasses look their module up
spec.loader.exec_module(gpu_check)

ALL_SKIPPED = """sssssssssssss                                                            [100%]
=========================== short test summary info ============================
SKIPPED [3] tests/engines/test_gpu.py: needs a CUDA device: torch 2.13.0+cpu is a CPU-only build
SKIPPED [10] tests/engines/test_gpu.py:67: needs a CUDA device: torch 2.13.0+cpu is a CPU-only build
13 skipped, 1390 deselected in 41.05s
"""
NO_TRT = "tensorrt is not installed (pip install -e '.[trt-cu13]')"
NO_ORT = "onnxruntime 1.30.0 has no CUDA provider: pip install -e '.[gpu]' (it replaces onnxruntime)"


def _probed(**backends) -> dict:
    """probe() of a machine with an H200 and these backends (None: runs; text: why not)."""
    return {"gpu": "NVIDIA H200", "driver_cuda": "13.0", "no_gpu": None, "python": "3.12.3", "platform": "Linux",
            "packages": {"torch": "2.11.0+cu130", "onnxruntime": "1.30.0", "dlib-bin": None},
            "backends": {"torch-cuda": None, "onnxruntime-cuda": NO_ORT, "tensorrt": NO_TRT, **backends}}


def test_a_pytest_step_whose_tests_all_skipped_is_skipped_not_ok():
    step = gpu_check.Step("gpu tests", [["pytest"]], pytest=True)
    assert gpu_check.judge(step, 0, ALL_SKIPPED) == (
        "skipped", "all 13 tests skipped: needs a CUDA device: torch 2.13.0+cpu is a CPU-only build")
    assert gpu_check.judge(step, 0, "2 passed, 11 skipped, 1390 deselected in 9.1s\n") == (
        "ok", "2 passed, 11 skipped, 1390 deselected")
    assert gpu_check.judge(step, 1, "1 failed, 1 passed, 11 skipped in 9.1s\n")[0] == "FAILED"
    assert gpu_check.judge(step, 5, "no tests ran in 0.1s\n") == ("skipped", "no test was collected")
    assert gpu_check.judge(gpu_check.Step("export", [["x"]]), 0, "13 skipped") == ("ok", "")


def test_missing_backends_are_named_with_their_reason_and_their_steps_skipped(tmp_path):
    ran = []

    def runner(command, env):
        ran.append(command)
        return 0, ALL_SKIPPED if "pytest" in command else "done\n"

    logged = []
    code = gpu_check.check(tmp_path, quick=True, install=False, dry_run=False, runner=runner,
                           probe_env=lambda: _probed(), log=logged.append)
    assert code == 0
    steps = {s["name"]: s for s in json.loads((tmp_path / "report.json").read_text())["steps"]}
    assert steps["gpu tests"]["result"] == "skipped"
    assert steps["tiny: build engines"] == {**steps["tiny: build engines"], "result": "skipped",
                                            "note": f"needs tensorrt: {NO_TRT}"}
    assert steps["tiny: restore on onnxruntime-cuda-fp16"]["note"] == f"needs onnxruntime-cuda: {NO_ORT}"
    for name in ("tiny: export + validate", "tiny: restore on torch-cuda-fp16", "tiny: restore on torch-cpu-fp32",
                 "tiny: compare restorations with the CPU's", "tiny: benchmark"):
        assert steps[name]["result"] == "ok", name
    # nothing that needs TensorRT ran (the benchmark names the folder, and skips its rows)
    assert not [c for c in ran if ("build" in c or "--engines" in c) and "interlcm.benchmarks.cli" not in c]
    bench = next(c for c in ran if "interlcm.benchmarks.cli" in c)
    assert bench[bench.index("--backend") + 1] == "torch"  # only the runtimes this GPU runs
    cpu = next(s for s in gpu_check.plan(tmp_path, quick=True, available=_probed()["backends"], detector="retinaface")
               if s.name == "tiny: restore on torch-cpu-fp32")
    assert cpu.env == {"CUDA_VISIBLE_DEVICES": ""}  # the reference really runs on the CPU
    report = (tmp_path / "report.md").read_text()
    assert f"| tensorrt | no | {NO_TRT} |" in report and "| torch-cuda | yes |  |" in report
    assert "| gpu tests | skipped | " in report and "all 13 tests skipped" in report


def test_a_failed_step_fails_the_check_and_shows_its_output(tmp_path):
    def runner(command, env):
        if "interlcm.export.cli" in command:
            return 1, "Traceback ...\nValueError: unet fp16 output out of tolerance\n"
        return 0, "1 passed in 1s\n"

    code = gpu_check.check(tmp_path, quick=True, install=False, dry_run=False, runner=runner,
                           probe_env=lambda: _probed(), log=lambda line: None)
    report = (tmp_path / "report.md").read_text()
    assert code == 1 and "| tiny: export + validate | FAILED |" in report
    assert "### tiny: export + validate failed" in report and "unet fp16 output out of tolerance" in report


def test_the_machines_cuda_torch_is_kept_and_a_cpu_one_replaced_by_the_drivers_wheel():
    assert [s.name for s in gpu_check.install_steps("13.0", torch_cuda=True)] == [
        "remove the CPU onnxruntime", "install .[dev,trt-cu13,gpu]"]
    torch_step = gpu_check.install_steps("12.8", torch_cuda=False)[0]
    assert torch_step.commands[0][-2:] == ["--index-url", "https://download.pytorch.org/whl/cu128"]
    assert gpu_check.install_steps(None, torch_cuda=False) == []  # no GPU: nothing to install for
    with pytest.raises(SystemExit, match="update the NVIDIA driver"):
        gpu_check.install_steps("12.2", torch_cuda=False)


@pytest.mark.parametrize("cuda, index", [(None, "cpu"), ("13.0", "cu130"), ("13.2", "cu130"), ("12.9", "cu128"),
                                         ("12.6", "cu126"), ("12.4", None)])
def test_the_torch_wheel_follows_the_drivers_cuda(cuda, index):
    assert gpu_check.torch_wheel(cuda) == (index and f"https://download.pytorch.org/whl/{index}")


def test_restorations_are_compared_with_the_cpus(tmp_path, capsys):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (32, 48, 3), dtype=np.uint8)
    for name, pixels in (("torch-cpu-fp32", image), ("torch-cuda-fp16", image ^ 1), ("tensorrt-fp16", 255 - image)):
        (tmp_path / name / "group_faces").mkdir(parents=True)
        Image.fromarray(pixels).save(tmp_path / name / "group.png")
        Image.fromarray(pixels).save(tmp_path / name / "group_faces" / "00.png")
    with pytest.raises(SystemExit, match=r"^tensorrt-fp16: outputs differ from the CPU's \(limit 35.0 dB\)"):
        gpu_check.compare_restorations(tmp_path)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "reference torch-cpu-fp32: 2 images (1 faces restored from the photo)"
    assert lines[2].startswith("torch-cuda-fp16: worst PSNR 48.") and "FAILED" in lines[1]


def test_the_dry_run_on_this_machine_says_what_is_missing_and_runs_nothing(tmp_path):
    """This machine's own probe (in this process: the script runs it in a subprocess of the checked Python)."""
    import torch

    logged = []
    assert gpu_check.check(tmp_path / "gc", quick=True, install=True, dry_run=True, probe_env=gpu_check.probe,
                           log=logged.append) == 0
    if not torch.cuda.is_available():
        assert logged[0].startswith("torch-cuda: not available: torch ") and "CPU" in logged[0]
        assert [line for line in logged if line.startswith("no NVIDIA GPU here")]
    assert [line for line in logged if line.startswith("tensorrt: ")]
    assert [line for line in logged if line.startswith("tiny: build engines (needs tensorrt): ")]
    assert not (tmp_path / "gc").exists()
