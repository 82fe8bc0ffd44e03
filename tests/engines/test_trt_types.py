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
