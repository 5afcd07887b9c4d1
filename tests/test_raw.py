"""Camera raw files through rawpy (LibRaw): DNG files written from real photos (tests/dng.py, by tifffile), read
from their embedded preview when it is large enough and developed otherwise, turned upright, and a truncated one
failing as that image's error; and the filter over a shoot folder with DNGs, which places them and rates them in
sidecars without ever writing into a raw file or a source."""

import hashlib
import io
import json
import logging
import sqlite3
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from dng import write_dng
from PIL import Image, ImageOps

from qponder_plugin.cli import build
from qponder_plugin.filter.metadata import stars
from qponder_plugin.images import ImageError, iter_image_files, load_image

pytest.importorskip("rawpy", reason="reading raw files needs rawpy (the raw extra)")
PHOTOS = ("ss01 (1062).jpg", "ss01 (1088).jpg", "ss01 (1094).jpg")


@pytest.fixture
def photos(biq2021_sample) -> list[Image.Image]:
    """Real photos from the BIQ2021 sample, cropped to 512x384 (landscape: a turn shows)."""
    return [Image.open(biq2021_sample.parent / "images" / name).convert("RGB").crop((0, 64, 512, 448))
            for name in PHOTOS]


def similarity(a: Image.Image, b: Image.Image) -> float:
    """Correlation of the two images' grey levels at 64x48 (1: the same picture)."""
    grey = [np.asarray(i.convert("L").resize((64, 48)), dtype=float).ravel() for i in (a, b)]
    return float(np.corrcoef(*grey)[0, 1])


def test_a_dng_without_preview_is_developed(tmp_path, photos, caplog):
    path = tmp_path / "shot.dng"
    write_dng(path, photos[0])
    with caplog.at_level(logging.INFO, logger="qponder_plugin.images"):
        image = load_image(str(path))
    assert image.size == (512, 384) and similarity(image, photos[0]) > 0.98
    assert similarity(image, photos[1]) < 0.9
    assert "developed by LibRaw (full size, camera white balance" in caplog.text


@pytest.mark.parametrize("preview_format", ["jpeg", "bitmap"])
def test_a_large_enough_preview_is_used(tmp_path, photos, caplog, preview_format):
    path = tmp_path / "shot.dng"
    write_dng(path, photos[0], preview=photos[1], preview_format=preview_format)  # a preview that shows otherwise
    with caplog.at_level(logging.INFO, logger="qponder_plugin.images"):
        image = load_image(str(path))
    assert similarity(image, photos[1]) > 0.98 and similarity(image, photos[0]) < 0.9
    assert "embedded preview (512x384)" in caplog.text


def test_a_preview_smaller_than_the_budget_is_not_used(tmp_path, photos, caplog):
    path = tmp_path / "shot.dng"
    write_dng(path, photos[0], preview=photos[1].resize((160, 120)))
    with caplog.at_level(logging.INFO, logger="qponder_plugin.images"):
        image = load_image(str(path))
    assert similarity(image, photos[0]) > 0.98 and "developed by LibRaw" in caplog.text
    small = load_image(str(path), max_pixels=160 * 120)  # a model that sees no more than the preview holds
    assert similarity(small, photos[1]) > 0.98


def test_a_large_raw_is_developed_at_half_size(tmp_path, photos, caplog):
    path = tmp_path / "shot.dng"
    write_dng(path, photos[0])
    with caplog.at_level(logging.INFO, logger="qponder_plugin.images"):
        image = load_image(str(path), max_pixels=200 * 150)
    assert image.width * image.height <= 200 * 150 and similarity(image, photos[0]) > 0.98
    assert "half size" in caplog.text


@pytest.mark.parametrize("preview", [False, True])
def test_a_turned_camera_gives_an_upright_image(tmp_path, photos, preview):
    path = tmp_path / "shot.dng"
    write_dng(path, photos[0], preview=photos[0] if preview else None, orientation=6)  # shot rotated 90° CW
    image = load_image(str(path))
    upright = photos[0].transpose(Image.Transpose.ROTATE_270)
    assert image.size == (384, 512) and similarity(image, upright) > 0.98


def test_bytes_named_as_a_raw_file_are_read_as_one(tmp_path, photos):
    path = tmp_path / "shot.dng"
    write_dng(path, photos[0])
    named = io.BytesIO(path.read_bytes())
    named.name = str(path)  # how the filter passes a file it has read to hash
    assert similarity(load_image(named), photos[0]) > 0.98


@pytest.mark.parametrize("keep, preview", [(0.6, False), (0.05, False), (0.6, True)])
def test_a_truncated_dng_is_that_images_error(tmp_path, photos, keep, preview):
    """Even when the preview at its start is whole (a card error cut off the raw data)."""
    whole = tmp_path / "whole.dng"
    write_dng(whole, photos[0], preview=photos[0] if preview else None)
    broken = tmp_path / "broken.dng"
    broken.write_bytes(whole.read_bytes()[:int(whole.stat().st_size * keep)])
    with pytest.raises(ImageError, match=r"broken\.dng: corrupt, truncated or unsupported raw file"):
        load_image(str(broken))


