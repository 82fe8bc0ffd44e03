"""Where a run's outputs go: the one place that decides output names and checks them before any work.

One plan covers every output of a run: restored photos and their faces folders (`--save-faces`),
restored videos and their frames folders (`--save-frames`). The single-process CLI and the Ray job
both plan with `plan_outputs`, so they write the same files. The rules (README, "Where outputs go"):

* The inputs' folders are mirrored under OUT below their common folder.
* Names keep the input's suffix, case included (`IMG_0001.JPG` -> `IMG_0001.JPG`, `CLIP.MP4` ->
  `CLIP.MP4`); a photo that is neither JPEG nor PNG becomes a PNG (`.PNG` if its suffix is upper case).
* Names are compared case-folded within a folder (macOS, Windows and FAT/exFAT camera cards do), and
  two inputs never share an output.
* An output never replaces an input: existing files are compared by identity (device and inode),
  not by spelling.
* An output never replaces a file this run did not plan. Every output records the input it was made
  from (`source_id`, the sha256 of the input's bytes, in the PNG/JPEG header or the video container's
  comment: `interlcm.imageio.SOURCE_KEY`). An existing file at a planned path is replaced only if it
  records the same input (a rerun of that input, with any options); anything else refuses the whole
  run before any work, unless the user passes `--overwrite`.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections import Counter
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePath
from typing import Protocol

from interlcm.files import TEMP_PREFIX, sha256_file
from interlcm.imageio import encoded_image_complete, read_source
from interlcm.video import FRAMES_SUFFIX, is_video, read_video_source

_KEPT_PHOTO_SUFFIXES = frozenset({".jpg", ".jpeg", ".png"})  # written in the input's own format
_SHOWN = 3  # conflicting files named in a refusal


class OutputClash(ValueError):
    """Two inputs would write the same output, or an output would replace an input or a file not ours."""


@dataclass(frozen=True)
class OutputPlan:
    source: Path
    photo: Path  # the restored photo (JPEG for JPEG inputs, else PNG)
    faces: Path | None = None  # folder of restored faces (--save-faces), written before the photo


@dataclass(frozen=True)
class VideoPlan:
    source: Path
    video: Path  # the restored video, in the input's container
    frames: Path | None = None  # folder of restored frames (--save-frames)


@dataclass(frozen=True)
class RunPlan:
    """Every output of one run, checked against each other, the inputs and what OUT already holds."""

    out_dir: PurePath
    photos: tuple[OutputPlan, ...] = ()
    videos: tuple[VideoPlan, ...] = ()
    # inputs whose photo or video is already in OUT and records that very input (a rerun; --skip-existing)
    earlier: frozenset[PurePath] = field(default_factory=frozenset)

    def targets(self) -> Iterator[tuple[PurePath, PurePath, bool]]:
        """(input, output path, whether the output is a folder of ours) for every planned output."""
        for p in self.photos:
            yield p.source, p.photo, False
            if p.faces is not None:
                yield p.source, p.faces, True
        for v in self.videos:
            yield v.source, v.video, False
            if v.frames is not None:
                yield v.source, v.frames, True

    def folders(self) -> list[PurePath]:
        """OUT, every folder mirrored under it and every faces/frames folder: where this run writes files."""
        found = {self.out_dir: None}
        for _, path, is_folder in self.targets():
            for parent in reversed(path.parents):
                if parent == self.out_dir or self.out_dir in parent.parents:
                    found[parent] = None
            if is_folder:
                found[path] = None
        return list(found)


def source_id(data: bytes | os.PathLike[str]) -> str:
    """What an output records of its input: the sha256 of the input's bytes (a file, or bytes read from a store)."""
    if isinstance(data, bytes):
        return hashlib.sha256(data).hexdigest()
    return sha256_file(Path(data))


# --- where files are ----------------------------------------------------------------------------


