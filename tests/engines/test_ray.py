"""The Ray Data job on the local Ray session of the engine tests (loopback only, 2 CPUs, tiny torch).

Everything is compared with the single-process CLI at `--batch 1` on the same inputs and seed,
byte for byte: a face restored alone runs the same kernels in every process (see
test_batch_invariance.py for what holds when faces share a batch).
Cost: one `ray.init` (~10 s, shared with test_serve.py) and one actor start per job (~5-20 s on a
loaded 2-core machine).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

ray = pytest.importorskip("ray")

from interlcm.engines.backend import BackendOptions  # noqa: E402
from interlcm.engines.cli import main  # noqa: E402


def _files(folder) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _folder(faces, dst, n):
    dst.mkdir()
    for src in sorted((faces / "in").iterdir())[:n]:
        (dst / src.name).write_bytes(src.read_bytes())
    return dst


def _table(out):
    return {os.path.basename(r["input"]): r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}


def test_job_equals_single_process_reports_bad_images_and_resumes(ray_local, reference_faces, tmp_path):
    """The same restore command: the CLI's files byte for byte (mirrored folders, JPEG kept as .JPG,
    --save-faces folders), the same refusals, and one InputResult per input with its faces counted."""
    faces = reference_faces.root
    src = tmp_path / "in"
    shutil.copytree(faces / "tree", src)
    (src / "corrupt.png").write_bytes(b"\x89PNG not really")
    out = tmp_path / "out"
    args = ["restore", str(src), str(src / "cam"), *reference_faces.args, "--batch", "1", "--save-faces", "--ray", "local",
            "--actors", "2", "--out", str(out)]
    out.mkdir()
    (out / "face00.png").write_bytes(b"the user's own file")  # not this run's to replace: refused before any work
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1 and "would replace files this run did not write" in result.output, result.output
    assert (out / "face00.png").read_bytes() == b"the user's own file"
    (out / "face00.png").unlink()

    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output  # the corrupt image failed, and the exit code says so
    assert "6 restored (6 face(s))" in result.output and "1 failed" in result.output
    table = _table(out)
    assert table["corrupt.png"]["status"] == "failed" and "not an image" in table["corrupt.png"]["reason"]
    assert all(r["faces"] == 1 for n, r in table.items() if n != "corrupt.png")  # each crop is one face
    written = _files(out)
    written.pop("results.jsonl")
    assert written == _files(faces / "tree_reference")  # every file, byte for byte, and nothing else

    (src / "corrupt.png").unlink()  # the user removes the bad file and reruns: nothing is redone
    def stamps() -> dict:
        return {p: p.stat().st_mtime_ns for p in out.rglob("*.*") if p.name != "results.jsonl"}

    before = stamps()
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "6 skipped" in result.output and "0 restored" in result.output
    assert {r["status"] for r in _table(out).values()} == {"skipped"}
    assert stamps() == before


def _restore_actor_pids() -> list[int]:
    import psutil

    pids = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if "RestoreActor" in " ".join(proc.cmdline()):
                pids.append(proc.pid)
        except psutil.Error:
            continue
    return pids


# slow tier: ~30 s of actor restarts; the default tier keeps the job's byte-for-byte and resume test
@pytest.mark.slow
def test_killed_actor_loses_nothing(ray_local, reference_faces, tmp_path):
    faces = reference_faces.root
    from interlcm.engines.photo import PhotoOptions
    from interlcm.engines.ray_job import JobSpec, run_job
    from interlcm.engines.restorer import RestoreOptions

    src = _folder(faces, tmp_path / "in", 12)
    out = tmp_path / "out"
    spec = JobSpec(BackendOptions("torch", preset="tiny", threads=1), RestoreOptions(seed=reference_faces.seed, batch=1),
                   PhotoOptions(aligned=True), actors=2)
    killed: list[tuple[int, int]] = []  # (pid, outputs written when it was killed)

    def kill_one_actor_mid_job() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            written = len(list(out.glob("*.png"))) if out.is_dir() else 0
            pids = _restore_actor_pids()
            if written >= 1 and pids:
                os.kill(pids[0], signal.SIGKILL)
                killed.append((pids[0], written))
            time.sleep(0.02)

    killer = threading.Thread(target=kill_one_actor_mid_job, daemon=True)
    killer.start()
    report = run_job(spec, [str(src)], str(out))
    killer.join(timeout=5)
    assert killed and killed[0][1] < 12, f"no actor was killed mid-job: {killed}"
    assert report.count("written") == 12 and report.count("failed") == 0, report.summary()
    assert sorted(r.input for r in report.results) == sorted(str(p) for p in src.iterdir())  # each input once
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in src.iterdir()) + ["results.jsonl"]
    for path in out.glob("*.png"):  # no partial or different outputs (and no leftover temp files, listed above)
        assert path.read_bytes() == (faces / "reference" / path.name).read_bytes(), path.name


def test_results_count_the_faces_restored_without_save_faces(tmp_path):
    """Whole photos, no --save-faces: the row says how many faces were restored (it said 0).

    The actor and the write stage called as Ray calls them, without starting Ray.
    """
    pytest.importorskip("dlib", reason="the faces-dlib extra is not installed")
    import pyarrow.fs as pafs

    from interlcm.engines.outputs import source_id
    from interlcm.engines.photo import PhotoOptions
    from interlcm.engines.ray_job import JobSpec, RestoreActor, _objects, write_stage
    from interlcm.engines.restorer import RestoreOptions
    from interlcm.testing import group_photo

    photo = group_photo((480, 360), ((0.3, 0.4, 200, 0), (0.72, 0.45, 170, 8)))
    spec = JobSpec(BackendOptions("torch", preset="tiny", threads=1), RestoreOptions(batch=2), PhotoOptions(),
                   detector="dlib")
    batch = {"src": np.array(["in/group.png"], dtype=object), "dst": np.array([str(tmp_path / "group.png")], dtype=object),
             "faces_dir": np.array([""], dtype=object), "source": np.array([source_id(b"x")], dtype=object),
             "image": _objects([photo]), "error": np.array([""], dtype=object)}
    restored = RestoreActor(spec)(batch)
    (row,) = write_stage(restored, pafs.LocalFileSystem())["row"]
    row = json.loads(row)
    assert row["status"] == "written" and row["faces"] == 2, row
    assert row["notes"] == ["paste-back mask: soft box mask alone (no face parser)"]
    assert not (tmp_path / "group_faces").exists()


def test_the_plan_holds_on_object_stores(tmp_path):
    """Buckets get the CLI's plan and refusals too (fsspec's memory filesystem stands in for s3://)."""
    fsspec = pytest.importorskip("fsspec")
    import io

    import pyarrow.fs as pafs

    from interlcm.engines.outputs import OutputClash, source_id
    from interlcm.engines.photo import PhotoOptions
    from interlcm.engines.ray_job import JobSpec, _objects, plan, write_stage
    from interlcm.engines.restorer import RestoreOptions

    memory = fsspec.filesystem("memory")
    bucket = f"/bucket-{tmp_path.name}"
    pixels = np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    for name, fmt in (("IMG_0001.JPG", "JPEG"), ("b.webp", "WEBP")):
        data = io.BytesIO()
        Image.fromarray(pixels).save(data, format=fmt)
        memory.pipe(f"{bucket}/in/{name}", data.getvalue())
    spec = JobSpec(BackendOptions("torch"), RestoreOptions(), PhotoOptions(aligned=True, save_faces=True))
    in_fs, out_fs, run = plan([f"memory://{bucket}/in"], f"memory://{bucket}/out", spec)
    assert [(p.photo.name, p.faces.name) for p in run.photos] == [("IMG_0001.JPG", "IMG_0001_faces"), ("b.png", "b_faces")]

    jpeg = run.photos[0]  # written as the job writes it: faces, then the photo, recording the input
    source = source_id(memory.cat(str(jpeg.source)))
    batch = {"src": np.array([str(jpeg.source)], dtype=object), "dst": np.array([str(jpeg.photo)], dtype=object),
             "faces_dir": np.array([str(jpeg.faces)], dtype=object), "source": np.array([source], dtype=object),
             "image": _objects([pixels]), "faces": _objects([pixels[None]]), "found": np.array([1]),
             "notes": np.array([""], dtype=object), "error": np.array([""], dtype=object),
             "backend": np.array(["torch"], dtype=object)}
    assert json.loads(write_stage(batch, pafs.PyFileSystem(pafs.FSSpecHandler(memory)))["row"][0])["status"] == "written"
    assert memory.cat(f"{bucket}/out/IMG_0001.JPG")[:2] == b"\xff\xd8"  # JPEG in, JPEG out
    assert plan([f"memory://{bucket}/in"], f"memory://{bucket}/out", spec)[2].earlier == {jpeg.source}  # resumable

    memory.pipe(f"{bucket}/out/b.png", b"someone else's object")
    with pytest.raises(OutputClash, match=r"out/b\.png \(not an output of .*in/b\.webp\)"):
        plan([f"memory://{bucket}/in"], f"memory://{bucket}/out", spec)
    assert plan([f"memory://{bucket}/in"], f"memory://{bucket}/out", spec, overwrite=True)[2].earlier == {jpeg.source}
