"""A benchmark report three ways: a terminal table, a JSON file with every number, a stacked-bar PNG."""

from __future__ import annotations

import json
from pathlib import Path

from interlcm.benchmarks.schema import BenchReport, RowResult
from interlcm.components import COMPONENTS

COMPONENT_ORDER = [c.name for c in COMPONENTS]
OUR_SE, RELEASE_SE = "spatial_encoder", "spatial_encoder_full"

# slack before the cores used by other processes count as taken from this benchmark's threads
SPARE_CORES_SLACK = 0.2


def competed(row: RowResult, logical_cores: int) -> bool:
    """True when other processes used cores this row's threads needed (oversubscription)."""
    if row.other_cores is None or row.threads is None:
        return False
    return row.other_cores.median + min(row.threads, logical_cores) > logical_cores + SPARE_CORES_SLACK


def _num(x: float | None, fmt: str = ".3f", empty: str = "-") -> str:
    return empty if x is None else format(x, fmt)


def _gflop(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}" if x >= 10 else f"{x:.3g}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def _table(header: list[str], lines: list[list[str]], left: int = 1) -> list[str]:
    """Columns padded to their widest cell; the first `left` columns left-aligned, the rest right."""
    widths = [max(len(r[i]) for r in [header, *lines]) for i in range(len(header))]

    def fmt(r: list[str]) -> str:
        return "  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()

    return [fmt(header), "  ".join("-" * w for w in widths), *(fmt(r) for r in lines)]


def _machine(report: BenchReport) -> str:
    env = report.environment
    gpus = ", ".join(g["name"] for g in env["gpus"]) or "no GPU"
    return (f"{env['cpu_model']}, {env['logical_cores']} logical cores, {env['ram_gb']} GB; {gpus}; "
            f"threads: torch {report.threads['torch']}, onnxruntime intra-op {report.threads['onnxruntime_intra_op']}")


