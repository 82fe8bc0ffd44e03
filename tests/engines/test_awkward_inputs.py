"""`interlcm-trt restore` over a folder of every awkward input a user has thrown at it.

Asserted: no traceback, exit code 1 because some inputs are unreadable, every readable input
restored, the inputs byte-for-byte unchanged, no temporaries left anywhere. Inputs are square
aligned-style crops (passed with --aligned when the command has that flag), so the test holds
before and after the whole-photo mode.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
from click.testing import CliRunner
from PIL import Image

from interlcm.engines.cli import main, restore
from interlcm.files import TEMP_PREFIX


def _crop(seed: int, size: int = 72) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def _awkward_folder(root: Path) -> tuple[Path, set[str]]:
    """The folder and the names of the files in it that can be read."""
    src = root / "in"
    src.mkdir()
    readable = set()

    def keep(name: str) -> Path:
        readable.add(name)
        return src / name

    Image.fromarray(_crop(0)).save(keep("plain.png"))
    Image.fromarray(_crop(1)).save(keep("single.gif"))
    frames = [Image.fromarray(_crop(i)) for i in (2, 3)]
    frames[0].save(keep("animated.webp"), save_all=True, append_images=frames[1:], lossless=True)
    Image.fromarray(_crop(4)[..., 0].astype(np.uint16) * 257).save(keep("sixteen_bit.png"))  # I;16
    Image.fromarray(_crop(5)).convert("CMYK").save(keep("cmyk.jpg"), quality=95)
    Image.fromarray(_crop(6)).convert("RGBA").save(keep("alpha.png"))
    Image.fromarray(_crop(7)).save(keep("x" * 236 + ".png"))  # a 240-character name
    Image.fromarray(_crop(8)).save(keep("read_only.png"))
    os.chmod(src / "read_only.png", 0o444)
    Image.fromarray(_crop(9)).save(keep("UPPER.PNG"))
    whole = (src / "plain.png").read_bytes()
    (src / "truncated.png").write_bytes(whole[: len(whole) // 2])
    (src / "zero.png").write_bytes(b"")
    (src / "text.png").write_text("I am a text file with an image's name\n")
    (src / "notes.txt").write_text("not an image, not listed")
    (src / "sub").mkdir()
    Image.fromarray(_crop(10)).save(src / "sub" / "nested.png")  # not listed: no --recursive
    return src, readable


def _hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() + oct(p.stat().st_mode)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_restore_over_every_awkward_input(tmp_path, tiny_weights):
    src, readable = _awkward_folder(tmp_path)
    before = _hashes(src)
    out = tmp_path / "out"
    aligned = ["--aligned"] if any("--aligned" in p.opts for p in restore.params) else []
    args = ["restore", str(src), *aligned, "--weights", str(tiny_weights), "--batch", "4", "--out", str(out)]
    result = CliRunner().invoke(main, args)

    assert "Traceback" not in result.output and result.exception is None or isinstance(result.exception, SystemExit)
    assert result.exit_code == 1, result.output  # some inputs failed, and the exit code says so
    unreadable = {"truncated.png", "zero.png", "text.png"}
    failed = [line for line in result.output.splitlines() if line.startswith("failed: ")]
    assert sorted(name for name in unreadable if any(name in line for line in failed)) == sorted(unreadable)
    assert len(failed) == len(unreadable) and all(line.count("\n") == 0 for line in failed)
    assert f"restored {len(readable)}/{len(readable) + len(unreadable)}" in result.output
    assert "animated.webp: has 2 frames" in result.output  # the first frame was used, and it says so
    written = [p for p in out.rglob("*") if p.is_file()]
    assert len(written) == len(readable)  # every readable input restored, one output each
    assert all(Image.open(p).size == (64, 64) for p in written)
    assert _hashes(src) == before  # inputs unchanged, modes included
    leftovers = [p for folder in (src, out, tmp_path) for p in folder.rglob(".*")]
    assert not leftovers and not any(p.name.startswith(TEMP_PREFIX) for p in tmp_path.rglob("*"))
