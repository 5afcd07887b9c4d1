"""``qponder filter --engine ray``: the filter on Ray Data, one backend per actor.

Ray Data carries the images to an actor pool (``map_batches`` with ``ActorPoolStrategy``); each actor holds one
:class:`QualityGate`, so one backend, and runs the local engine's own :func:`cascade`. Results come back one of two
ways:

- :class:`RayFilterRun` feeds the local engine's SQLite store: the driver hashes and looks up as the local engine
  does, Ray scores what the store lacks, and each returned batch is committed, then placed, as locally.
- :func:`filter_to_parquet` writes one parquet file per input shard (a chunk of a folder, of a list or table of
  paths or URLs, or a WebDataset tar) under a temporary name, renames it, then records the shard as finished; a
  rerun skips finished shards.

A dead actor is restarted and its batch retried at most ``max_retries`` times, then the run stops (committed work
stays). Nothing drops rows: no ``max_errored_blocks``. Ray is imported lazily.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tarfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

from .filtering import FilterRun, Outcome, Score, cascade, read_error, score_sources, unread_verdict, verdict_row
from .fingerprint import config_key
from .gate import QualityGate
from .images import read_bytes
from .result import Assessment
from .sources import Input, collect_inputs
from .store import assessment_from_json

TAR_SUFFIXES = (".tar",)
IMAGE_KEYS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif", "ppm", "pgm", "image")
OUTPUT_COLUMNS = ("path", "hash", "score", "verdict", "stage", "flagged", "reasoning", "status", "error", "model",
                  "mode", "threshold", "gate", "timings")
FINISHED = "_finished"
WDS_KEY = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")


@dataclass(frozen=True)
class RayOptions:
    """A cluster ``address`` (None: start a local one), ``workers`` actors with ``gpus_per_worker`` GPUs each (0:
    one CPU), rows per batch, and how often a dead actor is restarted and its batch retried."""

    address: str | None = None
    workers: int = 1
    gpus_per_worker: float = 0.0
    batch_size: int = 8
    max_retries: int = 2


def gate_options(gate: QualityGate) -> dict:
    """What rebuilds ``gate`` in an actor: its settings, never its loaded scorer."""
    return {"threshold": gate.threshold, "model": gate.model, "backend": gate.backend, "mode": gate.mode,
            "margin": gate.margin, "on_error": gate.on_error, **gate.scorer_options}


def _error_reading(gate: QualityGate, path: str, exc: Exception) -> Assessment:
    return Assessment(source=path, status="backend_error", error=f"{type(exc).__name__}: {exc}", model=gate.model,
                      mode="think" if gate.mode == "think" else "no-think")


class ReadingsActor:
    """For the store: rows ``digest, path, known`` (the store's readings as JSON) in, the readings the cascade made
    (``fast``, ``think`` as JSON, ``""`` for none) out."""

    def __init__(self, gate: dict):
        self.gate = QualityGate(**gate)

    def __call__(self, batch):
        import pyarrow as pa

        rows = batch.to_pylist()
        paths = {r["digest"]: r["path"] for r in rows}
        known = {r["digest"]: json.loads(r["known"]) for r in rows}
        made: dict[str, dict[str, Assessment]] = {d: {} for d in paths}

        def stored(digests: list[str], mode: str) -> dict[str, Assessment]:
            return {d: assessment_from_json(known[d][mode]) for d in digests if mode in known[d]}

        def score(digests: list[str], think: bool) -> dict[str, Assessment]:
            scored = score_sources(self.gate, {d: (paths[d], None) for d in digests}, think)
            for digest, assessment in scored.items():
                made[digest][assessment.mode] = assessment
            return scored

        try:
            cascade(self.gate, list(paths), score, stored)
        except Exception as exc:  # beyond the scorer's own per-item handling: the batch becomes error rows
            errors = {d: _error_reading(self.gate, p, exc) for d, p in paths.items()}
            made = {d: {e.mode: e} for d, e in errors.items()}
        return pa.table({"digest": list(made), **{
            column: [json.dumps(m[mode].to_dict()) if mode in m else "" for m in made.values()]
            for column, mode in (("fast", "no-think"), ("think", "think"))}})


class VerdictActor:
    """For parquet output: rows ``shard, path, data`` (the image's bytes, or empty to read ``path``) in, one
    result row per input out (:data:`OUTPUT_COLUMNS` and ``shard``)."""

    def __init__(self, gate: dict, model: str):
        self.gate, self.model = QualityGate(**gate), model

    def __call__(self, batch):
        import pyarrow as pa

        rows, first, read = batch.to_pylist(), {}, []
        for row in rows:
            content, error = row["data"], None
            if not content:
                try:
                    content = read_bytes(row["path"])
                except OSError as exc:
                    content, error = None, read_error(row["path"], exc)
            digest = hashlib.sha256(content).hexdigest() if content is not None else None
            read.append((digest, error))
            if digest is not None:
                first.setdefault(digest, (row["path"], content))
        try:
            fast, think, _ = cascade(self.gate, list(first), lambda ds, t: score_sources(
                self.gate, {d: first[d] for d in ds}, t))
            verdicts = [self.gate.decide(fast.get(d), think.get(d)) if d is not None else
                        unread_verdict(self.gate, row["path"], error, self.model)
                        for row, (d, error) in zip(rows, read)]
        except Exception as exc:  # beyond the scorer's own per-item handling: the batch becomes error rows
            verdicts = [self.gate.decide(_error_reading(self.gate, row["path"], exc), None) for row in rows]
        out = [{**_output_row(verdict_row(row["path"], d, v, self.gate, self.model), v), "shard": row["shard"]}
               for row, (d, _), v in zip(rows, read, verdicts)]
        return pa.Table.from_pylist(out, schema=_schema(pa).append(pa.field("shard", pa.string())))


def _output_row(row: dict, verdict) -> dict:
    return {"path": row["path"], "hash": row["digest"], "score": row["score"],
            "verdict": "keep" if row["passed"] else "reject", "stage": row["stage"], "flagged": row["flagged"],
            "reasoning": row["reasoning"], "status": row["status"], "error": row["error"], "model": row["model"],
            "mode": row["mode"], "threshold": row["threshold"], "gate": row["gate"],
            "timings": json.dumps(verdict.assessment.timings)}


def _schema(pa):
    types = {"score": pa.float64(), "threshold": pa.float64(), "flagged": pa.bool_()}
    return pa.schema([(c, types.get(c, pa.string())) for c in OUTPUT_COLUMNS])


def _connect(options: RayOptions):
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise RuntimeError("the ray engine needs Ray Data: pip install 'qponder-plugin[ray]'") from exc
    if not ray.is_initialized():
        ray.init(address=options.address, include_dashboard=False, logging_level="WARNING")
    resource, each = ("GPU", options.gpus_per_worker) if options.gpus_per_worker else ("CPU", 1)
    have = ray.cluster_resources().get(resource, 0)
    if options.address is None and have < options.workers * each:  # a local cluster never grows: it would wait
        raise RuntimeError(f"{options.workers} workers need {options.workers * each:g} {resource}s; this local "
                           f"Ray cluster has {have:g}")
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    return ray


def _map(dataset, actor, arguments: dict, options: RayOptions):
    """``map_batches`` over an actor pool with bounded restarts and retries (Ray's defaults are unbounded)."""
    import ray.data

    resources = {"num_gpus": options.gpus_per_worker} if options.gpus_per_worker else {}
    with warnings.catch_warnings():  # Ray 2.60 takes the actor's restart bounds only as (deprecated) remote args
        warnings.filterwarnings("ignore", "`ray_remote_args` is deprecated")
        return dataset.map_batches(actor, fn_constructor_kwargs=arguments, batch_size=options.batch_size,
                                   batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=options.workers),
                                   num_cpus=1, max_restarts=options.max_retries,
                                   max_task_retries=options.max_retries, **resources)


class RayFilterRun(FilterRun):
    """A :class:`FilterRun` whose missing readings are made on Ray: the driver hashes, answers what the store holds
    at once, sends the rest to ``options.workers`` actors (each a copy of ``gate``), and commits and places each
    batch as it returns. The driver's own gate loads no model."""

    def __init__(self, store, gate: QualityGate, config: dict, options: RayOptions, **kwargs):
        super().__init__(store, gate, config, **kwargs)
        self.options = options
        self._returned: dict[str, dict] = {}

    def outcomes(self, inputs: list[Input]) -> Iterator[Outcome]:
        waiting: dict[str, list[Input]] = {}
        items = []
        for begin in range(0, len(inputs), self.chunk_size):
            chunk = inputs[begin:begin + self.chunk_size]
            digests = [digest for digest, _, _ in self._hash(chunk)]
            lacking = self._lacking([d for d in dict.fromkeys(digests) if d is not None and d not in waiting])
            items += self._items(lacking, {d: i.path for d, i in zip(digests, chunk)})
            answered = []
            for item, digest in zip(chunk, digests):
                (waiting.setdefault(digest, []) if digest in lacking or digest in waiting else answered).append(item)
            yield from self._settled(answered)
        if items:
            _connect(self.options)
            import ray.data

            scored = _map(ray.data.from_items(items), ReadingsActor, {"gate": gate_options(self.gate)}, self.options)
            for batch in scored.iter_batches(batch_size=None, batch_format="pyarrow"):
                self._returned = {row["digest"]: row for row in batch.to_pylist()}
                yield from self._settled([item for digest in self._returned for item in waiting.pop(digest)])
        if waiting:
            raise RuntimeError(f"Ray returned no reading for {len(waiting)} images")

    def _settled(self, inputs: list[Input]) -> Iterator[Outcome]:
        if inputs:
            yield from self._chunk(inputs)
            self.summary.calls = dict(self.gate.calls)
            self.summary.model_calls = sum(self.gate.calls.values())

    def _lacking(self, digests: list[str]) -> set[str]:
        """The digests whose cascade needs a reading the store does not hold."""
        asked: set[str] = set()

        def score(keys: list[str], think: bool) -> dict[str, Assessment]:
            asked.update(keys)
            return {k: Assessment(status="backend_error", mode="think" if think else "no-think") for k in keys}

        cascade(self.gate, digests, score, self._stored)
        return asked

    def _items(self, digests: set[str], paths: dict[str, str]) -> list[dict]:
        known: dict[str, dict] = {d: {} for d in digests}
        for mode in ("no-think", "think"):
            for digest, reading in self._stored(list(digests), mode).items():
                if reading.status != "backend_error":
                    known[digest][mode] = json.dumps(reading.to_dict())
        return [{"digest": d, "path": paths[d], "known": json.dumps(k)} for d, k in known.items()]

    def _score(self, first: dict[str, Input], contents: dict[str, bytes]) -> Score:
        def score(digests: list[str], think: bool) -> dict[str, Assessment]:
            column = "think" if think else "fast"
            scored = {d: assessment_from_json(self._returned[d][column]) for d in digests}
            self.gate.count(list(scored.values()), think)
            self.store.save_readings(self.key, scored)
            return scored

        return score


@dataclass(frozen=True)
class Shard:
    """One input shard: a chunk of a folder's or list's files or URLs (``inputs``), or a WebDataset ``tar``."""

    id: str
    source: str
    inputs: tuple[Input, ...] = ()
    tar: str | None = None
    samples: int = 0  # a tar's samples

    @property
    def size(self) -> int:
        return self.samples if self.tar else len(self.inputs)


def plan_shards(sources: list[str], run_key: str, shard_size: int = 1000, include=(), exclude=()) -> list[Shard]:
    """Each source as shards: a ``.tar`` is one; a folder or list is cut into ``shard_size`` files in order. A
    shard's id names its source and hashes its files and ``run_key``: new files or settings make new shards."""
    shards = []
    for source in map(os.fspath, sources):
        name = re.sub(r"[^A-Za-z0-9._-]+", "_", os.path.basename(os.path.normpath(source)))[:40] or "source"
        if source.lower().endswith(TAR_SUFFIXES):
            tar = os.path.abspath(source)
            stat = os.stat(tar)
            shards.append(Shard(_shard_id(name, 0, [run_key, tar, stat.st_size, stat.st_mtime_ns]), source, tar=tar,
                                samples=count_samples(tar)))
            continue
        inputs = collect_inputs([source], include, exclude)
        for index, begin in enumerate(range(0, len(inputs), shard_size)):
            part = tuple(inputs[begin:begin + shard_size])
            shards.append(Shard(_shard_id(name, index, [run_key, *(i.path for i in part)]), source, part))
    return shards


def count_samples(tar: str) -> int:
    """A WebDataset tar's samples, from its headers alone: runs of files sharing a key (the name up to the first
    dot of its base name), as Ray Data's ``read_webdataset`` groups them. Reading is Ray Data's; this only counts."""
    keys, previous = 0, None
    with tarfile.open(tar, "r:") as archive:
        for member in archive:
            if member.isfile():
                key = WDS_KEY.match(member.name)
                if key and key.group(1) != previous:
                    keys, previous = keys + 1, key.group(1)
    return keys


def _shard_id(name: str, index: int, parts: list) -> str:
    return f"{name}-{index:05d}-{hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:12]}"


def run_key(gate: QualityGate, config: dict) -> str:
    """The scoring configuration and the gate's settings: what a finished shard was made under."""
    return hashlib.sha256(json.dumps([config_key(config), gate.threshold, gate.mode, gate.margin,
                                      gate.on_error]).encode()).hexdigest()[:16]


def _atomic_write(path: str, write) -> None:
    part = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{os.getpid()}.part")
    write(part)
    with open(part, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(part, path)


def finished(output: str, shard: Shard) -> bool:
    """Whether ``shard`` is done: recorded, or its file landed (a run killed before the record is written)."""
    if os.path.exists(os.path.join(output, FINISHED, f"{shard.id}.json")):
        return True
    data = os.path.join(output, f"{shard.id}.parquet")
    if os.path.exists(data):
        import pyarrow.parquet as pq

        _record(output, shard, pq.read_metadata(data).num_rows)
        return True
    return False


def _record(output: str, shard: Shard, rows: int) -> None:
    record = {"shard": shard.id, "source": shard.source, "rows": rows, "file": f"{shard.id}.parquet"}
    _atomic_write(os.path.join(output, FINISHED, f"{shard.id}.json"),
                  lambda part: _write_text(part, json.dumps(record)))


def _write_text(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def _land(output: str, shard: Shard, rows: list[dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if len(rows) != shard.size:
        raise RuntimeError(f"shard {shard.id}: {len(rows)} rows for {shard.size} inputs")
    table = pa.Table.from_pylist([{c: r[c] for c in OUTPUT_COLUMNS} for r in rows], schema=_schema(pa))
    _atomic_write(os.path.join(output, f"{shard.id}.parquet"), lambda part: pq.write_table(table, part))
    _record(output, shard, len(rows))


def _tar_row(row: dict, shards: dict[str, str]) -> dict:
    """A WebDataset sample as ``shard, path, data``: its image member's bytes (none: an image error row)."""
    tar = os.path.abspath(row["path"])
    member = next((k for k, v in row.items() if k.lower().rsplit(".", 1)[-1] in IMAGE_KEYS
                   and isinstance(v, bytes | bytearray) and v), None)  # samples without that file: a null here
    data = bytes(row[member]) if member else b""
    return {"shard": shards[tar], "path": f"{tar}/{row['__key__']}.{member or 'missing-image'}", "data": data}


def filter_to_parquet(sources: list[str], gate: QualityGate, config: dict, output: str, options: RayOptions,
                      shard_size: int = 1000, include=(), exclude=()) -> dict:
    """Filter ``sources`` on Ray into parquet shards in ``output``; return a summary. Finished shards are skipped."""
    if gate.on_error == "raise":
        raise ValueError("parquet output keeps every failure as a row: use on_error='reject' or 'keep'")
    shards = plan_shards(sources, run_key(gate, config), shard_size, include, exclude)
    os.makedirs(os.path.join(output, FINISHED), exist_ok=True)
    for folder in (output, os.path.join(output, FINISHED)):  # a killed run's half-written files (never landed)
        for name in os.listdir(folder):
            if name.startswith(".") and name.endswith(".part"):
                os.unlink(os.path.join(folder, name))
    todo = [s for s in shards if not finished(output, s)]
    summary = {"engine": "ray", "output": output, "shards": len(shards), "skipped": len(shards) - len(todo),
               "total": 0, "kept": 0, "rejected": 0, "failed": 0}
    if not todo:
        return summary
    _connect(options)
    import ray.data

    parts = []
    files = [{"shard": s.id, "path": i.path, "data": b""} for s in todo for i in s.inputs]
    if files:
        parts.append(ray.data.from_items(files))
    tars = {s.tar: s.id for s in todo if s.tar}
    if tars:  # reading is I/O: it asks for no CPU, so a pool of actors holding every CPU cannot starve it
        parts.append(ray.data.read_webdataset(list(tars), decoder=None, include_paths=True, num_cpus=0)
                     .map(_tar_row, fn_kwargs={"shards": tars}, num_cpus=0))
    dataset = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
    results = _map(dataset, VerdictActor, {"gate": gate_options(gate), "model": config["model"]}, options)
    by_id = {s.id: s for s in todo}
    rows: dict[str, list[dict]] = {s.id: [] for s in todo}
    for shard in todo:
        if not shard.size:  # an empty tar: finished with no rows
            _land(output, shard, rows.pop(shard.id))
    for batch in results.iter_batches(batch_size=None, batch_format="pyarrow"):
        for row in batch.to_pylist():
            done = rows[row["shard"]]  # a KeyError here: a row of a shard already landed
            done.append(row)
            summary["total"] += 1
            summary["failed"] += row["stage"] == "error"
            summary["kept" if row["verdict"] == "keep" else "rejected"] += 1
            if len(done) == by_id[row["shard"]].size:
                _land(output, by_id[row["shard"]], rows.pop(row["shard"]))
    if rows:
        raise RuntimeError(f"{len(rows)} shards came back incomplete: " + ", ".join(sorted(rows)))
    return summary
