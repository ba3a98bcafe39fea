"""The int8 variant: dynamic and static recipes, and --optimize auto's choice among candidates.

Which CPUs may run what is the runtime's policy (fastvit_detect.session: VNNI_FLAGS, has_vnni); a recipe with full
8-bit weights records it in the manifest, so the runtime refuses the variant on CPUs without VNNI.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..fidelity import logit_agreement
from ..media import find_images
from ..preprocess import Preprocessor
from ..session import VNNI_FLAGS, has_vnni, physical_core_count
from . import ExportError, Log
from .timing import interleave


@dataclass(frozen=True)
class Int8Options:
    """How the int8 variant is made. ``method``: dynamic | static | none; ``optimize``: none | auto."""

    method: str = "dynamic"
    per_channel: bool = True
    reduce_range: bool = True
    calibration_dir: Path | None = None
    calibration_method: str = "minmax"
    calibration_limit: int = 64
    optimize: str = "none"
    cpu_specific: bool = False  # --optimize auto may pick a candidate that needs this CPU's instruction set
    max_probability_diff: float = 0.05  # --optimize auto: fidelity bound against PyTorch fp32
    min_agreement: float = 0.995


CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
SPEED_TIE = 0.03  # --optimize auto: candidates within 3 % of the fastest count as equally fast


class _QuietQuantizer:
    """The quantizer logs a suggestion to run its pre-processing on the root logger; it doesn't apply to a graph
    that Optimum already shape-inferred, and it reads like an error in the progress output."""

    def __enter__(self) -> None:
        self.logger = logging.getLogger()
        self.level = self.logger.level
        self.logger.setLevel(logging.ERROR)

    def __exit__(self, *_exc: object) -> None:
        self.logger.setLevel(self.level)


def check_int8_options(options: Int8Options, log: Log, openvino: bool = False) -> None:
    """Refuse contradictory or pointless int8 options before the minutes of export start."""
    if options.method not in ("dynamic", "static", "none"):
        raise ExportError(f"--quantize {options.method!r}: expected dynamic, static or none")
    if options.optimize not in ("none", "auto"):
        raise ExportError(f"--optimize {options.optimize!r}: expected none or auto")
    if options.calibration_method not in CALIBRATION_METHODS:
        raise ExportError(f"--calibration-method {options.calibration_method!r}: expected one of "
                          f"{', '.join(CALIBRATION_METHODS)}")
    if options.calibration_limit < 1:
        raise ExportError(f"--calibration-limit {options.calibration_limit}: must be at least 1")
    if not 0 <= options.max_probability_diff <= 1 or not 0 <= options.min_agreement <= 1:
        raise ExportError("--max-probability-diff and --min-agreement must lie between 0 and 1")
    auto = options.optimize == "auto"
    if auto and options.method == "none":
        raise ExportError("--optimize auto chooses an int8 recipe; it can't be combined with --quantize none")
    if options.method == "static" and options.calibration_dir is None:
        raise ExportError("--quantize static needs --calibration DIR: images like the ones the model will see")
    if options.calibration_dir is not None:
        if options.method != "static" and not auto and not openvino:
            raise ExportError("--calibration is used by --quantize static, --optimize auto or --openvino only")
        if not options.calibration_dir.is_dir():
            raise ExportError(f"--calibration {options.calibration_dir}: not a directory")
    if options.cpu_specific and not auto:
        raise ExportError("--cpu-specific widens --optimize auto's choice; pass --no-reduce-range to ask for "
                          "8-bit weights directly")
    if auto and not (options.per_channel and options.reduce_range):
        raise ExportError("--optimize auto chooses per-channel scales and the weight range itself; drop "
                          "--no-per-channel / --no-reduce-range, or leave out --optimize auto")
    if options.cpu_specific and not has_vnni():
        log(f"note: this CPU has no {' / '.join(VNNI_FLAGS)}; --cpu-specific adds no candidate here")


def quantize_int8(source: Path, destination: Path, per_channel: bool, reduce_range: bool) -> dict[str, Any]:
    """Dynamic int8: weights quantized offline, activations per batch at run time; no calibration data needed.

    Weights are signed int8 (U8S8), the format onnxruntime's x86 kernels are fastest with. On AVX2/AVX-512 CPUs
    without VNNI those kernels multiply with VPMADDUBSW, whose int16 pairwise sums can saturate with full 8-bit
    weights; ``reduce_range`` quantizes weights to 7 bits so the sums can't overflow, at a small precision cost
    on VNNI machines. Per-channel scales recover most of that precision for the wide ViT projections.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    settings = {"method": "dynamic", "weight_type": "QInt8", "activation_type": "QUInt8",
                "per_channel": per_channel, "reduce_range": reduce_range, "op_types": ["MatMul"]}
    with _QuietQuantizer():
        quantize_dynamic(source, destination, weight_type=QuantType.QInt8, per_channel=per_channel,
                         reduce_range=reduce_range, op_types_to_quantize=["MatMul"])
    if not reduce_range:
        settings["requires_cpu_flags_any"] = list(VNNI_FLAGS)
    return settings