def render(report: BenchReport) -> str:
    """The terminal report."""
    s = report.settings
    env = report.environment
    v = env["versions"]
    out = [
        f"InterLCM latency benchmark: {report.preset} preset, {report.resolution}x{report.resolution}, "
        f"{report.steps} network steps, colour fix {s['colorfix']}",
    ]
    if report.random_weights:
        out.append("RANDOM WEIGHTS: timings are real (the arithmetic does not depend on the values); outputs are noise")
    out += [
        f"weights: {report.weights}",
        f"machine: {_machine(report)}",
        "versions: " + ", ".join(f"{k} {v[k]}" for k in ("torch", "onnxruntime", "onnxruntime-gpu", "tensorrt",
                                                         "diffusers", "transformers", "python") if v.get(k)),
        f"date: {env['date']}; commit {env['git_commit']}{' (with local changes)' if env['git_dirty'] else ''}",
    ]
    for p in report.peaks:
        out.append(f"measured peak: {p.precision} matmul {p.n}^3 on {p.device}, threads: {p.threads}: "
                   f"{p.gflops:.1f} GFLOP/s (median {p.median_gflops:.1f})")
    if report.onnx:
        o = report.onnx
        out.append(f"onnx: {o['folder']}" + (f" (exported now in {o['export_s']:.0f} s)" if o["exported_now"] else ""))

    ran = [r for r in report.rows if r.ran]
    e2e_rows = [r for r in ran if r.end_to_end is not None]
    if e2e_rows:
        out += ["", f"end to end: seconds per restoration of one batch, over {s['runs']} runs after {s['warmup']} warm-up"]
        out += _table(
            ["row", "step", "graph", "median", "p90", "min", "s/image", "img/s", "load", "1st run", "TTFR", "peak RSS",
             "cores", "others", "GFLOP/img", "GFLOP/s", "of peak"],
            [[r.label, "fused" if r.fused else "SE+UNet", "yes" if r.graph else "-", _num(r.end_to_end.median), _num(r.end_to_end.p90), _num(r.end_to_end.min),
              _num(r.seconds_per_image), _num(r.images_per_s, ".2f"),
              _num(r.load_s, ".1f") + ("*" if r.load_shared_with else ""), _num(r.first_run_s, ".2f"),
              _num(r.time_to_first_result_s, ".1f"), f"{r.peak_rss_mb / 1024:.2f} GB", _num(r.process_cores.median, ".2f"), _num(r.other_cores.median, ".2f"),
              _gflop(r.gflop_per_restoration / r.batch if r.gflop_per_restoration else None),
              _num(r.gflops, ".1f"), _pct(r.fraction_of_peak)] for r in e2e_rows],
        )
        out.append("load*: opened once for an earlier row; TTFR = load + 1st run, what a fresh process waits. "
                   "cores: CPU-seconds per wall-second of this process; others: of the rest of the machine. "
                   "step: separate SE and UNet calls or the fused denoise_step; graph: the step chain replayed "
                   "as a CUDA graph (end to end only).")
    busy = [r for r in ran if competed(r, env["logical_cores"])]
    if busy:
        out.append(f"WARNING: other processes kept up to {max(r.other_cores.median for r in busy):.1f} cores busy during "
                   f"{', '.join(r.label for r in busy)}, more than the cores this benchmark's threads left free: "
                   "those timings are inflated; rerun on a quiet machine.")
    if e2e_rows:
        out += _cost_lines(report, e2e_rows)

    for r in ran:
        out += ["", f"{r.label}: {r.description}"]
        if r.graph:
            out.append("  CUDA graph: the steps are one replay, so no component is timed alone")
            continue
        lines = [[c.name, str(c.calls), _num(c.per_call.median * 1e3, ".1f"), _num(c.per_call.p90 * 1e3, ".1f"),
                  _num(c.per_call.min * 1e3, ".1f"), _num(c.per_restoration.median), _share(c.per_restoration.median, r),
                  _gflop(c.gflop_per_call), _num(c.gflops, ".1f"), _pct(c.fraction_of_peak)] for c in r.components]
        if r.host_other_s is not None:
            lines.append(["(sampler glue)", "", "", "", "", _num(r.host_other_s), _share(r.host_other_s, r), "", "", ""])
        out += _table(["component", "calls", "ms/call", "p90", "min", "s/restore", "share", "GFLOP/call", "GFLOP/s",
                       "of peak"], lines)

    out += _ratio_lines(report)
    skipped = [r for r in report.rows if r.skipped]
    if skipped:
        out += ["", "not run here:"]
        out += [f"  {r.label}: {r.skipped}" for r in skipped]
    failed = [r for r in report.rows if r.failed]
    if failed:
        out += ["", "FAILED (the rows above are complete; the run exits with an error):"]
        out += [f"  {r.label}: {r.failed}" for r in failed]
    out += ["", *_paper_lines(report)]
    return "\n".join(out)


def _cost_lines(report: BenchReport, rows: list[RowResult]) -> list[str]:
    """FLOPs per image for each way of running, and the time they need at the measured peak."""
    out = ["", "cost model: FLOPs counted by torch (matmul, convolution, attention; elementwise ops excluded), per image"]
    seen: dict[str, RowResult] = {}
    for r in rows:
        seen.setdefault(r.backend, r)
    first = next(iter(seen.values()))
    lines = [[c.name, _gflop(c.gflop_per_call / first.batch if c.gflop_per_call is not None else None),
              str(c.calls), _gflop(c.gflop_per_call * c.calls / first.batch if c.gflop_per_call is not None else None)]
             for c in first.components]
    out += ["  " + line for line in _table(["component", "GFLOP/call", "calls", "GFLOP/image"], lines)]
    for backend, r in seen.items():
        gflop = r.gflop_per_restoration / r.batch
        peak = next((p for p in report.peaks if (p.device, p.precision) == (r.device, r.precision)), None)
        floor = f"; at the measured {r.precision} peak of {peak.gflops:.1f} GFLOP/s that is at least " \
                f"{gflop / peak.gflops:.3g} s per image" if peak else ""
        out.append(f"  {backend}: {_gflop(gflop)} GFLOP per image{floor}")
    return out


def _share(seconds: float, row: RowResult) -> str:
    total = row.end_to_end.median if row.end_to_end else sum(c.per_restoration.median for c in row.components)
    return _pct(seconds / total) if total else "-"


