"""RetinaFace post-processing against plain-Python references, on synthetic network outputs.

Random detector weights find no faces, so the outputs here are made up: a few planted
faces (boxes, landmarks, scores) among background priors, some overlapping so that NMS
has work to do. The references are written as loops over priors and boxes, the way the
release's code reads (itertools loops for the priors, torchvision's greedy NMS rule).
"""

from __future__ import annotations

import itertools
import math

import cv2
import numpy as np
import pytest
import torch

from interlcm.backend import BackendBase
from interlcm.components import Limits
from interlcm.faces.detectors import RetinaFaceDetector
from interlcm.faces.retinaface import (
    MOBILENET,
    RESNET50,
    DetectOptions,
    RawDetections,
    decode,
    detection_sizes,
    nms,
    num_priors,
    prior_boxes,
)

# --- references ----------------------------------------------------------------------------


def ref_priors(cfg, height: int, width: int) -> list[list[float]]:
    out = []
    for step, sizes in zip(cfg.steps, cfg.min_sizes):
        for i, j in itertools.product(range(math.ceil(height / step)), range(math.ceil(width / step))):
            for s in sizes:
                out.append([(j + 0.5) * step / width, (i + 0.5) * step / height, s / width, s / height])
    return out


def ref_iou(a, b) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def ref_nms(boxes, scores, threshold: float) -> list[int]:
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    keep: list[int] = []
    for i in order:
        if all(ref_iou(boxes[i], boxes[k]) <= threshold for k in keep):
            keep.append(i)
    return keep


def ref_decode(loc, conf, landmarks, cfg, height, width, scale, conf_threshold, nms_threshold):
    """Per prior: undo the encoding, scale to the photo, threshold; then NMS. Returns (box, points, score)."""
    v0, v1 = cfg.variance
    boxes, points, scores = [], [], []
    for p, (cx, cy, pw, ph) in enumerate(ref_priors(cfg, height, width)):
        score = float(conf[p][1])
        # float32 on both sides, as the release's numpy comparison (a float32 0.8 is not kept)
        if not np.float32(score) > np.float32(conf_threshold):
            continue
        x = cx + float(loc[p][0]) * v0 * pw
        y = cy + float(loc[p][1]) * v0 * ph
        w = pw * math.exp(float(loc[p][2]) * v1)
        h = ph * math.exp(float(loc[p][3]) * v1)
        boxes.append([(x - w / 2) * width / scale, (y - h / 2) * height / scale,
                      (x + w / 2) * width / scale, (y + h / 2) * height / scale])  # fmt: skip
        points.append([[(cx + float(landmarks[p][2 * k]) * v0 * pw) * width / scale,
                        (cy + float(landmarks[p][2 * k + 1]) * v0 * ph) * height / scale] for k in range(5)])  # fmt: skip
        scores.append(score)
    keep = ref_nms(boxes, scores, nms_threshold)
    return [(boxes[k], points[k], scores[k]) for k in keep]


# --- synthetic outputs -------------------------------------------------------------------------


def synthetic_outputs(cfg, height: int, width: int, seed: int) -> tuple[torch.Tensor, ...]:
    """(loc, conf, landmarks) for one image: background everywhere, faces planted at some priors.

    Planted faces sit on neighbouring priors of one cell (overlapping boxes, different
    scores) and on far-apart cells; a few scores sit just above and below the threshold.
    """
    gen = torch.Generator().manual_seed(seed)
    p = num_priors(cfg, height, width)
    loc = torch.randn(p, 4, generator=gen) * 0.5
    landmarks = torch.randn(p, 10, generator=gen)
    face = torch.rand(p, generator=gen) * 0.5  # background: below any threshold used
    hits = torch.randperm(p, generator=gen)[:40]
    face[hits] = 0.6 + 0.4 * torch.rand(40, generator=gen)
    face[hits[:3]] = torch.tensor([0.8 + 1e-4, 0.8, 0.8 - 1e-4])  # strictly greater than 0.8 is kept
    cluster = torch.arange(10, 18)  # same cell and its neighbours: overlapping boxes
    face[cluster] = torch.linspace(0.85, 0.99, len(cluster))
    loc[cluster, 2:] = 0.3  # same size, shifted centres
    conf = torch.stack([1 - face, face], dim=-1)
    return loc, conf, landmarks


# --- tests ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("cfg", [RESNET50, MOBILENET], ids=lambda c: c.backbone)
@pytest.mark.parametrize("size", [(64, 64), (97, 130), (128, 160)])
def test_prior_boxes_match_reference_loop(cfg, size):
    ours = prior_boxes(cfg, *size)
    assert ours.shape == (num_priors(cfg, *size), 4)
    torch.testing.assert_close(ours, torch.tensor(ref_priors(cfg, *size)), rtol=0, atol=1e-6)


