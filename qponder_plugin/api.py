"""One-call functions for scripts and pipelines; they keep the last loaded model warm."""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache

from .backends import get_backends
from .images import ImageSource
from .result import Assessment
from .scorer import Scorer, resolve_model

_CALL_OPTIONS = ("think", "n", "temperature")


@lru_cache(maxsize=1)
def _scorer(model: str, backend: str | None, options: tuple) -> Scorer:
    return Scorer(model, backend=backend, **dict(options))


def _split(model, backend, options: dict) -> tuple[Scorer, dict]:
    call = {k: options.pop(k) for k in _CALL_OPTIONS if k in options}
    model_id = resolve_model(model)[0] if model is None else str(model)
    return _scorer(model_id, backend, tuple(sorted(options.items()))), call


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
