"""Synthetic degradation of HQ faces into LQ training inputs (paper Eq. 3).

    x_lq = { JPEG_q( (x_hq ⊛ k_σ)↓_r + n_δ ) }↑_r

Image convention everywhere in this module: float32 numpy arrays of shape
(H, W, 3), RGB, values in [0, 1]. Every stage is a small function; the random
ones take an explicit `np.random.Generator`, and `degrade` draws all its random
numbers from the one generator it is given, in a fixed order, so an LQ image is
a pure function of (image, config, generator state).

The release (sen-mao/InterLCM, `basicsr/data/ffhq_blind_joint_dataset.py`)
uses OpenCV; this module reproduces its behaviour with numpy, torch and Pillow:
Gaussian blur with reflect-101 borders (cv2.filter2D's default), bilinear
resize without antialiasing (cv2.INTER_LINEAR), noise clipped to [0, 1], 8-bit
JPEG with 4:2:0 chroma subsampling, and a final rounding to 8 bits.
"""

from __future__ import annotations

import io
import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from interlcm.config import reject_unknown_keys

Task = Literal["restoration", "colorization", "inpainting"]
KernelKind = Literal["iso", "aniso"]
ResizeMode = Literal["bilinear", "bicubic"]

TASKS: tuple[str, ...] = ("restoration", "colorization", "inpainting")
KERNEL_KINDS: tuple[str, ...] = ("iso", "aniso")
RESIZE_MODES: tuple[str, ...] = ("bilinear", "bicubic")

