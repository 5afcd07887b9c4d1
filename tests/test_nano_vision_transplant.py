"""DINOv2's first blocks carried into a Qwen2.5-VL vision tower: with the rotary angles at zero, the tower computes
DINOv2's patch embedding and blocks on the patch tokens to float precision, from the Qwen processor's own pixels; the
heads' re-basing keeps every attention score and cuts the rotary embedding's drift; the language model and processor
survive the transplant, and the result scores through the library."""

import pytest
from smoke import IMAGE_SIDE, solid_image

from qponder_plugin import load_scorer

pytestmark = [pytest.mark.model, pytest.mark.train]


def random_dinov2(blocks: int = 3):
    """A small DINOv2 with every weight random (LayerNorm and LayerScale too), so no term of the mapping hides."""
    import torch
    from transformers import Dinov2Config, Dinov2Model

    config = Dinov2Config(hidden_size=128, num_hidden_layers=blocks, num_attention_heads=2, intermediate_size=512,
                          patch_size=14, image_size=IMAGE_SIDE)
    model = Dinov2Model(config).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            parameter.copy_(1 + 0.3 * noise if name.endswith(("norm1.weight", "norm2.weight", "lambda1"))
                            else 0.1 * noise)
    return model


def qwen_tower(smoke_model, dinov2, blocks: int, calibration=None):
    """A Qwen2.5-VL vision tower holding ``dinov2``'s first blocks, and the smoke model's image processor."""
    from qponder_plugin.training.trainers import load_policy, vision_tower
    from transformers import AutoProcessor
    from vision_transplant import dinov2_as_qwen_tower

    image_processor = AutoProcessor.from_pretrained(smoke_model).image_processor
    fields, state = dinov2_as_qwen_tower(dinov2, blocks, image_processor.image_mean, image_processor.image_std,
                                         calibration)
    model, _ = load_policy(smoke_model)
    config = model.config.vision_config
    for name, value in fields.items():
        setattr(config, name, value)
    tower = type(vision_tower(model))._from_config(config).eval()
    missing, unexpected = tower.load_state_dict(state, strict=False)
    assert not unexpected and all(name.startswith("merger.") for name in missing)
    return tower, image_processor


