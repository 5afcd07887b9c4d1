"""DINOv2-S carried into a Qwen3-VL vision tower, the start of nano 2's tower: as exactly as the host allows.

A Qwen3-VL vision block is DINOv2's block without LayerScale: LayerNorm (eps 1e-6) before the attention and the MLP,
q/k/v and output projections with biases, a plain two-layer MLP whose activation is configured (``gelu``, DINOv2's
exact GELU). So each block carries over term for term, with LayerScale folded into the attention's and the MLP's
output projections. The rest:

- patch embedding: a Conv3d with bias over ``temporal_patch_size`` copies of a still image holds DINOv2's conv split
  evenly over the copies, rescaled from ImageNet's normalisation to the processor's (``refolded_patch_embedding``);
- absolute positions: the tower's ``pos_embed`` holds DINOv2's patch position table (37 x 37) and resamples it
  bilinearly (corners aligned) to each image's grid, where DINOv2 resamples bicubically (half-pixel centres). At
  grid 37 the two are the identity, but the processor's grids are even (2 x 2 patches merge into one token), so they
  always differ a little; ``position_grid=G`` stores DINOv2's own resampling to G x G instead, exact at that grid;
- ``merger.norm`` starts as DINOv2's final LayerNorm; the merger's linear layers and the DeepStack mergers (which
  feed chosen blocks' outputs to the language model's first layers) start fresh.

What cannot carry over: DINOv2's class token, which every patch token attends to in every block (the tower has no
such token), and the 2-D rotary positions Qwen3-VL applies in every block's attention (base 10,000, which vLLM and
transformers hard-code), laid out as in Qwen2.5-VL. With the rotary angles at zero, the tower computes DINOv2's
blocks on the patch tokens alone to float precision (``tests/test_nano_vision_transplant_qwen3.py``). As in
``vision_transplant``, each head's queries and keys are re-based (every score q·k is kept) so that the components
carrying most of the scores sit in the channels the rotary embedding barely turns. The measured drifts are in
docs/nano-recipe.md ("nano 2's tower").
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

from dinov2 import normalise
from vision_transplant import (
    calibration_pixels,
    input_side,
    qkv_input_moments,
    rebase_heads,
    refolded_patch_embedding,
    replace_tower,
)


def dinov2_positions(dinov2, height: int, width: int):
    """DINOv2's own position embeddings of a ``height`` x ``width`` patch grid (its bicubic resampling of its table),
    one row per patch in raster order."""
    import torch

    patch = dinov2.config.patch_size
    tokens = torch.zeros(1, 1 + height * width, dinov2.config.hidden_size)
    with torch.no_grad():
        return dinov2.embeddings.interpolate_pos_encoding(tokens, height * patch, width * patch)[0, 1:]


def tower_positions(table, height: int, width: int):
    """The position embeddings a Qwen3-VL tower with ``pos_embed`` weight ``table`` gives a ``height`` x ``width``
    patch grid (bilinear, corners aligned), one row per patch in raster order."""
    import torch.nn.functional as F

    side = round(len(table) ** 0.5)
    grid = table.T.reshape(1, -1, side, side)
    return F.interpolate(grid, size=(height, width), mode="bilinear", align_corners=True)[0].flatten(1).T


def dinov2_as_qwen3_tower(dinov2, blocks: int, image_mean, image_std, *, temporal_patch_size: int = 2,
                          position_grid: int | None = None, calibration=None) -> tuple[dict, dict]:
    """The Qwen3-VL vision config fields and tower state dict that compute ``dinov2``'s (a transformers
    ``Dinov2Model``) patch embedding, positions and first ``blocks`` blocks on the patch tokens, for pixels
    normalised with ``image_mean`` and ``image_std`` (the Qwen processor's). The mergers' linear layers are not
    included. ``position_grid`` (default: DINOv2's own table) sets the stored position table's side. Attention heads
    are re-based for the rotary embedding (``rebase_heads``), ranking their score components on ``calibration``
    images (a ``(N, 3, H, W)`` RGB tensor in [0, 1]) or, without them, on the weights alone."""
    import torch

    config, source = dinov2.config, dinov2.state_dict()
    if not 1 <= blocks <= config.num_hidden_layers:
        raise ValueError(f"DINOv2 has {config.num_hidden_layers} blocks, not {blocks}")
    patch_weight, patch_bias = refolded_patch_embedding(source, image_mean, image_std)
    table = source["embeddings.position_embeddings"][0, 1:]
    if position_grid is not None:
        table = dinov2_positions(dinov2, position_grid, position_grid)
    state = {"patch_embed.proj.weight": patch_weight.unsqueeze(2).repeat(1, 1, temporal_patch_size, 1, 1)
             / temporal_patch_size,
             "patch_embed.proj.bias": patch_bias, "pos_embed.weight": table,
             "merger.norm.weight": source["layernorm.weight"], "merger.norm.bias": source["layernorm.bias"]}
    moments = [None] * blocks
    if calibration is not None:
        height, width = (side // config.patch_size for side in calibration.shape[-2:])
        with torch.no_grad():
            tokens = dinov2.embeddings.patch_embeddings(normalise(calibration, "cpu"))
        moments = qkv_input_moments(dinov2.encoder.layer[:blocks], tokens + tower_positions(table, height, width),
                                    norm_bias=True)
    for index in range(blocks):
        get = lambda name, index=index: source[f"encoder.layer.{index}.{name}"]  # noqa: E731 - one block's weights
        ours = f"blocks.{index}."
        qkv_weight, qkv_bias = rebase_heads(torch.cat([get(f"attention.{n}_proj.weight") for n in "qkv"]),
                                            torch.cat([get(f"attention.{n}_proj.bias") for n in "qkv"]),
                                            config.num_attention_heads, moments[index])
        scale_attention, scale_mlp = get("layer_scale1.lambda1"), get("layer_scale2.lambda1")
        state.update({
            ours + "norm1.weight": get("norm1.weight"), ours + "norm1.bias": get("norm1.bias"),
            ours + "attn.qkv.weight": qkv_weight, ours + "attn.qkv.bias": qkv_bias,
            ours + "attn.proj.weight": scale_attention[:, None] * get("attention.o_proj.weight"),
            ours + "attn.proj.bias": scale_attention * get("attention.o_proj.bias"),
            ours + "norm2.weight": get("norm2.weight"), ours + "norm2.bias": get("norm2.bias"),
            ours + "mlp.linear_fc1.weight": get("mlp.fc1.weight"), ours + "mlp.linear_fc1.bias": get("mlp.fc1.bias"),
            ours + "mlp.linear_fc2.weight": scale_mlp[:, None] * get("mlp.fc2.weight"),
            ours + "mlp.linear_fc2.bias": scale_mlp * get("mlp.fc2.bias"),
        })
    fields = {"depth": blocks, "hidden_size": config.hidden_size, "num_heads": config.num_attention_heads,
              "intermediate_size": config.intermediate_size, "hidden_act": config.hidden_act,
              "patch_size": config.patch_size, "temporal_patch_size": temporal_patch_size,
              "num_position_embeddings": len(table)}
    return fields, state


def bare_tower(fields: dict, state: dict, out_hidden_size: int = 256):
    """A Qwen3-VL vision tower alone (no language model), in eval mode, holding ``dinov2_as_qwen3_tower``'s output;
    its mergers' linear layers are random and there is no DeepStack."""
    from qponder_plugin.training.trainers import is_merger
    from transformers import Qwen3VLVisionConfig
    from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLVisionModel

    config = Qwen3VLVisionConfig(**fields, deepstack_visual_indexes=[], out_hidden_size=out_hidden_size)
    tower = Qwen3VLVisionModel._from_config(config).eval()
    missing, unexpected = tower.load_state_dict(state, strict=False)
    assert not unexpected and all(map(is_merger, missing)), (missing, unexpected)
    return tower


@contextmanager
def rotary_off(tower):
    """Within the block, ``tower``'s rotary angles are all zero: it sees no rotary positions."""
    saved = tower.rotary_pos_emb.inv_freq.clone()
    tower.rotary_pos_emb.inv_freq.zero_()
    try:
        yield tower
    finally:
        tower.rotary_pos_emb.inv_freq.copy_(saved)


def raster_order(height: int, width: int, merge: int = 2):
    """For each token of a ``height`` x ``width`` patch grid in the Qwen processor's order (``merge`` x ``merge``
    blocks of patches, block after block), its raster index."""
    import torch

    return torch.arange(height * width).reshape(height // merge, merge, width // merge, merge).transpose(1, 2).flatten()


def tower_images(inputs, image_processor) -> list:
    """The pixels the Qwen processor's output ``inputs`` show the tower, one ``[3, H, W]`` RGB tensor in [0, 1] per
    image (the first of its temporal copies)."""
    import torch

    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (image_processor.image_mean, image_processor.image_std))
    patch, merge = image_processor.patch_size, image_processor.merge_size
    patches = inputs["pixel_values"].reshape(-1, 3, image_processor.temporal_patch_size, patch, patch)[:, :, 0]
    patches, images, start = patches * std + mean, [], 0
    for _, height, width in inputs["image_grid_thw"].tolist():
        own = patches[start:start + height * width][raster_order(height, width, merge).argsort()]
        images.append(own.reshape(height, width, 3, patch, patch).permute(2, 0, 3, 1, 4)
                      .reshape(3, height * patch, width * patch))
        start += height * width
    return images


def tower_states(tower, inputs) -> list[list]:
    """A Qwen3-VL tower's token states after each block for the processor's output ``inputs``: per image, per block,
    ``[N, width]`` in raster order."""
    import torch

    with torch.no_grad():
        hidden = tower(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"], output_hidden_states=True)
    per_image, start = [], 0
    for _, height, width in inputs["image_grid_thw"].tolist():
        order = raster_order(height, width, tower.spatial_merge_size).argsort()
        per_image.append([state[start:start + height * width][order] for state in hidden.hidden_states[1:]])
        start += height * width
    return per_image


def dinov2_states(dinov2, image, blocks: int, *, class_token: bool = False, positions=None) -> list:
    """DINOv2's patch-token states after each of its first ``blocks`` blocks (``[N, width]`` each, raster order) for
    one ``image`` (``[3, H, W]`` RGB in [0, 1]): as DINOv2 runs, with its class token and positions
    (``class_token``); or on the patch tokens alone with ``positions`` added (default: DINOv2's own at this grid),
    which the tower computes with its rotary angles at zero."""
    import torch

    pixels = normalise(image[None], "cpu")
    with torch.no_grad():
        if class_token:
            hidden = dinov2(pixel_values=pixels, output_hidden_states=True).hidden_states
            return [state[0, 1:] for state in hidden[1:blocks + 1]]
        height, width = (side // dinov2.config.patch_size for side in image.shape[-2:])
        hidden = dinov2.embeddings.patch_embeddings(pixels)
        hidden = hidden + (dinov2_positions(dinov2, height, width) if positions is None else positions)
        states = []
        for layer in dinov2.encoder.layer[:blocks]:
            hidden = layer(hidden)
            states.append(hidden[0])
    return states


def deepstack_indexes(blocks: int, deepstack: Sequence[int], text_layers: int) -> list[int]:
    """Qwen3-VL's ``deepstack_visual_indexes`` (0-based) for the outputs of the 1-based ``deepstack`` blocks of a
    ``blocks``-block tower; each feeds one of the language model's first ``len(deepstack)`` layers."""
    if len(deepstack) > text_layers:
        raise ValueError(f"{len(deepstack)} DeepStack blocks feed {len(deepstack)} language-model layers; it has "
                         f"{text_layers}")
    if any(not 1 <= block <= blocks for block in deepstack) or len(set(deepstack)) < len(deepstack):
        raise ValueError(f"DeepStack blocks {list(deepstack)}: each one of the tower's blocks 1-{blocks}, once")
    return [block - 1 for block in sorted(deepstack)]


def transplant_dinov2_qwen3(checkpoint: str | Path, dinov2, output_dir: str | Path, *, blocks: int = 12,
                            deepstack: Sequence[int] = (4, 8), calibration: Sequence[str] = (),
                            position_grid: int | None = None, seed: int = 0) -> Path:
    """Write the Qwen3-VL ``checkpoint`` to ``output_dir`` with its vision tower replaced by ``dinov2``'s first
    ``blocks`` blocks (see ``dinov2_as_qwen3_tower``; heads re-based on the ``calibration`` image files, seen at the
    processor's size, when given), the outputs of the 1-based ``deepstack`` blocks feeding the language model's first
    layers, and fresh mergers; the language model and the processor are kept. Returns ``output_dir``."""
    from transformers import AutoConfig, AutoProcessor

    image = AutoProcessor.from_pretrained(checkpoint).image_processor
    text_layers = AutoConfig.from_pretrained(checkpoint).text_config.num_hidden_layers
    indexes = deepstack_indexes(blocks, deepstack, text_layers)
    pixels = calibration_pixels(calibration, input_side(image)) if calibration else None
    fields, tower_state = dinov2_as_qwen3_tower(dinov2, blocks, image.image_mean, image.image_std,
                                                temporal_patch_size=image.temporal_patch_size,
                                                position_grid=position_grid, calibration=pixels)
    return replace_tower(checkpoint, output_dir, {**fields, "deepstack_visual_indexes": indexes}, tower_state, seed)
