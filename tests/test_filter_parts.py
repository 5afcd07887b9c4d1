"""The filter's parts without a model: inputs from folders and lists, the store, placement that never destroys."""

import csv
import importlib.util
import os

import pytest
from smoke import solid_image

from qponder_plugin.filter.fingerprint import config_key, file_digest, scoring_config
from qponder_plugin.filter.manifest import export_manifest
from qponder_plugin.filter.placement import PlacementError, check_writable, part_file, place, resume
from qponder_plugin.filter.sources import collect_inputs
from qponder_plugin.filter.store import Placement, ResultStore
from qponder_plugin.result import Assessment


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "src"
    (root / "sub" / "deeper").mkdir(parents=True)
    for name, level in (("a.png", 0.2), ("sub/b.jpg", 0.5), ("sub/deeper/c.png", 0.8)):
        solid_image(level, 40, seed=len(name)).save(root / name)
    (root / "notes.md").write_text("not an image")
    return root


def test_sources_from_folders_files_and_lists(tree, tmp_path):
    found = collect_inputs([tree])
    assert [i.relname for i in found] == ["a.png", os.path.join("sub", "b.jpg"), os.path.join("sub", "deeper", "c.png")]
    listing = tmp_path / "list.txt"
    listing.write_text(f"# chosen\nsrc/a.png\n\n{tree / 'sub' / 'b.jpg'}\nsrc/missing.png\n")
    table = tmp_path / "table.csv"
    with open(table, "w", newline="", encoding="utf-8-sig") as handle:  # a byte-order mark, as spreadsheets write
        csv.writer(handle).writerows([["label", "path"], ["x", "src/sub/deeper/c.png"], ["y", "src/a.png"]])
    mixed = collect_inputs([listing, table, tree / "sub" / "b.jpg"])
    assert [os.path.relpath(i.path, tmp_path) for i in mixed] == [
        os.path.join("src", "a.png"), os.path.join("src", "sub", "b.jpg"), os.path.join("src", "missing.png"),
        os.path.join("src", "sub", "deeper", "c.png")]  # each input once, a missing entry kept (it gets a status)
    assert [i.relname for i in collect_inputs([tree], include=["*.png"], exclude=["*deeper*"])] == ["a.png"]


