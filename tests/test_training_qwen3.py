"""The training wing on the tiny Qwen3-VL (a template that opens ``<think>`` itself) and Qwen3.5 (``enable_thinking``,
linear-attention layers) models, through the CLI with tiny budgets: distill → SFT (LoRA) → GRPO → export → assess for
each family, and ``train run``."""

import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.torch import load_file
from smoke import TEACHER_HINT, brightness_score, solid_image

from qponder_plugin.cli import build
from qponder_plugin.default_plugins.profiles import QPONDER

pytestmark = [pytest.mark.model, pytest.mark.train]

# LoRA's modules in each family's language model: Qwen3.5's linear-attention layers have projections of their own.
LORA_MODULES = {"qwen3-vl": {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}}
LORA_MODULES["qwen3.5"] = LORA_MODULES["qwen3-vl"] | {"in_proj_qkv", "in_proj_z", "out_proj"}


def run(*args) -> str:
    result = CliRunner().invoke(build(), [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.fixture(scope="module")
def labels(tmp_path_factory):
    """12 synthetic images whose MOS follows brightness, in 6 groups: 8 train, 4 val."""
    root = tmp_path_factory.mktemp("mos")
    with (root / "labels.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "mos", "group", "split"])
        for i, brightness in enumerate(np.linspace(0.05, 0.95, 12)):
            solid_image(float(brightness), 64, seed=i).save(root / f"img{i:02d}.png")
            writer.writerow([f"img{i:02d}.png", brightness_score(float(brightness)), f"g{i // 2}",
                             "val" if i % 3 == 1 else "train"])
    return root / "labels.csv"


def test_sft_trains_on_the_prompt_the_scorer_sends(qwen3_model, labels):
    """The template leaves the prompt inside an opened ``<think>``: the answer trained on starts with the reasoning.
    The consistency reward's text-only prompt closes it empty before the answer."""
    from qponder_plugin.training.data import read_mos, to_dataset
    from qponder_plugin.training.trainers import sft_texts
    from transformers import AutoProcessor

    from qponder_plugin.backend import Request
    from qponder_plugin.default_plugins.transformers_backend import chat_text

    processor = AutoProcessor.from_pretrained(qwen3_model[1])
    records = list(read_mos(labels, score_range=(1, 5)))[:1]
    row = to_dataset(records, with_completion=["<think>Dark.</think><answer>1.20</answer>"]).with_transform(
        sft_texts(processor))[0]
    assert row["prompt"] == chat_text(processor, Request(row["images"][0], QPONDER.think_prompt))
    assert row["prompt"].endswith("<|im_start|>assistant\n<think>\n") and "<|image_pad|>" in row["prompt"]
    assert row["completion"] == "Dark.</think><answer>1.20</answer><|im_end|>"
    rescoring = chat_text(processor, Request(None, "Some reasoning.", prefix=QPONDER.answer_prefix))
    assert rescoring.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n<answer>")
    assert "<|vision_start|>" not in rescoring


def test_distill_sft_grpo_export_assess(qwen3_model, labels, tmp_path):
    family, model = qwen3_model
    data = ["--data", labels, "--score-range", 1, 5, "--split", "train"]

    # The model itself teaches (told the MOS through the hint it was trained on), reasoning in its opened <think>.
    cold = tmp_path / "cold.jsonl"
    stats = json.loads(run("train", "distill", *data, "--teacher-model", model, "--out", cold, "--tolerance", 1.0,
                           "--max-new-tokens", 128, "--teacher-prompt", QPONDER.think_prompt + TEACHER_HINT))
    assert stats["kept"] >= 4 and stats["kept"] + stats["dropped"] == 8, stats
    for row in map(json.loads, cold.read_text().splitlines()):
        assert row["completion"].startswith("<think>Exposure:") and "</think><answer>" in row["completion"]

    # SFT with LoRA on every projection of the language model, never on the vision tower.
    sft = tmp_path / "sft"
    run("train", "sft", "--data", cold, "--model", model, "--output", sft, "--lora-r", 4, "--lora-alpha", 8,
        "--arg", "max_steps=2", "--arg", "per_device_train_batch_size=4")
    adapter = load_file(sft / "adapter" / "adapter_model.safetensors")
    assert all(".language_model." in name for name in adapter)
    assert {name.split(".lora_")[0].rsplit(".", 1)[1] for name in adapter} == LORA_MODULES[family]
    losses = [entry["loss"] for entry in json.loads((sft / "training_log.json").read_text()) if "loss" in entry]
    assert losses and all(np.isfinite(losses))

    # GRPO from the SFT checkpoint: completions start inside the template's <think> and still earn the format reward
    # (sampled cooler than trl's default: at temperature 1 the briefly trained tiny models mostly write noise).
    grpo = tmp_path / "grpo"
    run("train", "grpo", *data, "--model", sft, "--output", grpo, "--lora-r", 4, "--lora-alpha", 8,
        "--rewards", "format,accuracy_gaussian,consistency", "--arg", "max_steps=2", "--arg", "num_generations=4",
        "--arg", "per_device_train_batch_size=4", "--arg", "max_completion_length=96", "--arg", "temperature=0.3")
    log = json.loads((grpo / "training_log.json").read_text())
    rewards = {name: [e[f"rewards/{name}/mean"] for e in log if f"rewards/{name}/mean" in e]
               for name in ("format", "accuracy_gaussian", "consistency")}
    assert all(len(means) == 2 for means in rewards.values()), rewards
    assert max(rewards["format"]) > 0 and max(rewards["consistency"]) > 0, rewards

    # Export merges the adapter into its base: transformers loads it, and `qponder assess` scores with it.
    exported = tmp_path / "exported"
    run("train", "export", grpo / "adapter", exported)
    assert f'- "{family}"' in (exported / "README.md").read_text()
    image = tmp_path / "bright.png"
    solid_image(0.9, 64, seed=7).save(image)
    results = [json.loads(run("assess", image, "--model", exported, "--json", "--max-new-tokens", 128, *mode))
               for mode in ([], ["--no-think"])]
    for result in results:
        assert (result["status"], result["profile"]) == ("ok", "qponder") and 1 <= result["score"] <= 5, result
    assert results[0]["reasoning"] and results[1]["method"] == "probability"


def test_train_run(qwen3_model, labels, tmp_path):
    """The one command on a small model: full fine-tuning, the vision tower at rates of its own in SFT."""
    from qponder_plugin import assess

    out = tmp_path / "run"
    summary = json.loads(run(
        "train", "run", "--data", labels, "--score-range", 1, 5, "--model", qwen3_model[1], "--out", out,
        "--sft-arg", "max_steps=2", "--sft-arg", "per_device_train_batch_size=4", "--grpo-arg", "max_steps=1",
        "--grpo-arg", "num_generations=4", "--grpo-arg", "per_device_train_batch_size=4",
        "--grpo-arg", "max_completion_length=96", "--max-new-tokens", 96).splitlines()[-1])
    assert (summary["size"], summary["lora"], summary["train"], summary["val"]) == ("small", False, 8, 4)
    assert summary["vision_learning_rates"] == [1e-5, 1e-4]
    assert [row["stage"] for row in summary["table"]] == ["base", "sft", "grpo"]
    assert all(row["n"] == 4 and row["srcc"] is not None for row in summary["table"]), summary["table"]
    result = assess(solid_image(0.9, 64, seed=7), model=out / "model", max_new_tokens=128)
    assert result.status == "ok" and result.reasoning, result.error


@pytest.mark.parametrize("qwen3_model", ["qwen3-vl"], indirect=True)  # Qwen3.5's tower has no DeepStack
def test_deepstack_mergers_train_at_the_merger_rate(qwen3_model, labels, tmp_path):
    """``--vision-lr BLOCKS MERGER``: Qwen3-VL's DeepStack mergers (new layers beside the tower's blocks) take the
    merger's rate, like its main merger; the blocks, patch and position embeddings take the blocks' rate."""
    from qponder_plugin.training.data import read_mos, to_dataset
    from qponder_plugin.training.trainers import build_grpo, vision_tower

    records = list(read_mos(labels, split="train", score_range=(1, 5)))
    trainer, _ = build_grpo(qwen3_model[1], to_dataset(records), tmp_path, vision_learning_rates=(1e-6, 1e-5),
                            rewards=("format",), args={"learning_rate": 1e-4, "max_steps": 1})
    trainer.create_optimizer()
    rate = {id(p): group["lr"] for group in trainer.optimizer.param_groups for p in group["params"]}
    tower = dict(vision_tower(trainer.model).named_parameters())
    under = {name: p for name, p in tower.items() if p.requires_grad}  # peft's trainable copy of the tower
    deepstack = [p for name, p in under.items() if ".deepstack_merger_list." in f".{name}"]
    assert deepstack and all(rate[id(p)] == 1e-5 for p in deepstack)
    parts = ("blocks", "patch_embed", "pos_embed")
    blocks = [p for name, p in under.items() if any(f".{part}." in f".{name}" for part in parts)]
    assert blocks and all(rate[id(p)] == 1e-6 for p in blocks)
