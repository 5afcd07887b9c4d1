"""``qponder filter``'s engine: hash, look up, score what is missing, commit, then place.

Inputs go in chunks. For each chunk: content hashes (a file hashed before, with the same size and mtime, is not
read again); the stored readings for this scoring configuration; the missing ones scored through the gate's one
scorer (loaded only when something needs scoring; an image shared by several inputs is scored once) and
committed; the verdicts committed; and only then each file placed. A killed run resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from .fingerprint import config_key
from .gate import QualityGate, Verdict
from .images import read_bytes
from .metadata import embed, embeddable, write_sidecar, xmp_fields
from .placement import place, resume
from .result import Assessment
from .sources import Input
from .store import ResultStore

CHUNK = 32
log = logging.getLogger(__name__)


@dataclass
class Outcome:
    """One input, its content hash (``None`` when the file could not be read), its verdict, and where it went."""

    input: Input
    digest: str | None
    verdict: Verdict
    placed: str | None = None


@dataclass
class Summary:
    total: int = 0
    scored: int = 0  # inputs with a reading made in this run
    cached: int = 0  # inputs answered from the store alone
    kept: int = 0
    rejected: int = 0
    failed: int = 0  # inputs without a score (unreadable, or the model failed on them)
    flagged: int = 0  # failed inputs kept anyway (on_error="keep")
    placed: int = 0
    model_calls: int = 0
    calls: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dict(vars(self))


Score = Callable[[list[str], bool], dict[str, Assessment]]


def score_sources(gate: QualityGate, sources: dict[str, tuple[str, bytes | None]],
                  think: bool) -> dict[str, Assessment]:
    """Score ``{digest: (path, content)}`` through ``gate``: the content when it is at hand, else the file, each
    labelled with its path."""
    images = []
    for path, content in sources.values():
        if content is None:
            images.append(path)
        else:
            images.append(io.BytesIO(content))
            images[-1].name = path
    return dict(zip(sources, gate.score(images, think=think)))


def cascade(gate: QualityGate, digests: list[str], score: Score,
            stored: Callable[[list[str], str], dict[str, Assessment]] | None = None) -> tuple[dict, dict, set[str]]:
    """The gate's cascade over ``digests``, the one both engines run: ``(no-think, think, fresh)``. ``stored(digests,
    mode)`` answers what it holds (a backend error is retried), ``score(digests, think)`` makes the rest; ``fresh``
    holds the digests with a reading made here."""
    fresh: set[str] = set()

    def read(keys: list[str], think: bool) -> dict[str, Assessment]:
        held = stored(keys, "think" if think else "no-think") if stored and keys else {}
        readings = {d: a for d, a in held.items() if a.status != "backend_error"}
        missing = [d for d in keys if d not in readings]
        if missing:
            readings.update(score(missing, think))
            fresh.update(missing)
        return readings

    fast, think = gate.readings(digests, read)
    return fast, think, fresh


def _read(item: Input, store_digest: str | None) -> tuple[str | None, bytes | None, str | None]:
    """``(digest, content, error)``: the content is read only when the store does not know the file's hash."""
    if store_digest is not None:
        return store_digest, None, None
    try:
        content = read_bytes(item.path)
    except OSError as exc:
        return None, None, read_error(item.path, exc)
    return hashlib.sha256(content).hexdigest(), content, None


