"""Regenerate ``interlcm/assets/face.png``, the bundled demo aligned face crop.

Source: ``skimage.data.astronaut()``, NASA's public-domain portrait of Eileen Collins (512x512).
The square below puts the face in the middle with eyes at about 42 % of the height and the mouth
at about 63 %, close to FFHQ-style alignment; it is resized to 256x256 with bicubic filtering.

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
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "interlcm" / "assets" / "face.png"


def make_demo_face() -> Image.Image:
    """Crop the astronaut's face square and resize it to SIZE x SIZE."""
    crop = data.astronaut()[TOP : TOP + SIDE, LEFT : LEFT + SIDE]
    return Image.fromarray(crop).resize((SIZE, SIZE), Image.Resampling.BICUBIC)


def main() -> None:
    """Write the demo asset (default: interlcm/assets/face.png)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output PNG path")
    out = parser.parse_args().out
    out.parent.mkdir(parents=True, exist_ok=True)
    make_demo_face().save(out, format="PNG", optimize=True)
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KB)")


if __name__ == "__main__":
    main()
