"""The release-style adapter the benchmark puts between the sampler and a real backend.

(Timing per component is `interlcm.engines.backend.TimedBackend`.)
"""

from __future__ import annotations

import torch

from interlcm.backend import Backend, BackendWrapper
from interlcm.components import BY_NAME


class ReleaseStyle(BackendWrapper):
    """The sampler's calls mapped to the release's Spatial Encoder: its image embedding every step.

    The sampler runs `se_condition` once and `spatial_encoder` per step. The
    release runs the whole ControlNet, conditioning embedding included, at
    every step: here `se_condition` only keeps the image and every
    `spatial_encoder` call runs `spatial_encoder_full` on it.
    """

    FULL = BY_NAME["spatial_encoder_full"]
    CONDITION = BY_NAME["se_condition"]

    def __init__(self, inner: Backend):
        super().__init__(inner)
        self._image: torch.Tensor | None = None

    def run(self, component: str, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        if component == self.CONDITION.name:
            (image_name,) = self.CONDITION.input_names
            self._image = inputs[image_name]
            # the release has no separate embedding: the sampler gets a placeholder it only passes along
            return {name: torch.empty(0) for name in self.CONDITION.output_names}
        if component == "spatial_encoder":
            if self._image is None:
                raise RuntimeError("spatial_encoder called before se_condition: the sampler's order changed")
            (image_name,) = self.CONDITION.input_names
            feeds = {n: self._image if n == image_name else inputs[n] for n in self.FULL.input_names}
            return self.inner.run(self.FULL.name, **feeds)
        return self.inner.run(component, **inputs)