class FilterRun:
    """One filter run over ``inputs`` with ``gate`` (whose scorer stays unloaded until something needs scoring),
    recording into ``store`` under the scoring configuration ``config``."""

    def __init__(self, store: ResultStore, gate: QualityGate, config: dict, *, keep: str | None = None,
                 reject: str | None = None, how: str = "copy", chunk_size: int = CHUNK, write_metadata: bool = False):
        self.store, self.gate, self.config = store, gate, config
        self.key = config_key(config)
        self.keep, self.reject, self.how, self.chunk_size = keep, reject, how, chunk_size
        self.write_metadata = write_metadata
        self.summary = Summary()
        store.add_config(self.key, config)

    def settle(self, inputs: list[Input]) -> list[Input]:
        """Finish or undo what a killed run left pending; return the inputs still there (a file this store moved
        away is done, not missing)."""
        resume(self.store)
        return [i for i in inputs if os.path.lexists(i.path) or not self.store.moved(i.path)]

    def outcomes(self, inputs: list[Input]) -> Iterator[Outcome]:
        """Yield each input's outcome once it is committed and placed; ``summary`` is complete at the end."""
        for begin in range(0, len(inputs), self.chunk_size):
            yield from self._chunk(inputs[begin:begin + self.chunk_size])
            self.summary.calls = dict(self.gate.calls)
            self.summary.model_calls = sum(self.gate.calls.values())

    def _hash(self, chunk: list[Input]) -> list[tuple[str | None, bytes | None, str | None]]:
        known = []
        for item in chunk:
            try:
                stat = os.stat(item.path)
                known.append((stat, self.store.cached_digest(item.path, stat.st_size, stat.st_mtime_ns)))
            except OSError:
                known.append((None, None))
        with ThreadPoolExecutor(max_workers=4) as pool:
            read = list(pool.map(_read, chunk, [digest for _, digest in known]))
        self.store.save_digests((item.path, stat.st_size, stat.st_mtime_ns, digest)
                                for item, (stat, cached), (digest, _, _) in zip(chunk, known, read)
                                if stat is not None and digest is not None and cached is None)
        return read

    def _stored(self, digests: list[str], mode: str) -> dict[str, Assessment]:
        return self.store.readings(digests, self.key, mode)

    def _score(self, first: dict[str, Input], contents: dict[str, bytes]) -> Score:
        """How the readings the store lacks are made: by the gate, here (committed as they come)."""
        def score(digests: list[str], think: bool) -> dict[str, Assessment]:
            scored = score_sources(self.gate, {d: (first[d].path, contents.get(d)) for d in digests}, think)
            self.store.save_readings(self.key, scored)
            return scored

        return score

    def _chunk(self, chunk: list[Input]) -> Iterator[Outcome]:
        read = self._hash(chunk)
        contents = {digest: content for digest, content, _ in read if digest is not None and content is not None}
        first = {}
        for item, (digest, _, _) in zip(chunk, read):
            if digest is not None:
                first.setdefault(digest, item)
        fast, think, fresh = cascade(self.gate, list(first), self._score(first, contents), self._stored)
        outcomes = [self._decide(item, digest, error, fast, think, fresh)
                    for item, (digest, _, error) in zip(chunk, read)]
        self.store.save_results(self.key, [self._row(o) for o in outcomes])
        for outcome in outcomes:
            folder = self.keep if outcome.verdict.passed else self.reject
            placeable = outcome.digest is not None and (outcome.verdict.stage != "error" or outcome.verdict.flagged)
            if folder is not None and placeable:
                self._place(outcome, folder)
            yield outcome

    def _place(self, outcome: Outcome, folder: str) -> None:
        """Place the file; with ``write_metadata``, its score goes into the copy's XMP, else into a sidecar."""
        assessment = outcome.verdict.assessment
        fields = xmp_fields(assessment.score, assessment.reasoning, assessment.model) \
            if self.write_metadata and assessment.ok else None
        inside = fields is not None and self.how == "copy" and embeddable(outcome.input.path)
        embedded = []

        def prepare(part: str) -> None:
            try:
                embed(part, fields)
                embedded.append(part)
            except Exception as exc:  # exiv2 cannot edit this file: the sidecar carries the score instead
                log.warning("%s: cannot embed XMP (%s); writing a sidecar", outcome.input.path, exc)

        outcome.placed, new = place(self.store, outcome.input.path, outcome.digest, folder, outcome.input.relname,
                                    self.how, prepare if inside else None)
        self.summary.placed += new
        if fields is not None and (not inside or new and not embedded):
            write_sidecar(outcome.placed, fields)

    def _decide(self, item: Input, digest: str | None, error: str | None, fast: dict, think: dict,
                fresh: set[str]) -> Outcome:
        if digest is None:
            verdict = unread_verdict(self.gate, item.path, error, self.config["model"])
        else:
            verdict = self.gate.decide(fast.get(digest), think.get(digest))
        summary = self.summary
        summary.total += 1
        summary.scored += digest in fresh
        summary.cached += digest is not None and digest not in fresh
        summary.kept += verdict.passed
        summary.rejected += not verdict.passed
        summary.failed += verdict.stage == "error"
        summary.flagged += verdict.flagged
        return Outcome(item, digest, verdict)

    def _row(self, outcome: Outcome) -> dict:
        return verdict_row(outcome.input.path, outcome.digest, outcome.verdict, self.gate, self.config["model"])


def read_error(path: str, exc: OSError) -> str:
    """An unreadable input's error message, naming it once."""
    message = exc.strerror or str(exc)
    return message if path in message else f"{path}: {message}"


def unread_verdict(gate: QualityGate, path: str, error: str | None, model: str) -> Verdict:
    """The verdict on a file that could not be read."""
    unread = Assessment(source=path, status="image_error", error=error, model=model,
                        mode="think" if gate.mode == "think" else "no-think")
    return gate.decide(unread, None)


def verdict_row(path: str, digest: str | None, verdict: Verdict, gate: QualityGate, model: str) -> dict:
    """One input's result row, as the store keeps it (both engines)."""
    assessment = verdict.assessment
    return {"path": path, "digest": digest, "status": assessment.status, "score": assessment.score,
            "passed": verdict.passed, "stage": verdict.stage, "flagged": verdict.flagged, "note": verdict.note,
            "mode": assessment.mode, "threshold": gate.threshold, "gate": gate.mode, "model": model,
            "reasoning": assessment.reasoning, "error": assessment.error}
