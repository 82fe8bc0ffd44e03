"""engines/trt.py: the engine build, the engine cache and the TensorRT backend.

CPU tests run the real orchestration against the recording stand-in of
`tensorrt` in conftest.py (`fake_trt`, `fake_export`); they assert the calls we
make: the strongly typed network flag, one profile per engine with min/opt/max
from the component descriptions, the timing cache loaded and saved, a shape for
every input and an address for every I/O tensor before `execute_async_v3`, input
checks before running, and the cache's rebuild/refuse decisions. The tests marked
`trt` build and run real engines and skip without CUDA and TensorRT.
"""

from __future__ import annotations

import json
import sys

import pytest
import torch

from interlcm.components import DEFAULT_COMPONENTS, get_component
from interlcm.config import PresetConfig
from interlcm.engines import trt as trt_mod
from interlcm.engines.trt import EngineError, TrtBackend, build_engines, cache_key, cache_parts

# --- building -----------------------------------------------------------------------------------


def _engine_payload(path):
    return json.loads(path.read_bytes())


def test_build_makes_strongly_typed_engines_with_profiles_from_the_components(fake_trt, fake_export, tmp_path,
                                                                               tiny_cfg):
    out = tmp_path / "engines"
    built = build_engines(fake_export.root, out, opt_level=4, workspace=1 << 30)

    assert list(built) == list(DEFAULT_COMPONENTS)
    networks = [c for c in fake_trt.calls if c[0] == "create_network"]
    strongly_typed = 1 << int(fake_trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    assert networks and all(flags == strongly_typed for _, flags in networks)
    assert not [c for c in fake_trt.calls if c[0] == "set_flag"]  # no FP16 flag: precision comes from the ONNX
    assert ("set_memory_pool_limit", "WORKSPACE", 1 << 30) in fake_trt.calls
    parsed = [c[1] for c in fake_trt.calls if c[0] == "parse_from_file"]
    assert parsed == [str(fake_export.root / f"{n}.fp16.onnx") for n in DEFAULT_COMPONENTS]  # a path: external data

    for name, path in built.items():
        payload = _engine_payload(path)
        component = get_component(name)
        assert len(payload["profiles"]) == 1
        assert payload["profiles"][0] == {
            spec.name: [list(spec.shape(tiny_cfg, b)) for b in (1, 2, 4)] for spec in component.inputs
        }
        assert payload["opt_level"] == 4
        sidecar = json.loads((out / f"{name}.engine.json").read_text())
        assert sidecar["key"] == cache_key(sidecar["parts"])
        assert sidecar["parts"]["gpu"] == "NVIDIA L4 (sm_89)" and sidecar["parts"]["tensorrt"] == "10.13.0.35"
        assert sidecar["parts"]["onnx_sha256"] == fake_export.manifest.entry(name, "fp16").sha256
    index = json.loads((out / "engines.json").read_text())
    assert PresetConfig.from_dict(index["config"]) == tiny_cfg and index["batch"] == [1, 2, 4]
    assert set(index["engines"]) == set(DEFAULT_COMPONENTS)


OWNER = {"tensorrt": "10.13.0.35", "gpu": "NVIDIA L4 (sm_89)"}  # what fake_trt reports


def _timing_cache(path, data, owner=OWNER):
    path.write_bytes(data)
    (path.parent / f"{path.name}.json").write_text(json.dumps(owner))
    return path


def _loaded_caches(fake_trt):
    return [c[1] for c in fake_trt.calls if c[0] == "create_timing_cache"]


def test_timing_cache_is_loaded_and_saved(fake_trt, fake_export, tmp_path):
    cache = _timing_cache(tmp_path / "my.cache", b"seed")
    build_engines(fake_export.root, tmp_path / "engines", components=["clip", "unet"], timing_cache=cache)

    assert _loaded_caches(fake_trt) == [b"seed", b"seed[clip]"]  # from the file, then carried engine to engine
    assert ("set_timing_cache", False) in fake_trt.calls
    assert cache.read_bytes() == b"seed[clip][unet]"
    assert json.loads((tmp_path / "my.cache.json").read_text()) == OWNER


def test_default_timing_cache_lives_in_the_engine_folder(fake_trt, fake_export, tmp_path):
    build_engines(fake_export.root, tmp_path / "engines", components=["clip"])
    assert (tmp_path / "engines" / "timing.cache").read_bytes() == b"[clip]"


@pytest.mark.parametrize("owner", [None, {"tensorrt": "10.13.0.35", "gpu": "NVIDIA H100 (sm_90)"},
                                   {"tensorrt": "11.4.0.1", "gpu": "NVIDIA L4 (sm_89)"}])
def test_timing_cache_of_another_tensorrt_or_gpu_is_discarded_with_a_note(fake_trt, fake_export, tmp_path, caplog,
                                                                        owner):
    cache = _timing_cache(tmp_path / "t.cache", b"old", owner) if owner else tmp_path / "t.cache"
    if owner is None:
        cache.write_bytes(b"old")  # no sidecar: unknown origin
    build_engines(fake_export.root, tmp_path / "engines", components=["clip"], timing_cache=cache)
    assert _loaded_caches(fake_trt) == [b""]
    assert "discarded" in caplog.text
    assert cache.read_bytes() == b"[clip]" and json.loads((tmp_path / "t.cache.json").read_text()) == OWNER


@pytest.mark.parametrize("failure", ["unreadable_cache", "mismatched_cache"])
def test_timing_cache_tensorrt_rejects_is_replaced_never_fatal(fake_trt, fake_export, tmp_path, caplog, failure):
    """create_timing_cache -> None and set_timing_cache -> False both fall back to an empty cache."""
    cache = _timing_cache(tmp_path / "t.cache", b"damaged")
    setattr(fake_trt, failure, True)
    build_engines(fake_export.root, tmp_path / "engines", components=["clip"], timing_cache=cache)
    assert _loaded_caches(fake_trt) == [b"damaged", b""]
    assert "rejected the saved timing cache" in caplog.text
    assert cache.read_bytes() == b"[clip]"


def test_engines_build_when_no_timing_cache_can_be_made(fake_trt, fake_export, tmp_path, caplog):
    fake_trt.no_timing_cache = True
    built = build_engines(fake_export.root, tmp_path / "engines", components=["clip"])
    assert built["clip"].is_file() and "building without one" in caplog.text
    assert not (tmp_path / "engines" / "timing.cache").exists()


def test_engines_from_external_weights_are_rebuilt_when_the_weights_change(fake_trt, fake_export, tmp_path):
    """Models over 2 GB keep their weights in .onnx.data: a new .data with the same graph is a new engine."""
    out = tmp_path / "engines"
    fake_export.manifest.entry("unet", "fp16").external_sha256 = "1" * 64
    build_engines(fake_export.root, out, components=["unet"])
    fake_export.manifest.entry("unet", "fp16").external_sha256 = "2" * 64
    with pytest.raises(EngineError, match="unet.engine was built from other external weights"):
        build_engines(fake_export.root, out, components=["unet"], rebuild="never")


def test_up_to_date_engines_are_reused(fake_trt, fake_export, tmp_path):
    out = tmp_path / "engines"
    build_engines(fake_export.root, out)
    fake_trt.builds.clear()
    build_engines(fake_export.root, out)
    assert fake_trt.builds == []
    build_engines(fake_export.root, out, components=["vae_decoder"], rebuild="always")
    assert fake_trt.builds == ["vae_decoder"]


def test_stale_engines_are_rebuilt_with_auto(fake_trt, fake_export, tmp_path):
    out = tmp_path / "engines"
    build_engines(fake_export.root, out, components=["clip", "unet"])
    fake_trt.builds.clear()
    fake_trt.__version__ = "11.4.0.1"
    build_engines(fake_export.root, out, components=["clip", "unet"])
    assert fake_trt.builds == ["clip", "unet"]
    assert json.loads((out / "unet.engine.json").read_text())["parts"]["tensorrt"] == "11.4.0.1"


def test_stale_engines_are_refused_with_never_in_one_line(fake_trt, fake_export, tmp_path, monkeypatch):
    out = tmp_path / "engines"
    build_engines(fake_export.root, out, components=["unet"])
    fake_trt.builds.clear()
    fake_trt.__version__ = "11.4.0.1"
    monkeypatch.setattr(trt_mod, "gpu_identity", lambda device=None: "NVIDIA H100 (sm_90)")
    with pytest.raises(EngineError) as exc:
        build_engines(fake_export.root, out, components=["unet"], rebuild="never")
    message = str(exc.value)
    assert "\n" not in message
    assert message.startswith("unet.engine was built for TensorRT 10.13.0.35 / NVIDIA L4 (sm_89), "
                              "this machine has 11.4.0.1 / NVIDIA H100 (sm_90)")
    assert "interlcm-trt build" in message
    assert fake_trt.builds == []


def test_changed_onnx_rebuilds_only_that_engine(fake_trt, fake_export, tmp_path):
    out = tmp_path / "engines"
    build_engines(fake_export.root, out)
    fake_trt.builds.clear()
    fake_export.manifest.entry("vae_encoder", "fp16").sha256 = "0" * 64  # a re-export changed this file
    with pytest.raises(EngineError, match="vae_encoder.engine was built from another ONNX file"):
        build_engines(fake_export.root, out, rebuild="never")
    build_engines(fake_export.root, out)
    assert fake_trt.builds == ["vae_encoder"]


def test_changed_options_are_stale(fake_trt, fake_export, tmp_path):
    out = tmp_path / "engines"
    build_engines(fake_export.root, out, components=["clip"])
    with pytest.raises(EngineError, match=r"clip.engine was built with other options \(opt_level changed\)"):
        build_engines(fake_export.root, out, components=["clip"], opt_level=5, rebuild="never")


def test_missing_or_damaged_record_is_stale(fake_trt, fake_export, tmp_path):
    out = tmp_path / "engines"
    build_engines(fake_export.root, out, components=["clip"])
    sidecar = out / "clip.engine.json"
    record = json.loads(sidecar.read_text())
    record["parts"]["gpu"] = "NVIDIA L4 (sm_89) "  # hand-edited: the key no longer matches its parts
    sidecar.write_text(json.dumps(record))
    with pytest.raises(EngineError, match="clip.engine has no cache record"):
        build_engines(fake_export.root, out, components=["clip"], rebuild="never")
    (out / "clip.engine").unlink()
    with pytest.raises(EngineError, match="clip.engine does not exist"):
        build_engines(fake_export.root, out, components=["clip"], rebuild="never")


@pytest.mark.parametrize("part", ["onnx_sha256", "external_sha256", "tensorrt", "gpu", "opt_level", "workspace",
                                  "profile"])
def test_cache_key_covers_every_part(part):
    base = {"onnx_sha256": "a" * 64, "external_sha256": None, "tensorrt_version": "10.13.0.35",
            "gpu": "NVIDIA H100 80GB HBM3 (sm_90)"}
    options = {"opt_level": 3, "workspace": None, "profile": {"x": [(1, 4), (2, 4), (4, 4)]}}
    changed = {
        "onnx_sha256": ({"onnx_sha256": "b" * 64}, {}),
        "tensorrt": ({"tensorrt_version": "10.13.0.36"}, {}),
        "external_sha256": ({"external_sha256": "c" * 64}, {}),
        "gpu": ({"gpu": "NVIDIA H200 (sm_90)"}, {}),  # same compute capability, another GPU
        "opt_level": ({}, {"opt_level": 5}),
        "workspace": ({}, {"workspace": 1 << 30}),
        "profile": ({}, {"profile": {"x": [(1, 4), (2, 4), (8, 4)]}}),
    }[part]
    key = cache_key(cache_parts(**base, **options))
    assert cache_key(cache_parts(**{**base, **changed[0]}, **{**options, **changed[1]})) != key
    assert cache_key(cache_parts(**base, **options)) == key


def test_failed_build_leaves_no_partial_engine(fake_trt, fake_export, tmp_path):
    out = tmp_path / "engines"
    fake_trt.fail_build = True
    with pytest.raises(EngineError, match="unet: TensorRT failed to build an engine"):
        build_engines(fake_export.root, out, components=["unet"])
    assert not out.exists() or not any(out.iterdir())  # no engine, sidecar, index or temp file


def test_failed_rebuild_keeps_the_previous_engine_and_its_record(fake_trt, fake_export, tmp_path):
    out = tmp_path / "engines"
    build_engines(fake_export.root, out, components=["unet"])
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    fake_trt.fail_build = True
    with pytest.raises(EngineError):
        build_engines(fake_export.root, out, components=["unet"], rebuild="always")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_parse_errors_are_reported(fake_trt, fake_export, tmp_path):
    fake_trt.parse_errors = ["In node 12 (Conv): unsupported"]
    with pytest.raises(EngineError, match=r"clip: TensorRT cannot parse .*clip.fp16.onnx: In node 12"):
        build_engines(fake_export.root, tmp_path / "engines", components=["clip"])


def test_unknown_component_and_bad_arguments(fake_trt, fake_export, tmp_path):
    with pytest.raises(EngineError, match="no fp16 ONNX for denoise_step"):
        build_engines(fake_export.root, tmp_path, components=["denoise_step"])
    with pytest.raises(ValueError, match="rebuild must be"):
        build_engines(fake_export.root, tmp_path, rebuild="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="opt_level"):
        build_engines(fake_export.root, tmp_path, opt_level=7)


def test_onnx_with_other_tensor_names_is_refused(fake_trt, fake_export, tmp_path):
    path = fake_export.root / "clip.fp16.onnx"
    model = json.loads(path.read_text())
    model["outputs"] = {"last_hidden_state": model["outputs"]["tokens"]}
    path.write_text(json.dumps(model))
    with pytest.raises(EngineError, match="clip: the ONNX file clip.fp16.onnx has inputs"):
        build_engines(fake_export.root, tmp_path / "engines", components=["clip"])


def _real_manifest_export(write_fake_export, root, cfg, components):
    """The fake "ONNX" files under a real interlcm.export.manifest manifest.json."""
    from interlcm.components import get_component
    from interlcm.export.manifest import FORMAT, FileEntry, Manifest, TensorInfo
    from interlcm.identity import WeightsIdentity

    def infos(shapes):  # noqa: ANN001, ANN202 - the manifest's shapes: "batch", then the preset's
        return [TensorInfo(n, ["batch", *s[1:]], "float32") for n, s in shapes.items()]

    fake = write_fake_export(root, cfg, components)
    entries = [
        FileEntry(e.component, "fp16", e.file, e.sha256,
                  inputs=infos(get_component(e.component).input_shapes(cfg, 1)),
                  outputs=infos(get_component(e.component).output_shapes(cfg, 1)))
        for e in fake.entries
    ]
    identity = WeightsIdentity.random(cfg.name, 0)
    Manifest(FORMAT, cfg.to_dict(), cfg.resolution, 17, (1, 2, 4), identity.describe(), {}, entries, identity).save(root)


def test_build_reads_the_real_manifest_format(fake_trt, write_fake_export, tmp_path, tiny_cfg):
    root = tmp_path / "onnx"
    _real_manifest_export(write_fake_export, root, tiny_cfg, ["clip", "vae_decoder"])
    built = build_engines(root, tmp_path / "engines")
    assert list(built) == ["clip", "vae_decoder"]
    (root / "clip.fp16.onnx").write_text("{}")  # changed after export: the manifest's hash no longer matches
    with pytest.raises(EngineError, match="cannot use the export in .*clip.fp16.onnx does not match its sha256"):
        build_engines(root, tmp_path / "engines")


# --- running ------------------------------------------------------------------------------------


@pytest.fixture
def engines(fake_trt, fake_export, tmp_path):
    out = tmp_path / "engines"
    build_engines(fake_export.root, out)
    return out


def _aligned(inputs):
    """The inputs at 256-byte aligned addresses (torch's CUDA allocator gives that; its CPU one 64)."""
    return {n: trt_mod._aligned_copy(t) for n, t in inputs.items()}


def test_run_sets_every_shape_and_address_before_enqueueing(engines, fake_trt, tiny_cfg):
    unet = get_component("unet")
    inputs = _aligned(unet.sample_inputs(tiny_cfg, 2))
    with TrtBackend(engines, device="cpu") as backend:
        out = backend.run("unet", **inputs)
    context = next(c for c in fake_trt.contexts if c.engine.model["component"] == "unet")
    calls = context.calls
    run_at = calls.index(("execute_async_v3", backend.stream.cuda_stream if backend.stream else 0x5EED))
    before = calls[:run_at]
    assert {(c[1], c[2]) for c in before if c[0] == "set_input_shape"} == {
        (n, s) for n, s in unet.input_shapes(tiny_cfg, 2).items()
    }
    addressed = {c[1]: c[2] for c in before if c[0] == "set_tensor_address"}
    assert set(addressed) == {*unet.input_names, *unet.output_names}
    assert addressed["sample"] == inputs["sample"].data_ptr()
    assert addressed["eps"] == out["eps"].data_ptr()
    assert {n: tuple(t.shape) for n, t in out.items()} == unet.output_shapes(tiny_cfg, 2)
    assert out["eps"].dtype == torch.float32 and (out["eps"] == 0).all()  # written by the "engine"


def test_output_buffers_are_allocated_once_per_batch_and_reused(engines, tiny_cfg):
    clip = get_component("clip")
    with TrtBackend(engines, device="cpu") as backend:
        first = backend.run("clip", **clip.sample_inputs(tiny_cfg, 2))["tokens"]
        first.fill_(7)
        second = backend.run("clip", **clip.sample_inputs(tiny_cfg, 2))["tokens"]
        other = backend.run("clip", **clip.sample_inputs(tiny_cfg, 1))["tokens"]
        assert second.data_ptr() == first.data_ptr() and (first == 0).all()  # same buffer, overwritten
        assert other.data_ptr() != first.data_ptr() and other.shape[0] == 1
    with TrtBackend(engines, device="cpu", copy_outputs=True) as backend:
        a = backend.run("clip", **clip.sample_inputs(tiny_cfg, 2))["tokens"]
        b = backend.run("clip", **clip.sample_inputs(tiny_cfg, 2))["tokens"]
        assert a.data_ptr() != b.data_ptr()


def test_non_contiguous_inputs_are_made_contiguous(engines, fake_trt, tiny_cfg):
    vae = get_component("vae_decoder")
    latent = vae.sample_inputs(tiny_cfg, 2)["latent"]
    strided = latent.transpose(2, 3).contiguous().transpose(2, 3)  # same values, other strides
    with TrtBackend(engines, device="cpu") as backend:
        backend.run("vae_decoder", latent=strided)
    context = next(c for c in fake_trt.contexts if c.engine.model["component"] == "vae_decoder")
    address = next(c[2] for c in context.calls if c[:2] == ("set_tensor_address", "latent"))
    assert address != strided.data_ptr()


def test_wrong_inputs_fail_before_running_with_every_problem_listed(engines, fake_trt, tiny_cfg):
    unet = get_component("unet")
    inputs = unet.sample_inputs(tiny_cfg, 2)
    inputs["sample"] = inputs["sample"].half()  # wrong dtype
    inputs["context"] = inputs["context"][:, :10]  # wrong shape
    del inputs["guidance"]  # missing
    inputs["timesteps"] = inputs.pop("timestep")  # misspelt
    with TrtBackend(engines, device="cpu") as backend:
        with pytest.raises(EngineError) as exc:
            backend.run("unet", **inputs)
    message = str(exc.value)
    assert message.startswith("unet: 5 input problem(s), nothing was run")
    for expected in ("sample", "float16", "context", "(2, 10, 48)", "guidance", "missing", "timesteps",
                     "not an input", "timestep "):
        assert expected in message, expected
    assert not any(c[0] == "execute_async_v3" for ctx in fake_trt.contexts for c in ctx.calls)


def test_batch_outside_the_profile_is_refused(engines, tiny_cfg):
    clip = get_component("clip")
    with TrtBackend(engines, device="cpu") as backend:
        with pytest.raises(EngineError, match=r"B in 1..4 on cpu +got float32 \(8, 3"):
            backend.run("clip", **clip.sample_inputs(tiny_cfg, 8))


def test_extra_inputs_and_mixed_batch_sizes_are_refused(engines, tiny_cfg):
    se_condition = get_component("se_condition")
    with TrtBackend(engines, device="cpu") as backend:
        with pytest.raises(EngineError, match="extra +expected not an input"):
            backend.run("se_condition", image=se_condition.sample_inputs(tiny_cfg, 2)["image"], extra=torch.zeros(1))
        colorfix = get_component("colorfix_wavelet")
        inputs = colorfix.sample_inputs(tiny_cfg, 2)
        inputs["reference"] = inputs["reference"][:1]
        with pytest.raises(EngineError, match="one batch size for all inputs"):
            backend.run("colorfix_wavelet", **inputs)


def test_contexts_share_one_activation_buffer(engines, fake_trt):
    with TrtBackend(engines, device="cpu") as backend:
        contexts = fake_trt.contexts
        assert {c.strategy.name for c in contexts} == {"USER_MANAGED"}
        sizes = [c.engine.get_device_memory_size_for_profile_v2(0) for c in contexts]
        assert {c.device_memory for c in contexts} == {(backend._shared_memory.data_ptr(), max(sizes))}
    assert backend._shared_memory is None and not backend._loaded  # released on exit


def test_without_sharing_contexts_allocate_their_own(engines, fake_trt):
    with TrtBackend(engines, device="cpu", share_memory=False):
        assert all(c.strategy is None and c.device_memory is None for c in fake_trt.contexts)


def test_backend_refuses_engines_from_another_tensorrt(engines, fake_trt):
    fake_trt.__version__ = "11.4.0.1"
    with pytest.raises(EngineError) as exc:
        TrtBackend(engines, device="cpu").__enter__()
    assert "\n" not in str(exc.value)
    assert str(exc.value).startswith("clip.engine was built for TensorRT 10.13.0.35 / NVIDIA L4 (sm_89), "
                                     "this machine has 11.4.0.1")


def test_backend_checks_the_export_when_given(engines, fake_export):
    fake_export.manifest.entry("unet", "fp16").sha256 = "f" * 64
    with TrtBackend(engines, device="cpu"):
        pass  # without onnx_dir only the machine is checked
    with pytest.raises(EngineError, match="unet.engine was built from another ONNX file"):
        TrtBackend(engines, device="cpu", onnx_dir=fake_export.root).__enter__()


def test_backend_refuses_a_damaged_engine(engines):
    path = engines / "vae_decoder.engine"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(EngineError, match="vae_decoder.engine does not match its cache record"):
        TrtBackend(engines, device="cpu").__enter__()


def test_backend_errors_name_the_fix(engines, tmp_path, tiny_cfg):
    with pytest.raises(EngineError, match="has no engines.json: build engines there with `interlcm-trt build`"):
        TrtBackend(tmp_path / "nowhere")
    backend = TrtBackend(engines, device="cpu", components=["clip"])
    with pytest.raises(EngineError, match="not open: use `with TrtBackend"):
        backend.run("clip", image=torch.zeros(1, 3, 64, 64))
    with backend:
        with pytest.raises(EngineError, match=r"no engine for 'unet' is loaded \(loaded: clip\)"):
            backend.run("unet")
    with pytest.raises(EngineError, match="has no engine for denoise_step"):
        TrtBackend(engines, device="cpu", components=["denoise_step"]).__enter__()
    assert TrtBackend(engines).config == tiny_cfg


def test_the_sampler_runs_on_the_backend(engines, tiny_cfg):
    """The whole loop through the fake engines: names, shapes and the reuse of output buffers fit the sampler."""
    from interlcm.sampler import SamplerSettings, Trace, restore
    from interlcm.schedule import make_noise, make_schedule

    settings = SamplerSettings(make_schedule(tiny_cfg.scheduler, 4), guidance_dim=tiny_cfg.guidance_dim)
    lq = torch.rand(2, 3, tiny_cfg.resolution, tiny_cfg.resolution) * 2 - 1
    noise = make_noise(0, 4, 2, tiny_cfg.latent_channels, (tiny_cfg.latent_size, tiny_cfg.latent_size))
    trace = Trace()
    with TrtBackend(engines, device="cpu") as backend:
        image = restore(backend, lq, noise, settings, trace)
    assert image.shape == lq.shape and "step3.eps" in trace


# --- the machine --------------------------------------------------------------------------------


def test_stub_only_tensorrt_is_reported_as_not_installed(monkeypatch):
    from types import SimpleNamespace

    monkeypatch.setattr(trt_mod, "trt", None)
    monkeypatch.setitem(sys.modules, "tensorrt", SimpleNamespace())  # what importing the stubs' folder gives
    with pytest.raises(EngineError, match=r"tensorrt is not installed \(only its type stubs are\): pip install"):
        trt_mod._require_trt()
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import raises ImportError
    with pytest.raises(EngineError, match=r"tensorrt does not import \((ModuleNotFound|Import)Error"):
        trt_mod._require_trt()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU answer")
def test_check_cuda_says_why_not(monkeypatch):
    monkeypatch.setattr(trt_mod, "trt", None)
    ok, why = trt_mod.check_cuda()
    assert not ok and why.startswith("no CUDA device")
    assert "tensorrt" in why


# --- real engines (GPU) -------------------------------------------------------------------------


@pytest.mark.trt
@pytest.mark.gpu
@pytest.mark.parametrize("name", DEFAULT_COMPONENTS)
def test_engine_matches_torch_per_component(real_engines, tiny_models, name):
    """Each fp16 engine against torch fp32 at a batch other than the profile's opt, within its fp16 tolerance."""
    from interlcm.parity import compare, require, tolerance

    component = get_component(name)
    inputs = component.sample_inputs(tiny_models.config, 3)
    with torch.no_grad():
        ref = component.build(tiny_models).eval()(*inputs.values())
    ref = ref if isinstance(ref, (tuple, list)) else (ref,)
    with TrtBackend(real_engines) as backend:
        out = backend.run(name, **{k: v.cuda() for k, v in inputs.items()})
        backend.synchronize()
        rows = [compare((name, spec.name), out[spec.name], expected, tolerance(name, "fp16"))
                for spec, expected in zip(component.outputs, ref)]
    require(rows, f"{name} engine vs torch")


@pytest.mark.trt
@pytest.mark.gpu
def test_engines_restore_like_torch(real_engines, tiny_models, lq_photo):
    """Every stage of the sampler within its component's fp16 tolerance, and the image above 35 dB."""
    from interlcm.parity import compare_traces, format_table, require
    from interlcm.sampler import SamplerSettings, Trace, restore
    from interlcm.schedule import make_noise, make_schedule
    from interlcm.torch_backend import TorchBackend

    cfg = tiny_models.config
    settings = SamplerSettings(make_schedule(cfg.scheduler, 4), guidance_dim=cfg.guidance_dim)
    noise = make_noise(3, 4, lq_photo.shape[0], cfg.latent_channels, (cfg.latent_size, cfg.latent_size))
    ours, ref = Trace(), Trace()
    restore(TorchBackend(tiny_models), lq_photo, noise, settings, ref)
    with TrtBackend(real_engines) as backend:
        restore(backend, lq_photo.cuda(), noise.cuda(), settings, ours)
        backend.synchronize()
    rows = require(compare_traces(ours, ref, "fp16"), "TensorRT vs torch")
    image = next(r for r in rows if r.name == "image")
    assert image.psnr > 35.0, format_table(rows)


# --- streams, addresses, batch limit, weights identity -------------------------------------------


def test_engines_run_on_the_backends_dedicated_stream(engines, fake_trt, tiny_cfg):
    clip = get_component("clip")
    with TrtBackend(engines, device="cpu") as backend:
        backend.run("clip", **clip.sample_inputs(tiny_cfg, 1))
        backend.synchronize()
        stream = backend.stream
    launches = [c[1] for ctx in fake_trt.contexts for c in ctx.calls if c[0] == "execute_async_v3"]
    assert launches == [stream.cuda_stream] and stream.cuda_stream != 0  # 0 is the legacy default stream
    assert stream.synchronized == 1


def test_misaligned_inputs_are_copied_to_aligned_memory(engines, fake_trt, tiny_cfg):
    vae = get_component("vae_decoder")
    latent = vae.sample_inputs(tiny_cfg, 2)["latent"]
    base = trt_mod.aligned_empty((latent.numel() + 1,), torch.float32, latent.device)
    view = base[1:].view(latent.shape)  # contiguous, but 4 bytes past a 256-byte boundary
    view.copy_(latent)
    with TrtBackend(engines, device="cpu") as backend:
        backend.run("vae_decoder", latent=view)
    context = next(c for c in fake_trt.contexts if c.engine.model["component"] == "vae_decoder")
    address = next(c[2] for c in context.calls if c[:2] == ("set_tensor_address", "latent"))
    assert address != view.data_ptr() and address % 256 == 0


def test_a_refused_tensor_address_stops_the_run(engines, fake_trt, tiny_cfg, monkeypatch):
    from types import SimpleNamespace

    clip = get_component("clip")
    with TrtBackend(engines, device="cpu") as backend:
        context = backend._loaded["clip"].context
        monkeypatch.setattr(context, "set_tensor_address", lambda name, address: False)
        with pytest.raises(EngineError, match=r"clip: TensorRT refused the address of image \(float32 \(1, 3, "):
            backend.run("clip", **clip.sample_inputs(tiny_cfg, 1))
        loaded = SimpleNamespace(component=clip, context=context)
        odd = trt_mod.aligned_empty((65,), torch.float32, torch.device("cpu"))[1:]
        with pytest.raises(EngineError, match="is not 256-byte aligned"):
            TrtBackend._set_address(loaded, "image", odd)
    assert not any(c[0] == "execute_async_v3" for ctx in fake_trt.contexts for c in ctx.calls)


def test_the_index_records_the_exports_weights_identity(engines, fake_export):
    assert json.loads((engines / "engines.json").read_text())["weights"] == fake_export.manifest.weights
    assert TrtBackend(engines, device="cpu").weights == "random, seed 0"
