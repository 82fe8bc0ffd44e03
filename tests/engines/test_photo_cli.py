"""`interlcm-trt restore` on whole photos: the full chain with tiny weights and the dlib detector."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from interlcm.engines.cli import main
from interlcm.testing import group_photo


def _restore(*args: str):
    return CliRunner().invoke(main, ["restore", *args])


def test_whole_chain_writes_the_upscaled_photo_with_faces_pasted(tmp_path):
    """Two faces found by dlib in a 480x360 PNG (enlarged to 512 for detection); output 960x720.

    Away from the faces every pixel equals the bilinear 2x input; the faces themselves changed.
    """
    pytest.importorskip("dlib", reason="the faces-dlib extra is not installed (make install installs it)")
    from interlcm.engines.photo import detection_view
    from interlcm.faces.align import align_face
    from interlcm.faces.dlib_detector import DlibDetector
    from interlcm.faces.paste import canvas_inverse

    heads = ((0.3, 0.4, 200, 0), (0.72, 0.45, 170, 8))
    photo = group_photo((480, 360), heads)
    src = tmp_path / "in" / "group.png"
    src.parent.mkdir()
    Image.fromarray(photo).save(src)
    out = tmp_path / "out"
    # random preset weights carry no ParseNet (an `init` folder does: ~15 s of 512-px parsing on a CPU)
    result = _restore(str(src), "--preset", "tiny", "--detector", "dlib", "--batch", "2",
                      "--save-faces", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "paste-back mask: soft box mask alone (no face parser)" in result.output
    restored = np.asarray(Image.open(out / "group.png"))
    assert restored.shape == (720, 960, 3)
    assert sorted(p.name for p in (out / "group_faces").iterdir()) == ["00.png", "01.png"]

    ref = cv2.resize(photo, (960, 720), interpolation=cv2.INTER_LINEAR)
    # Away from the faces: outside each pasted crop's square on the canvas, found as the engine finds
    # it (dlib on the detection view, alignment at the tiny 64 px resolution), grown by 2 px.
    view, scale = detection_view(photo)
    near_faces = np.zeros((720, 960), np.uint8)
    for face in DlibDetector().detect([view])[0]:
        aligned = align_face(photo, face.landmarks / scale, "dlib5", 64)
        square = np.array([[0, 0, 1], [64, 0, 1], [64, 64, 1], [0, 64, 1]], np.float64) @ canvas_inverse(aligned.inverse, 2).T
        cv2.fillConvexPoly(near_faces, np.round(square).astype(np.int32), 1)
    near_faces = cv2.dilate(near_faces, np.ones((5, 5), np.uint8)) > 0
    assert 0.05 < near_faces.mean() < 0.3
    assert np.array_equal(restored[~near_faces], ref[~near_faces])
    for cx, cy, _, _ in heads:  # random tiny weights: the face centres are not the input any more
        y, x = int(cy * 720), int(cx * 960)
        assert np.abs(restored[y - 10 : y + 10, x - 10 : x + 10].astype(int) - ref[y - 10 : y + 10, x - 10 : x + 10]).mean() > 5


def test_default_detector_that_cannot_run_is_one_sentence(tmp_path):
    from interlcm.faces.detectors import DEFAULT_DETECTOR, DETECTORS, DetectorContext

    try:
        DETECTORS[DEFAULT_DETECTOR](DetectorContext())
    except RuntimeError:
        pass
    else:
        pytest.skip(f"{DEFAULT_DETECTOR} can run here")
    src = tmp_path / "p.png"
    Image.fromarray(group_photo((64, 48))).save(src)
    result = _restore(str(src), "--out", str(tmp_path / "o"))
    assert result.exit_code == 1 and "--detector dlib" in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "o").exists()


def test_a_name_clash_fails_before_any_work(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for name in ("a.png", "a.webp", "a_png.png"):
        Image.new("RGB", (32, 32)).save(src / name)
    result = _restore(str(src), "--aligned", "--preset", "tiny", "--out", str(tmp_path / "o"))
    assert result.exit_code == 1 and "would both write" in result.output, result.output
    assert "backend:" not in result.output and not (tmp_path / "o").exists()


def test_skip_existing_skips_only_complete_outputs(tmp_path, tiny_weights):
    """JPEG in -> JPEG out; a second run skips the complete output and redoes the truncated one."""
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.jpg", "b.png"):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(src / name)
    out = tmp_path / "out"
    args = [str(src), "--aligned", "--weights", str(tiny_weights), "--batch", "2", "--out", str(out)]
    assert _restore(*args).exit_code == 0
    with Image.open(out / "a.jpg") as img:
        assert img.format == "JPEG"
    a_before = (out / "a.jpg").stat().st_mtime_ns
    data = (out / "b.png").read_bytes()
    (out / "b.png").write_bytes(data[: len(data) // 2])  # a broken output of ours (header kept): not complete
    result = _restore(*args, "--skip-existing")
    assert result.exit_code == 0, result.output
    assert "restored 1/2" in result.output and "skipped 1 image(s)" in result.output
    assert (out / "a.jpg").stat().st_mtime_ns == a_before
    with Image.open(out / "b.png") as img:
        img.load()


def test_demo_photo_is_a_small_whole_photo_with_one_face():
    pytest.importorskip("dlib", reason="the faces-dlib extra is not installed (make install installs it)")
    from interlcm.engines.photo import detection_view
    from interlcm.faces.dlib_detector import DlibDetector
    from interlcm.imageio import demo_photo_path, read_rgb

    path = demo_photo_path()
    assert path.stat().st_size < 100_000
    photo = read_rgb(path)
    assert photo.shape == (352, 448, 3)
    assert len(DlibDetector().detect([detection_view(photo)[0]])[0]) == 1


def test_no_face_note_names_the_photos(tmp_path):
    """"no face found ... (2 image(s))" alone does not say which photos to look at."""
    pytest.importorskip("dlib", reason="the faces-dlib extra is not installed (make install installs it)")
    src = tmp_path / "in"
    src.mkdir()
    for name in ("beach.png", "sky.jpg"):
        Image.new("RGB", (64, 48), (90, 140, 200)).save(src / name)
    result = _restore(str(src), "--preset", "tiny", "--detector", "dlib", "--out", str(tmp_path / "o"))
    assert result.exit_code == 0, result.output
    assert "no face found: the photo is only upscaled (2 image(s): beach.png, sky.jpg)" in result.output
