"""File helpers shared by weights, export, engines, training and downloads.

One home for the rules every writer follows:

* **Atomic writes.** Data goes to a temporary sibling, is flushed and fsynced, then renamed over
  the final name: readers see the old file or the new one, never half of one. A handled error
  removes the temporary; a killed process leaves one, which the next run in that folder removes
  (`clean_stale_temporaries`).
* **Temporaries are ours and recognisable.** Their names start with `TEMP_PREFIX` and carry the
  writing process's id (so a live run's temporaries are never taken for stale ones), and they are
  never longer than NAME_MAX (255 bytes): a long final name is shortened in the temporary only.
* **The umask is honoured.** Files are created 0o666 and folders 0o777, less the umask, like any
  other tool (tempfile's private 0o600/0o700 made shared weights unreadable).
* **Folders are replaced only when they are ours** (`check_replaceable`): empty, or holding the
  marker file the command itself writes (interlcm.json, manifest.json, engines.json, ...).
* **Every OS failure is one sentence** (`FilesError`): what could not be written, why, the fix; a full
  disk is `DiskFull`, which stops a run where other write failures only fail one input.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

TEMP_PREFIX = ".interlcm-tmp-"
NAME_MAX = 255  # bytes per path component on ext4, xfs, btrfs, tmpfs, APFS, NTFS
FILE_MODE = 0o666  # less the umask
FOLDER_MODE = 0o777  # less the umask
LOCK_FILE = ".interlcm.lock"  # folder_lock's file: holds the writer's pid

_ERRNO_FIX = {
    errno.ENOSPC: "no space left on the device: free some space or choose another location",
    errno.EDQUOT: "disk quota exceeded: free some space or choose another location",
    errno.EROFS: "the file system is read-only: choose a writable location",
    errno.EACCES: "permission denied: choose a folder you can write to",
    errno.EPERM: "permission denied: choose a folder you can write to",
    errno.ENOTDIR: "a part of the path is a file, not a folder: choose another path",
    errno.EEXIST: "a file of that name is in the way: choose another path",
    errno.ENAMETOOLONG: "the name is too long for the file system: use a shorter name",
}


class FilesError(RuntimeError):
    """A file or folder cannot be written or replaced (one line: the path, the reason, the fix)."""


class DiskFull(FilesError):
    """No space left (or the quota is used up): every later write would fail too, so runs stop here."""


_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


def describe_os_error(exc: OSError, what: str) -> str:
    """`what` (e.g. "cannot write /x/a.png") plus why, in one sentence with the fix."""
    fix = _ERRNO_FIX.get(exc.errno or -1)
    if fix is None:
        fix = f"{exc.strerror or exc or type(exc).__name__}; check the path and its permissions"
    return f"{what}: {fix}"


def files_error(exc: OSError, what: str) -> FilesError:
    """The FilesError (DiskFull for a full disk) for an OSError while doing `what`."""
    error = DiskFull if exc.errno in _DISK_FULL else FilesError
    return error(describe_os_error(exc, what))


def library_errors(what: str, *kinds: type[Exception]) -> contextlib.AbstractContextManager[None]:
    """`os_errors` for libraries that report I/O failures as their own exception (`kinds`, e.g.
    safetensors' SafetensorError): Rust's "(os error N)" is read back as the OSError it was."""
    return _library_errors(what, kinds)


@contextlib.contextmanager
def _library_errors(what: str, kinds: tuple[type[Exception], ...]) -> Iterator[None]:
    with os_errors(what):
        try:
            yield
        except kinds as exc:
            found = re.search(r"\(os error (\d+)\)", str(exc))
            if found is None:
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise FilesError(f"{what}: {first}") from None
            code = int(found.group(1))
            raise files_error(OSError(code, os.strerror(code)), what) from None


@contextlib.contextmanager
def os_errors(what: str) -> Iterator[None]:
    """Turn an OSError raised inside into a FilesError naming `what` (a FilesError passes through)."""
    try:
        yield
    except FilesError:
        raise
    except OSError as exc:
        raise files_error(exc, what) from exc


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# --- temporaries ----------------------------------------------------------------------------------


def temp_sibling(path: Path) -> Path:
    """A fresh temporary name next to `path`: `.interlcm-tmp-<pid>-<random>-<name, shortened>`.

    The final name is cut (in bytes, at a character boundary) so the temporary fits NAME_MAX even
    when the final name itself is 255 bytes long.
    """
    path = Path(path)
    head = f"{TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}-"
    room = NAME_MAX - len(head.encode())
    tail = path.name.encode()[:room].decode(errors="ignore")
    return path.with_name(head + tail)


def _temp_owner(name: str) -> int | None:
    """The pid recorded in one of our temporary names, or None if it is not ours."""
    if not name.startswith(TEMP_PREFIX):
        return None
    pid = name[len(TEMP_PREFIX) :].split("-", 1)[0]
    return int(pid) if pid.isdigit() else None


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def clean_stale_temporaries(folder: Path) -> list[Path]:
    """Remove our temporaries in `folder` whose writing process is gone; returns what was removed.

    Only names with TEMP_PREFIX are touched, and never one of a live process (a parallel run).
    """
    folder = Path(folder)
    removed = []
    try:
        entries = list(folder.iterdir())
    except OSError:  # missing or unreadable: nothing of ours to clean
        return removed
    for p in entries:
        pid = _temp_owner(p.name)
        if pid is None or _alive(pid):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed


# --- atomic files ---------------------------------------------------------------------------------


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path to write `path`'s content to (by name, e.g. `torch.save(obj, tmp)`).

    On success it is fsynced and renamed over `path`; on any error it is removed and an OSError
    becomes a FilesError naming `path`. The temporary is created first (0o666 less the umask), so
    a writer that opens it by name keeps that mode.
    """
    path = Path(path)
    with os_errors(f"cannot write {path}"):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_sibling(path)
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), FILE_MODE))
    try:
        with os_errors(f"cannot write {path}"):
            yield tmp
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # no-op after the rename


