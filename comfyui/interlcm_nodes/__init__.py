"""InterLCM face restoration nodes for ComfyUI.

Install: `pip install -e /path/to/interlcm` into ComfyUI's Python environment, then link this folder:
`ln -s /path/to/interlcm/comfyui/interlcm_nodes ComfyUI/custom_nodes/interlcm_nodes` (or copy it).
The nodes live in the interlcm package (interlcm/engines/comfy.py); this folder only exports them.
"""

try:
    from interlcm.engines.comfy import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
except ImportError as exc:  # ComfyUI logs this one line and goes on without the nodes
    raise ImportError(
        f"the InterLCM nodes need the interlcm package in ComfyUI's Python ({exc}): "
        "run `pip install -e /path/to/interlcm` with that Python"
    ) from exc

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