def tower_output(tower, inputs, rotary: bool = True):
    import torch

    saved = tower.rotary_pos_emb.inv_freq.clone()
    if not rotary:
        tower.rotary_pos_emb.inv_freq.zero_()
    with torch.no_grad():
        hidden = tower(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"]).last_hidden_state
    tower.rotary_pos_emb.inv_freq.copy_(saved)
    return hidden


def test_tower_computes_dinov2_blocks_exactly(smoke_model):
    import torch
    from dinov2 import IMAGENET

    dinov2, blocks = random_dinov2(), 2
    tower, image_processor = qwen_tower(smoke_model, dinov2, blocks)
    inputs = image_processor(images=[solid_image(0.6, IMAGE_SIDE, seed=3)], return_tensors="pt")
    ours = tower_output(tower, inputs, rotary=False)  # the one thing that differs by design: rotary positions
    with torch.no_grad():
        # DINOv2 on the same patches, in ImageNet normalisation, without its class token and positions
        first_frame = inputs["pixel_values"].reshape(-1, 3, 2, 14, 14)[:, :, 0]
        ours_mean, ours_std = (torch.tensor(v).view(1, 3, 1, 1) for v in (image_processor.image_mean,
                                                                            image_processor.image_std))
        their_mean, their_std = (torch.tensor(v).view(1, 3, 1, 1) for v in IMAGENET)
        pixels = (first_frame * ours_std + ours_mean - their_mean) / their_std
        hidden = dinov2.embeddings.patch_embeddings.projection(pixels).flatten(1)[None]
        for layer in dinov2.encoder.layer[:blocks]:
            hidden = layer(hidden)
        expected = hidden[0] - hidden[0].mean(-1, keepdim=True)  # the tower's stream is centred; DINOv2's is not
    assert ours.shape == expected.shape == (first_frame.shape[0], 128)
    assert torch.allclose(ours, expected, atol=1e-4 * expected.abs().max().item())


def test_rotary_slots_follow_the_towers_turning_rates(smoke_model):
    """The slot order is read off transformers' own rotary embedding: least turned first, pairs turning together."""

    tower, _ = qwen_tower(smoke_model, random_dinov2(1), 1)
    assert_slots_follow_the_turning_rates(tower)


def assert_slots_follow_the_turning_rates(tower) -> None:
    """``rotary_slots`` orders a 64-channel head of ``tower`` by how far one step along both axes turns it."""
    import torch
    from vision_transplant import rotary_slots

    cos, _ = tower.rotary_pos_emb(torch.zeros(1), torch.tensor([[1, 1]]))  # one step along both axes
    angle = cos[0].clamp(-1, 1).acos()
    slots = rotary_slots(64)
    assert sorted(slots) == list(range(64))
    assert all(a <= b for a, b in zip(angle[slots], angle[slots][1:]))
    assert torch.equal(angle[:32], angle[32:])
    assert angle[slots[0]] < 1e-3 < 0.5 < angle[slots[-1]]


def test_rebased_heads_keep_every_score_and_rank_its_parts():
    import torch
    from vision_transplant import rebase_heads, rotary_slots

    generator = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(3 * 128, 128, generator=generator), torch.randn(3 * 128, generator=generator)
    new_weight, new_bias = rebase_heads(weight, bias, heads=2)
    x = torch.randn(50, 128, generator=generator)

    def scores(w, b):
        q, k, v = (x @ w.T + b).split(128, dim=1)
        return [q[:, h * 64:(h + 1) * 64] @ k[:, h * 64:(h + 1) * 64].T for h in range(2)]

    for before, after in zip(scores(weight, bias), scores(new_weight, new_bias)):
        assert torch.allclose(before, after, atol=1e-4 * before.abs().max().item())
    assert torch.equal(new_weight[256:], weight[256:]) and torch.equal(new_bias[256:], bias[256:])  # values kept
    rows = torch.cat([new_weight, new_bias[:, None]], 1)
    share = rows[:64].norm(dim=1) * rows[128:192].norm(dim=1)  # head 0: each channel's singular value
    ranked = share[rotary_slots(64)]
    assert all(a >= b - 1e-4 for a, b in zip(ranked, ranked[1:])) and ranked[0] > 2 * ranked[-1]


def test_rebasing_cuts_the_rotary_drift(smoke_model, monkeypatch):
    """With the standard rotary angles, the re-based tower stays closer to its rotary-free output than the same
    blocks carried over channel for channel."""
    import torch
    import vision_transplant
    from torchvision.transforms import v2

    dinov2 = random_dinov2()
    pictures = [solid_image(0.6, IMAGE_SIDE, seed=seed) for seed in range(4)]
    calibration = torch.stack([v2.functional.pil_to_tensor(picture) for picture in pictures])
    drift = {}
    for name in ("re-based", "as is"):
        if name == "as is":
            monkeypatch.setattr(vision_transplant, "rebase_heads", lambda weight, bias, heads, moment: (weight, bias))
        tower, image_processor = qwen_tower(smoke_model, dinov2, 2, calibration.float() / 255)
        inputs = image_processor(images=pictures, return_tensors="pt")
        on, off = tower_output(tower, inputs), tower_output(tower, inputs, rotary=False)
        drift[name] = ((on - off).norm() / off.norm()).item()
    assert drift["re-based"] < 0.5 * drift["as is"]


def test_transplant_keeps_the_language_model_and_scores(smoke_model, tmp_path):
    import torch
    from safetensors.torch import load_file
    from vision_transplant import transplant_dinov2

    out = transplant_dinov2(smoke_model, random_dinov2(), tmp_path / "transplanted", blocks=2)
    before, after = load_file(smoke_model / "model.safetensors"), load_file(out / "model.safetensors")
    text = [name for name in before if not name.startswith("visual.")]
    assert text and all(torch.equal(before[name], after[name]) for name in text)
    assert after["visual.blocks.0.attn.proj.bias"].abs().sum() > 0  # the patch bias lives there
    assert len({name.split(".")[2] for name in after if name.startswith("visual.blocks.")}) == 3
    with pytest.raises(ValueError, match="blocks"):
        transplant_dinov2(smoke_model, random_dinov2(), tmp_path / "too-deep", blocks=4)
    with load_scorer(out) as scorer:
        result = scorer.assess(solid_image(0.5, 64, seed=1))
    assert result.status in {"ok", "parse_error"}  # a fresh merger: the model runs, its words are not trained

