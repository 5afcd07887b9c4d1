"""Label files of images judged by people: a CSV with an image column and a MOS or a pass/fail column.

Relative image paths resolve against ``image_root`` when given; else against the file's folder, or against
``images/`` beside the file when only that folder holds them (:func:`image_roots`, :func:`pick_root`); a name that
differs from the file's only in case resolves to the file (:func:`resolve_image`). The training wing's MOS readers
resolve their paths with the same three functions.
"""

from __future__ import annotations

import csv
import functools
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

IMAGE_COLUMNS = ("path", "image", "file", "filename", "name", "image name", "source")
MOS_COLUMNS = ("mos", "mos_quality", "score", "rating")
VERDICT_COLUMNS = ("pass", "passed", "good", "keep", "verdict", "label")
TRUE = frozenset({"1", "true", "yes", "pass", "passed", "good", "keep", "kept", "accept", "ok"})
FALSE = frozenset({"0", "false", "no", "fail", "failed", "bad", "reject", "rejected", "drop"})


@dataclass(frozen=True)
class Label:
    """One labelled image: its absolute ``path``, its ``value`` (a MOS, or True for pass and False for fail), the
    ``split`` the file gives it, and the ``line`` of the file it was read from."""

    path: str
    value: float | bool
    split: str | None
    line: int


@dataclass(frozen=True)
class LabelSet:
    """The labels of one file: ``kind`` is ``"mos"`` or ``"pass/fail"``, read from ``column``; ``image_root`` is the
    folder relative paths resolved against, after trying ``roots_tried`` in order."""

    path: str
    kind: str
    column: str
    labels: tuple[Label, ...]
    image_root: str
    roots_tried: tuple[str, ...]


def image_roots(path: Path, image_root=None, default: Path | None = None) -> tuple[Path, ...]:
    """``image_root`` when given; else ``default`` (the file's folder), then ``images/`` beside the file."""
    if image_root is not None:
        return (Path(image_root).expanduser(),)
    return tuple(dict.fromkeys([default or path.parent, path.parent / "images"]))


def pick_root(roots: tuple[Path, ...], images: Sequence[str]) -> tuple[Path, tuple[Path, ...]]:
    """The first of ``roots`` that holds any of the relative ``images`` (else the first), and the roots tried."""
    relative = [image for image in images if not os.path.isabs(os.path.expanduser(image))]
    for index, root in enumerate(roots):
        if any(os.path.exists(resolve_image(root, image)) for image in relative):
            return root, roots[:index + 1]
    return roots[0], roots


def resolve_image(root: Path, image: str) -> str:
    """The image's absolute path; a name that differs from the file's only in case (``.jpg`` for ``.JPG``, as in
    label files written on Windows or macOS) resolves to the file."""
    path = os.path.abspath(os.path.join(root, os.path.expanduser(image)))
    if os.path.exists(path):
        return path
    folder, name = os.path.split(path)
    return os.path.join(folder, _names_by_case(folder).get(name.lower(), name))


@functools.lru_cache(maxsize=16)
def _names_by_case(folder: str) -> dict[str, str]:
    try:
        return {name.lower(): name for name in os.listdir(folder)}
    except OSError:
        return {}


def _find(columns: dict[str, str], names: Sequence[str]) -> str | None:
    return next((columns[name] for name in names if name in columns), None)


def verdict_value(text: str) -> bool | None:
    """``True`` for a pass (1, true, yes, pass, good, keep...), ``False`` for a fail, ``None`` for anything else."""
    word = text.strip().lower()
    return True if word in TRUE else False if word in FALSE else None


def read_labels(path: str | os.PathLike, *, column: str | None = None, image_root=None,
                split: str | None = None) -> LabelSet:
    """Read a label CSV. The image column is the first of :data:`IMAGE_COLUMNS` present; the label column is
    ``column``, else the first pass/fail column (:data:`VERDICT_COLUMNS`), else the first MOS column
    (:data:`MOS_COLUMNS`). A pass/fail column holds 1/0, true/false, pass/fail, good/bad, keep/reject...; a MOS
    column holds numbers (higher is better). A column named ``column`` is read as MOS when it holds only numbers
    and its name is not a pass/fail column's. ``split`` keeps only that split's rows (the file needs a ``split``
    column). A malformed row raises ``ValueError`` naming its line."""
    path = Path(path)
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = {name.strip().lower(): name for name in reader.fieldnames or ()}
        rows = [(reader.line_num, row) for row in reader]
    image_column = _find(columns, IMAGE_COLUMNS)
    if image_column is None:
        raise ValueError(f"{path}: no image column (one of {', '.join(IMAGE_COLUMNS)}); columns: "
                         f"{', '.join(columns.values()) or 'none'}")
    if column is not None:
        label_column = _find(columns, [column.strip().lower()])
        if label_column is None:
            raise ValueError(f"{path}: no column {column!r}; columns: {', '.join(columns.values())}")
    else:
        label_column = _find(columns, VERDICT_COLUMNS) or _find(columns, MOS_COLUMNS)
        if label_column is None:
            raise ValueError(f"{path}: no label column: a pass/fail column ({', '.join(VERDICT_COLUMNS)}) or a MOS "
                             f"column ({', '.join(MOS_COLUMNS)}); columns: {', '.join(columns.values())}")
    split_column = columns.get("split")
    if split is not None and split_column is None:
        raise ValueError(f"{path}: --split {split} asked, but the file has no split column")
    kept = [(line, row) for line, row in rows
            if split is None or (row.get(split_column) or "").strip() == split]
    texts = [(line, (row.get(image_column) or "").strip(), (row.get(label_column) or "").strip(),
              (row.get(split_column) or "").strip() or None if split_column else None) for line, row in kept]
    numbers = all(_is_number(text) for _, _, text, _ in texts)
    kind = "mos" if numbers and label_column.strip().lower() not in VERDICT_COLUMNS else "pass/fail"
    root, tried = pick_root(image_roots(path, image_root), [image for _, image, _, _ in texts if image])
    labels = []
    for line, image, text, row_split in texts:
        if not image:
            raise ValueError(f"{path}:{line}: no image in column {image_column!r}")
        labels.append(Label(resolve_image(root, image), _value(text, kind, path, line, label_column), row_split,
                            line))
    return LabelSet(str(path), kind, label_column, tuple(labels), os.path.abspath(root),
                    tuple(map(os.path.abspath, tried)))


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _value(text: str, kind: str, path: Path, line: int, column: str) -> float | bool:
    if kind == "mos":
        return float(text)
    verdict = verdict_value(text)
    if verdict is None:
        raise ValueError(f"{path}:{line}: {column} {text!r} is neither a pass (1, true, yes, pass, good, keep) nor a "
                         "fail (0, false, no, fail, bad, reject)")
    return verdict
