"""`interlcm-export` holds one component's networks at a time (sd15 peaked at 16.5 GiB holding all five).

Every network the export makes is tracked by a weak reference; at each trace, after each trace
(while the ONNX file is simplified and saved) and while each file is validated, only the networks
of the component at hand may be alive, and none while ONNX Runtime holds a session. The sd15
numbers: export/README.md ("Memory").
"""

from __future__ import annotations

import gc
import weakref

from click.testing import CliRunner

from interlcm.export import onnx_export, validate
from interlcm.export.cli import main
from interlcm.models import container


def test_export_holds_one_components_networks_at_a_time(tmp_path, monkeypatch):
    made: list[tuple[str, weakref.ref]] = []

    def alive() -> list[str]:
        gc.collect()
        return sorted({name for name, ref in made if ref() is not None})

    real_network = container.ModelSource.network

    def network(self, name):
        if name not in self.alive():
            log.append((name, "make", alive()))
        module = real_network(self, name)
        made.append((name, weakref.ref(module)))
        return module

    log: list[tuple[str, str, list[str]]] = []
    real_trace, real_simplify, real_session = onnx_export._trace, onnx_export._simplify, validate.open_session

    def trace(comp, *args):
        log.append((comp.name, "trace", alive()))
        return real_trace(comp, *args)

    def simplify(raw):
        log.append((raw.parent.parent.name, "simplify", alive()))
        return real_simplify(raw)

    def session(path, **kwargs):
        log.append((path.name.split(".")[0], "validate", alive()))
        return real_session(path, **kwargs)

    monkeypatch.setattr(container.ModelSource, "network", network)
    monkeypatch.setattr(onnx_export, "_trace", trace)
    monkeypatch.setattr(onnx_export, "_simplify", simplify)
    monkeypatch.setattr(validate, "open_session", session)
    # three components stand for all: two with a network each (the spatial encoder is made from the UNet's
    # config, never with the UNet) and one with none; the UNet and VAE add minutes, not cases
    result = CliRunner().invoke(main, ["--preset", "tiny", "--components", "visual_encoder,se_condition,colorfix_adain",
                                       "--validate-batch", "1", "--out", str(tmp_path / "onnx")])
    assert result.exit_code == 0, result.output
    uses = {"visual_encoder": ["visual_encoder"], "se_condition": ["spatial_encoder"], "colorfix_adain": []}
    traced = [(name, held) for name, step, held in log if step == "trace"]
    assert traced == list(uses.items())  # while tracing: that component's networks, nothing else
    assert [held for _, step, held in log if step == "simplify"] == [[]] * len(uses)  # after: none
    # validation: torch first, then each ONNX Runtime session with no network alive
    assert sorted(name for name, step, _ in log if step == "validate") == sorted(uses)  # in manifest order
    assert [held for _, step, held in log if step == "validate"] == [[]] * len(uses)
    assert [held for _, step, held in log if step == "make"] == [[]] * 4  # each made alone, for export + check