class Store(Protocol):
    """What the checks need of a file system: the local one here, object stores in engines/ray_job.py."""

    def kind(self, path: PurePath) -> str | None: ...  # "file", "folder" or None (missing)

    def identity(self, path: PurePath) -> Hashable | None: ...  # equal for one file reached by two paths

    def children(self, folder: PurePath) -> list[PurePath]: ...

    def recorded_source(self, path: PurePath) -> str | None: ...  # the source_id an output records

    def source_id(self, path: PurePath) -> str: ...


class LocalStore:
    """The local file system: identity is (device, inode), so case-insensitive and linked names are one file."""

    def kind(self, path: PurePath) -> str | None:
        try:
            mode = os.stat(path).st_mode
        except (OSError, ValueError):  # missing, or a name the file system refuses (too long ...)
            return None
        return "folder" if stat.S_ISDIR(mode) else "file"

    def identity(self, path: PurePath) -> Hashable | None:
        try:
            st = os.stat(path)
        except (OSError, ValueError):
            return None
        return st.st_dev, st.st_ino

    def children(self, folder: PurePath) -> list[PurePath]:
        try:
            return [Path(folder) / name for name in os.listdir(folder)]
        except OSError:
            return []

    def recorded_source(self, path: PurePath) -> str | None:
        return read_video_source(Path(path)) if is_video(path) else read_source(Path(path))

    def source_id(self, path: PurePath) -> str:
        return source_id(Path(path))


LOCAL = LocalStore()


# --- the plan -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Input:
    source: PurePath
    video: bool
    folder: PurePath  # mirrored folder, relative to OUT
    plain: str  # output name: the input's stem and suffix
    with_ext: str  # the name when another input in the folder would share `plain`: its extension in the name
    own_folder: str | None  # suffix of its faces/frames folder, when asked


def _output_suffix(suffix: str, video: bool) -> str:
    if video or suffix.lower() in _KEPT_PHOTO_SUFFIXES:
        return suffix  # same format: the input's spelling, case included
    return ".PNG" if suffix[1:].isupper() else ".png"


def _folder_name(file_name: str, own_folder: str) -> str:
    return PurePath(file_name).stem + own_folder


def _fold(*parts: str) -> tuple[str, ...]:
    """Names as a case-insensitive file system compares them."""
    return tuple(p.casefold() for p in parts)


def plan_outputs(
    photos: Sequence[PurePath],
    out_dir: PurePath,
    *,
    videos: Sequence[PurePath] = (),
    save_faces: bool = False,
    save_frames: bool = False,
    overwrite: bool = False,
    store: Store = LOCAL,
) -> RunPlan:
    """Where each input's results go, checked before any work (OutputClash, one sentence, on any problem).

    Local paths (`Path`) are made absolute; paths of other stores (`PurePosixPath`) are taken as given.
    `A/face.png` and `B/face.png` become `OUT/A/face.png` and `OUT/B/face.png`. Inputs of one folder
    whose outputs would share a name, case-folded (`a.png` + `a.webp`), keep their extension in it
    (`a_png.png`, `a_webp.png`). A clash that remains, an output that is an input, or an existing file
    that is not an earlier output of the same input (unless `overwrite`) raises OutputClash.
    """
    sources = [_absolute(p) for p in photos] + [_absolute(p) for p in videos]
    out_dir = _absolute(out_dir)
    root = _common_folder([s.parent for s in sources])
    items = []
    for index, src in enumerate(sources):
        video = index >= len(photos)
        suffix = _output_suffix(src.suffix, video)
        own = (FRAMES_SUFFIX if save_frames else None) if video else ("_faces" if save_faces else None)
        items.append(_Input(src, video, src.parent.relative_to(root), src.stem + suffix,
                            f"{src.stem}_{src.suffix[1:]}{suffix}", own))
    taken = Counter(name for item in items for name in _plain_names(item))

    claims = _Claims(out_dir)
    photo_plans, video_plans = [], []
    for item in items:
        plain = all(taken[name] == 1 for name in _plain_names(item))
        name = item.plain if plain else item.with_ext
        output = out_dir / item.folder / name
        own = out_dir / item.folder / _folder_name(name, item.own_folder) if item.own_folder else None
        for target in (output, own):
            if target is not None:
                claims.claim(target, item.source)
        if item.video:
            video_plans.append(VideoPlan(item.source, output, own))
        else:
            photo_plans.append(OutputPlan(item.source, output, own))
    plan = RunPlan(out_dir, tuple(photo_plans), tuple(video_plans))
    return _check_existing(plan, store, overwrite)


