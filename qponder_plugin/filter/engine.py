"""The local engine: hash, read what the store holds, score what it lacks, commit, then place.

Inputs go in chunks. For each chunk: content hashes (a file hashed before, with the same size and mtime, is not
read again); the gate's cascade over the store's readings layered on a scorer's (loaded only when something needs
scoring; an image shared by several inputs is scored once), each new reading committed as it comes; the verdicts
committed; and only then each file placed. A killed run resumes where it stopped. With ``--groups`` every
chunk is read first (readings and looks committed as they come), then the near-duplicate groups are formed
(:mod:`.groups`), and only then are all verdicts committed and the files placed.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from collections.abc import Hashable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from ..gate import QualityGate, Readout, Verdict
from ..images import ImageError, ImageSource, read_bytes
from ..readings import Layered, ScorerReadings
from .fingerprint import config_key
from .groups import METHOD, Look, group_ids, look, not_best
from .metadata import MetadataWriter, embed
from .options import FilterOptions
from .placement import place, resume
from .sources import Input
from .store import ResultStore, StoredReadings

log = logging.getLogger(__name__)


@dataclass
class Hashed:
    """An input with its content hash and, when the file was read to hash it, its bytes; or why it could not be
    read (``digest`` is then ``None``)."""

    input: Input
    digest: str | None
    content: bytes | None = None
    error: str | None = None

    def image(self) -> ImageSource:
        """What the scorer reads: the bytes at hand (named by the path), else the file."""
        if self.content is None:
            return self.input.path
        image = io.BytesIO(self.content)
        image.name = self.input.path
        return image


@dataclass
class Outcome:
    """One input, its content hash (``None`` when the file could not be read), its verdict, and where it went."""

    input: Input
    digest: str | None
    verdict: Verdict
    placed: str | None = None
    group: int | None = None  # its near-duplicate group (--groups)


@dataclass
class Summary:
    total: int = 0
    scored: int = 0  # inputs with a reading made in this run
    cached: int = 0  # inputs answered from the store alone
    kept: int = 0
    rejected: int = 0
    failed: int = 0  # inputs without a score (unreadable, or the model failed on them)
    flagged: int = 0  # failed inputs kept anyway (on_error="keep")
    groups: int = 0  # near-duplicate groups (--groups)
    culled: int = 0  # inputs that reached the threshold but not the best K of their group (--best-of-group)
    placed: int = 0
    model_calls: int = 0
    calls: dict = field(default_factory=dict)  # images the model saw, by mode

    def count_calls(self, calls: dict[str, int]) -> None:
        for mode, count in calls.items():
            self.calls[mode] = self.calls.get(mode, 0) + count
        self.model_calls = sum(self.calls.values())

    def to_dict(self) -> dict:
        return dict(vars(self))


def unique_digests(hashed: list[Hashed]) -> dict[str, Hashed]:
    """The first input of each content hash: an image shared by several inputs is read once."""
    first: dict[str, Hashed] = {}
    for item in hashed:
        if item.digest is not None:
            first.setdefault(item.digest, item)
    return first


def read_error(path: str, exc: OSError) -> str:
    """An unreadable input's error message, naming it once."""
    message = exc.strerror or str(exc)
    return message if path in message else f"{path}: {message}"


def result_row(outcome: Outcome, gate: QualityGate, model: str) -> dict:
    """One input's result row, as the store and the parquet shards keep it."""
    verdict, assessment = outcome.verdict, outcome.verdict.assessment
    return {"path": outcome.input.path, "digest": outcome.digest, "status": assessment.status,
            "score": assessment.score, "passed": verdict.passed, "stage": verdict.stage, "flagged": verdict.flagged,
            "note": verdict.note, "mode": assessment.mode, "threshold": gate.threshold, "strategy": gate.strategy,
            "model": model, "reasoning": assessment.reasoning, "error": assessment.error, "group_id": outcome.group}


def judge(gate: QualityGate, hashed: list[Hashed], readout: Readout, model: str) -> list[Outcome]:
    """Each input's verdict from the cascade's ``readout`` (an unreadable input's from its error)."""
    return [Outcome(h.input, h.digest, gate.verdict(readout, h.digest) if h.digest is not None
                    else gate.decide(gate.failure(h.input.path, h.error, model), None)) for h in hashed]


