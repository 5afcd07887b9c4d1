"""What a ComfyUI ``custom_nodes`` folder exports for this pack: V3 where ``comfy_api.latest`` exists, V1 before."""

from __future__ import annotations

import importlib.util


def exports() -> dict:
    """The custom node module's attributes (this imports no ComfyUI module, nor torch)."""
    if importlib.util.find_spec("comfy_api") and importlib.util.find_spec("comfy_api.latest"):
        from .v3 import comfy_entrypoint

        return {"comfy_entrypoint": comfy_entrypoint}
    from .v1 import mappings

    return mappings()
