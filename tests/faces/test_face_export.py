"""The face networks export to ONNX (fp32, fp16) with run-time-sized inputs and match torch on ONNX Runtime.

Tolerances are the components' own (interlcm.components): fp32 1e-4 of the output's
range (float reassociation only), fp16 1e-2 (measured up to 1.4e-3 on random weights,
export/README.md). The mobile detector is the default-tier test (about 20 s on a shared
CPU: essential, it is the only check that the H/W-dynamic graph runs at sizes it was not
traced at); ResNet-50 and ParseNet weigh 109 and 85 MB and are `slow`.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from interlcm.components import get_component
from interlcm.export.manifest import load_manifest
from interlcm.export.onnx_export import export_all
from interlcm.export.validate import validate
from interlcm.faces.detectors import RetinaFaceDetector
from interlcm.faces.retinaface import DetectOptions, num_priors
from interlcm.parity import ParityError

# Small sizes keep it fast; min/opt/max differ so validation runs at a size other than the traced.
DIMS = {"height": (64, 96, 128), "width": (64, 128, 160), "size": (32, 64, 64)}


@pytest.fixture(scope="module")
def face_models(tiny_cfg):
    from interlcm.models.container import build_random

    return build_random(tiny_cfg, seed=0, faces=["retinaface_mobile"])


@pytest.fixture(scope="module")
def mobile_onnx(face_models, tmp_path_factory):
    out = tmp_path_factory.mktemp("face-onnx")
    export_all(
        face_models, out, ["retinaface_mobile"], ("fp32", "fp16"), batch=(1, 1, 2), progress=False, dims=DIMS
    )
    return out


def test_mobile_detector_export_matches_torch(mobile_onnx, face_models):
    rows = validate(mobile_onnx, face_models, dims=DIMS, echo=None)
    assert {(r.key[1], r.key[2]) for r in rows} == {
        (p, o) for p in ("fp32", "fp16") for o in ("loc", "conf", "landmarks")
    }
    assert {r.key[4] for r in rows} == {"height=96 width=128", "height=64 width=64"}  # traced and min sizes
    assert all(r.ok for r in rows)
    assert max(r.max_rel for r in rows if r.key[1] == "fp32") < 1e-5
    assert max(r.max_rel for r in rows if r.key[1] == "fp16") < 5e-3


def test_manifest_names_the_dynamic_axes(mobile_onnx):
    entry = load_manifest(mobile_onnx).entry("retinaface_mobile", "fp32")
    assert [(t.name, t.shape) for t in entry.inputs] == [("pixels", ["batch", 3, "height", "width"])]
    assert [(t.name, t.shape) for t in entry.outputs] == [
        ("loc", ["batch", "priors", 4]),
        ("conf", ["batch", "priors", 2]),
        ("landmarks", ["batch", "priors", 10]),
    ]


def test_profile_spans_the_dims():
    comp = get_component("retinaface_resnet50").with_dims({"height": (64, 96, 128)})
    assert comp.profile(None, (1, 2, 4)) == {"pixels": ((1, 3, 64, 64), (2, 3, 96, 640), (4, 3, 128, 4096))}
    assert comp.dynamic_axes()["pixels"] == {0: "batch", 2: "height", 3: "width"}
    assert comp.dynamic_axes()["loc"] == {0: "batch", 1: "priors"}
    with pytest.raises(ValueError, match="height range 96:64:128 must satisfy"):
        comp.with_dims({"height": (96, 64, 128)})


def test_validation_fails_on_a_wrong_graph(mobile_onnx, face_models):
    """Other weights than the exported ones: every output is reported out of tolerance."""
    import dataclasses

    from interlcm.faces.networks import random_network

    other = dataclasses.replace(
        face_models, faces={"retinaface_mobile": random_network("retinaface_mobile", 1)}
    )
    with pytest.raises(ParityError, match="out of tolerance"):
        validate(mobile_onnx, other, precisions=["fp32"], dims=DIMS, echo=None)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_backends_agree_through_the_detector(mobile_onnx, face_models, precision):
    """ONNX Runtime and torch backends give the same detections, at a non-square size the graph was not traced at,
    through the backend's bound path (IOBinding, outputs allocated at the shapes the inputs imply), as on CUDA."""
    from interlcm.engines.ort import OrtBackend
    from interlcm.torch_backend import TorchBackend

    ort = OrtBackend(mobile_onnx, precision, provider="cpu", components=["retinaface_mobile"])
    ref = TorchBackend(face_models)
    pixels = torch.rand(2, 3, 80, 112) * 255
    got, want = ort.run("retinaface_mobile", pixels=pixels), ref.run("retinaface_mobile", pixels=pixels)
    assert ("launch", ort.stream.name, "retinaface_mobile") in ort.streams.log  # the bound run, not session.run
    assert got["loc"].shape == (2, num_priors(_mobile_cfg(), 80, 112), 4)
    tol = get_component("retinaface_mobile").tol_fp16.rel if precision == "fp16" else 1e-4
    for name in ("loc", "conf", "landmarks"):
        scale = float(want[name].abs().max())
        assert float((got[name] - want[name]).abs().max()) <= tol * scale, name

    # Random weights put every face score near 0.5: a low threshold gives the decoding work to do.
    # A small photo, detected at its own size, keeps the candidates to a few dozen.
    options = DetectOptions(conf_threshold=0.5, min_short_side=1, detect_short_side=1)
    photos = [np.asarray(torch.randint(0, 256, (72, 100, 3), dtype=torch.uint8))]
    a = RetinaFaceDetector(ort, "retinaface_mobile", options).detect(photos)[0]
    b = RetinaFaceDetector(ref, "retinaface_mobile", options).detect(photos)[0]
    assert len(b) > 0
    assert abs(len(a) - len(b)) <= (0 if precision == "fp32" else 2)  # fp16 may flip a score at 0.5
    if precision == "fp32":
        np.testing.assert_allclose(np.stack([d.box for d in a]), np.stack([d.box for d in b]), atol=1e-2)


