"""Output names (engines.outputs.plan_outputs): every input keeps its own result, no input is replaced."""

from __future__ import annotations

from pathlib import Path

import pytest

from interlcm.engines.outputs import OutputClash, OutputPlan, output_complete, plan_outputs, source_id


def _touch(root: Path, *names: str) -> list[Path]:
    paths = []
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
        paths.append(path)
    return paths


def _names(plan, out: Path) -> list[str]:
    return [p.photo.relative_to(out).as_posix() for p in plan.photos]


@pytest.mark.parametrize(
    ("inputs", "expected"),
    [
        (["a.png", "b.webp"], ["a.png", "b.png"]),  # no clash: plain stems, PNG unless JPEG
        (["a.png", "a.jpg"], ["a.png", "a.jpg"]),  # JPEG in, JPEG out: different names already
        (["a.png", "a.webp"], ["a_png.png", "a_webp.png"]),  # both PNG out: keep the extension
        (["x.png", "y.PNG", "z.WEBP", "w.Tif"], ["x.png", "y.PNG", "z.PNG", "w.png"]),  # the suffix's case kept
        (["p.jpeg", "p.jpg", "q.JPG"], ["p.jpeg", "p.jpg", "q.JPG"]),
        (["a.JPG", "a.jpeg"], ["a.JPG", "a.jpeg"]),
        (["A/face.png", "B/face.png"], ["A/face.png", "B/face.png"]),  # folders mirrored
        (["A/face.png", "A/deep/face.png", "c.png"], ["A/face.png", "A/deep/face.png", "c.png"]),
    ],
)
def test_every_input_gets_its_own_output(tmp_path, inputs, expected):
    paths = _touch(tmp_path / "in", *inputs)
    out = tmp_path / "out"
    plan = plan_outputs(paths, out)
    assert _names(plan, out) == expected
    assert [p.source for p in plan.photos] == paths


def test_folders_below_the_common_folder_only(tmp_path):
    """Mirroring starts at the inputs' common folder, not at the file system root."""
    (a,) = _touch(tmp_path / "photos" / "2024", "a.png")
    out = tmp_path / "out"
    assert _names(plan_outputs([a], out), out) == ["a.png"]


def test_an_unresolvable_clash_is_an_error(tmp_path):
    """a.png + a.webp both become a_png.png / a_webp.png, but a_png.png is an input of its own."""
    paths = _touch(tmp_path / "in", "a.png", "a.webp", "a_png.png")
    with pytest.raises(OutputClash, match=r"a_png\.png.*rename one of them"):
        plan_outputs(paths, tmp_path / "out")


def test_saved_faces_folder_may_not_meet_an_input_folder(tmp_path):
    paths = _touch(tmp_path / "in", "a.png", "a_faces/b.png")
    assert _names(plan_outputs(paths, tmp_path / "out"), tmp_path / "out") == ["a.png", "a_faces/b.png"]
    with pytest.raises(OutputClash, match="a_faces"):
        plan_outputs(paths, tmp_path / "out", save_faces=True)


def test_saved_faces_go_beside_the_photo(tmp_path):
    (path,) = _touch(tmp_path / "in", "group.jpg")
    (plan,) = plan_outputs([path], tmp_path / "out", save_faces=True).photos
    assert plan.photo == tmp_path / "out" / "group.jpg" and plan.faces == tmp_path / "out" / "group_faces"


def test_never_over_an_input(tmp_path):
    paths = _touch(tmp_path / "in", "a.png", "b.jpg")
    with pytest.raises(OutputClash, match="would overwrite an input"):
        plan_outputs(paths, tmp_path / "in")
    # a webp input writes a png: no input is at risk in its own folder
    (webp,) = _touch(tmp_path / "w", "c.webp")
    assert _names(plan_outputs([webp], tmp_path / "w"), tmp_path / "w") == ["c.png"]


def test_output_complete_only_for_a_whole_image(tmp_path):
    from PIL import Image

    plan = OutputPlan(tmp_path / "in.png", tmp_path / "out.png")
    assert not output_complete(plan)
    Image.new("RGB", (64, 64), (10, 20, 30)).save(plan.photo)
    assert output_complete(plan)
    plan.photo.write_bytes(plan.photo.read_bytes()[:60])  # truncated
    assert not output_complete(plan)


# --- what OUT already holds -------------------------------------------------------------------------


def _photo(path: Path, value: int = 0, source: str | None = None) -> Path:
    """A real 8x8 PNG/JPEG; `source`: as an output of ours records its input."""
    import numpy as np

    from interlcm.imageio import write_image

    return write_image(path, np.full((8, 8, 3), value, np.uint8), source=source)


def test_files_already_in_out_are_never_replaced(tmp_path):
    """`restore album/new --out album`: the album's own holiday.png is not this run's to replace."""
    album = tmp_path / "album"
    mine = _photo(album / "holiday.png", 1)
    new = _photo(album / "new" / "holiday.png", 2)
    with pytest.raises(OutputClash, match=r"would replace files this run did not write: .*album/holiday\.png "
                                          r"\(not an output of .*album/new/holiday\.png\).*--overwrite"):
        plan_outputs([new], album)
    assert plan_outputs([new], album, overwrite=True).photos[0].photo == mine  # asked for: allowed