# ITU-R BT.601 luma weights, what cv2.COLOR_RGB2GRAY (and the release) uses.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclass(frozen=True)
class DegradationConfig:
    """How to turn an HQ face into its LQ input; ranges are sampled uniformly per image.

    Defaults are the paper's Eq. 3 ranges: the spec states them and they are the
    documented contract, so a run with defaults matches the text. The released
    config `options/interlcm.yml` defines two sets: a "small" one (sigma
    [0.1, 10], downsample [1, 12], noise [0, 15], JPEG [60, 100)) and a "large"
    one (sigma [1, 15], downsample [4, 30], noise [0, 20], JPEG [30, 80)); its
    training step (`CodeFormerJointModel.optimize_parameters`) only feeds the
    small-set image `data["in"]` to the network. The paper's ranges are
    CodeFormer's published ones, wider than what the release trains on; use
    `DegradationConfig.release()` to reproduce the released checkpoint's data.
    """

    # "restoration": Eq. 3 only; "colorization": Eq. 3 then grey (3 equal channels);
    # "inpainting": Eq. 3 then free-form/rectangular holes painted with `mask_fill`.
    task: Task = "restoration"
    # Apply Eq. 3 before the task step. The release's inpainting dataset turns it off
    # (holes over the clean HQ image); restoration with corrupt=False returns the HQ.
    corrupt: bool = True

    # --- 1. blur: x ⊛ k_σ ---
    kernel_size: int = 41  # odd; the release's size (sigma 15 is cut at ±1.33σ, as there)
    kernel_kinds: tuple[str, ...] = ("iso", "aniso")  # isotropic / anisotropic (rotated) Gaussian
    kernel_probs: tuple[float, ...] = (0.5, 0.5)  # probability of each kind, same order
    sigma_range: tuple[float, float] = (1.0, 15.0)  # pixels; aniso draws sigma_x, sigma_y independently

    # --- 2. downsample: ↓_r to floor(H / r) x floor(W / r) ---
    downsample_range: tuple[float, float] = (1.0, 30.0)

    # --- 3. noise: + n_δ, i.i.d. per pixel and channel, then clipped to [0, 1] ---
    noise_range: tuple[float, float] = (0.0, 20.0)  # std on the 0-255 scale

    # --- 4. JPEG_q ---
    jpeg_range: tuple[int, int] = (30, 90)  # quality, integers, both ends inclusive

    # --- 5. upsample ↑_r back to the input size (and the interpolation of step 2) ---
    resize_mode: ResizeMode = "bilinear"  # release: cv2.INTER_LINEAR both ways
    # False like cv2.INTER_LINEAR: the blur of step 1 is the only anti-alias filter, so
    # small sigmas with large r alias, as in the release's training data.
    antialias: bool = False

    # --- inpainting masks (release: brush strokes 30-70 px wide on 512 px faces) ---
    mask_count: tuple[int, int] = (1, 3)  # number of shapes, inclusive
    mask_width: tuple[float, float] = (30 / 512, 70 / 512)  # stroke width, fraction of min(H, W)
    mask_rect_prob: float = 0.0  # chance a shape is a rectangle instead of a stroke (release: 0)
    mask_fill: float = 1.0  # value painted into holes (release: white)

    def __post_init__(self) -> None:
        _check_choice("task", self.task, TASKS)
        _check_choice("resize_mode", self.resize_mode, RESIZE_MODES)
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd integer, got {self.kernel_size}")
        for kind in self.kernel_kinds:
            _check_choice("kernel_kinds entry", kind, KERNEL_KINDS)
        probs = self.kernel_probs
        if (
            len(probs) != len(self.kernel_kinds)
            or min(probs, default=-1) < 0
            or not math.isclose(sum(probs), 1)
        ):
            raise ValueError(
                f"kernel_probs {probs} must be non-negative, sum to 1 and match kernel_kinds {self.kernel_kinds}"
            )
        _check_range("sigma_range", self.sigma_range, low=1e-6)
        _check_range("downsample_range", self.downsample_range, low=1e-6)
        _check_range("noise_range", self.noise_range, low=0)
        _check_range("jpeg_range", self.jpeg_range, low=1, high=100)
        _check_range("mask_count", self.mask_count, low=0)
        _check_range("mask_width", self.mask_width, low=0, high=1)
        _check_range("mask_rect_prob", (self.mask_rect_prob, self.mask_rect_prob), low=0, high=1)
        _check_range("mask_fill", (self.mask_fill, self.mask_fill), low=0, high=1)

    @classmethod
    def release(cls, **overrides: Any) -> DegradationConfig:
        """The "small" ranges of the release's `interlcm.yml`, the ones its loss sees."""
        base: dict[str, Any] = dict(
            sigma_range=(0.1, 10.0),
            downsample_range=(1.0, 12.0),
            noise_range=(0.0, 15.0),
            jpeg_range=(60, 99),  # np.random.randint(60, 100) excludes 100
        )
        return cls(**{**base, **overrides})

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (tuples as lists) that YAML/JSON can store."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DegradationConfig:
        """Inverse of `to_dict`; unknown keys are an error, missing keys take defaults."""
        reject_unknown_keys(cls, data, "DegradationConfig")
        values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**values)


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def _check_range(name: str, rng: tuple[float, float], low: float, high: float = math.inf) -> None:
    if len(rng) != 2 or not (low <= rng[0] <= rng[1] <= high):
        raise ValueError(f"{name} must be (lo, hi) with {low} <= lo <= hi <= {high}, got {rng}")


# ----------------------------------------------------------------------------- blur


def gaussian_kernel(
    size: int, sigma_x: float, sigma_y: float | None = None, theta: float = 0.0
) -> np.ndarray:
    """A (size, size) float32 Gaussian kernel summing to 1.

    `sigma_x`, `sigma_y` are the standard deviations along the principal axes
    (sigma_y defaults to sigma_x: isotropic) and `theta` rotates the x axis
    counter-clockwise, in radians.
    """
    sigma_y = sigma_x if sigma_y is None else sigma_y
    c, s = math.cos(theta), math.sin(theta)
    rot = np.array([[c, -s], [s, c]])
    cov = rot @ np.diag([sigma_x**2, sigma_y**2]) @ rot.T
    ax = np.arange(size, dtype=np.float64) - size // 2  # -r..r
    xy = np.stack(np.meshgrid(ax, ax, indexing="xy"), axis=-1)  # (size, size, 2) as (x, y)
    mahalanobis = np.einsum("...i,ij,...j->...", xy, np.linalg.inv(cov), xy)
    kernel = np.exp(-0.5 * mahalanobis)
    return (kernel / kernel.sum()).astype(np.float32)


