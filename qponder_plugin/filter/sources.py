"""The filter's inputs: image folders (recursive), image files, URLs, and list files of paths or URLs.

A list file is a ``.txt``/``.lst`` file (one entry per line; ``#`` starts a comment), a ``.csv`` file with a path
column (``path``, ``image``, ``file``, ``filename``, ``source`` or ``url``; else its first column), or a ``.parquet``
file with such a column (when pyarrow is installed). Relative paths in a list are relative to the list file; a URL
(``https://``, ``s3://``, …) is read through fsspec when it is scored.
"""

from __future__ import annotations

import csv
import fnmatch
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from ..images import is_url, iter_image_files

LIST_SUFFIXES = (".txt", ".lst", ".csv", ".parquet")
PATH_COLUMNS = ("path", "image", "file", "filename", "source", "url")


@dataclass(frozen=True)
class Input:
    """One image file to filter, and its name relative to its source (where it lands in a destination)."""

    path: str
    relname: str


def _pick_column(columns: list[str], where: str) -> str:
    lowered = {c.strip().lower().lstrip("\ufeff"): c for c in columns}
    for name in PATH_COLUMNS:
        if name in lowered:
            return lowered[name]
    if not columns:
        raise ValueError(f"{where}: no columns")
    return columns[0]


def _list_entries(list_file: str) -> list[str]:
    suffix = os.path.splitext(list_file)[1].lower()
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as exc:
            raise ValueError(f"{list_file}: reading parquet lists needs pyarrow "
                             "(pip install 'qponder-plugin[filter]')") from exc
        table = pq.read_table(list_file)
        return [str(v) for v in table.column(_pick_column(table.column_names, list_file)).to_pylist() if v]
    with open(list_file, newline="", encoding="utf-8-sig") as handle:
        if suffix == ".csv":
            reader = csv.DictReader(handle)
            column = _pick_column(list(reader.fieldnames or []), list_file)
            return [row[column].strip() for row in reader if (row.get(column) or "").strip()]
        return [line.strip() for line in handle if line.strip() and not line.lstrip().startswith("#")]


def _url_input(url: str) -> Input:
    return Input(url, url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1] or "image")


def _expand(source: str) -> Iterator[Input]:
    if is_url(source):
        yield _url_input(source)
    elif os.path.isdir(source):
        for path in iter_image_files([source]):
            yield Input(path, os.path.relpath(path, source))
    elif source.lower().endswith(LIST_SUFFIXES):
        base = os.path.dirname(source)
        for entry in _list_entries(source):
            if is_url(entry):
                yield _url_input(entry)
                continue
            path = entry if os.path.isabs(entry) else os.path.join(base, entry)
            if os.path.isdir(path):
                yield from _expand(path)
            else:
                yield Input(os.path.normpath(path), os.path.basename(path))
    else:
        yield Input(source, os.path.basename(source))


def _matches(item: Input, patterns: Iterable[str]) -> bool:
    names = (item.relname, item.path, os.path.basename(item.path))
    return any(fnmatch.fnmatch(name, pattern) for pattern in patterns for name in names)


def collect_inputs(sources: Iterable[str], include: Iterable[str] = (), exclude: Iterable[str] = ()) -> list[Input]:
    """Every input once (first occurrence wins), in source order, kept by ``include`` and dropped by ``exclude``
    glob patterns (matched against the relative name, the path and the file name)."""
    include, exclude = list(include), list(exclude)
    seen: set[str] = set()
    inputs = []
    for source in sources:
        for item in _expand(os.fspath(source)):
            key = item.path if is_url(item.path) else os.path.abspath(item.path)
            if key in seen or (include and not _matches(item, include)) or _matches(item, exclude):
                continue
            seen.add(key)
            inputs.append(item)
    return inputs
