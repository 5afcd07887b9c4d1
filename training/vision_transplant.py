"""Start a vision tower from a pretrained ViT instead of from scratch: DINOv2's first blocks, carried over exactly.

A Qwen2.5-VL vision block is a pre-norm transformer block like DINOv2's. The differences are absorbed by the weights:

- RMSNorm instead of LayerNorm: every write to the residual stream is centred (its mean over channels removed), so
  the stream has zero mean and RMSNorm computes LayerNorm. LayerNorm's bias is folded into the next layer's bias.
- No LayerScale: it is folded into the attention's and the MLP's output projections.
- A gated MLP, ``down(act(gate(x)) * up(x))``: ``up`` gets weight 0 and bias 1, so it computes DINOv2's
  ``fc2(gelu(fc1(x)))``.
- A patch embedding without bias, fed two temporal copies of each image normalised with the processor's mean and
  standard deviation: each copy gets half the weight, the weight is rescaled from ImageNet's normalisation, and the
  bias (plus the normalisation's shift) is added by an extra first block whose only non-zero weight is its
  attention-output bias.

What cannot carry over is DINOv2's class token and its learned absolute positions. The tower keeps Qwen2.5-VL's 2-D
rotary positions with their usual base (10,000), which other runtimes (vLLM among them) hard-code. So with the rotary
angles at zero the tower computes exactly DINOv2's blocks on the patch tokens alone; the vision fine-tune
(``warm_up_vision`` with scores, at a low learning rate) then adapts it to its positions. The merger, which maps the
tower to the language model, starts fresh.
"""

from __future__ import annotations

from pathlib import Path

from .vision_teachers import IMAGENET


def dinov2_as_qwen_tower(dinov2, blocks: int, image_mean, image_std) -> tuple[dict, dict]:
    """The Qwen2.5-VL vision config fields and tower state dict that compute ``dinov2``'s (a transformers
    ``Dinov2Model``) patch embedding and first ``blocks`` blocks, for pixels normalised with ``image_mean`` and
    ``image_std`` (the Qwen processor's). The merger's weights are not included."""
    import torch

    config, source = dinov2.config, dinov2.state_dict()
    if config.num_hidden_layers < blocks:
        raise ValueError(f"DINOv2 has {config.num_hidden_layers} blocks, not {blocks}")
    width, inner = config.hidden_size, config.intermediate_size
    centre = torch.eye(width) - 1.0 / width  # removes the mean over channels

    patch_weight = source["embeddings.patch_embeddings.projection.weight"]
    patch_bias = source["embeddings.patch_embeddings.projection.bias"]
    (ours_mean, ours_std), (their_mean, their_std) = ((torch.tensor(v).view(1, 3, 1, 1) for v in pair)
                                                      for pair in ((image_mean, image_std), IMAGENET))
    patch_bias = patch_bias + (patch_weight * (ours_mean - their_mean) / their_std).sum((1, 2, 3))
    patch_weight = patch_weight * ours_std / their_std
    frames = 2  # Qwen2.5-VL's temporal patch: a still image is given twice
    state = {"patch_embed.proj.weight": (centre @ patch_weight.reshape(width, -1)).reshape(patch_weight.shape)
             .unsqueeze(2).repeat(1, 1, frames, 1, 1) / frames}

    zeros = torch.zeros
    state.update({"blocks.0.norm1.weight": torch.ones(width), "blocks.0.norm2.weight": torch.ones(width),
                  "blocks.0.attn.qkv.weight": zeros(3 * width, width), "blocks.0.attn.qkv.bias": zeros(3 * width),
                  "blocks.0.attn.proj.weight": zeros(width, width), "blocks.0.attn.proj.bias": centre @ patch_bias,
                  "blocks.0.mlp.gate_proj.weight": zeros(inner, width), "blocks.0.mlp.gate_proj.bias": zeros(inner),
                  "blocks.0.mlp.up_proj.weight": zeros(inner, width), "blocks.0.mlp.up_proj.bias": zeros(inner),
                  "blocks.0.mlp.down_proj.weight": zeros(width, inner), "blocks.0.mlp.down_proj.bias": zeros(width)})
    for index in range(blocks):
        get = lambda name: source[f"encoder.layer.{index}.{name}"]  # noqa: E731 - one block's weights
        ours = f"blocks.{index + 1}."
        qkv_weight = torch.cat([get(f"attention.{n}_proj.weight") for n in "qkv"])
        qkv_bias = torch.cat([get(f"attention.{n}_proj.bias") for n in "qkv"]) + qkv_weight @ get("norm1.bias")
        scale_attention, scale_mlp = get("layer_scale1.lambda1"), get("layer_scale2.lambda1")
        state.update({
            ours + "norm1.weight": get("norm1.weight"),
            ours + "attn.qkv.weight": qkv_weight,
            ours + "attn.qkv.bias": qkv_bias,
            ours + "attn.proj.weight": centre @ (scale_attention[:, None] * get("attention.o_proj.weight")),
            ours + "attn.proj.bias": centre @ (scale_attention * get("attention.o_proj.bias")),
            ours + "norm2.weight": get("norm2.weight"),
            ours + "mlp.gate_proj.weight": get("mlp.fc1.weight"),
            ours + "mlp.gate_proj.bias": get("mlp.fc1.bias") + get("mlp.fc1.weight") @ get("norm2.bias"),
            ours + "mlp.up_proj.weight": zeros(inner, width),
            ours + "mlp.up_proj.bias": torch.ones(inner),
            ours + "mlp.down_proj.weight": centre @ (scale_mlp[:, None] * get("mlp.fc2.weight")),
            ours + "mlp.down_proj.bias": centre @ (scale_mlp * get("mlp.fc2.bias")),
        })
    fields = {"depth": blocks + 1, "hidden_size": width, "num_heads": config.num_attention_heads,
              "intermediate_size": inner, "hidden_act": config.hidden_act, "patch_size": config.patch_size,
              "fullatt_block_indexes": list(range(blocks + 1))}
    return fields, state


