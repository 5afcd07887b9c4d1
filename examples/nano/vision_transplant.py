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
rotary positions with their usual base (10,000), which other runtimes (vLLM among them) hard-code. With the rotary
angles at zero the tower computes exactly DINOv2's blocks on the patch tokens alone. The rotary embedding turns most
q/k channels by large angles across an image, and would scramble DINOv2's position-free attention, so each head's
queries and keys are re-based (exactly: every score q·k is unchanged) to put the components that carry most of the
scores in the channels it barely turns. On the nano recipe's transplant this cut the tower's drift from its
rotary-free output from 39% to 1.4% (``benchmarks/rotary_drift.py`` here). The vision fine-tune (``vision_tune``, at
a low learning rate for these blocks) then adapts the tower to its positions. The merger, which maps the tower to
the language model, starts fresh.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from dinov2 import IMAGENET, normalise

log = logging.getLogger(__name__)


def rotary_slots(head_dim: int) -> list[int]:
    """A Qwen2.5-VL or Qwen3-VL vision head's q/k channels (both lay out their 2-D rotary alike), least turned first.
    Channels c and c + head_dim/2 turn together, at frequency index c mod head_dim/4 (the frequency falls as the index
    grows), along the height for c mod head_dim/2 < head_dim/4 and along the width otherwise."""
    half, quarter = head_dim // 2, head_dim // 4
    return [channel for index in reversed(range(quarter)) for axis in (0, quarter)
            for channel in (index + axis, index + axis + half)]


def rebase_heads(qkv_weight, qkv_bias, heads: int, moment=None):
    """``qkv_weight`` and ``qkv_bias`` with each head's query and key rows re-based: every score q·k stays the same,
    and the components that carry most of it move to the channels the rotary embedding turns least (``rotary_slots``).
    Each head's score, a bilinear form in ``[x, 1]``, is whitened by the inputs' second moment ``moment`` (the
    identity if None: the weights alone decide) and split by SVD into rank-one parts, strongest first."""
    import torch

    width = qkv_weight.shape[1]
    head_dim = width // heads
    slots = torch.tensor(rotary_slots(head_dim))
    moment = torch.eye(width + 1) if moment is None else moment
    moment = moment.double() + 1e-6 * moment.diagonal().mean() * torch.eye(width + 1, dtype=torch.float64)
    values, vectors = torch.linalg.eigh(moment)
    root, inverse_root = ((vectors * values.pow(power)) @ vectors.T for power in (0.5, -0.5))
    rows = torch.cat([qkv_weight, qkv_bias[:, None]], 1).double()
    for head in range(heads):
        query, key = head * head_dim + slots, width + head * head_dim + slots
        left, strength, right = torch.linalg.svd(root @ rows[query].T @ rows[key] @ root)
        strength = strength[:head_dim, None].sqrt()  # the scores have rank head_dim at most
        rows[query] = strength * (left[:, :head_dim].T @ inverse_root)
        rows[key] = strength * (right[:head_dim] @ inverse_root)
    rows = rows.to(qkv_weight.dtype)
    return rows[:, :-1].contiguous(), rows[:, -1].contiguous()


def qkv_input_moments(layers, hidden, *, norm_bias: bool = False) -> list:
    """For each of DINOv2's ``layers`` run in turn on the tokens ``hidden`` (``[B, N, width]``), the second moment of
    ``[x, 1]`` over the tokens, where x is what the tower's q/k/v projection reads with the rotary angles at zero: the
    LayerNorm output; without its bias (which the Qwen2.5-VL tower folds into the projection's) unless ``norm_bias``."""
    import torch

    moments = []
    with torch.no_grad():
        for layer in layers:
            x = (layer.norm1(hidden) - (0 if norm_bias else layer.norm1.bias)).flatten(0, 1).double()
            x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
            moments.append(x.T @ x / len(x))
            hidden = layer(hidden)
    return moments


def refolded_patch_embedding(source: dict, image_mean, image_std) -> tuple:
    """DINOv2's patch-embedding weight and bias (from its state dict ``source``) for pixels normalised with
    ``image_mean`` and ``image_std`` instead of ImageNet's: the same embedding of the same image."""
    import torch

    patch_weight = source["embeddings.patch_embeddings.projection.weight"]
    patch_bias = source["embeddings.patch_embeddings.projection.bias"]
    (ours_mean, ours_std), (their_mean, their_std) = ((torch.tensor(v).view(1, 3, 1, 1) for v in pair)
                                                      for pair in ((image_mean, image_std), IMAGENET))
    patch_bias = patch_bias + (patch_weight * (ours_mean - their_mean) / their_std).sum((1, 2, 3))
    return patch_weight * ours_std / their_std, patch_bias


