"""interlcm.download with fake network functions: no socket is ever opened."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import urllib.error
from pathlib import Path

import pytest

from interlcm import download as dl
from interlcm.download import DownloadError, RemoteFileMissing, download_weights


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class FakeWeb:
    """Serves bytes by URL; unknown URLs answer 404 like GitHub would."""

    def __init__(self, files: dict[str, bytes]):
        self.files = files
        self.calls: list[str] = []

    def __call__(self, url: str) -> io.BytesIO:
        self.calls.append(url)
        if url not in self.files:
            raise urllib.error.HTTPError(url, 404, "Not Found", None, None)  # type: ignore[arg-type]
        return io.BytesIO(self.files[url])


class FakeHub:
    """Writes local_dir/filename like hf_hub_download(local_dir=...) does."""

    def __init__(self, files: dict[tuple[str, str], bytes]):
        self.files = files
        self.calls: list[tuple[str, str]] = []

    def __call__(self, *, repo_id: str, filename: str, local_dir: Path, revision: str | None) -> Path:
        self.calls.append((repo_id, filename))
        if (repo_id, filename) not in self.files:
            raise RemoteFileMissing(f"{repo_id}/{filename}")
        target = Path(local_dir) / filename
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(self.files[(repo_id, filename)])
        return target


def _no_network(*args, **kwargs):
    raise AssertionError("the network was used although every file was already in place")


def _release_bytes() -> dict[str, bytes]:
    return {spec.url: f"weights of {spec.path}".encode() * 1000 for spec in (*dl.RELEASED_FILES, *dl.FACE_FILES)}


def _hub_bytes() -> dict[tuple[str, str], bytes]:
    # The first (safetensors) candidate of every entry exists, as on the real repos.
    return {(spec.repo_id, spec.candidates[0]): f"{spec.candidates[0]}".encode() for spec in dl.HUB_FILES}


FACE_PATHS = [
    "facelib/detection_Resnet50_Final.pth",
    "facelib/detection_mobilenet0.25_Final.pth",
    "facelib/parsing_parsenet.pth",
]
FACE_URLS = [
    "https://github.com/xinntao/facexlib/releases/download/v0.1.0/detection_Resnet50_Final.pth",
    "https://github.com/xinntao/facexlib/releases/download/v0.1.0/detection_mobilenet0.25_Final.pth",
    "https://github.com/xinntao/facexlib/releases/download/v0.2.2/parsing_parsenet.pth",
]
EXPECTED_3STEP = [
    "visual_encoder_3step.pth",
    "spatial_encoder_3step.pth",
    *FACE_PATHS,
    "lcm/unet/config.json",
    "lcm/unet/diffusion_pytorch_model.safetensors",
    "lcm/vae/config.json",
    "lcm/vae/diffusion_pytorch_model.safetensors",
    "lcm/scheduler/scheduler_config.json",
    "clip/config.json",
    "clip/model.safetensors",
]


def _leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.rglob("*.part"))


def test_layout_and_checksums(tmp_path):
    web, hub = FakeWeb(_release_bytes()), FakeHub(_hub_bytes())
    paths = download_weights(tmp_path, fetch_url=web, hf_download=hub, progress=False)

    assert [p.relative_to(tmp_path).as_posix() for p in paths] == EXPECTED_3STEP
    ve = tmp_path / "visual_encoder_3step.pth"
    assert ve.read_bytes() == web.files[f"{dl.RELEASE_URL}/visual_encoder_3step.pth"]
    assert (tmp_path / "lcm/unet/diffusion_pytorch_model.safetensors").is_file()
    # Only the needed files are asked for: no text encoder, tokenizer or other variants.
    assert not any("text_encoder" in f or "tokenizer" in f for _, f in hub.calls)
    assert web.calls == [
        f"{dl.RELEASE_URL}/visual_encoder_3step.pth",
        f"{dl.RELEASE_URL}/spatial_encoder_3step.pth",
        *FACE_URLS,  # the face networks come with every variant
    ]
    sums = json.loads((tmp_path / dl.CHECKSUMS_FILE).read_text())
    assert sorted(sums) == sorted(EXPECTED_3STEP)
    for rel, digest in sums.items():
        assert digest == _sha((tmp_path / rel).read_bytes()), rel
    assert _leftovers(tmp_path) == []


def test_variants_pick_their_files(tmp_path):
    web = FakeWeb(_release_bytes())
    download_weights(
        tmp_path,
        ("1step", "colorization", "1step"),
        fetch_url=web,
        hf_download=FakeHub(_hub_bytes()),
        progress=False,
    )
    names = [url.rsplit("/", 1)[1] for url in web.calls]
    assert names == [
        "visual_encoder_1step.pth",
        "spatial_encoder_1step.pth",
        "visual_encoder_colorization_1step.pth",
        "spatial_encoder_colorization_1step.pth",
        *(url.rsplit("/", 1)[1] for url in FACE_URLS),
    ]
    assert not (tmp_path / "visual_encoder_3step.pth").exists()


def test_pickle_weights_used_when_safetensors_missing(tmp_path):
    files = _hub_bytes()
    del files[("openai/clip-vit-base-patch16", "model.safetensors")]
    files[("openai/clip-vit-base-patch16", "pytorch_model.bin")] = b"pickled clip"
    paths = download_weights(
        tmp_path, fetch_url=FakeWeb(_release_bytes()), hf_download=FakeHub(files), progress=False
    )
    assert tmp_path / "clip/pytorch_model.bin" in paths
    assert "clip/pytorch_model.bin" in json.loads((tmp_path / dl.CHECKSUMS_FILE).read_text())


def test_hub_file_missing_everywhere_is_an_error(tmp_path):
    files = _hub_bytes()
    del files[("openai/clip-vit-base-patch16", "model.safetensors")]
    with pytest.raises(DownloadError, match="none of model.safetensors, pytorch_model.bin"):
        download_weights(
            tmp_path, fetch_url=FakeWeb(_release_bytes()), hf_download=FakeHub(files), progress=False
        )


def test_sha256_mismatch_leaves_no_file(tmp_path, monkeypatch):
    pinned = tuple(dataclasses.replace(spec, sha256="0" * 64) for spec in dl.RELEASED_FILES)
    monkeypatch.setattr(dl, "RELEASED_FILES", pinned)
    with pytest.raises(DownloadError, match="sha256 mismatch") as err:
        download_weights(
            tmp_path, fetch_url=FakeWeb(_release_bytes()), hf_download=FakeHub(_hub_bytes()), progress=False
        )
    assert "\n" not in str(err.value)
    assert str(tmp_path / "visual_encoder_3step.pth") in str(err.value)
    assert not (tmp_path / "visual_encoder_3step.pth").exists()
    assert _leftovers(tmp_path) == []


def test_pinned_sha256_accepts_the_right_bytes(tmp_path, monkeypatch):
    data = _release_bytes()
    pinned = tuple(
        dataclasses.replace(spec, sha256=_sha(data[spec.url]), size=len(data[spec.url]))
        for spec in dl.RELEASED_FILES
    )
    monkeypatch.setattr(dl, "RELEASED_FILES", pinned)
    download_weights(tmp_path, fetch_url=FakeWeb(data), hf_download=FakeHub(_hub_bytes()), progress=False)
    assert (tmp_path / "spatial_encoder_3step.pth").read_bytes() == data[
        f"{dl.RELEASE_URL}/spatial_encoder_3step.pth"
    ]


class _BreaksMidway(io.RawIOBase):
    """A response that sends one chunk, then fails like a dropped connection."""

    def __init__(self, error: BaseException):
        self.error = error
        self.sent = False

    def read(self, n: int = -1) -> bytes:
        if self.sent:
            raise self.error
        self.sent = True
        return b"x" * 4096


@pytest.mark.parametrize(
    "error", [ConnectionResetError("connection reset by peer"), TimeoutError("timed out")]
)
def test_interrupted_stream_leaves_nothing(tmp_path, error):
    def fetch(url: str) -> _BreaksMidway:
        return _BreaksMidway(error)

    with pytest.raises(DownloadError, match="run the command again") as err:
        download_weights(tmp_path, fetch_url=fetch, hf_download=FakeHub(_hub_bytes()), progress=False)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "visual_encoder_3step.pth").exists()
    assert _leftovers(tmp_path) == []
    assert list(tmp_path.iterdir()) == []  # nothing recorded either


def test_ctrl_c_cleans_up_and_is_not_swallowed(tmp_path):
    def fetch(url: str) -> _BreaksMidway:
        return _BreaksMidway(KeyboardInterrupt())

    with pytest.raises(KeyboardInterrupt):
        download_weights(tmp_path, fetch_url=fetch, hf_download=FakeHub(_hub_bytes()), progress=False)
    assert list(tmp_path.iterdir()) == []


def test_unreachable_host_message(tmp_path):
    def fetch(url: str):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    with pytest.raises(DownloadError) as err:
        download_weights(tmp_path, fetch_url=fetch, hf_download=FakeHub(_hub_bytes()), progress=False)
    message = str(err.value)
    assert message.startswith(f"could not reach {dl.RELEASE_URL}/visual_encoder_3step.pth: ")
    assert "check your network" in message and str(tmp_path / "visual_encoder_3step.pth") in message
    assert "\n" not in message


def test_http_404_message(tmp_path):
    with pytest.raises(DownloadError, match=r"answered HTTP 404"):
        download_weights(tmp_path, fetch_url=FakeWeb({}), hf_download=FakeHub(_hub_bytes()), progress=False)


def test_hub_failure_message(tmp_path):
    def hub(**kwargs):
        raise OSError("Cannot reach https://huggingface.co\nsecond line of detail")

    with pytest.raises(DownloadError) as err:
        download_weights(tmp_path, fetch_url=FakeWeb(_release_bytes()), hf_download=hub, progress=False)
    message = str(err.value)
    assert "SimianLuo/LCM_Dreamshaper_v7" in message and "unet/config.json" in message
    assert "\n" not in message


def test_second_run_uses_no_network(tmp_path):
    first = download_weights(
        tmp_path, fetch_url=FakeWeb(_release_bytes()), hf_download=FakeHub(_hub_bytes()), progress=False
    )
    second = download_weights(tmp_path, fetch_url=_no_network, hf_download=_no_network, progress=False)
    assert second == first


def test_corrupt_file_is_fetched_again(tmp_path):
    data = _release_bytes()
    download_weights(tmp_path, fetch_url=FakeWeb(data), hf_download=FakeHub(_hub_bytes()), progress=False)
    ve = tmp_path / "visual_encoder_3step.pth"
    ve.write_bytes(b"bit rot")
    web = FakeWeb(data)
    download_weights(tmp_path, fetch_url=web, hf_download=_no_network, progress=False)
    assert web.calls == [f"{dl.RELEASE_URL}/visual_encoder_3step.pth"]
    assert ve.read_bytes() == data[f"{dl.RELEASE_URL}/visual_encoder_3step.pth"]


def test_file_placed_by_hand_is_kept_and_recorded(tmp_path):
    ve = tmp_path / "visual_encoder_3step.pth"
    ve.write_bytes(b"downloaded from google drive")
    web = FakeWeb(_release_bytes())
    download_weights(tmp_path, fetch_url=web, hf_download=FakeHub(_hub_bytes()), progress=False)
    assert web.calls == [f"{dl.RELEASE_URL}/spatial_encoder_3step.pth", *FACE_URLS]
    assert ve.read_bytes() == b"downloaded from google drive"
    assert dl.read_checksums(tmp_path)["visual_encoder_3step.pth"] == _sha(b"downloaded from google drive")


@pytest.mark.parametrize("variants", [("4step",), ("3step", "colourization"), "three"])
def test_unknown_variant(tmp_path, variants):
    out = tmp_path / "weights"
    with pytest.raises(
        DownloadError, match="unknown variant .*; choose from 3step, 1step, colorization, inpainting"
    ):
        download_weights(out, variants, fetch_url=_no_network, hf_download=_no_network, progress=False)
    assert not out.exists()  # rejected before touching the disk


def test_bare_string_variant_is_one_variant():
    assert [s.path for s in dl.released_files("1step")] == [
        "visual_encoder_1step.pth",
        "spatial_encoder_1step.pth",
    ]


def test_default_hub_download_keeps_offline_an_error(tmp_path, monkeypatch):
    # Offline, huggingface_hub raises LocalEntryNotFoundError, a FileNotFoundError
    # subclass: it must not be mistaken for "file not in repo" (and so fall back).
    from huggingface_hub.errors import LocalEntryNotFoundError

    def offline(repo_id, filename, **kwargs):
        raise LocalEntryNotFoundError("cannot reach the Hub")

    monkeypatch.setattr(dl, "hf_hub_download", offline)
    with pytest.raises(LocalEntryNotFoundError):
        dl._hub_download(
            repo_id="r", filename="model.safetensors", local_dir=tmp_path, revision=None, progress=False
        )


def test_default_hub_download_maps_missing_file(tmp_path, monkeypatch):
    import httpx2
    from huggingface_hub.errors import RemoteEntryNotFoundError
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    def missing(repo_id, filename, **kwargs):
        response = httpx2.Response(
            404, request=httpx2.Request("HEAD", f"https://huggingface.co/{repo_id}/{filename}")
        )
        raise RemoteEntryNotFoundError("404 entry not found", response=response)

    monkeypatch.setattr(dl, "hf_hub_download", missing)
    was_disabled = are_progress_bars_disabled()
    enable_progress_bars()  # known starting state, whatever earlier tests did
    try:
        with pytest.raises(RemoteFileMissing):
            dl._hub_download(
                repo_id="r", filename="model.safetensors", local_dir=tmp_path, revision=None, progress=False
            )
        assert not are_progress_bars_disabled()  # the global switch is restored
    finally:
        if was_disabled:
            disable_progress_bars()


def test_face_networks_optional_and_recorded(tmp_path):
    web = FakeWeb(_release_bytes())
    download_weights(tmp_path, fetch_url=web, hf_download=FakeHub(_hub_bytes()), progress=False, faces=False)
    assert not any("facexlib" in url for url in web.calls)
    assert not (tmp_path / "facelib").exists()
    # asked again with faces: only the face files are fetched, each hash recorded
    web.calls.clear()
    download_weights(tmp_path, fetch_url=web, hf_download=FakeHub(_hub_bytes()), progress=False)
    assert web.calls == FACE_URLS
    sums = json.loads((tmp_path / dl.CHECKSUMS_FILE).read_text())
    for rel in FACE_PATHS:
        assert sums[rel] == _sha((tmp_path / rel).read_bytes()), rel


def test_face_file_unreachable_names_its_url(tmp_path):
    data = _release_bytes()
    del data[FACE_URLS[2]]
    with pytest.raises(DownloadError, match=r"parsing_parsenet\.pth answered HTTP 404.*by hand into .*facelib"):
        download_weights(tmp_path, fetch_url=FakeWeb(data), hf_download=FakeHub(_hub_bytes()), progress=False)
    assert not (tmp_path / FACE_PATHS[2]).exists()


def test_realesrgan_on_request_with_sha256_recorded(tmp_path):
    web = FakeWeb({**_release_bytes(), dl.REALESRGAN.url: b"rrdbnet bytes" * 500})
    paths = download_weights(tmp_path, fetch_url=web, hf_download=FakeHub(_hub_bytes()), progress=False, realesrgan=True)
    target = tmp_path / "realesrgan" / "RealESRGAN_x2plus.pth"
    assert target in paths and target.read_bytes() == web.files[dl.REALESRGAN.url]
    sums = json.loads((tmp_path / dl.CHECKSUMS_FILE).read_text())
    assert sums["realesrgan/RealESRGAN_x2plus.pth"] == _sha(target.read_bytes())
    # a second run trusts the recorded hash: no network
    download_weights(tmp_path, fetch_url=_no_network, hf_download=_no_network, progress=False, realesrgan=True)


def test_realesrgan_path_is_where_the_loader_reads(tmp_path):
    from interlcm.weights import REALESRGAN_FILE

    assert dl.REALESRGAN.path == REALESRGAN_FILE
