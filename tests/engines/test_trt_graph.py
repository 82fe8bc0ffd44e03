"""engines/cuda_graph.py: the step chain captured per batch size and replayed, on TrtBackend and the stand-in.

A real CUDA graph records the kernels of the capture and replays them with the bindings they
had then: nothing may change a shape or an address while it is captured, and a replay sets
nothing. On the CPU the stand-in (engines/trt_standin.py) enforces both: during `capture()` any
set_input_shape / set_tensor_address raises, and a replay re-runs the captured step chain on the
graph's static buffers under `replay()`, where every engine launch must be the captured one,
with the captured context, shapes and addresses, and nothing may be set. The numbers are real
(ONNX Runtime on the fp16 files), so replayed results are compared with the plain step loop.
"""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch

from interlcm.engines.cuda_graph import GraphedStepChain
from interlcm.engines.trt import TrtBackend
from interlcm.sampler import SamplerSettings, denoise, restore
from interlcm.schedule import make_noise, make_schedule


class StandInCuda:
    """torch.cuda's graph and stream functions over a TrtBackend's CPU streams and the stand-in's capture/replay."""

    def __init__(self, streams, standin):
        self.streams, self.standin = streams, standin
        self.events = []
        cuda = self

        class CUDAGraph:
            def __init__(self):
                self.captured, self.rerun, self.replays = None, None, 0

            def replay(self):
                cuda.events.append(("replay", cuda.streams.current().name))
                with cuda.standin.replay(self.captured):
                    self.rerun()
                self.replays += 1

        self.CUDAGraph = CUDAGraph

    def current_stream(self, device=None):
        return self.streams.current()

    def stream(self, stream):
        return self.streams.use(stream)

    def Stream(self, device=None):  # mirrors torch.cuda.Stream
        return self.streams.new_stream()

    @contextmanager
    def graph(self, graph, stream):
        self.events.append(("capture", stream.name))
        with self.streams.use(stream), self.standin.capture() as captured:
            yield
        graph.captured = captured


def _chain(backend, standin, settings):
    chain = GraphedStepChain(backend, settings, backend.stream)
    return chain, _stand_in(chain, standin)


def _stand_in(chain: GraphedStepChain, standin) -> StandInCuda:
    """Run `chain` on the stand-in's torch.cuda: its graphs capture and replay through the TensorRT stand-in."""
    cuda = chain.cuda = StandInCuda(chain.backend.streams, standin)
    original = chain._capture

    def capture(values):  # the stand-in graph's replay: the captured chain again, on the graph's static buffers
        captured = original(values)
        captured.graph.rerun = lambda: captured.output.copy_(denoise(chain.backend, *captured.inputs, chain.settings))
        return captured

    chain._capture = capture
    return cuda


def _stage2_inputs(cfg, batch, seed):
    """(z0, context, cond, guidance, noise) of the tiny preset: stage 2's inputs, without running stage 1."""
    from interlcm.components import BY_NAME

    x = BY_NAME["denoise_step"].sample_inputs(cfg, batch, seed=seed)
    noise = make_noise(seed, 2, batch, cfg.latent_channels, (cfg.latent_size, cfg.latent_size))  # one LCM step
    return x["sample"], x["context"], x["cond"], x["guidance"], noise


def test_replayed_chain_equals_the_plain_step_loop(engines, trt_standin, tiny_cfg):
    """Batch 2, 1, then 2 again: one capture per batch size after a warm-up; the capture sets nothing; each
    replay launches the captured engines with the captured bindings (the batch-1 run in between did not
    disturb batch 2's contexts) and gives the plain loop's numbers."""
    settings = SamplerSettings(make_schedule(tiny_cfg.scheduler, 2), guidance_dim=tiny_cfg.guidance_dim)
    with TrtBackend(engines) as backend:
        chain, cuda = _chain(backend, trt_standin, settings)
        for batch, seed in ((2, 1), (1, 2), (2, 3)):
            inputs = _stage2_inputs(tiny_cfg, batch, seed)
            got = chain(*inputs).clone()
            expected = denoise(backend, *inputs, settings)
            torch.testing.assert_close(got, expected, rtol=0, atol=0)
            captured = chain.captured[batch]
            for static, value in zip(captured.inputs, inputs):
                assert static is not value and torch.equal(static, value)  # copied into the graph's own buffers
        assert sorted(chain.captured) == [1, 2]  # one graph per batch size
        assert [len(chain.captured[b].graph.captured) for b in (1, 2)] == [2, 2]  # SE and UNet, one step
        assert [e[0] for e in cuda.events] == ["capture", "replay", "capture", "replay", "replay"]
        assert {e[1] for e in cuda.events} == {backend.stream.name}
        assert chain.captured[2].graph.replays == 2


