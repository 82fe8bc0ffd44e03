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

from interlcm.components import BY_NAME, DEFAULT_COMPONENTS
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


@pytest.mark.parametrize("name", [*DEFAULT_COMPONENTS, "retinaface_mobile", "realesrgan"])
def test_every_component_runs_bound_at_other_batches_and_sizes(tiny_onnx_photo, tiny_models, name):
    """Each fp32 graph through the backend's bound path against torch: batch 5 (not the traced 2; over the
    export's 4: two runs), run-time dims other than the traced ones and not square."""
    from dataclasses import replace

    from interlcm.engines.ort import OrtBackend
    from interlcm.faces.networks import FACE_NETWORKS, random_network
    from interlcm.models.rrdbnet import build_random_upsampler
    from interlcm.parity import compare, tolerance

    component = BY_NAME[name]
    dims = {"height": 96, "width": 160, "tile_height": 24, "tile_width": 40}
    models = replace(tiny_models, faces={name: random_network(name, 10 + list(FACE_NETWORKS).index(name))}) \
        if name in FACE_NETWORKS else build_random_upsampler(tiny_models.config) if name == "realesrgan" else tiny_models
    backend = OrtBackend(tiny_onnx_photo, "fp32", provider="cpu", components=[name])
    inputs = component.sample_inputs(tiny_models.config, 5, seed=5, dims=dims)
    out, ref = backend.run(name, **inputs), TorchBackend(models).run(name, **inputs)
    require([compare((name, spec.name), out[spec.name], ref[spec.name], tolerance(name, "fp32"))
             for spec in component.outputs], f"{name} on ONNX Runtime vs torch")


def test_wrong_resolution_is_refused_before_running(tiny_onnx):
    from interlcm.engines.ort import OrtBackend

    backend = OrtBackend(tiny_onnx, "fp32", provider="cpu")
    with pytest.raises(ValueError, match="re-export"):
        backend.run("clip", image=torch.zeros(1, 3, 32, 32))


# --- IOBinding (the CUDA path), exercised on the CPU with the real binding API ---------------------


def test_io_binding_gives_the_plain_runs_results(tiny_onnx, tiny_models, lq_photo):
    """The backend binds torch tensors by address in and out, on the CPU as on CUDA (one code path); it must
    give bit-identical results to a plain `session.run`. (The old code returned OrtValues and called their
    missing `to_dlpack`, crashing on the first component.)"""
    from interlcm.engines.ort import OrtBackend

    bound = OrtBackend(tiny_onnx, "fp32", provider="cpu")
    inputs = BY_NAME["unet"].sample_inputs(tiny_models.config, 3, seed=7)  # 3: neither traced batch nor 1
    (expected,) = bound.session("unet").run(["eps"], {n: t.numpy() for n, t in inputs.items()})
    got = bound.run("unet", **inputs)
    assert got["eps"].dtype == torch.float32 and torch.equal(got["eps"], torch.from_numpy(expected))
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


def test_bound_buffers_are_fp32_at_the_shapes_the_inputs_imply(tiny_onnx, tiny_cfg):
    """Dtypes, shapes and addresses handed to ONNX Runtime: fp32 contiguous inputs (fp16 / strided ones
    converted), outputs preallocated at the shapes the inputs imply and returned as torch tensors."""
    from interlcm.engines.ort import OrtBackend

    backend = OrtBackend(tiny_onnx, "fp32", provider="cpu")
    unet = BY_NAME["unet"]
    inputs = unet.sample_inputs(tiny_cfg, 2)
    inputs["sample"] = inputs["sample"].half()  # converted to fp32
    inputs["context"] = inputs["context"].transpose(1, 2).contiguous().transpose(1, 2)  # strided
    session = backend._sessions["unet"] = _RecordingSession()
    out = backend.run("unet", **inputs)
    bound = session.binding
    assert list(bound.inputs) == list(unet.input_names) and list(bound.outputs) == list(unet.output_names)
    for name, (device, index, dtype, shape, _) in bound.inputs.items():
        assert (device, index, dtype, shape) == ("cpu", 0, np.float32, tuple(inputs[name].shape))
    assert bound.inputs["timestep"][4] == inputs["timestep"].data_ptr()  # already fp32 contiguous: no copy
    assert bound.inputs["sample"][4] != inputs["sample"].data_ptr()
    assert bound.outputs["eps"] == ("cpu", 0, np.float32, unet.output_shapes(tiny_cfg, 2)["eps"],
                                    out["eps"].data_ptr())
    assert out["eps"].dtype == torch.float32 and bool((out["eps"] == 1.0).all())


def test_gpu_providers_run_on_the_backends_own_stream():
    """Bug 3: handle 0 (torch's legacy default stream) means "no stream" to ONNX Runtime, which then runs on a
    stream of its own that waits for nothing: refused; a real stream's handle goes to every GPU provider."""
    from interlcm.engines.ort import provider_options
    from interlcm.export.session import PROVIDERS

    providers = [PROVIDERS["tensorrt"], PROVIDERS["cuda"], PROVIDERS["cpu"]]
    options = provider_options(providers, torch.device("cuda", 1), stream=0xABC)
    assert options[0] == {"device_id": "1", "user_compute_stream": str(0xABC)} and options[2] == {}
    assert options[1] == {**options[0], "cudnn_conv_algo_search": "EXHAUSTIVE"}
    # a detector sees every photo's size: cuDNN picks algorithms by heuristics, not by timing each size
    assert provider_options(providers, torch.device("cuda", 0), 7, dynamic=True)[1]["cudnn_conv_algo_search"] == \
        "HEURISTIC"
    with pytest.raises(ValueError, match="handle 0"):
        provider_options(providers, torch.device("cuda", 0), stream=0)


