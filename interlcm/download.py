"""Download the released weights into a weights folder.

Layout written (see the spec's "weights folder" section)::

    WEIGHTS/
      lcm/unet/{config.json, diffusion_pytorch_model.safetensors}
      lcm/vae/{config.json, diffusion_pytorch_model.safetensors}
      lcm/scheduler/scheduler_config.json
      clip/{config.json, model.safetensors}
      visual_encoder_3step.pth, spatial_encoder_3step.pth   (variant "3step")
      ... other variants' pairs
      facelib/detection_Resnet50_Final.pth, facelib/detection_mobilenet0.25_Final.pth,
      facelib/parsing_parsenet.pth                           (face networks, whole-photo mode)
      realesrgan/RealESRGAN_x2plus.pth   (with realesrgan=True) the background/face upsampler
      checksums.json        sha256 of every file this module wrote or accepted

Where the files come from:

* LCM: Hugging Face ``SimianLuo/LCM_Dreamshaper_v7`` (the ``--lcm_path`` default of
  the authors' ``inference_InterLCM.py``). Only unet/, vae/ and scheduler/ are
  fetched; the text encoder, tokenizer and safety checker are never used because
  the visual encoder replaces the text embedding. The repo's unet/ also holds ONNX
  exports of the same size, which is why files are named one by one instead of
  fetching whole folders.
* CLIP: Hugging Face ``openai/clip-vit-base-patch16`` (config + weights only).
* VE/SE: the authors' GitHub release ``v0.1.0`` of ``sen-mao/InterLCM``, as linked
  from its README ("Download the InterLCM pretrained models ... from [Releases |
  Google Drive] to the weights/InterLCM folder"). The README's commands name
  ``visual_encoder_3step.pth``, ``spatial_encoder_3step.pth``, the ``_1step`` pair and
  the ``_colorization_1step`` pair. The README also links a Google Drive mirror
  (``GDRIVE_FOLDER``); Drive folders need an interactive confirmation for large
  files, so it is only offered in error messages for downloading by hand. The
  inpainting pair is not named anywhere in the README or code (the README's
  inpainting section is commented out); its names follow the colorization pair's
  pattern and are unconfirmed.

* Face networks: facexlib's GitHub releases (``v0.1.0`` detectors, ``v0.2.2`` ParseNet), the
  URLs ``facexlib.detection.init_detection_model`` and ``facexlib.parsing.init_parsing_model``
  use. The InterLCM release's vendored ``facelib`` fetches the same files from
  ``sczhou/CodeFormer``'s ``v0.1.0`` release. Table: ``interlcm.faces.networks.FACE_NETWORKS``.
* Real-ESRGAN: ``RealESRGAN_x2plus.pth`` of xinntao/Real-ESRGAN's GitHub release ``v0.2.1``
  (the file the InterLCM/CodeFormer inference scripts fetch for ``--bg_upsampler realesrgan``).

No sha256 is published for the release assets, so ``ReleasedFile.sha256`` is None
for now: the hash computed while streaming is recorded in ``checksums.json`` so a
later ``verify`` can detect corruption. Hugging Face checks its own LFS hashes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import IO, Any

from huggingface_hub import hf_hub_download
from huggingface_hub.errors import RemoteEntryNotFoundError
from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
from tqdm.auto import tqdm

from interlcm.choices import VARIANTS
from interlcm.faces.networks import FACE_NETWORKS
from interlcm.faces.networks import FOLDER as FACE_FOLDER
from interlcm.files import (
    FilesError,
    atomic_open,
    atomic_write_bytes,
    clean_stale_temporaries,
    make_folder,
    sha256_file,
)

log = logging.getLogger(__name__)

CHECKSUMS_FILE = "checksums.json"
RELEASE_URL = "https://github.com/sen-mao/InterLCM/releases/download/v0.1.0"
GDRIVE_FOLDER = "https://drive.google.com/drive/folders/1iSYQ-cn6g7kcsTc2UkeGjEyrVmiEx_Ea"
_CHUNK = 1 << 20  # 1 MiB: big enough for throughput, small enough for a smooth progress bar
_TIMEOUT_S = 60.0  # per socket operation, not for the whole file


class DownloadError(RuntimeError):
    """A file could not be fetched or failed its check; the message says what to do."""


class RemoteFileMissing(LookupError):
    """Raised by an ``hf_download`` function when the repo has no such file.

    Kept apart from network errors so that a missing safetensors file falls back to
    the pickle weights while an unreachable Hub still fails loudly.
    """


@dataclass(frozen=True)
class ReleasedFile:
    """One file of the authors' release, fetched from a plain URL."""

    path: str  # relative to the weights folder, '/'-separated
    url: str
    variant: str | None  # a name of interlcm.choices.VARIANTS; None: needed whatever the variant (face networks)
    sha256: str | None = None  # None: not published, recorded on first download
    size: int | None = None  # bytes, when known