def cull(outcomes: list[Outcome], group_of: dict[str, int], best: int | None) -> None:
    """Give each outcome its group; with ``best``, reject the scored members not among the ``best`` highest
    scores of their group (an unscored member keeps the verdict ``on_error`` gave it)."""
    scores = {o.input.path: o.verdict.score for o in outcomes
              if o.input.path in group_of and o.verdict.stage != "error"}
    culled = not_best(group_of, scores, best) if best else set()
    for outcome in outcomes:
        outcome.group = group_of.get(outcome.input.path)
        if outcome.input.path in culled:
            verdict, note = outcome.verdict, f"not among the best {best} of group {outcome.group}"
            outcome.verdict = Verdict(False, verdict.assessment, verdict.stage, verdict.flagged,
                                      f"{note}; {verdict.note}" if verdict.note else note)


def _look(item: Hashed) -> Look | None:
    """The input's look, or None when it cannot be decoded (its reading says why)."""
    try:
        return look(item.image())
    except ImageError:
        return None


def _hash(item: Input, known: str | None) -> Hashed:
    """The input's content hash: the file is read only when the store does not know it."""
    if known is not None:
        return Hashed(item, known)
    try:
        content = read_bytes(item.path)
    except OSError as exc:
        return Hashed(item, None, error=read_error(item.path, exc))
    return Hashed(item, hashlib.sha256(content).hexdigest(), content)


