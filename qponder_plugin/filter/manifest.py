"""Export the results store as a manifest: JSON lines, CSV, or parquet (with pyarrow), chosen by file suffix."""

from __future__ import annotations

import csv
import json
import os

from .store import EXPORT_COLUMNS, ResultStore

FORMATS = (".jsonl", ".csv", ".parquet")


def export_manifest(store: ResultStore, path: str | os.PathLike) -> int:
    """Write every result row of ``store`` to ``path``; return how many rows."""
    path = os.fspath(path)
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in FORMATS:
        raise ValueError(f"{path}: the manifest format is chosen by suffix: one of {', '.join(FORMATS)}")
    rows = list(store.export_rows())
    if suffix == ".parquet":
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError as exc:
            raise ValueError("a parquet manifest needs pyarrow (pip install 'qponder-plugin[filter]')") from exc
        pq.write_table(pa.Table.from_pylist(rows) if rows else pa.table(
            {c: pa.array([], pa.string()) for c in EXPORT_COLUMNS}), path)
        return len(rows)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        if suffix == ".csv":
            writer = csv.DictWriter(handle, EXPORT_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        else:
            handle.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    return len(rows)
