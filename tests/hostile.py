"""Small hand-built packages and inputs for the hostile-input tests: graphs with the wrong input type or a fixed
batch, graphs that return NaN, graphs that load weights from files nobody vouches for.

The graphs are built with ``onnx.helper`` (the export extra) and are tiny: mean colour per channel -> a 3x2
matrix -> two logits, so every package here loads and runs in milliseconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

SIDE = 32
PROCESSOR = {
    "image_processor_type": "ViTImageProcessor", "do_resize": True, "size": {"height": SIDE, "width": SIDE},
    "resample": 2, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
    "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
}
CONFIG = {"model_type": "vit", "image_size": SIDE, "id2label": {"0": "Fake", "1": "Real"},
          "label2id": {"Fake": 0, "Real": 1}}
# Red pushes towards Fake, blue towards Real: the tiny graph's verdict follows the image's colour.
WEIGHTS = np.array([[4.0, -4.0], [0.0, 0.0], [-4.0, 4.0]], dtype=np.float32)


def tiny_graph(input_type: str = "float", batch: int | str = "batch_size", nan_output: bool = False,
               external: str | None = None):
    """The graph as an onnx ModelProto. ``input_type``: the input's element type (float, double, float16,
    uint8); ``batch``: the batch axis (a name: dynamic); ``nan_output``: logits multiplied by NaN;
    ``external``: keep the weights in that external-data file."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    element = {"float": TensorProto.FLOAT, "double": TensorProto.DOUBLE, "float16": TensorProto.FLOAT16,
               "uint8": TensorProto.UINT8}[input_type]
    nodes = []
    source = "pixel_values"
    if input_type != "float":
        nodes.append(helper.make_node("Cast", [source], ["as_float"], to=TensorProto.FLOAT))
        source = "as_float"
    nodes.append(helper.make_node("ReduceMean", [source, "axes"], ["mean4"], keepdims=0))
    nodes.append(helper.make_node("MatMul", ["mean4", "weights"], ["raw"]))
    last = "raw"
    if nan_output:
        nodes.append(helper.make_node("Mul", ["raw", "nan"], ["poisoned"]))
        last = "poisoned"
    nodes.append(helper.make_node("Identity", [last], ["logits"]))
    initializers = [numpy_helper.from_array(np.array([2, 3], dtype=np.int64), "axes"),
                    numpy_helper.from_array(WEIGHTS, "weights"),
                    numpy_helper.from_array(np.array([np.nan], dtype=np.float32), "nan")]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("pixel_values", element, [batch, 3, SIDE, SIDE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 2])], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    if external is not None:
        from onnx.external_data_helper import convert_model_to_external_data

        convert_model_to_external_data(model, all_tensors_to_one_file=True, location=external, size_threshold=0)
    else:
        onnx.checker.check_model(model)
    return model


def write_package(directory: Path, graph=None, config: dict | None = None, processor: dict | None = None,
                  graph_name: str = "model.onnx") -> Path:
    """An Optimum-layout package (no manifest) around ``graph`` (default: the plain tiny graph)."""
    import onnx

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config or CONFIG))
    (directory / "preprocessor_config.json").write_text(json.dumps(processor or PROCESSOR))
    onnx.save_model(graph if graph is not None else tiny_graph(), str(directory / graph_name))
    return directory


def colour(rgb: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> np.ndarray:
    return np.full((size[1], size[0], 3), rgb, dtype=np.uint8)
