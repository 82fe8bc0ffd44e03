"""mypy checks every TensorRT call in engines/trt_common.py, trt_build.py and trt.py against the tensorrt-stubs package.

TensorRT cannot be installed without CUDA, so this is CI's check that each call's
name and signature exist in the TensorRT API (10.13 stubs). The stubs need
repairs before mypy can read them; see engines/trt_typecheck.py. A cold run takes
about 40 s (mypy analyses torch), a warm one a few seconds.
"""

from __future__ import annotations

import importlib.util

import pytest

from interlcm.engines import trt_typecheck


def _require_tools():
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy is not installed (pip install -e '.[dev]')")
    try:
        trt_typecheck.stubs_root()
    except trt_typecheck.StubsMissing as exc:
        pytest.skip(str(exc))


def test_trt_module_type_checks_against_the_tensorrt_stubs():
    _require_tools()
    code, report = trt_typecheck.run_mypy()
    assert code == 0, report


def test_the_check_catches_a_wrong_tensorrt_call(tmp_path):
    """A misspelt method and a missing argument must fail: the stubs are really in use, not `Any`."""
    _require_tools()
    targets = {t.name: t for t in trt_typecheck.DEFAULT_TARGETS}
    broken = []
    for name, before, after in (
        ("trt.py", "context.execute_async_v3(", "context.execute_async_v2("),
        ("trt_build.py", "config.set_timing_cache(cache, ignore_mismatch=False)", "config.set_timing_cache(cache)"),
    ):
        source = targets[name].read_text()
        assert before in source, (name, before)
        broken.append(tmp_path / f"broken_{name}")
        broken[-1].write_text(source.replace(before, after))
    code, report = trt_typecheck.run_mypy(tuple(broken))
    assert code != 0
    assert '"IExecutionContext" has no attribute "execute_async_v2"' in report
    assert 'Missing positional argument "ignore_mismatch" in call to "set_timing_cache"' in report


def _stub_classes(folder) -> dict[str, set[str]]:
    """Class name -> the names (methods, properties, attributes, enum members) the TensorRT stubs declare."""
    import ast

    tree = ast.parse((trt_typecheck.prepare_stubs(folder) / "tensorrt_bindings" / "tensorrt.pyi").read_text())
    out = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            names = set()
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    names.add(item.name)
                elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    names.add(item.target.id)
                elif isinstance(item, ast.Assign):
                    names.update(t.id for t in item.targets if isinstance(t, ast.Name))
            out[node.name] = names
    return out


def test_the_standin_speaks_only_tensorrts_api(tmp_path):
    """Every name the TensorRT stand-in offers the code under test is one TensorRT 10.13 has (its stubs), so
    code that passes on the stand-in calls nothing TensorRT lacks. Its own helpers are listed here."""
    _require_tools()
    from interlcm.engines import trt_standin as s

    stubs = _stub_classes(tmp_path)
    own = {"read", "output_shapes", "inputs", "outputs", "names", "model", "session", "payload", "profile",
           "component", "path", "flags", "standin", "engine", "strategy", "calls", "shapes", "addresses", "profiles",
           "timing_cache", "data", "device_memory"}  # the stand-in's state and helpers, not offered as TensorRT's
    pairs = {s.StandInEngine: "ICudaEngine", s.StandInContext: "IExecutionContext", s.StandInConfig: "IBuilderConfig",
             s.StandInNetwork: "INetworkDefinition", s.StandInProfile: "IOptimizationProfile",
             s.StandInTimingCache: "ITimingCache"}
    for cls, stub in pairs.items():
        offered = {n for n in vars(cls) if not n.startswith("_")} - own
        assert offered <= stubs[stub], (cls.__name__, sorted(offered - stubs[stub]))
    standin = s.StandInTensorRT()
    for name in ("Logger", "Builder", "OnnxParser", "Runtime", "Dims", "DataType", "TensorIOMode",
                 "ExecutionContextAllocationStrategy", "MemoryPoolType", "NetworkDefinitionCreationFlag"):
        assert name in stubs and hasattr(standin, name), name
    for enum in ("DataType", "TensorIOMode", "ExecutionContextAllocationStrategy", "MemoryPoolType",
                 "NetworkDefinitionCreationFlag"):
        members = set(vars(getattr(standin, enum)))
        assert members <= stubs[enum], (enum, sorted(members - stubs[enum]))
    for cls, stub in ((standin.Builder, "Builder"), (standin.OnnxParser, "OnnxParser"), (standin.Runtime, "Runtime")):
        offered = {n for n in vars(cls) if not n.startswith("_")}
        assert offered <= stubs[stub], (stub, sorted(offered - stubs[stub]))
