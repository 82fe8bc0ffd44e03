"""Whole-photo mode of PhotoRestorer: detection view, face selection, batching across photos, gray photos.

Most tests use a detector that knows where its faces are and an identity "restorer", so they
test the photo logic in milliseconds; the batching test and the chain test run the tiny model.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from interlcm.engines.photo import PhotoOptions, PhotoRestorer, is_gray
from interlcm.engines.restorer import RestoreOptions, Restorer
from interlcm.faces.paste import upscale_photo
from interlcm.testing import PlacedFaces, group_photo


class IdentityRestorer:
    """Stands in for Restorer: returns its input, recording each batch's size."""

    def __init__(self, resolution: int = 128, batch: int = 2, colour: tuple[int, int, int] | None = None):
        self.config = SimpleNamespace(resolution=resolution)
        self.options = SimpleNamespace(batch=batch)
        self.batches: list[int] = []
        self.colour = colour  # paint every face this colour instead

    def restore(self, lq: torch.Tensor) -> torch.Tensor:
        self.batches.append(lq.shape[0])
        if self.colour is None:
            return lq
        return (torch.tensor(self.colour, dtype=torch.float32) / 127.5 - 1).view(1, 3, 1, 1).expand_as(lq).clone()


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-12)))


def test_small_photo_is_enlarged_for_detection_only():
    """Short side 240 -> the detector sees 512 px; faces land where they are; output is 2x the input."""
    photo = group_photo((320, 240))
    detector = PlacedFaces((0.2, 0.26, 0.05, 0), (0.5, 0.3, 0.04, 12))
    restorer = IdentityRestorer(colour=(255, 0, 0))
    result = PhotoRestorer(restorer, PhotoOptions(upscale=2), detector).restore_photos([photo])[0]
    assert detector.seen == [(512, 683, 3)]
    assert result.image.shape == (480, 640, 3) and result.found == 2
    for cx, cy in ((0.2, 0.26), (0.5, 0.3)):  # red faces centred where the faces are, on the 2x canvas
        y, x = round(cy * 320 * 2), round(cx * 320 * 2)
        assert tuple(result.image[y, x]) == (255, 0, 0)


def test_tiny_faces_are_dropped_by_eye_distance():
    """Eye distance is measured in the photo the detector saw: 4 px there is dropped, 6 px kept."""
    photo = group_photo((1024, 768))  # no enlargement: detector pixels are photo pixels
    detector = PlacedFaces((0.2, 0.26, 4 / 1024, 0), (0.5, 0.3, 6 / 1024, 0))
    restorer = IdentityRestorer()
    result = PhotoRestorer(restorer, PhotoOptions(), detector).restore_photos([photo])[0]
    assert result.found == 1 and restorer.batches == [1]


def test_only_center_face():
    photo = group_photo((640, 480))
    detector = PlacedFaces((0.2, 0.2, 0.05, 0), (0.52, 0.36, 0.05, 0), (0.8, 0.2, 0.05, 0))
    restorer = IdentityRestorer(colour=(255, 0, 0))
    options = PhotoOptions(upscale=1, only_center_face=True)
    result = PhotoRestorer(restorer, options, detector).restore_photos([photo])[0]
    assert result.found == 1
    assert tuple(result.image[int(0.36 * 640), int(0.52 * 640)]) == (255, 0, 0)  # the centre face
    assert tuple(result.image[int(0.2 * 640), int(0.2 * 640)]) == tuple(photo[128, 128])  # not the others


@pytest.mark.parametrize("strength", [1.0, 0.5, 0.0])
def test_strength_weighs_the_restored_face(strength):
    """A face painted red: at its centre (soft mask 1) the output is photo + strength * (red - photo).

    Exact at 0 and 1; at 0.5 within one level (a .5 may round either way after the float blend).
    """
    photo = group_photo((640, 480))
    options = PhotoOptions(upscale=1, strength=strength)
    result = PhotoRestorer(IdentityRestorer(colour=(255, 0, 0)), options, PlacedFaces((0.5, 0.4, 0.08, 0)))
    image = result.restore_photos([photo])[0].image
    y, x = int(0.4 * 640), int(0.5 * 640)
    want = np.rint(photo[y, x] + strength * (np.array([255, 0, 0]) - photo[y, x].astype(np.float32)))
    assert np.abs(image[y, x].astype(int) - want).max() <= (0 if strength in (0.0, 1.0) else 1), (image[y, x], want)
    assert np.array_equal(image[:, :100], photo[:, :100])  # away from the face: the photo, at any strength