def test_without_rawpy_a_raw_file_says_what_to_install(tmp_path, photos, monkeypatch):
    path = tmp_path / "shot.nef"
    path.write_bytes(b"\0" * 64)
    monkeypatch.setitem(sys.modules, "rawpy", None)
    with pytest.raises(ImageError, match=r"shot\.nef: reading camera raw files needs rawpy .*\[raw\]"):
        load_image(str(path))


def test_folders_list_raw_files_and_no_sidecars(tmp_path):
    for name in ("a.dng", "b.NEF", "c.cr3", "d.jpg", "a.dng.xmp", "a.xmp", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert [Path(p).name for p in iter_image_files([str(tmp_path)])] == ["a.dng", "b.NEF", "c.cr3", "d.jpg"]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def files(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): sha(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def rating(sidecar: Path) -> int:
    import pyexiv2

    with pyexiv2.Image(str(sidecar)) as opened:
        return int(opened.read_xmp()["Xmp.xmp.Rating"])


@pytest.mark.model
def test_the_filter_places_and_rates_a_shoot_with_raw_files(smoke_model, photos, tmp_path):
    """The tiny model scores brightness: an underexposed shot is rejected, well-exposed ones kept."""
    pytest.importorskip("pyexiv2", reason="writing XMP needs pyexiv2 (the filter extra)")
    shoot = tmp_path / "shoot"
    shoot.mkdir()
    write_dng(shoot / "IMG_1.dng", photos[0], preview=photos[0])
    write_dng(shoot / "IMG_2.dng", Image.eval(photos[1], lambda v: v // 6))  # underexposed: dark
    ImageOps.autocontrast(photos[2]).save(shoot / "IMG_3.jpg", quality=92)
    (shoot / "IMG_4.dng").write_bytes((shoot / "IMG_1.dng").read_bytes()[:200_000])  # a card error: truncated
    before = files(shoot)
    keep, reject, store = tmp_path / "keep", tmp_path / "reject", tmp_path / "s.sqlite"
    result = CliRunner().invoke(build(), ["filter", str(shoot), "-t", "2.5", "--keep", str(keep), "--reject",
                                         str(reject), "--store", str(store), "-m", str(smoke_model), "--strategy",
                                         "fast", "--write-metadata", "--sidecar", "both", "--json"])
    assert result.exit_code == 1, result.output  # one image failed
    assert files(shoot) == before  # sources untouched, nothing added beside them
    with sqlite3.connect(store) as db:
        rows = {Path(p).name: (status, error, score, passed) for p, status, error, score, passed in
                db.execute("SELECT path, status, error, score, passed FROM results")}
    assert rows["IMG_4.dng"][0] == "image_error" and "truncated" in rows["IMG_4.dng"][1]
    assert rows["IMG_1.dng"][0] == rows["IMG_2.dng"][0] == "ok" and rows["IMG_2.dng"][2] < rows["IMG_1.dng"][2]
    assert not rows["IMG_2.dng"][3]  # the dark one is rejected
    placed = {p.name: p for p in [*keep.glob("*"), *reject.glob("*")]}
    for name in ("IMG_1.dng", "IMG_2.dng"):
        assert sha(placed[name]) == before[name]  # a raw copy is never written into
        stem = name[:-4]
        assert {f"{name}.xmp", f"{stem}.xmp"} <= set(placed)
        score, passed = rows[name][2], rows[name][3]
        assert rating(placed[f"{name}.xmp"]) == rating(placed[f"{stem}.xmp"]) == (stars(score) if passed else -1)
    assert sha(placed["IMG_3.jpg"]) != before["IMG_3.jpg"]  # the JPEG copy holds its rating (auto: embedded)
    assert "IMG_3.jpg.xmp" not in placed and "IMG_4.dng" not in placed
    assert json.loads(result.stdout.strip().splitlines()[-1])["failed"] == 1

    # Rating in place: sidecars beside the sources only; the raw files and the JPEG stay as they are.
    again = CliRunner().invoke(build(), ["filter", str(shoot), "-t", "2.5", "--store", str(store), "-m",
                                        str(smoke_model), "--strategy", "fast", "--write-metadata", "sidecar"])
    assert again.exit_code == 1, again.output
    after = files(shoot)
    assert {k: v for k, v in after.items() if not k.endswith(".xmp")} == before
    assert sorted(k for k in after if k.endswith(".xmp")) == ["IMG_1.dng.xmp", "IMG_2.dng.xmp", "IMG_3.jpg.xmp"]
    assert rating(shoot / "IMG_2.dng.xmp") == -1 and rating(shoot / "IMG_1.dng.xmp") >= 1
