"""`make gpu-check`: run what a GPU user runs, on every backend this machine has, and write a report.

    python scripts/gpu_check.py --quick --no-install --out gpu-check   # what the environment has, tiny only
    python scripts/gpu_check.py --out gpu-check                        # install the GPU extras first; tiny + sd15
    python scripts/gpu_check.py --quick --dry-run                      # print the plan, run nothing (any machine)

Not part of the installed package: it installs packages and runs the project's commands (pytest,
interlcm-weights, interlcm-export, interlcm-trt, interlcm-bench) as subprocesses, as a user would.

1. install (not with --no-install): the machine's CUDA build of torch is kept (a CPU build is replaced by
   the CUDA wheel for the driver), the CPU onnxruntime removed, the project installed with the extra for
   the driver's CUDA (`trt-cu12` or `trt-cu13`, plus onnxruntime-gpu);
2. probe: which backends this environment runs (torch CUDA, ONNX Runtime CUDA, TensorRT), and why not;
3. the `gpu`/`trt` tests: "ok", "FAILED", or "skipped" when every test skipped (the reasons in the report);
4. per preset: random weights (face networks and Real-ESRGAN included), the ONNX export (fp32 + fp16: the
   chain, the fused denoise_step, RetinaFace, ParseNet; Real-ESRGAN in its own folder), each file validated
   against torch; TensorRT engines and `interlcm-trt check` where TensorRT and ONNX Runtime CUDA are;
5. `interlcm-trt restore` of a 1024x768 group photo and a 10-frame clip of faces on every available backend,
   each compared with the same command on the CPU (torch fp32);
6. `interlcm-bench`: each backend, fp32/fp16, batch 1 and 8, separate SE and UNet or the fused step, with
   and without the CUDA graph;
7. OUT/report.json and OUT/report.md (paste the latter into an issue). Exit code 1 if a step FAILED.

A step whose backend is missing is "skipped" with the reason; nothing here counts a skip as a pass.
`--quick` (tiny only) is sized for under 10 minutes on one H100/H200 with only torch CUDA present.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TORCH_PIN = "2.13.0"  # the Makefile's torch (TORCH)
# torch's CUDA wheels: (the oldest driver CUDA that runs it, its index); a driver runs wheels up to its CUDA
TORCH_CUDA_WHEELS = (("13.0", "cu130"), ("12.8", "cu128"), ("12.6", "cu126"))
TORCH_INDEX = "https://download.pytorch.org/whl/"
BACKENDS = ("torch-cuda", "onnxruntime-cuda", "tensorrt")
# the chain, the fused step and the face networks; Real-ESRGAN exports into a folder of its own
EXPORTED = ("clip,visual_encoder,se_condition,spatial_encoder,unet,vae_encoder,vae_decoder,colorfix_wavelet,"
            "colorfix_adain,denoise_step,retinaface_resnet50,parsenet")
MIN_PSNR = 35.0  # dB: a restored photo or frame against torch fp32 on the CPU (tiny fp16 measures ~50)


# --- what this machine has ---------------------------------------------------------------------------


def driver_cuda() -> tuple[str | None, str]:
    """(major.minor CUDA version the driver runs, GPU name) from nvidia-smi; (None, the reason) without one."""
    try:
        head = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=60).stdout
        name = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                              text=True, timeout=60).stdout.strip().splitlines()
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"nvidia-smi did not run ({type(exc).__name__}: {exc})"
    match = re.search(r"CUDA Version:\s*(\d+)\.(\d+)", head)
    if not match:
        return None, "nvidia-smi shows no CUDA version"
    return f"{match.group(1)}.{match.group(2)}", (name[0] if name else "unknown GPU")


def _version(cuda: str) -> tuple[int, ...]:
    return tuple(int(p) for p in cuda.split("."))


def torch_wheel(cuda: str | None) -> str | None:
    """The index of torch's CUDA wheel for a driver's CUDA version (the CPU wheel's without one); None if too old."""
    if cuda is None:
        return TORCH_INDEX + "cpu"
    for oldest, tag in TORCH_CUDA_WHEELS:
        if _version(cuda) >= _version(oldest):
            return TORCH_INDEX + tag
    return None


def extra_for(cuda: str) -> str:
    """The pyproject extra with TensorRT for a driver's CUDA version."""
    return "trt-cu13" if _version(cuda)[0] >= 13 else "trt-cu12"


def _package(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def probe() -> dict:
    """What this Python environment can run: package versions, and per backend None (runs) or why not."""
    packages = {n: _package(n) for n in ("interlcm", "torch", "onnxruntime", "onnxruntime-gpu", "tensorrt",
                                         "diffusers", "av", "onnxconverter-common", "onnxslim", "dlib-bin", "pytest")}
    cuda, gpu = driver_cuda()
    why: dict[str, str | None] = {}
    try:
        import torch

        if torch.cuda.is_available():
            why["torch-cuda"] = None
        elif torch.version.cuda is None:
            index = torch_wheel(cuda)
            why["torch-cuda"] = (f"torch {torch.__version__} is a CPU build: pip install torch --index-url {index}"
                                 if cuda and index else f"torch {torch.__version__} is a CPU build")
        else:
            why["torch-cuda"] = f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no CUDA device: {gpu}"
    except ImportError as exc:
        why["torch-cuda"] = f"torch does not import: {exc}"
    try:
        import onnxruntime

        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            why["onnxruntime-cuda"] = (f"onnxruntime {onnxruntime.__version__} has no CUDA provider: "
                                       "pip install -e '.[gpu]' (it replaces onnxruntime)")
        else:
            why["onnxruntime-cuda"] = None if cuda else f"onnxruntime-gpu is installed but {gpu}"
    except ImportError as exc:
        why["onnxruntime-cuda"] = f"onnxruntime does not import: {exc}"
    try:
        from interlcm.engines.trt import check_cuda

        ok, reason = check_cuda()
        why["tensorrt"] = None if ok else reason
    except ImportError as exc:
        why["tensorrt"] = f"the project does not import: {exc}"
    return {"gpu": gpu if cuda else None, "driver_cuda": cuda, "no_gpu": None if cuda else gpu,
            "python": platform.python_version(), "platform": platform.platform(), "packages": packages,
            "backends": why}


# --- the plan ----------------------------------------------------------------------------------------


@dataclass
class Step:
    name: str
    commands: list[list[str]]  # run in order, stopping at the first that fails
    needs: tuple[str, ...] = ()  # backends (BACKENDS) without which it is skipped, with their reason
    pytest: bool = False  # judged by pytest's summary: every test skipped -> "skipped", not "ok"
    env: dict[str, str] = field(default_factory=dict)
    result: str = "not run"  # "ok", "FAILED", "skipped", "not run" (dry run)
    seconds: float = 0.0
    note: str = ""  # one line: counts, the skip reason, what was compared
    tail: str = ""  # the end of its output, for the report

    @property
    def command_line(self) -> str:
        return " && ".join(shlex.join(c) for c in self.commands)


def _cli(py: str, module: str, *args: str) -> list[str]:
    return [py, "-m", module, *args]


def install_steps(cuda: str | None, torch_cuda: bool, python: str = sys.executable) -> list[Step]:
    """Keep a CUDA torch (a CPU one: the CUDA wheel for the driver), then the project with the GPU extras.
    Nothing without an NVIDIA driver (`cuda` None): there is nothing for them to run on."""
    if cuda is None:
        return []
    steps = []
    if not torch_cuda:
        index = torch_wheel(cuda)
        if index is None:
            raise SystemExit(f"the driver runs CUDA {cuda}, older than torch {TORCH_PIN}'s oldest CUDA build "
                             f"({TORCH_CUDA_WHEELS[-1][0]}): update the NVIDIA driver")
        steps.append(Step("install torch (CUDA build)", [[python, "-m", "pip", "install", f"torch=={TORCH_PIN}",
                                                          "--index-url", index]]))
    extra = extra_for(cuda)
    steps.append(Step("remove the CPU onnxruntime", [[python, "-m", "pip", "uninstall", "-y", "onnxruntime"]]))
    steps.append(Step(f"install .[dev,{extra},gpu]", [[python, "-m", "pip", "install", "-e", f".[dev,{extra},gpu]"]]))
    return steps


def plan(out: Path, *, quick: bool, available: dict[str, str | None], detector: str,
         python: str = sys.executable) -> list[Step]:
    """Every step after the installs; `available`: per backend None (runs here) or why not (probe())."""
    py, me = python, str(Path(__file__).resolve())
    photo, clip = out / "inputs" / "group.png", out / "inputs" / "clip.mp4"
    steps = [
        Step("gpu tests", [[py, "-m", "pytest", "-q", "-m", "gpu or trt", "-rs", "-p", "no:cacheprovider", "tests"]],
             pytest=True),
        Step("inputs: 1024x768 photo, 10-frame clip", [[py, me, "--write-inputs", str(out / "inputs")]]),
    ]
    # every core (the exporter's default is 2); --quick validates at one batch size besides the traced one
    validate = ["--threads", str(os.cpu_count() or 2), *(["--validate-batch", "3"] if quick else [])]
    for preset in ("tiny",) if quick else ("tiny", "sd15"):
        root = out / preset
        weights, onnx, engines = root / "weights", root / "onnx", root / "engines"
        steps += [
            Step(f"{preset}: random weights", [_cli(py, "interlcm.cli.weights", "init", "--preset", preset, "--seed",
                                                    "0", "--out", str(weights), "--force")]),
            Step(f"{preset}: export + validate", [
                _cli(py, "interlcm.export.cli", "--weights", str(weights), "--fp16", "--batch", "1:2:8",
                     "--components", EXPORTED, "--out", str(onnx), *validate),
                _cli(py, "interlcm.export.cli", "--weights", str(weights), "--fp16", "--batch", "1:1:4",
                     "--components", "realesrgan", "--out", str(root / "onnx-realesrgan"), *validate)]),
            Step(f"{preset}: build engines", [_cli(py, "interlcm.engines.cli", "build", "--onnx", str(onnx), "--out",
                                                   str(engines))], needs=("tensorrt",)),
            Step(f"{preset}: check tensorrt", [_cli(py, "interlcm.engines.cli", "check", "--engines", str(engines),
                                                    "--weights", str(weights))], needs=("tensorrt",)),
            Step(f"{preset}: check onnxruntime cuda fp16", [_cli(py, "interlcm.engines.cli", "check", "--onnx",
                                                                 str(onnx), "--precision", "fp16", "--weights",
                                                                 str(weights))], needs=("onnxruntime-cuda",)),
        ]
        runs = {  # output folder -> (flags, the backend it needs; None: the CPU reference)
            "torch-cpu-fp32": (["--backend", "torch"], None),
            "torch-cuda-fp32": (["--backend", "torch"], "torch-cuda"),
            "torch-cuda-fp16": (["--backend", "torch", "--precision", "fp16"], "torch-cuda"),
            "onnxruntime-cuda-fp16": (["--onnx", str(onnx), "--precision", "fp16"], "onnxruntime-cuda"),
            "tensorrt-fp16": (["--engines", str(engines)], "tensorrt"),
        }
        for name, (flags, needs) in runs.items():
            common = ["--weights", str(weights), "--batch", "4", "--seed", "1", "--out", str(root / "restored" / name),
                      *flags]
            steps.append(Step(f"{preset}: restore on {name}", [
                _cli(py, "interlcm.engines.cli", "restore", str(photo), "--detector", detector, "--save-faces",
                     *common),
                _cli(py, "interlcm.engines.cli", "restore", str(clip), "--aligned", "--save-frames", *common),
            ], needs=(needs,) if needs else (), env={} if needs else {"CUDA_VISIBLE_DEVICES": ""}))
        steps += [
            Step(f"{preset}: compare restorations with the CPU's", [[py, me, "--compare", str(root / "restored")]],
                 needs=("torch-cuda",)),
            Step(f"{preset}: benchmark", [_cli(
                py, "interlcm.benchmarks.cli", "--preset", preset, "--weights", str(weights), "--onnx", str(onnx),
                "--engines", str(engines), "--backend", bench_backends(available), "--precision", "fp32,fp16",
                "--batch", "1,8", "--step", "separate,fused", "--cuda-graph", "off,on", "--warmup", "2", "--runs", "3",
                "--json", str(root / "bench.json"))], needs=("torch-cuda",)),
        ]
    return steps


def bench_backends(available: dict[str, str | None]) -> str:
    """The benchmark's --backend: torch, and the exported runtimes this machine runs on its GPU."""
    return ",".join(["torch"] + [kind for kind, key in (("onnxruntime", "onnxruntime-cuda"), ("tensorrt", "tensorrt"))
                                 if available.get(key) is None])


# --- running it --------------------------------------------------------------------------------------

Runner = Callable[[list[str], dict[str, str]], tuple[int, str]]  # (command, env) -> (exit code, output)


def subprocess_runner(command: list[str], env: dict[str, str]) -> tuple[int, str]:
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env={**os.environ, **env})
    return proc.returncode, proc.stdout + proc.stderr


def pytest_counts(output: str) -> dict[str, int]:
    """pytest's closing counts, e.g. {"passed": 3, "skipped": 12}."""
    lines = [line for line in output.splitlines() if re.search(r"\b(passed|failed|skipped|error|deselected)\b", line)]
    last = lines[-1] if lines else ""
    return {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected|xfailed)", last)}


def judge(step: Step, code: int, output: str) -> tuple[str, str]:
    """(result, note) of a finished step."""
    if not step.pytest:
        return ("ok" if code == 0 else "FAILED"), ""
    counts = pytest_counts(output)
    summary = ", ".join(f"{n} {w}" for w, n in counts.items())
    if code == 5:
        return "skipped", "no test was collected"
    if code != 0:
        return "FAILED", summary
    if counts.get("skipped") and not counts.get("passed"):
        reasons = sorted({m.strip() for m in re.findall(r"^SKIPPED \[\d+\] [^:]+(?::\d+)?: (.*)$", output, re.M)})
        return "skipped", f"all {counts['skipped']} tests skipped: {'; '.join(reasons) or 'see the output'}"
    return "ok", summary


def run_steps(steps: list[Step], available: dict[str, str | None], runner: Runner = subprocess_runner,
              log: Callable[[str], None] = print, after: Callable[[], None] = lambda: None) -> None:
    """Run each step (or skip it, naming the missing backend and why); `after` runs after each one."""
    for step in steps:
        _run_one(step, available, runner, log)
        after()


def _run_one(step: Step, available: dict[str, str | None], runner: Runner, log: Callable[[str], None]) -> None:
    missing = [f"{b}: {available[b]}" for b in step.needs if available.get(b)]
    if missing:
        step.result, step.note = "skipped", "; ".join(f"needs {m}" for m in missing)
        log(f"{step.name}: skipped ({step.note})")
        return
    log(f"{step.name} ...")
    start, output, code = time.perf_counter(), "", 0
    for command in step.commands:
        code, said = runner(command, step.env)
        output += said
        if code != 0:
            break
    step.seconds = round(time.perf_counter() - start, 1)
    step.result, note = judge(step, code, output)
    step.note = step.note or note
    step.tail = "\n".join(output.strip().splitlines()[-30:])
    log(f"{step.name}: {step.result} ({step.seconds} s){' ' + step.note if step.note else ''}")


# --- inputs and comparisons (subcommands of this script, run in the checked environment) ------------


def write_inputs(folder: Path) -> None:
    """A 1024x768 photo with six heads and a 10-frame clip of a moving face crop (64 px, with audio)."""
    import numpy as np
    from PIL import Image

    from interlcm.testing import group_photo, write_clip

    folder.mkdir(parents=True, exist_ok=True)
    heads = ((0.15, 0.33, 180, 0), (0.4, 0.3, 150, 8), (0.7, 0.33, 180, -6), (0.2, 0.73, 160, 4),
             (0.5, 0.73, 180, 0), (0.8, 0.73, 150, -10))
    photo = group_photo((1024, 768), heads)
    Image.fromarray(photo).save(folder / "group.png")
    face = np.asarray(Image.fromarray(photo).resize((256, 192)))[4:68, 20:84]
    write_clip(folder / "clip.mp4", [np.roll(face, i, axis=1) for i in range(10)], fps=5)


def compare_restorations(root: Path) -> list[str]:
    """Every backend's outputs (photo, faces, frames) against the CPU reference's; lines of the report."""
    import numpy as np
    from PIL import Image

    ref = root / "torch-cpu-fp32"
    files = sorted(p.relative_to(ref) for p in ref.rglob("*.png"))
    if not files:
        raise SystemExit(f"no reference outputs in {ref}: the CPU restore step failed")
    faces = sum(1 for f in files if f.parts[0].endswith("_faces"))
    lines, bad = [f"reference {ref.name}: {len(files)} images ({faces} faces restored from the photo)"], []
    for other in sorted(p for p in root.iterdir() if p.is_dir() and p != ref):
        worst, missing = float("inf"), []
        for name in files:
            if not (other / name).is_file():
                missing.append(str(name))
                continue
            a = np.asarray(Image.open(other / name), dtype=np.float64)
            b = np.asarray(Image.open(ref / name), dtype=np.float64)
            mse = float(np.mean((a - b) ** 2)) if a.shape == b.shape else float("inf")
            worst = min(worst, 10 * np.log10(255.0**2 / max(mse, 1e-12)))
        ok = not missing and worst > MIN_PSNR
        lines.append(f"{other.name}: worst PSNR {worst:.1f} dB over {len(files)} images"
                     + (f", missing {', '.join(missing[:3])}" if missing else "") + ("" if ok else " FAILED"))
        if not ok:
            bad.append(other.name)
    print("\n".join(lines))
    if bad:
        raise SystemExit(f"{', '.join(bad)}: outputs differ from the CPU's (limit {MIN_PSNR} dB) or are missing")
    return lines


# --- the report --------------------------------------------------------------------------------------


def report_markdown(meta: dict, steps: list[Step], benches: dict[str, list[dict]]) -> str:
    lines = [f"# interlcm gpu-check, {meta['date']}", "",
             f"GPU: {meta['gpu'] or 'none (' + str(meta['no_gpu']) + ')'}, driver CUDA {meta['driver_cuda']}, "
             f"python {meta['python']}; " + ", ".join(f"{k} {v}" for k, v in meta["packages"].items() if v), "",
             "| backend | checked | why not |", "|---|---|---|"]
    lines += [f"| {b} | {'yes' if why is None else 'no'} | {why or ''} |" for b, why in meta["backends"].items()]
    lines += ["", "| step | result | s | note |", "|---|---|---|---|"]
    lines += [f"| {s.name} | {s.result} | {s.seconds} | {s.note} |" for s in steps]
    for preset, rows in benches.items():
        lines += ["", f"## {preset}: seconds per restored batch (median)", "",
                  "| row | step | CUDA graph | s / batch | faces / s |", "|---|---|---|---|---|"]
        for r in rows:
            e2e = (r.get("end_to_end") or {}).get("median")
            step = "fused" if r.get("fused") else "SE+UNet"
            if e2e:
                lines.append(f"| {r['label']} | {step} | {'yes' if r.get('graph') else '-'} | {e2e:.4f} | "
                             f"{r['batch'] / e2e:.1f} |")
            else:
                lines.append(f"| {r['label']} | {step} | {'yes' if r.get('graph') else '-'} | "
                             f"{r.get('skipped') or r.get('failed') or '-'} | |")
    for s in steps:
        if s.result == "FAILED":
            lines += ["", f"### {s.name} failed", "", f"`{s.command_line}`", "", "```", s.tail, "```"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("gpu-check"), help="report and work folder")
    parser.add_argument("--quick", action="store_true", help="tiny only (sd15 adds minutes of export and build)")
    parser.add_argument("--no-install", action="store_true", help="use this environment as it is (no network needed)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and what this machine has; run nothing")
    parser.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)  # JSON of probe(), for the parent
    parser.add_argument("--write-inputs", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--compare", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--torch-index", action="store_true",
                        help="print the index URL of the torch wheel for this machine's driver (the Makefile's)")
    args = parser.parse_args(argv)
    if args.probe:
        print(json.dumps(probe()))
        return 0
    if args.torch_index:
        print(torch_wheel(driver_cuda()[0]) or "")
        return 0
    if args.write_inputs:
        write_inputs(args.write_inputs)
        return 0
    if args.compare:
        compare_restorations(args.compare)
        return 0
    return check(args.out.resolve(), quick=args.quick, install=not args.no_install, dry_run=args.dry_run)