def test_parquet_list_needs_pyarrow(tree, tmp_path):
    pa = pytest.importorskip("pyarrow", reason="parquet lists need pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"image": [str(tree / "a.png"), str(tree / "sub" / "b.jpg")]}), tmp_path / "l.parquet")
    assert [i.relname for i in collect_inputs([tmp_path / "l.parquet"])] == ["a.png", "b.jpg"]


def test_scoring_config_changes_with_what_changes_a_score(tmp_path):
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    (checkpoint / "model.safetensors").write_bytes(b"weights v1")
    (checkpoint / "qponder.json").write_text('{"profile": "qponder"}')
    base = scoring_config(checkpoint)
    assert base["profile"] == "qponder" and base["model"] == str(checkpoint)
    assert config_key(base) == config_key(scoring_config(checkpoint))
    assert config_key(base) != config_key(scoring_config(checkpoint, profile="qwen2.5-vl-instruct"))
    assert config_key(base) != config_key(scoring_config(checkpoint, max_pixels=1000))
    assert config_key(base) == config_key(scoring_config(checkpoint, settings={"concurrency": 64, "timeout": 9}))
    assert config_key(base) != config_key(scoring_config(checkpoint, settings={"dtype": "float16"}))
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes(b"one")
    with_adapter = scoring_config(checkpoint, settings={"lora": str(adapter)})
    (adapter / "adapter_model.safetensors").write_bytes(b"two")
    assert config_key(with_adapter) != config_key(scoring_config(checkpoint, settings={"lora": str(adapter)}))
    (checkpoint / "model.safetensors").write_bytes(b"weights v2")
    assert config_key(base) != config_key(scoring_config(checkpoint))
    assert scoring_config("TianheWu/VisualQuality-R1-7B")["weights"].startswith("hub:TianheWu/VisualQuality-R1-7B@")


def test_store_round_trip_and_export(tmp_path):
    with ResultStore(tmp_path / "s.sqlite") as store:
        reading = Assessment(score=3.5, normalized=0.625, reasoning="fine", source="x.png", mode="think")
        store.save_readings("k", {"d1": reading})
        assert store.readings(["d1", "d2"], "k", "think") == {"d1": reading}
        assert store.readings(["d1"], "k", "no-think") == {}
        store.save_results("k", [{"path": "x.png", "digest": "d1", "status": "ok", "score": 3.5, "passed": True,
                                  "stage": "think", "reasoning": "fine", "model": "m"}])
        store.set_placement(Placement("x.png", "keep", "keep/x.png", "copy", "d1", "done"))
        for name in ("m.jsonl", "m.csv"):
            assert export_manifest(store, tmp_path / name) == 1
        if importlib.util.find_spec("pyarrow"):  # parquet is optional
            import pyarrow.parquet as pq

            assert export_manifest(store, tmp_path / "m.parquet") == 1
            assert pq.read_table(tmp_path / "m.parquet").to_pylist()[0]["verdict"] == "keep"
        with pytest.raises(ValueError, match="suffix"):
            export_manifest(store, tmp_path / "m.txt")
    with open(tmp_path / "m.csv", newline="") as handle:
        row = next(csv.DictReader(handle))
    assert (row["path"], row["hash"], row["verdict"], row["reasoning"], row["placed"]) == (
        "x.png", "d1", "keep", "fine", "keep/x.png")


def test_placement_never_overwrites_and_places_once(tree, tmp_path):
    source = str(tree / "a.png")
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "a.png").write_bytes(b"someone else's file")
    with ResultStore(tmp_path / "s.sqlite") as store:
        digest = store.digest(source)
        target, new = place(store, source, digest, str(keep), "a.png", "copy")
        assert new and target == str(keep / "a-1.png") and file_digest(target) == digest
        assert place(store, source, digest, str(keep), "a.png", "copy") == (target, False)
    assert (keep / "a.png").read_bytes() == b"someone else's file"
    assert sorted(os.listdir(keep)) == ["a-1.png", "a.png"]


def test_link_and_move(tree, tmp_path):
    source, moved = str(tree / "a.png"), str(tree / "sub" / "b.jpg")
    with ResultStore(tmp_path / "s.sqlite") as store:
        linked, _ = place(store, source, store.digest(source), str(tmp_path / "links"), "a.png", "link")
        assert os.path.samefile(linked, source)
        digest = store.digest(moved)
        target, _ = place(store, moved, digest, str(tmp_path / "moved"), "b.jpg", "move")
        assert not os.path.exists(moved) and file_digest(target) == digest
        assert store.placement(moved, str(tmp_path / "moved")).state == "done"


def test_resume_settles_what_a_kill_left(tree, tmp_path):
    source = str(tree / "a.png")
    keep = tmp_path / "keep"
    keep.mkdir()
    with ResultStore(tmp_path / "s.sqlite") as store:
        digest = store.digest(source)
        # killed after linking the part file into place, before recording "done"
        done_target = str(keep / "a.png")
        (keep / "a.png").write_bytes(open(source, "rb").read())
        (keep / ".a.png.qponder-part").write_bytes(b"half")
        store.set_placement(Placement(source, str(keep), done_target, "copy", digest, "pending"))
        # killed half-way through the copy of another file
        other = str(tree / "sub" / "b.jpg")
        half = str(keep / "b.jpg")
        open(part_file(half), "wb").write(b"half a jpeg")
        store.set_placement(Placement(other, str(keep), half, "copy", store.digest(other), "pending"))
        assert resume(store) == 2
        assert store.placement(source, str(keep)).state == "done" and store.placement(other, str(keep)) is None
        assert sorted(os.listdir(keep)) == ["a.png"]
        assert place(store, source, digest, str(keep), "a.png", "copy") == (done_target, False)


def test_an_unwritable_destination_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(PlacementError, match="cannot write"):
        check_writable(str(blocker / "keep"))

