"""``python -m benchmarks.profile_int8``: where OpenVINO's NNCF int8 gains its time over onnxruntime's int8.

    python -m benchmarks.profile_int8 --cache-dir benchmarks/results/cache --output profile.json

On the benchmark's own artifacts (the same cache: seeded ViT-B/16 package, NNCF int8 model), on one preprocessed
batch:

* **timing**, unprofiled, in settled turns (fastvit_detect.build.timing): onnxruntime on the package's int8 graph (what
  fastvit-detect runs), OpenVINO on the NNCF model, and the prototypes below;
* **op by op**, from each runtime's own profiler: onnxruntime's ``SessionOptions.enable_profiling`` (kernel time per
  node, summed by op type) and OpenVINO's ``PERF_COUNT`` / ``get_profiling_info()`` (real time per executed node,
  summed by node type and kernel), per call, after warm-up;
* **prototypes**: OpenVINO's int8 model with ``INFERENCE_PRECISION_HINT=f32`` (how much comes from bf16 in the
  layers left unquantized); NNCF's ONNX backend on the same graph and calibration, a QDQ ``.onnx`` file, run by
  onnxruntime and by OpenVINO (could one package file serve both runtimes?).
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fastvit_detect import Detector
from fastvit_detect.build import timing as measure
from fastvit_detect.build.openvino import NNCF_RECIPE, nncf_quantize_kwargs
from fastvit_detect.session import physical_core_count, session_options

from . import artifacts as artifacts_module
from . import images, machine
from .progress import log

# Node types -> what they compute in a ViT encoder, so both runtimes' tables line up.
LINEAR = "linear layers (int8 GEMMs)"
ATTENTION = "attention: QK^T, softmax, PV"
CATEGORIES = {
    # onnxruntime (int8 graph after its graph optimizations)
    "MatMulIntegerToFloat": LINEAR, "DynamicQuantizeMatMul": LINEAR, "MatMulInteger": LINEAR,
    "QLinearMatMul": LINEAR, "DynamicQuantizeLinear": "quantize / dequantize",
    "QuantizeLinear": "quantize / dequantize",
    "DequantizeLinear": "quantize / dequantize", "MatMul": ATTENTION, "FusedMatMul": ATTENTION, "Softmax": ATTENTION,
    "LayerNormalization": "layernorm", "SkipLayerNormalization": "layernorm", "Gelu": "gelu", "BiasGelu": "gelu",
    "FastGelu": "gelu", "Conv": "patch embedding",
    # OpenVINO CPU plugin: GELU is fused into the FullyConnected before it; a Subgraph is a Snippets kernel, here
    # the whole attention (QK^T, softmax, PV) in one.
    "FullyConnected": LINEAR, "FullyConnectedQuantizedLegacy": LINEAR, "Subgraph": ATTENTION,
    "MVN": "layernorm", "FakeQuantize": "quantize / dequantize", "Reorder": "layout reorders",
    "Convolution": "patch embedding",
}


def category(node_type: str) -> str:
    return CATEGORIES.get(node_type, "elementwise, transposes, reshapes, other")


def layer_kind(node_name: str) -> str | None:
    """'/vit/encoder/layer.3/attention/attention/query/MatMul_quant' -> 'attention/attention/query'; None outside
    the encoder layers' linear and attention nodes."""
    match = re.search(r"layer\.\d+/(attention/attention/(?:query|key|value)|attention/output/dense|intermediate/dense"
                      r"|output/dense|attention/attention/MatMul(?:_1)?)", node_name)
    return match.group(1) if match else None


def ort_profile(path: Path, threads: int, pixels: np.ndarray, calls: int, warmup: int) -> dict[str, Any]:
    """Kernel time per op type per call, from onnxruntime's profiler, over ``calls`` runs after ``warmup``."""
    import onnxruntime as ort

    options = session_options(threads)
    options.enable_profiling = True
    with tempfile.TemporaryDirectory() as scratch:
        options.profile_file_prefix = str(Path(scratch) / "ort")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: pixels}
        for _ in range(warmup + calls):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    runs = sorted(event["ts"] for event in events if event.get("name") == "model_run")
    start = runs[warmup]
    by_type: dict[str, float] = defaultdict(float)
    by_layer: dict[str, float] = defaultdict(float)
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time") and event["ts"] >= start:
            by_type[event["args"]["op_name"]] += event["dur"] / 1000 / calls
            kind = layer_kind(event["name"])
            if kind:
                by_layer[f"{kind} [{event['args']['op_name']}]"] += event["dur"] / 1000 / calls
    return {"by_type": dict(by_type), "by_layer": dict(sorted(by_layer.items())),
            "model_run_ms": float(np.median([e["dur"] / 1000 for e in events
                                             if e.get("name") == "model_run"][warmup:]))}


