"""Engine-test fixtures: a private copy of the tiny export to build from, and engines built by the stand-in.

TensorRT is replaced by engines/trt_standin.py (`trt_standin`, tests/conftest.py): the builder
records what our code asks for and checks the profile against the real fp16 ONNX files; the
engines it "builds" run those files with ONNX Runtime on the CPU, under TensorRT's contracts.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import onnx
import pytest

from interlcm.export.manifest import MANIFEST, load_manifest


class ExportCopy(SimpleNamespace):
    """tiny_onnx_photo's files linked into a folder of the test's own, with a manifest it may edit."""

    root: Path

    @property
    def manifest(self):  # -> interlcm.export.manifest.Manifest
        return load_manifest(self.root, verify=False)

    def edit(self, component: str, **fields) -> None:  # FileEntry fields
        """Change the fp16 entry of `component` in the manifest (e.g. external_sha256)."""
        manifest = self.manifest
        manifest.upsert(replace(manifest.entry(component, "fp16"), **fields))
        manifest.save(self.root)

    def rewrite(self, component: str, change=None) -> None:  # change: onnx.ModelProto -> None
        """A re-export that changed the fp16 file of `component` (the same graph, other bytes, unless `change`)."""
        path = self.root / self.manifest.entry(component, "fp16").file
        model = onnx.load(path)
        model.doc_string = "re-exported"
        if change is not None:
            change(model)
        path.unlink()  # the link to tiny_onnx's file, not the file
        onnx.save(model, path)
        self.edit(component, sha256=hashlib.sha256(path.read_bytes()).hexdigest())


@pytest.fixture
def export(tiny_onnx_photo, tmp_path) -> ExportCopy:
    """The tiny export with the mobile detector and Real-ESRGAN, batch 1..4, in a folder of the test's own."""
    root = tmp_path / "onnx"
    root.mkdir()
    for path in tiny_onnx_photo.iterdir():
        if path.name != MANIFEST:
            (root / path.name).symlink_to(path.resolve())
    (root / MANIFEST).write_text((tiny_onnx_photo / MANIFEST).read_text())
    return ExportCopy(root=root)


@pytest.fixture
def engines(trt_standin, export, tmp_path) -> Path:
    """Every fp16 component of the export built by the stand-in."""
    from interlcm.engines.trt_build import build_engines

    out = tmp_path / "engines"
    build_engines(export.root, out)
    return out


@pytest.fixture(scope="session")
def real_engines(tiny_models, tmp_path_factory):
    """Real fp16 engines of the tiny preset (with the fused step), batch 1..4; skips without CUDA and TensorRT."""
    from interlcm.components import DEFAULT_COMPONENTS
    from interlcm.engines.trt_build import build_engines
    from interlcm.engines.trt_common import check_cuda
    from interlcm.export.onnx_export import export_all

    ok, why = check_cuda()
    if not ok:
        pytest.skip(f"needs CUDA and TensorRT: {why}")
    onnx_dir = tmp_path_factory.mktemp("onnx")
    export_all(tiny_models, onnx_dir, [*DEFAULT_COMPONENTS, "denoise_step"], ("fp16",), batch=(1, 2, 4), progress=False)
    out = tmp_path_factory.mktemp("engines")
    build_engines(onnx_dir, out, opt_level=2)
    return out



@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the Ray job and Serve tests: 2 CPUs, the project's own loopback-only start."""
    ray = pytest.importorskip("ray")
    from interlcm.engines.ray_job import start_local_ray

    start_local_ray(num_cpus=2, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def reference_faces(tmp_path_factory, tiny_cfg):
    """12 random face crops at the tiny resolution (ROOT/in) and the single-process CLI's outputs at
    --batch 1 (ROOT/reference), for the Ray job and Serve tests to compare with byte for byte;
    ROOT/tree and ROOT/tree_reference, the same as a camera card's folders (see below)."""
    import numpy as np
    from click.testing import CliRunner
    from PIL import Image

    from interlcm.engines.cli import main

    args = ["--aligned", "--preset", "tiny", "--backend", "torch", "--seed", "1", "--threads", "1"]
    root = tmp_path_factory.mktemp("faces")
    rng = np.random.default_rng(0)
    (root / "in").mkdir()
    for i in range(12):
        pixels = rng.integers(0, 255, (tiny_cfg.resolution, tiny_cfg.resolution, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "in" / f"face{i:02d}.png")
    result = CliRunner().invoke(main, ["restore", str(root / "in"), *args, "--out", str(root / "reference")])
    assert result.exit_code == 0, result.output
    # ROOT/tree: six of them as a camera card holds them (a subfolder, JPEGs with an upper-case suffix),
    # and ROOT/tree_reference: the CLI's outputs of it with --save-faces, for the Ray job's plan
    for i in range(6):
        folder = root / "tree" / ("cam" if i % 2 else "")
        folder.mkdir(parents=True, exist_ok=True)
        with Image.open(root / "in" / f"face{i:02d}.png") as img:
            img.save(folder / (f"IMG_{i:04d}.JPG" if i >= 4 else f"face{i:02d}.png"))
    tree = root / "tree"
    result = CliRunner().invoke(main, ["restore", str(tree / "face00.png"), str(tree / "face02.png"),
                                       str(tree / "IMG_0004.JPG"), str(tree / "cam"), *args, "--save-faces",
                                       "--out", str(root / "tree_reference")])
    assert result.exit_code == 0, result.output
    return SimpleNamespace(root=root, args=args, seed=1)