def test_only_an_earlier_output_of_the_same_input_is_replaced(tmp_path):
    """Two cameras' IMG_0001.png in two runs into one OUT: the second is refused; a rerun of the first is fine."""
    first = _photo(tmp_path / "cam1" / "IMG_0001.png", 1)
    second = _photo(tmp_path / "cam2" / "IMG_0001.png", 2)
    out = tmp_path / "out"
    _photo(out / "IMG_0001.png", 9, source=source_id(first))  # what restoring cam1 wrote
    _photo(out / "IMG_0001_faces" / "00.png", 9, source=source_id(first))
    again = plan_outputs([first], out, save_faces=True)
    assert again.earlier == {first}  # a rerun: replaced, or skipped with --skip-existing
    with pytest.raises(OutputClash, match=r"IMG_0001\.png \(not an output of .*cam2/IMG_0001\.png\)"):
        plan_outputs([second], out)
    (out / "IMG_0001.png").unlink()
    with pytest.raises(OutputClash, match=r"IMG_0001_faces/00\.png \(not an output of .*cam2"):  # its faces too
        plan_outputs([second], out, save_faces=True)


def test_outputs_are_compared_with_inputs_by_identity_not_spelling(tmp_path):
    """On a case-insensitive file system `out/IMG_0001.jpg` IS `in/IMG_0001.JPG`: one file under two names.

    A hard link is the same situation on any file system: two spellings, one file. Never replaced,
    not even with --overwrite.
    """
    import os

    src = _photo(tmp_path / "in" / "IMG_0001.JPG", 1)
    out = tmp_path / "out"
    out.mkdir()
    os.link(src, out / "IMG_0001.JPG")
    for overwrite in (False, True):
        with pytest.raises(OutputClash, match=r"out/IMG_0001\.JPG would overwrite an input \(.*in/IMG_0001\.JPG"):
            plan_outputs([src], out, overwrite=overwrite)
    (out / "IMG_0001.JPG").unlink()
    (out / "IMG_0001_faces").mkdir()
    os.link(src, out / "IMG_0001_faces" / "00.png")
    with pytest.raises(OutputClash, match="would overwrite an input"):  # inside a faces folder too
        plan_outputs([src], out, save_faces=True, overwrite=True)


@pytest.mark.parametrize(
    ("inputs", "clash"),
    [
        (["A/x.png", "a/x.png"], r"out/a/x_png\.png and .*out/A/x_png\.png \(one file where case does not count\)"),
        (["x.png", "x.PNG"], r"would both write"),  # x_png.png and x_PNG.PNG: one name, case-folded
        (["IMG_1.JPG", "img_1.jpg"], r"would both write"),
    ],
)
def test_names_are_compared_case_folded(tmp_path, inputs, clash):
    paths = _touch(tmp_path / "in", *inputs)
    with pytest.raises(OutputClash, match=clash):
        plan_outputs(paths, tmp_path / "out")


def test_one_plan_covers_photos_faces_videos_and_frames(tmp_path):
    photos = _touch(tmp_path / "in", "a.png", "CLIP.png")
    videos = _touch(tmp_path / "in", "CLIP.MP4", "b.mkv")
    out = tmp_path / "out"
    plan = plan_outputs(photos, out, videos=videos, save_faces=True, save_frames=True)
    assert [(v.video.name, v.frames.name) for v in plan.videos] == [("CLIP.MP4", "CLIP_frames"), ("b.mkv", "b_frames")]
    assert [(p.photo.name, p.faces.name) for p in plan.photos] == [("a.png", "a_faces"), ("CLIP.png", "CLIP_faces")]
    # a photo mirrored into a video's frames folder: refused before any work (it replaced 000001.png)
    (frame,) = _touch(tmp_path / "in", "CLIP_frames/000001.png")
    with pytest.raises(OutputClash, match="CLIP_frames"):
        plan_outputs([*photos, frame], out, videos=videos, save_frames=True)
    # two videos of one stem: the frames folders would meet, so both keep their extension
    twins = _touch(tmp_path / "in", "t.mp4", "t.mov")
    plan = plan_outputs([], out, videos=twins, save_frames=True)
    assert [(v.video.name, v.frames.name) for v in plan.videos] == [("t_mp4.mp4", "t_mp4_frames"),
                                                                   ("t_mov.mov", "t_mov_frames")]
    assert [v.video.name for v in plan_outputs([], out, videos=twins).videos] == ["t.mp4", "t.mov"]


def test_a_frames_folder_holding_other_files_is_not_ours(tmp_path):
    (video,) = _touch(tmp_path / "in", "clip.mp4")
    out = tmp_path / "out"
    _photo(out / "clip_frames" / "000001.png", 3, source=source_id(video))  # ours, from this video
    assert plan_outputs([], out, videos=[video], save_frames=True).videos[0].frames == out / "clip_frames"
    _photo(out / "clip_frames" / "000002.png", 4)  # the user's
    with pytest.raises(OutputClash, match=r"clip_frames/000002\.png \(not an output of"):
        plan_outputs([], out, videos=[video], save_frames=True)


def test_output_records_its_input_in_the_header(tmp_path):
    """read_source reads the header only: a truncated file of ours is still recognised, others are not."""
    from interlcm.imageio import read_source

    for name in ("a.png", "b.JPG"):
        path = _photo(tmp_path / name, 5, source="abc")
        assert read_source(path) == "abc"
        path.write_bytes(path.read_bytes()[:-20])
        assert read_source(path) == "abc"
        assert read_source(_photo(tmp_path / f"plain_{name}", 5)) is None
    (tmp_path / "junk.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\xff" * 40)
    assert read_source(tmp_path / "junk.png") is None
