"""interlcm-train on careless input: one sentence, non-zero exit, nothing of the user's overwritten."""

from __future__ import annotations

import errno

import pytest
import torch
from click.testing import CliRunner

from interlcm.train.cli import main
from interlcm.train.trainer import RUN_MARKER


@pytest.fixture
def config(tmp_path, tiny_weights):
    path = tmp_path / "train.yaml"
    path.write_text(
        f"weights: {tiny_weights}\ndata: {tmp_path / 'faces'}\nallow_random_perceptual: true\n"
        "perceptual_channels: [8, 16, 32, 32, 32]\ndisc_channels: 8\ndisc_layers: 2\nbatch_size: 2\nmax_steps: 1\n"
    )
    return path


def run(*args: str):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code != 0 and "Traceback" not in result.output, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, result.output  # one sentence (click may add its usage lines above it)
    return errors[0]


def test_broken_yaml_is_one_sentence(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: [1, 2\nbatch_size: : 2\n")
    assert "bad.yaml cannot be parsed at line 2" in run("--config", bad)


def test_resume_from_a_weights_file_or_a_truncated_checkpoint(tmp_path, tiny_weights):
    assert "is an encoder weights file, not a training checkpoint" in run(
        "--resume", tiny_weights / "visual_encoder_3step.pth"
    )
    ckpt = tmp_path / "step_000002.pt"
    torch.save({"format": 1, "config": {}, "step": 2, "blob": torch.zeros(4096)}, ckpt)
    ckpt.write_bytes(ckpt.read_bytes()[:2000])
    assert "cannot read checkpoint" in run("--resume", ckpt)


def test_a_second_run_into_the_same_out_is_refused(tmp_path, config):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "step_000007.pt").write_bytes(b"the first run's checkpoint")
    (out / RUN_MARKER).write_text("{}")
    message = run("--config", config, "--out", out)
    assert "already holds a training run (continue it with --resume" in message and "step_000007.pt" in message
    assert (out / "checkpoints" / "step_000007.pt").read_bytes() == b"the first run's checkpoint"


def test_out_that_is_not_a_run_folder_a_file_or_read_only(tmp_path, config, monkeypatch):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "me.jpg").write_bytes(b"jpg")
    assert "refusing to write into --out" in run("--config", config, "--out", photos)
    assert sorted(p.name for p in photos.iterdir()) == ["me.jpg"]
    (tmp_path / "a-file").write_text("x")
    assert "is a file" in run("--config", config, "--out", tmp_path / "a-file")

    from interlcm import files

    def read_only(self, *args, **kwargs):  # the tests run as root, which ignores permissions
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(files.Path, "mkdir", read_only)
    assert "the file system is read-only" in run("--config", config, "--out", tmp_path / "new")
