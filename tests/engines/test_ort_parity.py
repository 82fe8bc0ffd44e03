"""ONNX Runtime backend vs the torch reference, end to end on the tiny preset.

Same input, same noise, every intermediate compared, so a failure names the stage.
Tolerances: each stage is judged by the tolerance of the component that produced it
(components.py, via engines/parity.py): fp32 1e-4 of max |torch| (measured 3e-6 along
the chain: float reassociation only), fp16 1e-2 (SE 3e-2; measured 1.2e-2 at worst,
the SE residuals); fp16 must also keep the output image above 35 dB PSNR (77 measured).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from interlcm.components import BY_NAME
from interlcm.engines.restorer import RestoreOptions, Restorer
from interlcm.parity import ParityError, compare_traces, format_table, require
from interlcm.sampler import Trace
from interlcm.torch_backend import TorchBackend

FP16_MIN_PSNR = 35.0  # dB, output image in [-1, 1]; measured 77 dB on tiny


def _traces(backend, tiny_models, lq, colorfix="wavelet", steps=3, precision="fp32"):
    options = RestoreOptions(steps=steps, seed=3, colorfix=colorfix)
    ours, ref = Trace(), Trace()
    out = Restorer(backend, options).restore(lq, ours)
    expected = Restorer(TorchBackend(tiny_models), options).restore(lq, ref)
    return out, expected, compare_traces(ours, ref, precision)


@pytest.mark.parametrize("colorfix, steps", [("wavelet", 3), ("adain", 1)])
def test_ort_fp32_matches_torch_at_every_stage(tiny_onnx, tiny_models, lq_photo, colorfix, steps):
    from interlcm.engines.ort import OrtBackend

    out, expected, rows = _traces(OrtBackend(tiny_onnx, "fp32", provider="cpu"), tiny_models, lq_photo, colorfix, steps)
    require(rows, "ORT fp32 vs torch")
    assert all(r.limit is not None for r in rows) and len(rows) == 4 + 3 * steps + 2
    assert expected.abs().max() > 0.1 and out.shape == lq_photo.shape


def test_ort_fp16_matches_torch_at_every_stage(tiny_onnx, tiny_models, lq_photo):
    from interlcm.engines.ort import OrtBackend

    _, _, rows = _traces(OrtBackend(tiny_onnx, "fp16", provider="cpu"), tiny_models, lq_photo, precision="fp16")
    require(rows, "ORT fp16 vs torch")
    image = next(r for r in rows if r.name == "image")
    assert image.psnr > FP16_MIN_PSNR, format_table(rows)


def test_parity_detects_a_wrong_backend(tiny_onnx, tiny_models, lq_photo):
    """The comparison must fail when a stage is wrong: perturb the UNet's eps."""
    from interlcm.engines.ort import OrtBackend

    class Broken(OrtBackend):
        def run(self, component, **inputs):
            out = super().run(component, **inputs)
            if component == "unet":
                out = {"eps": out["eps"] * 1.01}
            return out

    _, _, rows = _traces(Broken(tiny_onnx, "fp32", provider="cpu"), tiny_models, lq_photo)
    assert next(r.name for r in rows if not r.ok) == "step1.eps"
    with pytest.raises(ParityError, match=r"ORT vs torch: \d+ of 15 comparison\(s\) out of tolerance") as exc:
        require(rows, "ORT vs torch")
    assert "step1.eps" in str(exc.value) and "tokens" not in str(exc.value)  # the failures, not every row


def test_batch_other_than_export_batch(tiny_onnx, tiny_models):
    from interlcm.engines.ort import OrtBackend
    from interlcm.testing import photo

    lq = photo(tiny_models.config.resolution, batch=3)
    out, expected, rows = _traces(OrtBackend(tiny_onnx, "fp32", provider="cpu"), tiny_models, lq)
    assert out.shape[0] == 3
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-3)


def test_wrong_resolution_is_refused_before_running(tiny_onnx):
    from interlcm.engines.ort import OrtBackend

    backend = OrtBackend(tiny_onnx, "fp32", provider="cpu")
    with pytest.raises(ValueError, match="re-export"):
        backend.run("clip", image=torch.zeros(1, 3, 32, 32))


# --- IOBinding (the CUDA path), exercised on the CPU with the real binding API ---------------------


def test_io_binding_gives_the_plain_runs_results(tiny_onnx, tiny_models, lq_photo):
    """The bound path (used on CUDA) binds torch tensors by address in and out; on the CPU it must give
    bit-identical results to `session.run`. (The old code returned OrtValues and called their missing
    `to_dlpack`, crashing on the first component.)"""
    from interlcm.engines.ort import OrtBackend

    plain = OrtBackend(tiny_onnx, "fp32", provider="cpu")
    bound = OrtBackend(tiny_onnx, "fp32", provider="cpu", io_binding=True)
    inputs = BY_NAME["unet"].sample_inputs(tiny_models.config, 3, seed=7)  # 3: neither traced batch nor 1
    expected, got = plain.run("unet", **inputs), bound.run("unet", **inputs)
    assert got["eps"].dtype == torch.float32 and got["eps"].shape == expected["eps"].shape
    assert torch.equal(got["eps"], expected["eps"])
    out, _, rows = _traces(bound, tiny_models, lq_photo)
    require(rows, "bound ORT vs torch")


class _RecordingBinding:
    """Records what is bound; the session 'runs' by writing 1.0 through every bound output address."""

    def __init__(self):
        self.inputs, self.outputs = {}, {}

    def bind_input(self, name, device_type, device_id, element_type, shape, buffer_ptr):
        self.inputs[name] = (device_type, device_id, element_type, tuple(shape), buffer_ptr)

    def bind_output(self, name, device_type="cpu", device_id=0, element_type=None, shape=None, buffer_ptr=None):
        assert None not in (element_type, shape, buffer_ptr), f"{name}: output bound without a preallocated buffer"
        self.outputs[name] = (device_type, device_id, element_type, tuple(shape), buffer_ptr)


