"""The pack's model cache: one :class:`~qponder_plugin.Scorer` per setting, shared by every node and prompt.

A ``QPONDER_MODEL`` value is a :class:`ModelSettings`, not the model itself: ComfyUI keeps node outputs between
prompts, and a settings value stays valid after "Unload models" has emptied the cache (the next node loads again).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from qponder_plugin import Scorer


@dataclass(frozen=True)
class ModelSettings:
    """What the model loader node chose; ``model=None`` is the bundled nano model (or ``$QPONDER_MODEL``);
    ``profile=None`` the model's own (a gate file may name one)."""

    model: str | None = None
    backend: str = "transformers"
    device: str = "auto"
    think: bool = True
    keep_loaded: bool = True
    profile: str | None = None

    def scorer_options(self) -> dict:
        options = {"profile": self.profile} if self.profile else {}
        return {**options, "device": self.device} if self.backend == "transformers" and self.device != "auto" \
            else options

    @property
    def key(self) -> tuple:
        """What makes two settings share a loaded model (think and keep_loaded do not)."""
        return self.model, self.backend, self.device, self.profile


DEFAULT = ModelSettings()

_lock = threading.RLock()
_scorers: dict[tuple, Scorer] = {}


def scorer_for(settings: ModelSettings) -> Scorer:
    """The loaded scorer for ``settings``, loading it on first use (once, even when nodes ask from two threads)."""
    with _lock:
        scorer = _scorers.get(settings.key)
        if scorer is None:
            scorer = Scorer(settings.model, backend=settings.backend, **settings.scorer_options())
            _scorers[settings.key] = scorer
        return scorer


def done_with(settings: ModelSettings) -> None:
    """Called when a node has finished with the model: frees it unless the settings keep it loaded."""
    if not settings.keep_loaded:
        release(settings)


def release(settings: ModelSettings | None = None) -> int:
    """Free the model for ``settings`` (all models when None); returns how many were freed."""
    with _lock:
        keys = list(_scorers) if settings is None else [k for k in (settings.key,) if k in _scorers]
        for key in keys:
            _scorers.pop(key).close()
        return len(keys)


def loaded() -> list[tuple]:
    """The keys of the models loaded now."""
    with _lock:
        return list(_scorers)
