"""The README's photographer's walk-through, run as written: its commands are read from the README's "Cull a photo
shoot" block, in a folder holding 50 labelled BIQ2021 shots (the 25 highest and the 25 lowest MOS) and a shoot of
bursts made from other BIQ2021 photos (``test_groups.burst_folder``: a sharp frame and two blurred ones each, a copy,
distinct photos), with the bundled nano model. darktable, which cannot open a window here, is replaced by
darktable-cli reading each placed file's sidecar."""

import csv
import json
import shlex
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from darktable import export
from test_groups import burst_folder, photos

from qponder_plugin.cli import build
from qponder_plugin.spec import NANO, nano_installed

pytestmark = [pytest.mark.model, pytest.mark.slow,
              pytest.mark.skipif(not nano_installed(), reason=f"the bundled nano model is missing from {NANO}")]
pytest.importorskip("imagehash", reason="the walk-through groups bursts (the filter extra)")
pytest.importorskip("pyexiv2", reason="the walk-through writes sidecars (the filter extra)")
README = Path(__file__).resolve().parents[1] / "README.md"


def walkthrough() -> list[list[str]]:
    """The commands of the README's walk-through (continued lines joined, comments dropped)."""
    section = README.read_text().split("## Cull a photo shoot", 1)[1]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0].replace("\\\n", " ")
    return [shlex.split(line, comments=True) for line in block.splitlines() if line.strip()]


def rating(sidecar: Path) -> str:
    import pyexiv2

    with pyexiv2.Image(str(sidecar)) as image:
        return image.read_xmp()["Xmp.xmp.Rating"]


def test_the_readme_walkthrough(biq2021_sample, tmp_path, monkeypatch):
    calibrate, cull, look = walkthrough()
    assert calibrate[:2] == ["qponder", "calibrate"] and cull[:2] == ["qponder", "filter"]
    assert look[0] == "darktable"
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("QPONDER_MODEL", raising=False)
    kinds = burst_folder(photos(biq2021_sample), tmp_path / "shoot")
    in_shoot = {name.replace("distinct-", "") for name in kinds}
    with open(biq2021_sample) as handle:
        rows = sorted((float(r["mos"]), r["image"]) for r in csv.DictReader(handle)
                      if r["image"].replace(" ", "").replace("(", "").replace(")", "") not in in_shoot)
    for folder, chosen in (("good", rows[-25:]), ("bad", rows[:25])):
        (tmp_path / "shots" / folder).mkdir(parents=True)
        for _, name in chosen:
            shutil.copy(biq2021_sample.parent / "images" / name, tmp_path / "shots" / folder / name)

    calibrated = CliRunner().invoke(build(), [*calibrate[1:], "--json"], catch_exceptions=False)
    assert calibrated.exit_code == 0, calibrated.output
    figures = json.loads(calibrated.stdout.strip().splitlines()[-1])
    print("calibration:", {k: figures[k] for k in figures if not isinstance(figures[k], (list, dict))})
    gate = json.loads((tmp_path / "gate.json").read_text())
    assert gate["model"] == "nano" and 1 <= gate["threshold"] <= 5

    culled = CliRunner().invoke(build(), [*cull[1:], "--json"], catch_exceptions=False)
    assert culled.exit_code == 0, culled.output
    summary = json.loads(culled.stdout.strip().splitlines()[-1])
    assert summary["total"] == len(kinds) and summary["model_calls"] <= len(kinds)
    picks, rest = sorted(Path("picks").iterdir()), sorted(Path("rest").iterdir())
    print("picks:", [p.name for p in picks], "threshold", gate["threshold"])
    images = [p for p in picks if p.suffix == ".jpg"]
    assert images and not any(kinds[p.name].startswith("blurred") for p in images)
    bursts = [kinds[p.name].removeprefix("sharp").removeprefix("copy") for p in images if kinds[p.name] != "distinct"]
    assert len(bursts) == len(set(bursts))  # at most one frame of each burst
    assert all(rating(Path(f"{p}.xmp")) in {"1", "2", "3", "4", "5"} for p in images)
    rejected = [p for p in rest if p.suffix == ".jpg"]
    assert len(images) + len(rejected) == len(kinds)
    assert all(rating(Path(f"{p}.xmp")) == "-1" for p in rejected)
    assert Path("cull.html").is_file()

    # darktable reads what the walk-through's last line opens: a pick's stars and a reject's flag.
    config = tmp_path / "darktable"
    for placed in (images[0], rejected[0]):
        read = export(placed, tmp_path / f"{placed.stem}-dt.jpg", config)
        assert read["Xmp.xmp.Rating"] == rating(Path(f"{placed}.xmp")), placed
