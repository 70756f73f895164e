"""The fp16 ONNX conversion keeps normalisation in fp32, as its docstring says (ONNX Runtime's
default op block list holds no normalisation op)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from car_engine.iqs.onnx import to_fp16


def test_layer_norm_stays_fp32_and_matmul_goes_fp16(tmp_path):
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "scale"),
             numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "bias"),
             numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), "w")]
    nodes = [helper.make_node("LayerNormalization", ["x", "scale", "bias"], ["n"], axis=-1),
             helper.make_node("MatMul", ["n", "w"], ["y"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])], initializer=inits)
    src = tmp_path / "fp32.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), src)
    out = onnx.load(str(to_fp16(src, tmp_path / "fp16.onnx")))
    types = {t.name: t.data_type for t in out.graph.initializer}
    assert types["scale"] == types["bias"] == TensorProto.FLOAT  # normalisation in fp32
    assert types["w"] == TensorProto.FLOAT16
    assert out.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT  # I/O kept
