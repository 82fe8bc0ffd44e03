"""interlcm.files: atomic writes, temporaries, umask, folder replacement and locking."""

import errno
import hashlib
import os
import subprocess
import sys

import pytest

from interlcm import files


@pytest.fixture
def umask_002():
    old = os.umask(0o002)
    yield
    os.umask(old)


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


def test_disk_full_is_one_sentence_and_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "unet.engine"
    path.write_bytes(b"old engine")

    def crash(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "replace", crash)
    with pytest.raises(files.FilesError, match=r"cannot write .*unet.engine: no space left on the device"):
        files.atomic_write_bytes(path, b"new engine, half written")
    assert path.read_bytes() == b"old engine" and [p.name for p in tmp_path.iterdir()] == ["unet.engine"]


def test_write_and_hash(tmp_path):
    path = tmp_path / "sub" / "m.json"
    files.atomic_write_text(path, "{}\n")
    assert path.read_text() == "{}\n"
    assert files.sha256_file(path) == hashlib.sha256(b"{}\n").hexdigest()


def test_files_and_folders_honour_the_umask(tmp_path, umask_002):
    files.atomic_write_text(tmp_path / "a.json", "{}")
    files.atomic_save(tmp_path / "b.bin", lambda p: open(p, "wb").write(b"x"))
    with files.staging_folder(tmp_path / "final") as tmp:
        mode = tmp.stat().st_mode & 0o777
    assert [(tmp_path / n).stat().st_mode & 0o777 for n in ("a.json", "b.bin")] == [0o664, 0o664]
    assert mode == 0o775


def test_a_255_byte_name_fits_its_temporary(tmp_path):
    path = tmp_path / ("f" * 251 + ".png")
    files.atomic_write_bytes(path, b"png")
    assert path.read_bytes() == b"png" and len(files.temp_sibling(path).name.encode()) <= files.NAME_MAX
    accented = tmp_path / ("é" * 125 + ".png")  # 254 bytes: cut at a character boundary
    files.atomic_write_bytes(accented, b"png")
    assert accented.read_bytes() == b"png" and sorted(os.listdir(tmp_path)) == sorted([path.name, accented.name])


def test_only_dead_processes_temporaries_are_cleaned(tmp_path):
    dead = tmp_path / f"{files.TEMP_PREFIX}{_dead_pid()}-abcd-weights"
    (dead / "lcm").mkdir(parents=True)
    live = files.temp_sibling(tmp_path / "x.png")  # this process: a parallel writer
    live.write_bytes(b"")
    foreign = tmp_path / ".x.png.123.tmp"  # not ours: never touched
    foreign.write_bytes(b"")
    assert files.clean_stale_temporaries(tmp_path) == [dead]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, foreign.name])


def test_replace_only_empty_or_own_folders(tmp_path, monkeypatch):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "holiday.jpg").write_bytes(b"jpg")
    with pytest.raises(files.FilesError, match="refusing to replace --out .*photos: it is not a weights folder"):
        files.check_replaceable(photos, "interlcm.json", "a weights folder")
    (tmp_path / "empty").mkdir()
    files.check_replaceable(tmp_path / "empty", "interlcm.json", "a weights folder")
    files.check_replaceable(tmp_path / "missing", "interlcm.json", "a weights folder")
    (photos / "interlcm.json").write_text("{}")
    files.check_replaceable(photos, "interlcm.json", "a weights folder")
    monkeypatch.chdir(photos)  # `--out . --force` from inside a folder of ours is still refused
    with pytest.raises(files.FilesError, match="holds the current folder"):
        files.check_replaceable(photos.parent / "photos", "interlcm.json", "a weights folder")
    with pytest.raises(files.FilesError, match="is not a folder"):
        files.check_replaceable(photos / "holiday.jpg", "interlcm.json", "a weights folder")


def test_second_writer_is_refused_by_the_folder_lock(tmp_path):
    with files.folder_lock(tmp_path / "export", "an export"):
        with pytest.raises(files.FilesError, match=rf"in use by an export \(pid {os.getpid()}\)"):
            with files.folder_lock(tmp_path / "export", "an export"):
                pass
    with files.folder_lock(tmp_path / "export", "an export"):  # released on exit
        pass


def test_make_folder_errors_are_sentences(tmp_path, monkeypatch):
    (tmp_path / "a file").write_text("x")
    with pytest.raises(files.FilesError, match="--out .*a file is a file, not a folder: choose a folder path"):
        files.make_folder(tmp_path / "a file")

    def read_only(self, *args, **kwargs):  # tests run as root, which ignores permissions
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(files.Path, "mkdir", read_only)
    with pytest.raises(files.FilesError, match="cannot create --out .*: the file system is read-only"):
        files.make_folder(tmp_path / "new")