def _absolute(path: PurePath) -> PurePath:
    return Path(os.path.abspath(path)) if isinstance(path, Path) or isinstance(path, str) else path


def _common_folder(folders: list[PurePath]) -> PurePath:
    if not folders:
        return PurePath()
    parts = folders[0].parts
    for folder in folders[1:]:
        n = 0
        for a, b in zip(parts, folder.parts):
            if a != b:
                break
            n += 1
        parts = parts[:n]
    return type(folders[0])(*parts)


def _plain_names(item: _Input) -> list[tuple[str, ...]]:
    names = [_fold(*item.folder.parts, item.plain)]
    if item.own_folder:
        names.append(_fold(*item.folder.parts, _folder_name(item.plain, item.own_folder)))
    return names


class _Claims:
    """Every output path, owned by one input; the folders mirrored above them may be shared. Case-folded."""

    def __init__(self, out_dir: PurePath):
        self.out_dir = out_dir
        self.owner: dict[tuple[str, ...], tuple[bool, PurePath, PurePath]] = {}  # -> (mirrored folder, input, path)

    def claim(self, target: PurePath, src: PurePath) -> None:
        parts = target.relative_to(self.out_dir).parts
        for depth in range(1, len(parts)):
            self._take(self.out_dir.joinpath(*parts[:depth]), True, src)
        self._take(target, False, src)

    def _take(self, path: PurePath, folder: bool, src: PurePath) -> None:
        key = _fold(*path.relative_to(self.out_dir).parts)
        was_folder, first, first_path = self.owner.setdefault(key, (folder, src, path))
        if was_folder != folder or (not folder and first != src):
            same = "" if first_path == path else f" and {first_path} (one file where case does not count)"
            raise OutputClash(
                f"{first} and {src} would both write {path}{same}: rename one of them or restore them separately"
            )


# --- what OUT already holds ---------------------------------------------------------------------


def _check_existing(plan: RunPlan, store: Store, overwrite: bool) -> RunPlan:
    """Refuse outputs that are inputs, that a file or folder is in the way of, or (unless `overwrite`)
    that would replace files other than earlier outputs of the same input."""
    sources = [src for src, _, is_folder in plan.targets() if not is_folder]
    inputs = {store.identity(src): src for src in sources}
    inputs.pop(None, None)
    if store.kind(plan.out_dir) == "file":
        raise OutputClash(f"--out {plan.out_dir} is a file, not a folder: choose a folder path")
    for folder in plan.folders():
        if folder != plan.out_dir and store.kind(folder) == "file" and not _is_own_folder(plan, folder):
            raise OutputClash(f"{folder} is a file where this run needs a folder: move it or choose another --out")

    ids: dict[PurePath, str] = {}

    def ours(src: PurePath, path: PurePath) -> bool:
        if src not in ids:
            ids[src] = store.source_id(src)
        return store.recorded_source(path) == ids[src]

    foreign: list[tuple[PurePath, PurePath]] = []  # (existing file, the input whose output would replace it)
    earlier = set()
    for src, path, is_folder in plan.targets():
        kind = store.kind(path)
        if kind is None:
            continue
        if (is_folder and kind == "file") or (not is_folder and kind == "folder"):
            what = "a file" if kind == "file" else "a folder"
            raise OutputClash(f"{path} is {what}, where the output of {src} goes: move it or choose another --out")
        for existing in store.children(path) if is_folder else [path]:
            if existing.name.startswith(TEMP_PREFIX):
                continue  # a temporary of ours: cleaned, never read
            other = inputs.get(store.identity(existing))
            if other is not None:
                same = "" if other == existing else f" ({other}: one file under two names)"
                raise OutputClash(f"output {existing} would overwrite an input{same}: choose another --out")
            if store.kind(existing) == "folder" or not ours(src, existing):
                foreign.append((existing, src))
            elif not is_folder:
                earlier.add(src)
    if foreign and not overwrite:
        shown = "; ".join(f"{path} (not an output of {src})" for path, src in foreign[:_SHOWN])
        more = f" and {len(foreign) - _SHOWN} more" if len(foreign) > _SHOWN else ""
        raise OutputClash(
            f"{len(foreign)} output(s) would replace files this run did not write: {shown}{more}; "
            "choose another --out, or pass --overwrite to replace them"
        )
    return RunPlan(plan.out_dir, plan.photos, plan.videos, frozenset(earlier))


