"""`qponder filter` on awkward and broken files: each ends as one row with a clear status, unreadable files go to
neither folder (unless kept and flagged), and the run goes on."""

import json
import sqlite3
import struct
import zlib

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from smoke import solid_image

from qponder_plugin.cli import build

pytestmark = pytest.mark.model
UNREADABLE = {"zero.jpg": "not an image", "truncated.jpg": "corrupt or truncated", "text.jpg": "not an image",
              "bomb.png": "decompression bomb"}
READABLE = ("deep16.png", "cmyk.jpg", "palette_alpha.png", "animated.gif", "rotated.jpg", "normal.png")
ODD_SIZES = ("one_pixel.png", "strip_8000x60.png")  # the engine may refuse these: then a backend_error row


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` pixels in a few bytes: a decompression bomb's shape."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def awkward(tmp_path_factory):
    folder = tmp_path_factory.mktemp("awkward")
    bright = solid_image(0.8, 96, seed=7)
    (folder / "zero.jpg").write_bytes(b"")
    bright.save(folder / "full.jpg", quality=90)
    whole = (folder / "full.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(whole[:len(whole) // 2])
    (folder / "full.jpg").unlink()
    (folder / "text.jpg").write_text("just some text with a .jpg name\n")
    (folder / "bomb.png").write_bytes(_png_header_only(40_000, 40_000))
    Image.fromarray(np.asarray(bright.convert("L"), np.uint16) * 257).save(folder / "deep16.png")
    bright.convert("CMYK").save(folder / "cmyk.jpg")
    palette = bright.convert("RGBA").quantize(16)
    palette.info["transparency"] = 0
    palette.save(folder / "palette_alpha.png", transparency=0)
    bright.save(folder / "animated.gif", save_all=True, append_images=[solid_image(0.2, 96, seed=8)], duration=100)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° on display
    bright.resize((96, 48)).save(folder / "rotated.jpg", exif=exif)
    bright.save(folder / "normal.png")
    Image.new("RGB", (1, 1), (200, 200, 200)).save(folder / "one_pixel.png")
    Image.new("RGB", (8000, 60), (210, 210, 210)).save(folder / "strip_8000x60.png")
    return folder


@pytest.mark.parametrize("on_error", ["reject", "keep"])
def test_awkward_files_each_end_as_a_row(smoke_model, awkward, tmp_path, on_error):
    keep, reject, store = tmp_path / "keep", tmp_path / "reject", tmp_path / "s.sqlite"
    result = CliRunner().invoke(build(), [
        "filter", str(awkward), "--threshold", "3", "--keep", str(keep), "--reject", str(reject), "--store",
        str(store), "-m", str(smoke_model), "--json", "--on-error", on_error], catch_exceptions=False)
    assert result.exit_code == 1
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    with sqlite3.connect(store) as db:
        rows = {path.rsplit("/", 1)[1]: (status, error, stage, flagged) for path, status, error, stage, flagged
                in db.execute("SELECT path, status, error, stage, flagged FROM results")}
    assert sorted(rows) == sorted([*UNREADABLE, *READABLE, *ODD_SIZES]) and summary["total"] == len(rows)
    for name, message in UNREADABLE.items():
        status, error, stage, flagged = rows[name]
        assert (status, stage, bool(flagged)) == ("image_error", "error", on_error == "keep")
        assert message in error, (name, error)
    for name in READABLE:
        assert rows[name][0] == "ok", (name, rows[name])
    for name in ODD_SIZES:
        status, error, _, _ = rows[name]
        assert status == "ok" or (status in ("image_error", "backend_error") and error), (name, rows[name])
    placed = {p.name for folder in (keep, reject) if folder.exists() for p in folder.iterdir()}
    failed = {name for name, row in rows.items() if row[0] != "ok"}
    assert placed == (set(rows) if on_error == "keep" else set(rows) - failed)
    assert summary["failed"] == len(failed) and summary["flagged"] == (len(failed) if on_error == "keep" else 0)
