"""`qponder filter` end to end on the trained tiny model (score ≈ 1 + 4·brightness): placement, the store as a
cache, threshold changes, exports, bad inputs, and sources left untouched."""

import hashlib
import json
import shutil
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner
from smoke import solid_image

from qponder_plugin.cli import build

pytestmark = pytest.mark.model
LEVELS = {"dark1.png": 0.05, "dark2.jpg": 0.15, "mid.png": 0.45, "bright1.png": 0.85, "sub/bright2.jpg": 0.95}


def invoke(*args):
    return CliRunner().invoke(build(), ["filter", *map(str, args)], catch_exceptions=False)


def summary(result) -> dict:
    return json.loads(result.stdout.strip().splitlines()[-1])


def digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() or p.is_symlink()}


@pytest.fixture
def source(tmp_path):
    folder = tmp_path / "src"
    (folder / "sub").mkdir(parents=True)
    for index, (name, level) in enumerate(LEVELS.items()):
        solid_image(level, 64, seed=40 + index).save(folder / name)
    shutil.copy(folder / "dark1.png", folder / "sub" / "dark1-copy.png")  # same content: scored once
    (folder / "broken.jpg").write_bytes(b"this is text, not a jpeg")
    return folder


def test_filter_places_caches_and_resorts(smoke_model, source, tmp_path, monkeypatch):
    keep, reject, store = tmp_path / "keep", tmp_path / "reject", tmp_path / "store.sqlite"
    common = (source, "--keep", keep, "--reject", reject, "--store", store, "-m", smoke_model, "--json")
    first = invoke(*common, "--threshold", 3.0)
    assert first.exit_code == 1  # the broken file failed
    stats = summary(first)
    assert (stats["total"], stats["failed"], stats["kept"] + stats["rejected"]) == (7, 1, 7)
    assert stats["calls"]["no-think"] == 5  # 7 inputs: a duplicate pair, and one that is not an image
    assert stats["scored"] == 7 and stats["cached"] == 0 and stats["placed"] == 6
    kept, rejected = set(digests(keep)), set(digests(reject))
    assert {"bright1.png", "sub/bright2.jpg"} <= kept and {"dark1.png", "dark2.jpg", "sub/dark1-copy.png"} <= rejected
    assert "broken.jpg" not in kept | rejected and len(kept | rejected) == 6
    with sqlite3.connect(store) as db:
        rows = dict(db.execute("SELECT path, status FROM results"))
    assert len(rows) == 7 and rows[str(source / "broken.jpg")] == "image_error"

    # A rerun loads no model and calls none.
    monkeypatch.setattr("qponder_plugin.gate.Scorer", None)  # any attempt to load one would raise TypeError
    again = summary(invoke(*common, "--threshold", 3.0))
    assert (again["model_calls"], again["cached"], again["scored"], again["placed"]) == (0, 7, 0, 0)
    assert set(digests(keep)) == kept and set(digests(reject)) == rejected
    monkeypatch.undo()

    # A new threshold re-sorts from the store; only images newly within the margin are reasoned about.
    with sqlite3.connect(store) as db:
        fast = [s for (s,) in db.execute("SELECT score FROM readings WHERE mode = 'no-think' AND status = 'ok'")]
        reasoned = db.execute("SELECT count(*) FROM readings WHERE mode = 'think'").fetchone()[0]
    near_new = [s for s in fast if abs(s - 2.0) <= 0.25 and abs(s - 3.0) > 0.25]
    resorted = summary(invoke(*common, "--threshold", 2.0))
    assert resorted["calls"] == ({"think": len(near_new)} if near_new else {})
    with sqlite3.connect(store) as db:
        assert db.execute("SELECT count(*) FROM readings WHERE mode = 'think'").fetchone()[0] == reasoned + len(
            near_new)
        verdicts = dict(db.execute("SELECT path, passed FROM results WHERE status = 'ok'"))
        scores = dict(db.execute("SELECT path, score FROM results WHERE status = 'ok'"))
    assert all(bool(verdicts[p]) == (scores[p] >= 2.0) for p in verdicts)


@pytest.mark.parametrize("action", ["copy", "link"])
def test_sources_are_never_modified(smoke_model, source, tmp_path, action):
    before = digests(source)
    stamps = {p: p.stat().st_mtime_ns for p in source.rglob("*") if p.is_file()}
    result = invoke(source, "--threshold", 3.0, "--keep", tmp_path / "k", "--reject", tmp_path / "r", "--action",
                    action, "--store", tmp_path / "s.sqlite", "-m", smoke_model, "--json", "--on-error", "keep")
    assert result.exit_code == 1 and summary(result)["flagged"] == 1
    assert digests(source) == before
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    placed = {**digests(tmp_path / "k"), **digests(tmp_path / "r")}
    assert sorted(placed.values()) == sorted(before.values())  # every file once, the broken one kept and flagged
    assert "broken.jpg" in digests(tmp_path / "k")