def ov_profile(compiled: Any, pixels: np.ndarray, calls: int, warmup: int) -> dict[str, Any]:
    """Real time per node type (and per kernel) per call, from OpenVINO's PERF_COUNT, after ``warmup`` calls."""
    request = compiled.create_infer_request()
    by_type: dict[str, float] = defaultdict(float)
    by_kernel: dict[str, float] = defaultdict(float)
    by_layer: dict[str, float] = defaultdict(float)
    for index in range(warmup + calls):
        request.infer({0: pixels})
        if index < warmup:
            continue
        for node in request.get_profiling_info():
            if node.status.name != "EXECUTED":
                continue
            milliseconds = node.real_time.total_seconds() * 1000 / calls
            by_type[node.node_type] += milliseconds
            by_kernel[f"{node.node_type} [{node.exec_type}]"] += milliseconds
            kind = layer_kind(node.node_name)
            if kind:
                by_layer[f"{kind} [{node.node_type}]"] += milliseconds
    return {"by_type": dict(by_type), "by_kernel": dict(sorted(by_kernel.items(), key=lambda kv: -kv[1])[:25]),
            "by_layer": dict(sorted(by_layer.items()))}


def by_category(by_type: dict[str, float]) -> dict[str, float]:
    out: dict[str, float] = defaultdict(float)
    for node_type, milliseconds in by_type.items():
        out[category(node_type)] += milliseconds
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def nncf_qdq_onnx(artifacts: artifacts_module.Artifacts, directory: Path) -> Path:
    """NNCF's ONNX backend on the package's fp32 graph with the benchmark's NNCF recipe: a QDQ .onnx file."""
    import nncf
    import onnx

    target = directory / "model_qdq.onnx"
    recipe_file = directory / "recipe.json"
    recipe = json.dumps(NNCF_RECIPE, sort_keys=True)
    if target.is_file() and recipe_file.is_file() and recipe_file.read_text() == recipe:
        return target
    pixels = artifacts_module.calibration_pixels(
        artifacts, Detector.load(artifacts.package, variant="fp32", threads=1).preprocessor)
    log(f"quantizing with NNCF's ONNX backend ({len(pixels)} calibration images)")
    quantized = nncf.quantize(onnx.load(str(artifacts.package / "model.onnx")),
                              nncf.Dataset([{"pixel_values": pixels[i : i + 1]} for i in range(len(pixels))]),
                              **nncf_quantize_kwargs(pixels))
    directory.mkdir(parents=True, exist_ok=True)
    onnx.save(quantized, str(target))
    recipe_file.write_text(recipe)
    return target


def time_systems(results: dict[str, Any], calls: dict[str, Callable[[np.ndarray], Any]], pixels: np.ndarray,
                 batch_size: int, rounds: int) -> None:
    """Unprofiled timing in settled turns; every ratio against onnxruntime's int8 (the first of ``calls``)."""
    monitor = machine.ForeignLoad()
    timed = measure.interleave(list(calls), list(range(rounds * 5)), lambda key, _: calls[key](pixels),
                               block=5, warmup=[0, 0], progress=log, label=f"  batch {batch_size}")
    anchor = timed.samples[next(iter(calls))]
    systems = {key: {**measure.percentiles_ms(samples), "vs_onnxruntime_int8": measure.paired_ratio(anchor, samples)}
               for key, samples in timed.samples.items()}
    results["timing"][batch_size] = {"foreign_load_cores": monitor.cores(), "failures": timed.failures,
                                     "systems": systems}
    for key, figure in systems.items():
        ratio = figure["vs_onnxruntime_int8"]
        log(f"  {key}: p50 {figure['p50_ms'] / batch_size:.1f} ms/image, "
            f"{ratio['median']:.2f}x onnxruntime int8's speed ({ratio['p10']:.2f}-{ratio['p90']:.2f})")


