import hashlib

import pytest

from interlcm import files


def test_interrupted_write_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "unet.engine"
    path.write_bytes(b"old engine")

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(files.os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        files.atomic_write_bytes(path, b"new engine, half written")
    assert path.read_bytes() == b"old engine" and [p.name for p in tmp_path.iterdir()] == ["unet.engine"]


def test_write_and_hash(tmp_path):
    path = tmp_path / "sub" / "m.json"
    files.atomic_write_text(path, "{}\n")
    assert path.read_text() == "{}\n" and oct(path.stat().st_mode)[-3:] == "644"
    assert files.sha256_file(path) == hashlib.sha256(b"{}\n").hexdigest()