@dataclass(frozen=True)
class HubFile:
    """One file of a Hugging Face repo, mirrored to ``local_dir/<repo path>``."""

    repo_id: str
    local_dir: str  # folder under the weights folder
    candidates: tuple[str, ...]  # repo paths in order of preference; the first that exists wins
    revision: str | None = None  # None: the repo's default branch


def _release(name: str, variant: str) -> ReleasedFile:
    return ReleasedFile(path=name, url=f"{RELEASE_URL}/{name}", variant=variant)


# The inpainting names are unconfirmed, see the module docstring.
RELEASED_FILES: tuple[ReleasedFile, ...] = tuple(
    _release(name, variant.name) for variant in VARIANTS.values() for name in variant.files
)

# The face networks: the detectors and the paste-back parser of whole-photo mode.
FACE_FILES: tuple[ReleasedFile, ...] = tuple(
    ReleasedFile(path=f"{FACE_FOLDER}/{net.file}", url=net.url, variant=None) for net in FACE_NETWORKS.values()
)
# Optional: fetched with realesrgan=True. Its variant is a label, not a checkpoint variant.
REALESRGAN = ReleasedFile(
    path="realesrgan/RealESRGAN_x2plus.pth",  # interlcm.weights.REALESRGAN_FILE
    url="https://github.com/xinntao/Real-ESRGAN/releases/download/v0.2.1/RealESRGAN_x2plus.pth",
    variant="realesrgan",
)

_LCM = "SimianLuo/LCM_Dreamshaper_v7"
_CLIP = "openai/clip-vit-base-patch16"

# safetensors first: no pickle code runs when loading it; the .bin is a fallback
# for repos (or revisions) that only ship pickles.
HUB_FILES: tuple[HubFile, ...] = (
    HubFile(_LCM, "lcm", ("unet/config.json",)),
    HubFile(_LCM, "lcm", ("unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.bin")),
    HubFile(_LCM, "lcm", ("vae/config.json",)),
    HubFile(_LCM, "lcm", ("vae/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.bin")),
    HubFile(_LCM, "lcm", ("scheduler/scheduler_config.json",)),
    HubFile(_CLIP, "clip", ("config.json",)),
    HubFile(_CLIP, "clip", ("model.safetensors", "pytorch_model.bin")),
)

# fetch_url(url) returns a context manager whose value has read(n) -> bytes and,
# optionally, a `length` attribute (what urllib's responses offer).
FetchUrl = Callable[[str], AbstractContextManager[Any]]
# hf_download(repo_id=, filename=, local_dir=, revision=) writes local_dir/filename and
# returns its path; raises RemoteFileMissing when the repo has no such file.
HfDownload = Callable[..., Path]


# ----------------------------------------------------------------------------- public API


def download_weights(
    out: Path,
    variants: Sequence[str] = ("3step",),
    *,
    fetch_url: FetchUrl | None = None,
    hf_download: HfDownload | None = None,
    progress: bool = True,
    faces: bool = True,
    realesrgan: bool = False,
) -> list[Path]:
    """Fill ``out`` with the LCM, CLIP, the chosen variants' VE/SE files, (``faces``) the face networks
    and (``realesrgan``) the upsampler.

    Files already present and matching their known hash are not fetched again.
    Returns the paths of all files of the layout, fetched or kept.
    """
    chosen = _check_variants(variants)
    out = Path(out)
    fetch = fetch_url or _urlopen
    hub = hf_download or partial(_hub_download, progress=progress)
    release = released_files(chosen) + (list(FACE_FILES) if faces else []) + ([REALESRGAN] if realesrgan else [])
    try:
        make_folder(out)
        # Release files first: small, so a broken network shows up before gigabytes of LCM.
        paths = [_ensure_released(spec, out, fetch, progress) for spec in release]
        paths += [_ensure_hub_file(spec, out, hub) for spec in HUB_FILES]
    except FilesError as exc:  # disk full, read-only, --out a file: one sentence
        raise DownloadError(str(exc)) from None
    return paths


