"""A full disk, for real: a small tmpfs mounted in a user namespace (`unshare -rm`), ENOSPC from the kernel.

Each command stops with one sentence naming the folder and the fix, exit code 1, and leaves no
temporary behind. Skipped where unprivileged user namespaces are not allowed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

SCRIPT = """
import json, os, sys
from click.testing import CliRunner
from interlcm.cli.weights import main as weights
from interlcm.engines.cli import main as trt

disk, src, tiny, larger = sys.argv[1:5]
out = {}
r = CliRunner().invoke(weights, ["init", "--preset", "tiny", "--out", os.path.join(disk, "w")])
out["init"] = [r.exit_code, r.output, sorted(os.listdir(disk))]
r = CliRunner().invoke(weights, ["init", "--preset", "tiny", "--out", os.path.join(larger, "w")])
out["init_safetensors"] = [r.exit_code, r.output, sorted(os.listdir(larger))]
r = CliRunner().invoke(trt, ["restore", src, "--aligned", "--weights", tiny, "--batch", "1", "--threads", "1",
                             "--out", os.path.join(disk, "restored")])
out["restore"] = [r.exit_code, r.output, sorted(os.listdir(os.path.join(disk, "restored")))]
print("RESULT" + json.dumps(out))
"""


@pytest.fixture(scope="module")
def on_a_full_disk(tmp_path_factory, tiny_weights):
    if shutil.which("unshare") is None:
        pytest.skip("needs util-linux's unshare")
    root = tmp_path_factory.mktemp("full")
    disk, src, larger = root / "disk", root / "in", root / "larger"
    for folder in (disk, src, larger):
        folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):  # noise: ~12 KB PNGs each, so the second output does not fit in 20 KB
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(src / f"face{i}.png")
    # 20 KB: full at the first file; 8 MB: full while the LCM's safetensors are written (diffusers)
    mount = f"mount -t tmpfs -o size=20k tmpfs {disk} && mount -t tmpfs -o size=8m tmpfs {larger}"
    command = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
               f'{mount} && exec "$0" -c "$1" "$2" "$3" "$4" "$5"', sys.executable, textwrap.dedent(SCRIPT),
               str(disk), str(src), str(tiny_weights), str(larger)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    if "RESULT" not in done.stdout:
        if "mount" in done.stderr or "unshare" in done.stderr:
            pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.strip().splitlines()[-1]}")
        raise AssertionError(done.stderr[-3000:])
    return json.loads(done.stdout.split("RESULT", 1)[1])


@pytest.mark.parametrize("where", ["init", "init_safetensors"])  # torch.save's and safetensors' errors
def test_weights_init_on_a_full_disk_is_one_sentence(on_a_full_disk, where):
    code, output, left = on_a_full_disk[where]
    assert code == 1 and output.strip().splitlines() == [output.strip()], output
    assert "cannot write the weights folder" in output and "no space left on the device" in output
    assert "enforce fail" not in output and "os error" not in output
    assert left == []  # its temporary folder removed


def test_restore_stops_on_a_full_disk_with_that_sentence(on_a_full_disk):
    code, output, written = on_a_full_disk["restore"]
    assert code == 1, output
    last = output.strip().splitlines()[-1]
    assert last.startswith("Error: cannot write") and "no space left on the device" in last, output
    assert "image(s) in" not in output  # stopped: no summary of a finished run
    # one ~12 KB output fits in 20 KB; CPU workers write in parallel, so which one got there first varies.
    # The sentence names a photo that was not written, and nothing else is left: no temporary, no part file.
    names = [f"face{i}.png" for i in range(3)]
    assert len(written) == 1 and written[0] in names, written
    assert [n for n in names if n in last] != [] and written[0] not in last, last
