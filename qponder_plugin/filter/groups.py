"""Near-duplicate groups (``qponder filter --groups``): frames of one burst, variants of one prompt, copies.

An image's *look* is its perceptual hash, imagehash's pHash and dHash at 16×16 (512 bits together, read from the
image as the one loader gives it, so EXIF-rotated copies look alike), and, for a photo, its capture time: EXIF
DateTimeOriginal with SubSecTimeOriginal, compared as the camera's clock wrote it. Two images are near-duplicates
when at most ``distance`` (a share, 0–1) of those bits differ and, if both carry a capture time, they were taken at
most ``window`` seconds apart: time only ever separates looks, it never joins two images that look different. An
image without a capture time is compared by its look alone.

Groups are the connected components of that relation (scipy's csgraph), so a burst whose frames drift stays one
group; two different photos join only through a chain of near-duplicates between them, which the default distance
makes rare (docs/filter.md gives the measurements). Identical files are one image. The result depends on the inputs
alone, never on their order: a group is numbered by its first path in sorted order. Pairs are compared in blocks
with one matrix product each (O(n²) over 512 bits; 10,000 images take about a second).
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from PIL import ExifTags, Image, UnidentifiedImageError

from ..images import ImageSource, load_image

METHOD = "phash16+dhash16"  # the store keeps looks by this name: another hash would be computed anew
HASH_SIDE = 16  # imagehash's hash_size: 256 bits each of pHash and dHash
BITS = 2 * HASH_SIDE * HASH_SIDE
HASH_PIXELS = 256 * 256  # pHash reads 64×64 pixels: a large JPEG is decoded at 1/8 scale straight from the DCT
# The share of differing bits at most: 99.5 % of burst frames lie within it of their original, distinct photos
# start at 0.33, distinct AI images at 0.30 (docs/filter.md, "Groups and best-of-group").
DEFAULT_DISTANCE = 0.27
DEFAULT_WINDOW = 2.0  # seconds between two capture times at most
BLOCK = 1024  # rows compared per matrix product


@dataclass(frozen=True)
class Look:
    """An image's perceptual hash (``BITS`` bits, packed) and capture time (seconds, None without EXIF)."""

    hash: bytes
    taken: float | None = None


def look(source: ImageSource) -> Look:
    """The look of one image (anything the loader takes; the capture time is read from a path, bytes, a file object
    or a PIL image); raises ``ImageError`` when it cannot be read."""
    import imagehash

    if isinstance(source, (bytes, bytearray)):
        source = io.BytesIO(source)
    image = load_image(source, max_pixels=HASH_PIXELS)
    bits = np.concatenate([imagehash.phash(image, HASH_SIDE).hash.ravel(),
                           imagehash.dhash(image, HASH_SIDE).hash.ravel()])
    return Look(np.packbits(bits).tobytes(), capture_time(source))


def capture_time(source: ImageSource) -> float | None:
    """EXIF DateTimeOriginal (plus SubSecTimeOriginal) as seconds on the camera's clock; None when absent."""
    if isinstance(source, Image.Image):
        exif = source.getexif().get_ifd(ExifTags.IFD.Exif)
    elif isinstance(source, (str, os.PathLike)) or hasattr(source, "read"):
        try:
            if hasattr(source, "seek"):
                source.seek(0)
            with Image.open(source) as image:
                exif = image.getexif().get_ifd(ExifTags.IFD.Exif)
        except (OSError, ValueError, UnidentifiedImageError):  # a URL, or a format Pillow reads no EXIF from
            return None
    else:  # an array or a tensor: no EXIF
        return None
    stamp, fraction = exif.get(ExifTags.Base.DateTimeOriginal), exif.get(ExifTags.Base.SubsecTimeOriginal)
    try:
        taken = datetime.strptime(str(stamp).strip("\x00 "), "%Y:%m:%d %H:%M:%S")
    except ValueError:  # absent, blank ("    :  :     :  :  ") or malformed
        return None
    digits = "".join(c for c in str(fraction or "") if c.isdigit())
    return (taken - datetime(1970, 1, 1)).total_seconds() + (float(f"0.{digits}") if digits else 0.0)


def near_pairs(looks: list[Look], distance: float = DEFAULT_DISTANCE,
               window: float = DEFAULT_WINDOW) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs ``(i, j)``, ``i < j``, of near-duplicates among ``looks``."""
    if not looks:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    bits = np.unpackbits(np.frombuffer(b"".join(x.hash for x in looks), np.uint8).reshape(len(looks), -1), axis=1)
    ones = bits.sum(1).astype(np.float32)
    bits = bits.astype(np.float32)
    taken = np.array([math.nan if x.taken is None else x.taken for x in looks])
    limit = math.floor(distance * BITS)
    first, second = [], []
    for begin in range(0, len(looks), BLOCK):
        rows = slice(begin, min(begin + BLOCK, len(looks)))
        # Hamming distances from one product: |a xor b| = |a| + |b| - 2 a·b (exact in float32 at these sizes).
        differ = ones[rows, None] + ones[None, begin:] - 2 * bits[rows] @ bits[begin:].T
        i, j = np.nonzero(np.triu(differ <= limit + 0.5, 1))
        first.append(i + begin)
        second.append(j + begin)
    i, j = np.concatenate(first), np.concatenate(second)
    apart = np.abs(taken[i] - taken[j]) > window  # False where either has no capture time: the look decides
    return i[~apart], j[~apart]


def group_ids(inputs: Iterable[tuple[str, str | None]], looks: Mapping[str, Look],
              distance: float = DEFAULT_DISTANCE, window: float = DEFAULT_WINDOW) -> dict[str, int]:
    """``{path: group}`` for the inputs (``(path, digest)`` pairs) that have a near-duplicate among them: another
    input with the same content, or with a look within ``distance`` and ``window``. Groups are numbered from 1 in
    the order of their first path; an input alone, or without a look, is in no group."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    paths: dict[str, list[str]] = {}
    for path, digest in inputs:
        if digest is not None and digest in looks:
            paths.setdefault(digest, []).append(path)
    digests = sorted(paths)
    i, j = near_pairs([looks[d] for d in digests], distance, window)
    _, component = connected_components(coo_matrix((np.ones(len(i)), (i, j)), shape=(len(digests),) * 2),
                                        directed=False)
    members: dict[int, list[str]] = {}
    for digest, label in zip(digests, component):
        members.setdefault(int(label), []).extend(paths[digest])
    grouped = sorted(sorted(group) for group in members.values() if len(group) > 1)
    return {path: number for number, group in enumerate(grouped, 1) for path in group}


def not_best(group_of: Mapping[str, int], scores: Mapping[str, float], best: int) -> set[str]:
    """The grouped paths with a score that are not among the ``best`` highest scores of their group (ties go to
    the first path in sorted order)."""
    ranked: dict[int, list[str]] = {}
    for path in sorted((p for p in group_of if p in scores), key=lambda p: (-scores[p], p)):
        ranked.setdefault(group_of[path], []).append(path)
    return {path for members in ranked.values() for path in members[best:]}