@contextlib.contextmanager
def atomic_open(path: Path) -> Iterator[IO[bytes]]:
    """`with atomic_open(p) as f: f.write(...)`: a binary stream that becomes `path` on success."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        yield f
        f.flush()


def atomic_write_bytes(path: Path, data: bytes | memoryview) -> None:
    with atomic_open(path) as f:
        f.write(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_save(path: Path, save: Callable[[Path], object]) -> None:
    """Atomic write through a function that writes a file by name, e.g. `lambda p: torch.save(obj, p)`."""
    with atomic_path(path) as tmp:
        save(tmp)


# --- folders --------------------------------------------------------------------------------------


def make_folder(folder: Path, option: str = "--out") -> Path:
    """Create `folder` (and parents) or raise FilesError in one sentence naming `option`."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise FilesError(f"{option} {folder} is a file, not a folder: choose a folder path")
    with os_errors(f"cannot create {option} {folder}"):
        folder.mkdir(parents=True, exist_ok=True)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise FilesError(f"cannot write to {option} {folder}: permission denied or read-only; choose a writable folder")
    return folder


def check_replaceable(folder: Path, marker: str, what: str, option: str = "--out", action: str = "replace") -> None:
    """Refuse (FilesError) to replace or clear `folder` unless it is missing, empty or ours.

    Ours means it holds `marker`, the file this command writes into every folder it makes
    (e.g. "interlcm.json" for weights). Never a file, and never a folder holding the current
    working directory.
    """
    folder = Path(folder)
    if not folder.exists() and not folder.is_symlink():
        return
    if folder.is_symlink() or not folder.is_dir():
        raise FilesError(f"{option} {folder} is not a folder: choose a new folder path")
    here = Path.cwd().resolve()
    if folder.resolve() == here or folder.resolve() in here.parents:
        raise FilesError(f"refusing to {action} {option} {folder}: it holds the current folder; choose a new folder")
    with os_errors(f"cannot read {option} {folder}"):
        visible = [p.name for p in folder.iterdir() if _temp_owner(p.name) is None and p.name != LOCK_FILE]
    if not visible or (folder / marker).is_file():
        return
    shown = ", ".join(sorted(visible)[:3]) + (", ..." if len(visible) > 3 else "")
    raise FilesError(
        f"refusing to {action} {option} {folder}: it is not {what} written by interlcm (no {marker}; "
        f"it holds {shown}); choose a new or empty folder"
    )


@contextlib.contextmanager
def folder_lock(folder: Path, what: str) -> Iterator[None]:
    """Hold an exclusive lock on `folder` (a `.interlcm.lock` file in it) or fail at once.

    A second writer gets a FilesError instead of racing the first (flock: the lock goes away
    with the process, so a killed run never leaves the folder locked).
    """
    import fcntl

    folder = make_folder(folder)
    path = folder / LOCK_FILE
    with os_errors(f"cannot lock {folder}"):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="ignore").strip() or "another process"
            raise FilesError(
                f"{folder} is in use by {what} (pid {holder}): wait for it to finish or choose another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def staging_folder(final: Path) -> Iterator[Path]:
    """Yield a temporary folder next to `final`, removed again unless the caller moved it away.

    Stale temporaries of earlier, killed runs in the same parent folder are removed first.
    The folder is created 0o777 less the umask.
    """
    final = Path(final)
    parent = final.parent
    with os_errors(f"cannot create a folder next to {final}"):
        parent.mkdir(parents=True, exist_ok=True)
        clean_stale_temporaries(parent)
        tmp = temp_sibling(final)
        tmp.mkdir(FOLDER_MODE)
    try:
        yield tmp
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def replace_folder(tmp: Path, final: Path, marker: str, what: str) -> None:
    """Move the finished `tmp` folder to `final`, replacing `final` only if `check_replaceable` allows."""
    check_replaceable(final, marker, what)
    with os_errors(f"cannot replace {final}"):
        if final.exists():
            old = temp_sibling(final)
            os.replace(final, old)  # out of the way first: a crash between leaves a stale temporary
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
