"""The pipeline benchmark's fixtures keep their contract: the stand-in GPU takes the simulated time per face,
the known faces are where the photos have them, every photo is written. No speed is asserted."""

import numpy as np
import pytest

from interlcm.benchmarks.pipeline import Run, compare, make_photos, run_once
from interlcm.faces.align import align_face
from interlcm.imageio import demo_image_path, read_rgb


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    make_photos(folder, 3, (704, 528))  # 1, 2 and 3 faces
    return folder


def test_known_faces_are_the_demo_face(folder):
    """Aligning a generated photo at its known landmarks gives the demo face back (it was placed by them)."""
    import json

    from interlcm.benchmarks.pipeline import photo_key

    landmarks = json.loads((folder / "landmarks.json").read_text())
    photo = read_rgb(folder / "photo002.jpg")
    faces = landmarks[photo_key(photo)]
    assert len(faces) == 3
    demo = read_rgb(demo_image_path()).astype(int)
    for lm in faces:
        crop = align_face(photo, np.asarray(lm, np.float32), "retinaface", 256).image
        assert np.abs(crop[32:-32, 32:-32].astype(int) - demo[32:-32, 32:-32]).mean() < 8  # JPEG and two resamplings


@pytest.mark.parametrize("workers", [0, 2])
def test_stand_in_gpu_takes_the_simulated_time_per_face(folder, workers):
    run = run_once(folder, workers=workers, device_ms=20.0, upscale=2, batch=4)
    assert (run.photos, run.faces) == (3, 6)
    calls_per_face = 13  # clip, visual and spatial conditions, VAE encoder, 3 x (SE, UNet), decoder, colour fix, ParseNet
    want = 0.020 * run.faces + 0.020 / calls_per_face * run.photos  # restore + parse per face; a detection per photo
    assert run.slept_s == pytest.approx(want, rel=1e-6)
    assert run.device_s >= run.slept_s and run.wall_s >= run.device_s


def test_ideal_is_the_busier_of_device_and_cpu():
    def run(workers, wall, cpu, device, others=0.0):
        return Run(workers, 40, 40, 100, wall, cpu, device, device, others, 0, {})

    got = compare(run(0, 30, 24, 6), run(2, 14, 25, 6.5), cores=2)
    assert got["ideal_s"] == 12 and got["pipelined_over_ideal"] == pytest.approx(14 / 12)
    assert got["speedup"] == pytest.approx(30 / 14)
    loaded = compare(run(0, 30, 24, 6), run(2, 20, 25, 6.5, others=0.8), cores=2)  # 1.2 cores left
    assert loaded["cores_left"] == pytest.approx(1.2) and loaded["pipelined_over_ideal_left"] == pytest.approx(1.0)
    device_bound = compare(run(0, 30, 10, 20), run(2, 21, 10, 20), cores=2)
    assert device_bound["ideal_s"] == 20
