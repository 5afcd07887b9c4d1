"""`qponder filter` killed with SIGKILL at several points, then run again: every input ends with exactly one result
row and one placed file (none for an unreadable one); nothing lost, duplicated or half-written."""

import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from smoke import solid_image

pytestmark = [pytest.mark.model, pytest.mark.slow]

KILL_POINTS = [  # (what the test waits to see in the store, how many) before it kills the run
    ("SELECT count(*) FROM readings", 1),  # the first chunk scored, its verdicts not yet committed
    ("SELECT count(*) FROM results", 9),  # the second chunk committed, its files being placed
    ("SELECT count(*) FROM placements WHERE state = 'pending'", 1),  # a placement under way
]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def count(store: Path, query: str) -> int:
    if not store.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=1) as db:
            return db.execute(query).fetchone()[0]
    except sqlite3.OperationalError:  # the tables are not created yet
        return 0


def command(args) -> list[str]:
    return [sys.executable, "-m", "qponder_plugin", "filter", *map(str, args)]


def kill_when(args, store: Path, query: str, at: int) -> bool:
    """Start the filter, SIGKILL it once ``query`` reaches ``at``; False if it finished first."""
    process = subprocess.Popen(command(args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    try:
        while process.poll() is None and time.monotonic() < deadline:
            if count(store, query) >= at:
                process.send_signal(signal.SIGKILL)
                process.wait()
                return True
            time.sleep(0.005)
        return False
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.parametrize("how", ["copy", "move"])
def test_killed_runs_resume_without_loss_or_duplicates(smoke_model, tmp_path, how):
    source = tmp_path / "src"
    (source / "sub").mkdir(parents=True)
    for index in range(18):
        solid_image(index / 17, 48, seed=500 + index).save(source / ("sub" if index % 3 else "") / f"img{index}.png")
    shutil.copy(source / "img0.png", source / "sub" / "again0.png")  # a duplicate
    (source / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    inputs = sorted(p for p in source.rglob("*") if p.is_file())
    before = {p: sha(p) for p in inputs}
    keep, reject, store = tmp_path / "keep", tmp_path / "reject", tmp_path / "store.sqlite"
    args = [source, "--threshold", 3.0, "--keep", keep, "--reject", reject, "--store", store, "-m", smoke_model,
            "--mode", how, "--batch-size", 2, "--json"]

    killed = [kill_when(args, store, query, at) for query, at in KILL_POINTS]
    assert killed[:2] == [True, True]  # the pending window is short: that kill is opportunistic
    final = subprocess.run(command(args), capture_output=True, text=True, timeout=600)
    assert final.returncode == 1, final.stderr  # the broken file
    summary = json.loads(final.stdout.strip().splitlines()[-1])
    assert summary["failed"] == 1 and summary["total"] == (len(inputs) if how == "copy" else summary["total"])

    with sqlite3.connect(store) as db:
        results = db.execute("SELECT path, status FROM results").fetchall()
        placements = db.execute("SELECT path, target, state FROM placements").fetchall()
        distinct = db.execute("SELECT count(DISTINCT digest) FROM results").fetchone()[0]
        fast_rows = db.execute("SELECT count(*) FROM readings WHERE mode = 'no-think'").fetchone()[0]
    assert sorted(path for path, _ in results) == sorted(map(str, inputs))  # one row per input
    assert [path for path, status in results if status != "ok"] == [str(source / "broken.jpg")]
    assert fast_rows == distinct == len(inputs) - 1  # each distinct content scored once
    readable = [p for p in inputs if p.name != "broken.jpg"]
    assert sorted(path for path, _, _ in placements) == sorted(map(str, readable))
    assert {state for _, _, state in placements} == {"done"}
    placed = [p for folder in (keep, reject) for p in folder.rglob("*") if p.is_file()]
    assert not [p for p in placed if p.name.startswith(".")]  # no part file left
    assert sorted(map(str, placed)) == sorted(target for _, target, _ in placements)
    assert sorted(map(sha, placed)) == sorted(before[p] for p in readable)
    left = sorted(p for p in source.rglob("*") if p.is_file())
    assert left == ([source / "broken.jpg"] if how == "move" else inputs)
    assert all(sha(p) == before[p] for p in left)

    rerun = subprocess.run(command(args), capture_output=True, text=True, timeout=600)
    again = json.loads(rerun.stdout.strip().splitlines()[-1])
    assert (again["model_calls"], again["placed"]) == (0, 0)
    assert os.listdir(keep) and sorted(p for folder in (keep, reject) for p in folder.rglob("*") if p.is_file()) == \
        sorted(placed)
