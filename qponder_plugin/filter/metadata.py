"""Ratings, reject flags, scores and reasoning as XMP, where photo managers read them, without re-encoding a pixel
(pyexiv2 edits metadata only).

What is written (:func:`xmp_fields`):

- ``xmp:Rating``: for a kept image, stars from the score (the score rounded half up, within 1–5):

  ========  =====  =========  =========  =========  =====
  score     < 1.5  1.5–<2.5   2.5–<3.5   3.5–<4.5   ≥ 4.5
  stars     1      2          3          4          5
  ========  =====  =========  =========  =========  =====

  and ``-1`` for a rejected one: the XMP specification's value for "rejected" (XMP Specification Part 1, the xmp
  namespace: "The value shall be -1 or in the range [0..5], where -1 indicates rejected and 0 indicates unrated"),
  which darktable writes and reads as its reject flag (darktable ``src/common/exif.cc``: ``xmpData["Xmp.xmp.Rating"]
  = ((stars & 0x7) == 6) ? -1 : (stars & 0x7); // rejected image = -1``, later ``dt_image_get_xmp_rating_from_flags``;
  reading, ``stars = (stars == -1) ? 6 : stars``, 6 being its reject) and Adobe Bridge shows as "Reject". Lightroom
  Classic keeps its Pick/Reject flags in its catalog only (they are not among what it saves to XMP), so no file sets
  them: there a rejected image shows the XMP rating, not the flag.
- ``qponder:Score``, ``qponder:Model`` and ``qponder:Reasoning`` (its first 500 characters) in :data:`NAMESPACE`.

Where (:class:`MetadataWriter`, from ``--write-metadata MODE`` and ``--sidecar NAMING``):

- embedded, in a placed copy's own XMP (JPEG, PNG, WebP, TIFF), written into the part file before it is linked
  into place; a link, a moved file, a raw file and the sources are never written;
- sidecars: ``NAME.EXT.xmp`` (darktable and digiKam: ``photo.jpg.xmp``, which keeps ``a.jpg`` and ``a.nef`` apart),
  ``NAME.xmp`` (Lightroom, Camera Raw, Bridge: read for proprietary raw files; for JPEG, TIFF, PNG and DNG they read
  the embedded XMP), or both. When a raw file of the same name sits beside a non-raw one (RAW+JPEG), ``NAME.xmp`` is
  the raw's and the other file gets none.

An existing sidecar (darktable's holds the whole edit history) is merged, never replaced (:func:`merge_sidecar`):
exiv2, which darktable itself writes its sidecars with, reads it and sets only our fields; the result goes to a
part file beside it, is synced, and renamed over it. Every other element survives.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import shutil
from bisect import bisect_right
from dataclasses import dataclass

from ..images import RAW_EXTENSIONS, is_raw
from .placement import PART_SUFFIX

log = logging.getLogger(__name__)

NAMESPACE, PREFIX = "http://ns.qponder-plugin.org/xmp/1.0/", "qponder"
MODES = ("auto", "embedded", "sidecar", "both")  # --write-metadata; the bare flag is "auto"
NAMINGS = ("darktable", "lightroom", "both")  # --sidecar
STAR_CUTS = (1.5, 2.5, 3.5, 4.5)  # a score at or above the n-th cut earns n + 1 stars
REJECTED = -1  # xmp:Rating of a rejected image
EMBEDDABLE = (".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff")
SIDECAR = ".xmp"
RETRIES = 5  # merges of a sidecar that another program keeps changing, before giving up on it
_EMPTY_PACKET = ('<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n<x:xmpmeta xmlns:x="adobe:ns:meta/">'
                 '<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"/></x:xmpmeta>\n'
                 '<?xpacket end="w"?>')


def _pyexiv2():
    try:
        import pyexiv2
    except ImportError as exc:
        raise RuntimeError("writing metadata needs pyexiv2 (pip install 'qponder-plugin[filter]')") from exc
    pyexiv2.registerNs(NAMESPACE, PREFIX)
    return pyexiv2


def stars(score: float) -> int:
    """The star rating of ``score`` (1–5), by :data:`STAR_CUTS`."""
    return 1 + bisect_right(STAR_CUTS, score)


def xmp_fields(score: float, reasoning: str | None, model: str | None, rejected: bool = False) -> dict:
    """Our XMP fields: the rating (``-1`` when ``rejected``), score, model and reasoning (``None`` removes a
    reasoning left by an earlier run)."""
    return {"Xmp.xmp.Rating": str(REJECTED if rejected else stars(score)), f"Xmp.{PREFIX}.Score": f"{score:.4f}",
            f"Xmp.{PREFIX}.Model": model or "",
            f"Xmp.{PREFIX}.Reasoning": " ".join(reasoning.split())[:500] if reasoning else None}


def embeddable(path: str) -> bool:
    return path.lower().endswith(EMBEDDABLE)


def embed(path: str, fields: dict) -> None:
    """Write ``fields`` into the XMP packet of the image or sidecar at ``path`` (metadata only)."""
    with _pyexiv2().Image(path) as image:
        image.modify_xmp(fields)


def sidecar_paths(target: str, naming: str = "darktable") -> list[str]:
    """The sidecars of ``target`` in ``naming`` (:data:`NAMINGS`)."""
    paths = [target + SIDECAR] if naming in ("darktable", "both") else []
    if naming in ("lightroom", "both") and (is_raw(target) or not _raw_sibling(target)):
        paths.append(os.path.splitext(target)[0] + SIDECAR)
    return paths


def _raw_sibling(path: str) -> bool:
    stem = os.path.splitext(path)[0]
    return any(os.path.exists(stem + ext) or os.path.exists(stem + ext.upper()) for ext in RAW_EXTENSIONS)


def merge_sidecar(sidecar: str, fields: dict) -> None:
    """Set ``fields`` in the XMP sidecar ``sidecar``, made when missing; all else in it is kept. Atomic: the merged
    copy is written to a part file beside it, synced, and renamed over it (a new one is linked into place, so that
    one made meanwhile is merged, never replaced); if another program changes it meanwhile, the merge starts again."""
    head, name = os.path.split(sidecar)
    _clear_stale_parts(head or ".", name)
    part = os.path.join(head, f".{name}.{os.getpid()}{PART_SUFFIX}")
    for _ in range(RETRIES):
        before = _stamp(sidecar)
        try:
            if before is None:
                with open(part, "w", encoding="utf-8") as handle:
                    handle.write(_EMPTY_PACKET)
            else:
                shutil.copyfile(sidecar, part)
                shutil.copymode(sidecar, part)
            embed(part, fields)
            with open(part, "rb") as written:
                os.fsync(written.fileno())
            if before is None:
                _link_new(part, sidecar)
            elif _stamp(sidecar) == before:
                os.replace(part, sidecar)
            else:
                continue
        except FileExistsError:
            continue
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(part)
        _fsync_folder(head or ".")
        return
    raise OSError(f"{sidecar}: changed by another program during each of {RETRIES} merges; left as it is")


def _link_new(part: str, sidecar: str) -> None:
    """Put ``part`` in place as the new ``sidecar``: a hard link never replaces one made meanwhile (that raises
    FileExistsError, and it is merged instead); where links are not allowed (exFAT, some network shares), a rename
    once the name is seen free."""
    try:
        os.link(part, sidecar)
    except FileExistsError:
        raise
    except OSError:
        if os.path.lexists(sidecar):
            raise FileExistsError(sidecar) from None
        os.replace(part, sidecar)


def _stamp(path: str) -> tuple | None:
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


def _fsync_folder(folder: str) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _clear_stale_parts(folder: str, name: str) -> None:
    """Remove the part files of ``name`` that a killed writer left (named by its process id, no longer running)."""
    prefix = os.path.join(folder, f".{name}.")
    for stale in glob.glob(glob.escape(prefix) + f"*{PART_SUFFIX}"):
        pid = stale[len(prefix):-len(PART_SUFFIX)]
        if pid.isdigit() and not _running(int(pid)):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(stale)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def write_sidecars(target: str, fields: dict, naming: str = "darktable") -> list[str]:
    """Merge ``fields`` into each sidecar of ``target`` in ``naming``; the paths written. One that cannot be read
    or written (not XMP, no permission) is left as it is, with a warning."""
    written = []
    for sidecar in sidecar_paths(target, naming):
        try:
            merge_sidecar(sidecar, fields)
            written.append(sidecar)
        except Exception as exc:  # exiv2's own errors, OSError: this file's problem, not the run's
            log.warning("%s: sidecar not written (%s: %s)", sidecar, type(exc).__name__, exc)
    return written


@dataclass(frozen=True)
class MetadataWriter:
    """What ``--write-metadata MODE --sidecar NAMING`` writes, and where. ``auto``: embedded in copies that can
    hold it, else sidecars; ``embedded``: only embedded; ``sidecar``: only sidecars; ``both``: embedded where it
    can be, and sidecars."""

    mode: str = "auto"
    naming: str = "darktable"

    @staticmethod
    def fields(verdict) -> dict | None:
        """The fields for a :class:`~qponder_plugin.gate.Verdict`; ``None`` when it has no score."""
        assessment = verdict.assessment
        if not assessment.ok:
            return None
        return xmp_fields(assessment.score, assessment.reasoning, assessment.model, rejected=not verdict.passed)

    def embeds(self, path: str, action: str) -> bool:
        """Whether placing ``path`` by ``action`` embeds the fields (into the copy: only copies are ever edited)."""
        return self.mode != "sidecar" and action == "copy" and embeddable(path)

    def placed(self, placed: str, fields: dict, embedded: bool) -> None:
        """After placing a file at ``placed`` (its copy holding the fields when ``embedded``): the sidecars."""
        if self.mode in ("sidecar", "both") or self.mode == "auto" and not embedded:
            write_sidecars(placed, fields, self.naming)
        elif not embedded:
            log.warning("%s: nothing written: --write-metadata embedded edits copies of JPEG, PNG, WebP and TIFF "
                        "files only (use auto or both for sidecars)", placed)

    def beside(self, source: str, verdict) -> None:
        """Rating in place (no --keep, no --reject): sidecars beside the source, which is never touched."""
        fields = self.fields(verdict)
        if fields is not None:
            write_sidecars(source, fields, self.naming)
