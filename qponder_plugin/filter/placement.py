"""Placing files into the keep and reject folders without ever destroying anything.

``copy`` (the default) writes a hidden part file beside the target and hard-links it into place (``os.link``
fails when the name exists, so nothing is ever overwritten; a taken name gets a ``-1``, ``-2``... suffix).
``link`` hard-links the source (a symlink across file systems). ``move`` links (or copies) into place, records
the placement, and only then unlinks the source. Each placement is recorded as ``pending`` with its target
before the file system is touched, and ``done`` after: after a crash, :func:`resume` finishes or redoes it.

A file's sidecars travel with it (:func:`carry_sidecars`): ``NAME.EXT.xmp``, and ``NAME.xmp`` beside a raw file,
which hold a darktable or Lightroom user's edits. They are copied beside the target (one already there is kept); a
move unlinks the source's sidecar only once the target's is the same file.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path

from ..images import is_raw
from ..spec import file_digest
from .store import Placement, ResultStore

ACTIONS = ("copy", "link", "move")
PART_SUFFIX = ".qponder-part"


class PlacementError(OSError):
    """A destination cannot be written; the run stops with the store consistent."""


def part_file(target: str) -> str:
    head, name = os.path.split(target)
    return os.path.join(head, f".{name}{PART_SUFFIX}")


def free_target(folder: str, relname: str, taken: set[str]) -> str:
    """``folder/relname``, or with the first free ``-N`` suffix: neither on disk nor reserved in the store."""
    stem, ext = os.path.splitext(os.path.join(folder, relname))
    candidate, number = stem + ext, 0
    while os.path.lexists(candidate) or candidate in taken:
        number += 1
        candidate = f"{stem}-{number}{ext}"
    return candidate


def _holds(target: str, placement: Placement) -> bool:
    """Whether ``target`` already holds the placed file (same content, or our symlink to the source)."""
    if os.path.islink(target):
        return os.readlink(target) == os.path.abspath(placement.path)
    return os.path.isfile(target) and file_digest(target) == placement.digest


def _copy_into(source: str, target: str, prepare: Callable[[str], None] | None = None) -> None:
    part = part_file(target)
    with open(source, "rb") as src, open(part, "xb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    shutil.copystat(source, part)
    try:
        if prepare is not None:
            prepare(part)
        with open(part, "rb") as written:
            os.fsync(written.fileno())
        os.link(part, target)  # atomic, and never replaces an existing file
    finally:
        os.unlink(part)


def sidecars(path: str) -> list[str]:
    """Where photo managers keep ``path``'s metadata: ``NAME.EXT.xmp`` (darktable, digiKam), and ``NAME.xmp``
    (Lightroom, Camera Raw) for a raw file."""
    return [path + ".xmp", *([os.path.splitext(path)[0] + ".xmp"] if is_raw(path) else [])]


def carry_sidecars(source: str, target: str) -> None:
    """Copy ``source``'s existing sidecars to ``target``'s (one already there is kept, never replaced)."""
    for mine, theirs in zip(sidecars(source), sidecars(target)):
        if os.path.isfile(mine) and not os.path.lexists(theirs):
            try:
                _copy_into(mine, theirs)
            except FileExistsError:  # made meanwhile: it stays
                pass


def _link_into(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except FileExistsError:
        raise
    except OSError:  # another file system, or links not allowed: a symlink to the absolute source
        os.symlink(os.path.abspath(source), target)


def _move_into(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except FileExistsError:
        raise
    except OSError:
        _copy_into(source, target)


_PLACERS = {"copy": _copy_into, "link": _link_into, "move": _move_into}


def _prepared(store: ResultStore, placement: Placement, prepare: Callable[[str], None], part: str) -> None:
    prepare(part)
    store.set_placement(replace(placement, digest=file_digest(part)))  # so that resume recognises the edited copy


def place(store: ResultStore, source: str, digest: str, folder: str, relname: str, action: str,
          prepare: Callable[[str], None] | None = None) -> tuple[str, bool]:
    """Place ``source`` into ``folder`` once; return the target and whether it was placed now (not before).
    ``prepare(path)`` edits a copy (its part file, before it is linked into place; ignored by link and move)."""
    known = store.placement(source, folder)
    if known is not None and known.state == "done":
        _release(known)  # a move killed after its record and before the unlink
        return known.target, False
    taken = store.targets(folder)
    try:
        os.makedirs(os.path.dirname(os.path.join(folder, relname)), exist_ok=True)
        while True:
            placement = Placement(source, folder, free_target(folder, relname, taken), action, digest, "pending")
            store.set_placement(placement)
            try:
                if action == "copy" and prepare is not None:
                    _copy_into(source, placement.target, partial(_prepared, store, placement, prepare))
                else:
                    _PLACERS[action](source, placement.target)
                break
            except FileExistsError:  # the name was taken meanwhile: try the next suffix
                taken.add(placement.target)
    except OSError as exc:
        store.drop_placement(source, folder)
        raise PlacementError(f"cannot place {source} into {folder}: {exc.strerror or exc}") from exc
    carry_sidecars(source, placement.target)
    _finish(store, store.placement(source, folder))
    return placement.target, True


def _finish(store: ResultStore, placement: Placement) -> None:
    store.set_placement(replace(placement, state="done"))
    _release(placement)


def _release(placement: Placement) -> None:
    """A move unlinks its source only now that the result and the placed file are both committed, and each of its
    sidecars once the target's holds the same."""
    if (placement.action == "move" and os.path.isfile(placement.path) and _holds(placement.target, placement)
            and file_digest(placement.path) == placement.digest):
        carry_sidecars(placement.path, placement.target)  # again, for a run killed before it did
        os.unlink(placement.path)
        for mine, theirs in zip(sidecars(placement.path), sidecars(placement.target)):
            if os.path.isfile(mine) and os.path.isfile(theirs) and file_digest(mine) == file_digest(theirs):
                os.unlink(mine)


def resume(store: ResultStore) -> int:
    """Settle the placements a killed run left pending; return how many. A target that holds the file is kept
    (and recorded done); otherwise the record is dropped and the next placement starts afresh."""
    pending = store.pending_placements()
    for placement in pending:
        part = part_file(placement.target)
        if os.path.exists(part):
            os.unlink(part)
        if os.path.lexists(placement.target) and _holds(placement.target, placement):
            _finish(store, placement)
        else:
            store.drop_placement(placement.path, placement.folder)
    return len(pending)


def check_writable(folder: str) -> None:
    """Create ``folder`` and prove a file can be created in it, or raise :class:`PlacementError`."""
    try:
        os.makedirs(folder, exist_ok=True)
        probe = Path(folder) / f".qponder-probe-{os.getpid()}{PART_SUFFIX}"
        with open(probe, "xb"):
            pass
        probe.unlink()
    except OSError as exc:
        raise PlacementError(f"cannot write to {folder}: {exc.strerror or exc}") from exc
