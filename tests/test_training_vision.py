"""Vision warm-up (feature distillation) on the tiny offline model: it moves the vision tower toward the teacher,
leaves the language model alone, skips unreadable images, and writes a checkpoint the scorer loads."""

import json

import pytest
from safetensors.torch import load_file

from qponder_plugin import load_scorer
from smoke import solid_image

pytestmark = [pytest.mark.model, pytest.mark.train]


def brightness_scored(folder, count: int = 24) -> tuple[list[str], list[float]]:
    """Flat images of rising brightness and their "quality" 1-5: learnable from the pixels alone."""
    paths = []
    for i in range(count):
        solid_image(i / (count - 1), 64, seed=i).save(folder / f"img{i}.png")
        paths.append(str(folder / f"img{i}.png"))
    return paths, [1 + 4 * i / (count - 1) for i in range(count)]


@pytest.mark.parametrize(("views", "distort", "bf16"), [(0, 0.0, False), (3, 0.0, False), (0, 0.5, True)])
def test_warm_up_distils_into_the_vision_tower_only(smoke_model, tmp_path, views, distort, bf16):
    import torch

    from vision import warm_up_vision

    paths = []
    for i in range(24):
        path = tmp_path / f"img{i}.png"
        solid_image(i / 23, 64, seed=i).save(path)
        paths.append(str(path))
    (tmp_path / "broken.png").write_bytes(b"not a png")  # skipped with a warning, never a crash
    paths.append(str(tmp_path / "broken.png"))
    # A fixed teacher whose features are linear in colour: learnable by the tower, so the loss must fall.
    projection = torch.randn(3, 16, generator=torch.Generator().manual_seed(0))

    crops = []

    def teacher(pixels):
        crops.append(len(pixels))
        return pixels.mean((2, 3)) @ projection

    out = warm_up_vision(smoke_model, paths, teacher, tmp_path / "warm", epochs=12, batch_size=8,
                         learning_rate=3e-3, views=views, cache=tmp_path / "views.pt", distort=distort, bf16=bf16,
                         log_every=0)
    losses = [entry["loss"] for entry in json.loads((out / "warmup_log.json").read_text())]
    assert len(losses) == 12 * 3
    # one probe for the feature width; then either every step's crops, or a probe and 3 fixed crops per image
    assert sum(crops) == (1 + 1 + 24 * 3 if views else 1 + 12 * 3 * 8)
    assert sum(losses[-6:]) / 6 < 0.7 * sum(losses[:6]) / 6
    before, after = load_file(smoke_model / "model.safetensors"), load_file(out / "model.safetensors")
    assert before.keys() == after.keys()
    assert all(after[name].dtype == before[name].dtype for name in before)  # bf16 is autocast, not the weights
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    in_tower = [name.split(".")[0] == "visual" or ".visual." in name for name in changed]
    assert changed and all(in_tower), sorted(changed)[:5]
    with load_scorer(out) as scorer:
        result = scorer.assess(paths[0], think=False)
    assert result.profile == "qponder" and result.status in {"ok", "parse_error"}


def test_warm_up_learns_the_scores_when_given(smoke_model, tmp_path):
    import torch

    from vision import warm_up_vision

    paths, scores = brightness_scored(tmp_path)
    (tmp_path / "broken.png").write_bytes(b"not a png")  # skipped with its score; the others stay aligned
    paths.insert(0, str(tmp_path / "broken.png"))
    scores.insert(0, 5.0)

    def teacher(pixels):  # features that say nothing of brightness
        return torch.randn(len(pixels), 16, generator=torch.Generator().manual_seed(1))

    with pytest.raises(ValueError, match="3 scores for 25 images"):
        warm_up_vision(smoke_model, paths, teacher, tmp_path / "bad", scores=scores[:3])
    out = warm_up_vision(smoke_model, paths, teacher, tmp_path / "warm", scores=scores, epochs=12, batch_size=8,
                         learning_rate=3e-3, log_every=0)
    log = json.loads((out / "warmup_log.json").read_text())
    mos_losses = [entry["mos_loss"] for entry in log]
    assert sum(mos_losses[-6:]) / 6 < 0.5 * sum(mos_losses[:6]) / 6
    assert all(entry["loss"] > entry["mos_loss"] for entry in log)  # the feature term is still in the sum


