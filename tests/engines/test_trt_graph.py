"""engines/cuda_graph.py: the step chain captured per batch size and replayed, with CPU stand-ins for torch.cuda.

A real CUDA graph replays the kernels recorded at capture on the same static buffers.
The stand-in `FakeGraph.replay` does exactly that in Python: it re-runs the captured
work (`denoise` on the static inputs) into the static output. The tests check what our
code is responsible for: one capture per batch size, on the dedicated stream, after a
warm-up; inputs copied into the same static buffers each call; the caller's stream and
the capture stream ordered both ways; and replayed results equal to the plain sampler's.
"""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch

from interlcm.engines.cuda_graph import GraphedStepChain
from interlcm.sampler import SamplerSettings, denoise, restore
from interlcm.schedule import make_noise, make_schedule


class FakeStream:
    def __init__(self, name):
        self.name, self.waited_for = name, []

    def wait_stream(self, other):
        self.waited_for.append(other.name)


class FakeCuda:
    """torch.cuda's graph and stream functions, recording; replay re-runs the captured denoise."""

    def __init__(self, backend, settings):
        self.caller = FakeStream("caller")
        self.current = self.caller
        self.events = []
        fake = self

        class CUDAGraph:
            def __init__(self):
                self.replays = 0
                self.rerun = None

            def replay(self):
                fake.events.append(("replay", fake.current.name))
                self.replays += 1
                self.rerun()

        self.CUDAGraph = CUDAGraph
        self.backend, self.settings = backend, settings

    def current_stream(self, device=None):
        return self.current

    def Stream(self, device=None):  # noqa: N802 - mirrors torch.cuda.Stream
        return FakeStream("new")

    @contextmanager
    def stream(self, s):
        previous, self.current = self.current, s
        try:
            yield
        finally:
            self.current = previous

    @contextmanager
    def graph(self, g, stream):
        self.events.append(("capture", stream.name))
        with self.stream(stream):
            yield


class CheapStep:
    """A ComponentRunner whose fused step is a cheap deterministic function of every input (checked by name)."""

    def __init__(self):
        self.calls = 0

    def run(self, component, sample, timestep, context, guidance, cond):
        assert component == "denoise_step" and sample.dtype == torch.float32
        self.calls += 1
        bias = timestep.view(-1, 1, 1, 1) / 1000 + context.mean((1, 2)).view(-1, 1, 1, 1)
        return {"eps": torch.tanh(0.9 * sample + bias + guidance.mean() + cond.mean())}


def _chain(tiny_models):
    cfg = tiny_models.config
    settings = SamplerSettings(make_schedule(cfg.scheduler, 4), guidance_dim=cfg.guidance_dim, fused_step=True)
    chain = GraphedStepChain(CheapStep(), settings, FakeStream("engines"))
    return chain, _stand_in(chain), settings


def _stand_in(chain: GraphedStepChain) -> FakeCuda:
    """Run `chain` on the recording torch.cuda stand-in, its graphs replaying the captured denoise."""
    cuda = chain.cuda = FakeCuda(chain.backend, chain.settings)
    original = chain._capture

    def capture(values):  # give the stand-in graph its replay: denoise on the captured static buffers
        captured = original(values)
        captured.graph.rerun = lambda: captured.output.copy_(denoise(chain.backend, *captured.inputs, chain.settings))
        return captured

    chain._capture = capture
    return cuda


def _noise(cfg, batch, seed):
    return make_noise(seed, 4, batch, cfg.latent_channels, (cfg.latent_size, cfg.latent_size))


def _stage2_inputs(cfg, batch, seed):
    """(z0, context, cond, guidance, noise) of the tiny preset: stage 2's inputs, without running stage 1."""
    from interlcm.components import BY_NAME

    x = BY_NAME["denoise_step"].sample_inputs(cfg, batch, seed=seed)
    return x["sample"], x["context"], x["cond"], x["guidance"], _noise(cfg, batch, seed)


