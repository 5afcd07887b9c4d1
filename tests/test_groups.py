"""Near-duplicate groups (`qponder filter --groups`, `--best-of-group K`) on real bursts made from real photos.

Bursts are frames made from BIQ2021 photos (small crops, shifted windows, JPEG re-encodes, slight resizes, mild
brightness changes, blur), mixed with distinct BIQ2021 photos and AGIQA-3K images. Also: capture times from EXIF,
best-of-group on the bundled nano model (the default model), the store's cache of looks, a run killed with SIGKILL
and resumed, the store's migration, and grouping speed on 10,000 hashes."""

import io
import json
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import ExifTags, Image, ImageEnhance, ImageFilter
from test_filter_resume import count

from qponder_plugin.cli import build
from qponder_plugin.filter.groups import BITS, DEFAULT_DISTANCE, Look, group_ids, look, not_best
from qponder_plugin.filter.store import STORE_VERSION, ResultStore
from qponder_plugin.spec import NANO, nano_installed

pytest.importorskip("imagehash", reason="--groups needs the filter extra (imagehash)")


def photos(labels: Path) -> list[Path]:
    return sorted((labels.parent / "images").glob("*.jpg"))


def jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def window(image: Image.Image, share: float, dx: float, dy: float) -> Image.Image:
    """A window ``share`` smaller than the photo, moved ``dx``, ``dy`` (shares of the size) from its centre: a
    frame of a hand-held burst."""
    w, h = image.size
    cw, ch = round(w * (1 - share)), round(h * (1 - share))
    left, top = round((w - cw) / 2 + dx * w), round((h - ch) / 2 + dy * h)
    return image.crop((left, top, left + cw, top + ch))


def frames(image: Image.Image) -> dict[str, Image.Image]:
    """Burst frames of one photo: crops of 1-3 %, shifted windows, re-encodes, resizes, brightness, blur."""
    w, h = image.size
    return {"original": image, "crop1": window(image, 0.01, 0, 0), "crop2": window(image, 0.02, 0, 0),
            "crop3": window(image, 0.03, 0, 0), "shift-left": window(image, 0.03, -0.015, 0.005),
            "shift-right": window(image, 0.03, 0.015, -0.01), "q50": jpeg(image, 50), "q75": jpeg(image, 75),
            "smaller": image.resize((round(w * 0.9), round(h * 0.9)), Image.Resampling.LANCZOS),
            "larger": image.resize((round(w * 1.1), round(h * 1.1)), Image.Resampling.LANCZOS),
            "darker": ImageEnhance.Brightness(image).enhance(0.92),
            "brighter": ImageEnhance.Brightness(window(image, 0.02, 0.01, 0)).enhance(1.08),
            "blurred": image.filter(ImageFilter.GaussianBlur(3))}


def distance(a: Look, b: Look) -> int:
    return int(np.unpackbits(np.frombuffer(a.hash, np.uint8) ^ np.frombuffer(b.hash, np.uint8)).sum())


def save_exif(image: Image.Image, path: Path, taken: str | None, subsec: str | None = None, quality: int = 95):
    exif = Image.Exif()
    if taken is not None:
        ifd = exif.get_ifd(ExifTags.IFD.Exif)
        ifd[ExifTags.Base.DateTimeOriginal] = taken
        if subsec is not None:
            ifd[ExifTags.Base.SubsecTimeOriginal] = subsec
    image.save(path, "JPEG", quality=quality, exif=exif)


