"""Does every node of a graph use an op the TensorRT ONNX parser supports?

The list lives in `trt_supported_ops.json`, copied from onnx-tensorrt's
`docs/operators.md` (its source and TensorRT version are recorded in the file).
This catches unsupported ops and opsets before anyone reaches a GPU; per-op
restrictions (Resize modes, initializer-only axes) are left to the parser.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import onnx

OPS_FILE = Path(__file__).with_name("trt_supported_ops.json")
DEFAULT_DOMAINS = ("", "ai.onnx")


@cache
def supported_ops() -> dict[str, Any]:
    return json.loads(OPS_FILE.read_text())


@dataclass(frozen=True)
class TrtReport:
    unsupported: dict[str, int]  # "op" or "domain::op" -> node count
    opset: int
    opset_ok: bool
    tensorrt: str  # TensorRT version the list describes

    @property
    def ok(self) -> bool:
        return self.opset_ok and not self.unsupported

    def describe(self) -> str:
        parts = [f"{op} x{n}" for op, n in sorted(self.unsupported.items())]
        if not self.opset_ok:
            parts.append(f"opset {self.opset} outside TensorRT {self.tensorrt}'s range")
        return ", ".join(parts) or "all ops supported"


def _nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node, including those in If/Loop/Scan bodies."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _nodes(attr.g)
            for g in attr.graphs:
                yield from _nodes(g)


def check_trt_support(model: onnx.ModelProto | str | Path) -> TrtReport:
    """Report the op types (and opset) of `model` the TensorRT ONNX parser does not support."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)  # graph only; weights not needed
    table = supported_ops()
    ops = table["supported"]
    opset = next((o.version for o in model.opset_import if o.domain in DEFAULT_DOMAINS), 0)
    lo, hi = table["opset_range"]
    bad: Counter[str] = Counter()
    for node in _nodes(model.graph):
        if node.domain not in DEFAULT_DOMAINS:
            bad[f"{node.domain}::{node.op_type}"] += 1  # custom op: needs a TensorRT plugin
        elif node.op_type not in ops:
            bad[node.op_type] += 1
    return TrtReport(dict(bad), opset, lo <= opset <= hi, table["tensorrt_version"])