def timing_parser(prog: str, doc: str | None) -> argparse.ArgumentParser:
    """The options this module and benchmarks.openvino_ep share."""
    parser = argparse.ArgumentParser(prog=prog, description=(doc or "").split("\n\n")[0])
    parser.add_argument("--cache-dir", type=Path, required=True, help="the benchmark's --cache-dir")
    parser.add_argument("--output", type=Path, help="write every figure as JSON here")
    parser.add_argument("--batch-sizes", type=lambda text: [int(v) for v in text.split(",")], default=[1, 8])
    parser.add_argument("--rounds", type=int, default=6, help="timed turns of 5 calls per system (default 6; 0: none)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = timing_parser("python -m benchmarks.profile_int8", __doc__)
    parser.add_argument("--profile-calls", type=int, default=10, help="profiled calls per runtime (default 10)")
    parser.add_argument("--no-prototypes", action="store_true", help="skip the QDQ/f32 prototypes")
    parser.add_argument("--preset", default="vit-base", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    import openvino

    cache = args.cache_dir.resolve()
    built = artifacts_module.prepare(None, args.preset, cache, calibration_dir=images.calibration_photos(cache))
    settings = artifacts_module.openvino_int8(built)
    threads = physical_core_count()
    core = openvino.Core()
    ort_int8 = Detector.load(built.package, variant="int8", threads=threads)
    ov_int8 = core.compile_model(str(built.openvino_int8_xml), "CPU", {"INFERENCE_NUM_THREADS": threads})
    calls: dict[str, Callable[[np.ndarray], Any]] = {
        "onnxruntime int8 (fastvit-detect)": ort_int8.run_logits,
        "openvino int8 (NNCF)": lambda x: ov_int8(x),
    }
    paths: dict[str, Path] = {}
    if not args.no_prototypes:
        ov_int8_f32 = core.compile_model(str(built.openvino_int8_xml), "CPU",
                                         {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32"})
        calls["openvino int8 (NNCF), rest in f32"] = lambda x: ov_int8_f32(x)
        qdq = nncf_qdq_onnx(built, cache / f"nncf-qdq-{built.package.name}")
        paths["qdq"] = qdq
        import onnxruntime as ort

        ort_qdq = ort.InferenceSession(str(qdq), session_options(threads), providers=["CPUExecutionProvider"])
        ov_qdq = core.compile_model(str(qdq), "CPU", {"INFERENCE_NUM_THREADS": threads})
        calls["onnxruntime on NNCF's QDQ onnx"] = lambda x: ort_qdq.run(None, {"pixel_values": x})
        calls["openvino on NNCF's QDQ onnx"] = lambda x: ov_qdq(x)

    photos = images.sample_photos()
    results: dict[str, Any] = {"machine": machine.describe(), "threads": threads, "nncf": settings,
                               "openvino_precision": ov_int8.get_property("INFERENCE_PRECISION_HINT").get_type_name(),
                               "timing": {}, "profiles": {}}
    for batch_size in args.batch_sizes:
        pixels = ort_int8.preprocessor([photos[i % len(photos)] for i in range(batch_size)])
        if args.rounds > 0:
            time_systems(results, calls, pixels, batch_size, args.rounds)
        log(f"batch {batch_size}: profiling onnxruntime and OpenVINO")
        ort_figures = ort_profile(ort_int8.variant.path, threads, pixels, args.profile_calls, warmup=2)
        ov_perf = core.compile_model(str(built.openvino_int8_xml), "CPU",
                                     {"INFERENCE_NUM_THREADS": threads, "PERF_COUNT": True})
        ov_figures = ov_profile(ov_perf, pixels, args.profile_calls, warmup=2)
        profiles = {"onnxruntime int8": {**ort_figures, "by_category": by_category(ort_figures["by_type"])},
                    "openvino int8": {**ov_figures, "by_category": by_category(ov_figures["by_type"])}}
        if "qdq" in paths:
            qdq_figures = ort_profile(paths["qdq"], threads, pixels, args.profile_calls, warmup=2)
            profiles["onnxruntime on NNCF's QDQ onnx"] = {**qdq_figures,
                                                          "by_category": by_category(qdq_figures["by_type"])}
        results["profiles"][batch_size] = profiles
        for name, figures in profiles.items():
            total = sum(figures["by_type"].values())
            log(f"  {name}: {total / batch_size:.1f} ms/image in profiled kernels; "
                + ", ".join(f"{k} {v / batch_size:.1f}" for k, v in figures["by_category"].items()))
    if args.output:
        args.output.write_text(json.dumps(results, indent=2, default=str) + "\n")
        log(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
