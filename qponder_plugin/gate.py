"""The quality gate: keep or reject images against a score threshold, reasoning only where it matters.

The gate is policy. Its ``strategy`` says which readings an image needs: ``cascade`` (the default) reads every
image in no-think mode (a probability score from one prefill) and reasons only about the images within ``margin``
of the threshold, whose reasoned reading decides; ``fast`` never reasons, ``think`` always does. A think-mode parse
error falls back to the no-think reading (and says so); an image that cannot be scored is rejected, kept but
flagged, or raises, as ``on_error`` says. :meth:`QualityGate.readout` runs this cascade over any
:class:`~qponder_plugin.readings.Readings`: the gate's own scorer here, the filter's store and Ray elsewhere.

>>> with QualityGate(3.5, model="nano") as gate:              # doctest: +SKIP
...     passed, rejected = gate.split(["a.jpg", "b.png"])
"""

from __future__ import annotations

import itertools
import os
import warnings
from collections import Counter
from collections.abc import Hashable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from .gate_file import read_gate_file
from .images import ImageSource
from .readings import Readings, ScorerReadings
from .result import Assessment, reading_mode
from .scorer import Scorer

STRATEGIES = ("cascade", "fast", "think")
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


@dataclass
class Readout:
    """What the cascade read: ``fast`` (no-think) and ``think`` readings by key, and ``missing``, the keys whose
    :class:`Readings` lacked a reading the cascade asked for (empty when the readings make what they lack)."""

    fast: dict[Hashable, Assessment] = field(default_factory=dict)
    think: dict[Hashable, Assessment] = field(default_factory=dict)
    missing: set[Hashable] = field(default_factory=set)


class QualityGate:
    """Pass images whose score reaches ``threshold`` (1–5). One scorer serves both readings: pass your own as
    ``scorer=`` (the gate never closes it), or the gate loads ``model`` on first use and frees it on ``close()``.
    Other keyword options (``profile``, ``batch_size``, ``max_pixels``, ``device``...) go to that :class:`Scorer`.
    """

    def __init__(self, threshold: float, *, model: str | None = None, backend: str | None = None,
                 scorer: Scorer | None = None, strategy: str = "cascade", margin: float = 0.25,
                 on_error: str = "reject", **scorer_options: Any):
        if "mode" in scorer_options:  # the name of earlier releases
            warnings.warn("QualityGate(mode=...) is now strategy=...", DeprecationWarning, stacklevel=2)
            strategy = scorer_options.pop("mode")
        if not 1.0 <= threshold <= 5.0:
            raise ValueError(f"threshold {threshold} is outside the 1–5 score scale")
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, not {strategy!r}")
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {', '.join(ON_ERROR)}, not {on_error!r}")
        if margin < 0:
            raise ValueError(f"margin must be 0 or more, not {margin}")
        self.threshold, self.strategy, self.margin, self.on_error = threshold, strategy, margin, on_error
        self.model, self.backend, self.scorer_options = model, backend, scorer_options
        self._scorer, self._owns_scorer = scorer, scorer is None
        self.calls: Counter[str] = Counter()  # images this gate's scorer saw, by mode ("no-think", "think")

    @classmethod
    def from_file(cls, path: str | os.PathLike, **overrides: Any) -> QualityGate:
        """The gate a gate file describes (``qponder calibrate`` writes them): its threshold, model, profile,
        strategy and margin, each of which ``overrides`` may replace, except the model and profile: a threshold
        belongs to the model it was calibrated for, so another ``model`` (or a ``scorer`` of another model) or
        ``profile`` raises :class:`~qponder_plugin.gate_file.GateFileError`, naming both."""
        gate_file = read_gate_file(path)
        scorer = overrides.get("scorer")
        given = {**overrides, "model": scorer.spec, "profile": scorer.profile.name} if scorer is not None \
            else overrides
        options, _ = gate_file.apply(given, given.keys())
        if scorer is not None:
            del options["model"], options["profile"]  # the scorer's own (checked above)
        return cls(options.pop("threshold"), **options)

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

    def settings(self) -> dict:
        """What rebuilds this gate elsewhere (a Ray actor, say): its options, never its loaded scorer."""
        return {"threshold": self.threshold, "model": self.model, "backend": self.backend, "strategy": self.strategy,
                "margin": self.margin, "on_error": self.on_error, **self.scorer_options}

    def __repr__(self) -> str:
        return f"QualityGate(threshold={self.threshold}, strategy={self.strategy!r}, margin={self.margin})"

    def needs_reasoning(self, fast: Assessment | None) -> bool:
        """Whether an image with this no-think reading (None: not read) is read again with reasoning."""
        if self.strategy == "think":
            return True
        if self.strategy == "fast" or fast is None or not fast.ok:
            return False
        return abs(fast.score - self.threshold) <= self.margin

    def readout(self, keys: list[Hashable], readings: Readings) -> Readout:
        """The cascade over ``keys``: the no-think readings (unless the strategy is ``think``), the reasoned ones
        of the images that need reasoning, and the no-think ones of those whose reasoning did not parse."""
        out = Readout()

        def ask(wanted: list[Hashable], mode: str) -> dict[Hashable, Assessment]:
            got = readings.read(wanted, mode) if wanted else {}
            out.missing.update(k for k in wanted if k not in got)
            return got

        out.fast = ask(keys, "no-think") if self.strategy != "think" else {}
        out.think = ask([k for k in keys if self.needs_reasoning(out.fast.get(k))], "think")
        out.fast.update(ask([k for k in keys if k not in out.fast and k in out.think
                             and out.think[k].status == "parse_error"], "no-think"))
        return out

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

    def verdict(self, readout: Readout, key: Hashable) -> Verdict:
        return self.decide(readout.fast.get(key), readout.think.get(key))

    def failure(self, source: str, error: str | None, model: str | None, status: str = "image_error") -> Assessment:
        """The reading of an input that has none: it could not be read, or its whole batch failed."""
        return Assessment(source=source, status=status, error=error, model=model,
                          mode=reading_mode(self.strategy == "think"))

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

    def _verdict_chunk(self, images: list[ImageSource]) -> list[Verdict]:
        readings = ScorerReadings(lambda: self.scorer, dict(enumerate(images)))
        readout = self.readout(list(range(len(images))), readings)
        self.calls.update(readings.calls)
        return [self.verdict(readout, i) for i in range(len(images))]

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