def _ratio_lines(report: BenchReport) -> list[str]:
    out = []
    titles = {
        "backend": "backend vs torch (time ratio, same run; below 1 = faster than torch)",
        "release": "this project's torch path vs the release's (time ratio ours / release-style; below 1 = ours faster)",
        "batch": "batch scaling (seconds per image relative to the smallest batch)",
        "step": "fused step and CUDA graph vs separate SE and UNet calls (time ratio, same backend; below 1 = faster)",
    }
    for kind, title in titles.items():
        rs = [r for r in report.ratios if r.kind == kind]
        if not rs:
            continue
        out += ["", title]
        pairs: dict[tuple[str, str], list[str]] = {}
        for r in rs:
            pairs.setdefault((r.numerator, r.denominator), []).append(f"{r.what} {r.value:.2f}")
        out += [f"  {num} / {den}: " + ", ".join(parts) for (num, den), parts in pairs.items()]
    return out


def _paper_lines(report: BenchReport) -> list[str]:
    p = report.paper
    ours = [r for r in report.rows if r.ran and r.seconds_per_image is not None]
    ours = [r for r in ours if r.batch == min(o.batch for o in ours)]
    lines = [f"paper: {p['seconds_per_image']} s per {p['resolution']}x{p['resolution']} face on an {p['hardware']}, "
             f"{p['backend']} [{p['source']}] ({p['note']})"]
    cpu = report.environment["cpu_model"]
    gpus = ", ".join(g["name"] for g in report.environment["gpus"])
    for r in ours:
        where = gpus if r.device == "cuda" else f"{cpu}, threads: {r.threads}"
        lines.append(f"ours:  {r.seconds_per_image:.3f} s per {report.resolution}x{report.resolution} face, "
                     f"{r.label} on {where}" + (", random weights" if report.random_weights else ""))
    return lines


def _stack_position(name: str) -> float:
    """Stack in the components' declared order, the release-style SE next to ours."""
    if name == RELEASE_SE:
        return COMPONENT_ORDER.index(OUR_SE) + 0.5
    return COMPONENT_ORDER.index(name) if name in COMPONENT_ORDER else len(COMPONENT_ORDER)


def _colour_index(name: str) -> int:
    """tab20 comes in dark/light pairs: one pair per component, the light one for the release-style SE."""
    if name == RELEASE_SE:
        return 2 * COMPONENT_ORDER.index(OUR_SE) + 1
    return 2 * COMPONENT_ORDER.index(name) if name in COMPONENT_ORDER else 15  # grey for the sampler glue


def write_json(report: BenchReport, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report.to_dict(), indent=2, default=str) + "\n")


def plot(report: BenchReport, path: Path) -> None:
    """Stacked bars: seconds per image by component, one bar per row that ran."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report.rows if r.ran and r.components]
    names = {c.name for r in rows for c in r.components}
    segments = [*sorted(names, key=_stack_position), "(sampler glue)"]
    colours = plt.get_cmap("tab20").colors

    fig, ax = plt.subplots(figsize=(max(6.0, 1.4 * len(rows) + 3), 5.5))
    labels = [r.label for r in rows]
    bottoms = [0.0] * len(rows)
    for seg in segments:
        heights = []
        for r in rows:
            if seg == "(sampler glue)":
                secs = max(0.0, r.host_other_s or 0.0)
            else:
                secs = sum(c.per_restoration.median for c in r.components if c.name == seg)
            heights.append(secs / r.batch)
        if any(heights):
            ax.bar(labels, heights, bottom=bottoms, label=seg, color=colours[_colour_index(seg) % len(colours)])
            bottoms = [b + h for b, h in zip(bottoms, heights)]
    for x, (r, top) in enumerate(zip(rows, bottoms)):
        # the label is the measured end-to-end median; the stack sums medians of parts, so it can differ a little
        label = r.seconds_per_image if r.seconds_per_image is not None else top
        ax.annotate(f"{label:.3g} s", (x, top), ha="center", va="bottom", fontsize=8)
    ax.set_ylim(0, 1.1 * max(bottoms, default=1.0))
    weights = "random weights" if report.random_weights else "trained weights"
    ax.set_title(f"InterLCM {report.preset} {report.resolution}x{report.resolution}, {report.steps} steps, {weights}\n"
                 f"{_machine(report)}", fontsize=9)
    ax.set_ylabel("seconds per image (median)")
    ax.tick_params(axis="x", labelrotation=20, labelsize=8)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    p = report.paper
    fig.text(0.01, 0.01, f"paper (other hardware, not compared): {p['seconds_per_image']} s/face at "
             f"{p['resolution']} px on an {p['hardware']}", fontsize=7)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
