"""The nano recipe's vision fine-tune on the tiny offline model: it fits the scores, moves the vision tower only (the
fresh merger at its own rate), skips unreadable images, and writes a checkpoint the scorer loads."""

import json

import pytest
from safetensors.torch import load_file
from smoke import solid_image

from qponder_plugin import load_scorer

pytestmark = [pytest.mark.model, pytest.mark.train]


def brightness_scored(folder, count: int = 24) -> tuple[list[str], list[float]]:
    """Flat images of rising brightness and their "quality" 1-5: learnable from the pixels alone."""
    paths = []
    for i in range(count):
        solid_image(i / (count - 1), 64, seed=i).save(folder / f"img{i}.png")
        paths.append(str(folder / f"img{i}.png"))
    return paths, [1 + 4 * i / (count - 1) for i in range(count)]


@pytest.mark.parametrize("bf16", [False, True])
def test_fine_tune_learns_the_scores_in_the_vision_tower_only(smoke_model, tmp_path, bf16):
    import torch
    from vision_tune import tune_vision

    paths, scores = brightness_scored(tmp_path)
    (tmp_path / "broken.png").write_bytes(b"not a png")  # skipped with its score, never a crash; the others align
    paths.insert(0, str(tmp_path / "broken.png"))
    scores.insert(0, 5.0)
    with pytest.raises(ValueError, match="3 scores for 25 images"):
        tune_vision(smoke_model, paths, scores[:3], tmp_path / "bad")
    out = tune_vision(smoke_model, paths, scores, tmp_path / "tuned", epochs=12, batch_size=8, learning_rate=3e-3,
                      bf16=bf16, log_every=0)
    log = json.loads((out / "tune_log.json").read_text())
    assert len(log) == 12 * 3
    mos_losses = [entry["mos_loss"] for entry in log]
    assert sum(mos_losses[-6:]) / 6 < 0.5 * sum(mos_losses[:6]) / 6
    before, after = load_file(smoke_model / "model.safetensors"), load_file(out / "model.safetensors")
    assert before.keys() == after.keys()
    assert all(after[name].dtype == before[name].dtype for name in before)  # bf16 is autocast, not the weights
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    in_tower = [name.split(".")[0] == "visual" or ".visual." in name for name in changed]
    assert changed and all(in_tower), sorted(changed)[:5]
    with load_scorer(out) as scorer:
        result = scorer.assess(paths[1], think=False)
    assert result.profile == "qponder" and result.status in {"ok", "parse_error"}


def test_fine_tune_gives_the_fresh_merger_its_own_rate(smoke_model, tmp_path):
    import torch
    from vision_tune import tune_vision

    paths, scores = brightness_scored(tmp_path)
    # The blocks' rate is 0: only the merger (and the temporary head) may move, and they must learn the scores.
    out = tune_vision(smoke_model, paths, scores, tmp_path / "tuned", epochs=12, batch_size=8, learning_rate=0.0,
                      fresh_learning_rate=3e-3, log_every=0)
    log = json.loads((out / "tune_log.json").read_text())
    assert all(entry["loss"] == entry["mos_loss"] for entry in log)
    assert sum(e["mos_loss"] for e in log[-6:]) / 6 < 0.5 * sum(e["mos_loss"] for e in log[:6]) / 6
    before, after = load_file(smoke_model / "model.safetensors"), load_file(out / "model.safetensors")
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and all(".merger." in f".{name}" for name in changed), sorted(changed)[:5]


def test_patch_embedding_stays_float32_under_autocast():
    import torch
    from vision_tune import _without_autocast

    layer = torch.nn.Linear(4, 4)
    pixels = torch.rand(2, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(pixels).dtype == torch.bfloat16
        assert _without_autocast(layer.forward, "cpu")(pixels.bfloat16()).dtype == torch.float32


def test_native_crops_are_one_token_short_of_the_input_side():
    from vision_tune import native_crop

    assert [native_crop(side, 28) for side in (252, 112, 56, 28)] == [224, 84, 28, 28]