def released_files(variants: Iterable[str]) -> list[ReleasedFile]:
    """The release files of the given variants, in ``RELEASED_FILES`` order."""
    wanted = set(_check_variants(variants))
    return [spec for spec in RELEASED_FILES if spec.variant in wanted]


def read_checksums(out: Path) -> dict[str, str]:
    """``checksums.json`` of a weights folder: relative path -> sha256 ({} if absent)."""
    path = Path(out) / CHECKSUMS_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DownloadError(f"cannot read {path}: {exc}; delete it and run the download again") from exc
    if not isinstance(data, dict):
        raise DownloadError(f"{path} is not a JSON object; delete it and run the download again")
    return {str(k): str(v) for k, v in data.items()}


# ----------------------------------------------------------------------------- helpers


def _check_variants(variants: Iterable[str]) -> list[str]:
    if isinstance(variants, str):  # a bare "3step" would otherwise iterate as characters
        variants = [variants]
    chosen: list[str] = []
    for variant in variants:
        if variant not in VARIANTS:
            raise DownloadError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
        if variant not in chosen:
            chosen.append(variant)
    return chosen


def _record_checksum(out: Path, rel: str, digest: str) -> None:
    # Written after every file (not once at the end) so an interrupted run keeps
    # the hashes of what it finished. Replaced atomically so it is never half-written.
    sums = read_checksums(out)
    if sums.get(rel) == digest:
        return
    sums[rel] = digest
    text = json.dumps(dict(sorted(sums.items())), indent=2) + "\n"
    atomic_write_bytes(out / CHECKSUMS_FILE, text.encode())


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _by_hand(spec: ReleasedFile, target: Path) -> str:
    mirror = f" or {GDRIVE_FOLDER}" if spec.url.startswith(RELEASE_URL) else ""  # InterLCM's own files
    return f"download {spec.url}{mirror} by hand into {target}"


# ----------------------------------------------------------------------------- release files


def _ensure_released(spec: ReleasedFile, out: Path, fetch: FetchUrl, progress: bool) -> Path:
    target = out / spec.path
    if _keep_existing(spec, target, out):
        return target
    digest = _download_url(spec, target, fetch, progress)
    _record_checksum(out, spec.path, digest)
    return target


def _keep_existing(spec: ReleasedFile, target: Path, out: Path) -> bool:
    """True if ``target`` is already good; removes it if it is known to be bad."""
    if not target.is_file():
        return False
    expected = spec.sha256 or read_checksums(out).get(spec.path)
    digest = sha256_file(target)
    if expected is None:
        # Nothing to compare with: a file put there by hand (as our error messages
        # suggest). Only complete files ever reach the final name, so accept it.
        log.info("keeping %s (no known hash; recorded %s)", target, digest)
    elif digest != expected:
        log.warning("%s does not match its recorded sha256; downloading it again", target)
        target.unlink()  # a known-bad file must not stay under the final name
        return False
    _record_checksum(out, spec.path, digest)
    return True


def _download_url(spec: ReleasedFile, target: Path, fetch: FetchUrl, progress: bool) -> str:
    """Stream ``spec.url`` into ``target`` through a temp file; returns the sha256."""
    # A temporary next to the target, renamed over it once complete and checked: a crash
    # leaves one of our temporaries (removed by the next run), never a truncated target.
    clean_stale_temporaries(target.parent)
    with atomic_open(target) as sink:
        digest, size = _stream(spec, target, fetch, sink, progress)
        _check_download(spec, target, digest, size)
    return digest