def _mobile_cfg():
    from interlcm.faces.networks import FACE_NETWORKS

    return FACE_NETWORKS["retinaface_mobile"].config


@pytest.mark.slow
@pytest.mark.parametrize("name", ["retinaface_resnet50", "parsenet"])
def test_large_face_networks_export_matches_torch(name, tiny_cfg, tmp_path):
    """ResNet-50 (109 MB) and ParseNet (85 MB): ~1-2 minutes each on a shared CPU."""
    from interlcm.models.container import build_random

    models = build_random(tiny_cfg, seed=0, faces=[name])
    export_all(models, tmp_path, [name], ("fp32", "fp16"), batch=(1, 1, 2), progress=False, dims=DIMS)
    rows = validate(tmp_path, models, dims=DIMS, echo=None)
    assert all(r.ok for r in rows) and len({r.key[4] for r in rows}) == 2


def test_export_cli_names_missing_face_weights(tiny_weights, tmp_path):
    import shutil

    from click.testing import CliRunner

    from interlcm.export.cli import main

    folder = tmp_path / "w"
    shutil.copytree(tiny_weights, folder, ignore=shutil.ignore_patterns("facelib"))
    result = CliRunner().invoke(
        main, ["--weights", str(folder), "--components", "retinaface_mobile", "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 1
    assert (
        "no retinaface_mobile weights loaded (facelib/detection_mobilenet0.25_Final.pth is missing"
        in result.output
    )
    assert "Traceback" not in result.output


def test_export_cli_rejects_a_bad_dims_range():
    from click.testing import CliRunner

    from interlcm.export.cli import main

    result = CliRunner().invoke(main, ["--dims", "height=640", "--out", "x"])
    assert result.exit_code == 2 and "expected NAME=MIN:OPT:MAX" in result.output
