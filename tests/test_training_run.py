"""`qponder train run` on the tiny offline model: every stage, the before/after table, and resume."""

import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner
from smoke import brightness_score, solid_image

from qponder_plugin.cli import build

pytestmark = [pytest.mark.model, pytest.mark.train]

TINY = ["--sft-arg", "max_steps=2", "--sft-arg", "per_device_train_batch_size=4", "--grpo-arg", "max_steps=1",
        "--grpo-arg", "num_generations=4", "--grpo-arg", "per_device_train_batch_size=8", "--grpo-arg",
        "max_completion_length=96", "--max-new-tokens", "96"]


@pytest.fixture(scope="module")
def labels(tmp_path_factory):
    """24 synthetic images whose MOS follows brightness, in 12 groups, with no split column."""
    root = tmp_path_factory.mktemp("mos")
    with (root / "labels.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "mos", "group"])
        for i, brightness in enumerate(np.linspace(0.02, 0.98, 24)):
            solid_image(float(brightness), 64, seed=i).save(root / f"img{i:02d}.png")
            writer.writerow([f"img{i:02d}.png", brightness_score(float(brightness)), f"g{i // 2}"])
    return root / "labels.csv"


def vision_weights(folder) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return {k: v for k, v in load_file(str(folder / "model.safetensors")).items() if "visual" in k}


def run(*args):
    result = CliRunner().invoke(build(), [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


def test_run_every_stage_then_resume(smoke_model, labels, tmp_path):
    command = ["train", "run", "--data", labels, "--score-range", 1, 5, "--model", smoke_model, "--out",
               tmp_path / "run", "--val-fraction", 0.25, *TINY]
    first = run(*command)
    summary = json.loads(first.stdout.splitlines()[-1])
    assert (summary["size"], summary["lora"], summary["train"], summary["val"]) == ("small", False, 18, 6)
    assert [row["stage"] for row in summary["table"]] == ["base", "sft", "grpo"]
    assert all(row["n"] == 6 and row["srcc"] is not None for row in summary["table"])
    assert set(summary["seconds"]) == {"eval base", "distill", "sft", "eval sft", "grpo", "eval grpo", "export"}
    assert summary["rewards"] == {"format": 0.5, "accuracy_gaussian": 1.0, "consistency": 0.25, "rank_fidelity": 1.0}
    base, sft, grpo = (vision_weights(folder) for folder in (smoke_model, tmp_path / "run" / "sft",
                                                             tmp_path / "run" / "grpo"))
    assert any(not np.array_equal(base[k], sft[k]) for k in base)  # SFT adapts the small model's tower
    assert all(np.array_equal(sft[k], grpo[k]) for k in sft)  # GRPO leaves it as SFT made it
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    held = {int(path[-6:-4]) for path in split["val"]}  # imgNN.png; images 2k and 2k+1 share group k
    assert len(held) == 6 and all(i ^ 1 in held for i in held) and not set(split["train"]) & set(split["val"])
    for name in ("base", "sft", "grpo"):
        assert (tmp_path / "run" / "eval" / f"{name}.png").is_file()
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()
    assert "SRCC" in first.stderr and "grpo" in first.stderr

    again = run(*command)  # nothing left to do: every stage and eval is skipped, the table is the same
    assert json.loads(again.stdout.splitlines()[-1])["table"] == summary["table"]
    assert json.loads(again.stdout.splitlines()[-1])["seconds"] == summary["seconds"]  # kept from the first run
    assert "started" not in again.stderr and again.stderr.count("done before") == 7

    (tmp_path / "run" / "grpo" / "qponder.json").unlink()  # as if GRPO had been cut short
    third = run(*command)
    assert "[sft] done before" in third.stderr and "[grpo] started" in third.stderr
    assert "[export] started" in third.stderr  # a redone stage redoes what follows it


def test_run_usage_errors(labels, tmp_path):
    result = CliRunner().invoke(build(), ["train", "run", "--data", str(labels), "--score-range", "1", "5",
                                          "--out", str(tmp_path / "r"), "--sft-arg", "max_stepz=1"])
    assert result.exit_code == 2 and "did you mean max_steps" in result.output
