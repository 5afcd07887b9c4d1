"""The score in a placed copy's XMP (or a sidecar) without a pixel re-encoded, and never in a source. Ratings,
rejects, sidecar namings and merges: test_culling_metadata.py."""

import hashlib
import os
from functools import partial

import numpy as np
import pytest
from PIL import Image
from smoke import solid_image

from qponder_plugin.filter.metadata import NAMESPACE, PREFIX, embed, write_sidecars, xmp_fields
from qponder_plugin.filter.placement import place
from qponder_plugin.filter.store import ResultStore

pyexiv2 = pytest.importorskip("pyexiv2", reason="writing XMP needs pyexiv2 (the metadata extra)")
FIELDS = xmp_fields(3.62, "Exposure: bright and clean.\n Overall fine.", "qponder-smoke")


def read_xmp(path) -> dict:
    pyexiv2.registerNs(NAMESPACE, PREFIX)
    with pyexiv2.Image(str(path)) as image:
        return image.read_xmp()


def jpeg_scan(data: bytes) -> bytes:
    """The entropy-coded scan of a baseline JPEG: from the start-of-scan marker to the end."""
    return data[data.index(b"\xff\xda"):]


def sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.mark.parametrize("name, options", [("a.jpg", {"quality": 90}), ("a.png", {}), ("a.webp", {"lossless": True}),
                                           ("a.tif", {})])
def test_embedded_xmp_leaves_pixels_and_source_alone(tmp_path, name, options):
    source = tmp_path / "src" / name
    source.parent.mkdir()
    solid_image(0.7, 64, seed=3).save(source, **options)
    before = sha(source)
    with ResultStore(tmp_path / "s.sqlite") as store:
        target, _ = place(store, str(source), before, str(tmp_path / "keep"), name, "copy",
                          partial(embed, fields=FIELDS))
        assert store.placement(str(source), str(tmp_path / "keep")).digest == sha(target)  # the edited copy
    assert sha(source) == before and not os.path.exists(target + ".xmp")
    xmp = read_xmp(target)
    assert xmp["Xmp.xmp.Rating"] == "4" and xmp[f"Xmp.{PREFIX}.Score"] == "3.6200"
    assert xmp[f"Xmp.{PREFIX}.Reasoning"] == "Exposure: bright and clean. Overall fine."
    with Image.open(source) as original, Image.open(target) as placed:
        assert np.array_equal(np.asarray(original), np.asarray(placed))
    if name.endswith(".jpg"):
        assert jpeg_scan(open(target, "rb").read()) == jpeg_scan(source.read_bytes())


def test_a_sidecar_for_links_merged_on_the_next_write(tmp_path):
    source = tmp_path / "a.gif"
    solid_image(0.3, 32).save(source)
    before = sha(source)
    with ResultStore(tmp_path / "s.sqlite") as store:
        target, _ = place(store, str(source), before, str(tmp_path / "keep"), "a.gif", "link")
    [sidecar] = write_sidecars(target, FIELDS)
    assert sidecar == target + ".xmp" and sha(source) == before
    assert read_xmp(sidecar)["Xmp.xmp.Rating"] == "4"
    with pyexiv2.Image(sidecar) as image:  # what the user's photo manager added meanwhile
        image.modify_xmp({"Xmp.dc.subject": ["harbour"]})
    assert write_sidecars(target, xmp_fields(1.2, None, "other", rejected=True)) == [sidecar]
    merged = read_xmp(sidecar)
    assert merged["Xmp.xmp.Rating"] == "-1" and merged[f"Xmp.{PREFIX}.Model"] == "other"
    assert merged["Xmp.dc.subject"] == ["harbour"] and f"Xmp.{PREFIX}.Reasoning" not in merged
    assert sorted(os.listdir(tmp_path / "keep")) == ["a.gif", "a.gif.xmp"]


def test_rating_is_the_rounded_score_within_1_to_5():
    assert [xmp_fields(s, None, None)["Xmp.xmp.Rating"] for s in (1.0, 1.49, 2.5, 3.51, 5.0)] == \
        ["1", "1", "3", "4", "5"]  # halves round up
