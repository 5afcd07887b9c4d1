"""The whole recipe through the CLI on the tiny offline model: distill → SFT (LoRA, full) → GRPO → export → assess
→ eval. Each stage's output is checked, not just produced."""

import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.torch import load_file

from qponder_plugin import load_scorer
from qponder_plugin.cli import build
from qponder_plugin.profiles import QPONDER
from qponder_plugin.testing import TEACHER_HINT, brightness_score, solid_image

pytestmark = [pytest.mark.model, pytest.mark.train]


def run(*args):
    result = CliRunner().invoke(build(), [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.fixture(scope="module")
def labels(tmp_path_factory):
    """A MOS file (1–5 scale) of synthetic images whose MOS follows brightness; 16 train, 8 val images."""
    root = tmp_path_factory.mktemp("mos")
    rows = []
    for i, brightness in enumerate(np.linspace(0.02, 0.98, 24)):
        name = f"img{i:02d}.png"
        solid_image(float(brightness), 64, seed=i).save(root / name)
        rows.append({"image": name, "mos": brightness_score(float(brightness)), "group": f"g{i // 2}",
                     "split": "val" if i % 3 == 1 else "train"})
    (root / "broken.png").write_bytes(b"not a png")
    rows.append({"image": "broken.png", "mos": 3.0, "group": "gx", "split": "train"})
    with (root / "labels.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, ["image", "mos", "group", "split"])
        writer.writeheader()
        writer.writerows(rows)
    return root / "labels.csv"


def test_recipe_end_to_end(smoke_model, labels, tmp_path):
    data = ["--data", labels, "--score-range", 1, 5]
    config = tmp_path / "tiny.yaml"
    config.write_text("lora_r: 4\nlora_alpha: 8\nargs:\n  max_steps: 2\n  per_device_train_batch_size: 4\n")

    # Distill with the smoke model as teacher (told the MOS via the hint it was trained on); resumable.
    out = tmp_path / "distill.jsonl"
    teacher = ["train", "distill", *data, "--split", "train", "--teacher-model", smoke_model, "--out", out,
               "--tolerance", 0.8, "--teacher-prompt", QPONDER.think_prompt + TEACHER_HINT]
    stats = json.loads(run(*teacher))
    assert stats["kept"] >= 8 and stats["kept"] + stats["dropped"] == 16 and stats["resumed"] == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == stats["kept"]
    for row in rows:
        parsed = QPONDER.parse(row["completion"])
        assert parsed.reasoning and parsed.value == pytest.approx(row["mos"], abs=0.005)
    again = json.loads(run(*teacher))
    assert again["resumed"] == 16 and again["kept"] == 0

    # SFT, LoRA (language model only) and full fine-tuning with a frozen vision tower.
    lora = tmp_path / "sft-lora"
    run("train", "sft", "--data", out, "--model", smoke_model, "--output", lora, "--config", config)
    adapter = json.loads((lora / "adapter" / "adapter_config.json").read_text())
    assert adapter["r"] == 4
    lora_weights = load_file(lora / "adapter" / "adapter_model.safetensors")
    assert lora_weights and all(".language_model." in name for name in lora_weights)  # never the vision MLP
    full = tmp_path / "sft-full"
    run("train", "sft", "--data", out, "--model", smoke_model, "--output", full, "--full", "--config", config,
        "--arg", "learning_rate=0.01")
    for trained in (lora, full):
        log = json.loads((trained / "training_log.json").read_text())
        assert any("loss" in entry for entry in log)
    changed = weights_changed(smoke_model, full)
    assert changed["language"] and not changed["vision"]

    # GRPO from the LoRA SFT checkpoint with every built-in reward; per-reward means are logged.
    grpo = tmp_path / "grpo"
    rewards = "format,accuracy,accuracy_gaussian,consistency,rank_fidelity"
    run("train", "grpo", *data, "--split", "train", "--model", lora, "--output", grpo, "--rewards", rewards,
        "--reward-weights", "1,1,0.5,0.5,0.5", "--arg", "max_steps=1", "--arg", "max_completion_length=96",
        "--arg", "per_device_train_batch_size=8", "--arg", "num_generations=4")
    log = json.loads((grpo / "training_log.json").read_text())
    for name in rewards.split(","):
        assert any(f"rewards/{name}/mean" in entry for entry in log), name
    assert any(entry.get("rewards/format/mean") is not None for entry in log)

    # Export the GRPO adapter onto its base: the result scores exactly like GRPO's own merged checkpoint.
    exported = tmp_path / "exported"
    run("train", "export", grpo / "adapter", exported)
    assert (exported / "README.md").read_text().startswith("---")
    image = solid_image(0.8, 64, seed=99)
    with load_scorer(exported) as a, load_scorer(grpo) as b:
        ours, theirs = a.assess(image), b.assess(image)
    assert ours.profile == "qponder" and ours.raw == theirs.raw and ours.score == theirs.score

    # Evaluate on the val split: JSON report and scatter plot.
    report_dir = tmp_path / "eval"
    printed = json.loads(run("eval", *data, "--split", "val", "--model", exported, "--out", report_dir)
                         .split("\nreport:")[0])
    report = json.loads((report_dir / "eval.json").read_text())
    assert report["metrics"]["srcc"] == pytest.approx(printed["srcc"])
    assert len(report["rows"]) == 8
    assert (report_dir / "eval.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def weights_changed(before, after) -> dict:
    """Which towers moved between two checkpoints (saved names: ``visual.*`` and ``model.layers.*``)."""
    old, new = load_file(before / "model.safetensors"), load_file(after / "model.safetensors")
    moved = {name for name in old if not np.array_equal(old[name].numpy(), new[name].numpy())}
    return {"language": any(n.startswith("model.layers.") for n in moved),
            "vision": any(n.startswith("visual.") for n in moved)}
