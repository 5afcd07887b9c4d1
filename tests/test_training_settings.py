"""What the training commands are given is checked up front: models resolve as the core resolves them (aliases,
$QPONDER_MODEL, folders, hub ids; fast failure offline), and trainer settings take their field's type."""

import csv
import json
import time

import pytest
from click.testing import CliRunner

pytest.importorskip("trl", reason="needs the train extra")

from qponder_plugin.training.settings import SettingError, resolve_training_model, typed_settings  # noqa: E402
from trl import GRPOConfig, SFTConfig  # noqa: E402

from qponder_plugin.cli import build  # noqa: E402
from qponder_plugin.spec import NANO  # noqa: E402


def invoke(*args):
    return CliRunner().invoke(build(), [str(a) for a in args])


def test_models_resolve_as_the_core_resolves_them(tmp_path, monkeypatch):
    assert resolve_training_model("nano") == str(NANO)
    assert resolve_training_model(None) == str(NANO)
    monkeypatch.setenv("QPONDER_MODEL", str(tmp_path))
    assert resolve_training_model(None) == str(tmp_path)


def test_a_missing_model_fails_fast_offline(tmp_path):
    started = time.monotonic()
    with pytest.raises(SettingError, match="HF_HUB_OFFLINE is set"):
        resolve_training_model("no-such-org/no-such-model")
    (tmp_path / "d.jsonl").write_text("")
    result = invoke("train", "sft", "--data", tmp_path / "d.jsonl", "--model", "no-such-org/no-such-model",
                    "--output", tmp_path / "out")
    assert result.exit_code == 2 and "no-such-org/no-such-model" in result.output
    assert time.monotonic() - started < 10


def test_settings_take_their_fields_types():
    typed = typed_settings(SFTConfig, {"learning_rate": "1e-4", "max_steps": "100", "bf16": "false",
                                       "max_length": None, "report_to": ["none"], "lr_scheduler_type": "cosine"})
    assert typed == {"learning_rate": 1e-4, "max_steps": 100, "bf16": False, "max_length": None,
                     "report_to": ["none"], "lr_scheduler_type": "cosine"}
    assert typed_settings(GRPOConfig, {"use_vllm": "true", "num_generations": 8.0}) == {"use_vllm": True,
                                                                                      "num_generations": 8}


@pytest.mark.parametrize("setting, message", [({"learnin_rate": 1}, "did you mean learning_rate"),
                                              ({"max_steps": "abc"}, "max_steps expects int, got 'abc'"),
                                              ({"max_steps": 2.5}, "max_steps expects int, got 2.5")])
def test_wrong_settings_name_the_field(setting, message):
    with pytest.raises(SettingError, match=message):
        typed_settings(SFTConfig, setting)


def test_wrong_settings_are_usage_errors_from_flags_and_config(tmp_path):
    (tmp_path / "d.jsonl").write_text("")
    common = ["train", "sft", "--data", tmp_path / "d.jsonl", "--output", tmp_path / "out"]
    flag = invoke(*common, "--arg", "learnin_rate=1e-4")
    assert flag.exit_code == 2 and "did you mean learning_rate" in flag.output
    (tmp_path / "run.yaml").write_text("args:\n  max_steps: lots\n")
    config = invoke(*common, "--config", tmp_path / "run.yaml")
    assert config.exit_code == 2 and "max_steps expects int, got 'lots'" in config.output


@pytest.mark.model
@pytest.mark.train
def test_sft_on_the_nano_alias_with_a_yaml_float(tmp_path):
    """The README's own steps: `--model nano` and `--arg learning_rate=1e-4` (a string to YAML 1.1)."""
    from smoke import solid_image

    with (tmp_path / "labels.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "mos"])
        for i, brightness in enumerate((0.1, 0.4, 0.7, 0.9)):
            solid_image(brightness, 64, seed=i).save(tmp_path / f"{i}.png")
            writer.writerow([f"{i}.png", 1 + 4 * brightness])
    distill = invoke("train", "distill", "--data", tmp_path / "labels.csv", "--score-range", 1, 5, "--teacher",
                     "measured", "--out", tmp_path / "cold.jsonl")
    assert distill.exit_code == 0, distill.output
    assert json.loads(distill.stdout.splitlines()[-1])["kept"] == 4
    sft = invoke("train", "sft", "--data", tmp_path / "cold.jsonl", "--model", "nano", "--output", tmp_path / "sft",
                 "--arg", "learning_rate=1e-4", "--arg", "max_steps=1", "--arg", "per_device_train_batch_size=2")
    assert sft.exit_code == 0, sft.output
    log = json.loads((tmp_path / "sft" / "training_log.json").read_text())
    assert log[0]["learning_rate"] == pytest.approx(1e-4) and (tmp_path / "sft" / "model.safetensors").is_file()
