"""engines/trt_build.py and engines/trt.py: the engine build, the engine cache and the TensorRT backend.

CPU tests run the real code against the TensorRT stand-in (engines/trt_standin.py): building
records what we ask TensorRT for and checks the profile against the real fp16 ONNX files;
running computes with ONNX Runtime on those files through the addresses we bind, under
TensorRT's contracts (profile bounds, shapes and addresses before enqueueing, output shapes from
`get_tensor_shape`, buffers large enough, nothing set during graph capture), so the outputs are
compared with torch, not with zeros. The tests marked `trt` build and run real engines and skip
without CUDA and TensorRT.

Tolerances: engines are fp16 (the fp16 ONNX files), torch is fp32: each output within its
component's fp16 tolerance (components.py, 1e-2 of max |torch|; SE 3e-2).
"""

from __future__ import annotations

import json
import sys

import pytest
import torch

from interlcm.components import DEFAULT_COMPONENTS, InputError, get_component
from interlcm.config import PresetConfig
from interlcm.engines import trt_common
from interlcm.engines.trt import TrtBackend
from interlcm.engines.trt_build import build_engines, cache_key, cache_parts
from interlcm.engines.trt_common import EngineError
from interlcm.engines.trt_standin import GPU as STANDIN_GPU
from interlcm.engines.trt_standin import ContractViolation
from interlcm.parity import compare, require, tolerance

# --- building -----------------------------------------------------------------------------------


def engine_payload(path) -> dict:
    return json.loads(path.read_bytes())


def _fp16_components(export) -> list[str]:
    return [e.component for e in export.manifest.entries if e.precision == "fp16"]


