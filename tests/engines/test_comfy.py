"""The ComfyUI nodes, called as ComfyUI calls them, against the CLI's bytes for the same options and seed.

`run_node` does what ComfyUI's executor does with a prompt: reads the node's INPUT_TYPES, fills and
checks widget values (INT/FLOAT converted and held to min/max, combo values in their list), checks that
linked inputs carry the declared type, makes one instance and calls its FUNCTION with keyword
arguments under torch.inference_mode, and expects a tuple as long as RETURN_TYPES.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from interlcm.engines import comfy
from interlcm.engines.cli import main
from interlcm.testing import group_photo

NODES_FOLDER = Path(__file__).resolve().parents[2] / "comfyui" / "interlcm_nodes"
HEADS = ((0.22, 0.45, 190, 0), (0.76, 0.45, 170, 6))  # two faces dlib finds


def run_node(cls, links: dict[str, tuple[object, str]] | None = None, **widgets):
    """Validate the inputs as ComfyUI does and call the node; `links` maps an input to (value, its type)."""
    links = links or {}
    declared = cls.INPUT_TYPES()["required"]
    assert set(links) | set(widgets) <= set(declared), set(links) | set(widgets) - set(declared)
    inputs = {}
    for name, (kind, *rest) in declared.items():
        options = rest[0] if rest else {}
        if name in links:
            value, produced = links[name]
            assert produced == kind, f"{name}: a {produced} linked into a {kind} input"
            inputs[name] = value
            continue
        assert not (isinstance(kind, str) and kind.isupper() and kind not in ("INT", "FLOAT", "STRING", "BOOLEAN")), \
            f"{name}: the {kind} input needs a link"
        value = widgets.get(name, options.get("default", kind[0] if isinstance(kind, list) else None))
        if isinstance(kind, str):  # a widget of a scalar type; a list is a combo box
            value = {"INT": int, "FLOAT": float, "STRING": str, "BOOLEAN": bool}[kind](value)
        if "min" in options:
            assert value >= options["min"], f"{name}: {value} under the minimum {options['min']}"
        if "max" in options:
            assert value <= options["max"], f"{name}: {value} over the maximum {options['max']}"
        if isinstance(kind, list):
            assert value in kind, f"{name}: {value!r} not in {kind}"
        inputs[name] = value
    with torch.inference_mode():
        out = getattr(cls(), cls.FUNCTION)(**inputs)
    assert isinstance(out, tuple) and len(out) == len(cls.RETURN_TYPES)
    return out


def _image(photos: list[np.ndarray]) -> torch.Tensor:
    """As ComfyUI's LoadImage makes an IMAGE: uint8 / 255 in float32, (B, H, W, C)."""
    return torch.from_numpy(np.stack(photos).astype(np.float32) / 255.0)


def _pixels(image: torch.Tensor) -> np.ndarray:
    assert image.dtype == torch.float32 and image.ndim == 4 and image.shape[-1] == 3
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    return np.rint(image.numpy() * 255).astype(np.uint8)


@pytest.fixture(scope="module", autouse=True)
def _close_the_held_model():
    yield
    comfy.close_model()


@pytest.fixture
def model():
    """The loader's model for random tiny weights: opened by the first test, then the held one."""
    (loaded,) = run_node(comfy.InterLCMModelLoader, source="preset", preset="tiny")
    return loaded


def test_the_node_contract():
    assert set(comfy.NODE_CLASS_MAPPINGS) == set(comfy.NODE_DISPLAY_NAME_MAPPINGS)
    for name, cls in comfy.NODE_CLASS_MAPPINGS.items():
        assert callable(getattr(cls, cls.FUNCTION)) and cls.CATEGORY == "InterLCM", name
        for kind, *rest in cls.INPUT_TYPES()["required"].values():  # every default is a value the input accepts
            options = rest[0] if rest else {}
            if "default" in options and isinstance(kind, list):
                assert options["default"] in kind, (name, kind)
            if "default" in options and "min" in options:
                assert options["min"] <= options["default"] <= options["max"], (name, options)


def test_image_conversion_rounds_to_the_nearest_level():
    """IMAGE floats from other nodes (a VAE decode) lie between levels: nearest level, clipped; channels made RGB."""
    levels = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, axis=3)
    for shift in (-0.4, 0.0, 0.4):
        photos = comfy.to_photos(torch.from_numpy((levels.astype(np.float32) + shift) / 255.0))
        assert np.array_equal(photos[0], levels[0]), shift
    assert np.array_equal(comfy.to_photos(torch.full((1, 2, 2, 1), 2.0))[0], np.full((2, 2, 3), 255))
    assert comfy.to_photos(torch.zeros(2, 3, 5, 4))[1].shape == (3, 5, 3)  # RGBA: alpha dropped
    assert torch.equal(comfy.to_image(comfy.to_photos(_image([levels[0]]))), _image([levels[0]]))
    with pytest.raises(ValueError, match="expected an IMAGE"):
        comfy.to_photos(torch.zeros(3, 5, 3))


