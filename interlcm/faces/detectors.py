"""The face detectors `--detector` offers: one table, read by the CLI's choices and the photo engine.

Add a detector by adding an entry to :data:`DETECTORS`; nothing else lists them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from interlcm.faces.detect import Detector


@dataclass(frozen=True)
class DetectorContext:
    """What a detector may need to open: where weights live and the backend that runs networks."""

    weights: Path | None = None  # weights folder (detector weights sit beside the model's)
    backend: Any = None  # the opened interlcm.sampler.Backend, for detectors that are exported components


def _dlib(context: DetectorContext) -> Detector:
    from interlcm.faces.dlib_detector import DlibDetector

    return DlibDetector()


def _not_built_yet(name: str) -> Callable[[DetectorContext], Detector]:
    def open_(context: DetectorContext) -> Detector:
        raise RuntimeError(f"--detector {name} is not available in this build yet: use --detector dlib")

    return open_


# name -> factory. RetinaFace ResNet-50 (the release's default) and mobile0.25 (the fast option)
# are filled in by interlcm.faces.retinaface.
DETECTORS: dict[str, Callable[[DetectorContext], Detector]] = {
    "retinaface": _not_built_yet("retinaface"),
    "retinaface_mobile": _not_built_yet("retinaface_mobile"),
    "dlib": _dlib,
}
DEFAULT_DETECTOR = "retinaface"


def open_detector(name: str, context: DetectorContext | None = None) -> Detector:
    """The detector called `name`; RuntimeError with a sentence naming the fix when it cannot run here."""
    try:
        factory = DETECTORS[name]
    except KeyError:
        raise ValueError(f"unknown detector {name!r}: choose one of {', '.join(DETECTORS)}") from None
    return factory(context or DetectorContext())
