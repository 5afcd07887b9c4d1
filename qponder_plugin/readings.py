"""Readings: one interface for "the assessments of these images in this mode".

A reading is an :class:`Assessment` made in one mode, ``"think"`` or ``"no-think"``. The gate's cascade asks a
:class:`Readings` for what it needs and nothing else: a scorer makes readings (:class:`ScorerReadings`), the
filter's store holds them, a Ray actor makes them remotely, and :class:`Layered` answers from one and makes the rest
with another.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Hashable, Mapping
from typing import TYPE_CHECKING, Protocol

from .result import Assessment, Mode

if TYPE_CHECKING:
    from .images import ImageSource
    from .scorer import Scorer


class Readings(Protocol):
    def read(self, keys: list[Hashable], mode: Mode) -> dict[Hashable, Assessment]:
        """The readings of ``keys`` in ``mode`` that this source has or makes; a key it cannot answer is left out."""


class ScorerReadings:
    """Readings made by a scorer from ``images`` (``{key: image}``). ``scorer()`` is called only when something
    needs scoring, so a model is loaded only then. ``calls`` counts the images the model saw, by mode."""

    def __init__(self, scorer: Callable[[], Scorer], images: Mapping[Hashable, ImageSource]):
        self.scorer, self.images = scorer, images
        self.calls: Counter[str] = Counter()

    def read(self, keys: list[Hashable], mode: Mode) -> dict[Hashable, Assessment]:
        if not keys:
            return {}
        made = self.scorer().assess_batch([self.images[k] for k in keys], think=mode == "think")
        self.calls[mode] += sum(a.status != "image_error" for a in made)
        return dict(zip(keys, made))


class HeldReadings:
    """Readings at hand, ``{mode: {key: assessment}}``."""

    def __init__(self, held: Mapping[Mode, Mapping[Hashable, Assessment]]):
        self.held = held

    def read(self, keys: list[Hashable], mode: Mode) -> dict[Hashable, Assessment]:
        held = self.held.get(mode, {})
        return {k: held[k] for k in keys if k in held}


class Layered:
    """Readings from ``held`` first; the rest made by ``maker`` and handed to ``keep`` (a store's save, say).
    ``made`` holds the keys with a reading made here."""

    def __init__(self, held: Readings, maker: Readings,
                 keep: Callable[[dict[Hashable, Assessment]], None] | None = None):
        self.held, self.maker, self.keep = held, maker, keep
        self.made: set[Hashable] = set()

    def read(self, keys: list[Hashable], mode: Mode) -> dict[Hashable, Assessment]:
        found = self.held.read(keys, mode) if keys else {}
        missing = [k for k in keys if k not in found]
        if missing:
            made = self.maker.read(missing, mode)
            if self.keep is not None:
                self.keep(made)
            self.made.update(made)
            found.update(made)
        return found