def _stream(
    spec: ReleasedFile, target: Path, fetch: FetchUrl, sink: IO[bytes], progress: bool
) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    try:
        with fetch(spec.url) as response:
            total = spec.size or getattr(response, "length", None)
            with tqdm(
                total=total,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=spec.path,
                disable=not progress,
            ) as bar:
                while chunk := response.read(_CHUNK):
                    sink.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
                    bar.update(len(chunk))
    # HTTPError < URLError < OSError: most specific first.
    except urllib.error.HTTPError as exc:
        raise DownloadError(f"{spec.url} answered HTTP {exc.code} {exc.reason}; {_by_hand(spec, target)}") from exc
    except urllib.error.URLError as exc:
        raise DownloadError(
            f"could not reach {spec.url}: {exc.reason}; check your network or {_by_hand(spec, target)}"
        ) from exc
    except OSError as exc:  # timeouts, resets mid-stream, disk full
        raise DownloadError(
            f"download of {spec.url} failed: {_one_line(exc)}; run the command again or {_by_hand(spec, target)}"
        ) from exc
    return digest.hexdigest(), size


def _check_download(spec: ReleasedFile, target: Path, digest: str, size: int) -> None:
    # Only the published hash is checked here: a hash recorded earlier vouches for
    # what was on disk, not for what the server should send.
    if spec.size is not None and size != spec.size:
        raise DownloadError(
            f"{spec.url} gave {size} bytes, expected {spec.size}; the download was discarded, "
            f"run the command again or {_by_hand(spec, target)}"
        )
    if spec.sha256 is not None and digest != spec.sha256:
        raise DownloadError(
            f"sha256 mismatch for {spec.url}: expected {spec.sha256}, got {digest}; the download was "
            f"discarded, run the command again or {_by_hand(spec, target)}"
        )


def _urlopen(url: str) -> AbstractContextManager[Any]:
    # GitHub answers release downloads with a redirect, which urlopen follows.
    request = urllib.request.Request(url, headers={"User-Agent": "interlcm-weights"})
    return urllib.request.urlopen(request, timeout=_TIMEOUT_S)


# ----------------------------------------------------------------------------- Hugging Face files


def _ensure_hub_file(spec: HubFile, out: Path, hub: HfDownload) -> Path:
    folder = out / spec.local_dir
    kept = _recorded_candidate(spec, out)
    if kept is not None:
        return kept
    for filename in spec.candidates:
        target = folder / filename
        try:
            hub(repo_id=spec.repo_id, filename=filename, local_dir=folder, revision=spec.revision)
        except RemoteFileMissing:
            continue  # try the next candidate
        except Exception as exc:  # the Hub client raises many types; all mean "failed"
            raise DownloadError(
                f"could not download {filename} from Hugging Face repo {spec.repo_id}: {_one_line(exc)}; "
                f"check your network (or HF_ENDPOINT / HF_TOKEN) or place the file by hand at {target}"
            ) from exc
        if not target.is_file():
            raise DownloadError(
                f"Hugging Face download of {spec.repo_id}/{filename} did not produce {target}"
            )
        _record_checksum(out, target.relative_to(out).as_posix(), sha256_file(target))
        return target
    raise DownloadError(
        f"Hugging Face repo {spec.repo_id} has none of {', '.join(spec.candidates)}; "
        f"the repo layout changed, place one of them by hand under {folder}"
    )


def _recorded_candidate(spec: HubFile, out: Path) -> Path | None:
    """A candidate already on disk whose hash matches checksums.json, if any.

    Checked before asking the Hub so a complete folder needs no network at all.
    """
    sums = read_checksums(out)
    for filename in spec.candidates:
        target = out / spec.local_dir / filename
        rel = target.relative_to(out).as_posix()
        if rel in sums and target.is_file() and sha256_file(target) == sums[rel]:
            return target
    return None


def _hub_download(
    *, repo_id: str, filename: str, local_dir: Path, revision: str | None, progress: bool
) -> Path:
    """The default ``hf_download``: ``hf_hub_download`` into ``local_dir``."""
    # The Hub's bars are a global switch; restore it so callers are not surprised.
    silence = not progress and not are_progress_bars_disabled()
    if silence:
        disable_progress_bars()
    try:
        return Path(hf_hub_download(repo_id, filename, local_dir=local_dir, revision=revision))
    except RemoteEntryNotFoundError as exc:
        # Only a definite "no such file" from the server; LocalEntryNotFoundError
        # (offline) is also a FileNotFoundError and must stay an error.
        raise RemoteFileMissing(f"{repo_id}/{filename}") from exc
    finally:
        if silence:
            enable_progress_bars()