class _RecordingSession:
    def __init__(self):
        self.binding = _RecordingBinding()

    def io_binding(self):
        return self.binding

    def run_with_iobinding(self, binding):
        for _, _, dtype, shape, ptr in binding.outputs.values():
            assert dtype is np.float32
            n = int(np.prod(shape))
            np.ctypeslib.as_array((np.ctypeslib.ctypes.c_float * n).from_address(ptr))[:] = 1.0


def test_run_bound_binds_fp32_buffers_of_the_described_shapes(tiny_cfg):
    """Dtypes, shapes and addresses handed to ONNX Runtime: fp32 contiguous inputs (fp16 / strided ones
    converted), outputs preallocated at the component description's shapes and returned as torch tensors."""
    from interlcm.engines.ort import run_bound

    unet = BY_NAME["unet"]
    inputs = unet.sample_inputs(tiny_cfg, 2)
    inputs["sample"] = inputs["sample"].half()  # converted to fp32
    inputs["context"] = inputs["context"].transpose(1, 2).contiguous().transpose(1, 2)  # strided
    session = _RecordingSession()
    out = run_bound(session, unet, tiny_cfg, inputs, torch.device("cpu"))
    bound = session.binding
    assert list(bound.inputs) == list(unet.input_names) and list(bound.outputs) == list(unet.output_names)
    for name, (device, index, dtype, shape, _) in bound.inputs.items():
        assert (device, index, dtype, shape) == ("cpu", 0, np.float32, tuple(inputs[name].shape))
    assert bound.inputs["timestep"][4] == inputs["timestep"].data_ptr()  # already fp32 contiguous: no copy
    assert bound.inputs["sample"][4] != inputs["sample"].data_ptr()
    assert bound.outputs["eps"] == ("cpu", 0, np.float32, unet.output_shapes(tiny_cfg, 2)["eps"],
                                    out["eps"].data_ptr())
    assert out["eps"].dtype == torch.float32 and bool((out["eps"] == 1.0).all())


def test_gpu_providers_run_on_the_torch_stream():
    from interlcm.engines.ort import provider_options
    from interlcm.export.session import PROVIDERS

    providers = [PROVIDERS["tensorrt"], PROVIDERS["cuda"], PROVIDERS["cpu"]]
    options = provider_options(providers, torch.device("cuda", 1), stream=0xABC)
    assert options[:2] == [{"device_id": "1", "user_compute_stream": str(0xABC)}] * 2 and options[2] == {}


def test_onnxruntime_and_onnxruntime_gpu_together_are_refused(monkeypatch):
    from interlcm.export import session

    monkeypatch.setattr(session, "_installed_distributions", lambda: {"onnxruntime", "onnxruntime-gpu"})
    with pytest.raises(RuntimeError, match="both onnxruntime and onnxruntime-gpu are installed"):
        session.pick_providers("cpu")


# --- the fused step (SE + UNet in one `denoise_step` call) ---------------------------------------


def _restore(backend, tiny_models, lq, fused, steps=1):
    trace = Trace()
    options = RestoreOptions(steps=steps, seed=3, fused_step=fused)
    Restorer(backend, options).restore(lq, trace)
    return trace


def test_fused_step_matches_the_two_call_path_on_torch(tiny_models, lq_photo):
    """One `denoise_step` call per step instead of SE then UNet: same eps, latents and image."""
    calls = []

    class Counting(TorchBackend):
        def run(self, component, **inputs):
            calls.append(component)
            return super().run(component, **inputs)

    two_call = _restore(Counting(tiny_models), tiny_models, lq_photo, fused=False)
    fused = _restore(Counting(tiny_models), tiny_models, lq_photo, fused=True)
    assert calls.count("denoise_step") == 1 and calls.count("unet") == 1 and calls.count("spatial_encoder") == 1
    assert "step1.residuals_mid" not in fused and fused.components["step1.eps"] == "denoise_step"
    rows = require(compare_traces(two_call, fused, "fp32"), "two-call vs fused torch")
    assert len(rows) == 4 + 2 * 1 + 2


@pytest.fixture(scope="module")
def onnx_with_fused_step(tiny_onnx, tiny_models, tmp_path_factory):
    import shutil

    from interlcm.export.onnx_export import export_all

    out = tmp_path_factory.mktemp("onnx_fused") / "onnx"
    shutil.copytree(tiny_onnx, out)
    export_all(tiny_models, out, ["denoise_step"], ("fp32",), batch=(1, 2, 4), progress=False)
    return out


@pytest.mark.slow  # exports the fused graph (an SE + UNet trace): about 30 s here
def test_fused_step_matches_torch_on_onnxruntime(onnx_with_fused_step, tiny_models, lq_photo):
    from interlcm.engines.ort import OrtBackend

    backend = OrtBackend(onnx_with_fused_step, "fp32", provider="cpu")
    assert backend.has("denoise_step") and not OrtBackend(onnx_with_fused_step, "fp16", provider="cpu").has(
        "denoise_step")
    ours = _restore(backend, tiny_models, lq_photo, fused=True, steps=3)
    ref = _restore(TorchBackend(tiny_models), tiny_models, lq_photo, fused=False, steps=3)  # the two-call torch path
    fused_torch = _restore(TorchBackend(tiny_models), tiny_models, lq_photo, fused=True, steps=3)
    require(compare_traces(ours, fused_torch, "fp32"), "fused ORT vs fused torch")
    require(compare_traces(ref, ours, "fp32"), "two-call torch vs fused ORT")
