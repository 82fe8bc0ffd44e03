"""Real-ESRGAN (RRDBNet) on the tiny preset: released key layout, tiling without seams, ONNX parity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from interlcm.config import UPSAMPLERS, get_upsampler
from interlcm.models.rrdbnet import RRDBNet, build_random_upsampler
from interlcm.torch_backend import TorchBackend
from interlcm.upsampler import TiledUpsampler, TileOptions


@pytest.fixture(scope="module")
def tiny_upsampler(tiny_cfg):
    return build_random_upsampler(tiny_cfg, seed=0)


def _tiled(models, tile: int, pad: int) -> TiledUpsampler:
    cfg = models.realesrgan.cfg
    return TiledUpsampler(TorchBackend(models), cfg.scale, cfg.unshuffle, TileOptions(tile, pad))


def test_x2plus_state_dict_keys():
    """The released RealESRGAN_x2plus.pth layout: 23 blocks, 12 input channels after unshuffling."""
    state = RRDBNet(get_upsampler("sd15")).state_dict()
    assert len(state) == 2 * (1 + 23 * 3 * 5 + 5)  # weight + bias per conv
    assert state["conv_first.weight"].shape == (64, 12, 3, 3)
    assert state["body.22.rdb3.conv5.weight"].shape == (64, 64 + 4 * 32, 3, 3)
    assert state["conv_last.weight"].shape == (3, 64, 3, 3)
    assert {k.split(".")[0] for k in state} == {
        "conv_first", "body", "conv_body", "conv_up1", "conv_up2", "conv_hr", "conv_last"
    }


def test_tiny_receptive_field_fits_the_release_padding():
    # The premise of the exact tiling test below; the released net does not fit (see interlcm.upsampler).
    assert UPSAMPLERS["tiny"].receptive_radius <= TileOptions().tile_pad < UPSAMPLERS["sd15"].receptive_radius


def test_tiled_equals_untiled(tiny_upsampler):
    """Tiles of 32 px with the release's 40 px padding vs the whole 100x76 image at once.

    Tolerance 1e-5 of the output's range: the tiny net sees 39 px < 40 px of padding, so each
    kept output pixel is computed from the same inputs in both runs; only the float summation
    order of the convolutions differs (~1e-7 relative in float32). A seam would be a 1e-2 error.
    """
    image = torch.rand(1, 3, 100, 76, generator=torch.Generator().manual_seed(1))
    whole = _tiled(tiny_upsampler, 0, 0).upsample(image)
    tiled = _tiled(tiny_upsampler, 32, 40).upsample(image)
    assert whole.shape == (1, 3, 200, 152)
    scale = float(whole.abs().max())
    assert float((tiled - whole).abs().max()) <= 1e-5 * scale
    # without padding the tile borders do show: the check above can fail
    seams = _tiled(tiny_upsampler, 32, 0).upsample(image)
    assert float((seams - whole).abs().max()) > 1e-2 * scale


def test_enhance_uint8_odd_size_and_outscale(tiny_upsampler):
    img = np.random.default_rng(0).integers(0, 256, (37, 51, 3), dtype=np.uint8)
    up = _tiled(tiny_upsampler, 16, 40)
    assert up.enhance(img).shape == (74, 102, 3)  # odd sides padded to the unshuffle grid, cropped back
    assert up.enhance(img, outscale=3).shape == (111, 153, 3)
    with pytest.raises(ValueError, match="multiples of 2"):
        _tiled(tiny_upsampler, 15, 40)


def test_export_matches_torch_on_ort(tiny_upsampler, tmp_path):
    """fp32 and fp16 through the export loop and its validation, then other tile shapes (H, W dynamic).

    Tolerances are the component's (fp32 1e-4, fp16 1e-2 of the output's max |value|): fp32 only
    reassociates sums; fp16 rounds activations to 11 bits through 1 block.
    """
    from interlcm.engines.ort import OrtBackend
    from interlcm.export.onnx_export import export_all
    from interlcm.export.validate import validate
    from interlcm.parity import compare, tolerance

    export_all(tiny_upsampler, tmp_path, ["realesrgan"], ("fp32", "fp16"), batch=(1, 1, 2), progress=False)
    rows = validate(tmp_path, tiny_upsampler, echo=None)
    assert {r.key[1] for r in rows} == {"fp32", "fp16"} and all(r.ok for r in rows)
    for precision in ("fp32", "fp16"):
        backend = OrtBackend(tmp_path, precision, provider="cpu", components=["realesrgan"])  # the bound path
        for h, w in ((40, 96), (120, 58)):  # tile shapes other than the traced 64x64
            tile = torch.rand(3, 3, h, w, generator=torch.Generator().manual_seed(h))  # 3: over the export's 2
            got = backend.run("realesrgan", tile=tile)["upscaled"]
            with torch.inference_mode():
                ref = tiny_upsampler.realesrgan(tile)
            row = compare(("realesrgan", precision, "upscaled", f"{h}x{w}"), got, ref, tolerance("realesrgan", precision))
            assert row.ok, row.row(40)


def test_init_writes_realesrgan_and_it_loads(tiny_weights, tiny_cfg, tiny_upsampler):
    from interlcm.weights import load_upsampler

    loaded = load_upsampler(tiny_weights, tiny_cfg)
    tile = torch.rand(1, 3, 16, 24, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.equal(loaded.realesrgan(tile), tiny_upsampler.realesrgan(tile))  # init uses seed 0


def test_realesrgan_runs_on_the_restoring_backend_and_a_photos_faces_go_in_one_call(tiny_models, tiny_upsampler):
    """torch loads Real-ESRGAN into the backend that restores (its device, its batch); five faces are one call,
    which the backend splits to its batch of 2, each face as upsampled alone."""
    from dataclasses import replace

    from interlcm.upsampler import open_upsamplers

    batches = []

    class Recording(TorchBackend):
        def _run(self, component, inputs, batch, dims):
            batches.append((component.name, batch))
            return super()._run(component, inputs, batch, dims)

    backend = Recording(replace(tiny_models), max_batch=2)  # a copy of the container: realesrgan joins it
    assert not backend.has("realesrgan")
    upsamplers, why = open_upsamplers(backend, None, background=True, face=True, options=TileOptions(32, 8))
    assert why == "realesrgan: on the torch backend, weights: random, seed 0" and backend.has("realesrgan")
    assert upsamplers.face is upsamplers.background and upsamplers.face.backend is backend
    faces = [np.random.default_rng(i).integers(0, 256, (32, 32, 3), dtype=np.uint8) for i in range(5)]
    together = upsamplers.face.enhance_many(faces, outscale=2)
    assert batches == [("realesrgan", 2), ("realesrgan", 2), ("realesrgan", 1)]
    alone = [upsamplers.face.enhance(face, outscale=2) for face in faces]
    assert all(np.abs(a.astype(int) - b).max() <= 1 for a, b in zip(together, alone))


def test_a_backend_without_realesrgan_says_it_runs_on_the_cpu(tiny_cfg):
    from interlcm.backend import BackendBase
    from interlcm.upsampler import open_upsamplers

    class Exported(BackendBase):
        name, config, device = "onnxruntime", tiny_cfg, torch.device("cpu")

        def has(self, component):
            return False

    upsamplers, why = open_upsamplers(Exported(), None, background=True, face=False)
    assert why.startswith("note: the onnxruntime backend has no realesrgan, so Real-ESRGAN runs on the CPU with torch")
    assert "interlcm-export --components realesrgan" in why and upsamplers.face is None
    assert isinstance(upsamplers.background.backend, TorchBackend)


def test_tiles_of_one_size_go_in_one_call(tiny_upsampler):
    """A 160x160 image in 32-px tiles with 8 px of padding: 25 tiles of 4 sizes (edge or not, each way), 4 calls."""
    calls = []

    class Recording(TorchBackend):
        def run(self, component, **inputs):
            calls.append(tuple(inputs["tile"].shape))
            return super().run(component, **inputs)

    cfg = tiny_upsampler.realesrgan.cfg
    up = TiledUpsampler(Recording(tiny_upsampler), cfg.scale, cfg.unshuffle, TileOptions(32, 8))
    up.upsample(torch.rand(1, 3, 160, 160))
    assert sorted(calls) == [(4, 3, 40, 40), (6, 3, 40, 48), (6, 3, 48, 40), (9, 3, 48, 48)]  # corners, edges, inside
