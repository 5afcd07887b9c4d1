"""The whole recipe through the CLI on the tiny offline model: distill → SFT (LoRA, full) → GRPO → export → assess
→ eval. Each stage's output is checked, not just produced."""

import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.torch import load_file
from smoke import TEACHER_HINT, brightness_score, solid_image

from qponder_plugin import load_scorer
from qponder_plugin.cli import build
from qponder_plugin.default_plugins.profiles import QPONDER
from qponder_plugin.images import load_image

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
    assert changed["language"] and not changed["vision"] and not changed["merger"]
    # LoRA, with the vision tower at rates of its own (blocks held at 0, the merger trained): merged into the output.
    tower = tmp_path / "sft-tower"
    run("train", "sft", "--data", out, "--model", smoke_model, "--output", tower, "--config", config,
        "--arg", "learning_rate=0.01", "--vision-lr", 0, 0.01)
    assert weights_changed(smoke_model, tower) == {"language": True, "vision": False, "merger": True}

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

    # Two sets in one run (here the val and train rows of one file): a report and a plot each, named by the set.
    printed = json.loads(run("eval", *data, "--data", labels, "--split", "val", "--split", "train", "--model",
                             exported, "--out", report_dir, "--name", "both").split("\nlabels-val report:")[0])
    assert list(printed) == ["labels-val", "labels-train"]
    for label, count in (("val", 8), ("train", 16)):  # the broken train image is skipped when read
        saved = json.loads((report_dir / f"both-labels-{label}.json").read_text())
        assert len(saved["rows"]) == count
        assert saved["metrics"]["srcc"] == pytest.approx(printed[f"labels-{label}"]["srcc"])
        assert (report_dir / f"both-labels-{label}.png").is_file()
    refused = CliRunner().invoke(build(), ["eval", "--data", str(labels), "--data", str(labels), "--split", "val",
                                           "--split", "val", "--split", "train", "--score-range", "1", "5"])
    assert refused.exit_code == 2 and "3 --split values for 2 --data files" in refused.output


def weights_changed(before, after) -> dict:
    """Which parts moved between two checkpoints (saved names: ``model.layers.*``, ``visual.merger.*`` and the vision
    blocks' other ``visual.*``)."""
    old, new = load_file(before / "model.safetensors"), load_file(after / "model.safetensors")
    moved = {name for name in old if not np.array_equal(old[name].numpy(), new[name].numpy())}
    return {"language": any(n.startswith("model.layers.") for n in moved),
            "vision": any(n.startswith("visual.") and not n.startswith("visual.merger.") for n in moved),
            "merger": any(n.startswith("visual.merger.") for n in moved)}


def test_grpo_gives_the_vision_tower_its_own_rates_beside_lora(smoke_model, labels, tmp_path):
    from qponder_plugin.training.data import read_mos, to_dataset
    from qponder_plugin.training.trainers import build_grpo, vision_tower

    records = list(read_mos(labels, split="train", score_range=(1, 5)))
    trainer, _ = build_grpo(smoke_model, to_dataset(records), tmp_path, vision_learning_rates=(1e-6, 1e-5),
                            rewards=("format", "grounding"), args={"learning_rate": 1e-4, "max_steps": 1})
    grounding = trainer.reward_funcs[1]  # bound to this trainer: its findings weighed over the train images
    assert grounding.found.keys() == {str(r.image) for r in records} and grounding.weights.keys() == {
        "sharpness", "noise", "exposure", "contrast", "colour", "artifacts"}
    assert trainer.create_optimizer() is trainer.optimizer  # the Trainer keeps it and schedules it
    rate = {id(p): group["lr"] for group in trainer.optimizer.param_groups for p in group["params"]}
    trainable = {name: p for name, p in trainer.model.named_parameters() if p.requires_grad}
    assert len(rate) == len(trainable)
    # Under LoRA the tower trains whole beside the adapter (peft's modules_to_save): its trainable copy has the rates.
    tower = {name: p for name, p in vision_tower(trainer.model).named_parameters() if p.requires_grad}
    assert tower and all(rate[id(p)] == (1e-5 if ".merger." in name else 1e-6) for name, p in tower.items())
    assert {rate[id(p)] for p in tower.values()} == {1e-6, 1e-5}
    lora = [p for name, p in trainable.items() if "lora_" in name]
    assert lora and all(rate[id(p)] == 1e-4 for p in lora)


def test_grpo_steps_over_images_of_different_sizes(smoke_model, tmp_path):
    """Prompts of different lengths in one batch (images with different token grids) train without a rope-index
    mismatch: the processor pads on the left, as trl's generation does."""
    from qponder_plugin.training.data import MosRecord, to_dataset
    from qponder_plugin.training.trainers import build_grpo

    records = []
    for index, size in enumerate([(64, 64), (64, 36)]):
        path = tmp_path / f"img{index}.png"
        solid_image(0.3 + 0.4 * index, 64, seed=index).resize(size).save(path)
        records.append(MosRecord(str(path), 2.0 + 2 * index, 0.3 + 0.4 * index, None, str(path)))
    trainer, processor = build_grpo(smoke_model, to_dataset(records), tmp_path / "grpo", rewards=("format",),
                                    lora=False, args={"max_steps": 1, "per_device_train_batch_size": 8,
                                                      "num_generations": 4, "max_completion_length": 16})
    grids = [processor.image_processor(images=[load_image(r.image)])["image_grid_thw"].tolist() for r in records]
    assert grids[0] != grids[1]
    trainer.train()
    assert trainer.state.global_step == 1