def random_kernel(cfg: DegradationConfig, rng: np.random.Generator) -> np.ndarray:
    """Draw k_σ: the kind by `kernel_probs`, sigmas from `sigma_range`, any rotation."""
    kind = cfg.kernel_kinds[rng.choice(len(cfg.kernel_kinds), p=cfg.kernel_probs)]
    sigma_x = rng.uniform(*cfg.sigma_range)
    if kind == "iso":
        return gaussian_kernel(cfg.kernel_size, sigma_x)
    sigma_y = rng.uniform(*cfg.sigma_range)
    theta = rng.uniform(-math.pi, math.pi)
    return gaussian_kernel(cfg.kernel_size, sigma_x, sigma_y, theta)


def blur(img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Correlate each channel with `kernel` (k, k), reflect-101 borders, same size out.

    Done with numpy's FFT in float64: exact to ~1e-7 and, unlike a threaded conv,
    bit-identical whatever the thread count (DataLoader workers run 1 thread).
    """
    h, w, _ = img.shape
    k = kernel.shape[0]
    r = k // 2
    padded = np.pad(img.astype(np.float64), ((r, r), (r, r), (0, 0)), mode="reflect")  # (H+2r, W+2r, 3)
    ph, pw = padded.shape[:2]
    # Flipping turns FFT convolution into correlation; the wrap-around only touches the border
    # we crop away, so the kept (H, W) window is the valid correlation.
    spec = np.fft.rfft2(padded, axes=(0, 1)) * np.fft.rfft2(kernel[::-1, ::-1], s=(ph, pw))[..., None]
    out = np.fft.irfft2(spec, s=(ph, pw), axes=(0, 1))
    return out[k - 1 : k - 1 + h, k - 1 : k - 1 + w].astype(np.float32)


# ------------------------------------------------------------------- resize, noise, JPEG


def _resize(img: np.ndarray, size: tuple[int, int], mode: ResizeMode, antialias: bool) -> np.ndarray:
    """Resize (H, W, 3) to size = (h, w) with half-pixel centres (cv2/PIL convention)."""
    x = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32)).permute(2, 0, 1)[None]  # (1, 3, H, W)
    y = F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=antialias)
    return y[0].permute(1, 2, 0).numpy()


def downsample(
    img: np.ndarray, scale: float, mode: ResizeMode = "bilinear", antialias: bool = False
) -> np.ndarray:
    """↓_r: shrink to (floor(H / scale), floor(W / scale)), at least 1 x 1."""
    h, w, _ = img.shape
    size = (max(1, int(h // scale)), max(1, int(w // scale)))
    return _resize(img, size, mode, antialias)


def upsample(img: np.ndarray, size: tuple[int, int], mode: ResizeMode = "bilinear") -> np.ndarray:
    """↑_r: resize back to size = (H, W) of the HQ image."""
    return _resize(img, size, mode, antialias=False)


def add_noise(img: np.ndarray, std: float, rng: np.random.Generator) -> np.ndarray:
    """+ n_δ: i.i.d. Gaussian noise with standard deviation `std` (image units,
    i.e. δ/255), then clipped to [0, 1] as in the release."""
    noise = rng.standard_normal(img.shape, dtype=np.float32) * np.float32(std)
    return np.clip(img + noise, 0.0, 1.0)


def to_uint8(img: np.ndarray) -> np.ndarray:
    """[0, 1] float -> uint8 with rounding (values outside are clipped)."""
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


def jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    """JPEG_q: encode as 8-bit JPEG at `quality` (1-100) with Pillow and decode."""
    buf = io.BytesIO()
    # subsampling 4:2:0 (Pillow's "2") is libjpeg's and OpenCV's default; stated so a
    # Pillow default change cannot silently alter the training data.
    Image.fromarray(to_uint8(img)).save(buf, format="JPEG", quality=int(quality), subsampling=2)
    buf.seek(0)
    with Image.open(buf) as decoded:
        return np.asarray(decoded.convert("RGB"), dtype=np.float32) / 255.0


# ------------------------------------------------------------------ task variants


def to_gray(img: np.ndarray) -> np.ndarray:
    """Colourisation input: BT.601 luma repeated on 3 channels, shape kept."""
    luma = img @ _LUMA  # (H, W)
    return np.repeat(luma[..., None], 3, axis=-1).astype(np.float32)


def random_mask(h: int, w: int, cfg: DegradationConfig, rng: np.random.Generator) -> np.ndarray:
    """Inpainting holes: a (H, W) bool mask, True where the image is painted over.

    Draws `mask_count` shapes; each is a rectangle with probability
    `mask_rect_prob`, else a free-form brush stroke (a zig-zag polyline with
    round joints, like DeepFill v2 / the release's `brush_stroke_mask`).
    """
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(cfg.mask_count[0], cfg.mask_count[1], endpoint=True))):
        if rng.random() < cfg.mask_rect_prob:
            _draw_rect(draw, h, w, rng)
        else:
            width = max(1, round(rng.uniform(*cfg.mask_width) * min(h, w)))
            _draw_stroke(draw, h, w, width, rng)
    return np.asarray(canvas) > 0


def _draw_rect(draw: ImageDraw.ImageDraw, h: int, w: int, rng: np.random.Generator) -> None:
    """A rectangle with sides 10-50% of the image's, anywhere inside it."""
    rh, rw = (int(rng.uniform(0.1, 0.5) * n) + 1 for n in (h, w))
    top, left = int(rng.integers(0, h - rh + 1)), int(rng.integers(0, w - rw + 1))
    draw.rectangle((left, top, left + rw - 1, top + rh - 1), fill=255)


def _draw_stroke(draw: ImageDraw.ImageDraw, h: int, w: int, width: int, rng: np.random.Generator) -> None:
    """A zig-zag polyline: 8-27 segments, alternating directions around 72 degrees."""
    step = math.hypot(h, w) / 8  # mean segment length, as in DeepFill v2
    mean_angle, spread = 2 * math.pi / 5, 2 * math.pi / 12
    lo, hi = mean_angle - rng.uniform(0, spread), mean_angle + rng.uniform(0, spread)
    points = [(float(rng.uniform(0, w)), float(rng.uniform(0, h)))]
    for i in range(int(rng.integers(8, 28))):
        angle = rng.uniform(lo, hi)
        angle = 2 * math.pi - angle if i % 2 == 0 else angle
        length = float(np.clip(rng.normal(step, step / 2), 0, 2 * step))
        x, y = points[-1]
        points.append(
            (min(max(x + length * math.cos(angle), 0), w), min(max(y + length * math.sin(angle), 0), h))
        )
    draw.line(points, fill=255, width=width)
    r = width / 2  # round joints and caps, so the stroke has no notches
    for x, y in points:
        draw.ellipse((x - r, y - r, x + r, y + r), fill=255)


def paint_mask(img: np.ndarray, mask: np.ndarray, fill: float = 1.0) -> np.ndarray:
    """Set masked pixels (mask (H, W) bool) to `fill` on all channels."""
    out = img.copy()
    out[mask] = fill
    return out


# ------------------------------------------------------------------------ the chain


def degrade(img_hq: np.ndarray, cfg: DegradationConfig, rng: np.random.Generator) -> np.ndarray:
    """x_hq (H, W, 3) float32 in [0, 1] -> x_lq of the same shape, 8-bit levels in [0, 1].

    Random draws, in order: kernel, scale, noise std, noise, JPEG quality, then the
    task's own (mask). The same generator state always gives the same LQ image.
    """
    if img_hq.ndim != 3 or img_hq.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {img_hq.shape}")
    h, w, _ = img_hq.shape
    img = np.asarray(img_hq, dtype=np.float32)
    if cfg.corrupt:
        img = blur(img, random_kernel(cfg, rng))  # 1. x ⊛ k_σ
        img = downsample(img, rng.uniform(*cfg.downsample_range), cfg.resize_mode, cfg.antialias)  # 2. ↓_r
        img = add_noise(img, rng.uniform(*cfg.noise_range) / 255.0, rng)  # 3. + n_δ
        img = jpeg(img, int(rng.integers(cfg.jpeg_range[0], cfg.jpeg_range[1], endpoint=True)))  # 4. JPEG_q
        img = upsample(img, (h, w), cfg.resize_mode)  # 5. ↑_r
    if cfg.task == "colorization":
        img = to_gray(img)
    elif cfg.task == "inpainting":
        img = paint_mask(img, random_mask(h, w, cfg, rng), cfg.mask_fill)
    # LQ inputs in the wild are 8-bit files; the release rounds the same way.
    return to_uint8(img).astype(np.float32) / 255.0
