"""The filter's results store: SQLite (WAL), both cache and manifest.

- ``readings``: one :class:`Assessment` per (content hash, scoring-configuration key, mode); the cache.
- ``results``: one row per (input path, configuration): its verdict under the last run's gate; the manifest.
- ``placements``: where each input was placed (``pending`` is written before the file system is touched, ``done``
  after), so a killed run finishes or redoes each placement and never places twice.
- ``hashes``: content hashes by (path, size, mtime): a rerun reads no file it has hashed before.
- ``looks``: each content hash's perceptual hash and capture time (``--groups``): a rerun decodes no image again.

Every write is its own committed transaction. :class:`StoredReadings` is the store as a
:class:`~qponder_plugin.readings.Readings` for one configuration.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from ..result import Assessment
from ..spec import file_digest

_SCHEMA = """
CREATE TABLE IF NOT EXISTS configs (key TEXT PRIMARY KEY, config TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS hashes (path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, digest TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS readings (
    digest TEXT NOT NULL, config TEXT NOT NULL, mode TEXT NOT NULL, status TEXT NOT NULL, score REAL,
    assessment TEXT NOT NULL, created REAL NOT NULL, PRIMARY KEY (digest, config, mode));
CREATE TABLE IF NOT EXISTS results (
    path TEXT NOT NULL, config TEXT NOT NULL, digest TEXT, status TEXT NOT NULL, score REAL, passed INTEGER,
    stage TEXT, flagged INTEGER, note TEXT, mode TEXT, threshold REAL, strategy TEXT, model TEXT, reasoning TEXT,
    error TEXT, updated REAL NOT NULL, group_id INTEGER, PRIMARY KEY (path, config));
CREATE TABLE IF NOT EXISTS placements (
    path TEXT NOT NULL, folder TEXT NOT NULL, target TEXT NOT NULL, action TEXT NOT NULL, digest TEXT,
    state TEXT NOT NULL, updated REAL NOT NULL, PRIMARY KEY (path, folder));
CREATE TABLE IF NOT EXISTS looks (
    digest TEXT NOT NULL, method TEXT NOT NULL, hash BLOB NOT NULL, taken REAL, PRIMARY KEY (digest, method));
"""
STORE_VERSION = 3  # SQLite's user_version; version 1 named the strategy column "gate" and the action "how"
_RENAMED = (("results", "gate", "strategy"), ("placements", "how", "action"))
_ADDED = (("results", "group_id", "INTEGER"),)  # version 3: each input's near-duplicate group (--groups)
RESULT_COLUMNS = ("path", "digest", "status", "score", "passed", "stage", "flagged", "note", "mode", "threshold",
                  "strategy", "model", "reasoning", "error", "group_id")
EXPORT_COLUMNS = ("path", "hash", "score", "verdict", "stage", "flagged", "reasoning", "status", "error", "model",
                  "mode", "threshold", "strategy", "group", "placed")


@dataclass(frozen=True)
class Placement:
    path: str
    folder: str
    target: str
    action: str  # copy | link | move
    digest: str | None
    state: str  # pending | done


def assessment_from_json(text: str) -> Assessment:
    data = json.loads(text)
    data.pop("schema_version", None)
    return Assessment(**data)


class ResultStore:
    """A SQLite results store at ``path`` (created when missing); one connection, used from one thread."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self.db = sqlite3.connect(self.path, timeout=30)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        with self.db:
            self._migrate()
            self.db.executescript(_SCHEMA)
            self.db.execute(f"PRAGMA user_version = {STORE_VERSION}")

    def _migrate(self) -> None:
        """Bring a store written by an older version up to :data:`STORE_VERSION` (its rows stay valid)."""
        if self.db.execute("PRAGMA user_version").fetchone()[0] >= STORE_VERSION:
            return
        for table, old, new in _RENAMED:
            if old in {row[1] for row in self.db.execute(f"PRAGMA table_info({table})")}:
                self.db.execute(f"ALTER TABLE {table} RENAME COLUMN {old} TO {new}")
        for table, column, kind in _ADDED:
            present = {row[1] for row in self.db.execute(f"PRAGMA table_info({table})")}
            if present and column not in present:
                self.db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.db.close()

    def add_config(self, key: str, config: dict) -> None:
        with self.db:
            self.db.execute("INSERT OR IGNORE INTO configs VALUES (?, ?)", (key, json.dumps(config, sort_keys=True)))

    def cached_digest(self, path: str, size: int, mtime_ns: int) -> str | None:
        row = self.db.execute("SELECT digest FROM hashes WHERE path = ? AND size = ? AND mtime_ns = ?",
                              (path, size, mtime_ns)).fetchone()
        return row[0] if row else None

    def digest(self, path: str) -> str:
        """The content hash of ``path``, remembered by size and mtime."""
        stat = os.stat(path)
        known = self.cached_digest(path, stat.st_size, stat.st_mtime_ns)
        if known is None:
            known = file_digest(path)
            self.save_digests([(path, stat.st_size, stat.st_mtime_ns, known)])
        return known

    def save_digests(self, rows: Iterable[tuple[str, int, int, str]]) -> None:
        with self.db:
            self.db.executemany("INSERT OR REPLACE INTO hashes VALUES (?, ?, ?, ?)", rows)

    def readings(self, digests: Iterable[str], config: str, mode: str) -> dict[str, Assessment]:
        digests = list(set(digests))
        found: dict[str, Assessment] = {}
        for begin in range(0, len(digests), 500):
            part = digests[begin:begin + 500]
            query = (f"SELECT digest, assessment FROM readings WHERE config = ? AND mode = ? "
                     f"AND digest IN ({','.join('?' * len(part))})")
            found.update((d, assessment_from_json(a)) for d, a in self.db.execute(query, (config, mode, *part)))
        return found

    def save_readings(self, config: str, readings: dict[str, Assessment]) -> None:
        now = time.time()
        with self.db:
            self.db.executemany("INSERT OR REPLACE INTO readings VALUES (?, ?, ?, ?, ?, ?, ?)", [
                (digest, config, a.mode, a.status, a.score, json.dumps(a.to_dict(), ensure_ascii=False), now)
                for digest, a in readings.items()])

    def looks(self, digests: Iterable[str], method: str) -> dict[str, tuple[bytes, float | None]]:
        """``{digest: (hash, capture time)}`` of the ``digests`` whose look under ``method`` is stored."""
        digests = list(set(digests))
        found: dict[str, tuple[bytes, float | None]] = {}
        for begin in range(0, len(digests), 500):
            part = digests[begin:begin + 500]
            query = (f"SELECT digest, hash, taken FROM looks WHERE method = ? "
                     f"AND digest IN ({','.join('?' * len(part))})")
            found.update((d, (h, t)) for d, h, t in self.db.execute(query, (method, *part)))
        return found

    def save_looks(self, method: str, looks: dict[str, tuple[bytes, float | None]]) -> None:
        with self.db:
            self.db.executemany("INSERT OR REPLACE INTO looks VALUES (?, ?, ?, ?)",
                                [(d, method, h, t) for d, (h, t) in looks.items()])

    def save_results(self, config: str, rows: Iterable[dict]) -> None:
        """Rows with the :data:`RESULT_COLUMNS`."""
        now = time.time()
        columns = RESULT_COLUMNS
        with self.db:
            self.db.executemany(
                f"INSERT OR REPLACE INTO results (config, updated, {', '.join(columns)}) "
                f"VALUES (?, ?, {', '.join('?' * len(columns))})",
                [(config, now, *(row.get(c) for c in columns)) for row in rows])

    def placement(self, path: str, folder: str) -> Placement | None:
        row = self.db.execute("SELECT path, folder, target, action, digest, state FROM placements "
                              "WHERE path = ? AND folder = ?", (path, folder)).fetchone()
        return Placement(*row) if row else None

    def pending_placements(self) -> list[Placement]:
        return [Placement(*row) for row in self.db.execute(
            "SELECT path, folder, target, action, digest, state FROM placements WHERE state = 'pending'")]

    def moved(self, path: str) -> bool:
        return self.db.execute("SELECT 1 FROM placements WHERE path = ? AND action = 'move' AND state = 'done'",
                               (path,)).fetchone() is not None

    def targets(self, folder: str) -> set[str]:
        return {row[0] for row in self.db.execute("SELECT target FROM placements WHERE folder = ?", (folder,))}

    def set_placement(self, placement: Placement) -> None:
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO placements VALUES (?, ?, ?, ?, ?, ?, ?)",
                            (*vars(placement).values(), time.time()))

    def drop_placement(self, path: str, folder: str) -> None:
        with self.db:
            self.db.execute("DELETE FROM placements WHERE path = ? AND folder = ?", (path, folder))

    def export_rows(self) -> Iterator[dict]:
        """The manifest: one dict per result row (every configuration), with where the input was placed."""
        query = """
            SELECT r.path, r.digest, r.score, r.passed, r.stage, r.flagged, r.reasoning, r.status, r.error, r.model,
                   r.mode, r.threshold, r.strategy, r.group_id,
                   (SELECT group_concat(p.target, ';') FROM placements p WHERE p.path = r.path AND p.state = 'done')
            FROM results r ORDER BY r.path"""
        for row in self.db.execute(query):
            data = dict(zip(EXPORT_COLUMNS, row))
            data["verdict"] = None if data["verdict"] is None else ("keep" if data["verdict"] else "reject")
            data["flagged"] = bool(data["flagged"])
            yield data


class StoredReadings:
    """The readings ``store`` holds under configuration ``key``, as :class:`~qponder_plugin.readings.Readings`;
    a stored backend error is not an answer (it is made again)."""

    def __init__(self, store: ResultStore, key: str):
        self.store, self.key = store, key

    def read(self, digests: list[str], mode: str) -> dict[str, Assessment]:
        held = self.store.readings(digests, self.key, mode)
        return {d: a for d, a in held.items() if a.status != "backend_error"}

    def save(self, readings: dict[str, Assessment]) -> None:
        self.store.save_readings(self.key, readings)