def test_replayed_chain_equals_the_plain_step_loop(tiny_models):
    """Batch 2, 1, then 2 again: one capture per batch size, replays on the same static buffers."""
    chain, cuda, settings = _chain(tiny_models)
    cfg = tiny_models.config
    for batch, seed in ((2, 1), (1, 2), (2, 3)):
        inputs = _stage2_inputs(cfg, batch, seed)
        expected = denoise(chain.backend, *inputs, settings)
        got = chain(*inputs)
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
        captured = chain.captured[batch]
        assert got is captured.output  # the static output, not a copy
        for static, value in zip(captured.inputs, inputs):
            assert static is not value and torch.equal(static, value)  # copied into the graph's own buffers
        if seed == 1:
            pointers = [t.data_ptr() for t in (*captured.inputs, captured.output)]
    assert [t.data_ptr() for t in (*chain.captured[2].inputs, chain.captured[2].output)] == pointers
    assert sorted(chain.captured) == [1, 2]  # one graph per batch size
    assert [e for e in cuda.events if e[0] == "capture"] == [("capture", "engines")] * 2
    assert [e for e in cuda.events if e[0] == "replay"] == [("replay", "engines")] * 3
    assert chain.captured[2].graph.replays == 2
    assert chain.stream.waited_for == ["caller"] * 3 and cuda.caller.waited_for == ["engines"] * 3


def test_a_chain_cannot_be_traced(tiny_models, lq_photo):
    from interlcm.sampler import Trace

    chain, _, settings = _chain(tiny_models)
    with pytest.raises(ValueError, match="trace without chain"):  # before any component runs
        restore(chain.backend, lq_photo, _noise(tiny_models.config, 2, 1), settings, Trace(), chain=chain)
    assert chain.backend.calls == 0


def test_the_restorer_replays_its_graph_and_a_server_shares_it(tiny_models, lq_photo):
    """`cuda_graph=True` routes stage 2 through the chain (on a stream of its own for torch); same picture;
    a restorer for other request options reuses the captured graphs, unless its steps differ."""
    from interlcm.engines.restorer import RestoreOptions, Restorer
    from interlcm.torch_backend import TorchBackend

    backend = TorchBackend(tiny_models)
    plain = Restorer(backend, RestoreOptions(seed=3, fused_step=True)).restore(lq_photo)
    graphed = Restorer(backend, RestoreOptions(seed=3, fused_step=True, cuda_graph=True))
    cuda = _stand_in(graphed.chain)
    torch.testing.assert_close(graphed.restore(lq_photo), plain, rtol=0, atol=0)
    assert sorted(graphed.chain.captured) == [2] and graphed.chain.stream.name == "new"
    assert [e for e in cuda.events if e[0] == "replay"] == [("replay", "new")]
    other = Restorer(backend, RestoreOptions(seed=9, colorfix="adain", fused_step=True, cuda_graph=True),
                     graphs=graphed.chain)
    assert other.chain is graphed.chain
    other.restore(lq_photo)
    assert [e[0] for e in cuda.events].count("capture") == 1  # batch 2 captured once for both
    for changed in (RestoreOptions(steps=1, fused_step=True, cuda_graph=True), RestoreOptions(cuda_graph=True)):
        assert Restorer(backend, changed, graphs=graphed.chain).chain is not graphed.chain
    with pytest.raises(ValueError, match="^--timing synchronises after every call"):
        Restorer(backend, RestoreOptions(cuda_graph=True), timing=True)


@pytest.mark.gpu
@pytest.mark.trt
@pytest.mark.parametrize("fused", [False, True])
def test_graph_replay_equals_the_plain_run_on_engines(real_engines, tiny_models, lq_photo, fused):
    """Real engines and a real CUDA graph: replay gives bit-identical outputs, batch sizes alternating."""
    from dataclasses import replace

    from interlcm.engines.trt import TrtBackend

    cfg = tiny_models.config
    settings = replace(SamplerSettings(make_schedule(cfg.scheduler, 4), guidance_dim=cfg.guidance_dim),
                       fused_step=fused)
    with TrtBackend(real_engines) as backend:
        chain = GraphedStepChain(backend, settings, backend.stream)
        with torch.cuda.stream(backend.stream):
            for lq, seed in ((lq_photo, 1), (lq_photo[:1], 2), (lq_photo.flip(0), 3)):
                lq, noise = lq.cuda(), _noise(cfg, lq.shape[0], seed).cuda()
                expected = restore(backend, lq, noise, settings).clone()
                got = restore(backend, lq, noise, settings, chain=chain)
                torch.testing.assert_close(got, expected, rtol=0, atol=0)
        assert sorted(chain.captured) == [1, 2]