def test_report_is_one_self_contained_file(smoke_model, source, tmp_path):
    pytest.importorskip("matplotlib", reason="the report's histogram needs matplotlib")
    report = tmp_path / "report.html"
    result = invoke(source, "--threshold", 3.0, "--store", tmp_path / "s.sqlite", "-m", smoke_model, "--report", report)
    assert result.exit_code == 1
    html = report.read_text()
    assert html.count('src="data:image/png;base64,') == 2  # the histogram and the kept-count curve
    assert 'alt="images kept by each threshold"' in html
    assert html.count('src="data:image/jpeg;base64,') >= 6  # thumbnails
    assert "threshold 3" in html and "broken.jpg" in html and "not an image" in html
    assert "http://" not in html and "https://" not in html and "src=\"file" not in html


def test_move_and_export(smoke_model, source, tmp_path):
    before = digests(source)
    store = tmp_path / "s.sqlite"
    result = invoke(source, "--threshold", 3.0, "--keep", tmp_path / "k", "--reject", tmp_path / "r", "--action",
                    "move", "--store", store, "-m", smoke_model, "--json", "--strategy", "fast")
    assert summary(result)["calls"] == {"no-think": 5}
    assert sorted(digests(source)) == ["broken.jpg"]  # an unplaced file is never removed
    placed = {**digests(tmp_path / "k"), **digests(tmp_path / "r")}
    assert sorted(placed.values()) == sorted(v for k, v in before.items() if k != "broken.jpg")
    exported = invoke("--store", store, "--export", tmp_path / "m.jsonl", "--json")
    assert exported.exit_code == 0 and summary(exported)["exported"] == 7
    rows = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert {r["verdict"] for r in rows} == {"keep", "reject"} and all(r["model"] == str(smoke_model) for r in rows)
    broken = next(r for r in rows if r["path"].endswith("broken.jpg"))
    assert broken["status"] == "image_error" and broken["score"] is None and broken["placed"] is None
    assert all(r["placed"] and Path(r["placed"]).is_file() for r in rows if r["status"] == "ok")



@pytest.mark.parametrize("action", ["copy", "link"])
def test_write_metadata(smoke_model, source, tmp_path, action):
    pyexiv2 = pytest.importorskip("pyexiv2", reason="writing XMP needs pyexiv2 (the metadata extra)")
    before = digests(source)
    keep, reject = tmp_path / "k", tmp_path / "r"
    invoke(source, "--threshold", 3.0, "--keep", keep, "--reject", reject, "--action", action, "--store",
           tmp_path / "s.sqlite", "-m", smoke_model, "--write-metadata")
    assert digests(source) == before
    images = [p for folder in (keep, reject) for p in folder.rglob("*") if p.is_file() and p.suffix != ".xmp"]
    assert len(images) == 6
    for image in images:
        sidecar = Path(f"{image}.xmp")
        assert sidecar.exists() == (action == "link")
        with pyexiv2.Image(str(sidecar if action == "link" else image)) as opened:
            rating = int(opened.read_xmp()["Xmp.xmp.Rating"])
        assert rating >= 3 if image.is_relative_to(keep) else rating <= 3  # scores of at least 3.0 are kept


def test_a_destination_failing_mid_run_stops_it_cleanly(smoke_model, source, tmp_path, monkeypatch):
    """A full disk cannot be provoked here: the copy step is made to fail (ENOSPC) from the third file on."""
    import errno

    import qponder_plugin.filter.placement as placement

    copy, calls = placement._PLACERS["copy"], []

    def failing(*args, **kwargs):
        calls.append(args)
        if len(calls) >= 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return copy(*args, **kwargs)

    store = tmp_path / "s.sqlite"
    args = (source, "--threshold", 3.0, "--keep", tmp_path / "k", "--reject", tmp_path / "r", "--store", store,
            "-m", smoke_model, "--json")
    monkeypatch.setitem(placement._PLACERS, "copy", failing)
    stopped = CliRunner().invoke(build(), ["filter", *map(str, args)])
    assert stopped.exit_code == 1 and "No space left on device" in stopped.output and "run again" in stopped.output
    with sqlite3.connect(store) as db:
        assert db.execute("SELECT count(*) FROM results").fetchone()[0] == 7  # committed before placing
        assert db.execute("SELECT state, count(*) FROM placements GROUP BY state").fetchall() == [("done", 2)]
    monkeypatch.undo()
    resumed = summary(invoke(*args))
    assert (resumed["model_calls"], resumed["placed"]) == (0, 4)
    placed = {**digests(tmp_path / "k"), **digests(tmp_path / "r")}
    assert len(placed) == 6 and not [name for name in placed if name.startswith(".")]