def test_bursts_form_one_group_each_and_distinct_photos_none(biq2021_sample, agiqa_labels, tmp_path):
    from scipy.sparse.csgraph import minimum_spanning_tree

    biq, agiqa = photos(biq2021_sample), photos(agiqa_labels)
    sources = biq[::37][:8]
    distinct = [p for p in biq[5::8] if p not in sources][:36] + [p for p in agiqa if "sd1.5_normal" in p.name][::25]
    bursts: dict[str, list[str]] = {}
    for index, source in enumerate(sources):
        for name, frame in frames(Image.open(source).convert("RGB")).items():
            path = tmp_path / f"burst{index}-{name}.jpg"
            frame.save(path, quality=95)
            bursts.setdefault(source.name, []).append(str(path))
    paths = [p for members in bursts.values() for p in members] + list(map(str, distinct))
    looks = {p: look(p) for p in paths}  # keyed by path: every file here has its own content
    assert all(x.taken is None for x in looks.values())  # these JPEGs carry no capture time

    group_of = group_ids([(p, p) for p in paths], looks)
    burst_groups = [{group_of.get(p) for p in members} for members in bursts.values()]
    assert all(len(g) == 1 and None not in g for g in burst_groups), burst_groups
    assert len({next(iter(g)) for g in burst_groups}) == len(bursts)  # no two bursts share a group
    assert not [p for p in map(str, distinct) if p in group_of], "a distinct photo was grouped"

    shuffled = paths[:]
    random.Random(5).shuffle(shuffled)
    assert group_ids([(p, p) for p in shuffled], looks) == group_of  # independent of the input order

    # The figures that justify DEFAULT_DISTANCE: bursts against distinct images.
    limit = DEFAULT_DISTANCE * BITS
    to_original = [max(distance(looks[m[0]], looks[p]) for p in m) for m in bursts.values()]
    spanning = [minimum_spanning_tree(np.array([[distance(looks[a], looks[b]) + 0.5 for b in m] for a in m])).max()
                for m in bursts.values()]
    others = list(map(str, distinct))
    between = [distance(looks[a], looks[b]) for i, a in enumerate(others) for b in others[i + 1:]]
    across = [distance(looks[a], looks[b]) for a in others for m in bursts.values() for b in m]
    print(f"\n{len(paths)} images, {len(bursts)} bursts of {len(next(iter(bursts.values())))} frames; "
          f"bits of {BITS} that differ (default limit {limit:.0f}):")
    print(f"  burst frame to its original: max {max(to_original)} (per burst {to_original})")
    print(f"  longest link a burst needs (minimum spanning tree): max {max(spanning) - 0.5:.0f}")
    print(f"  distinct image to distinct image: min {min(between)}, 1st percentile {np.percentile(between, 1):.0f}")
    print(f"  distinct image to a burst frame: min {min(across)}")
    assert max(to_original) <= limit < min(min(between), min(across))


def test_capture_time_separates_photos_but_never_joins_them(biq2021_sample, tmp_path):
    biq = photos(biq2021_sample)
    photo, other = (Image.open(p).convert("RGB") for p in (biq[10], biq[200]))
    shots = {"a": (photo, "2024:05:01 10:00:00", "000"), "b": (jpeg(photo, 80), "2024:05:01 10:00:00", "500"),
             "c": (window(photo, 0.01, 0, 0), "2024:05:01 10:00:01", "900"),  # 1.4 s after b: the burst goes on
             "hour-later": (photo, "2024:05:01 11:00:00", None),  # the same view, another moment
             "other-view": (other, "2024:05:01 10:00:00", "300")}  # taken in the burst, but looks different
    looks = {}
    for name, (image, taken, subsec) in shots.items():
        save_exif(image, tmp_path / f"{name}.jpg", taken, subsec)
        looks[name] = look(str(tmp_path / f"{name}.jpg"))
    assert looks["b"].taken - looks["a"].taken == pytest.approx(0.5)
    assert looks["hour-later"].taken - looks["a"].taken == pytest.approx(3600)
    assert distance(looks["a"], looks["hour-later"]) == 0  # the same pixels: only the time tells them apart
    inputs = [(name, name) for name in looks]

    group_of = group_ids(inputs, looks)
    assert group_of["a"] == group_of["b"] == group_of["c"]
    assert "hour-later" not in group_of and "other-view" not in group_of
    assert set(group_ids(inputs, looks, window=1.0)) == {"a", "b"}  # c is 1.4 s after b
    by_look = group_ids(inputs, looks, window=float("inf"))
    assert by_look["a"] == by_look["hour-later"] and "other-view" not in by_look

    plain = tmp_path / "no-exif.jpg"
    photo.save(plain, quality=95)
    assert look(str(plain)).taken is None  # no EXIF: the look alone decides
    assert group_ids([*inputs, ("no-exif", "no-exif")], {**looks, "no-exif": look(str(plain))})["no-exif"] == \
        group_of["a"]


def test_best_of_group_ties_go_to_the_first_path():
    group_of = {"b.jpg": 1, "a.jpg": 1, "c.jpg": 1, "x.jpg": 2, "y.jpg": 2}
    scores = {"b.jpg": 3.0, "a.jpg": 3.0, "c.jpg": 4.0, "x.jpg": 2.0}  # y has no score: never ranked
    assert not_best(group_of, scores, 1) == {"a.jpg", "b.jpg"}
    assert not_best(group_of, scores, 2) == {"b.jpg"}
    assert not_best(group_of, scores, 1) == not_best(dict(reversed(group_of.items())), scores, 1)


