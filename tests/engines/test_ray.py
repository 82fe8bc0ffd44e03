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
import signal
import threading
import time

import pytest
from click.testing import CliRunner

ray = pytest.importorskip("ray")

from interlcm.engines.backend import BackendOptions  # noqa: E402
from interlcm.engines.cli import main  # noqa: E402


def _folder(faces, dst, n):
    dst.mkdir()
    for src in sorted((faces / "in").iterdir())[:n]:
        (dst / src.name).write_bytes(src.read_bytes())
    return dst


def _table(out):
    return {os.path.basename(r["input"]): r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}


def test_job_equals_single_process_reports_bad_images_and_resumes(ray_local, reference_faces, tmp_path):
    faces = reference_faces.root
    src = _folder(faces, tmp_path / "in", 8)
    (src / "corrupt.png").write_bytes(b"\x89PNG not really")
    out = tmp_path / "out"
    args = ["restore", str(src), *reference_faces.args, "--batch", "1", "--ray", "local", "--actors", "2", "--out", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output  # the corrupt image failed, and the exit code says so
    assert "8 restored (8 face(s))" in result.output and "1 failed" in result.output
    table = _table(out)
    assert table["corrupt.png"]["status"] == "failed" and "not an image" in table["corrupt.png"]["reason"]
    assert sorted(p.name for p in out.iterdir()) == [f"face{i:02d}.png" for i in range(8)] + ["results.jsonl"]
    for i in range(8):
        name = f"face{i:02d}.png"
        assert table[name]["status"] == "written"
        assert (out / name).read_bytes() == (faces / "reference" / name).read_bytes(), name

    (src / "corrupt.png").unlink()  # the user removes the bad file and reruns: nothing is redone
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")}
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "8 skipped" in result.output and "0 restored" in result.output
    assert {n: r["status"] for n, r in _table(out).items()} == {f"face{i:02d}.png": "skipped" for i in range(8)}
    assert stamps == {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")}


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
    assert sorted(r["input"] for r in report.rows) == sorted(str(p) for p in src.iterdir())  # each input once
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in src.iterdir()) + ["results.jsonl"]
    for path in out.glob("*.png"):  # no partial or different outputs (and no leftover temp files, listed above)
        assert path.read_bytes() == (faces / "reference" / path.name).read_bytes(), path.name
