"""torch at reduced precision (interlcm/torch_backend.py): the fp16 export's fp32 islands, bf16 on the CPU within
its stated tolerance of fp32, and precisions a backend cannot run refused in one sentence, never dropped.

fp16 runs on CUDA only; the GPU tests (tests/engines/test_gpu.py) check it against fp32 the same way.
"""

from __future__ import annotations

import copy

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from interlcm.engines.restorer import RestoreOptions, Restorer
from interlcm.parity import compare_traces, format_table, require
from interlcm.sampler import Trace
from interlcm.torch_backend import TorchBackend


@pytest.fixture(scope="module")
def bf16_models(tiny_models):
    return copy.deepcopy(tiny_models)  # a reduced-precision backend casts its models in place


def test_bf16_restores_like_fp32_within_its_tolerance(tiny_models, bf16_models, lq_photo):
    """Every stage within the bf16 limit (the fp16 limit x 8, components.BF16_OVER_FP16); the image above 45 dB.

    Measured here: worst stage 4.1e-2 of max |ref| (SE residuals), image 54 dB."""
    ours, ref = Trace(), Trace()
    Restorer(TorchBackend(tiny_models), RestoreOptions(seed=3)).restore(lq_photo, ref)
    out = Restorer(TorchBackend(bf16_models, precision="bf16"), RestoreOptions(seed=3)).restore(lq_photo, ours)
    assert out.dtype == torch.float32  # outputs come back fp32: the sampler's arithmetic stays fp32
    rows = require(compare_traces(ours, ref, "bf16"), "torch bf16 vs fp32")
    image = next(r for r in rows if r.name == "image")
    assert image.psnr > 45.0 and image.max_abs > 0, format_table(rows)  # bf16 really ran: not bit-equal


def test_bf16_keeps_the_fp16_exports_fp32_islands(bf16_models):
    """Norm layers hold fp32 weights and compute on fp32 inputs; the timestep embedding sees the timestep itself
    (bf16 would round t = 999 to 1000); everything else holds bf16 weights."""
    from interlcm.components import BY_NAME

    backend = TorchBackend(bf16_models, precision="bf16")
    unet = backend.module("unet")
    seen = {}

    timesteps = []

    def record(module, args):
        seen.setdefault(type(module).__name__, set()).add(args[0].dtype)
        if type(module).__name__ == "Timesteps":
            timesteps.append(args[0])

    hooks = [m.register_forward_pre_hook(record) for m in unet.modules() if isinstance(m, (nn.GroupNorm, nn.Linear))]
    hooks += [m.register_forward_pre_hook(record) for name, m in unet.named_modules() if name.endswith("time_proj")]
    inputs = BY_NAME["unet"].sample_inputs(bf16_models.config, 2)
    inputs["timestep"] = torch.tensor([999.0, 261.0])  # not bf16 numbers
    try:
        backend.run("unet", **inputs)
    finally:
        for hook in hooks:
            hook.remove()
    assert seen == {"GroupNorm": {torch.float32}, "Linear": {torch.bfloat16}, "Timesteps": {torch.float32}}
    assert [t.tolist() for t in timesteps] == [[999.0, 261.0]]
    norms = [p.dtype for m in unet.modules() if isinstance(m, (nn.GroupNorm, nn.LayerNorm)) for p in m.parameters()]
    convs = [m.weight.dtype for m in unet.modules() if isinstance(m, nn.Conv2d)]
    assert set(norms) == {torch.float32} and set(convs) == {torch.bfloat16}


def test_fp16_on_the_cpu_is_refused_in_one_sentence(tiny_models):
    with pytest.raises(ValueError, match=r"^torch runs fp16 on CUDA devices only, and this one is the CPU: use "):
        TorchBackend(tiny_models, precision="fp16")
    with pytest.raises(ValueError, match=r"^training runs fp32"):
        TorchBackend(tiny_models, precision="bf16", grad=True)


@pytest.mark.parametrize("flags, error", [
    (["--backend", "torch", "--precision", "fp16"], "torch runs fp16 on CUDA devices only, and this one is the CPU"),
    (["--onnx", "nowhere", "--precision", "bf16"], "the onnxruntime backend runs fp32 or fp16, not bf16: use "
                                                   "--precision fp32 or --backend torch"),
])
def test_the_cli_refuses_what_a_backend_cannot_run(tmp_path, flags, error):
    from interlcm.engines.cli import main

    result = CliRunner().invoke(main, ["restore", "--aligned", "--preset", "tiny", *flags, "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and not (tmp_path / "o").exists()
    assert result.output.strip().splitlines()[-1].startswith(f"Error: {error}"), result.output


def test_the_cli_runs_bf16_on_the_cpu_and_says_so(tmp_path):
    from interlcm.engines.cli import main

    result = CliRunner().invoke(main, ["restore", "--aligned", "--preset", "tiny", "--backend", "torch", "--threads", "1",
                                       "--precision", "bf16", "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    assert "backend: torch bf16 weights (fp32 norms and timestep embedding, SDPA attention) on cpu" in result.output
    assert (tmp_path / "o" / "face.png").is_file()
