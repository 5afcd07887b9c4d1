"""Ratings and reject flags where photo managers read them: read back by exiftool and by darktable itself; an
existing darktable sidecar (its whole edit history) merged, never replaced, compared as an RDF graph; and a writer
killed with SIGKILL mid-write leaves the old sidecar or the new one, never a broken one.

``data/darktable-4.2.1-shot.dng.xmp`` is a sidecar darktable 4.2.1 wrote here for a DNG of a BIQ2021 photo
(``darktable.edit``: rated, colour-labelled, tagged, titled, opened in the darkroom, which applied its default raw
history of ten modules); the test that runs darktable makes a fresh one the same way.
"""

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from xml.etree import ElementTree

import pytest
from PIL import Image

from qponder_plugin.filter.metadata import (
    NAMESPACE,
    PREFIX,
    embed,
    merge_sidecar,
    sidecar_paths,
    stars,
    write_sidecars,
    xmp_fields,
)

pytest.importorskip("pyexiv2", reason="writing XMP needs pyexiv2 (the filter extra)")
FIXTURE = Path(__file__).parent / "data" / "darktable-4.2.1-shot.dng.xmp"
RDF = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
RATING = "http://ns.adobe.com/xap/1.0/Rating"
KEPT = xmp_fields(4.21, "Sharp, well exposed.", "qponder-smoke")
REJECTED = xmp_fields(1.62, "Motion blur across the frame.", "qponder-smoke", rejected=True)


@pytest.fixture
def photo(biq2021_sample) -> Image.Image:
    """A real photo: one of the BIQ2021 sample's."""
    return Image.open(biq2021_sample.parent / "images" / "ss01 (1062).jpg").convert("RGB")


def sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def exiftool(path) -> dict:
    if shutil.which("exiftool") is None:
        pytest.skip("exiftool not installed (scripts/system-packages installs libimage-exiftool-perl)")
    done = subprocess.run(["exiftool", "-j", "-G1", "-XMP:all", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)[0]


def graph(path):
    """The sidecar's RDF graph (its rdf:RDF element, parsed by rdflib: attribute and element forms, arrays as
    rdf:_1, rdf:_2, … in order, blank nodes compared by structure)."""
    rdflib = pytest.importorskip("rdflib", reason="comparing sidecars as RDF needs rdflib (the dev extra)")
    root = ElementTree.fromstring(Path(path).read_bytes())
    rdf = root if root.tag == f"{{{RDF}}}RDF" else root.find(f".//{{{RDF}}}RDF")
    return rdflib.Graph().parse(data=ElementTree.tostring(rdf), format="xml", publicID="urn:sidecar")


def split(path):
    """(every triple we did not write, ours as {name: value})."""
    import rdflib

    everything, others, ours = graph(path), rdflib.Graph(), {}
    for subject, predicate, value in everything:
        if str(predicate) == RATING or str(predicate).startswith(NAMESPACE):
            ours[str(predicate).rsplit("/", 1)[-1]] = str(value)
        else:
            others.add((subject, predicate, value))
    return others, ours


def assert_same_graph(before, after):
    from rdflib.compare import graph_diff, isomorphic, to_isomorphic

    if not isomorphic(before, after):
        _, lost, gained = graph_diff(to_isomorphic(before), to_isomorphic(after))
        pytest.fail(f"lost: {sorted(map(str, lost))[:10]}\ngained: {sorted(map(str, gained))[:10]}")


def expected(fields: dict) -> dict:
    return {"Rating": fields["Xmp.xmp.Rating"], **{k.rsplit(".", 1)[1]: v for k, v in fields.items()
                                                   if k.startswith(f"Xmp.{PREFIX}.") and v is not None}}


def test_the_score_to_stars_map_and_the_reject_value():
    scores = [1.0, 1.49, 1.5, 2.49, 2.5, 3.49, 3.5, 4.49, 4.5, 5.0]
    assert [stars(s) for s in scores] == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert xmp_fields(4.9, None, "m", rejected=True)["Xmp.xmp.Rating"] == "-1"  # rejected whatever the score


@pytest.mark.parametrize("naming, names", [("darktable", ["a.jpg.xmp"]), ("lightroom", ["a.xmp"]),
                                           ("both", ["a.jpg.xmp", "a.xmp"])])
def test_exiftool_reads_sidecars_in_each_naming(tmp_path, photo, naming, names):
    image = tmp_path / "a.jpg"
    photo.save(image, quality=92)
    before = sha(image)
    for fields in (KEPT, REJECTED):  # the second run merges into the first's sidecars
        written = write_sidecars(str(image), fields, naming)
        assert [Path(p).name for p in written] == names
        for sidecar in written:
            tags = exiftool(sidecar)
            assert tags["XMP-xmp:Rating"] == int(fields["Xmp.xmp.Rating"])
            assert tags["XMP-qponder:Score"] == float(fields[f"Xmp.{PREFIX}.Score"])
            assert tags["XMP-qponder:Model"] == "qponder-smoke"
            assert tags["XMP-qponder:Reasoning"] == fields[f"Xmp.{PREFIX}.Reasoning"]
    assert sha(image) == before and sorted(p.name for p in tmp_path.iterdir()) == sorted(["a.jpg", *names])


def test_exiftool_reads_the_embedded_rating_of_a_copy(tmp_path, photo):
    copy = tmp_path / "copy.jpg"
    photo.save(copy, quality=92)
    embed(str(copy), REJECTED)
    tags = exiftool(copy)
    assert tags["XMP-xmp:Rating"] == -1 and tags["XMP-qponder:Score"] == 1.62


def test_lightroom_name_belongs_to_the_raw_of_a_raw_and_jpeg_pair(tmp_path):
    (tmp_path / "IMG_1.CR3").write_bytes(b"raw")
    (tmp_path / "IMG_1.JPG").write_bytes(b"jpeg")
    (tmp_path / "IMG_2.JPG").write_bytes(b"jpeg")
    assert sidecar_paths(str(tmp_path / "IMG_1.JPG"), "both") == [str(tmp_path / "IMG_1.JPG.xmp")]
    assert sidecar_paths(str(tmp_path / "IMG_1.CR3"), "lightroom") == [str(tmp_path / "IMG_1.xmp")]
    assert sidecar_paths(str(tmp_path / "IMG_2.JPG"), "lightroom") == [str(tmp_path / "IMG_2.xmp")]


def merge_keeps_everything_else(sidecar: Path):
    others_before, ours_before = split(sidecar)
    assert ours_before == {"Rating": "2"}  # darktable's own rating, which ours replaces
    history = [str(o) for s, p, o in graph(sidecar) if str(p) == "http://darktable.sf.net/operation"]
    assert len(history) >= 5  # a real history stack
    os.chmod(sidecar, 0o640)
    for fields in (KEPT, REJECTED, xmp_fields(3.1, None, "other-model")):
        assert write_sidecars(str(sidecar)[:-len(".xmp")], fields, "darktable") == [str(sidecar)]
        others, ours = split(sidecar)
        assert_same_graph(others_before, others)
        assert ours == expected(fields)  # a reasoning left by the run before is removed with the new one's absent
    assert os.stat(sidecar).st_mode & 0o777 == 0o640
    assert sorted(p.name for p in sidecar.parent.iterdir() if p.name.startswith(".")) == []  # no part left


def test_merging_keeps_a_darktable_sidecar_and_its_history(tmp_path):
    sidecar = tmp_path / "shot.dng.xmp"
    shutil.copy(FIXTURE, sidecar)
    merge_keeps_everything_else(sidecar)


@pytest.mark.slow
def test_merging_keeps_a_sidecar_darktable_writes_now(tmp_path, photo):
    import darktable
    from dng import write_dng

    image = tmp_path / "shot.dng"
    write_dng(image, photo, preview=photo)
    merge_keeps_everything_else(darktable.edit(image, tmp_path))


def test_a_sidecar_that_is_not_xmp_is_left_alone(tmp_path, caplog):
    image, sidecar = tmp_path / "a.jpg", tmp_path / "a.jpg.xmp"
    image.write_bytes(b"")
    sidecar.write_text("my notes, not XMP")
    assert write_sidecars(str(image), KEPT) == []
    assert sidecar.read_text() == "my notes, not XMP" and "sidecar not written" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jpg", "a.jpg.xmp"]


def test_darktable_reads_our_ratings_rejects_and_its_merged_history(tmp_path, photo):
    """darktable-cli imports each image with the sidecar it finds (NAME.EXT.xmp) and writes what it read into the
    exported JPEG's XMP: our rating, -1 as rejected, and the history stack of the merged sidecar."""
    import darktable
    from dng import write_dng

    darktable.need("darktable-cli")
    cases = {"kept.jpg": (KEPT, "darktable"), "rejected.jpg": (REJECTED, "darktable"),
             "both.jpg": (REJECTED, "both")}
    for name, (fields, naming) in cases.items():
        photo.save(tmp_path / name, quality=92)
        write_sidecars(str(tmp_path / name), fields, naming)
        read = darktable.export(tmp_path / name, tmp_path / f"out-{name}", tmp_path / f"config-{name}")
        assert read["Xmp.xmp.Rating"] == fields["Xmp.xmp.Rating"], name
    raw = tmp_path / "shot.dng"
    write_dng(raw, photo, preview=photo)
    shutil.copy(FIXTURE, tmp_path / "shot.dng.xmp")
    write_sidecars(str(raw), REJECTED)
    operations = [str(o) for s, p, o in sorted(graph(FIXTURE)) if str(p) == "http://darktable.sf.net/operation"]
    read = darktable.export(raw, tmp_path / "out-shot.jpg", tmp_path / "config-shot")
    assert read["Xmp.xmp.Rating"] == "-1"
    exported = [v for k, v in read.items() if k.startswith("Xmp.darktable.history[") and k.endswith("operation")]
    assert sorted(exported) == sorted(operations)


WRITER = """
import sys
from qponder_plugin.filter.metadata import merge_sidecar, xmp_fields
fields = [xmp_fields(4.21, "Sharp.", "a"), xmp_fields(1.62, "Blurred.", "b", rejected=True)]
count = 0
while True:
    merge_sidecar(sys.argv[1], fields[count % 2])
    count += 1
    print(count, flush=True)
"""


def test_a_writer_killed_mid_write_leaves_the_old_or_the_new_sidecar(tmp_path):
    sidecar = tmp_path / "shot.dng.xmp"
    shutil.copy(FIXTURE, sidecar)
    others_before, original = split(sidecar)
    versions = [original, expected(xmp_fields(4.21, "Sharp.", "a")),
                expected(xmp_fields(1.62, "Blurred.", "b", rejected=True))]
    rng, writes = random.Random(7), []
    for _ in range(8):
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(sidecar)], stdout=subprocess.PIPE, text=True)
        first = writer.stdout.readline()  # it is writing in a loop now
        time.sleep(rng.uniform(0.0, 0.3))
        writer.send_signal(signal.SIGKILL)
        writes.append(int((first + writer.communicate()[0]).split()[-1]))
        others, ours = split(sidecar)  # it parses: a complete file
        assert ours in versions
        assert_same_graph(others_before, others)
    assert writer.returncode == -signal.SIGKILL and sum(writes) > 8, writes  # killed while writing, many times
    merge_sidecar(str(sidecar), KEPT)  # the next writer clears the part files the killed ones left
    assert [p.name for p in tmp_path.iterdir()] == ["shot.dng.xmp"]


