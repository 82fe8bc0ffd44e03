"""Where a run's outputs go: the one place that decides output names and checks them before any work."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from interlcm.imageio import encoded_image_complete

_JPEG_SUFFIXES = frozenset({".jpg", ".jpeg"})


class OutputClash(ValueError):
    """Two inputs would write the same output, or an output would replace an input."""


@dataclass(frozen=True)
class OutputPlan:
    source: Path
    photo: Path  # the restored photo (JPEG for JPEG inputs, else PNG)
    faces: Path | None = None  # folder of restored faces (--save-faces), written before the photo


def plan_outputs(paths: list[Path], out_dir: Path, *, save_faces: bool = False) -> list[OutputPlan]:
    """Where each input's results go: the one place that decides output names.

    The inputs' folders are mirrored under `out_dir` below their common folder, so
    `A/face.png` and `B/face.png` become `out/A/face.png` and `out/B/face.png`. A JPEG input gives
    a `.jpg` output, anything else `.png`; inputs in one folder whose outputs would share a name
    (`a.png` + `a.webp`, `x.png` + `x.PNG`) keep their extension in the name (`a_png.png`,
    `a_webp.png`). A clash that remains, or an output that would replace an input, raises
    OutputClash before any work starts.
    """
    out_dir = Path(out_dir)
    absolute = [Path(os.path.abspath(p)) for p in paths]
    root = Path(os.path.commonpath([p.parent for p in absolute])) if absolute else Path()
    names: list[tuple[Path, str, str]] = []  # (folder under out, default name, name keeping the extension)
    for src in absolute:
        suffix = ".jpg" if src.suffix.lower() in _JPEG_SUFFIXES else ".png"
        ext = src.suffix[1:]
        names.append((src.parent.relative_to(root), src.stem + suffix, f"{src.stem}_{ext}{suffix}"))
    default_count = Counter((folder, name) for folder, name, _ in names)

    plans, claimed = [], _Claims(out_dir)
    for src, (folder, name, with_ext) in zip(absolute, names):
        final = name if default_count[(folder, name)] == 1 else with_ext
        photo = out_dir / folder / final
        faces = out_dir / folder / f"{Path(final).stem}_faces" if save_faces else None
        for target in (photo, faces):
            if target is not None:
                claimed.claim(target, src)
        plans.append(OutputPlan(src, photo, faces))
    inputs = {os.path.realpath(p) for p in absolute}
    for plan in plans:
        if os.path.realpath(plan.photo) in inputs:
            raise OutputClash(f"output {plan.photo} would overwrite an input: choose another --out")
    return plans


class _Claims:
    """Every output path, owned by one input; the folders mirrored above them may be shared."""

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir
        self.owner: dict[Path, tuple[bool, Path]] = {}  # path -> (is a mirrored folder, first input using it)

    def claim(self, target: Path, src: Path) -> None:
        parts = target.relative_to(self.out_dir).parts
        for depth in range(1, len(parts)):
            self._take(self.out_dir.joinpath(*parts[:depth]), True, src)
        self._take(target, False, src)

    def _take(self, path: Path, folder: bool, src: Path) -> None:
        was_folder, first = self.owner.setdefault(path, (folder, src))
        if was_folder != folder or (not folder and first != src):
            raise OutputClash(
                f"{first} and {src} would both write {path}: rename one of them or restore them separately"
            )


def output_complete(plan: OutputPlan) -> bool:
    """The photo is there and whole (written last, atomically: then the faces are there too).

    Judged by the file's start and end markers, not by decoding it: a 192 MP output is as quick to
    check as a small one, and Pillow's decompression-bomb guard never fires on our own outputs.
    """
    return encoded_image_complete(plan.photo)