class FilterRun:
    """One filter run over inputs with ``gate`` (whose scorer stays unloaded until something needs scoring),
    recording into ``store`` under the scoring configuration ``config``, placing as ``options`` say."""

    def __init__(self, store: ResultStore, gate: QualityGate, config: dict, options: FilterOptions):
        self.store, self.gate, self.options = store, gate, options
        self.key, self.model = config_key(config), config["model"]
        self.stored = StoredReadings(store, self.key)
        self.summary = Summary()
        self.metadata = MetadataWriter(options.write_metadata, options.sidecar) if options.write_metadata else None
        store.add_config(self.key, config)

    def settle(self, inputs: list[Input]) -> list[Input]:
        """Finish or undo what a killed run left pending; return the inputs still there (a file this store moved
        away is done, not missing)."""
        resume(self.store)
        return [i for i in inputs if os.path.lexists(i.path) or not self.store.moved(i.path)]

    def outcomes(self, inputs: list[Input]) -> Iterator[Outcome]:
        """Yield each input's outcome once it is committed and placed; ``summary`` is complete at the end."""
        if self.options.grouped:
            yield from self.grouped(inputs)
            return
        for chunk in self.chunks(inputs):
            hashed, _, readout, made = self.read(chunk)
            yield from self.finish(hashed, readout, made)

    def chunks(self, inputs: list[Input]) -> Iterator[list[Input]]:
        size = self.options.chunk_size
        return (inputs[begin:begin + size] for begin in range(0, len(inputs), size))

    def read(self, chunk: list[Input]) -> tuple[list[Hashed], dict[str, Hashed], Readout, set[Hashable]]:
        """Hash ``chunk`` and run the gate's cascade over it (each new reading committed as it comes): the hashed
        inputs, the first input of each digest, the readout, and the digests read in this run."""
        hashed = self.hash(chunk)
        first = unique_digests(hashed)
        scorer = ScorerReadings(lambda: self.gate.scorer, {d: h.image() for d, h in first.items()})
        readings = Layered(self.stored, scorer, keep=self.stored.save)
        readout = self.gate.readout(list(first), readings)
        self.summary.count_calls(scorer.calls)
        return hashed, first, readout, readings.made

    def grouped(self, inputs: list[Input]) -> Iterator[Outcome]:
        """``--groups``: read every chunk (each reading and look committed as it comes), group, then decide,
        commit and place all inputs."""
        hashed, readout, fresh, looks = [], Readout(), set(), {}
        for chunk_inputs in self.chunks(inputs):
            chunk, first, part, made = self.read(chunk_inputs)
            readout.fast.update(part.fast)
            readout.think.update(part.think)
            fresh |= made
            looks.update(self.looks(first))
            hashed += [Hashed(h.input, h.digest, error=h.error) for h in chunk]  # the bytes read are let go
        group_of = group_ids([(h.input.path, h.digest) for h in hashed], looks, self.options.group_distance,
                             self.options.group_window)
        self.summary.groups = len(set(group_of.values()))
        yield from self.finish(hashed, readout, fresh, group_of)

    def looks(self, first: dict[str, Hashed]) -> dict[str, Look]:
        """The looks of these images: from the store, else computed (in threads) and committed."""
        held = {d: Look(*row) for d, row in self.store.looks(first, METHOD).items()}
        todo = [first[d] for d in first if d not in held]
        with ThreadPoolExecutor(max_workers=4) as pool:
            made = {h.digest: found for h, found in zip(todo, pool.map(_look, todo)) if found is not None}
        self.store.save_looks(METHOD, {d: (found.hash, found.taken) for d, found in made.items()})
        return {**held, **made}

    def hash(self, chunk: list[Input]) -> list[Hashed]:
        """Hash ``chunk`` (in threads), remembering new hashes by path, size and mtime."""
        stats, known = [], []
        for item in chunk:
            try:
                stat = os.stat(item.path)
            except OSError:
                stat = None
            stats.append(stat)
            known.append(self.store.cached_digest(item.path, stat.st_size, stat.st_mtime_ns) if stat else None)
        with ThreadPoolExecutor(max_workers=4) as pool:
            hashed = list(pool.map(_hash, chunk, known))
        self.store.save_digests((h.input.path, stat.st_size, stat.st_mtime_ns, h.digest)
                                for h, stat, cached in zip(hashed, stats, known)
                                if stat is not None and h.digest is not None and cached is None)
        return hashed

    def finish(self, hashed: list[Hashed], readout: Readout, fresh: set[Hashable],
               group_of: dict[str, int] | None = None) -> Iterator[Outcome]:
        """Decide (within ``group_of``'s groups, when given), commit the verdicts, then place each file; ``fresh``
        holds the digests read in this run."""
        outcomes = judge(self.gate, hashed, readout, self.model)
        if group_of is not None:
            passed = {o.input.path for o in outcomes if o.verdict.passed}
            cull(outcomes, group_of, self.options.best_of_group)
            self.summary.culled += sum(o.input.path in passed and not o.verdict.passed for o in outcomes)
        for outcome in outcomes:
            self._count(outcome, outcome.digest in fresh)
        self.store.save_results(self.key, [result_row(o, self.gate, self.model) for o in outcomes])
        for outcome in outcomes:
            folder = self.options.keep if outcome.verdict.passed else self.options.reject
            placeable = outcome.digest is not None and (outcome.verdict.stage != "error" or outcome.verdict.flagged)
            if folder is not None and placeable:
                self._place(outcome, folder)
            elif self.metadata is not None and not (self.options.keep or self.options.reject):
                self.metadata.beside(outcome.input.path, outcome.verdict)  # sidecars only: the source is not touched
            yield outcome

    def _count(self, outcome: Outcome, fresh: bool) -> None:
        summary, verdict = self.summary, outcome.verdict
        summary.total += 1
        summary.scored += fresh
        summary.cached += outcome.digest is not None and not fresh
        summary.kept += verdict.passed
        summary.rejected += not verdict.passed
        summary.failed += verdict.stage == "error"
        summary.flagged += verdict.flagged

    def _place(self, outcome: Outcome, folder: str) -> None:
        """Place the file; with ``write_metadata``, its rating goes into the copy's XMP and/or sidecars."""
        action = self.options.action
        fields = self.metadata.fields(outcome.verdict) if self.metadata is not None else None
        inside = fields is not None and self.metadata.embeds(outcome.input.path, action)
        embedded = []

        def prepare(part: str) -> None:
            try:
                embed(part, fields)
                embedded.append(part)
            except Exception as exc:  # exiv2 cannot edit this file: a sidecar carries the score instead (auto)
                log.warning("%s: cannot embed XMP (%s)", outcome.input.path, exc)

        outcome.placed, new = place(self.store, outcome.input.path, outcome.digest, folder, outcome.input.relname,
                                    action, prepare if inside else None)
        self.summary.placed += new
        if fields is not None:
            self.metadata.placed(outcome.placed, fields, embedded=bool(embedded) or inside and not new)