def test_write_metadata_flags(tmp_path):
    from click.testing import CliRunner

    from qponder_plugin.cli import build
    from qponder_plugin.filter.command import filter_command

    def parsed(*args):
        return filter_command.make_context("filter", list(args)).params

    assert parsed("--write-metadata", "shoot", "-t", "3")["write_metadata"] == "auto"  # the bare flag, as before
    assert parsed("shoot", "--write-metadata")["write_metadata"] == "auto"
    assert parsed("shoot", "--write-metadata", "sidecar", "--sidecar", "both")["write_metadata"] == "sidecar"
    assert parsed("--write-metadata", "both", "shoot")["sources"] == ("shoot",)
    assert parsed("shoot")["write_metadata"] is None

    shoot = tmp_path / "shoot"
    shoot.mkdir()
    Image.new("RGB", (8, 8)).save(shoot / "a.jpg")

    def refused(*args) -> str:
        result = CliRunner().invoke(build(), ["filter", *map(str, [*args, "-t", 3, "--store", tmp_path / "s.db"])])
        assert result.exit_code == 2, result.output
        return result.output

    assert "copies only" in refused(shoot, "--write-metadata", "embedded")  # nothing to copy: sources stay as is
    assert "copies only" in refused(shoot, "--write-metadata", "embedded", "--keep", tmp_path / "k", "--action",
                                    "link")
    assert "--sidecar" in refused(shoot, "--sidecar", "lightroom")
    assert "URLs" in refused("https://example.invalid/a.jpg", "--write-metadata")


@pytest.mark.model
@pytest.mark.parametrize("action", ["copy", "move"])
def test_a_darktable_sidecar_travels_with_its_photo(smoke_model, photo, tmp_path, action):
    """A photo's own darktable sidecar (its edit history) goes where the photo goes: copied beside a copy (the
    source's left as it was), moved with a move; our rating is then merged into the placed one."""
    from click.testing import CliRunner

    from qponder_plugin.cli import build

    shoot = tmp_path / "shoot"
    shoot.mkdir()
    photo.save(shoot / "a.jpg", quality=90)
    shutil.copyfile(FIXTURE, shoot / "a.jpg.xmp")
    history, before = split(FIXTURE)[0], sha(shoot / "a.jpg.xmp")
    result = CliRunner().invoke(build(), ["filter", str(shoot), "-t", "1", "--keep", str(tmp_path / "keep"),
                                          "--store", str(tmp_path / "s.db"), "-m", str(smoke_model), "--strategy",
                                          "fast", "--action", action, "--write-metadata", "sidecar"])
    assert result.exit_code == 0, result.output
    placed = tmp_path / "keep" / "a.jpg.xmp"
    others, ours = split(placed)
    assert_same_graph(history, others)
    assert ours["Rating"] in {"1", "2", "3", "4", "5"} and "Score" in ours
    if action == "copy":
        assert sha(shoot / "a.jpg.xmp") == before
    else:
        assert sorted(os.listdir(shoot)) == []