@pytest.mark.parametrize("seed", range(4))
def test_decode_matches_reference_loop(seed):
    height, width, scale = 128, 160, 1.25  # the network saw the photo enlarged 1.25x
    loc, conf, landmarks = synthetic_outputs(RESNET50, height, width, seed)
    options = DetectOptions()
    got = decode(RawDetections(loc, conf, landmarks, (height, width), scale), RESNET50, options)
    want = ref_decode(loc, conf, landmarks, RESNET50, height, width, scale, 0.8, 0.4)
    assert len(want) > 3  # planted faces survive; the cluster is reduced by NMS
    assert len(got) == len(want)
    for det, (box, points, score) in zip(got, want):
        assert det.box.shape == (4,) and det.landmarks.shape == (5, 2)
        np.testing.assert_allclose(det.box, box, rtol=1e-5, atol=1e-3)
        np.testing.assert_allclose(det.landmarks, points, rtol=1e-5, atol=1e-3)
        assert det.score == pytest.approx(score, abs=1e-6)
    scores = [d.score for d in got]
    assert scores == sorted(scores, reverse=True)  # best first


def test_nms_matches_reference_loop():
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        xy = torch.rand(60, 2, generator=gen) * 50
        boxes = torch.cat([xy, xy + 10 + torch.rand(60, 2, generator=gen) * 20], dim=1)  # many overlaps
        scores = torch.rand(60, generator=gen)
        for threshold in (0.2, 0.4, 0.7):
            got = nms(boxes, scores, threshold).tolist()
            assert got == ref_nms(boxes.tolist(), scores.tolist(), threshold)


def test_nms_keeps_a_box_whose_suppressor_was_suppressed():
    # b overlaps a (kept) and c overlaps b but not a: greedy NMS drops b and keeps c
    boxes = torch.tensor([[0.0, 0, 10, 10], [4, 0, 14, 10], [9, 0, 19, 10]])
    assert nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.3).tolist() == [0, 2]


def test_top_k_bounds_candidates():
    loc, conf, landmarks = synthetic_outputs(MOBILENET, 64, 64, 0)
    raw = RawDetections(loc, conf, landmarks, (64, 64), 1.0)
    many = decode(raw, MOBILENET, DetectOptions(conf_threshold=0.0, nms_threshold=1.0))
    few = decode(raw, MOBILENET, DetectOptions(conf_threshold=0.0, nms_threshold=1.0, top_k=7))
    assert len(many) == num_priors(MOBILENET, 64, 64)  # nothing suppressed at IoU threshold 1
    assert [d.score for d in few] == [d.score for d in many[:7]]


@pytest.mark.parametrize("shape", [(200, 300), (511, 700), (600, 400), (600, 700), (900, 1200), (1, 7)])
def test_detection_sizes_follow_the_release(shape):
    """read_image: short side < 512 enlarged (cv2 fx=fy); then resize=640: enlarged to a 640 short side."""
    img = np.zeros((*shape, 3), np.uint8)
    h, w = shape
    scale = 1.0
    if min(h, w) < 512:
        f = 512.0 / min(h, w)
        img = cv2.resize(img, (0, 0), fx=f, fy=f, interpolation=cv2.INTER_LINEAR)
        scale *= f
    h, w = img.shape[:2]
    s = max(1, 640 / min(h, w))
    expected = [] if min(shape) >= 512 else [img.shape[:2]]
    if s > 1:
        expected.append((int(h * s), int(w * s)))
        scale *= s
    sizes, total = detection_sizes(*shape, DetectOptions())
    assert sizes == expected
    assert total == pytest.approx(scale)


def test_resize_matches_opencv_within_rounding():
    from skimage import data

    photo = data.astronaut()[100:300, 50:350]  # 200 x 300: enlarged twice
    detector = RetinaFaceDetector(_NoBackend(), "retinaface_mobile")
    pixels, _ = detector._pixels(photo)
    bgr = photo
    f = 512 / 200
    bgr = cv2.resize(bgr, (0, 0), fx=f, fy=f, interpolation=cv2.INTER_LINEAR)
    s = 640 / min(bgr.shape[:2])
    bgr = cv2.resize(bgr, (int(bgr.shape[1] * s), int(bgr.shape[0] * s)), interpolation=cv2.INTER_LINEAR)
    ours = pixels[0].permute(1, 2, 0).numpy()
    assert ours.shape == bgr.shape
    # OpenCV's fixed-point bilinear and a 1/1000 scale difference from its fx: a few grey levels
    assert np.abs(ours - bgr).mean() < 1.0