def test_fine_tune_on_scores_alone_gives_the_fresh_merger_its_own_rate(smoke_model, tmp_path):
    import torch

    from vision import warm_up_vision

    paths, scores = brightness_scored(tmp_path)
    with pytest.raises(ValueError, match="without a teacher it needs scores"):
        warm_up_vision(smoke_model, paths, None, tmp_path / "bad")
    with pytest.raises(ValueError, match="crop is 'resized' or 'native'"):
        warm_up_vision(smoke_model, paths, None, tmp_path / "bad", scores=scores, crop="centre")
    # The blocks' rate is 0: only the merger (and the temporary head) may move, and they must learn the scores.
    out = warm_up_vision(smoke_model, paths, None, tmp_path / "tuned", scores=scores, epochs=12, batch_size=8,
                         learning_rate=0.0, fresh_learning_rate=3e-3, crop="native", log_every=0)
    log = json.loads((out / "warmup_log.json").read_text())
    assert all("feature_loss" not in entry and entry["loss"] == entry["mos_loss"] for entry in log)
    assert sum(e["mos_loss"] for e in log[-6:]) / 6 < 0.5 * sum(e["mos_loss"] for e in log[:6]) / 6
    before, after = load_file(smoke_model / "model.safetensors"), load_file(out / "model.safetensors")
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and all(".merger." in f".{name}" for name in changed), sorted(changed)[:5]


def test_fine_tune_can_also_learn_the_measured_attributes(smoke_model, tmp_path):
    from vision import warm_up_vision

    paths, scores = brightness_scored(tmp_path)
    with pytest.raises(ValueError, match="attribute_weight needs undistorted crops"):
        warm_up_vision(smoke_model, paths, lambda pixels: pixels.mean((2, 3)), tmp_path / "bad", attribute_weight=1.0,
                       distort=0.5)
    out = warm_up_vision(smoke_model, paths, None, tmp_path / "tuned", scores=scores, attribute_weight=0.5, epochs=12,
                         batch_size=8, learning_rate=3e-3, crop="native", log_every=0)
    log = json.loads((out / "warmup_log.json").read_text())
    assert all(entry["loss"] == pytest.approx(entry["mos_loss"] + 0.5 * entry["attribute_loss"], abs=2e-5)
               for entry in log)
    losses = [entry["attribute_loss"] for entry in log]
    assert sum(losses[-6:]) / 6 < 0.5 * sum(losses[:6]) / 6


def test_fixed_views_are_computed_once_then_read_from_the_cache(tmp_path):
    import torch

    from vision import fixed_views

    pictures = [solid_image(i / 5, 48 + 8 * i, seed=i) for i in range(6)]
    paths = [f"img{i}.png" for i in range(6)]
    seen = []

    def counting(projection):
        def teacher(pixels):
            seen.append(len(pixels))
            return pixels.mean((2, 3)) @ projection
        return teacher

    teacher = counting(torch.randn(3, 8, generator=torch.Generator().manual_seed(0)))
    cache = tmp_path / "views.pt"
    torch.manual_seed(5)
    boxes, features = fixed_views(pictures, paths, teacher, 4, 32, 0.5, seed=0, cache=cache)
    after = torch.rand(3)
    torch.manual_seed(5)
    assert torch.equal(after, torch.rand(3))  # the caller's random stream is untouched
    assert sum(seen) == 1 + 6 * 4 and features.shape == (6, 4, 8) and cache.is_file()
    for picture, views in zip(pictures, boxes):
        assert all(0 <= top and top + h <= picture.height and 0 <= left and left + w <= picture.width
                   for top, left, h, w, _ in views)
    assert {flip for views in boxes for *_, flip in views} == {True, False}

    seen.clear()
    again = fixed_views(pictures, paths, teacher, 4, 32, 0.5, seed=0, cache=cache)
    assert seen == [1] and again[0] == boxes and torch.equal(again[1], features)  # only the probe crop ran
    other = fixed_views(pictures, paths, counting(torch.randn(3, 8)), 4, 32, 0.5, seed=0, cache=cache)
    assert sum(seen) == 1 + 1 + 6 * 4 and other[0] == boxes and not torch.allclose(other[1], features)
    fewer = fixed_views(pictures, paths, teacher, 2, 32, 0.5, seed=0, cache=cache)
    assert fewer[1].shape == (6, 2, 8)  # another key: computed anew, not a stale table


