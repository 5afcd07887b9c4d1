"""The measured-attribute teacher: its measurements move the right way and its reasoning says what it measured."""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageFilter
from qponder_plugin.training.describer import MeasuredTeacher, describe, findings, measure, stated
from qponder_plugin.training.registry import get_teachers

from qponder_plugin.cli import build
from qponder_plugin.default_plugins.profiles import QPONDER


@pytest.fixture(scope="module")
def photo():
    rng = np.random.default_rng(0)
    x, y = np.meshgrid(np.linspace(0, 1, 256), np.linspace(0, 1, 256))
    base = np.stack([x, y, 1 - x], -1) * 200 + 30
    base[::16] = 20  # sharp stripes give edges to blur
    return Image.fromarray(np.clip(base + rng.normal(0, 1, base.shape), 0, 255).astype("uint8"))


def test_measurements_follow_the_distortion(photo):
    clean = measure(photo)
    blurred = measure(photo.filter(ImageFilter.GaussianBlur(3)))
    noisy = measure(Image.fromarray(np.clip(np.asarray(photo) + np.random.default_rng(1).normal(0, 25, (256, 256, 3)),
                                            0, 255).astype("uint8")))
    dark = measure(Image.fromarray((np.asarray(photo) * 0.15).astype("uint8")))
    gray = measure(photo.convert("L").convert("RGB"))
    assert blurred.sharpness < clean.sharpness / 5
    assert noisy.noise > clean.noise + 10
    assert dark.brightness < 40 and dark.contrast < clean.contrast
    assert gray.colourfulness < 1 < clean.colourfulness


def test_reasoning_names_the_findings_and_ends_in_the_given_score(photo):
    teacher = get_teachers()["measured"]()
    assert isinstance(teacher, MeasuredTeacher)
    blurred = photo.filter(ImageFilter.GaussianBlur(3))
    dark = Image.fromarray((np.asarray(photo) * 0.15).astype("uint8"))
    texts = teacher.explain([blurred, dark], [1.6, 2.2])
    for text, mos in zip(texts, [1.6, 2.2]):
        parsed = QPONDER.parse(text)
        assert parsed.value == mos and parsed.reasoning
    assert "blur" in texts[0].lower() and "very poor" in texts[0]
    assert "dark" in texts[1].lower() or "underexposed" in texts[1].lower()
    assert teacher.explain([blurred], [1.6]) == texts[:1]  # same image, same words


def test_what_the_reasoning_states_reads_back_as_the_findings(photo):
    import random

    pictures = [photo, photo.filter(ImageFilter.GaussianBlur(3)), Image.fromarray((np.asarray(photo) * 0.15)
                                                                                  .astype("uint8"))]
    found = [findings(measure(p)) for p in pictures]
    assert found[1]["sharpness"] < found[0]["sharpness"] and found[2]["exposure"] != found[0]["exposure"]
    for seed, each in enumerate(found * 3):  # any wording of a finding is read back as that finding alone
        text = describe(measure(pictures[seed % 3]), 3.0, random.Random(seed))
        assert stated(text) == {aspect: [index] for aspect, index in each.items()}, text
    assert stated("Nothing to see here.") == {aspect: [] for aspect in found[0]}


def test_distill_with_the_measured_teacher_needs_no_model(photo, tmp_path):
    for i in range(3):
        photo.filter(ImageFilter.GaussianBlur(i)).save(tmp_path / f"{i}.png")
    (tmp_path / "labels.csv").write_text("image,mos\n0.png,80\n1.png,50\n2.png,20\n")
    out = tmp_path / "cold.jsonl"
    result = CliRunner().invoke(build(), ["train", "distill", "--data", str(tmp_path / "labels.csv"),
                                          "--score-range", "0", "100", "--teacher", "measured", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["kept"] == 3
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["mos"] for r in rows] == pytest.approx([4.2, 3.0, 1.8])
    missing = CliRunner().invoke(build(), ["train", "distill", "--data", str(tmp_path / "labels.csv"),
                                           "--score-range", "0", "100", "--out", str(out)])
    assert missing.exit_code == 2 and "--teacher-model is required" in missing.output


def test_motion_blur_focus_blur_and_colour_casts_are_told_apart():
    """Blur along one direction reads as motion, blur in every direction as focus; a tint over the whole image reads
    as a warm or cool cast, by the channel it leans to."""
    import random

    from scipy import ndimage

    rng = np.random.default_rng(0)
    texture = ndimage.gaussian_filter(rng.normal(0, 1, (256, 256)), 1.5)
    texture = (texture - texture.min()) / np.ptp(texture) * 200 + 25  # detail in every direction
    rgb = np.stack([texture, texture * 0.9 + 10, texture * 0.8 + 20], -1)
    pictures = {"sharp": rgb, "motion": ndimage.uniform_filter1d(rgb, 15, axis=1),
                "focus": ndimage.gaussian_filter(rgb, (3, 3, 0)), "warm": rgb * [1.0, 0.8, 0.45],
                "cool": rgb * [0.5, 0.75, 1.0]}
    measured = {name: measure(Image.fromarray(array.astype("uint8"))) for name, array in pictures.items()}
    assert measured["motion"].coherence > 0.4 > measured["focus"].coherence
    said = {name: describe(m, 3.0, random.Random(0)) for name, m in measured.items()}
    assert "motion" in said["motion"].lower() and "motion" not in said["focus"].lower()
    assert "focus" in said["focus"].lower() or "blurred" in said["focus"].lower()
    assert "warm" in said["warm"] and "cool" in said["cool"] and "cast" not in said["sharp"]