class _NoBackend(BackendBase):
    device = torch.device("cpu")

    def run(self, component, **tensors):
        raise AssertionError("not used")


class _PlantedBackend(BackendBase):
    """Answers the detector with one face planted at the prior nearest a point of the network input."""

    device = torch.device("cpu")

    def __init__(self, cfg, centre_rel: tuple[float, float]):
        self.cfg, self.centre_rel = cfg, centre_rel
        self.shapes: list[tuple[int, ...]] = []
        self.prior: dict[tuple[int, int], torch.Tensor] = {}  # the planted prior per input size

    def run(self, component, pixels):
        n, _, h, w = pixels.shape
        self.shapes.append(tuple(pixels.shape))
        priors = prior_boxes(self.cfg, h, w)
        p = len(priors)
        # the 64-px anchor (level 1) whose centre is nearest the requested point
        level1 = torch.arange(p)[(priors[:, 2] * w - 64).abs() < 1e-3]
        d = (priors[level1, 0] - self.centre_rel[0]) ** 2 + (priors[level1, 1] - self.centre_rel[1]) ** 2
        hit = level1[d.argmin()]
        self.prior[(h, w)] = priors[hit]
        conf = torch.zeros(n, p, 2)
        conf[..., 0] = 1.0
        conf[:, hit] = torch.tensor([0.05, 0.95])
        return {"loc": torch.zeros(n, p, 4), "conf": conf, "landmarks": torch.zeros(n, p, 10)}


def test_detector_maps_back_to_photo_pixels():
    """A 200 x 300 photo is seen at 640 x 960 (two enlargements); the face comes back in photo pixels."""
    backend = _PlantedBackend(RESNET50, (0.5, 0.25))
    photos = [
        np.zeros((200, 300, 3), np.uint8),
        np.full((200, 300, 3), 9, np.uint8),
        np.zeros((600, 800, 3), np.uint8),
    ]
    found = RetinaFaceDetector(backend, "retinaface_resnet50").detect(photos)
    assert sorted(backend.shapes) == [(1, 3, 640, 853), (2, 3, 640, 960)]  # same-size photos share a batch
    assert [len(f) for f in found] == [1, 1, 1]
    det = found[0][0]
    prior = backend.prior[(640, 960)]
    cx, cy = float(prior[0]) * 300, float(prior[1]) * 200
    side = 64 / (640 / 200)  # the 64-px anchor, in photo pixels
    np.testing.assert_allclose(
        det.box, [cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], atol=1e-3
    )
    np.testing.assert_allclose(det.landmarks, [[cx, cy]] * 5, atol=1e-3)  # zero offsets: the anchor centre
    assert det.score == pytest.approx(0.95)
    assert RetinaFaceDetector.landmark_kind == "retinaface"


def test_a_view_beyond_the_profile_is_shrunk_to_fit_and_phone_photos_fit():
    """The release detects at the photo's own size (resize=640 only enlarges). A view larger than the detector
    takes on the backend (its engine profile) is shrunk to fit, the scale carried back; a 12 MP phone photo
    (4032x3024, either way up) fits the default profile as it is."""

    class SmallProfile(_PlantedBackend):
        def limits(self, component):
            return Limits((1, None), {"height": (64, 512), "width": (64, 512)})

    backend = SmallProfile(MOBILENET, (0.5, 0.25))
    (found,) = RetinaFaceDetector(backend, "retinaface_mobile").detect([np.zeros((600, 800, 3), np.uint8)])
    assert backend.shapes == [(1, 3, 384, 511)]  # the release's 640x853 view, x0.6
    prior = backend.prior[(384, 511)]
    np.testing.assert_allclose(found[0].landmarks, [[float(prior[0]) * 800, float(prior[1]) * 600]] * 5, atol=2)

    backend = _PlantedBackend(MOBILENET, (0.5, 0.25))
    photos = [np.zeros((3024, 4032, 3), np.uint8), np.zeros((4032, 3024, 3), np.uint8)]
    RetinaFaceDetector(backend, "retinaface_mobile").detect(photos)
    assert sorted(backend.shapes) == [(1, 3, 3024, 4032), (1, 3, 4032, 3024)]


def test_detector_refuses_a_non_detector():
    with pytest.raises(
        ValueError, match="'parsenet' is not a face detector: choose one of retinaface_resnet50"
    ):
        RetinaFaceDetector(_NoBackend(), "parsenet")
