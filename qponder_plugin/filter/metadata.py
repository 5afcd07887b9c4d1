"""The score in a placed image's own metadata, as XMP, without re-encoding a pixel (pyexiv2 edits metadata only).

- ``xmp:Rating``: the score rounded to 1–5, which photo managers show as stars;
- ``qponder:Score``, ``qponder:Model`` and ``qponder:Reasoning`` (the first 500 characters) in the namespace
  :data:`NAMESPACE`.

A copy in JPEG, PNG, WebP or TIFF gets the XMP embedded, written into the part file before it is linked into
place. Anything else (a hard link or a moved file, which are the user's own file, and other formats) gets a
sidecar named ``<file name with extension>.xmp`` (``photo.jpg.xmp``: the darktable and digiKam convention, which
keeps ``a.jpg`` and ``a.png`` apart). Sources are never written.
"""

from __future__ import annotations

import os

from .placement import PART_SUFFIX

NAMESPACE, PREFIX = "http://ns.qponder-plugin.org/xmp/1.0/", "qponder"
EMBEDDABLE = (".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff")
SIDECAR = ".xmp"
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


def xmp_fields(score: float, reasoning: str | None, model: str | None) -> dict:
    fields = {"Xmp.xmp.Rating": str(min(5, max(1, int(score + 0.5)))), f"Xmp.{PREFIX}.Score": f"{score:.4f}",
              f"Xmp.{PREFIX}.Model": model or ""}
    if reasoning:
        fields[f"Xmp.{PREFIX}.Reasoning"] = " ".join(reasoning.split())[:500]
    return fields


def embeddable(path: str) -> bool:
    return path.lower().endswith(EMBEDDABLE)


def embed(path: str, fields: dict) -> None:
    """Write ``fields`` into the XMP packet of the image at ``path`` (metadata only)."""
    with _pyexiv2().Image(path) as image:
        image.modify_xmp(fields)


def sidecar_path(target: str) -> str:
    return target + SIDECAR


def write_sidecar(target: str, fields: dict) -> str:
    """Write ``<target>.xmp`` once (atomically; an existing sidecar is never replaced); return its path."""
    sidecar = sidecar_path(target)
    if os.path.exists(sidecar):
        return sidecar
    head, name = os.path.split(sidecar)
    part = os.path.join(head, f".{name}{PART_SUFFIX}")
    with open(part, "w", encoding="utf-8") as handle:
        handle.write(_EMPTY_PACKET)
    try:
        embed(part, fields)
        os.link(part, sidecar)
    except FileExistsError:
        pass
    finally:
        os.unlink(part)
    return sidecar
