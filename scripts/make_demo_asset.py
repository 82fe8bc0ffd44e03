"""Regenerate the bundled demo images: ``interlcm/assets/face.png`` and ``interlcm/assets/photo.jpg``.

Source: ``skimage.data.astronaut()``, NASA's public-domain portrait of Eileen Collins (512x512).

* ``face.png``, an aligned face crop: the square below puts the face in the middle with eyes at
  about 42 % of the height and the mouth at about 63 %, close to FFHQ-style alignment; resized to
  256x256 with bicubic filtering.
* ``photo.jpg``, a whole photo for whole-photo mode: the top 448x352 of the portrait (head,
  shoulders, background), JPEG quality 90, under 100 KB.

Run from the repository root (needs scikit-image, a dev dependency)::

    python scripts/make_demo_asset.py
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image
from skimage import data

TOP, LEFT, SIDE = 8, 117, 216  # face square in the 512x512 astronaut image (rows 8-224, cols 117-333)
SIZE = 256
PHOTO_ROWS, PHOTO_COLS = slice(0, 352), slice(32, 480)  # the whole-photo demo: 448 x 352
ASSETS = Path(__file__).resolve().parents[1] / "interlcm" / "assets"


def make_demo_face() -> Image.Image:
    """Crop the astronaut's face square and resize it to SIZE x SIZE."""
    crop = data.astronaut()[TOP : TOP + SIDE, LEFT : LEFT + SIDE]
    return Image.fromarray(crop).resize((SIZE, SIZE), Image.Resampling.BICUBIC)


def make_demo_photo() -> Image.Image:
    """The top of the astronaut portrait: a small whole photo with one face."""
    return Image.fromarray(data.astronaut()[PHOTO_ROWS, PHOTO_COLS])


def main() -> None:
    """Write the demo assets (default: into interlcm/assets/)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ASSETS, help="output folder")
    out = parser.parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    make_demo_face().save(out / "face.png", format="PNG", optimize=True)
    make_demo_photo().save(out / "photo.jpg", format="JPEG", quality=90, optimize=True)
    for name in ("face.png", "photo.jpg"):
        print(f"wrote {out / name} ({(out / name).stat().st_size / 1024:.0f} KB)")


if __name__ == "__main__":
    main()
