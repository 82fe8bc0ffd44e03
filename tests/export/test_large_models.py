"""The over-2 GB path (sd15 UNet: external data, no onnxslim, fp16 from a weight-less copy), on tiny.

Lowering the size threshold sends the tiny UNet down the code the 3.4 GB sd15
UNet takes, so CI checks it without a 3.4 GB export.
"""

from __future__ import annotations

import onnx
import pytest

from interlcm.export import onnx_export
from interlcm.export.manifest import load_manifest
from interlcm.export.validate import validate


def _no_slim(model):
    raise AssertionError("onnxslim ran on a model from SLIM_MAX_BYTES up (it holds ~7 copies of it)")


def test_a_model_too_large_for_onnxslim_is_not_slimmed(tiny_models, tmp_path, monkeypatch):
    """Between SLIM_MAX_BYTES and 2 GB (sd15 ControlNet, 1.44 GB): inline weights, the exporter's folding only,
    shapes from a weight-less copy; the file is written whole and checks against torch."""
    monkeypatch.setattr(onnx_export, "SLIM_MAX_BYTES", 1)
    monkeypatch.setattr(onnx_export.onnxslim, "slim", _no_slim)
    out = tmp_path / "onnx"
    onnx_export.export_all(tiny_models, out, ["spatial_encoder"], ("fp32",), batch=(1, 1, 2), progress=False)
    entry = load_manifest(out).entry("spatial_encoder", "fp32")
    assert entry.external_data is None and sorted(p.name for p in out.glob("*.onnx*")) == [entry.file]
    model = onnx.load(str(out / entry.file))
    assert len(model.graph.value_info) > 0  # shapes inferred
    validate(out, tiny_models, components=["spatial_encoder"], batches=[1, 2], echo=None)


# fp16 + fp32 covers both large writers (fp32 external data, fp16 cast from its file); fp16 alone
# only adds the temporary fp32 source (`_save_source`), so it runs in the slow tier
@pytest.mark.parametrize("precisions", [("fp16", "fp32"), pytest.param(("fp16",), marks=pytest.mark.slow)])
def test_large_model_path_exports_valid_files(tiny_models, tmp_path, monkeypatch, precisions):
    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_BYTES", 1)
    monkeypatch.setattr(onnx_export, "SLIM_MAX_BYTES", 1)
    monkeypatch.setattr(onnx_export.onnxslim, "slim", _no_slim)
    out = tmp_path / "onnx"
    onnx_export.export_all(tiny_models, out, ["unet"], precisions, batch=(1, 1, 2), progress=False)
    manifest = load_manifest(out)
    for precision in precisions:
        entry = manifest.entry("unet", precision)
        assert entry.external_data and (out / entry.external_data).is_file()
        onnx.checker.check_model(str(out / entry.file))
    if "fp16" in precisions:
        fp16 = onnx.load(str(out / manifest.entry("unet", "fp16").file))
        assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in fp16.graph.initializer)
    # raises ParityError with the table when any output is off, at the traced batch and another
    rows = validate(out, tiny_models, components=["unet"], batches=[1, 2], echo=None)
    assert {r.key[1] for r in rows} == set(precisions)
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("unet")) == sorted(
        n for p in precisions for n in (f"unet.{p}.onnx", f"unet.{p}.onnx.data")
    )