def burst_folder(biq: list[Path], folder: Path) -> dict[str, str]:
    """Four bursts (a sharp frame and two blurred ones), an exact copy of one sharp frame, and four distinct
    photos; returns ``{file name: what it is}``."""
    folder.mkdir()
    kinds = {}
    for index, source in enumerate(biq[::37][:4]):
        photo = Image.open(source).convert("RGB")
        photo.save(folder / f"b{index}-sharp.jpg", quality=95)
        window(photo, 0.01, 0, 0).filter(ImageFilter.GaussianBlur(3)).save(folder / f"b{index}-blur3.jpg", quality=95)
        window(photo, 0.02, 0.01, 0).filter(ImageFilter.GaussianBlur(5)).save(folder / f"b{index}-blur5.jpg",
                                                                              quality=90)
        kinds.update({f"b{index}-sharp.jpg": f"sharp{index}", f"b{index}-blur3.jpg": f"blurred{index}",
                      f"b{index}-blur5.jpg": f"blurred{index}"})
    (folder / "b0-sharp2.jpg").write_bytes((folder / "b0-sharp.jpg").read_bytes())  # a tie: the first path wins
    kinds["b0-sharp2.jpg"] = "copy0"
    for source in biq[120:124]:
        name = "distinct-" + source.name.replace(" ", "").replace("(", "").replace(")", "")
        (folder / name).write_bytes(source.read_bytes())
        kinds[name] = "distinct"
    return kinds


