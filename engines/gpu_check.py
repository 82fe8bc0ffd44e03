"""`make gpu-check`: everything a user can run on a GPU machine to prove the GPU path, in one command.

    python -m interlcm.engines.gpu_check --out gpu-check [--dry-run] [--skip-install] [--quick]

1. pick the extra from the driver's CUDA version (`nvidia-smi`) and install it
   (onnxruntime removed first: it and onnxruntime-gpu break each other);
2. export `tiny` and `sd15` with random weights (fp32 + fp16, with the fused `denoise_step`);
3. build the TensorRT engines;
4. run the `gpu`/`trt` tests and `interlcm-trt check` (thresholds from the component descriptions);
5. benchmark torch, ONNX Runtime CUDA and TensorRT (two-call and fused step) at batch 1 and 8;
6. write OUT/report.json and OUT/report.md, a table to paste into an issue.

Every step runs as its own process; a failing step is recorded with its output's tail and
the later steps still run (those that need its files fail in turn, saying so). The exit
code is 1 if any step failed.
"""

from __future__ import annotations

import json
import platform
import re
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import click

PRESETS = ("tiny", "sd15")
BATCHES = (1, 8)


@dataclass
class Step:
    name: str
    command: list[str]
    seconds: float = 0.0
    ok: bool | None = None  # None: not run (dry run)
    tail: str = ""  # last lines of its output


def driver_cuda() -> tuple[str | None, str]:
    """(major.minor CUDA version the driver supports, GPU name) from nvidia-smi; (None, reason) without one."""
    try:
        head = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=60).stdout
        name = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                              text=True, timeout=60).stdout.strip().splitlines()
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"nvidia-smi did not run ({exc})"
    match = re.search(r"CUDA Version:\s*(\d+)\.(\d+)", head)
    if not match:
        return None, "nvidia-smi shows no CUDA version"
    return f"{match.group(1)}.{match.group(2)}", (name[0] if name else "unknown GPU")


def extra_for(cuda: str) -> str:
    """The pyproject extra for a driver's CUDA version: CUDA 13 drivers run cu13 (and cu12) builds."""
    return "trt-cu13" if int(cuda.split(".")[0]) >= 13 else "trt-cu12"


def plan(out: Path, extra: str, install: bool, quick: bool) -> list[Step]:
    py = sys.executable
    cli = [py, "-m", "interlcm.engines.cli"]
    steps = []
    if install:
        steps.append(Step("uninstall cpu onnxruntime", [py, "-m", "pip", "uninstall", "-y", "onnxruntime"]))
        steps.append(Step(f"install .[{extra}]", [py, "-m", "pip", "install", "-e", f".[dev,{extra}]"]))
    presets = PRESETS[:1] if quick else PRESETS
    for preset in presets:
        onnx, engines = out / preset / "onnx", out / preset / "engines"
        steps.append(Step(f"export {preset}", [
            py, "-m", "interlcm.export.cli", "--preset", preset, "--fp16", "--batch", f"1:1:{max(BATCHES)}",
            "--components", "clip,visual_encoder,se_condition,spatial_encoder,unet,vae_encoder,vae_decoder,"
            "colorfix_wavelet,colorfix_adain,denoise_step", "--out", str(onnx),
        ]))
        steps.append(Step(f"build {preset}", [*cli, "build", "--onnx", str(onnx), "--out", str(engines)]))
        steps.append(Step(f"check {preset} tensorrt", [*cli, "check", "--engines", str(engines)]))
        steps.append(Step(f"check {preset} onnxruntime fp16", [*cli, "check", "--onnx", str(onnx), "--precision",
                                                                "fp16"]))
    steps.append(Step("gpu/trt tests", [py, "-m", "pytest", "-q", "-m", "gpu or trt", "-rs", "tests/engines"]))
    for preset in presets:
        steps.append(Step(f"benchmark {preset}", [
            py, "-m", "interlcm.engines.gpu_bench", "--onnx", str(out / preset / "onnx"),
            "--engines", str(out / preset / "engines"), *[a for b in BATCHES for a in ("--batch", str(b))],
            "--json", str(out / preset / "bench.json"),
        ]))
    return steps


def run(step: Step, cwd: Path) -> None:
    start = time.perf_counter()
    proc = subprocess.run(step.command, cwd=cwd, capture_output=True, text=True)
    step.seconds = round(time.perf_counter() - start, 1)
    step.ok = proc.returncode == 0
    step.tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])


def report_markdown(meta: dict, steps: list[Step], benches: dict[str, list[dict]]) -> str:
    lines = [f"# interlcm gpu-check, {meta['date']}", "",
             f"GPU: {meta['gpu']}, driver CUDA {meta['driver_cuda']}, extra `{meta['extra']}`, "
             f"python {meta['python']}", "", "| step | result | s |", "|---|---|---|"]
    lines += [f"| {s.name} | {'-' if s.ok is None else 'ok' if s.ok else 'FAILED'} | {s.seconds} |" for s in steps]
    for preset, rows in benches.items():
        lines += ["", f"## {preset}: seconds per restoration (median)", "",
                  "| backend | step | CUDA graph | batch | s / batch | faces / s |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['backend']} | {r['step']} | {r.get('graph', '-')} | {r['batch']} | {r['seconds']:.4f} | "
                  f"{r['batch'] / r['seconds']:.1f} |" if r.get("seconds") else
                  f"| {r['backend']} | {r['step']} | - | {r['batch']} | {r.get('error', '-')} | |" for r in rows]
    failed = [s for s in steps if s.ok is False]
    for s in failed:
        lines += ["", f"### {s.name} failed", "", "```", s.tail, "```"]
    return "\n".join(lines) + "\n"


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--out", type=click.Path(path_type=Path), default=Path("gpu-check"), show_default=True)
@click.option("--dry-run", is_flag=True, help="Print the steps, run nothing.")
@click.option("--skip-install", is_flag=True, help="Use the packages already installed.")
@click.option("--quick", is_flag=True, help="tiny only (minutes instead of the sd15 export and engine builds).")
def main(out: Path, dry_run: bool, skip_install: bool, quick: bool) -> None:
    """Install, export, build, test, check and benchmark the GPU path; write OUT/report.json and report.md."""
    from interlcm.files import atomic_write_text

    cuda, gpu = driver_cuda()
    if cuda is None and not dry_run:
        raise click.ClickException(f"no NVIDIA GPU to check: {gpu}")
    extra = extra_for(cuda) if cuda else "trt-cu12"
    out = out.resolve()
    steps = plan(out, extra, install=not skip_install, quick=quick)
    if dry_run:
        for s in steps:
            click.echo(f"{s.name}: {shlex.join(s.command)}")
        return
    repo = Path(__file__).resolve().parent.parent
    for s in steps:
        click.echo(f"{s.name} ...", nl=False)
        run(s, repo)
        click.echo(f" {'ok' if s.ok else 'FAILED'} ({s.seconds} s)")
    benches = {}
    for preset in PRESETS:
        path = out / preset / "bench.json"
        if path.is_file():
            benches[preset] = json.loads(path.read_text())["rows"]
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "gpu": gpu, "driver_cuda": cuda, "extra": extra,
            "python": platform.python_version(), "platform": platform.platform()}
    atomic_write_text(out / "report.json", json.dumps(
        {"meta": meta, "steps": [asdict(s) for s in steps], "benchmarks": benches}, indent=1))
    table = report_markdown(meta, steps, benches)
    atomic_write_text(out / "report.md", table)
    click.echo(table)
    if any(s.ok is False for s in steps):
        sys.exit(1)


if __name__ == "__main__":
    main()