def test_restore_faces_equals_the_cli_on_a_batch_of_frames(model, tmp_path):
    """3 frames (2 faces, the same moved, no face) in one IMAGE batch == the CLI on the 3 files, byte for byte."""
    pytest.importorskip("dlib", reason="the faces-dlib extra is not installed (make install installs it)")
    photo = group_photo((480, 240), HEADS)
    frames = [photo, np.roll(photo, 8, axis=1), np.full_like(photo, 120)]
    (tmp_path / "in").mkdir()
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(tmp_path / "in" / f"frame{i}.png")
    result = CliRunner().invoke(main, ["restore", str(tmp_path / "in"), "--preset", "tiny", "--detector", "dlib",
                                       "--seed", "5", "--upscale", "1", "--strength", "0.7", "--out", str(tmp_path / "cli")])
    assert result.exit_code == 0, result.output

    (out,) = run_node(comfy.InterLCMRestoreFaces, {"model": (model, comfy.MODEL), "image": (_image(frames), "IMAGE")},
                      seed=5, strength=0.7, detector="dlib")
    got = _pixels(out)
    assert got.shape == (3, 240, 480, 3)
    for i in range(3):
        assert np.array_equal(got[i], np.asarray(Image.open(tmp_path / "cli" / f"frame{i}.png"))), f"frame {i}"
    assert not np.array_equal(got[0], frames[0]) and np.array_equal(got[2], frames[2])  # faces restored; none: as is


def test_realesrgan_background_and_faces_equal_the_cli(model, tmp_path):
    """bg_upsampler + face_upsample at upscale 2: Real-ESRGAN opened once by the held model, the CLI's pixels."""
    pytest.importorskip("dlib", reason="the faces-dlib extra is not installed (make install installs it)")
    photo = group_photo((128, 96), ((0.45, 0.5, 80, 0),))
    Image.fromarray(photo).save(tmp_path / "one.png")
    result = CliRunner().invoke(main, ["restore", str(tmp_path / "one.png"), "--preset", "tiny", "--detector", "dlib",
                                       "--bg-upsampler", "realesrgan", "--face-upsample", "--out", str(tmp_path / "cli")])
    assert result.exit_code == 0 and "soft box mask" in result.output, result.output  # its face was found
    (out,) = run_node(comfy.InterLCMRestoreFaces, {"model": (model, comfy.MODEL), "image": (_image([photo]), "IMAGE")},
                      upscale=2, detector="dlib", bg_upsampler="realesrgan", face_upsample=True)
    assert np.array_equal(_pixels(out)[0], np.asarray(Image.open(tmp_path / "cli" / "one.png")))


def test_restore_aligned_face_equals_the_cli(model, tmp_path, tiny_cfg):
    rng = np.random.default_rng(1)
    r = tiny_cfg.resolution
    crops = [rng.integers(0, 255, (r, r, 3), dtype=np.uint8) for _ in range(2)]
    (tmp_path / "in").mkdir()
    for i, crop in enumerate(crops):
        Image.fromarray(crop).save(tmp_path / "in" / f"c{i}.png")
    result = CliRunner().invoke(main, ["restore", str(tmp_path / "in"), "--aligned", "--preset", "tiny", "--seed", "2",
                                       "--out", str(tmp_path / "cli")])
    assert result.exit_code == 0, result.output
    (out,) = run_node(comfy.InterLCMRestoreAlignedFace,
                      {"model": (model, comfy.MODEL), "image": (_image(crops), "IMAGE")}, seed=2)
    for i, got in enumerate(_pixels(out)):
        assert np.array_equal(got, np.asarray(Image.open(tmp_path / "cli" / f"c{i}.png"))), i
    (zero,) = run_node(comfy.InterLCMRestoreAlignedFace,
                       {"model": (model, comfy.MODEL), "image": (_image(crops), "IMAGE")}, seed=2, strength=0.0)
    assert np.array_equal(_pixels(zero), np.stack(crops))


def test_the_model_is_kept_across_prompts(model):
    (again,) = run_node(comfy.InterLCMModelLoader, source="preset", preset="tiny")
    assert again is model  # a second prompt with the same loader inputs opens nothing
    (other,) = run_node(comfy.InterLCMModelLoader, source="preset", preset="tiny", batch=2)
    assert other is not model and other.batch == 2  # other inputs: another model (the old one is closed)


def test_loader_refuses_a_missing_folder_in_one_sentence():
    with pytest.raises(ValueError, match="needs a folder") as info:
        run_node(comfy.InterLCMModelLoader, source="weights", folder="")
    assert "\n" not in str(info.value)


def _load_like_comfyui(folder: Path):
    """What ComfyUI's nodes.load_custom_node does with a custom_nodes folder: import its __init__.py by path."""
    name = folder.name
    spec = importlib.util.spec_from_file_location(name, folder / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(name, None)
    return module


def test_the_folder_loads_from_custom_nodes_through_a_symlink(tmp_path):
    custom = tmp_path / "ComfyUI" / "custom_nodes"
    custom.mkdir(parents=True)
    (custom / "interlcm_nodes").symlink_to(NODES_FOLDER, target_is_directory=True)
    module = _load_like_comfyui(custom / "interlcm_nodes")
    assert module.NODE_CLASS_MAPPINGS is comfy.NODE_CLASS_MAPPINGS
    assert module.NODE_DISPLAY_NAME_MAPPINGS["InterLCMRestoreFaces"] == "InterLCM restore faces"


def test_real_comfyui_loads_the_nodes():
    """With COMFYUI_PATH set to a ComfyUI checkout (its requirements installed), its own loader takes the folder."""
    root = os.environ.get("COMFYUI_PATH")
    if not root:
        pytest.skip("COMFYUI_PATH is not set: point it at a ComfyUI checkout to load the nodes into a real ComfyUI")
    import asyncio
    import inspect

    sys.path.insert(0, root)
    try:
        import nodes  # ComfyUI's nodes.py
    finally:
        sys.path.remove(root)
    loaded = nodes.load_custom_node(str(NODES_FOLDER))  # a coroutine in current ComfyUI, a plain call before
    if inspect.iscoroutine(loaded):
        loaded = asyncio.run(loaded)
    assert loaded in (True, None)
    for name, cls in comfy.NODE_CLASS_MAPPINGS.items():
        assert nodes.NODE_CLASS_MAPPINGS[name].__name__ == cls.__name__
