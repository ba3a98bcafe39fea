"""The package's ONNX graphs: the fp32 export with Optimum, and weights moved beside a graph."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from ..package import DATA_SUFFIX


def export_fp32(model: Any, destination: Path, opset: int, image_size: tuple[int, int]) -> None:
    """ONNX export with Optimum (dynamic batch axis); channel and spatial axes are pinned to the package's size."""
    import onnx
    from optimum.exporters.onnx import onnx_export_from_model
    from optimum.utils import logging as optimum_logging

    optimum_logging.set_verbosity_error()  # "deduplication check needs accelerate": ViT ties no weights anyway

    with tempfile.TemporaryDirectory() as scratch:
        onnx_export_from_model(model, scratch, opset=opset, task="image-classification", do_validation=False)
        graph = onnx.load(os.path.join(scratch, "model.onnx"))
    # Optimum leaves channels/height/width symbolic; fixing them lets the runtime refuse another model's graph
    # and lets onnxruntime plan static shapes. The batch axis stays dynamic.
    dims = graph.graph.input[0].type.tensor_type.shape.dim
    for dim, value in zip(dims[1:], (3, *image_size)):
        dim.Clear()
        dim.dim_value = value
    onnx.checker.check_model(graph)
    onnx.save(graph, str(destination))


def move_weights_to_data_file(path: Path) -> Path:
    """Rewrite ``path`` as a graph plus ``<name>_data`` holding its weights; returns the data file.

    onnxruntime maps a graph's external data instead of copying weights out of the parsed protobuf, which lowers
    peak memory and start-up time (figures in fastvit_detect/package.py). The graph's nodes are untouched.
    """
    import onnx

    model = onnx.load(str(path))
    data = path.with_name(path.name + DATA_SUFFIX)
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data.name, size_threshold=1024)
    return data
