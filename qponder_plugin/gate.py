"""The quality gate: keep or reject images against a score threshold, reasoning only where it matters.

The default ``cascade`` scores every image in no-think mode (a probability score from one prefill) and reasons
only about the images within ``margin`` of the threshold; that second reading decides. ``fast`` never reasons,
``think`` always does. A think-mode parse error falls back to the no-think reading (and says so); an image that
cannot be scored is rejected, kept but flagged, or raises, as ``on_error`` says.

>>> with QualityGate(3.5, model="nano") as gate:              # doctest: +SKIP
...     passed, rejected = gate.split(["a.jpg", "b.png"])
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from .images import ImageSource
from .result import Assessment
from .scorer import Scorer

GATE_MODES = ("cascade", "fast", "think")
ON_ERROR = ("reject", "keep", "raise")
Stage = Literal["fast", "think", "fallback", "error"]


class GateError(RuntimeError):
    """An image could not be scored and the gate was told to raise (``on_error="raise"``)."""

    def __init__(self, assessment: Assessment):
        super().__init__(f"{assessment.source}: {assessment.status}: {assessment.error}")
        self.assessment = assessment


@dataclass
class Verdict:
    """Whether an image passed, the :class:`Assessment` that decided, and which stage decided it.

    ``stage`` is ``"fast"`` (the no-think score), ``"think"`` (the reasoned score), ``"fallback"`` (reasoning did
    not parse, so the no-think score decided) or ``"error"`` (no score; ``flagged`` when kept anyway).
    """

    passed: bool
    assessment: Assessment
    stage: Stage
    flagged: bool = False
    note: str | None = None

    @property
    def score(self) -> float | None:
        return self.assessment.score

    def to_dict(self) -> dict:
        return {"passed": self.passed, "stage": self.stage, "flagged": self.flagged, "note": self.note,
                "assessment": self.assessment.to_dict()}


class QualityGate:
    """Pass images whose score reaches ``threshold`` (1–5). One scorer serves both stages: pass your own as
    ``scorer=`` (the gate never closes it), or the gate loads ``model`` on first use and frees it on ``close()``.
    Other keyword options (``profile``, ``batch_size``, ``max_pixels``, ``device``...) go to that :class:`Scorer`.
    """

    def __init__(self, threshold: float, *, model: str | None = None, backend: str | None = None,
                 scorer: Scorer | None = None, mode: str = "cascade", margin: float = 0.25,
                 on_error: str = "reject", **scorer_options: Any):
        if not 1.0 <= threshold <= 5.0:
            raise ValueError(f"threshold {threshold} is outside the 1–5 score scale")
        if mode not in GATE_MODES:
            raise ValueError(f"mode must be one of {', '.join(GATE_MODES)}, not {mode!r}")
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {', '.join(ON_ERROR)}, not {on_error!r}")
        if margin < 0:
            raise ValueError(f"margin must be 0 or more, not {margin}")
        self.threshold, self.mode, self.margin, self.on_error = threshold, mode, margin, on_error
        self.model, self.backend, self.scorer_options = model, backend, scorer_options
        self._scorer, self._owns_scorer = scorer, scorer is None
        self.calls: Counter[str] = Counter()  # images the model saw, by mode ("no-think", "think")

    def __enter__(self) -> QualityGate:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Free the model if this gate loaded it."""
        if self._owns_scorer and self._scorer is not None:
            self._scorer.close()
            self._scorer = None

    @property
    def loaded(self) -> bool:
        return self._scorer is not None

    @property
    def scorer(self) -> Scorer:
        """The scorer, loaded on first use."""
        if self._scorer is None:
            self._scorer = Scorer(self.model, backend=self.backend, **self.scorer_options)
        return self._scorer

    def __repr__(self) -> str:
        return f"QualityGate(threshold={self.threshold}, mode={self.mode!r}, margin={self.margin})"

    def score(self, images: list[ImageSource], *, think: bool) -> list[Assessment]:
        """Score ``images`` in one mode, counting the images the model saw; nothing is loaded for an empty list."""
        if not images:
            return []
        return self.count(self.scorer.assess_batch(images, think=think), think)

    def count(self, results: list[Assessment], think: bool) -> list[Assessment]:
        """Count ``results`` (made by this gate's scorer, here or elsewhere) as images the model saw."""
        self.calls["think" if think else "no-think"] += sum(r.status != "image_error" for r in results)
        return results

    def needs_reasoning(self, fast: Assessment | None) -> bool:
        """Whether an image with this no-think reading (None: not read) is scored again with reasoning."""
        if self.mode == "think":
            return True
        if self.mode == "fast" or fast is None or not fast.ok:
            return False
        return abs(fast.score - self.threshold) <= self.margin

    def decide(self, fast: Assessment | None, think: Assessment | None) -> Verdict:
        """The verdict from the readings at hand: the reasoned one when there is one, else the no-think one."""
        if think is not None and think.ok:
            return Verdict(think.score >= self.threshold, think, "think")
        if think is not None and (think.status != "parse_error" or fast is None or not fast.ok):
            return self._error(think)
        if fast is not None and fast.ok:
            if think is None:
                return Verdict(fast.score >= self.threshold, fast, "fast")
            return Verdict(fast.score >= self.threshold, fast, "fallback",
                           note=f"the reasoning did not parse ({think.error}); the no-think score decided")
        return self._error(fast)

    def _error(self, assessment: Assessment) -> Verdict:
        if self.on_error == "raise":
            raise GateError(assessment)
        note = f"{assessment.status}: {assessment.error}"
        if self.on_error == "keep":
            return Verdict(True, assessment, "error", flagged=True, note=f"kept despite {note}")
        return Verdict(False, assessment, "error", note=note)

    def verdicts(self, images: Iterable[ImageSource], chunk_size: int = 32) -> Iterator[tuple[ImageSource, Verdict]]:
        """Yield ``(image, verdict)`` for every input, in order, scoring ``chunk_size`` images at a time."""
        iterator = iter(images)
        while chunk := list(itertools.islice(iterator, chunk_size)):
            yield from zip(chunk, self._verdict_chunk(chunk))

    def readings(self, keys: list, read: Callable[[list, bool], dict]) -> tuple[dict, dict]:
        """The cascade's readings of ``keys``: ``(no-think, think)`` dicts by key. ``read(keys, think)`` returns a
        reading for each key it is given (the gate scores; the filter also answers from its store)."""
        fast = read(keys, False) if self.mode != "think" else {}
        think = read([k for k in keys if self.needs_reasoning(fast.get(k))], True)
        fast.update(read([k for k in keys if k not in fast and think[k].status == "parse_error"], False))
        return fast, think

    def _verdict_chunk(self, images: list[ImageSource]) -> list[Verdict]:
        def read(indices: list[int], think: bool) -> dict:
            return dict(zip(indices, self.score([images[i] for i in indices], think=think)))

        fast, think = self.readings(list(range(len(images))), read)
        return [self.decide(fast.get(i), think.get(i)) for i in range(len(images))]

    def check(self, image: ImageSource) -> Verdict:
        return self._verdict_chunk([image])[0]

    def split(self, images: Iterable[ImageSource]) -> tuple[list, list]:
        """``(passed, rejected)``: the inputs themselves, in order."""
        passed, rejected = [], []
        for image, verdict in self.verdicts(images):
            (passed if verdict.passed else rejected).append(image)
        return passed, rejected

    def filter(self, images: Iterable[ImageSource], chunk_size: int = 32) -> Iterator[ImageSource]:
        """Lazily yield the inputs that pass (a stream is read ``chunk_size`` images at a time)."""
        return (image for image, verdict in self.verdicts(images, chunk_size) if verdict.passed)
