"""Prove every file of an export folder equal to torch: run it with ONNX Runtime on fresh inputs.

Inputs come from another seed than the export's, at batch sizes other than the traced
one, so a batch axis baked in at trace time fails here. Each output is judged by its
component's tolerance for the file's precision (`interlcm.components`), every failure
and every interface problem (names, dtypes, a fixed batch axis) is collected, and one
`ParityError` carries the table (engines/parity.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from interlcm.components import BY_NAME, Component
from interlcm.export.session import open_session
from interlcm.models.container import release
from interlcm.parity import Diff, ParityError, compare, format_table, require, tolerance

from .manifest import FileEntry, load_manifest
from .onnx_export import json_normal

if TYPE_CHECKING:
    from interlcm.models.container import InterLCMModels, ModelSource



def _check_io(comp: Component, session: Any) -> list[str]:
    """Names and dtypes of the ONNX file against the component description."""
    problems = []
    got_in = [i.name for i in session.get_inputs()]
    got_out = [o.name for o in session.get_outputs()]
    if got_in != list(comp.input_names):
        problems.append(f"inputs {got_in} != {list(comp.input_names)}")
    if got_out != list(comp.output_names):
        problems.append(f"outputs {got_out} != {list(comp.output_names)}")
    for t in (*session.get_inputs(), *session.get_outputs()):
        if t.type != "tensor(float)":
            problems.append(f"{t.name} is {t.type}, expected float32 at the boundary")
        if t.shape and not isinstance(t.shape[0], str):
            problems.append(f"{t.name} has a fixed batch axis {t.shape[0]}")
    return problems


def validate(
    out_dir: Path | str,
    models: InterLCMModels | ModelSource,
    components: Sequence[str] | None = None,
    precisions: Sequence[str] | None = None,
    batches: Sequence[int] | None = None,
    seed: int = 1234,
    echo: Callable[[str], None] | None = print,
    dims: Mapping[str, tuple[int, int, int]] | None = None,
) -> list[Diff]:
    """Run each listed file with ONNX Runtime (CPU) and compare every output with torch fp32.

    Rows are keyed (component, precision, output, "B=n"[, run-time sizes]). The default batch
    sizes are the profile's min and a size other than the traced `opt`; run-time-sized
    components (`dims`, as given to the export) are checked at their opt and min sizes for
    the same reason. Raises ParityError with the table of every failure when any output is
    off or any file's interface is wrong.
    """
    out_dir = Path(out_dir)
    manifest = load_manifest(out_dir)  # refuses tampered files
    cfg = models.config
    if manifest.preset != json_normal(cfg.to_dict()):
        raise ParityError(f"{out_dir} was exported for preset {manifest.preset['name']}, models are {cfg.name}")
    lo, opt, hi = manifest.batch
    batches = list(batches or sorted({lo, opt + 1 if opt < hi else max(lo, opt - 1)}))
    entries = [
        e for e in manifest.entries
        if (components is None or e.component in components) and (precisions is None or e.precision in precisions)
    ]
    if not entries:
        raise ParityError(f"nothing to validate in {out_dir} for {components or 'all'} / {precisions or 'all'}")
    rows: list[Diff] = []
    problems: list[str] = []
    for name in dict.fromkeys(e.component for e in entries):
        comp = BY_NAME[name].with_dims(dims or {})
        mine = [e for e in entries if e.component == name]
        _validate_component(comp, mine, out_dir, models, batches, seed, rows, problems)
    if echo:
        echo(format_table(rows))
    return require(rows, f"validation of {out_dir}", problems)


def _validate_component(
    comp: Component,
    entries: list[FileEntry],
    out_dir: Path,
    models: InterLCMModels | ModelSource,
    batches: list[int],
    seed: int,
    rows: list[Diff],
    problems: list[str],
) -> None:
    """torch first, on every input, then each file: the torch module and an ONNX Runtime session of a
    large component (sd15 UNet: 3.4 GB each) are never in memory together."""
    cfg = models.config
    sizes = [comp.sizes(w) for w in ("opt", "min")]
    sizes = [d for i, d in enumerate(sizes) if d not in sizes[:i]]  # {} for fixed-size components
    cases = []  # (label, batch, inputs, torch outputs)
    module = comp.build(models).eval()
    for b, at in ((b, at) for b in batches for at in sizes):
        inputs = comp.sample_inputs(cfg, b, seed=seed + b, dims=at or None)
        with torch.inference_mode():
            ref = module(*inputs.values())
        cases.append((" ".join(f"{k}={v}" for k, v in at.items()), b, inputs, ref if isinstance(ref, tuple) else (ref,)))
    del module, ref
    release(models)
    for e in entries:
        session = open_session(out_dir / e.file, threads=torch.get_num_threads())
        problems += [f"{comp.name} {e.precision}: {p}" for p in _check_io(comp, session)]
        for label, b, inputs, refs in cases:
            got = session.run(None, {k: v.numpy() for k, v in inputs.items()})
            for out_name, value, r in zip(comp.output_names, got, refs):
                key = (comp.name, e.precision, out_name, f"B={b}", *([label] if label else []))
                rows.append(compare(key, torch.from_numpy(value), r, tolerance(comp.name, e.precision)))
        del session
