"""ONNX export of the tiny preset: parity with torch (fp32 and fp16), manifest, skipping, TensorRT op check."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from interlcm.components import BY_NAME, DEFAULT_COMPONENTS
from interlcm.export.manifest import MANIFEST, ManifestError, load_manifest
from interlcm.export.onnx_export import export_all
from interlcm.export.session import open_session
from interlcm.export.trt_support import check_trt_support
from interlcm.export.validate import validate
from interlcm.identity import WeightsIdentity
from interlcm.parity import ParityError, compare, tolerance

BATCH = (1, 2, 4)  # the session export `tiny_onnx` (tests/conftest.py): traced at 2, validated at 1 and 3


@pytest.fixture(scope="session")
def exported(tiny_onnx):
    """The session's one tiny export (every default component, fp32 and fp16), shared with the engine tests.

    Tests that change files work on a copy.
    """
    return tiny_onnx, load_manifest(tiny_onnx)


@pytest.fixture(scope="session")
def parity(exported, tiny_models):
    out, _ = exported
    return validate(out, tiny_models, batches=(1, 3), echo=None)


def test_every_component_and_precision_in_manifest(exported, tiny_cfg):
    out, _ = exported
    m = load_manifest(out)
    assert {(e.component, e.precision) for e in m.entries} == {
        (c, p) for c in DEFAULT_COMPONENTS for p in ("fp32", "fp16")
    }
    assert m.config == tiny_cfg and m.batch == BATCH and m.opset == 17
    assert m.identity == WeightsIdentity.random("tiny", 0, "3step") and m.weights == m.identity.describe()
    assert {"torch", "onnx", "exporter"} <= set(m.versions)
    unet = m.entry("unet", "fp16")
    assert [t.name for t in unet.inputs] == list(BY_NAME["unet"].input_names)
    assert unet.outputs[0].shape == ["batch", 4, tiny_cfg.latent_size, tiny_cfg.latent_size]
    assert all(t.dtype == "float32" for t in (*unet.inputs, *unet.outputs))
    assert m.path(out, "unet", "fp16").name == "unet.fp16.onnx"
    with pytest.raises(ManifestError, match="denoise_step"):
        m.entry("denoise_step", "fp32")


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("component", DEFAULT_COMPONENTS)
def test_parity_with_torch(parity, component, precision):
    rows = [r for r in parity if r.key[:2] == (component, precision)]
    assert {r.key[3] for r in rows} == {"B=1", "B=3"}  # neither is the traced batch 2
    assert len(rows) == 2 * len(BY_NAME[component].outputs)
    for r in rows:
        assert r.ok and r.limit is not None, r.name
        assert r.cosine > (0.9999 if precision == "fp16" else 0.999999), r.name
    if precision == "fp32":
        assert max(r.max_rel for r in rows) < 1e-4


def test_fp16_graphs_compute_in_fp16(exported):
    """fp16 files carry fp16 weights (not an fp32 graph under another name), and keep norms in fp32."""
    out, m = exported
    model = onnx.load(str(m.path(out, "unet", "fp16")))
    # conv / matmul weights; small per-channel GroupNorm affines may stay fp32 beside their norm
    dtypes = {t.data_type for t in model.graph.initializer if t.dims and np.prod(t.dims) > 1024}
    assert dtypes == {TensorProto.FLOAT16}, dtypes
    kept = {
        n.op_type for n in model.graph.node if n.op_type in ("InstanceNormalization", "LayerNormalization")
    }
    assert kept == {"InstanceNormalization", "LayerNormalization"}
    casts = [n for n in model.graph.node if n.op_type == "Cast"]
    assert casts, "no Casts: the fp32 islands were not kept"
    fp32 = onnx.load(str(m.path(out, "unet", "fp32")))
    assert (out / "unet.fp16.onnx").stat().st_size < 0.7 * (out / "unet.fp32.onnx").stat().st_size
    assert {t.data_type for t in fp32.graph.initializer if t.dims and np.prod(t.dims) > 64} == {
        TensorProto.FLOAT
    }


def test_tolerance_check_can_fail():
    ref = torch.linspace(-1, 1, 48).reshape(1, 3, 4, 4)
    fp32, fp16 = tolerance("vae_decoder", "fp32"), tolerance("vae_decoder", "fp16")
    assert compare(("x",), ref + 1e-7, ref, fp32).ok
    assert not compare(("x",), ref + 1e-3, ref, fp32).ok
    assert compare(("x",), ref + 1e-3, ref, fp16).ok
    assert not compare(("x",), ref * float("nan"), ref, fp16).ok


def test_validation_collects_failures(exported, tiny_models, tmp_path):
    """A file from other weights fails validation, and the error names it with its numbers."""
    from interlcm.models.container import build_random

    out, _ = exported
    other = build_random(tiny_models.config, seed=1)
    with pytest.raises(ParityError) as err:
        validate(out, other, components=["vae_decoder", "visual_encoder"], precisions=["fp32"], echo=None)
    msg = str(err.value)
    assert msg.startswith(f"validation of {out}: 4 of 4 comparison(s) out of tolerance")
    assert "vae_decoder fp32 image B=3" in msg and "visual_encoder fp32 context B=1" in msg and "FAIL" in msg


def test_reexport_skips_up_to_date(exported, tiny_models, monkeypatch):
    import interlcm.export.onnx_export as ox

    def no_trace(*args, **kwargs):
        raise AssertionError("an up-to-date file was traced again")

    out, _ = exported
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("*.onnx")}
    monkeypatch.setattr(ox, "_trace", no_trace)
    export_all(tiny_models, out, DEFAULT_COMPONENTS, ("fp32", "fp16"), batch=BATCH, progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.onnx")} == mtimes
    assert not list(out.glob(".interlcm-tmp-*"))  # no scratch left behind


def test_changed_recipe_or_force_reexports(exported, tiny_models, tmp_path):
    out, _ = exported
    work = tmp_path / "onnx"
    shutil.copytree(out, work)
    before = (work / "se_condition.fp32.onnx").stat().st_mtime_ns
    export_all(tiny_models, work, ["se_condition"], ("fp32",), batch=BATCH, progress=False, force=True)
    assert (work / "se_condition.fp32.onnx").stat().st_mtime_ns != before
    # another opset is another folder kind: the file is redone and the manifest records it
    m = export_all(tiny_models, work, ["se_condition"], ("fp32",), batch=BATCH, opset=18, progress=False)
    assert m.opset == 18 and [e.component for e in m.entries] == ["se_condition"]


def test_tampered_and_missing_files_are_refused(exported, tmp_path):
    out, _ = exported
    work = tmp_path / "onnx"
    shutil.copytree(out, work)
    load_manifest(work)
    with open(work / "vae_decoder.fp16.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ManifestError, match=r"vae_decoder\.fp16\.onnx does not match"):
        load_manifest(work)
    load_manifest(work, verify=False)  # the runtime may opt out; the engine builder must not
    (work / "vae_decoder.fp16.onnx").unlink()
    with pytest.raises(ManifestError, match="missing"):
        load_manifest(work)
    (work / MANIFEST).unlink()
    with pytest.raises(ManifestError, match="no manifest.json"):
        load_manifest(work)


def test_tampered_file_is_reexported(exported, tiny_models, tmp_path):
    out, _ = exported
    work = tmp_path / "onnx"
    shutil.copytree(out, work)
    good = (work / "colorfix_adain.fp32.onnx").read_bytes()
    (work / "colorfix_adain.fp32.onnx").write_bytes(good[:-10])
    export_all(tiny_models, work, ["colorfix_adain"], ("fp32",), batch=BATCH, progress=False)
    load_manifest(work)
    assert (work / "colorfix_adain.fp32.onnx").read_bytes() == good  # deterministic export


def test_interrupted_export_leaves_nothing_complete(tiny_models, tmp_path, monkeypatch):
    import interlcm.export.onnx_export as ox

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ox, "_save", crash)
    with pytest.raises(KeyboardInterrupt):
        export_all(tiny_models, tmp_path, ["se_condition"], ("fp32",), batch=BATCH, progress=False)
    assert not list(tmp_path.glob("*.onnx")) and not list(tmp_path.glob(".interlcm-tmp-*"))
    assert not (tmp_path / MANIFEST).exists() or not json.loads((tmp_path / MANIFEST).read_text())["entries"]


def test_ort_session_batch_axis_is_dynamic(exported, tiny_cfg):
    out, m = exported
    session = open_session(m.path(out, "vae_encoder", "fp32"))
    comp = BY_NAME["vae_encoder"]
    (latent,) = session.run(None, {"image": comp.sample_inputs(tiny_cfg, 3, seed=5)["image"].numpy()})
    assert latent.shape == comp.output_shapes(tiny_cfg, 3)["latent"]


def test_exported_graphs_are_tensorrt_parseable(exported):
    out, m = exported
    for e in m.entries:
        report = check_trt_support(out / e.file)
        assert report.ok, f"{e.file}: {report.describe()}"


def test_unsupported_op_is_reported():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    nodes = [
        helper.make_node("Relu", ["x"], ["a"]),
        helper.make_node("FrobnicateNorm", ["a"], ["b"]),  # made up
        helper.make_node("Unique", ["b"], ["y"]),  # real ONNX op TensorRT does not parse
    ]
    model = helper.make_model(
        helper.make_graph(nodes, "g", [x], [y]), opset_imports=[helper.make_opsetid("", 17)]
    )
    report = check_trt_support(model)
    assert not report.ok
    assert report.unsupported == {"FrobnicateNorm": 1, "Unique": 1}
    assert "FrobnicateNorm x1" in report.describe()
    old = helper.make_model(
        helper.make_graph(nodes[:1], "g", [x], [y]), opset_imports=[helper.make_opsetid("", 7)]
    )
    assert not check_trt_support(old).opset_ok


def test_fp16_graphs_on_photos_stay_finite_and_close(exported, tiny_models):
    """The fp16 ONNX files themselves (not torch .half()) on real photos: no overflow, within tolerance."""
    from interlcm.testing import photo

    out, m = exported
    image = photo(tiny_models.config.resolution, batch=2)
    rows = []
    for name in ("clip", "vae_encoder", "se_condition"):
        with torch.inference_mode():
            ref = BY_NAME[name].build(tiny_models).eval()(image)
        (got,) = open_session(m.path(out, name, "fp16")).run(None, {"image": image.numpy()})
        rows.append(compare((name,), torch.from_numpy(got), ref, tolerance(name, "fp16")))
    assert all(r.ok for r in rows), [r.name for r in rows if not r.ok]


def test_manifest_naming_files_outside_its_folder_is_refused_when_read(tiny_models, tmp_path):
    """Refused on reading, before any file is opened or hashed (also without verify)."""
    work = tmp_path / "onnx"
    export_all(tiny_models, work, ["colorfix_adain"], ("fp32",), batch=BATCH, progress=False)
    good = json.loads((work / MANIFEST).read_text())
    for field in ("file", "external_data"):
        for name in ("../x.onnx", "/etc/passwd", "sub/../../x.onnx", "a\\..\\x.onnx", ".."):
            data = json.loads(json.dumps(good))
            data["entries"][0][field] = name
            (work / MANIFEST).write_text(json.dumps(data))
            with pytest.raises(ManifestError, match="not a file in its folder") as info:
                load_manifest(work, verify=False)
            assert repr(name) in str(info.value) and "\n" not in str(info.value)