def test_build_makes_strongly_typed_engines_with_profiles_from_the_components(trt_standin, export, tmp_path,
                                                                               tiny_cfg):
    out = tmp_path / "engines"
    built = build_engines(export.root, out, opt_level=4, workspace=1 << 30)

    assert list(built) == _fp16_components(export) and set(DEFAULT_COMPONENTS) <= set(built)
    networks = [c for c in trt_standin.calls if c[0] == "create_network"]
    strongly_typed = 1 << int(trt_standin.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    assert networks and all(flags == strongly_typed for _, flags in networks)
    assert not [c for c in trt_standin.calls if c[0] == "set_flag"]  # no FP16 flag: precision comes from the ONNX
    assert ("set_memory_pool_limit", "WORKSPACE", 1 << 30) in trt_standin.calls
    parsed = [c[1] for c in trt_standin.calls if c[0] == "parse_from_file"]
    assert parsed == [str(export.root / f"{n}.fp16.onnx") for n in built]  # a path: external data

    for name, path in built.items():
        payload = engine_payload(path)
        component = get_component(name)
        assert payload["profiles"] == [{
            spec.name: [list(s) for s in shapes] for spec, shapes in zip(component.inputs, component.profile(
                tiny_cfg, (1, 2, 4)).values())
        }]
        assert payload["opt_level"] == 4
        sidecar = json.loads((out / f"{name}.engine.json").read_text())
        assert sidecar["key"] == cache_key(sidecar["parts"])
        assert sidecar["parts"]["gpu"] == STANDIN_GPU and sidecar["parts"]["tensorrt"] == "10.13.0.35"
        assert sidecar["parts"]["onnx_sha256"] == export.manifest.entry(name, "fp16").sha256
    index = json.loads((out / "engines.json").read_text())
    assert PresetConfig.from_dict(index["config"]) == tiny_cfg and index["batch"] == [1, 2, 4]
    assert set(index["engines"]) == set(built)


def test_the_detector_profile_holds_phone_photos_and_follows_the_export(trt_standin, export, tmp_path):
    """The default detector profile reaches 4096 px (a 4032x3024 photo either way up); an export made with
    --dims has its range recorded in the manifest, and the engine's profile spans that range."""
    build_engines(export.root, tmp_path / "a", components=["retinaface_mobile"])
    lo, opt, hi = engine_payload(tmp_path / "a" / "retinaface_mobile.engine")["profiles"][0]["pixels"]
    assert lo[2:] == [64, 64] and opt[2:] == [640, 640] and hi[2:] == [4096, 4096]
    export.edit("retinaface_mobile", dims={"height": [32, 96, 200], "width": [32, 128, 300]})
    build_engines(export.root, tmp_path / "b", components=["retinaface_mobile"])
    lo, opt, hi = engine_payload(tmp_path / "b" / "retinaface_mobile.engine")["profiles"][0]["pixels"]
    assert (lo[2:], opt[2:], hi[2:]) == ([32, 32], [96, 128], [200, 300])


OWNER = {"tensorrt": "10.13.0.35", "gpu": STANDIN_GPU}  # what the stand-in reports


def _timing_cache(path, data, owner=OWNER):
    path.write_bytes(data)
    (path.parent / f"{path.name}.json").write_text(json.dumps(owner))
    return path


def _loaded_caches(standin):
    return [c[1] for c in standin.calls if c[0] == "create_timing_cache"]


def test_timing_cache_is_loaded_and_saved(trt_standin, export, tmp_path):
    cache = _timing_cache(tmp_path / "my.cache", b"seed")
    build_engines(export.root, tmp_path / "engines", components=["clip", "unet"], timing_cache=cache)

    assert _loaded_caches(trt_standin) == [b"seed", b"seed[clip]"]  # from the file, then carried engine to engine
    assert ("set_timing_cache", False) in trt_standin.calls
    assert cache.read_bytes() == b"seed[clip][unet]"
    assert json.loads((tmp_path / "my.cache.json").read_text()) == OWNER


def test_default_timing_cache_lives_in_the_engine_folder(trt_standin, export, tmp_path):
    build_engines(export.root, tmp_path / "engines", components=["clip"])
    assert (tmp_path / "engines" / "timing.cache").read_bytes() == b"[clip]"


@pytest.mark.parametrize("owner", [None, {"tensorrt": "10.13.0.35", "gpu": "NVIDIA H100 (sm_90)"},
                                   {"tensorrt": "11.4.0.1", "gpu": STANDIN_GPU}])
def test_timing_cache_of_another_tensorrt_or_gpu_is_discarded_with_a_note(trt_standin, export, tmp_path, caplog,
                                                                        owner):
    cache = _timing_cache(tmp_path / "t.cache", b"old", owner) if owner else tmp_path / "t.cache"
    if owner is None:
        cache.write_bytes(b"old")  # no sidecar: unknown origin
    build_engines(export.root, tmp_path / "engines", components=["clip"], timing_cache=cache)
    assert _loaded_caches(trt_standin) == [b""]
    assert "discarded" in caplog.text
    assert cache.read_bytes() == b"[clip]" and json.loads((tmp_path / "t.cache.json").read_text()) == OWNER


@pytest.mark.parametrize("failure", ["unreadable_cache", "mismatched_cache"])
def test_timing_cache_tensorrt_rejects_is_replaced_never_fatal(trt_standin, export, tmp_path, caplog, failure):
    """create_timing_cache -> None and set_timing_cache -> False both fall back to an empty cache."""
    cache = _timing_cache(tmp_path / "t.cache", b"damaged")
    setattr(trt_standin, failure, True)
    build_engines(export.root, tmp_path / "engines", components=["clip"], timing_cache=cache)
    assert _loaded_caches(trt_standin) == [b"damaged", b""]
    assert "rejected the saved timing cache" in caplog.text
    assert cache.read_bytes() == b"[clip]"


def test_engines_build_when_no_timing_cache_can_be_made(trt_standin, export, tmp_path, caplog):
    trt_standin.no_timing_cache = True
    built = build_engines(export.root, tmp_path / "engines", components=["clip"])
    assert built["clip"].is_file() and "building without one" in caplog.text
    assert not (tmp_path / "engines" / "timing.cache").exists()


def test_engines_from_external_weights_are_rebuilt_when_the_weights_change(trt_standin, export, tmp_path):
    """Models over 2 GB keep their weights in .onnx.data: a new .data with the same graph is a new engine."""
    out = tmp_path / "engines"
    export.edit("unet", external_sha256="1" * 64)
    build_engines(export.root, out, components=["unet"])
    export.edit("unet", external_sha256="2" * 64)
    with pytest.raises(EngineError, match="unet.engine was built from other external weights"):
        build_engines(export.root, out, components=["unet"], rebuild="never")


def test_up_to_date_engines_are_reused(trt_standin, export, tmp_path):
    out = tmp_path / "engines"
    build_engines(export.root, out)
    trt_standin.builds.clear()
    build_engines(export.root, out)
    assert trt_standin.builds == []
    build_engines(export.root, out, components=["vae_decoder"], rebuild="always")
    assert trt_standin.builds == ["vae_decoder"]


def test_stale_engines_are_rebuilt_with_auto(trt_standin, export, tmp_path):
    out = tmp_path / "engines"
    build_engines(export.root, out, components=["clip", "unet"])
    trt_standin.builds.clear()
    trt_standin.__version__ = "11.4.0.1"
    build_engines(export.root, out, components=["clip", "unet"])
    assert trt_standin.builds == ["clip", "unet"]
    assert json.loads((out / "unet.engine.json").read_text())["parts"]["tensorrt"] == "11.4.0.1"


def test_stale_engines_are_refused_with_never_in_one_line(trt_standin, export, tmp_path, monkeypatch):
    out = tmp_path / "engines"
    build_engines(export.root, out, components=["unet"])
    trt_standin.builds.clear()
    trt_standin.__version__ = "11.4.0.1"
    monkeypatch.setattr(trt_common, "_STAND_IN_GPU", "NVIDIA H100 (sm_90)")
    with pytest.raises(EngineError) as exc:
        build_engines(export.root, out, components=["unet"], rebuild="never")
    message = str(exc.value)
    assert "\n" not in message
    assert message.startswith(f"unet.engine was built for TensorRT 10.13.0.35 / {STANDIN_GPU}, "
                              "this machine has 11.4.0.1 / NVIDIA H100 (sm_90)")
    assert "interlcm-trt build" in message
    assert trt_standin.builds == []


def test_changed_onnx_rebuilds_only_that_engine(trt_standin, export, tmp_path):
    out = tmp_path / "engines"
    build_engines(export.root, out)
    trt_standin.builds.clear()
    export.rewrite("vae_encoder")  # a re-export changed this file
    with pytest.raises(EngineError, match="vae_encoder.engine was built from another ONNX file"):
        build_engines(export.root, out, rebuild="never")
    build_engines(export.root, out)
    assert trt_standin.builds == ["vae_encoder"]


def test_changed_options_are_stale(trt_standin, export, tmp_path):
    out = tmp_path / "engines"
    build_engines(export.root, out, components=["clip"])
    with pytest.raises(EngineError, match=r"clip.engine was built with other options \(opt_level changed\)"):
        build_engines(export.root, out, components=["clip"], opt_level=5, rebuild="never")


def test_missing_or_damaged_record_is_stale(trt_standin, export, tmp_path):
    out = tmp_path / "engines"
    build_engines(export.root, out, components=["clip"])
    sidecar = out / "clip.engine.json"
    record = json.loads(sidecar.read_text())
    record["parts"]["gpu"] = f"{STANDIN_GPU} "  # hand-edited: the key no longer matches its parts
    sidecar.write_text(json.dumps(record))
    with pytest.raises(EngineError, match="clip.engine has no cache record"):
        build_engines(export.root, out, components=["clip"], rebuild="never")
    (out / "clip.engine").unlink()
    with pytest.raises(EngineError, match="clip.engine does not exist"):
        build_engines(export.root, out, components=["clip"], rebuild="never")


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


def test_failed_build_leaves_no_partial_engine(trt_standin, export, tmp_path):
    out = tmp_path / "engines"
    trt_standin.fail_build = True
    with pytest.raises(EngineError, match="unet: TensorRT failed to build an engine"):
        build_engines(export.root, out, components=["unet"])
    assert not out.exists() or not any(out.iterdir())  # no engine, sidecar, index or temp file


def test_failed_rebuild_keeps_the_previous_engine_and_its_record(trt_standin, export, tmp_path):
    out = tmp_path / "engines"
    build_engines(export.root, out, components=["unet"])
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    trt_standin.fail_build = True
    with pytest.raises(EngineError):
        build_engines(export.root, out, components=["unet"], rebuild="always")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_parse_errors_are_reported(trt_standin, export, tmp_path):
    trt_standin.parse_errors = ["In node 12 (Conv): unsupported"]
    with pytest.raises(EngineError, match=r"clip: TensorRT cannot parse .*clip.fp16.onnx: In node 12"):
        build_engines(export.root, tmp_path / "engines", components=["clip"])


def test_unknown_component_and_bad_arguments(trt_standin, export, tmp_path):
    with pytest.raises(EngineError, match="no fp16 ONNX for denoise_step"):
        build_engines(export.root, tmp_path, components=["denoise_step"])
    with pytest.raises(ValueError, match="rebuild must be"):
        build_engines(export.root, tmp_path, rebuild="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="opt_level"):
        build_engines(export.root, tmp_path, opt_level=7)


def test_onnx_with_other_tensor_names_is_refused(trt_standin, export, tmp_path):
    def rename(model):
        model.graph.output[0].name = "last_hidden_state"  # the graph still computes, under another name
        model.graph.node[-1].output[0] = "last_hidden_state"

    export.rewrite("clip", rename)
    with pytest.raises(EngineError, match="clip: the ONNX file clip.fp16.onnx has inputs"):
        build_engines(export.root, tmp_path / "engines", components=["clip"])


def test_a_file_changed_after_export_is_refused(trt_standin, export, tmp_path):
    (export.root / "clip.fp16.onnx").unlink()
    (export.root / "clip.fp16.onnx").write_text("{}")  # the manifest's hash no longer matches
    with pytest.raises(EngineError, match="cannot use the export in .*clip.fp16.onnx does not match its sha256"):
        build_engines(export.root, tmp_path / "engines")


# --- running: real numbers through the stand-in --------------------------------------------------


def _reference(tiny_models, name, inputs):
    from interlcm.torch_backend import TorchBackend

    return TorchBackend(tiny_models).run(name, **inputs)


@pytest.mark.parametrize("name", [*DEFAULT_COMPONENTS, "retinaface_mobile", "realesrgan"])
def test_every_engine_matches_torch_at_other_batches_and_sizes(engines, tiny_models, name):
    """Each fp16 engine against torch fp32: batch 5 (not the traced 2; over the profile's 4: two engine
    calls), run-time dims other than the traced ones and not square."""
    from dataclasses import replace

    from interlcm.faces.networks import FACE_NETWORKS, random_network
    from interlcm.models.rrdbnet import build_random_upsampler

    component = get_component(name)
    dims = {"height": 96, "width": 160, "tile_height": 24, "tile_width": 40}
    models = replace(tiny_models, faces={name: random_network(name, 10 + list(FACE_NETWORKS).index(name))}) \
        if name in FACE_NETWORKS else build_random_upsampler(tiny_models.config) if name == "realesrgan" else tiny_models
    inputs = component.sample_inputs(tiny_models.config, 5, seed=5, dims=dims)
    with TrtBackend(engines) as backend:
        out = backend.run(name, **inputs)
    ref = _reference(models, name, inputs)
    require([compare((name, spec.name), out[spec.name], ref[spec.name], tolerance(name, "fp16"))
             for spec in component.outputs], f"{name} engine (stand-in) vs torch")


def test_outputs_are_sized_by_the_inputs_not_the_traced_size(engines, export):
    """Bug 1: RetinaFace at 1024x768 has 32,256 priors, not the 16,800 of the traced 640x640; after the 64x64
    probe the detector opens with, the engine must not write 1024x768's outputs into 64x64's buffers."""
    from interlcm.faces.retinaface import num_priors

    with TrtBackend(engines) as backend:
        small = backend.run("retinaface_mobile", pixels=torch.rand(1, 3, 64, 64) * 255)["loc"].clone()
        pixels = torch.rand(1, 3, 768, 1024, generator=torch.Generator().manual_seed(0)) * 255
        out = backend.run("retinaface_mobile", pixels=pixels)
        assert out["loc"].shape == (1, 32256, 4) == (1, num_priors(_mobile(), 768, 1024), 4)
        assert small.shape == (1, 168, 4)
    from interlcm.engines.ort import OrtBackend

    with OrtBackend(export.root, "fp16", provider="cpu", components=[]) as ort:
        ref = ort.run("retinaface_mobile", pixels=pixels)
    for name in ("loc", "conf", "landmarks"):  # the same fp16 graph: equal up to thread scheduling
        torch.testing.assert_close(out[name], ref[name], rtol=1e-3, atol=1e-3)


@pytest.mark.slow  # one 12 MP call per backend: 7 s (fp32) and 16 s (fp16) on a shared 2-core CPU
def test_a_phone_photo_runs_at_its_own_size(engines, export):
    """A 4032x3024 photo, detected at its own size as the release does: 500,220 priors on both backends."""
    from interlcm.engines.ort import OrtBackend
    from interlcm.faces.retinaface import num_priors

    pixels = torch.rand(1, 3, 3024, 4032, generator=torch.Generator().manual_seed(0)) * 255
    with TrtBackend(engines) as backend:
        out = backend.run("retinaface_mobile", pixels=pixels)["conf"].clone()
    with OrtBackend(export.root, "fp16", provider="cpu", components=[]) as ort:
        ref = ort.run("retinaface_mobile", pixels=pixels)["conf"]
    assert out.shape == ref.shape == (1, num_priors(_mobile(), 3024, 4032), 2) == (1, 500220, 2)
    torch.testing.assert_close(out, ref, rtol=1e-3, atol=1e-3)


def _mobile():
    from interlcm.faces.networks import FACE_NETWORKS

    return FACE_NETWORKS["retinaface_mobile"].config


def test_one_context_per_input_shapes_set_up_once(engines, tiny_cfg):
    """Shapes and addresses are set when a signature's context is made, never again: a CUDA graph captured for a
    batch size replays against a context no other batch size touches."""
    clip = get_component("clip")
    with TrtBackend(engines) as backend:
        first = backend.run("clip", **clip.sample_inputs(tiny_cfg, 2))["tokens"]
        second = backend.run("clip", **clip.sample_inputs(tiny_cfg, 2, seed=1))["tokens"]
        other = backend.run("clip", **clip.sample_inputs(tiny_cfg, 1))["tokens"]
        third = backend.run("clip", **clip.sample_inputs(tiny_cfg, 2, seed=2))["tokens"]
        bound = backend._loaded["clip"].bound
        assert sorted(bound) == [((1, 3, 64, 64),), ((2, 3, 64, 64),)]
        calls = [c[0] for c in bound[((2, 3, 64, 64),)].context.calls]
        assert calls == ["set_input_shape", "set_tensor_address", "set_tensor_address", *["execute_async_v3"] * 3]
        assert second.data_ptr() == first.data_ptr() == third.data_ptr()  # the same buffer, rewritten
        assert other.data_ptr() != first.data_ptr() and other.shape[0] == 1
        # a detector's buffers follow the photo's size: same batch, other height, other buffers
        a = backend.run("retinaface_mobile", pixels=torch.rand(1, 3, 64, 96) * 255)["loc"]
        b = backend.run("retinaface_mobile", pixels=torch.rand(1, 3, 96, 64) * 255)["loc"]
        assert a.shape == b.shape and a.data_ptr() != b.data_ptr()
        assert len(backend._loaded["retinaface_mobile"].bound) == 1  # only the latest size is kept
    with TrtBackend(engines, copy_outputs=True) as backend:
        a = backend.run("clip", **clip.sample_inputs(tiny_cfg, 2))["tokens"]
        b = backend.run("clip", **clip.sample_inputs(tiny_cfg, 2))["tokens"]
        assert a.data_ptr() != b.data_ptr()


def test_inputs_are_copied_in_before_the_engine_waits(engines, tiny_cfg):
    """Bug 4: the copy of a strided input must be complete before the engine stream starts: on the caller's
    stream, then the engine stream waits for it, then the launch, then the caller waits for the engine."""
    vae = get_component("vae_decoder")
    latent = vae.sample_inputs(tiny_cfg, 2)["latent"]
    strided = latent.transpose(2, 3).contiguous().transpose(2, 3)  # same values, other strides
    with TrtBackend(engines) as backend:
        expected = backend.run("vae_decoder", latent=latent)["image"].clone()
        log = backend.streams.log
        log.clear()
        got = backend.run("vae_decoder", latent=strided)["image"]
        engine, caller = backend.stream.name, backend.streams.current().name
        staging = backend._loaded["vae_decoder"].bound[((2, 4, 8, 8),)].inputs["latent"].data_ptr()
        seen = list(log)
    assert torch.equal(got, expected)
    assert seen == [
        ("wait", caller, engine),  # the engine's earlier reads of the input buffer are done
        ("copy", caller, staging),
        ("wait", engine, caller),  # then the engine waits for the copy
        ("launch", engine, "vae_decoder"),
        ("wait", caller, engine),  # and the caller for the engine
    ]


def test_calls_over_the_profile_batch_are_split(engines, tiny_cfg):
    """Bug 2: 6 faces through a profile that ends at 4: two engine calls, the outputs concatenated."""
    clip = get_component("clip")
    inputs = clip.sample_inputs(tiny_cfg, 6)
    with TrtBackend(engines) as backend:
        whole = backend.run("clip", **inputs)["tokens"]
        parts = torch.cat([backend.run("clip", image=inputs["image"][s])["tokens"].clone()
                           for s in (slice(0, 4), slice(4, 6))])
        launches = [c for c in backend.streams.log if c[0] == "launch"]
    assert whole.shape[0] == 6 and torch.equal(whole, parts)
    assert len(launches) == 4  # 2 for the split call, 2 for the parts


def test_wrong_inputs_fail_before_running_with_every_problem_listed(engines, trt_standin, tiny_cfg):
    unet = get_component("unet")
    inputs = unet.sample_inputs(tiny_cfg, 2)
    inputs["sample"] = inputs["sample"].long()  # not floating point
    inputs["context"] = inputs["context"][:, :10]  # wrong shape
    del inputs["guidance"]  # missing
    inputs["timesteps"] = inputs.pop("timestep")  # misspelt
    with TrtBackend(engines) as backend:
        with pytest.raises(InputError) as exc:
            backend.run("unet", **inputs)
    message = str(exc.value)
    assert message.startswith("unet: 5 input problem(s), nothing was run")
    for expected in ("sample", "int64", "context", "(2, 10, 48)", "guidance", "missing", "timesteps",
                     "not an input", "timestep "):
        assert expected in message, expected
    assert not any(c[0] == "execute_async_v3" for ctx in trt_standin.contexts for c in ctx.calls)


def test_sizes_outside_the_profile_are_refused_before_tensorrt(engines, trt_standin):
    with TrtBackend(engines) as backend:
        with pytest.raises(InputError, match=r"width 5000 is outside 64..4096: make the input fit"):
            backend.run("retinaface_mobile", pixels=torch.zeros(1, 3, 64, 5000))
    assert not any(c[0] == "set_input_shape" for ctx in trt_standin.contexts for c in ctx.calls)


def test_contexts_share_one_activation_buffer_and_load_on_first_use(engines, trt_standin, tiny_cfg):
    """The UNet is deserialized when it runs, not because the folder holds it (nor the fused step with it)."""
    with TrtBackend(engines) as backend:
        assert backend._loaded == {} and backend.has("unet")
        backend.run("clip", **get_component("clip").sample_inputs(tiny_cfg, 1))
        backend.run("vae_encoder", **get_component("vae_encoder").sample_inputs(tiny_cfg, 1))
        assert sorted(backend._loaded) == ["clip", "vae_encoder"]
        contexts = trt_standin.contexts
        assert {c.strategy.name for c in contexts} == {"USER_MANAGED"}
        sizes = [c.engine.get_device_memory_size_for_profile_v2(0) for c in contexts]
        assert {c.device_memory for c in contexts} == {(backend._shared_memory.data_ptr(), max(sizes))}
    assert backend._shared_memory is None and not backend._loaded  # released on exit


def test_without_sharing_contexts_allocate_their_own(engines, trt_standin, tiny_cfg):
    with TrtBackend(engines, share_memory=False) as backend:
        backend.run("clip", **get_component("clip").sample_inputs(tiny_cfg, 1))
    assert trt_standin.contexts and all(c.strategy is None and c.device_memory is None for c in trt_standin.contexts)


def test_close_waits_for_the_engine_stream_before_freeing(engines, tiny_cfg):
    with TrtBackend(engines) as backend:
        backend.run("clip", **get_component("clip").sample_inputs(tiny_cfg, 1))
        log, engine = backend.streams.log, backend.stream.name
        assert ("sync", engine) not in log
    assert log[-1] == ("sync", engine) and ("launch", engine, "clip") in log


def test_one_tensorrt_logger_per_process(engines, trt_standin, tiny_cfg):
    """The builder (the `engines` fixture built every engine) and the runtime share one trt.Logger."""
    with TrtBackend(engines) as backend:
        backend.run("clip", **get_component("clip").sample_inputs(tiny_cfg, 1))
    assert trt_standin.loggers == 1


def test_backend_refuses_engines_from_another_tensorrt(engines, trt_standin):
    trt_standin.__version__ = "11.4.0.1"
    with pytest.raises(EngineError) as exc:
        TrtBackend(engines).__enter__()
    assert "\n" not in str(exc.value)
    assert str(exc.value).startswith(f"clip.engine was built for TensorRT 10.13.0.35 / {STANDIN_GPU}, "
                                     "this machine has 11.4.0.1")


def test_backend_checks_the_export_when_given(engines, export):
    export.rewrite("unet")
    with TrtBackend(engines):
        pass  # without onnx_dir only the machine is checked
    with pytest.raises(EngineError, match="unet.engine was built from another ONNX file"):
        TrtBackend(engines, onnx_dir=export.root).__enter__()


def test_backend_refuses_a_damaged_engine(engines, tiny_cfg):
    path = engines / "vae_decoder.engine"
    path.write_bytes(path.read_bytes()[:-10])
    with TrtBackend(engines) as backend:
        with pytest.raises(EngineError, match="vae_decoder.engine does not match its cache record"):
            backend.run("vae_decoder", **get_component("vae_decoder").sample_inputs(tiny_cfg, 1))


def test_backend_errors_name_the_fix(engines, tmp_path, tiny_cfg):
    with pytest.raises(EngineError, match="has no engines.json: build engines there with `interlcm-trt build`"):
        TrtBackend(tmp_path / "nowhere")
    backend = TrtBackend(engines, components=["clip"])
    with pytest.raises(EngineError, match="not open: use `with TrtBackend"):
        backend.run("clip", image=torch.zeros(1, 3, 64, 64))
    with backend:
        with pytest.raises(EngineError, match=r"has no engine for unet \(it has: .*clip"):
            backend.run("unet")
    with pytest.raises(EngineError, match="has no engine for denoise_step"):
        TrtBackend(engines, components=["denoise_step"]).__enter__()
    assert TrtBackend(engines).config == tiny_cfg


def _sampler_against_torch(engines, tiny_models, lq_photo, device: str, what: str):
    """The whole sampler on TrtBackend(engines) against torch fp32, stage by stage (require'd rows)."""
    from interlcm.parity import compare_traces
    from interlcm.sampler import SamplerSettings, Trace, restore
    from interlcm.schedule import make_noise, make_schedule
    from interlcm.torch_backend import TorchBackend

    cfg = tiny_models.config
    settings = SamplerSettings(make_schedule(cfg.scheduler, 4), guidance_dim=cfg.guidance_dim)
    noise = make_noise(3, 4, lq_photo.shape[0], cfg.latent_channels, (cfg.latent_size, cfg.latent_size))
    ours, ref = Trace(), Trace()
    restore(TorchBackend(tiny_models), lq_photo, noise, settings, ref)
    with TrtBackend(engines) as backend:
        restore(backend, lq_photo.to(device), noise.to(device), settings, ours)
        backend.synchronize()
    return require(compare_traces(ours, ref, "fp16"), what)


def test_the_sampler_on_the_engines_restores_like_torch(engines, tiny_models, lq_photo):
    """The whole loop on the stand-in (fp16 ONNX through TrtBackend) against torch fp32, stage by stage."""
    rows = _sampler_against_torch(engines, tiny_models, lq_photo, "cpu", "TensorRT stand-in vs torch")
    assert next(r for r in rows if r.name == "image").psnr > 35.0


# --- the stand-in keeps TensorRT's contracts ------------------------------------------------------


def test_the_standin_refuses_what_tensorrt_refuses_or_leaves_undefined(engines, trt_standin, tiny_cfg):
    """So that a bug around the engine fails here: a short buffer, a shape outside the profile, no address,
    the legacy default stream, a shape change during graph capture."""
    from interlcm.engines.device import CpuStreams, aligned_empty

    with TrtBackend(engines) as backend:
        backend.run("clip", **get_component("clip").sample_inputs(tiny_cfg, 2))
        loaded = backend._loaded["clip"]
        context = loaded.bound[((2, 3, 64, 64),)].context
        short = aligned_empty((1, 17, 48), torch.float32, CpuStreams())  # batch 1's tokens, for batch 2
        assert context.set_tensor_address("tokens", short.data_ptr())
        with pytest.raises(MemoryError, match="clip writes tokens: .* overrun the 3264-byte buffer"):
            context.execute_async_v3(backend.streams.handle(backend.stream))
        assert not context.set_input_shape("image", (5, 3, 64, 64))  # batch 5 > the profile's 4
        assert "outside the profile" in trt_standin.errors[-1]
        with pytest.raises(ContractViolation, match="legacy default stream"):
            context.execute_async_v3(0)
        with trt_standin.capture(), pytest.raises(ContractViolation, match="while a CUDA graph is captured"):
            context.set_input_shape("image", (1, 3, 64, 64))
        fresh = loaded.engine.create_execution_context(context.strategy)
        fresh.set_device_memory(*context.device_memory)
        assert not fresh.execute_async_v3(7) and "no shape for ['image']" in trt_standin.errors[-1]


# --- the machine --------------------------------------------------------------------------------


def test_stub_only_tensorrt_is_reported_as_not_installed(monkeypatch):
    from types import SimpleNamespace

    monkeypatch.setattr(trt_common, "trt", None)
    monkeypatch.setitem(sys.modules, "tensorrt", SimpleNamespace())  # what importing the stubs' folder gives
    with pytest.raises(EngineError, match=r"tensorrt is not installed \(only its type stubs are\): pip install"):
        trt_common.require_trt()
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import raises ImportError
    with pytest.raises(EngineError, match=r"tensorrt does not import \((ModuleNotFound|Import)Error"):
        trt_common.require_trt()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU answer")
def test_check_cuda_says_why_not(monkeypatch):
    monkeypatch.setattr(trt_common, "trt", None)
    ok, why = trt_common.check_cuda()
    assert not ok and why.startswith("no CUDA device")
    assert "tensorrt" in why


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU answer")
def test_engines_need_a_gpu_without_the_standin(engines, monkeypatch):
    """Only the stand-in runs engines on the CPU; TensorRT itself needs a CUDA device, and says why there is none."""
    monkeypatch.setattr(trt_common, "_ENGINE_DEVICE", torch.device("cuda", 0))  # as without the stand-in
    with pytest.raises(EngineError, match="TrtBackend needs a CUDA device, got cpu"):
        TrtBackend(engines, device="cpu").__enter__()
    with pytest.raises(EngineError, match="cannot run TensorRT engines here: no CUDA device"):
        TrtBackend(engines).__enter__()


# --- real engines (GPU) -------------------------------------------------------------------------


@pytest.mark.trt
@pytest.mark.gpu
@pytest.mark.parametrize("name", DEFAULT_COMPONENTS)
def test_engine_matches_torch_per_component(real_engines, tiny_models, name):
    """Each fp16 engine against torch fp32 at a batch other than the profile's opt, within its fp16 tolerance."""
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
    from interlcm.parity import format_table

    rows = _sampler_against_torch(real_engines, tiny_models, lq_photo, "cuda", "TensorRT vs torch")
    image = next(r for r in rows if r.name == "image")
    assert image.psnr > 35.0, format_table(rows)


def test_the_index_records_the_exports_weights_identity(engines, export):
    assert json.loads((engines / "engines.json").read_text())["weights"] == export.manifest.weights
    assert TrtBackend(engines).weights == export.manifest.weights == "random tiny weights, seed 0, 3step"
