"""`interlcm-trt restore` through the CLI on ONNX Runtime (--onnx) and TensorRT (--engines, the stand-in), against torch.

What GPU users run, run here on the CPU: the same binding, allocation, splitting and stream code
(STYLE.md 13). The export's profile ends at batch 2 (`tiny_onnx_batch2`: what `--batch 1:1:2`
records), so each case sends the engines more than one call holds:

- a non-square 880x600 photo with 6 faces (dlib finds them; random RetinaFace weights find none),
  restored 2 at a time and upscaled with Real-ESRGAN by `--face-upsample`, 6 faces in one call;
- RetinaFace on a 1024x768 photo (32,256 priors, not the traced 640x640's 16,800) and on a
  2400x600 one whose detection view (2560x640) is beyond the old 2048-px profile;
- a 10-frame video: 8 frames per detector call, `--bg-upsampler realesrgan` on every frame.

Tolerances, per output photo or frame (uint8). ONNX Runtime fp32 is torch's float arithmetic
reordered: at most 1 grey level (a value near a rounding boundary) on at most 1 % of the values
(measured: 1 level on at most 0.004 %). The TensorRT engines are fp16 (the fp16 ONNX files, run by
the stand-in) against torch fp32, each stage within its fp16 tolerance (1e-2 of its range,
components.py): PSNR above 55 dB (measured 68.6 dB on the 6-face photo, max 5 levels; 67.0-67.5 dB
on the Real-ESRGAN'd frames, max 1 level), ~10 dB below what fp16 gives, far above a broken stage.
"""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from interlcm.engines.cli import main
from interlcm.testing import group_photo, write_clip

HEADS = ((0.14, 0.3, 150, 0), (0.42, 0.28, 140, 8), (0.72, 0.3, 160, -6),
         (0.2, 0.75, 150, 5), (0.5, 0.74, 140, -4), (0.82, 0.74, 150, 0))
FACES = ["faces6.png"]
SHAPES = ["wide.png", "panorama.png"]
VIDEO = ["clip.mp4"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    Image.fromarray(group_photo((880, 600), HEADS)).save(root / "faces6.png")
    Image.fromarray(group_photo((1024, 768))).save(root / "wide.png")
    Image.fromarray(group_photo((2400, 600), ((0.5, 0.5, 300, 0),))).save(root / "panorama.png")
    frames = [group_photo((96, 64), ((0.5 + 0.01 * i, 0.5, 40, 0),)) for i in range(10)]
    write_clip(root / "clip.mp4", frames, fps=5)
    return root


CASES = {  # name -> (inputs, options)
    "faces": (FACES, ["--detector", "dlib", "--batch", "2", "--face-upsample"]),
    "shapes": (SHAPES, ["--detector", "retinaface_mobile", "--batch", "2", "--upscale", "1"]),
    "video": (VIDEO, ["--detector", "retinaface_mobile", "--batch", "2", "--bg-upsampler", "realesrgan",
                      "--save-frames"]),
}


def _restore(inputs, out, case: str, backend: list[str]) -> dict[str, np.ndarray]:
    names, options = CASES[case]
    result = CliRunner().invoke(main, ["restore", *(str(inputs / n) for n in names), *backend, *options,
                                       "--seed", "3", "--threads", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    found = {p.relative_to(out).as_posix(): p for p in out.rglob("*.png")}
    return {name: np.asarray(Image.open(path), dtype=np.int16) for name, path in sorted(found.items())} | {
        "output": result.output}


@pytest.fixture(scope="module")
def torch_outputs(inputs, tiny_weights_unparsed, tmp_path_factory):
    """The reference: torch fp32 on the weights the export was made from (seed-0 tiny), without ParseNet."""
    out = tmp_path_factory.mktemp("torch")
    return {case: _restore(inputs, out / case, case, ["--backend", "torch", "--weights", str(tiny_weights_unparsed)])
            for case in CASES}


def _check(got: dict, ref: dict, case: str, fp16: bool) -> None:
    assert sorted(k for k in got if k != "output") == sorted(k for k in ref if k != "output")
    for name in (k for k in ref if k != "output"):
        a, b = got[name], ref[name]
        assert a.shape == b.shape, name
        diff = np.abs(a - b)
        if fp16:
            mse = float((diff.astype(np.float64) ** 2).mean())
            psnr = 10 * np.log10(255.0**2 / mse) if mse else float("inf")
            assert psnr > 55.0, f"{case} {name}: {psnr:.1f} dB against torch fp32 (max diff {diff.max()})"
        else:
            assert diff.max() <= 1 and (diff > 0).mean() <= 0.01, f"{case} {name}: max {diff.max()}, " \
                f"{(diff > 0).mean():.2%} of values differ"


def _expected_outputs(case: str, result: dict) -> None:
    output = result["output"]
    if case == "faces":
        assert sorted(k for k in result if k != "output") == ["faces6.png"]
        assert result["faces6.png"].shape == (1200, 1760, 3)
        assert "restored 1/1" in output and "no face found" not in output
    elif case == "shapes":
        assert result["wide.png"].shape == (768, 1024, 3) and result["panorama.png"].shape == (600, 2400, 3)
        assert "no face found: the photo is only upscaled (2 image(s): panorama.png, wide.png)" in output  # random RetinaFace weights
    else:
        frames = [k for k in result if k.startswith("clip_frames/")]
        assert len(frames) == 10 and result[frames[0]].shape == (128, 192, 3)
        assert "10 frames at 5 fps, 192x128" in output


def test_onnx_runtime_restores_like_torch(inputs, tiny_onnx_batch2, torch_outputs, tmp_path):
    for case in CASES:
        got = _restore(inputs, tmp_path / case, case, ["--onnx", str(tiny_onnx_batch2)])
        assert "onnxruntime fp32 on CPU" in got["output"]
        assert "realesrgan: on the onnxruntime backend" in got["output"] or case == "shapes"
        _expected_outputs(case, got)
        _check(got, torch_outputs[case], case, fp16=False)


def test_tensorrt_restores_like_torch(inputs, tiny_engines_batch2, trt_standin, torch_outputs, tmp_path):
    for case in CASES:
        got = _restore(inputs, tmp_path / case, case, ["--backend", "tensorrt", "--engines", str(tiny_engines_batch2)])
        assert "tensorrt engines from" in got["output"]
        assert "realesrgan: on the tensorrt backend" in got["output"] or case == "shapes"
        _expected_outputs(case, got)
        _check(got, torch_outputs[case], case, fp16=True)
    launched = {(ctx.engine.component, *sorted(ctx.shapes.values())) for ctx in trt_standin.contexts
                if any(call[0] == "execute_async_v3" for call in ctx.calls)}
    assert {c[0] for c in launched} >= {"retinaface_mobile", "realesrgan", "unet", "vae_decoder"}
    assert ("realesrgan", (2, 3, 64, 64)) in launched  # the photo's faces upsampled 2 at a time (the profile's max)
    assert ("retinaface_mobile", (2, 3, 640, 960)) in launched  # video frames (96x64 seen at 960x640) 2 at a time
