"""Each degradation stage does what Eq. 3 says, seeded and at the right size."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from skimage import data

from interlcm.train.degradations import (
    DegradationConfig,
    add_noise,
    blur,
    degrade,
    downsample,
    gaussian_kernel,
    jpeg,
    paint_mask,
    random_kernel,
    random_mask,
    to_gray,
    to_uint8,
    upsample,
)


@pytest.fixture(scope="module")
def face() -> np.ndarray:
    """A detailed 64x64 RGB crop (the astronaut's face), float32 in [0, 1]."""
    return data.astronaut()[40:104, 180:244].astype(np.float32) / 255.0


def high_freq(img: np.ndarray) -> float:
    """Mean |4-neighbour Laplacian| over the interior: high-frequency energy."""
    g = img.mean(axis=-1)
    lap = 4 * g[1:-1, 1:-1] - g[:-2, 1:-1] - g[2:, 1:-1] - g[1:-1, :-2] - g[1:-1, 2:]
    return float(np.abs(lap).mean())


# ------------------------------------------------------------------------ the chain


@pytest.mark.parametrize("shape", [(64, 64), (48, 80)])
def test_degrade_keeps_size_dtype_range(face: np.ndarray, shape: tuple[int, int]) -> None:
    hq = face[: shape[0], : min(shape[1], 64)]
    hq = np.pad(hq, ((0, 0), (0, shape[1] - hq.shape[1]), (0, 0)), mode="reflect")
    lq = degrade(hq, DegradationConfig(), np.random.default_rng(0))
    assert lq.shape == (*shape, 3)
    assert lq.dtype == np.float32
    assert lq.min() >= 0.0 and lq.max() <= 1.0
    np.testing.assert_array_equal(lq * 255, np.rint(lq * 255))  # 8-bit levels, as LQ files are


def test_degrade_is_seeded(face: np.ndarray) -> None:
    cfg = DegradationConfig()
    a = degrade(face, cfg, np.random.default_rng(7))
    b = degrade(face, cfg, np.random.default_rng(7))
    c = degrade(face, cfg, np.random.default_rng(8))
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).mean() > 1e-3


def test_degrade_changes_the_image_and_loses_detail(face: np.ndarray) -> None:
    lq = degrade(face, DegradationConfig.release(), np.random.default_rng(3))
    assert np.abs(lq - face).mean() > 0.01
    assert high_freq(lq) < high_freq(face)


def test_corrupt_off_is_identity_up_to_8_bits(face: np.ndarray) -> None:
    lq = degrade(face, DegradationConfig(corrupt=False), np.random.default_rng(0))
    np.testing.assert_array_equal(lq, to_uint8(face) / np.float32(255))


def test_degrade_rejects_non_rgb(face: np.ndarray) -> None:
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        degrade(face[..., 0], DegradationConfig(), np.random.default_rng(0))


# --------------------------------------------------------------------------- stages


def test_gaussian_kernel_normalised_centred_with_the_right_spread() -> None:
    k = gaussian_kernel(41, sigma_x=2.0, sigma_y=4.0)  # theta 0: x (columns) narrower than y (rows)
    assert k.shape == (41, 41) and k.dtype == np.float32
    assert k.sum() == pytest.approx(1.0, abs=1e-6)
    assert np.unravel_index(k.argmax(), k.shape) == (20, 20)
    ax = np.arange(41) - 20
    var_x = float((k.sum(axis=0) * ax**2).sum())
    var_y = float((k.sum(axis=1) * ax**2).sum())
    assert var_x == pytest.approx(4.0, rel=0.01)
    assert var_y == pytest.approx(16.0, rel=0.01)
    # A quarter turn swaps the axes.
    np.testing.assert_allclose(gaussian_kernel(41, 2.0, 4.0, np.pi / 2), k.T, atol=1e-7)


def test_random_kernel_kinds_follow_the_probabilities() -> None:
    rng = np.random.default_rng(0)
    iso = random_kernel(DegradationConfig(kernel_probs=(1.0, 0.0)), rng)
    np.testing.assert_allclose(iso, iso.T, atol=1e-7)  # isotropic: symmetric under transpose
    anisos = [random_kernel(DegradationConfig(kernel_probs=(0.0, 1.0)), rng) for _ in range(3)]
    assert all(np.abs(k - k.T).max() > 1e-5 for k in anisos)
    # Rotated: the x-y covariance is not zero (it is for axis-aligned or isotropic kernels).
    ax = np.arange(41) - 20
    assert all(abs(float((k * np.outer(ax, ax)).sum())) > 0.05 for k in anisos)


def test_blur_lowers_high_frequencies_and_keeps_flat_images(face: np.ndarray) -> None:
    blurred = blur(face, gaussian_kernel(41, 2.0))
    assert blurred.shape == face.shape and blurred.dtype == np.float32
    assert high_freq(blurred) < 0.3 * high_freq(face)
    assert blurred.mean() == pytest.approx(face.mean(), abs=0.02)
    flat = np.full((32, 32, 3), 0.25, np.float32)  # smaller than the kernel: borders still reflect
    np.testing.assert_allclose(blur(flat, gaussian_kernel(41, 10.0)), flat, atol=1e-6)


def test_blur_is_a_correlation_with_reflect101_borders() -> None:
    img = np.random.default_rng(0).random((9, 11, 3), dtype=np.float32)
    shift = np.zeros((3, 3), np.float32)
    shift[1, 2] = 1.0  # out[i, j] = img[i, j + 1]; at the right edge reflect-101 reads img[i, W - 2]
    out = blur(img, shift)
    np.testing.assert_allclose(out[:, :-1], img[:, 1:], atol=1e-6)
    np.testing.assert_allclose(out[:, -1], img[:, -2], atol=1e-6)