def test_a_replay_that_changes_a_binding_is_refused(engines, trt_standin, tiny_cfg):
    """The stand-in's replay check can fail: a new context for the batch (as if its bindings changed) is caught."""
    from interlcm.engines.trt_standin import ContractViolation

    settings = SamplerSettings(make_schedule(tiny_cfg.scheduler, 2), guidance_dim=tiny_cfg.guidance_dim)
    with TrtBackend(engines) as backend:
        chain, _ = _chain(backend, trt_standin, settings)
        inputs = _stage2_inputs(tiny_cfg, 1, 1)
        chain(*inputs)
        backend._loaded["unet"].bound.clear()  # the next UNet call binds a new context
        with pytest.raises(ContractViolation, match="set_input_shape.* during a CUDA-graph replay"):
            chain(*inputs)


def test_a_chain_cannot_be_traced(engines, trt_standin, tiny_cfg, lq_photo):
    from interlcm.sampler import Trace

    settings = SamplerSettings(make_schedule(tiny_cfg.scheduler, 2), guidance_dim=tiny_cfg.guidance_dim)
    with TrtBackend(engines) as backend:
        chain, _ = _chain(backend, trt_standin, settings)
        noise = make_noise(1, 2, 2, tiny_cfg.latent_channels, (tiny_cfg.latent_size, tiny_cfg.latent_size))
        with pytest.raises(ValueError, match="trace without chain"):  # before any component runs
            restore(backend, lq_photo, noise, settings, Trace(), chain=chain)
        assert backend._loaded == {}


def test_the_restorer_replays_its_graph_and_a_server_shares_it(engines, trt_standin, lq_photo):
    """`cuda_graph=True` routes stage 2 through the chain on the backend's stream; same picture as the plain
    run; a restorer for other request options reuses the captured graphs, unless its steps differ."""
    from interlcm.engines.restorer import RestoreOptions, Restorer

    with TrtBackend(engines) as backend:
        plain = Restorer(backend, RestoreOptions(seed=3, steps=1)).restore(lq_photo)
        graphed = Restorer(backend, RestoreOptions(seed=3, steps=1, cuda_graph=True))
        cuda = _stand_in(graphed.chain, trt_standin)
        torch.testing.assert_close(graphed.restore(lq_photo), plain, rtol=0, atol=0)
        assert sorted(graphed.chain.captured) == [2]
        assert [e for e in cuda.events if e[0] == "replay"] == [("replay", backend.stream.name)]
        other = Restorer(backend, RestoreOptions(seed=9, steps=1, colorfix="adain", cuda_graph=True),
                         graphs=graphed.chain)
        assert other.chain is graphed.chain
        other.restore(lq_photo)
        assert [e[0] for e in cuda.events].count("capture") == 1  # batch 2 captured once for both
        for changed in (RestoreOptions(steps=3, cuda_graph=True), RestoreOptions(steps=1, fused_step=True, cuda_graph=True)):
            assert Restorer(backend, changed, graphs=graphed.chain).chain is not graphed.chain
        with pytest.raises(ValueError, match="^--timing synchronises after every call"):
            Restorer(backend, RestoreOptions(cuda_graph=True), timing=True)


@pytest.mark.gpu
@pytest.mark.trt
@pytest.mark.parametrize("fused", [False, True])
def test_graph_replay_equals_the_plain_run_on_engines(real_engines, tiny_models, lq_photo, fused):
    """Real engines and a real CUDA graph: replay gives bit-identical outputs, batch sizes alternating."""
    from dataclasses import replace

    cfg = tiny_models.config
    settings = replace(SamplerSettings(make_schedule(cfg.scheduler, 4), guidance_dim=cfg.guidance_dim),
                       fused_step=fused)
    with TrtBackend(real_engines) as backend:
        chain = GraphedStepChain(backend, settings, backend.stream)
        with torch.cuda.stream(backend.stream):
            for lq, seed in ((lq_photo, 1), (lq_photo[:1], 2), (lq_photo.flip(0), 3)):
                noise = make_noise(seed, 4, lq.shape[0], cfg.latent_channels, (cfg.latent_size, cfg.latent_size))
                lq, noise = lq.cuda(), noise.cuda()
                expected = restore(backend, lq, noise, settings).clone()
                got = restore(backend, lq, noise, settings, chain=chain)
                torch.testing.assert_close(got, expected, rtol=0, atol=0)
        assert sorted(chain.captured) == [1, 2]