def dinov2_as_qwen_tower(dinov2, blocks: int, image_mean, image_std, calibration=None) -> tuple[dict, dict]:
    """The Qwen2.5-VL vision config fields and tower state dict that compute ``dinov2``'s (a transformers
    ``Dinov2Model``) patch embedding and first ``blocks`` blocks, for pixels normalised with ``image_mean`` and
    ``image_std`` (the Qwen processor's). The merger's weights are not included. Attention heads are re-based for
    the rotary embedding (``rebase_heads``), ranking their score components on ``calibration`` images (a
    ``(N, 3, H, W)`` RGB tensor in [0, 1]) or, without them, on the weights alone."""
    import torch

    config, source = dinov2.config, dinov2.state_dict()
    if config.num_hidden_layers < blocks:
        raise ValueError(f"DINOv2 has {config.num_hidden_layers} blocks, not {blocks}")
    width, inner = config.hidden_size, config.intermediate_size
    centre = torch.eye(width) - 1.0 / width  # removes the mean over channels

    patch_weight, patch_bias = refolded_patch_embedding(source, image_mean, image_std)
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
    moments = [None] * blocks
    if calibration is not None:
        with torch.no_grad():
            patches = dinov2.embeddings.patch_embeddings(normalise(calibration, "cpu"))
        moments = qkv_input_moments(dinov2.encoder.layer[:blocks], patches)
    for index in range(blocks):
        get = lambda name, index=index: source[f"encoder.layer.{index}.{name}"]  # noqa: E731 - one block's weights
        ours = f"blocks.{index + 1}."
        qkv_weight = torch.cat([get(f"attention.{n}_proj.weight") for n in "qkv"])
        qkv_bias = torch.cat([get(f"attention.{n}_proj.bias") for n in "qkv"]) + qkv_weight @ get("norm1.bias")
        qkv_weight, qkv_bias = rebase_heads(qkv_weight, qkv_bias, config.num_attention_heads, moments[index])
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


def calibration_pixels(images: Sequence[str], side: int):
    """The readable ones of ``images`` resized to ``side`` x ``side``, as one RGB tensor in [0, 1]."""
    import torch
    from torchvision.transforms import v2

    from qponder_plugin.images import ImageError, load_image

    pixels = []
    for path in images:
        try:
            pixels.append(v2.functional.pil_to_tensor(load_image(path).resize((side, side))))
        except ImageError as exc:
            log.warning("transplant calibration skips an image: %s", exc)
    if not pixels:
        raise ValueError("transplant: none of the calibration images could be read")
    return torch.stack(pixels).float() / 255.0


def transplant_dinov2(checkpoint: str | Path, dinov2, output_dir: str | Path, *, blocks: int = 4,
                      calibration: Sequence[str] = (), seed: int = 0) -> Path:
    """Write ``checkpoint`` to ``output_dir`` with its vision tower replaced by ``dinov2``'s first ``blocks`` blocks
    (see ``dinov2_as_qwen_tower``; its heads re-based on the ``calibration`` image files when given) and a fresh
    merger; the language model and the processor are kept. Returns ``output_dir``."""
    from transformers import AutoProcessor

    image = AutoProcessor.from_pretrained(checkpoint).image_processor
    pixels = calibration_pixels(calibration, input_side(image)) if calibration else None
    fields, tower_state = dinov2_as_qwen_tower(dinov2, blocks, image.image_mean, image.image_std, pixels)
    return replace_tower(checkpoint, output_dir, fields, tower_state, seed)


def input_side(image_processor) -> int:
    """The side of the square image the processor's pixel budget makes."""
    from qponder_plugin.default_plugins.transformers_backend import pixel_budget

    return round(pixel_budget(image_processor) ** 0.5)


def replace_tower(checkpoint: str | Path, output_dir: str | Path, fields: dict, tower_state: dict, seed: int) -> Path:
    """Write ``checkpoint`` to ``output_dir`` with its vision config's ``fields`` set and its vision tower holding
    ``tower_state``; the tower's mergers, which ``tower_state`` leaves out, start fresh (seeded by ``seed``), and the
    language model and the processor are kept. Returns ``output_dir``."""
    import torch
    from qponder_plugin.training.trainers import is_merger, save_with_card, vision_tower
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(checkpoint)
    if fields["patch_size"] != processor.image_processor.patch_size:
        raise ValueError(f"DINOv2's patches are {fields['patch_size']} px, the processor's "
                         f"{processor.image_processor.patch_size} px")
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
    assert not unexpected and all(map(is_merger, missing)), (missing, unexpected)
    return save_with_card(model, processor, output_dir, checkpoint)
