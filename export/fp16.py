"""fp16 graph surgery: an fp32 ONNX graph to fp16 weights and arithmetic, with fp32 islands and fp32 I/O.

onnxconverter-common does the conversion on the simplified fp32 graph, with a block
list per component (`Component.fp16_keep_fp32`: op types, or module-scope fragments of
node names). Not a half-precision torch trace: that makes *everything* fp16 (GroupNorm
statistics, softmax, the timestep embedding) with no way to mark fp32 islands, and CPU
half kernels are slow. Not ModelOpt AutoCast: it needs calibration data and a
CUDA-oriented install. The converter's quirks are repaired here: stale fp32 Casts
(`_fix_fp16_casts`), initializers shared between blocked and converted nodes
(`_untie_blocked_initializers`), fp16 graph outputs (`_fp32_outputs`) and no-op Casts
of the TorchScript graph (`_drop_noop_casts`). Models over 2 GB are converted as a
weight-less copy whose initializers are then cast from the fp32 data file
(`fp16_from_saved`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx.external_data_helper import ExternalDataInfo
from onnxconverter_common import float16

from interlcm.components import Component


def _fp16_block_lists(comp: Component, model: onnx.ModelProto) -> tuple[list[str], list[str]]:
    """(op types, node names) the converter must keep in fp32.

    Op types block every node of that type; name fragments (module scopes such as
    `time_proj/`) block just those nodes. The two must stay separate: blocking the
    *op types* of name-blocked nodes would keep every Mul, Exp and Cast of the
    graph in fp32 (and makes the converter loop on its own Casts).
    """
    ops = set(float16.DEFAULT_OP_BLOCK_LIST) | {k for k in comp.fp16_keep_fp32 if "/" not in k}
    fragments = tuple(k for k in comp.fp16_keep_fp32 if "/" in k)
    present = {n.op_type for n in model.graph.node}
    names = [n.name for n in model.graph.node if n.op_type not in ops and any(f in n.name for f in fragments)]
    return sorted(ops & present), names


def _blocked(op_types: list[str], names: list[str]) -> Callable[[onnx.NodeProto], bool]:
    op_set, name_set = set(op_types), set(names)
    return lambda n: n.op_type in op_set or n.name in name_set


def _untie_blocked_initializers(model: onnx.ModelProto, blocked: Callable[[onnx.NodeProto], bool]) -> None:
    """Give fp32-kept nodes their own copy of initializers they share with converted nodes.

    onnxslim merges equal constants (e.g. a zero conv bias and a zero LayerNorm
    bias); the converter then keeps the shared tensor fp32 and an fp16 Conv ends
    up with an fp32 bias, which ONNX Runtime rejects.
    """
    inits = {t.name: t for t in model.graph.initializer}
    users: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            if name in inits:
                users.setdefault(name, []).append(node)
    for name, nodes in users.items():
        if len({blocked(n) for n in nodes}) < 2:
            continue
        copy = onnx.TensorProto()
        copy.CopyFrom(inits[name])
        copy.name = f"{name}__fp32"
        model.graph.initializer.append(copy)
        for node in filter(blocked, nodes):
            for i, inp in enumerate(node.input):
                if inp == name:
                    node.input[i] = copy.name


def _fix_fp16_casts(model: onnx.ModelProto) -> int:
    """Make converted `Cast(to=float)` nodes cast to fp16 as their declared outputs say.

    The converter retypes a Cast's output to fp16 but keeps `to=FLOAT` (the bug the
    issue saw around the timestep); ONNX Runtime then rejects the graph.
    """
    fp16 = {
        v.name for v in model.graph.value_info if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    }
    fixed = 0
    for node in model.graph.node:
        if node.op_type == "Cast" and node.output[0] in fp16:
            for attr in node.attribute:
                if attr.name == "to" and attr.i == onnx.TensorProto.FLOAT:
                    attr.i = onnx.TensorProto.FLOAT16
                    fixed += 1
    return fixed


def _fp32_outputs(model: onnx.ModelProto) -> None:
    """Make every graph output fp32, as `keep_io_types` promises.

    When the last node is kept in fp32 (CLIP's final LayerNorm) the converter
    still casts its result to fp16 and declares the output fp16.
    """
    producers = {o: n for n in model.graph.node for o in n.output}
    for out in model.graph.output:
        tt = out.type.tensor_type
        if tt.elem_type != onnx.TensorProto.FLOAT16:
            continue
        tt.elem_type = onnx.TensorProto.FLOAT
        node = producers[out.name]
        if node.op_type == "Cast":
            del node.attribute[:]
            node.attribute.append(onnx.helper.make_attribute("to", onnx.TensorProto.FLOAT))
            continue
        half = f"{out.name}__fp16"
        for n in model.graph.node:
            for field in (n.input, n.output):
                for i, name in enumerate(field):
                    if name == out.name:
                        field[i] = half
        model.graph.node.append(onnx.helper.make_node("Cast", [half], [out.name], to=onnx.TensorProto.FLOAT))


def to_fp16(model: onnx.ModelProto, comp: Component) -> onnx.ModelProto:
    """fp16 weights and arithmetic, `comp.fp16_keep_fp32` left in fp32, fp32 inputs and outputs."""
    model = onnx.ModelProto.FromString(model.SerializeToString())  # a copy: the fp32 model is saved too
    del model.graph.value_info[:]  # onnxslim's annotations can be stale: the converter re-infers them
    op_types, names = _fp16_block_lists(comp, model)
    _untie_blocked_initializers(model, _blocked(op_types, names))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "values truncated to fp16 range" for tiny weights
        out = float16.convert_float_to_float16(
            model,
            keep_io_types=True,
            op_block_list=op_types,
            node_block_list=names,
        )
    _fix_fp16_casts(out)
    _fp32_outputs(out)
    return out


def _drop_noop_casts(model: onnx.ModelProto) -> None:
    """Remove Casts to the type their input already has (onnxslim does this on the small path).

    The TorchScript graph keeps `t_emb.to(sample.dtype)` as a float->float Cast right after the
    fp32-kept timestep embedding; the converter then casts to fp16 and back to fp32 there, and
    the UNet's time-embedding Add gets mixed types.
    """
    types = {
        v.name: v.type.tensor_type.elem_type
        for v in onnx.shape_inference.infer_shapes(model).graph.value_info
    }
    types.update({v.name: v.type.tensor_type.elem_type for v in model.graph.input})
    types.update({t.name: t.data_type for t in model.graph.initializer})
    outputs = {o.name for o in model.graph.output}
    drop = [
        n
        for n in model.graph.node
        if n.op_type == "Cast"
        and n.output[0] not in outputs
        and types.get(n.input[0]) == next(a.i for a in n.attribute if a.name == "to")
    ]
    rename = {n.output[0]: n.input[0] for n in drop}
    for n in model.graph.node:
        for i, name in enumerate(n.input):
            while name in rename:  # chains of dropped Casts
                name = rename[name]
            n.input[i] = name
    for n in drop:
        model.graph.node.remove(n)


def fp16_from_saved(comp: Component, fp32_path: Path) -> onnx.ModelProto:
    """fp16 conversion of a model over 2 GB, whose fp32 weights sit in external data.

    The converter needs ONNX shape inference, which serialises the model, and
    protobuf cannot hold more than 2 GB. So convert the graph of a weight-less
    copy (every initializer still points into the fp32 data file), then read each
    initializer from that file and cast it to the dtype the converter chose.
    """
    skeleton = onnx.load(str(fp32_path), load_external_data=False)
    _drop_noop_casts(skeleton)
    source_types = {t.name: t.data_type for t in skeleton.graph.initializer}
    half = to_fp16(skeleton, comp)
    for t in half.graph.initializer:
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = ExternalDataInfo(t)
        src_type = source_types[t.name.removesuffix("__fp32")]  # untied copies share their source's bytes
        src_dtype = onnx.helper.tensor_dtype_to_np_dtype(src_type)
        count = info.length // np.dtype(src_dtype).itemsize
        values = np.fromfile(
            fp32_path.parent / info.location, dtype=src_dtype, count=count, offset=info.offset
        )
        t.raw_data = values.astype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)).tobytes()
        del t.external_data[:]
        t.data_location = onnx.TensorProto.DEFAULT
    return half
