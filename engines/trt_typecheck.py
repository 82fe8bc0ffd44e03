"""Type-check the TensorRT code (`engines/trt_common.py`, `trt_build.py`, `trt.py`) against the `tensorrt-stubs` package.

TensorRT itself cannot be installed on a machine without CUDA, so mypy is how CI
checks the name and signature of every TensorRT call we make. The stubs as
published (10.13) are not usable by mypy directly:

- the `tensorrt` folder they install has no `py.typed` marker, so mypy skips it
  and silently types the whole module as `Any` ("missing library stubs");
- a few generated signatures are not valid Python (a parameter named `in`, a
  required parameter after optional ones), which stops mypy with syntax errors;
- `tensorrt/__init__.pyi` imports `tensorrt_libs`, which has no stub.

`prepare_stubs` copies the stubs into a folder with those lines repaired (only
plugin and layer APIs we never call are touched) and `run_mypy` points mypy at
it. Imports of other project modules are followed silently: their typing
against torch/diffusers is not what this check is about.

    python -m interlcm.engines.trt_typecheck [FILE ...]     # default: engines/trt_common.py, trt_build.py, trt.py
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_TARGETS = tuple(REPO / "engines" / f for f in ("trt_common.py", "trt_build.py", "trt.py"))
STUB_PACKAGES = ("tensorrt", "tensorrt_bindings")
SKIPPED = ("diffusers", "transformers", "huggingface_hub", "accelerate", "safetensors", "onnx", "onnxruntime")
_IN_PARAM = re.compile(r"\bin: ")
# `bool: DataType` at module level shadows the builtin in every `-> bool` of the bindings' stub
_BOOL_ALIAS = re.compile(r"^bool: ")
_DEF = re.compile(r"^(\s*)def (\w+)\((.*)\)(\s*->\s*.*)?:\s*$")


class StubsMissing(RuntimeError):
    pass


def stubs_root() -> Path:
    """site-packages folder holding the stubs' `tensorrt/__init__.pyi`."""
    spec = importlib.util.find_spec("tensorrt_stubs")
    if spec is None or spec.origin is None:
        raise StubsMissing("tensorrt-stubs is not installed: pip install --no-deps tensorrt-stubs")
    root = Path(spec.origin).parent.parent
    if not (root / "tensorrt" / "__init__.pyi").is_file():
        raise StubsMissing(f"tensorrt-stubs is installed but {root / 'tensorrt' / '__init__.pyi'} is missing")
    return root


def _repair_line(line: str) -> str:
    if _BOOL_ALIAS.match(line):
        return "# " + line  # trt.bool stays defined by tensorrt/__init__.pyi
    match = _DEF.match(line)
    if match is None:
        return line
    line = _IN_PARAM.sub("in_: ", line)
    try:
        ast.parse(line.strip() + " ...")
        return line
    except SyntaxError:
        indent, name, _, ret = match.groups()
        # e.g. add_scale_nd(..., power: Weights = None, channel_axis: int): keep the name, loosen the arguments
        return f"{indent}def {name}(self, *args: typing.Any, **kwargs: typing.Any){ret or ''}:\n"


def prepare_stubs(out: Path) -> Path:
    """Write repaired copies of the TensorRT stubs under `out`; returns `out` (use it as MYPYPATH)."""
    root = stubs_root()
    for package in STUB_PACKAGES:
        for src in sorted((root / package).rglob("*.pyi")):
            dst = out / src.relative_to(root)
            dst.parent.mkdir(parents=True, exist_ok=True)
            text = "".join(_repair_line(line) for line in src.read_text().splitlines(keepends=True))
            if "import typing" not in text:
                text = "import typing\n" + text
            ast.parse(text, filename=str(dst))  # the repaired stub must be valid Python
            dst.write_text(text)
    (out / "tensorrt_libs.pyi").write_text("")  # imported by tensorrt/__init__.pyi, no stub published
    return out


def run_mypy(targets: tuple[Path, ...] = DEFAULT_TARGETS, stub_dir: Path | None = None) -> tuple[int, str]:
    """Run mypy on `targets` against the repaired stubs; returns (exit code, report)."""
    stub_dir = prepare_stubs(stub_dir or REPO / ".cache" / "trt-stubs")
    env = {**os.environ, "MYPYPATH": str(stub_dir)}
    # follow_imports does not silence stubs: the generated ones have harmless errors of their own
    config = stub_dir / "mypy.ini"
    # and the heavy libraries behind the project's modules are skipped (typed Any): a cold run takes
    # seconds instead of minutes, and this check is about the TensorRT calls
    config.write_text(
        "[mypy]\nfollow_imports = silent\n"
        "[mypy-tensorrt.*,tensorrt_bindings.*]\nignore_errors = True\n"
        f"[mypy-{','.join(f'{m}.*' for m in SKIPPED)}]\nfollow_imports = skip\n"
        # export/ and engines/ install as interlcm.export / interlcm.engines through setuptools' package-dir
        # mapping, which mypy cannot resolve from the source tree: their names are typed Any here
        "[mypy-interlcm.export.*,interlcm.engines.*]\nignore_missing_imports = True\n"
    )
    cmd = [sys.executable, "-m", "mypy", "--config-file", str(config), "--cache-dir", str(stub_dir / "mypy-cache"),
           "--no-error-summary", *map(str, targets)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    return proc.returncode, (proc.stdout + proc.stderr).strip()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    code, report = run_mypy(tuple(Path(a).resolve() for a in args) or DEFAULT_TARGETS)
    print(report or "mypy: no issues in " + ", ".join(args or [str(t.relative_to(REPO)) for t in DEFAULT_TARGETS]))
    return code


if __name__ == "__main__":
    raise SystemExit(main())