def test_faces_of_all_photos_share_full_batches():
    """3 photos with 1 + 0 + 3 faces, batch 2: two calls of 2 faces (one photo at a time would be 1, 2, 1)."""
    photos = [group_photo((400, 300)), np.full((300, 400, 3), 90, np.uint8), group_photo((400, 300))]
    one = PlacedFaces((0.3, 0.3, 0.05, 0))
    three = PlacedFaces((0.2, 0.3, 0.05, 0), (0.5, 0.3, 0.05, 0), (0.8, 0.3, 0.05, 0))

    class PerPhoto:
        landmark_kind = "retinaface"

        def detect(self, views):
            return [*one.detect(views[:1]), [], *three.detect(views[2:])]

    restorer = IdentityRestorer(batch=2)
    results = PhotoRestorer(restorer, PhotoOptions(), PerPhoto()).restore_photos(photos)
    assert restorer.batches == [2, 2]
    assert [r.found for r in results] == [1, 0, 3]
    for photo, result in zip(photos, results):  # identity restorer: each photo gets its own faces back
        assert _psnr(result.image, upscale_photo(photo, 2)) > 40
    assert results[1].notes == ["no face found: the photo is only upscaled"]
    assert np.array_equal(results[1].image, upscale_photo(photos[1], 2))


def test_gray_photo_gets_gray_faces():
    photo = np.repeat(group_photo((400, 300)).mean(axis=2, keepdims=True).astype(np.uint8), 3, axis=2)
    assert is_gray(photo) and not is_gray(group_photo((400, 300)))
    restorer = IdentityRestorer(colour=(255, 0, 0))  # a "restorer" that returns colour
    result = PhotoRestorer(restorer, PhotoOptions(), PlacedFaces((0.5, 0.4, 0.08, 0))).restore_photos([photo])[0]
    assert is_gray(result.image) and (result.image[..., 0] == result.image[..., 1]).all()
    assert "grayscale photo: faces kept gray" in result.notes
    options = PhotoOptions(keep_gray=False)  # the colorization variant
    result = PhotoRestorer(restorer, options, PlacedFaces((0.5, 0.4, 0.08, 0))).restore_photos([photo])[0]
    assert not is_gray(result.image)


def test_whole_photo_mode_needs_a_detector():
    with pytest.raises(ValueError, match="needs a face detector"):
        PhotoRestorer(IdentityRestorer(), PhotoOptions())


def test_batching_across_photos_gives_the_same_faces(tiny_models):
    """Tiny model: two photos (2 + 1 faces) in one call with batch 2 == each photo alone with batch 1."""
    from interlcm.torch_backend import TorchBackend

    photos = [group_photo((320, 240)), group_photo((240, 320))]
    detector = PlacedFaces((0.3, 0.3, 0.06, 0), (0.7, 0.35, 0.05, 10))

    class ByOrientation(PlacedFaces):
        """Both faces in a landscape photo, the first one in a portrait photo."""

        def detect(self, views):
            found = super().detect(views)
            return [faces if v.shape[1] > v.shape[0] else faces[:1] for v, faces in zip(views, found)]

    def run(batch: int, groups: list[list[np.ndarray]]):
        restorer = Restorer(TorchBackend(tiny_models), RestoreOptions(batch=batch, seed=3))
        photo_restorer = PhotoRestorer(restorer, PhotoOptions(save_faces=True), ByOrientation(*detector.faces))
        return [r for group in groups for r in photo_restorer.restore_photos(group)]

    together = run(2, [photos])
    alone = run(1, [[photos[0]], [photos[1]]])
    assert [r.found for r in together] == [r.found for r in alone] == [2, 1]
    # Same seeded noise per face, so only float summation order differs between batch sizes (1e-6
    # here), which can flip an 8-bit rounding: at most one level. A face given to the wrong photo or
    # the wrong noise is tens of levels off.
    for a, b in zip(together, alone):
        for x, y in zip(a.faces, b.faces):
            assert np.abs(x.astype(int) - y).max() <= 1
        assert np.abs(a.image.astype(int) - b.image).max() <= 1