def test_onnx_runtime_is_ordered_with_the_callers_stream(tiny_onnx, tiny_cfg, monkeypatch):
    """Bug 3: ONNX Runtime runs on a stream of the backend's own (not the caller's legacy default stream, 0),
    which waits for the caller's stream before the run, and the caller's for it after."""
    from interlcm.engines import ort

    seen = {}
    real_open = ort.open_session

    def open_session(path, providers, threads, options):
        seen["options"] = options
        return real_open(path, providers, threads, options)

    monkeypatch.setattr(ort, "open_session", open_session)
    monkeypatch.setattr(ort, "provider_options", lambda providers, device, stream, dynamic=False: [
        {"user_compute_stream": str(stream)}])
    backend = ort.OrtBackend(tiny_onnx, "fp32", provider="cpu")
    backend.streams.log.clear()
    backend.run("clip", **BY_NAME["clip"].sample_inputs(tiny_cfg, 1))
    own, caller = backend.stream, backend.streams.current()
    assert own is not caller and own.cuda_stream != 0
    assert seen["options"] == [{"user_compute_stream": str(own.cuda_stream)}]
    assert list(backend.streams.log) == [("wait", own.name, caller.name), ("launch", own.name, "clip"),
                                         ("wait", caller.name, own.name)]


def test_onnx_runtime_splits_calls_to_the_exports_batch(tiny_onnx_batch2, tiny_cfg):
    """Bug 2 on the CPU as on a GPU: the export's profile ends at 2, so 5 faces are three runs, concatenated."""
    from interlcm.engines.ort import OrtBackend

    backend = OrtBackend(tiny_onnx_batch2, "fp32", provider="cpu")
    assert backend.max_batch == 2
    inputs = BY_NAME["vae_encoder"].sample_inputs(tiny_cfg, 5)
    backend.streams.log.clear()
    got = backend.run("vae_encoder", **inputs)["latent"]
    assert [c for c in backend.streams.log if c[0] == "launch"] == [("launch", backend.stream.name, "vae_encoder")] * 3
    one = torch.cat([backend.run("vae_encoder", image=inputs["image"][i : i + 1])["latent"] for i in range(5)])
    torch.testing.assert_close(got, one, rtol=0, atol=1e-5)


def test_onnx_runtime_failures_are_one_sentence(tiny_onnx, tmp_path):
    """ONNX Runtime's Fail/InvalidGraph/... are plain Exceptions, not RuntimeError: translated at the boundary,
    e.g. an ONNX file whose external data lies outside its folder."""
    import onnx

    from interlcm.export.session import OrtError, open_session

    folder = tmp_path / "onnx"
    folder.mkdir()
    onnx.save_model(onnx.load(tiny_onnx / "clip.fp32.onnx"), folder / "clip.onnx", save_as_external_data=True,
                    all_tensors_to_one_file=True, location="clip.data")  # the weights; small constants stay inside
    (folder / "clip.data").rename(tmp_path / "outside.data")  # the weights one folder up, named from inside
    model = onnx.load(folder / "clip.onnx", load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../outside.data"
    (folder / "clip.onnx").write_bytes(model.SerializeToString())  # onnx.save refuses to write such a file
    with pytest.raises(OrtError) as exc:
        open_session(folder / "clip.onnx")
    message = str(exc.value)
    assert message.startswith(f"ONNX Runtime cannot open {folder / 'clip.onnx'}: ") and "\n" not in message
    assert "outside.data" in message and message.endswith("re-export it (interlcm-export --force)")
    assert isinstance(exc.value, RuntimeError)


def test_a_failed_run_is_one_sentence(tiny_onnx, tiny_cfg, monkeypatch):
    """A run ONNX Runtime fails (here: an output bound at another shape) is one sentence naming the component."""
    from interlcm.engines import ort
    from interlcm.export.session import OrtError

    backend = ort.OrtBackend(tiny_onnx, "fp32", provider="cpu")
    monkeypatch.setattr(ort, "allocate_outputs", lambda *args: {"tokens": torch.empty(1, 5, 48)})
    with pytest.raises(OrtError) as exc:
        backend.run("clip", **BY_NAME["clip"].sample_inputs(tiny_cfg, 1))
    message = str(exc.value)
    assert message.startswith("ONNX Runtime failed running clip: ") and "\n" not in message
    assert "invalid dimensions for output: tokens" in message and message.endswith("(interlcm-export --force)")


def test_onnx_runtime_gpu_with_a_cpu_build_of_torch_says_so(monkeypatch):
    """onnxruntime-gpu on a GPU machine with torch's CPU build: tensors cannot be bound on the GPU. auto falls back
    to the CPU provider and says why; asking for CUDA is one sentence (was a traceback from torch.cuda)."""
    from interlcm.export import session

    monkeypatch.setattr(session, "cuda_device_count", lambda: (1, "1 CUDA device(s)"))
    monkeypatch.setattr(session.torch.cuda, "is_available", lambda: False)
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    providers, why = session.pick_providers("auto")
    assert providers == ["CPUExecutionProvider"] and "has no CUDA, so the CPU provider" in why
    with pytest.raises(RuntimeError, match="install a CUDA build of torch, or use --provider cpu"):
        session.pick_providers("cuda")


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
