"""One comparison with the torch reference, one table, one error.

Everything that proves a copy equal to torch uses this module: export validation
(each ONNX file against its torch module), `interlcm-trt check` and the parity
tests (a backend's sampler trace against torch's, stage by stage), the GPU tests.
Each comparison gets its limit from the component description that produced the
tensor (`Component.tol_fp32` / `tol_fp16`), every comparison is kept, and
`require` raises one `ParityError` whose message is the table of every failure.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from interlcm.components import BF16_OVER_FP16, BY_NAME, Tolerance
from interlcm.sampler import Trace


class ParityError(RuntimeError):
    """One or more outputs differ from torch beyond their tolerance; the message is the table."""


@dataclass(frozen=True)
class Diff:
    key: tuple[str, ...]  # what was compared, e.g. ("unet", "fp16", "eps", "B=2") or ("step1.eps",)
    max_abs: float
    max_rel: float  # max |ours - ref| / max |ref|
    cosine: float
    limit: float | None  # allowed max_abs = tol.rel * max|ref| + tol.abs; None: reported, not judged
    finite: bool = True
    psnr: float | None = None  # images only, dB over the [-1, 1] range

    @property
    def ok(self) -> bool:
        return self.finite and (self.limit is None or self.max_abs <= self.limit)

    @property
    def name(self) -> str:
        return " ".join(self.key)

    def row(self, width: int) -> str:
        psnr = f"{self.psnr:7.2f}" if self.psnr is not None else "      -"
        limit = f"{self.limit:10.3e}" if self.limit is not None else "         -"
        flag = "ok" if self.ok else ("NaN/inf" if not self.finite else "FAIL")
        return (f"{self.name:<{width}} {self.max_abs:10.3e} {self.max_rel:10.3e} {self.cosine:10.7f} "
                f"{psnr} {limit}  {flag}")


def tolerance(component: str, precision: str) -> Tolerance:
    """The limit a `precision` copy of `component` must meet against torch fp32 (components.py)."""
    comp = BY_NAME[component]
    if precision == "bf16":
        return Tolerance(comp.tol_fp16.rel * BF16_OVER_FP16, comp.tol_fp16.abs * BF16_OVER_FP16)
    return comp.tol_fp16 if precision == "fp16" else comp.tol_fp32


def compare(
    key: tuple[str, ...], ours: torch.Tensor, ref: torch.Tensor, tol: Tolerance | None, image: bool = False
) -> Diff:
    """Compare one tensor with its reference (any device or dtype; computed in float64 on the CPU)."""
    a, b = ours.detach().double().cpu(), ref.detach().double().cpu()
    if a.shape != b.shape:
        raise ParityError(f"{' '.join(key)}: shape {tuple(a.shape)}, the reference has {tuple(b.shape)}")
    finite = bool(torch.isfinite(a).all())
    diff = (a - b).abs()
    scale = b.abs().max().item() if b.numel() else 0.0
    max_abs = diff.max().item() if diff.numel() else 0.0
    cos = torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0).item() if a.numel() else 1.0
    psnr = None
    if image:
        mse = ((a.clamp(-1, 1) - b.clamp(-1, 1)) ** 2).mean().item()
        psnr = math.inf if mse == 0 else 10 * math.log10(4.0 / mse)  # peak-to-peak 2 -> peak^2 = 4
    limit = tol.rel * scale + tol.abs if tol is not None else None
    return Diff(key, max_abs, max_abs / max(scale, 1e-30), cos, limit, finite, psnr)


def compare_traces(ours: Trace, ref: Trace, precision: str | None = None) -> list[Diff]:
    """Every stage of the reference trace; with `precision`, each judged by its component's tolerance.

    The limit of a stage is that of the component whose output it is (`Trace.components`):
    measured on tiny, errors do not grow along the 3-step chain beyond the single-component
    errors (fp16 worst stage 1.2e-2 of max |ref| in the SE residuals, limit 3e-2; fp32 3e-6,
    limit 1e-4), because each LCM step re-anchors on the boundary condition.
    """
    missing = [stage for stage in ref if stage not in ours]
    if missing:
        raise ParityError(f"the backend's trace lacks stages {missing}")
    rows = []
    for stage in ref:
        component = ref.components.get(stage)
        tol = tolerance(component, precision) if precision is not None and component is not None else None
        rows.append(compare((stage,), ours[stage], ref[stage], tol, image=stage in ("decoded", "image")))
    return rows


def format_table(rows: Sequence[Diff]) -> str:
    width = max([len("compared"), *(len(r.name) for r in rows)])
    head = (f"{'compared':<{width}} {'max abs':>10} {'max rel':>10} {'cosine':>10} {'PSNR dB':>7} "
            f"{'limit':>10}  result")
    return "\n".join([head, "-" * len(head), *(r.row(width) for r in rows)])


def require(rows: Sequence[Diff], what: str, problems: Sequence[str] = ()) -> list[Diff]:
    """Return `rows` if every one is within its limit and there are no `problems`; else raise ParityError.

    The error lists every problem and every failing row (not just the first), so one run
    shows the whole picture.
    """
    failed = [r for r in rows if not r.ok]
    if failed or problems:
        lines = [f"{what}: {len(failed)} of {len(rows)} comparison(s) out of tolerance"
                 + (f", {len(problems)} interface problem(s)" if problems else ""), *problems]
        if failed:
            lines.append(format_table(failed))
        raise ParityError("\n".join(lines))
    return list(rows)
