"""FaceDataset: shapes, ranges, seeding by (seed, epoch, index), workers, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data
from torch.utils.data import DataLoader

from interlcm.train.data import FaceDataset, TrainingImageError, find_images, load_rgb
from interlcm.train.degradations import DegradationConfig

RES = 64


@pytest.fixture(scope="module")
def faces(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three 80x80 crops in three formats, nested, plus a file that is not an image."""
    root = tmp_path_factory.mktemp("faces")
    photo = data.astronaut()
    crops = [photo[30:110, 170:250], photo[100:180, 200:280], photo[300:380, 50:130]]
    (root / "sub" / "deeper").mkdir(parents=True)
    Image.fromarray(crops[0]).save(root / "a.png")
    Image.fromarray(crops[1]).save(root / "sub" / "b.JPG", quality=95)
    Image.fromarray(crops[2]).save(root / "sub" / "deeper" / "c.webp", lossless=True)
    (root / "notes.txt").write_text("not an image")
    return root


def items(ds: FaceDataset) -> list[dict[str, torch.Tensor]]:
    return [ds[i] for i in range(len(ds))]


def test_finds_images_recursively_and_ignores_other_files(faces: Path) -> None:
    names = [p.name for p in find_images(faces)]
    assert names == ["a.png", "b.JPG", "c.webp"]


def test_items_have_the_right_shape_dtype_and_range(faces: Path) -> None:
    ds = FaceDataset(faces, resolution=RES)
    assert len(ds) == 3
    for item in items(ds):
        assert set(item) == {"hq", "lq"}
        for t in item.values():
            assert t.shape == (3, RES, RES) and t.dtype == torch.float32
            assert t.min() >= -1.0 and t.max() <= 1.0
        assert item["hq"].min() < -0.5 and item["hq"].max() > 0.5  # [-1, 1], not [0, 1]
        assert (item["lq"] - item["hq"]).abs().mean() > 0.01


def test_hq_is_the_bicubic_resize_of_the_file(faces: Path) -> None:
    ds = FaceDataset(faces, resolution=RES, hflip=False)
    expected = np.asarray(Image.open(faces / "a.png").resize((RES, RES), Image.Resampling.BICUBIC)) / 255.0
    np.testing.assert_allclose(ds[0]["hq"].permute(1, 2, 0).numpy(), expected * 2 - 1, atol=1e-6)


def test_reproducible_for_a_seed_and_different_for_another(faces: Path) -> None:
    a = items(FaceDataset(faces, resolution=RES, seed=1))
    b = items(FaceDataset(faces, resolution=RES, seed=1))
    c = items(FaceDataset(faces, resolution=RES, seed=2))
    for x, y, z in zip(a, b, c):
        assert torch.equal(x["lq"], y["lq"]) and torch.equal(x["hq"], y["hq"])
        assert not torch.equal(x["lq"], z["lq"])


def test_set_epoch_draws_new_degradations(faces: Path) -> None:
    ds = FaceDataset(faces, resolution=RES, hflip=False)
    first = ds[0]["lq"]
    ds.set_epoch(1)
    assert not torch.equal(ds[0]["lq"], first)
    ds.set_epoch(0)
    assert torch.equal(ds[0]["lq"], first)
    assert torch.equal(ds[-3]["lq"], first)  # a negative index is the same item


def test_hflip_mirrors_about_half_the_time(faces: Path) -> None:
    ds = FaceDataset(faces, resolution=RES, degradation=DegradationConfig(corrupt=False))
    plain = FaceDataset(faces, resolution=RES, hflip=False)[0]["hq"]
    flips = []
    for epoch in range(12):
        ds.set_epoch(epoch)
        hq = ds[0]["hq"]
        flipped = torch.equal(hq, plain.flip(-1))
        assert flipped or torch.equal(hq, plain)
        flips.append(flipped)
    assert 0 < sum(flips) < len(flips)


def test_workers_give_the_same_batches_as_the_main_process(faces: Path) -> None:
    ds = FaceDataset(faces, resolution=RES, seed=3)
    ds.set_epoch(2)

    def run(workers: int) -> list[dict[str, torch.Tensor]]:
        return list(DataLoader(ds, batch_size=2, shuffle=False, num_workers=workers))

    main, parallel = run(0), run(2)
    assert len(main) == len(parallel) == 2
    for m, p in zip(main, parallel):
        assert torch.equal(m["hq"], p["hq"]) and torch.equal(m["lq"], p["lq"])


def test_empty_folder_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("no faces here")
    with pytest.raises(FileNotFoundError, match=r"no \..* images found under") as err:
        FaceDataset(tmp_path)
    assert "\n" not in str(err.value)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        FaceDataset(tmp_path / "missing")


def test_bad_images_are_skipped_and_reported_up_front(tmp_path: Path, faces: Path) -> None:
    """Text named .png, a zero-byte file and a non-square photo: left out and listed, not a crash."""
    Image.open(faces / "a.png").save(tmp_path / "good.png")
    (tmp_path / "text.png").write_text("definitely not a png")
    (tmp_path / "empty.jpg").write_bytes(b"")
    Image.fromarray(data.astronaut()[:80, :60]).save(tmp_path / "wide.png")
    ds = FaceDataset(tmp_path, resolution=RES)
    assert [p.name for p in ds.paths] == ["good.png"]
    reasons = dict((p.name, why) for p, why in ds.skipped)
    assert set(reasons) == {"text.png", "empty.jpg", "wide.png"} and "60x80" in reasons["wide.png"]
    assert ds[0]["hq"].shape == (3, RES, RES)


def test_a_truncated_image_is_replaced_by_the_next_readable_one(tmp_path: Path, faces: Path, capfd) -> None:
    whole = (faces / "a.png").read_bytes()
    (tmp_path / "a_cut.png").write_bytes(whole[: len(whole) // 2])  # header intact: passes the up-front check
    (tmp_path / "b.png").write_bytes(whole)
    ds = FaceDataset(tmp_path, resolution=RES, hflip=False, degradation=DegradationConfig())
    assert len(ds) == 2
    assert torch.equal(ds[0]["hq"], ds[1]["hq"])  # the next readable image, deterministically
    assert "a_cut.png" in capfd.readouterr().err


def test_truncated_file_is_named(tmp_path: Path, faces: Path) -> None:
    whole = (faces / "a.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(TrainingImageError, match="cut.png"):
        load_rgb(tmp_path / "cut.png", RES)


def test_non_square_faces_are_rejected(tmp_path: Path) -> None:
    Image.fromarray(data.astronaut()[:80, :60]).save(tmp_path / "wide.png")
    with pytest.raises(TrainingImageError, match=r"wide.png is 60x80"):
        load_rgb(tmp_path / "wide.png", RES)
