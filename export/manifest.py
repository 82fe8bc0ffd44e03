"""`manifest.json`: what an export folder holds, and proof that its files are the ones exported.

The engine builder and the ONNX Runtime backend read the manifest instead of
guessing: which component and precision each file is, its tensors (names,
shapes with the batch axis named "batch", dtypes), the preset it was built
for and the weights it came from. `load_manifest(root)` re-hashes every file
and refuses a folder whose files do not match.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from interlcm.choices import EXPORT_PRECISIONS as PRECISIONS  # the precisions an export folder holds
from interlcm.components import Component, get_component
from interlcm.config import PresetConfig
from interlcm.files import atomic_write_text, sha256_file
from interlcm.identity import WeightsIdentity

MANIFEST = "manifest.json"
FORMAT = 2  # 2: `identity` (typed weights identity) recorded


class ManifestError(RuntimeError):
    """An export folder that cannot be used as it is (one line: the file and the fix)."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: list[int | str]  # axis 0 is "batch"; axes sized at run time by name (Component.dims); others fixed
    dtype: str  # "float32" or "float16"


@dataclass(frozen=True)
class FileEntry:
    component: str
    precision: str  # "fp32" | "fp16"
    file: str  # relative to the folder, e.g. "unet.fp16.onnx"
    sha256: str
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    external_data: str | None = None  # e.g. "unet.fp32.onnx.data" for models over 2 GB
    external_sha256: str | None = None
    key: str = ""  # hash of everything the file was made from; equal key = up to date
    # (min, opt, max) of each run-time dim the file was exported for (Component.dims, or --dims): the
    # range ONNX Runtime checks calls against and the TensorRT profile spans; {} for fixed-size components
    dims: dict[str, list[int]] = field(default_factory=dict)

    def spec(self) -> Component:
        """The component description with this file's run-time dims ranges."""
        return get_component(self.component).with_dims({n: tuple(r) for n, r in self.dims.items()})

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FileEntry:
        d = dict(d)
        d["inputs"] = [TensorInfo(**t) for t in d["inputs"]]
        d["outputs"] = [TensorInfo(**t) for t in d["outputs"]]
        return cls(**d)


@dataclass
class Manifest:
    format: int
    preset: dict[str, Any]  # PresetConfig.to_dict()
    resolution: int
    opset: int
    batch: tuple[int, int, int]  # (min, opt, max) of the dynamic batch axis
    weights: str  # human-readable: identity.describe()
    versions: dict[str, str]
    entries: list[FileEntry] = field(default_factory=list)
    identity: WeightsIdentity | None = None  # which weights and encoder variant; always written by export_all

    @property
    def config(self) -> PresetConfig:
        return PresetConfig.from_dict(self.preset)

    def entry(self, component: str, precision: str) -> FileEntry:
        for e in self.entries:
            if e.component == component and e.precision == precision:
                return e
        have = ", ".join(f"{e.component}/{e.precision}" for e in self.entries) or "nothing"
        raise ManifestError(
            f"{MANIFEST} has no {component} in {precision} (it has {have}): "
            f"export it with `interlcm-export --components {component}{' --fp16' if precision == 'fp16' else ''}`"
        )

    def path(self, root: Path | str, component: str, precision: str) -> Path:
        return Path(root) / self.entry(component, precision).file

    def upsert(self, new: FileEntry) -> None:
        self.entries = [
            e for e in self.entries if (e.component, e.precision) != (new.component, new.precision)
        ]
        self.entries.append(new)
        self.entries.sort(key=lambda e: (e.component, PRECISIONS.index(e.precision)))

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        d = json.loads(text)
        d["batch"] = tuple(d["batch"])
        d["entries"] = [FileEntry.from_dict(e) for e in d["entries"]]
        d["identity"] = WeightsIdentity.from_dict(d["identity"]) if d.get("identity") else None
        return cls(**d)

    def save(self, root: Path) -> None:
        atomic_write_text(Path(root) / MANIFEST, self.to_json())


def verify_entry(root: Path, e: FileEntry) -> None:
    """Raise ManifestError if the entry's file (or its external data) is missing or differs."""
    fix = f"re-export it with `interlcm-export --components {e.component} --force`"
    for name, digest in ((e.file, e.sha256), (e.external_data, e.external_sha256)):
        if name is None:
            continue
        p = root / name
        if not p.is_file():
            raise ManifestError(f"{p} is listed in {MANIFEST} but missing: {fix}")
        if digest is not None and sha256_file(p) != digest:
            raise ManifestError(f"{p} does not match its sha256 in {MANIFEST} (changed or truncated): {fix}")


def read_manifest(root: Path) -> Manifest:
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise ManifestError(f"no {MANIFEST} in {root}: create the folder with `interlcm-export --out {root}`")
    try:
        m = Manifest.from_json(path.read_text())
    except (ValueError, KeyError, TypeError) as exc:
        raise ManifestError(f"{path} is not a valid manifest ({exc}): re-export with --force") from None
    if m.format != FORMAT:
        raise ManifestError(
            f"{path} has format {m.format}, this version reads {FORMAT}: re-export with --force"
        )
    if m.identity is None:
        raise ManifestError(f"{path} does not record which weights it was made from: re-export with --force")
    _check_names(path, m)
    _check_consistent(path, m)
    return m


def _check_names(path: Path, m: Manifest) -> None:
    """Every file a manifest lists is a plain name in its own folder (the export writes no other):
    `../x.onnx`, `/abs/x.onnx` or `sub\\x.onnx` would make a reader open or hash files elsewhere."""
    for e in m.entries:
        for name in (e.file, e.external_data):
            if name is not None and (name in ("", ".", "..") or PurePosixPath(name).name != name or "\\" in name):
                raise ManifestError(
                    f"{path}: {e.component} {e.precision} names {name!r}, which is not a file in its folder "
                    "(edited?): re-export with --force"
                )


def _check_consistent(path: Path, m: Manifest) -> None:
    """An edited manifest whose resolution or tensor shapes disagree with its preset is refused here."""
    try:
        cfg = m.config
    except (TypeError, KeyError, ValueError) as exc:
        raise ManifestError(f"{path} has an invalid preset ({exc}): re-export with --force") from None
    if m.resolution != cfg.resolution:
        raise ManifestError(
            f"{path} says resolution {m.resolution} but its preset says {cfg.resolution} (edited?): re-export with --force"
        )
    for e in m.entries:
        comp = get_component(e.component)
        axes = comp.dynamic_axes()  # named as the export names them: batch, and run-time dims
        for kind, shapes, infos in (
            ("inputs", comp.input_shapes(cfg, 1), e.inputs),
            ("outputs", comp.output_shapes(cfg, 1), e.outputs),
        ):
            want = {n: [axes[n].get(i, d) for i, d in enumerate(shape)] for n, shape in shapes.items()}
            have = {t.name: list(t.shape) for t in infos}
            if have != want:
                raise ManifestError(
                    f"{path}: {e.component} {kind} {have} disagree with the {cfg.name} preset at {cfg.resolution} px "
                    f"({want}) (edited?): re-export with --force"
                )


def load_manifest(root: Path | str, verify: bool = True) -> Manifest:
    """Read `root/manifest.json`; with `verify`, re-hash every listed file and refuse any mismatch."""
    root = Path(root)
    m = read_manifest(root)
    if verify:
        for e in m.entries:
            verify_entry(root, e)
    return m