def test_noise_has_the_requested_std() -> None:
    flat = np.full((128, 128, 3), 0.5, np.float32)
    rng = np.random.default_rng(0)
    noisy = add_noise(flat, 10 / 255, rng)
    assert noisy.std() == pytest.approx(10 / 255, rel=0.05)
    assert noisy.mean() == pytest.approx(0.5, abs=1e-3)
    np.testing.assert_array_equal(add_noise(flat, 0.0, rng), flat)
    assert add_noise(np.ones_like(flat), 20 / 255, rng).max() <= 1.0  # clipped like the release


def test_jpeg_damage_grows_as_quality_drops(face: np.ndarray) -> None:
    err = {q: float(np.abs(jpeg(face, q) - face).mean()) for q in (30, 90)}
    assert err[30] > 1.5 * err[90] > 0
    out = jpeg(face, 30)
    assert out.shape == face.shape and out.dtype == np.float32


def test_downsample_then_upsample_loses_detail(face: np.ndarray) -> None:
    small = downsample(face, 4.0)
    assert small.shape == (16, 16, 3)
    assert downsample(face, 7.5).shape == (8, 8, 3)  # floor(64 / 7.5)
    assert downsample(face, 100.0).shape == (1, 1, 3)  # never empty
    back = upsample(small, (64, 64))
    assert back.shape == face.shape
    assert high_freq(back) < 0.5 * high_freq(face)
    assert np.abs(back - face).mean() > 0.02
    np.testing.assert_allclose(downsample(face, 1.0), face, atol=1e-6)  # r = 1 is the identity


def test_colorization_output_is_grey(face: np.ndarray) -> None:
    assert np.abs(face[..., 0] - face[..., 2]).mean() > 0.05  # the input has colour
    lq = degrade(face, DegradationConfig(task="colorization"), np.random.default_rng(0))
    np.testing.assert_array_equal(lq[..., 0], lq[..., 1])
    np.testing.assert_array_equal(lq[..., 0], lq[..., 2])
    grey = to_gray(face)
    np.testing.assert_allclose(grey[..., 0], face @ np.array([0.299, 0.587, 0.114]), atol=1e-6)


def test_inpainting_paints_holes_and_nothing_else(face: np.ndarray) -> None:
    cfg = DegradationConfig(task="inpainting", corrupt=False, mask_fill=1.0)
    lq = degrade(face, cfg, np.random.default_rng(5))
    mask = random_mask(64, 64, cfg, np.random.default_rng(5))  # the same draws as inside degrade
    assert 0.005 < mask.mean() < 0.9
    np.testing.assert_array_equal(lq[mask], 1.0)
    np.testing.assert_array_equal(lq[~mask], (to_uint8(face) / np.float32(255))[~mask])
    assert (face[mask] < 0.99).any()  # so painting really changed pixels


def test_masks_are_seeded_and_rectangles_work() -> None:
    cfg = DegradationConfig(task="inpainting", mask_count=(1, 1), mask_rect_prob=1.0)
    a = random_mask(64, 48, cfg, np.random.default_rng(1))
    b = random_mask(64, 48, cfg, np.random.default_rng(1))
    c = random_mask(64, 48, cfg, np.random.default_rng(2))
    np.testing.assert_array_equal(a, b)
    assert a.shape == (64, 48) and a.any() and not np.array_equal(a, c)
    for m in (a, c):  # one rectangle fills its bounding box exactly; a stroke would not
        rows, cols = np.nonzero(m)
        assert m[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].all()
    img = np.zeros((64, 48, 3), np.float32)
    np.testing.assert_array_equal(paint_mask(img, a, 0.5)[a], 0.5)


# --------------------------------------------------------------------------- config


def test_config_round_trips_through_yaml() -> None:
    cfg = DegradationConfig.release(task="inpainting", mask_rect_prob=0.25)
    text = yaml.safe_dump(cfg.to_dict())
    assert DegradationConfig.from_dict(yaml.safe_load(text)) == cfg
    assert DegradationConfig.from_dict({}) == DegradationConfig()


def test_release_preset_is_the_small_set_of_the_yml() -> None:
    cfg = DegradationConfig.release()
    assert cfg.sigma_range == (0.1, 10.0)
    assert cfg.downsample_range == (1.0, 12.0)
    assert cfg.noise_range == (0.0, 15.0)
    assert cfg.jpeg_range == (60, 99)
    paper = DegradationConfig()
    assert (paper.sigma_range, paper.downsample_range, paper.noise_range, paper.jpeg_range) == (
        (1.0, 15.0),
        (1.0, 30.0),
        (0.0, 20.0),
        (30, 90),
    )
    assert paper.kernel_size == 41 and paper.kernel_kinds == ("iso", "aniso")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"task": "denoise"}, "task must be one of"),
        ({"kernel_size": 40}, "odd"),
        ({"kernel_probs": (0.5, 0.6)}, "sum to 1"),
        ({"kernel_kinds": ("iso", "box")}, "kernel_kinds entry"),
        ({"sigma_range": (5.0, 1.0)}, "sigma_range"),
        ({"jpeg_range": (30, 101)}, "jpeg_range"),
        ({"mask_rect_prob": 1.5}, "mask_rect_prob"),
    ],
)
def test_config_rejects_bad_values(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DegradationConfig(**kwargs)


def test_from_dict_names_unknown_keys() -> None:
    with pytest.raises(ValueError, match="blur_sigma"):
        DegradationConfig.from_dict({"blur_sigma": [0.1, 10]})
