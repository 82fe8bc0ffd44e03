"""Which weights an artifact was made from: a leaf every layer can import (models, weights, export, engines)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

from interlcm.choices import DEFAULT_VARIANT, VARIANTS, get_variant


@dataclass(frozen=True)
class WeightsIdentity:
    """Which weights a model, export folder or engine folder was made from (recorded in manifests).

    Two identities name the same weights when `same_weights` says so; `variant` is the encoder pair
    (and so the step count, choices.VARIANTS) the artifacts are meant for.
    """

    kind: Literal["random", "folder"]
    preset: str  # config.PRESETS name the architecture came from
    variant: str  # choices.VARIANTS key, e.g. "3step"
    seed: int | None = None  # random weights: build_random's seed
    digest: str | None = None  # folder weights: `weights_digest` over every file loaded

    @classmethod
    def random(cls, preset: str, seed: int, variant: str = DEFAULT_VARIANT) -> WeightsIdentity:
        return cls("random", preset, variant, seed=seed)

    @property
    def steps(self) -> int:
        return get_variant(self.variant).steps

    def same_weights(self, other: WeightsIdentity) -> bool:
        return (self.kind, self.preset, self.seed, self.digest, self.variant) == (
            other.kind, other.preset, other.seed, other.digest, other.variant,
        )

    def describe(self) -> str:
        if self.kind == "random":
            return f"random {self.preset} weights, seed {self.seed}, {self.variant}"
        return f"{self.preset} weights folder with content hash {self.digest}, {self.variant}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WeightsIdentity:
        ident = cls(**data)
        if ident.kind not in ("random", "folder") or ident.variant not in VARIANTS:
            raise ValueError(f"not a weights identity: {dict(data)}")
        return ident