def calibration_pixels(directory: Path, limit: int, preprocessor: Preprocessor, log: Log) -> np.ndarray:
    """Up to ``limit`` images from ``directory`` (spread over its sub-folders), preprocessed like at run time."""
    files = find_images(directory)
    if not files:
        raise ExportError(f"--calibration {directory}: no images found")
    chosen = files[:: max(1, len(files) // limit)][:limit]
    pixels, errors = preprocessor.batch_pixels(chosen)
    readable = [index for index, error in enumerate(errors) if error is None]
    if not readable:
        raise ExportError(f"--calibration {directory}: none of the {len(chosen)} images chosen could be read")
    skipped = len(chosen) - len(readable)
    log(f"           calibrating on {len(readable)} images from {directory}"
        + (f" ({skipped} unreadable, skipped)" if skipped else ""))
    return preprocessor.normalize(pixels[readable])


def quantize_static_int8(source: Path, destination: Path, pixels: np.ndarray, method: str, per_channel: bool,
                         reduce_range: bool) -> dict[str, Any]:
    """Static int8: activation ranges fixed from calibration images, so an image's result doesn't depend on
    which other images share its batch (dynamic int8 scales activations per batch).

    QOperator format (QLinearMatMul): it measured faster than QDQ on ViT-B/16 (docs/guides/exporting.md,
    *Notes on int8*). Both are slower than dynamic int8, because every quantized MatMul's output is requantized and
    dequantized again for the fp32 LayerNorm/GELU around it, where dynamic int8 fuses that into one kernel.
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(pixels[i : i + 1] for i in range(len(pixels)))

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {"pixel_values": batch}

    calibrate = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                 "entropy": CalibrationMethod.Entropy}[method]
    with _QuietQuantizer():
        quantize_static(source, destination, Reader(), quant_format=QuantFormat.QOperator,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=per_channel,
                        reduce_range=reduce_range, op_types_to_quantize=["MatMul"], calibrate_method=calibrate,
                        extra_options={"MatMulConstBOnly": True})
    settings = {"method": "static", "format": "QOperator", "weight_type": "QInt8", "activation_type": "QUInt8",
                "per_channel": per_channel, "reduce_range": reduce_range, "op_types": ["MatMul"],
                "calibration_method": method, "calibration_images": len(pixels)}
    if not reduce_range:
        settings["requires_cpu_flags_any"] = list(VNNI_FLAGS)
    return settings


def time_graphs(sessions: Mapping[str, Any], pixels: np.ndarray, rounds: int = 3, block: int = 5) -> dict[str, float]:
    """Median seconds per batch-1 call of each onnxruntime session on this machine, timed the benchmark suite's
    way: sessions take turns in settled blocks, so none is charged for another's spinning threads and cache
    misses."""
    feed = {"pixel_values": pixels[:1]}
    measured = interleave(list(sessions), list(range(block)), lambda name, _: sessions[name].run(None, feed),
                          rounds=rounds, block=block)
    if measured.failures:
        raise ExportError(f"--optimize auto: a candidate failed to run: {measured.failures}")
    return {name: float(np.median(values)) for name, values in measured.samples.items()}


def int8_candidates(options: Int8Options, has_calibration: bool) -> dict[str, dict[str, Any]]:
    """The int8 recipes --optimize auto tries: name -> keyword arguments for ``make_int8``.

    With --quantize static the choice is among calibration methods; otherwise among dynamic recipes, plus static
    minmax when calibration images are given."""
    if options.method == "static":
        candidates = {f"static {method}, per-channel, 7-bit weights": {
            "method": "static", "calibration_method": method, "per_channel": True, "reduce_range": True}
            for method in CALIBRATION_METHODS}
        if options.cpu_specific and has_vnni():
            candidates[f"static {options.calibration_method}, per-channel, 8-bit weights (VNNI)"] = {
                "method": "static", "calibration_method": options.calibration_method, "per_channel": True,
                "reduce_range": False}
        return candidates
    candidates = {
        "dynamic, per-channel, 7-bit weights": {"method": "dynamic", "per_channel": True, "reduce_range": True},
        "dynamic, per-tensor, 7-bit weights": {"method": "dynamic", "per_channel": False, "reduce_range": True},
    }
    if options.cpu_specific and has_vnni():
        candidates["dynamic, per-channel, 8-bit weights (VNNI)"] = {"method": "dynamic", "per_channel": True,
                                                                     "reduce_range": False}
    if has_calibration:
        candidates[f"static {options.calibration_method}, per-channel, 7-bit weights"] = {
            "method": "static", "calibration_method": options.calibration_method, "per_channel": True,
            "reduce_range": True}
    return candidates


def make_int8(source: Path, destination: Path, method: str, per_channel: bool, reduce_range: bool,
              calibration: np.ndarray | None, calibration_method: str = "minmax") -> dict[str, Any]:
    if method == "static":
        if calibration is None:
            raise ExportError("static int8 needs calibration images (--calibration DIR)")
        return quantize_static_int8(source, destination, calibration, calibration_method, per_channel, reduce_range)
    return quantize_int8(source, destination, per_channel, reduce_range)


def select_int8(source: Path, destination: Path, options: Int8Options, calibration: np.ndarray | None,
                pixels: np.ndarray, expected: np.ndarray, log: Log) -> dict[str, Any]:
    """--optimize auto: build every candidate, time it here and check it against PyTorch; keep the fastest that
    is faithful enough (ties within 3 % go to the most faithful). Returns the kept one's settings, with the
    figures of all candidates under ``selection``."""
    import onnxruntime as ort

    from ..session import session_options

    candidates = int8_candidates(options, calibration is not None)
    scratch = Path(tempfile.mkdtemp(prefix="candidates.", dir=destination.parent))
    try:
        paths, settings, fidelity, sessions = {}, {}, {}, {}
        for index, (name, recipe) in enumerate(candidates.items()):
            paths[name] = scratch / f"candidate{index}.onnx"
            settings[name] = make_int8(source, paths[name], calibration=calibration, **recipe)
            sessions[name] = ort.InferenceSession(str(paths[name]), session_options(),
                                                  providers=["CPUExecutionProvider"])
            logits = np.concatenate([sessions[name].run(None, {"pixel_values": pixels[i : i + 1]})[0]
                                     for i in range(len(pixels))])
            fidelity[name] = logit_agreement(expected, logits)
        seconds = time_graphs(sessions, pixels)
        sessions.clear()  # before moving the kept file: no session may hold it open
        figures: list[dict[str, Any]] = [
            {"candidate": name, "latency_ms": round(1000 * seconds[name], 2), **fidelity[name],
             "quantization": settings[name]} for name in candidates]
        for row in figures:
            log(f"           {row['candidate']}: {row['latency_ms']:.1f} ms, max |dp| "
                f"{row['max_abs_probability_diff']:.4f}, agreement {row['top1_agreement']:.3f}")
        faithful = [row for row in figures if row["max_abs_probability_diff"] <= options.max_probability_diff
                    and row["top1_agreement"] >= options.min_agreement]
        if not faithful:
            raise ExportError(
                f"--optimize auto: no int8 candidate is within max |dp| {options.max_probability_diff} and "
                f"agreement {options.min_agreement} of PyTorch; loosen --max-probability-diff / --min-agreement, "
                "or export with --quantize none"
            )
        fastest = min(row["latency_ms"] for row in faithful)
        tied = [row for row in faithful if row["latency_ms"] <= fastest * (1 + SPEED_TIE)]
        chosen = min(tied, key=lambda row: row["max_abs_probability_diff"])
        log(f"           kept: {chosen['candidate']}")
        shutil.move(str(paths[chosen["candidate"]]), destination)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {**settings[chosen["candidate"]], "selection": {
        "chosen": chosen["candidate"],
        "rule": (f"fastest batch-1 latency on the export machine among candidates with max |dp| <= "
                 f"{options.max_probability_diff} and top-1 agreement >= {options.min_agreement} against PyTorch "
                 f"fp32; within {SPEED_TIE:.0%} of the fastest, the most faithful"),
        "threads": physical_core_count(),
        "candidates": figures,
    }}
