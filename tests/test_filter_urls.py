"""`qponder filter` on tables with a URL column (served over HTTP by the test): each URL is fetched, hashed and
scored like a local file, an unreachable or broken one is a row with its reason, a rerun scores nothing, and URLs
are never placed into folders."""

import csv
import json
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner
from smoke import solid_image

from qponder_plugin.cli import build
from qponder_plugin.filter.sources import collect_inputs
from qponder_plugin.images import ImageError, load_image

pytest.importorskip("fsspec", reason="URL inputs need fsspec (the filter extra)")
LEVELS = {"dark.png": 0.1, "mid.jpg": 0.5, "bright.png": 0.9}


def invoke(*args):
    return CliRunner().invoke(build(), ["filter", *map(str, args)], catch_exceptions=False)


@pytest.fixture
def served(tmp_path, serve):
    """A served folder of three images and a broken one, and a CSV table of their URLs plus a missing one."""
    folder = tmp_path / "site"
    folder.mkdir()
    for index, (name, level) in enumerate(LEVELS.items()):
        solid_image(level, 64, seed=90 + index).save(folder / name)
    (folder / "broken.jpg").write_bytes(b"an HTML error page, say")
    base = serve(folder)
    table = tmp_path / "table.csv"
    with open(table, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["caption", "url"])
        for name in [*LEVELS, "broken.jpg", "gone.png", "dark.png"]:  # the last: a repeated URL, listed once
            writer.writerow([f"a photo called {name}", f"{base}/{name}?size=64"])
    return folder, base, table


def test_a_url_column_lists_urls_once_named_by_their_file(served):
    _, base, table = served
    inputs = collect_inputs([str(table)])
    assert [i.path for i in inputs] == [f"{base}/{n}?size=64" for n in [*LEVELS, "broken.jpg", "gone.png"]]
    assert [i.relname for i in inputs] == [*LEVELS, "broken.jpg", "gone.png"]


def test_the_core_loader_fetches_urls_and_names_what_failed(served):
    folder, base, _ = served
    assert load_image(f"{base}/mid.jpg").size == load_image(folder / "mid.jpg").size
    with pytest.raises(ImageError, match="gone.png: not found"):
        load_image(f"{base}/gone.png")
    with pytest.raises(ImageError, match="not an image"):
        load_image(f"{base}/broken.jpg")


@pytest.mark.model
def test_urls_are_scored_like_files_and_a_rerun_scores_nothing(smoke_model, served, tmp_path):
    folder, base, table = served
    local, remote = tmp_path / "local.sqlite", tmp_path / "remote.sqlite"
    assert invoke(folder, "--threshold", 3, "--store", local, "-m", smoke_model).exit_code == 1  # broken.jpg
    first = invoke(table, "--threshold", 3, "--store", remote, "-m", smoke_model, "--json")
    assert first.exit_code == 1, first.output
    stats = json.loads(first.stdout.splitlines()[-1])
    assert (stats["total"], stats["failed"], stats["scored"]) == (5, 2, 4)  # the missing one is not scored

    def results(store: Path) -> dict[str, tuple]:
        with sqlite3.connect(store) as db:
            rows = db.execute("SELECT path, digest, status, score, passed, error FROM results")
            return {Path(row[0].split("?")[0]).name: row[1:] for row in rows}

    want, got = results(local), results(remote)
    for name in LEVELS:
        assert got[name][:4] == want[name][:4], name  # same bytes, same hash, same score and verdict
    assert got["broken.jpg"][1] == "image_error" and "not an image" in got["broken.jpg"][4]
    assert got["gone.png"] == (None, "image_error", None, 0, f"{base}/gone.png?size=64: not found")

    again = json.loads(invoke(table, "--threshold", 3, "--store", remote, "-m", smoke_model, "--json")
                       .stdout.splitlines()[-1])
    assert (again["model_calls"], again["scored"], again["cached"]) == (0, 0, 4)


def test_urls_are_never_placed_into_folders(served, tmp_path):
    _, _, table = served
    result = CliRunner().invoke(build(), ["filter", str(table), "--threshold", "3", "--keep", str(tmp_path / "k")])
    assert result.exit_code == 2 and "5 inputs are URLs" in result.output and "cannot be placed" in result.output
    assert not (tmp_path / "k").exists()
