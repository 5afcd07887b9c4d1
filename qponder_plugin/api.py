"""One-call functions for scripts and pipelines; they keep the last loaded model warm."""

from __future__ import annotations

import threading
from collections.abc import Iterable

from .images import ImageSource
from .registry import get_backends
from .result import Assessment
from .scorer import Scorer
from .spec import ModelSpec

_CALL_OPTIONS = ("think", "n", "temperature")
_warm: list = []  # [(settings, scorer)]: the last scorer, reused while the settings are equal
_lock = threading.Lock()


def _scorer(settings: tuple) -> Scorer:
    """The warm scorer for ``settings``, compared by equality (a :class:`Profile` is an option and is not
    hashable); loading another model closes the previous one."""
    with _lock:
        if _warm and _warm[0][0] == settings:
            return _warm[0][1]
        if _warm:
            _warm.pop()[1].close()
        model, backend, options = settings
        scorer = Scorer(model, backend=backend, **dict(options))
        _warm.append((settings, scorer))
        return scorer


def _split(model, backend, options: dict) -> tuple[Scorer, dict]:
    call = {k: options.pop(k) for k in _CALL_OPTIONS if k in options}
    if model is None:  # only the default needs resolving here; Scorer resolves the rest once, on loading
        model = ModelSpec.resolve().checkpoint
    key = model if isinstance(model, ModelSpec) else str(model)
    return _scorer((key, backend, tuple(sorted(options.items())))), call


def assess(image: ImageSource, *, model: str | None = None, backend: str | None = None, think: bool = True,
           **options) -> Assessment:
    """Score one image. ``model`` defaults to ``$QPONDER_MODEL``, else the bundled nano model; the loaded model is
    reused by the next call with the same settings. Other options go to :class:`Scorer` (``profile``,
    ``max_pixels``, ``batch_size``, ``max_new_tokens``, ``device``, ``dtype``) or to the call (``n``,
    ``temperature``)."""
    scorer, call = _split(model, backend, {**options, "think": think})
    return scorer.assess(image, **call)


def assess_batch(images: ImageSource | Iterable[ImageSource], *, model: str | None = None,
                 backend: str | None = None, think: bool = True, **options) -> list[Assessment]:
    """Score many images (or a ComfyUI ``[B,H,W,C]`` batch); one result per image, in order."""
    scorer, call = _split(model, backend, {**options, "think": think})
    return scorer.assess_batch(images, **call)


def list_backends() -> list[str]:
    return sorted(get_backends())