def _is_own_folder(plan: RunPlan, folder: PurePath) -> bool:
    return any(is_folder and path == folder for _, path, is_folder in plan.targets())


# --- what became of each input -----------------------------------------------------------------

STATUSES = ("written", "skipped", "failed")


@dataclass(frozen=True)
class InputResult:
    """What became of one input: a row of the Ray job's OUT/results.jsonl and a line of the CLI's report."""

    input: str
    output: str
    status: str  # one of STATUSES; skipped: an earlier output of this very input is complete (--skip-existing, Ray)
    reason: str = ""  # failed: one sentence naming the problem and the fix
    faces: int = 0  # faces restored (an aligned crop is one)
    notes: tuple[str, ...] = ()  # one line each, e.g. "no face found: the photo is only upscaled"
    backend: str = ""  # Ray: what the actor that restored it had opened (the CLI says it once, at the start)

    def to_dict(self) -> dict:
        return {**asdict(self), "notes": list(self.notes)}

    @classmethod
    def from_dict(cls, row: dict) -> InputResult:
        return cls(**{**row, "notes": tuple(row.get("notes", ()))})


@dataclass
class RestoreReport:
    """Every input of a run, once, in the order finished (single process or Ray)."""

    results: list[InputResult] = field(default_factory=list)
    seconds: float = 0.0  # wall time of the restoring (skipped inputs cost nothing)
    actors: int = 0  # Ray: restoring actors

    def add(self, result: InputResult) -> None:
        self.results.append(result)

    def where(self, status: str) -> list[InputResult]:
        return [r for r in self.results if r.status == status]

    def count(self, status: str) -> int:
        return len(self.where(status))

    @property
    def faces(self) -> int:
        return sum(r.faces for r in self.where("written"))

    def summary(self) -> str:
        written = self.count("written")
        rate = f", {written / self.seconds:.2f} images/s" if self.seconds and written else ""
        on = f" on {self.actors} actor(s)" if self.actors else ""
        ran = sorted({r.backend for r in self.results if r.backend})  # what the Ray actors opened
        return ("".join(f"backend: {b}\n" for b in ran)
                + f"{len(self.results)} image(s): {written} restored ({self.faces} face(s)), "
                f"{self.count('skipped')} skipped (already restored), {self.count('failed')} failed; "
                f"{self.seconds:.1f} s{on}{rate}")


def output_complete(plan: OutputPlan) -> bool:
    """The photo is there and whole (written last, atomically: then the faces are there too).

    Judged by the file's start and end markers, not by decoding it: a 192 MP output is as quick to
    check as a small one, and Pillow's decompression-bomb guard never fires on our own outputs.
    """
    return encoded_image_complete(plan.photo)
