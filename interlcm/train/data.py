"""Training pairs: HQ faces from a folder, LQ made on the fly by `degrade`.

Item i of epoch e is a pure function of (seed, e, i): its generator is
`np.random.default_rng([seed, e, i])`, so batches are the same with 0 or N
DataLoader workers and across restarts. Call `set_epoch` before each epoch's
iterator is created (with `persistent_workers=True` the workers keep the epoch
they were started with, so leave that off or rebuild the loader).

Bad images do not stop a run: the folder is checked up front (header only: format,
size, squareness, cheap even for FFHQ) and unusable files are left out and listed in
`skipped`; a file that fails only when decoded (truncated data) is replaced by the next
readable one, deterministically, with a note on stderr.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from interlcm.imageio import IMAGE_EXTENSIONS, ImageReadError, read_rgb
from interlcm.train.degradations import DegradationConfig, degrade


def find_images(root: str | Path) -> list[Path]:
    """Image files under `root` (recursive, extension case-insensitive), sorted."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"training image folder {root} does not exist or is not a directory")
    return sorted(
        p
        for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(root).parts)  # temporaries, ._x.jpg
    )


class TrainingImageError(ValueError):
    """A training image that cannot be used (unreadable, truncated, not square); names the file."""


def check_image(path: Path) -> str | None:
    """Why `path` cannot be a training image, judged from its header (no decoding), or None."""
    try:
        with Image.open(path) as raw:
            width, height = raw.size
    except (OSError, ValueError, SyntaxError, EOFError) as err:  # Pillow's ways of saying "not an image"
        return f"{path}: not an image Pillow can read ({type(err).__name__})"
    if width != height or width == 0:
        return f"{path} is {width}x{height}; expected square aligned faces"
    return None


def load_rgb(path: Path, resolution: int) -> np.ndarray:
    """Read `path` as (resolution, resolution, 3) float32 RGB in [0, 1] (bicubic resize).

    Decoding and mode conversion are interlcm.imageio's (the one reader). Faces must be
    square (aligned crops): resizing a non-square one would change the face's proportions,
    so that is an error rather than a silent stretch.
    """
    try:
        im = Image.fromarray(read_rgb(path))  # decodes fully, so truncated files fail here
    except ImageReadError as err:
        raise TrainingImageError(f"cannot read training image {err}") from None
    if im.width != im.height:
        raise TrainingImageError(f"training image {path} is {im.width}x{im.height}; expected square aligned faces")
    if im.size != (resolution, resolution):
        im = im.resize((resolution, resolution), Image.Resampling.BICUBIC)
    return np.asarray(im, dtype=np.float32) / 255.0


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """(H, W, 3) in [0, 1] -> (3, H, W) float32 in [-1, 1], the VAE's input range."""
    chw = np.ascontiguousarray(img.transpose(2, 0, 1), dtype=np.float32)
    return torch.from_numpy(chw) * 2.0 - 1.0


class FaceDataset(Dataset):
    """HQ faces under `root` with their degraded LQ versions.

    Items are `{"hq": (3, R, R), "lq": (3, R, R)}` float32 tensors in [-1, 1],
    R = `resolution`. Each item: load + bicubic resize, horizontal flip with
    probability 1/2 (if `hflip`), then `degrade(hq, degradation, rng)`.
    """

    def __init__(
        self,
        root: str | Path,
        resolution: int = 512,
        degradation: DegradationConfig | None = None,
        seed: int = 0,
        hflip: bool = True,
    ) -> None:
        if resolution < 1:
            raise ValueError(f"resolution must be positive, got {resolution}")
        if seed < 0:
            raise ValueError(f"seed must be a non-negative integer (numpy seeds), got {seed}")
        self.root = Path(root)
        found = find_images(self.root)
        if not found:
            raise FileNotFoundError(f"no {'/'.join(sorted(IMAGE_EXTENSIONS))} images found under {self.root}")
        problems = {p: check_image(p) for p in found}
        self.skipped: list[tuple[Path, str]] = [(p, why) for p, why in problems.items() if why]  # reported by the trainer
        self.paths = [p for p, why in problems.items() if why is None]
        if not self.paths:
            raise FileNotFoundError(f"none of the {len(found)} images under {self.root} is usable: {self.skipped[0][1]}")
        self.resolution = resolution
        self.degradation = degradation if degradation is not None else DegradationConfig()
        self.seed = seed
        self.hflip = hflip
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select epoch `epoch`'s flips and degradations (call before building the iterator)."""
        if epoch < 0:
            raise ValueError(f"epoch must be non-negative, got {epoch}")
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        n = len(self.paths)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} images")
        index %= n  # negative indices name the same item (and the same RNG) as positive ones
        rng = np.random.default_rng([self.seed, self.epoch, index])
        hq = self._load_readable(index)  # (R, R, 3)
        if self.hflip and rng.random() < 0.5:
            hq = hq[:, ::-1]
        lq = degrade(hq, self.degradation, rng)
        return {"hq": to_tensor(hq), "lq": to_tensor(lq)}

    def _load_readable(self, index: int) -> np.ndarray:
        """Item `index`'s image, or (if it fails to decode) the next readable one, with a note."""
        n = len(self.paths)
        for k in range(n):
            path = self.paths[(index + k) % n]
            try:
                return load_rgb(path, self.resolution)
            except TrainingImageError as err:
                print(f"note: skipping training image: {err}", file=sys.stderr)
        raise TrainingImageError(f"no image under {self.root} can be decoded; check the files")
