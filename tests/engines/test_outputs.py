"""Output names (engines.outputs.plan_outputs): every input keeps its own result, no input is replaced."""

from __future__ import annotations

from pathlib import Path

import pytest

from interlcm.engines.outputs import OutputClash, OutputPlan, output_complete, plan_outputs


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
