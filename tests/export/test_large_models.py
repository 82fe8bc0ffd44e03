"""The over-2 GB path (sd15 UNet: external data, no onnxslim), exercised on tiny.

Lowering the size threshold sends the tiny UNet down the code the 3.4 GB sd15
UNet takes, so CI checks it without a 3.4 GB export.
"""

from __future__ import annotations

import onnx
import pytest

from interlcm.export import onnx_export
from interlcm.export.manifest import load_manifest


def test_large_model_exports_fp32_with_external_data(tiny_models, tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_BYTES", 1)
    out = tmp_path / "onnx"
    onnx_export.export_all(tiny_models, out, ["unet"], ("fp32",), batch=(1, 1, 2), progress=False)
    entry = load_manifest(out).entry("unet", "fp32")
    assert entry.external_data and (out / entry.external_data).is_file()
    onnx.checker.check_model(str(out / entry.file))
    onnx_export.validate(out, tiny_models, components=["unet"], batches=[1, 2], echo=None)  # raises when off


def test_large_model_fp16_is_refused_with_the_fix(tiny_models, tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_BYTES", 1)
    out = tmp_path / "onnx"
    with pytest.raises(onnx_export.ExportError, match="drop --fp16 for --components unet"):
        onnx_export.export_all(tiny_models, out, ["unet"], ("fp32", "fp16"), batch=(1, 1, 2), progress=False)
    assert not list(out.glob("unet*"))  # nothing half-written