def _in_tower(name: str) -> bool:
    """Whether a state-dict key is the vision tower's (``visual.`` or ``model.visual.``, by transformers version)."""
    return ".visual." in f".{name}"


def transplant_dinov2(checkpoint: str | Path, dinov2, output_dir: str | Path, *, blocks: int = 4,
                      seed: int = 0) -> Path:
    """Write ``checkpoint`` to ``output_dir`` with its vision tower replaced by ``dinov2``'s first ``blocks`` blocks
    (see ``dinov2_as_qwen_tower``) and a fresh merger; the language model and the processor are kept. Returns
    ``output_dir``."""
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    from .trainers import save_with_card, vision_tower

    processor = AutoProcessor.from_pretrained(checkpoint)
    image = processor.image_processor
    fields, tower_state = dinov2_as_qwen_tower(dinov2, blocks, image.image_mean, image.image_std)
    if fields["patch_size"] != image.patch_size:
        raise ValueError(f"DINOv2's patches are {fields['patch_size']} px, the processor's {image.patch_size} px")
    config = AutoConfig.from_pretrained(checkpoint)
    for name, value in fields.items():
        setattr(config.vision_config, name, value)
    source = AutoModelForImageTextToText.from_pretrained(checkpoint)
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config)
    model.generation_config = source.generation_config
    kept = {name: value for name, value in source.state_dict().items() if not _in_tower(name)}
    missing, unexpected = model.load_state_dict(kept, strict=False)
    if unexpected or not all(map(_in_tower, missing)):
        raise ValueError(f"transplant: the checkpoint does not fit: missing {missing}, unexpected {unexpected}")
    missing, unexpected = vision_tower(model).load_state_dict(tower_state, strict=False)
    assert not unexpected and all(name.startswith("merger.") for name in missing), (missing, unexpected)
    return save_with_card(model, processor, output_dir, checkpoint)
