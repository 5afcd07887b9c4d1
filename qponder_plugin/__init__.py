"""qponder-plugin: reasoning-based visual quality assessment with multimodal LLMs (Q-Ponder).

>>> from qponder_plugin import assess                                  # doctest: +SKIP
>>> assess("photo.jpg", model="TianheWu/VisualQuality-R1-7B").score     # doctest: +SKIP
3.91

Importing this package loads no torch, transformers or vLLM: names below resolve on first use.
"""

from __future__ import annotations

import importlib

from ._version import __version__
from .hookspecs import hookimpl

_EXPORTS = {
    "assess": "api", "assess_batch": "api", "list_backends": "api",
    "Scorer": "scorer", "load_scorer": "scorer",
    "ModelSpec": "spec", "list_models": "spec", "ModelNotFoundError": "spec",
    "Assessment": "result",
    "ImageError": "images", "load_image": "images",
    "Profile": "profile", "get_profile": "registry",
    "Backend": "backend", "BackendError": "backend", "Request": "backend", "Completion": "backend",
    "register_plugin": "plugins", "unregister_plugin": "plugins",
    "QualityGate": "gate", "Verdict": "gate", "GateError": "gate",
}
__all__ = ["__version__", "hookimpl", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
