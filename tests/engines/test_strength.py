"""`strength`: each pasted face mixes the restored and the original face (A1111's visibility, facefusion's blend).

1.0 (the default) is the output without the option, byte for byte; 0.0 is the input unchanged (whole
photos: the plain upscaled canvas, what a photo without faces gives; aligned crops: the input crop at
the model resolution); 0.5 lies between the two in every pixel. Checked through the CLI (photos,
aligned crops, video frames, the Ray job's spec) and Serve's query parameter.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from interlcm.engines.cli import main
from interlcm.testing import group_photo

# Two faces dlib finds, far enough apart that their pasted crops do not overlap (where crops overlap,
# the second blend mixes over the first and a partial strength need not lie between 0 and 1).
HEADS = ((0.22, 0.45, 190, 0), (0.76, 0.45, 170, 6))
SIZE = (640, 320)
COMMON = ["--preset", "tiny", "--detector", "dlib", "--seed", "3", "--threads", "1"]


def _restore(*args: str) -> str:
    result = CliRunner().invoke(main, ["restore", *args])
    assert result.exit_code == 0, result.output
    return result.output


def _read(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture(scope="module")
def two_faces(tmp_path_factory):
    pytest.importorskip("dlib", reason="the faces-dlib extra is not installed (make install installs it)")
    root = tmp_path_factory.mktemp("strength")
    photo = group_photo(SIZE, HEADS)
    Image.fromarray(photo).save(root / "two.png")
    return root, photo


@pytest.fixture(scope="module")
def whole(two_faces):
    """CLI outputs of the 2-face photo: without --strength and at 1, 0.5 and 0."""
    root, _ = two_faces
    out = {}
    for name, extra in (("default", []), ("1", ["--strength", "1"]), ("0.5", ["--strength", "0.5"]),
                        ("0", ["--strength", "0"])):
        log = _restore(str(root / "two.png"), *COMMON, "--out", str(root / name), *extra)
        assert "soft box mask alone" in log  # faces were found and pasted
        out[name] = _read(root / name / "two.png")
    return out


def test_strength_1_is_todays_output_byte_for_byte(two_faces, whole):
    root, _ = two_faces
    assert (root / "1" / "two.png").read_bytes() == (root / "default" / "two.png").read_bytes()


def test_strength_0_is_the_upscaled_input(two_faces, whole):
    _, photo = two_faces
    h, w = photo.shape[:2]
    plain = cv2.resize(photo, (2 * w, 2 * h), interpolation=cv2.INTER_LINEAR)  # a photo without faces gives this
    assert np.array_equal(whole["0"], plain)
    assert np.abs(whole["1"].astype(int) - plain).max() > 50  # the faces did change at full strength


def test_strength_half_lies_between_per_pixel(whole):
    lo = np.minimum(whole["0"], whole["1"])
    hi = np.maximum(whole["0"], whole["1"])
    half = whole["0.5"]
    assert np.all(lo <= half) and np.all(half <= hi)
    changed = whole["0"] != whole["1"]
    strictly = (lo < half) & (half < hi)
    assert strictly.sum() > 0.5 * (np.abs(whole["0"].astype(int) - whole["1"]) > 2).sum()  # a real mix
    assert np.array_equal(half[~changed], whole["1"][~changed])


def test_aligned_crops_at_0_half_and_1(tmp_path, tiny_cfg):
    """An aligned crop at the model size: 0 gives it back, 1 the restored crop, 0.5 between; any size -> model size."""
    rng = np.random.default_rng(0)
    r = tiny_cfg.resolution
    crop = rng.integers(0, 255, (r, r, 3), dtype=np.uint8)
    big = rng.integers(0, 255, (r + 30, r + 10, 3), dtype=np.uint8)  # stretched to r x r, as the model sees it
    (tmp_path / "in").mkdir()
    Image.fromarray(crop).save(tmp_path / "in" / "crop.png")
    Image.fromarray(big).save(tmp_path / "in" / "big.png")
    got = {}
    for s in ("1", "0.5", "0"):
        _restore(str(tmp_path / "in"), "--aligned", *COMMON, "--strength", s, "--save-faces", "--out", str(tmp_path / s))
        got[s] = {n: _read(tmp_path / s / f"{n}.png") for n in ("crop", "big")}
        for n in ("crop", "big"):  # --save-faces writes the model's own output: at 1 the crop is exactly that
            assert np.array_equal(_read(tmp_path / s / f"{n}_faces" / "00.png"), _read(tmp_path / "1" / f"{n}.png"))
    _restore(str(tmp_path / "in"), "--aligned", *COMMON, "--out", str(tmp_path / "default"))
    for n in ("crop", "big"):
        assert (tmp_path / "1" / f"{n}.png").read_bytes() == (tmp_path / "default" / f"{n}.png").read_bytes()
    assert np.array_equal(got["0"]["crop"], crop)
    assert np.array_equal(got["0"]["big"], cv2.resize(big, (r, r), interpolation=cv2.INTER_LINEAR))
    for n in ("crop", "big"):
        zero, one, half = got["0"][n].astype(int), got["1"][n].astype(int), got["0.5"][n].astype(int)
        assert np.abs(zero - one).mean() > 10
        assert np.all(np.minimum(zero, one) <= half) and np.all(half <= np.maximum(zero, one))
        assert np.abs(half - (zero + one) / 2).max() <= 1  # the mix is the mean, up to rounding


def test_video_frames_at_strength_0_are_the_upscaled_frames(tmp_path):
    """Video goes through the same PhotoRestorer: at 0 every saved frame is the decoded input frame at 2x."""
    pytest.importorskip("dlib", reason="the faces-dlib extra is not installed (make install installs it)")
    import av

    from interlcm.testing import write_clip

    photo = group_photo(SIZE, HEADS)
    write_clip(tmp_path / "clip.mp4", [photo, np.roll(photo, 4, axis=1)], fps=2, audio_rate=None)
    with av.open(str(tmp_path / "clip.mp4")) as c:
        decoded = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    for s in ("0", "1"):
        _restore(str(tmp_path / "clip.mp4"), *COMMON, "--strength", s, "--save-frames", "--out", str(tmp_path / s))
    frames = {s: sorted((tmp_path / s / "clip_frames").iterdir()) for s in ("0", "1")}
    assert len(frames["0"]) == len(decoded) == 2
    for frame, zero, one in zip(decoded, frames["0"], frames["1"]):
        h, w = frame.shape[:2]
        plain = cv2.resize(frame, (2 * w, 2 * h), interpolation=cv2.INTER_LINEAR)
        assert np.array_equal(_read(zero), plain)
        assert np.abs(_read(one).astype(int) - plain).max() > 50


def test_cli_refuses_out_of_range_strength(tmp_path):
    result = CliRunner().invoke(main, ["restore", "--strength", "1.5", "--preset", "tiny", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "1.5" in result.output and "0<=x<=1" in result.output.replace(" ", "")


def test_ray_job_carries_strength(tmp_path, monkeypatch):
    """`--ray` hands the same PhotoOptions (strength included) to every actor through the JobSpec."""
    pytest.importorskip("ray")
    from interlcm.engines import ray_job
    from interlcm.engines.outputs import RestoreReport

    seen = {}

    def run_job(spec, inputs, out, overwrite=False):
        seen["spec"] = spec
        return RestoreReport()

    monkeypatch.setattr(ray_job, "connect", lambda address: False)
    monkeypatch.setattr(ray_job, "run_job", run_job)
    result = CliRunner().invoke(main, ["restore", str(tmp_path), "--preset", "tiny", "--strength", "0.25",
                                       "--ray", "local", "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    assert seen["spec"].photo.strength == 0.25


def test_photo_options_and_serve_query_refuse_bad_strength():
    from interlcm.choices import get_variant
    from interlcm.engines.photo import PhotoOptions

    with pytest.raises(ValueError, match="out of range"):
        PhotoOptions(strength=-0.1)
    with pytest.raises(ValueError, match="out of range"):
        PhotoOptions(strength=float("nan"))
    pytest.importorskip("ray")
    from interlcm.engines.serve import BadRequest, parse_options

    variant = get_variant("3step")
    assert parse_options({}, variant).strength == 1.0
    assert parse_options({"strength": "0.5"}, variant).strength == 0.5
    for raw, reason in (("2", "out of range"), ("half", "not a number"), ("nan", "out of range")):
        with pytest.raises(BadRequest, match=reason):
            parse_options({"strength": raw}, variant)