def _probe_here() -> dict:
    """probe() in the environment the steps run in (after an install, the installed one)."""
    code, output = subprocess_runner([sys.executable, str(Path(__file__).resolve()), "--probe"], {})
    if code != 0:
        raise SystemExit(f"the environment probe failed: {output.strip().splitlines()[-1:]}")
    return json.loads(output.strip().splitlines()[-1])


def check(out: Path, *, quick: bool, install: bool, dry_run: bool, runner: Runner = subprocess_runner,
          probe_env: Callable[[], dict] = _probe_here, log: Callable[[str], None] = print) -> int:
    """Install (if asked), probe, run every step, write the report; 1 if a step FAILED."""
    from datetime import datetime

    found = probe_env()
    installs = install_steps(found["driver_cuda"], found["backends"]["torch-cuda"] is None) if install else []
    if dry_run:
        for b, why in found["backends"].items():
            log(f"{b}: {'available' if why is None else 'not available: ' + why}")
    elif installs:
        run_steps(installs, {}, runner, log)
        found = probe_env()  # what the installs changed
    if found["driver_cuda"] is None:
        log(f"no NVIDIA GPU here ({found['no_gpu']}): every GPU step is skipped, saying why")
    detector = "dlib" if found["packages"].get("dlib-bin") else "retinaface"  # dlib finds the photo's faces offline
    steps = plan(out, quick=quick, available=found["backends"], detector=detector)
    if dry_run:
        for s in installs + steps:
            log(f"{s.name}{' (needs ' + ', '.join(s.needs) + ')' if s.needs else ''}: {s.command_line}")
        return 0
    meta = {**found, "date": datetime.now().strftime("%Y-%m-%d %H:%M"), "quick": quick, "install": install}

    def write_report() -> str:  # after every step: a run stopped by a time limit still leaves its report
        benches = {}
        for preset in ("tiny", "sd15"):
            path = out / preset / "bench.json"
            if path.is_file():
                benches[preset] = json.loads(path.read_text())["rows"]
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text(json.dumps({"meta": meta, "steps": [asdict(s) for s in installs + steps],
                                                     "benchmarks": benches}, indent=1))
        text = report_markdown(meta, installs + steps, benches)
        (out / "report.md").write_text(text)
        return text

    run_steps(steps, found["backends"], runner, log, after=write_report)
    log(write_report())
    return 1 if any(s.result == "FAILED" for s in installs + steps) else 0


if __name__ == "__main__":
    sys.exit(main())
