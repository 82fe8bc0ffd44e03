"""`--detector dlib` on real photos, offline: scikit-image's astronaut and a group photo built from it."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("dlib", reason="the faces-dlib extra is not installed (make install installs it)")

from skimage import data

from interlcm.faces.align import align_face, template
from interlcm.faces.dlib_detector import DlibDetector
from interlcm.testing import group_photo


@pytest.fixture(scope="module")
def detector():
    return DlibDetector()


def _centre(box: np.ndarray) -> np.ndarray:
    return (box[:2] + box[2:]) / 2


def test_finds_the_astronauts_face_and_nothing_else(detector):
    """One face, around the eyes at about (195-255, 101-105) in the 512x512 photo; not the mission patch."""
    (faces,) = detector.detect([data.astronaut()])
    assert len(faces) == 1, [f.box for f in faces]
    face = faces[0]
    assert detector.landmark_kind == "dlib5" and face.landmarks.shape == (5, 2)
    x0, y0, x1, y1 = face.box
    assert 150 < x0 < x1 < 290 and 50 < y0 < y1 < 190
    # dlib's order: image-right eye (outer, inner), image-left eye (outer, inner), nose base
    right_eye, left_eye, nose = face.landmarks[:2].mean(0), face.landmarks[2:4].mean(0), face.landmarks[4]
    assert left_eye[0] < nose[0] < right_eye[0] and nose[1] > max(left_eye[1], right_eye[1])


def test_aligned_astronaut_has_its_eyes_on_the_ffhq_template(detector):
    """dlib landmarks + the dlib template give the crop the release's FFHQ framing."""
    (faces,) = detector.detect([data.astronaut()])
    crop = align_face(data.astronaut(), faces[0].landmarks, "dlib5", 512)
    eyes = np.c_[[faces[0].landmarks[2:4].mean(0), faces[0].landmarks[:2].mean(0)], np.ones(2)] @ crop.affine.T
    np.testing.assert_allclose(eyes, template("retinaface", 512)[:2], atol=10.0)


def test_finds_every_face_of_a_group_photo(detector):
    """Four heads of 130-250 px, tilted -10..12 degrees (interlcm.testing.group_photo's default)."""
    photo = group_photo()
    (faces,) = detector.detect([photo])
    assert len(faces) == 4, [f.box for f in faces]
    expected = np.array([(0.2, 0.35), (0.5, 0.4), (0.8, 0.35), (0.45, 0.8)]) * (1024, 768)
    found = np.array([_centre(f.box) for f in faces])
    for centre in expected:  # each head has a face box within 40 px of the head's centre
        assert np.linalg.norm(found - centre, axis=1).min() < 40, (centre, found)
    assert [f.score for f in faces] == sorted((f.score for f in faces), reverse=True)  # best first


def test_no_face_no_detection(detector):
    flat = np.full((300, 400, 3), 120, np.uint8)
    assert detector.detect([flat, flat]) == [[], []]
