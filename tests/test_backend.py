"""interlcm/backend.py: the one run every backend shares (check, split to the batch, concatenate) and the wrappers."""

from __future__ import annotations

import pytest
import torch

from interlcm.backend import BackendBase, BackendWrapper, TimedBackend, allocate_outputs
from interlcm.components import InputError, get_component


class ReusingBackend(BackendBase):
    """Writes every call's output into one buffer per batch size, as TensorRT does; records each engine call."""

    name = "reusing"

    def __init__(self, config, max_batch):
        self.config, self.device, self.max_batch = config, torch.device("cpu"), max_batch
        self.batches: list[int] = []
        self.buffers: dict[int, torch.Tensor] = {}

    def has(self, component):
        return True

    def _run(self, component, inputs, batch, dims):
        self.batches.append(batch)
        image = inputs["image"]
        out = self.buffers.setdefault(batch, torch.empty(batch, image.shape[1], image.shape[2] // 8, 8))
        out.copy_(image[:, :, ::8, ::8] * 2)
        return {"cond": out}


def test_calls_are_split_to_the_batch_and_concatenated(tiny_cfg):
    """7 images through a backend that takes 3 at a time and reuses its output buffer: 3 + 3 + 1, in order."""
    backend = ReusingBackend(tiny_cfg, max_batch=3)
    image = torch.rand(7, 3, 64, 64)
    out = backend.run("se_condition", image=image)["cond"]
    assert backend.batches == [3, 3, 1]
    torch.testing.assert_close(out, image[:, :, ::8, ::8] * 2, rtol=0, atol=0)  # the first part was not overwritten
    assert backend.run("se_condition", image=image[:2])["cond"] is backend.buffers[2]  # one part: returned as is


def test_every_call_is_checked_before_anything_runs(tiny_cfg):
    backend = ReusingBackend(tiny_cfg, max_batch=3)
    with pytest.raises(InputError, match=r"se_condition: 2 input problem\(s\), nothing was run; the graphs were made "
                                         r"for the tiny preset at 64 px"):
        backend.run("se_condition", image=torch.rand(2, 3, 32, 32), extra=torch.zeros(1))
    assert backend.batches == []


def test_run_time_dims_come_from_the_inputs():
    """RetinaFace's outputs follow the photo: 1024x768 has 32,256 priors (640x640, the traced size: 16,800)."""
    detector = get_component("retinaface_mobile")
    pixels = torch.zeros(2, 3, 768, 1024)
    batch, dims = detector.check(None, {"pixels": pixels})
    assert (batch, dims) == (2, {"height": 768, "width": 1024})
    outputs = allocate_outputs(detector, None, batch, dims, lambda shape, dtype: torch.empty(shape, dtype=dtype))
    shapes = {name: tensor.shape for name, tensor in outputs.items()}
    assert shapes == {"loc": (2, 32256, 4), "conf": (2, 32256, 2), "landmarks": (2, 32256, 10)}
    assert detector.output_shapes(None, 1)["loc"] == (1, 16800, 4)
    # a 12 MP phone photo (either way up) fits the default profile; a 16 MP one does not
    for h, w in ((3024, 4032), (4032, 3024)):
        assert detector.check(None, {"pixels": torch.empty(1, 3, h, w)}, detector.limits()) == (
            1, {"height": h, "width": w})
    with pytest.raises(InputError, match="width 4608 is outside 64..4096"):
        detector.check(None, {"pixels": torch.empty(1, 3, 3456, 4608)}, detector.limits())


def test_an_engine_that_disagrees_with_the_description_is_refused(tiny_cfg):
    unet = get_component("unet")
    with pytest.raises(RuntimeError, match=r"unet: the engine gives eps shape \(2, 4, 16, 16\)"):
        allocate_outputs(unet, tiny_cfg, 2, {}, lambda s, d: torch.empty(s), engine_shape=lambda name: (2, 4, 16, 16))


def test_wrappers_delegate_everything_they_do_not_add(tiny_cfg):
    inner = ReusingBackend(tiny_cfg, max_batch=3)
    timed = TimedBackend(inner)
    assert isinstance(timed, BackendWrapper)
    assert (timed.name, timed.config, timed.device, timed.max_batch, timed.stream) == (
        "reusing", tiny_cfg, torch.device("cpu"), 3, None)
    assert timed.has("clip") and timed.limits("clip") == inner.limits("clip")
    timed.run("se_condition", image=torch.rand(4, 3, 64, 64))
    assert inner.batches == [3, 1] and timed.counts["se_condition"] == 1
    with timed:
        pass
