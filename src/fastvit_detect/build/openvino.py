"""The ``openvino-int8`` variant: NNCF's post-training int8 of the package's fp32 graph, kept as a QDQ ``.onnx``.

OpenVINO compiles NNCF's QDQ graph into the same fused int8 kernels as its own IR (docs/openvino-int8: the attention
core as one int8 kernel, GELU fused into the GEMM before it, static activation scales), so the package stays
ONNX-only and its files are verified like every other variant's. onnxruntime runs the same graph slowly (it
dequantizes around every QDQ pair), which is why the manifest marks the variant ``runtime: openvino``.

The recipe (:func:`nncf_quantize_kwargs`) is the benchmark's ``openvino/int8`` system's: one definition for both.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ..backends import OPENVINO
from . import ExportError

VARIANT = "openvino-int8"
FILE = "model_openvino_int8.onnx"
EXTRA = "openvino"

NNCF_RECIPE = {"model_type": "TRANSFORMER", "preset": "MIXED (NNCF's default for TRANSFORMER)",
               "activations_range_estimator": "MINMAX (global min/max, as the exporter's --calibration-method minmax)",
               "ignored": "Convolution (the patch embedding; the exporter quantizes MatMuls only)"}


def require_nncf() -> tuple[Any, Any]:
    """``(nncf, openvino)``, or ExportError naming the extra that installs them."""
    try:
        import nncf
        import openvino
    except ImportError as exc:
        raise ExportError(f"--openvino needs NNCF and OpenVINO ({exc.name or exc} is missing): "
                          f'pip install "fastvit-detect[export,{EXTRA}]"') from exc
    return nncf, openvino


def nncf_quantize_kwargs(pixels: Any) -> dict[str, Any]:
    """``nncf.quantize`` arguments past the model, mirroring the exporter's static int8 where NNCF lets them.

    The calibration is the exporter's ``--quantize static --calibration DIR``: the same images (``pixels``, from
    ``quantize.calibration_pixels``), fed one at a time, and the same range estimate, each activation's global
    min/max over them (the exporter's default ``--calibration-method minmax``; NNCF's own default averages
    per-image extremes). The exporter quantizes MatMuls only, so the patch-embedding convolution stays in float
    here too: quantizing its input cost a trained model's fidelity (one label in 200 flipped, max |dp| 0.87
    instead of 0.002; docs/openvino-int8). The rest is what NNCF documents for transformers,
    ``model_type=TRANSFORMER``: its mixed preset (symmetric per-channel int8 weights, asymmetric int8
    activations), attention MatMuls quantized too, SmoothQuant and fast bias correction.
    """
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    return {"subset_size": len(pixels), "model_type": nncf.ModelType.TRANSFORMER,
            "ignored_scope": nncf.IgnoredScope(types=["Convolution", "Conv"], validate=False),  # OpenVINO, ONNX
            "advanced_parameters": AdvancedQuantizationParameters(
                activations_range_estimator_params=RangeEstimatorParametersSet.MINMAX)}


def make_openvino_int8(fp32_path: Path, destination: Path, pixels: np.ndarray, calibration: str) -> dict[str, Any]:
    """Quantize ``fp32_path`` (a single-file ONNX graph) with NNCF on ``pixels`` (normalized NCHW calibration
    images) into ``destination``; returns the manifest's quantization figures. ``calibration`` says where the
    images came from."""
    nncf, openvino = require_nncf()
    import onnx

    model = onnx.load(str(fp32_path))
    input_name = model.graph.input[0].name
    dataset = nncf.Dataset([{input_name: pixels[index:index + 1]} for index in range(len(pixels))])
    with contextlib.redirect_stdout(sys.stderr):  # NNCF's progress bars: keep stdout for results
        quantized = nncf.quantize(model, dataset, **nncf_quantize_kwargs(pixels))
    onnx.save_model(quantized, str(destination))
    return {"tool": "nncf.quantize (ONNX backend, QDQ)", "nncf": nncf.__version__,
            "openvino": openvino.get_version(), **NNCF_RECIPE, "calibration": calibration,
            "calibration_images": len(pixels), "runs_on": OPENVINO}