@pytest.mark.model
@pytest.mark.slow
@pytest.mark.skipif(not nano_installed(), reason=f"the bundled nano model is missing from {NANO}")
def test_best_of_group_keeps_the_sharp_frame_on_the_nano_model(biq2021_sample, tmp_path, monkeypatch):
    monkeypatch.delenv("QPONDER_MODEL", raising=False)
    kinds = burst_folder(photos(biq2021_sample), tmp_path / "shoot")
    keep, reject, store, report = tmp_path / "keep", tmp_path / "reject", tmp_path / "s.sqlite", tmp_path / "r.html"
    # Threshold 1: every frame passes it, so only best-of-group can reject one.
    args = ["filter", str(tmp_path / "shoot"), "--threshold", "1", "--best-of-group", "1", "--strategy", "fast",
            "--keep", str(keep), "--reject", str(reject), "--store", str(store), "--report", str(report), "--json"]
    result = CliRunner().invoke(build(), args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    with sqlite3.connect(store) as db:
        rows = {Path(p).name: (score, bool(passed), note, group) for p, score, passed, note, group in
                db.execute("SELECT path, score, passed, note, group_id FROM results")}
    for name in sorted(rows):
        print(f"{name:28s} {kinds[name]:10s} score {rows[name][0]:.3f} group {rows[name][3]} "
              f"{'keep' if rows[name][1] else 'reject'} {rows[name][2] or ''}")

    assert (summary["total"], summary["groups"], summary["culled"], summary["kept"]) == (17, 4, 9, 8)
    kept = sorted(n for n, k in kinds.items() if k.startswith(("sharp", "distinct")))
    assert sorted(p.name for p in keep.iterdir()) == kept
    assert sorted(p.name for p in reject.iterdir()) == sorted(set(kinds) - set(kept))
    for name, kind in kinds.items():
        score, passed, note, group = rows[name]
        if kind == "distinct":
            assert group is None and passed and note is None
        else:
            assert group == rows[f"b{kind[-1]}-sharp.jpg"][3]
            assert passed == kind.startswith("sharp") and (note == f"not among the best 1 of group {group}") != passed
    html = report.read_text()
    assert "Groups of near-duplicates (4)" in html and html.count("class=\"frame\"") == 13

    # The rerun reads scores and looks from the store: no model call, no image decoded for its hash.
    monkeypatch.setattr("qponder_plugin.filter.engine.look", lambda source: pytest.fail(f"{source} decoded again"))
    again = CliRunner().invoke(build(), [*args[:5], "2", *args[6:]], catch_exceptions=False)
    rerun = json.loads(again.stdout.strip().splitlines()[-1])
    assert (rerun["model_calls"], rerun["cached"], rerun["groups"], rerun["culled"]) == (0, 17, 4, 5)
    with sqlite3.connect(store) as db:
        kept = {Path(p).name for (p,) in db.execute("SELECT path FROM results WHERE passed")}
    best_two = {n for group in {r[3] for r in rows.values()} - {None}
                for n in sorted((n for n in rows if rows[n][3] == group), key=lambda n: (-rows[n][0], n))[:2]}
    assert kept == best_two | {n for n, k in kinds.items() if k == "distinct"}
    export = tmp_path / "m.jsonl"
    assert CliRunner().invoke(build(), ["filter", "--export", str(export), "--store", str(store)]).exit_code == 0
    exported = {Path(r["path"]).name: r["group"] for r in map(json.loads, export.read_text().splitlines())}
    assert exported == {name: rows[name][3] for name in rows}


@pytest.mark.model
@pytest.mark.slow
def test_a_grouped_run_killed_while_scoring_resumes(smoke_model, biq2021_sample, tmp_path):
    kinds = burst_folder(photos(biq2021_sample), tmp_path / "shoot")
    keep, reject, store = tmp_path / "keep", tmp_path / "reject", tmp_path / "s.sqlite"
    command = [sys.executable, "-m", "qponder_plugin", "filter", str(tmp_path / "shoot"), "--threshold", "1",
               "--best-of-group", "1", "--keep", str(keep), "--reject", str(reject), "--store", str(store),
               "-m", str(smoke_model), "--batch-size", "1", "--json"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 600
        while process.poll() is None and time.monotonic() < deadline and count(store, "SELECT count(*) FROM looks") < 1:
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
        process.wait()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    read = count(store, "SELECT count(*) FROM readings")
    distinct = len(kinds) - 1  # the exact copy is scored once
    assert 0 < read < distinct and count(store, "SELECT count(*) FROM results") == 0  # killed before any verdict

    final = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert final.returncode == 0, final.stderr
    summary = json.loads(final.stdout.strip().splitlines()[-1])
    assert summary["model_calls"] == distinct - read and summary["total"] == len(kinds) and summary["groups"] == 4
    assert count(store, "SELECT count(*) FROM readings") == count(store, "SELECT count(*) FROM looks") == distinct
    assert count(store, "SELECT count(*) FROM results WHERE group_id IS NOT NULL") == len(kinds) - 4
    placed = sorted(p.name for folder in (keep, reject) for p in folder.iterdir())
    assert placed == sorted(kinds) and not [p for p in placed if p.startswith(".")]
    assert len(list(keep.iterdir())) == 8  # one of each burst, and the four distinct photos
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert json.loads(rerun.stdout.strip().splitlines()[-1])["model_calls"] == 0


def test_grouping_ten_thousand_images_is_quick():
    rng = np.random.default_rng(7)
    looks = [Look(np.packbits(rng.integers(0, 2, BITS, dtype=np.uint8)).tobytes()) for _ in range(10_000)]
    planted = []
    for base in range(0, 500, 5):  # 100 groups of five: four frames near each base (≤ 40 bits flipped)
        bits = np.unpackbits(np.frombuffer(looks[base].hash, np.uint8))
        for offset in range(1, 5):
            frame = bits.copy()
            frame[rng.choice(BITS, 40, replace=False)] ^= 1
            looks[base + offset] = Look(np.packbits(frame).tobytes())
        planted.append({f"{n:05d}" for n in range(base, base + 5)})
    start = time.perf_counter()
    group_of = group_ids([(f"{n:05d}", f"{n:05d}") for n in range(len(looks))],
                         {f"{n:05d}": x for n, x in enumerate(looks)})
    took = time.perf_counter() - start
    print(f"\ngrouping 10,000 images: {took:.2f} s")
    groups: dict[int, set[str]] = {}
    for path, number in group_of.items():
        groups.setdefault(number, set()).add(path)
    assert sorted(map(sorted, groups.values())) == sorted(map(sorted, planted))


def test_group_flags_are_checked_before_anything_runs(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"")
    cases = {("--groups", "--engine", "ray"): "leave out --engine ray",
             ("--best-of-group", "2", "--action", "move"): "use --action copy or link",
             ("--group-distance", "0.2"): "need --groups or --best-of-group",
             ("--best-of-group", "0"): "0 is not in the range"}
    for flags, message in cases.items():
        result = CliRunner().invoke(build(), ["filter", str(tmp_path), "--threshold", "3", *flags])
        assert result.exit_code == 2 and message in result.output, (flags, result.output)


def test_a_version_2_store_gains_the_group_column(tmp_path):
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as db:
        db.executescript("""
            CREATE TABLE results (path TEXT NOT NULL, config TEXT NOT NULL, digest TEXT, status TEXT NOT NULL,
                score REAL, passed INTEGER, stage TEXT, flagged INTEGER, note TEXT, mode TEXT, threshold REAL,
                strategy TEXT, model TEXT, reasoning TEXT, error TEXT, updated REAL NOT NULL,
                PRIMARY KEY (path, config));
            INSERT INTO results VALUES ('a.jpg', 'k', 'd', 'ok', 3.5, 1, 'fast', 0, NULL, 'no-think', 3.0, 'cascade',
                'm', NULL, NULL, 1.0);
            PRAGMA user_version = 2;""")
    with ResultStore(path) as store:
        assert store.db.execute("PRAGMA user_version").fetchone()[0] == STORE_VERSION == 3
        (row,) = store.export_rows()
        assert (row["path"], row["score"], row["verdict"], row["group"]) == ("a.jpg", 3.5, "keep", None)
        store.save_looks("m", {"d": (b"\x01" * 64, None)})
        assert store.looks(["d", "e"], "m") == {"d": (b"\x01" * 64, None)}