def test_output_tokens_come_in_raster_order_of_the_grid_dense_targets_use(smoke_model):
    """Dense targets are the teacher's maps pooled to the token grid, row by row: the tower's output tokens must be
    in that order. With every block made an identity, a token depends on its own patches only."""
    import numpy as np
    import torch
    from PIL import Image

    from qponder_plugin.training.trainers import load_policy, vision_tower
    from vision import teacher_features

    model, processor = load_policy(smoke_model, freeze_vision=False)
    tower = vision_tower(model).float().eval()
    with torch.no_grad():
        for block in tower.blocks:
            for layer in (block.attn.proj, block.mlp.down_proj):
                layer.weight.zero_()
                layer.bias.zero_()
    config = model.config.vision_config
    side, cell = 56, config.patch_size * config.spatial_merge_size
    grid = side // cell
    colours = np.linspace(0, 255, grid * grid).reshape(grid, grid).astype(np.uint8)  # one grey level per token

    def tokens(picture):
        inputs = processor.image_processor(images=[picture], return_tensors="pt")
        with torch.no_grad():
            return tower(inputs["pixel_values"].float(), grid_thw=inputs["image_grid_thw"]).pooler_output

    mosaic_image = Image.fromarray(np.kron(colours, np.ones((cell, cell), np.uint8))).convert("RGB")
    mosaic = tokens(mosaic_image)
    alone = torch.stack([tokens(Image.new("RGB", (side, side), (int(c),) * 3))[0] for c in colours.flat])
    torch.testing.assert_close(mosaic, alone, rtol=1e-4, atol=1e-4)

    def brightness(pixels):  # pooled: mean grey; maps: the grey level and its square at each pixel
        grey = pixels.mean(1, keepdim=True)
        return grey.mean((2, 3)), [torch.cat([grey, grey ** 2], 1)]

    pooled, dense = teacher_features(brightness, [mosaic_image], grid)
    assert pooled.shape == (1, 1) and dense.shape == (1, grid * grid, 2)
    grey = torch.tensor(colours.flatten() / 255.0, dtype=torch.float32)  # the same order, row by row
    expected = torch.nn.functional.layer_norm(torch.stack([grey, grey ** 2], 1), (2,))
    torch.testing.assert_close(dense[0], expected, rtol=1e-4, atol=1e-4)


def test_dense_warm_up_fits_every_token(smoke_model, tmp_path):
    import numpy as np
    import torch
    from PIL import Image

    from vision import warm_up_vision

    rng, paths = np.random.default_rng(0), []
    for i in range(24):  # dark pictures with one bright quarter: where it is changes the tokens, not the mean
        pixels = np.full((64, 64, 3), 20, np.uint8)
        row, column = rng.integers(0, 2, 2)
        pixels[32 * row:32 * row + 32, 32 * column:32 * column + 32] = 230
        path = tmp_path / f"img{i}.png"
        Image.fromarray(pixels).save(path)
        paths.append(str(path))

    def teacher(pixels):
        grey = pixels.mean(1, keepdim=True)
        return torch.cat([grey.mean((2, 3)), grey.std((2, 3))], 1), [grey, 1 - grey]

    def pooled_only(pixels):
        return teacher(pixels)[0]

    with pytest.raises(ValueError, match="dense_weight needs"):
        warm_up_vision(smoke_model, paths, pooled_only, tmp_path / "no-maps", dense_weight=1.0)
    with pytest.raises(ValueError, match="dense_weight needs"):
        warm_up_vision(smoke_model, paths, teacher, tmp_path / "views", dense_weight=1.0, views=2)
    out = warm_up_vision(smoke_model, paths, teacher, tmp_path / "warm", epochs=12, batch_size=8,
                         learning_rate=3e-3, dense_weight=2.0, log_every=0)
    log = json.loads((out / "warmup_log.json").read_text())
    dense = [entry["dense_loss"] for entry in log]
    assert sum(dense[-6:]) / 6 < 0.5 * sum(dense[:6]) / 6
    assert all(entry["loss"] == pytest.approx(entry["feature_loss"] + 2 * entry["dense_loss"], abs=2e-4)
               for entry in log)


def test_distortions_change_the_share_asked_and_keep_the_format():
    import torch

    from vision import distortions

    torch.manual_seed(0)
    textures = [torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8) for _ in range(200)]
    assert all(torch.equal(distortions(0.0)(t), t) for t in textures[:20])
    changed = []
    for share in (1.0, 0.5):
        outputs = [distortions(share)(t) for t in textures]
        assert all(o.dtype == torch.uint8 and o.shape == t.shape for o, t in zip(outputs, textures))
        changed.append(sum(not torch.equal(o, t) for o, t in zip(outputs, textures)))
    assert changed[0] == len(textures)
    assert 0.35 * len(textures) < changed[1] < 0.65 * len(textures)


def test_distorted_warm_up_needs_fresh_crops_and_no_scores(smoke_model, tmp_path):
    from vision import warm_up_vision

    path = tmp_path / "img.png"
    solid_image(0.5, 64).save(path)

    def teacher(pixels):
        return pixels.mean((2, 3))

    with pytest.raises(ValueError, match="distort needs fresh crops"):
        warm_up_vision(smoke_model, [str(path)], teacher, tmp_path / "out", views=2, distort=0.5)
    with pytest.raises(ValueError, match="not its image's MOS"):
        warm_up_vision(smoke_model, [str(path)], teacher, tmp_path / "out", scores=[3.0], distort=0.5)


def test_patch_embedding_stays_float32_under_autocast():
    import torch

    from vision import _without_autocast

    layer = torch.nn.Linear(4, 4)
    pixels = torch.rand(2, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(pixels).dtype == torch.bfloat16
        assert _without_autocast(layer.forward, "cpu")(pixels.bfloat16()).dtype == torch.float32


def test_native_crops_are_one_token_short_of_the_input_side():
    from vision import native_crop

    assert [native_crop(side, 28) for side in (252, 112, 56, 28)] == [224, 84, 28, 28]
