"""``qponder filter --engine ray --output DIR``: parquet shards for cluster-scale runs, with shard-level resume.

Each input shard (a chunk of a folder, of a list or table of paths or URLs, or a WebDataset tar) is filtered by a
pool of :class:`VerdictActor` s, each running the gate's cascade over its own scorer, and lands as one parquet file
under a temporary name, then renamed; the shard is then recorded as finished, and a rerun skips finished shards.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tarfile
from dataclasses import dataclass

from ..gate import QualityGate
from ..images import read_bytes
from ..readings import ScorerReadings
from .engine import Hashed, Outcome, judge, read_error, result_row, unique_digests
from .fingerprint import config_key
from .options import FilterOptions
from .ray_engine import connect, map_batches
from .sources import Input, collect_inputs

TAR_SUFFIXES = (".tar",)
IMAGE_KEYS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif", "ppm", "pgm", "image")
OUTPUT_COLUMNS = ("path", "hash", "score", "verdict", "stage", "flagged", "reasoning", "status", "error", "model",
                  "mode", "threshold", "strategy", "timings")
FINISHED = "_finished"
WDS_KEY = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")


class VerdictActor:
    """Rows ``shard, path, data`` (the image's bytes, or empty to read ``path``) in, one result row per input out
    (:data:`OUTPUT_COLUMNS` and ``shard``)."""

    def __init__(self, gate: dict, model: str):
        self.gate, self.model = QualityGate(**gate), model

    def __call__(self, batch):
        import pyarrow as pa

        rows = batch.to_pylist()
        hashed = [_hashed(row) for row in rows]
        first = unique_digests(hashed)
        try:
            readings = ScorerReadings(lambda: self.gate.scorer, {d: h.image() for d, h in first.items()})
            outcomes = judge(self.gate, hashed, self.gate.readout(list(first), readings), self.model)
        except Exception as exc:  # beyond the scorer's own per-item handling: the batch becomes error rows
            error = f"{type(exc).__name__}: {exc}"
            outcomes = [Outcome(h.input, h.digest, self.gate.decide(
                self.gate.failure(h.input.path, error, self.model, "backend_error"), None)) for h in hashed]
        out = [{**_output_row(result_row(o, self.gate, self.model), o.verdict.assessment.timings),
                "shard": row["shard"]} for row, o in zip(rows, outcomes)]
        return pa.Table.from_pylist(out, schema=_schema(pa).append(pa.field("shard", pa.string())))


def _hashed(row: dict) -> Hashed:
    item = Input(row["path"], os.path.basename(row["path"]))
    content = row["data"]
    if not content:
        try:
            content = read_bytes(row["path"])
        except OSError as exc:
            return Hashed(item, None, error=read_error(row["path"], exc))
    return Hashed(item, hashlib.sha256(content).hexdigest(), content)


def _output_row(row: dict, timings: dict) -> dict:
    return {"path": row["path"], "hash": row["digest"], "score": row["score"],
            "verdict": "keep" if row["passed"] else "reject", "stage": row["stage"], "flagged": row["flagged"],
            "reasoning": row["reasoning"], "status": row["status"], "error": row["error"], "model": row["model"],
            "mode": row["mode"], "threshold": row["threshold"], "strategy": row["strategy"],
            "timings": json.dumps(timings)}


def _schema(pa):
    types = {"score": pa.float64(), "threshold": pa.float64(), "flagged": pa.bool_()}
    return pa.schema([(c, types.get(c, pa.string())) for c in OUTPUT_COLUMNS])


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
    return hashlib.sha256(json.dumps([config_key(config), gate.threshold, gate.strategy, gate.margin,
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


def filter_to_parquet(options: FilterOptions, gate: QualityGate, config: dict) -> dict:
    """Filter ``options.sources`` on Ray into parquet shards in ``options.output``; return a summary. Finished
    shards are skipped."""
    if gate.on_error == "raise":
        raise ValueError("parquet output keeps every failure as a row: use on_error='reject' or 'keep'")
    output = options.output
    shards = plan_shards(options.sources, run_key(gate, config), options.shard_size, options.include,
                         options.exclude)
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
    connect(options.ray)
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
    results = map_batches(dataset, VerdictActor, {"gate": gate.settings(), "model": config["model"]},
                          options.ray)
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
