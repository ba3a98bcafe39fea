"""Turn a fine-tuned Hugging Face ViT/DeiT image classifier into a fastvit-detect model package.

    python export/export.py sakshamkr1/deepfake_vit --output deepfake_vit_onnx
    python export/export.py ./my_checkpoint --output pkg --quantize none

Build-time code: it needs the ``export`` extra (torch, transformers, optimum-onnx, onnx). It writes the package
into a staging directory, validates every variant against the PyTorch model, and only then moves it to
``--output``, so a package that exists has passed validation.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from fastvit_detect import Detector, FastVitDetectError, __version__
from fastvit_detect.options import finite_number, positive_int, whole_number
from fastvit_detect.detector import softmax
from fastvit_detect.package import (
    CONFIG_FILE,
    DATA_SUFFIX,
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST_FILE,
    OPTIMUM_FILES,
    PREPROCESSOR_FILE,
    file_sha256,
)
from fastvit_detect.preprocess import PreprocessConfig, Preprocessor, find_images
from fastvit_detect.session import VNNI_FLAGS, cpu_flags, physical_core_count

FP32_MAX_ABS_LOGIT_DIFF = 1e-4
DEFAULT_OPSET = 18  # Optimum's recommended minimum for ViT; onnxruntime >= 1.14 runs it
SUPPORTED_MODEL_TYPES = ("vit", "deit")
SAFETENSORS_FILES = ("model.safetensors", "model.safetensors.index.json")
PICKLE_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json")
VALIDATION_BATCH = 8

Log = Callable[[str], None]


class ExportError(Exception):
    """A problem with the export's input or outcome, reported to the user without a traceback."""


# --- the source checkpoint ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    directory: Path
    model: str  # what the user named: a Hub id or a local path
    revision: str | None  # Hub commit, when known
    from_hub: bool = False

    @property
    def public_name(self) -> str:
        """What the manifest records: a Hub id, or only a local checkpoint's folder name, never the build
        machine's path (packages get published; their manifests shouldn't map the exporter's disk)."""
        return self.model if self.from_hub else self.directory.name


def resolve_checkpoint(model: str, revision: str | None, trust_pickle: bool, log: Log) -> Checkpoint:
    """A local directory as is, or a Hub id downloaded (configs and weights only) to the HF cache."""
    local = Path(model).expanduser()
    if local.exists():
        if not local.is_dir():
            raise ExportError(f"{model}: not a directory; expected a Hugging Face checkpoint directory or Hub id")
        return Checkpoint(local.resolve(), model, revision)
    if model.count("/") != 1 or model.startswith(("/", ".", "~")):
        raise ExportError(f"{model}: no such directory, and not a Hub id of the form owner/name")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:  # pragma: no cover - the export extra installs it
        raise ExportError("downloading from the Hub needs huggingface_hub (pip install 'fastvit-detect[export]')") from exc
    patterns = ["*.json", "*.safetensors"] + (["*.bin"] if trust_pickle else [])
    log(f"downloading {model} (revision {revision or 'main'}) from the Hugging Face Hub")
    try:
        directory = Path(snapshot_download(model, revision=revision, allow_patterns=patterns))
    except Exception as exc:  # hub errors are many and untyped across versions
        raise ExportError(
            f"{model}: can't download from the Hugging Face Hub ({type(exc).__name__}: {exc}). "
            "Offline? Pass a local checkpoint directory instead."
        ) from exc
    # snapshot_download returns .../snapshots/<commit>: the commit pins what we exported.
    return Checkpoint(directory, model, directory.name if len(directory.name) == 40 else revision, from_hub=True)


def check_weights(checkpoint: Checkpoint, trust_pickle: bool) -> bool:
    """Whether to load safetensors; refuse pickle weights unless the user trusts them."""
    directory = checkpoint.directory
    if any((directory / name).is_file() for name in SAFETENSORS_FILES):
        return True
    if any((directory / name).is_file() for name in PICKLE_FILES):
        if trust_pickle:
            return False
        raise ExportError(
            f"{checkpoint.model}: only pickle weights (pytorch_model.bin) found. Unpickling can run arbitrary "
            "code, so they're refused by default. Convert the checkpoint to safetensors, or pass --trust-pickle "
            "if you trust its author."
        )
    raise ExportError(f"{checkpoint.model}: no model weights found (expected {SAFETENSORS_FILES[0]})")


# --- validation images --------------------------------------------------------------------------------------


# Real photos shipped inside PyPI packages: (package, folder inside it, file). From 451x300 to 1411x1411,
# RGB, grayscale (camera) and RGBA (logo).
SAMPLE_PHOTO_FILES = [("matplotlib", "mpl-data/sample_data", "grace_hopper.jpg")] + [
    ("skimage", "data", name) for name in ("astronaut.png", "coffee.png", "chelsea.png", "camera.png", "logo.png",
                                           "rocket.jpg", "retina.jpg", "hubble_deep_field.jpg")
]


def sample_photos(files: Sequence[tuple[str, str, str]] = SAMPLE_PHOTO_FILES) -> list[Path]:
    """The sample photos (``files``: package, folder, name) whose packages are installed here."""
    import importlib.util

    found = []
    for package, folder, name in files:
        spec = importlib.util.find_spec(package)
        if spec is not None and spec.origin:
            path = Path(spec.origin).parent / folder / name
            if path.is_file():
                found.append(path)
    return found


def synthetic_images(seed: int = 0) -> list[tuple[str, Image.Image]]:
    """Deterministic images of varied sizes, aspect ratios and modes, for when no real photos are at hand."""
    rng = np.random.default_rng(seed)

    def textured(height: int, width: int) -> np.ndarray:
        y, x = np.mgrid[0:height, 0:width].astype(np.float32)
        base = np.stack([x / width, y / height, (x + y) / (width + height)], axis=-1) * 200
        return np.clip(base + rng.normal(0, 25, (height, width, 3)), 0, 255).astype(np.uint8)

    face = Image.fromarray(textured(320, 256))
    draw = ImageDraw.Draw(face)
    draw.ellipse((48, 40, 208, 260), fill=(224, 180, 150))
    draw.ellipse((90, 110, 115, 125), fill=(40, 30, 30))
    draw.ellipse((141, 110, 166, 125), fill=(40, 30, 30))
    draw.arc((95, 170, 160, 215), 20, 160, fill=(150, 60, 60), width=4)
    return [
        ("synthetic-face-256x320.png", face.filter(ImageFilter.GaussianBlur(1))),
        ("synthetic-rgb-640x480.png", Image.fromarray(textured(480, 640))),
        ("synthetic-gray-300x500.png", Image.fromarray(textured(500, 300)[..., 0])),
        ("synthetic-rgba-1000x200.png", Image.fromarray(np.dstack([textured(200, 1000),
                                                                  rng.integers(0, 256, (200, 1000), np.uint8)]))),
        ("synthetic-tiny-37x23.png", Image.fromarray(textured(23, 37))),
    ]


def validation_set(extra_dirs: Sequence[Path], limit_per_dir: int) -> list[tuple[str, Any]]:
    """(name, path-or-PIL image) pairs: sample photos, synthetic images, then images from ``extra_dirs``."""
    images: list[tuple[str, Any]] = [(path.name, path) for path in sample_photos()]
    images += synthetic_images()
    for directory in extra_dirs:
        if not directory.is_dir():
            raise ExportError(f"--validation-images {directory}: not a directory")
        files = find_images(directory)
        if not files:
            raise ExportError(f"--validation-images {directory}: no images found")
        step = max(1, len(files) // limit_per_dir)  # spread the sample over classes and sub-folders
        images += [(str(path.relative_to(directory)), path) for path in files[::step][:limit_per_dir]]
    return images


def reference_logits(model: Any, checkpoint_dir: Path, images: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    """PyTorch fp32 logits the way a transformers pipeline computes them: load_image + the slow processor."""
    import torch
    from transformers import AutoImageProcessor
    from transformers.image_utils import load_image

    processor = AutoImageProcessor.from_pretrained(checkpoint_dir, use_fast=False)
    logits, pixels = [], []
    with torch.inference_mode():
        for start in range(0, len(images), VALIDATION_BATCH):
            batch = [load_image(str(image) if isinstance(image, Path) else image)
                     for image in images[start : start + VALIDATION_BATCH]]
            pixel_values = processor(batch, return_tensors="pt")["pixel_values"]
            logits.append(model(pixel_values=pixel_values).logits.numpy())
            pixels.append(pixel_values.numpy())
    return np.concatenate(logits), np.concatenate(pixels)


def compare(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float | int]:
    reference_probabilities, candidate_probabilities = softmax(reference), softmax(candidate)
    return {
        "images": len(reference),
        "max_abs_logit_diff": float(np.abs(reference - candidate).max()),
        "max_abs_probability_diff": float(np.abs(reference_probabilities - candidate_probabilities).max()),
        "top1_agreement": float((reference.argmax(1) == candidate.argmax(1)).mean()),
    }


# --- export steps -------------------------------------------------------------------------------------------


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


def check_int8_options(options: Int8Options, log: Log) -> None:
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
        if options.method != "static" and not auto:
            raise ExportError("--calibration is used by --quantize static or --optimize auto only")
        if not options.calibration_dir.is_dir():
            raise ExportError(f"--calibration {options.calibration_dir}: not a directory")
    if options.cpu_specific and not auto:
        raise ExportError("--cpu-specific widens --optimize auto's choice; pass --no-reduce-range to ask for "
                          "8-bit weights directly")
    if auto and not (options.per_channel and options.reduce_range):
        raise ExportError("--optimize auto chooses per-channel scales and the weight range itself; drop "
                          "--no-per-channel / --no-reduce-range, or leave out --optimize auto")
    if options.cpu_specific and not cpu_flags() & set(VNNI_FLAGS):
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

    QOperator format (QLinearMatMul): on ViT-B/16 here it ran at 1.12x the dynamic graph's batch-1 latency,
    QDQ at 1.24x, both slower because every quantized MatMul's output is requantized and dequantized again for
    the fp32 LayerNorm/GELU around it, where dynamic int8 fuses that into one kernel.
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
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # export/ runs from a checkout, as does benchmarks/
    from benchmarks.measure import interleave

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
        if options.cpu_specific and cpu_flags() & set(VNNI_FLAGS):
            candidates[f"static {options.calibration_method}, per-channel, 8-bit weights (VNNI)"] = {
                "method": "static", "calibration_method": options.calibration_method, "per_channel": True,
                "reduce_range": False}
        return candidates
    candidates = {
        "dynamic, per-channel, 7-bit weights": {"method": "dynamic", "per_channel": True, "reduce_range": True},
        "dynamic, per-tensor, 7-bit weights": {"method": "dynamic", "per_channel": False, "reduce_range": True},
    }
    if options.cpu_specific and cpu_flags() & set(VNNI_FLAGS):
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

    from fastvit_detect.session import session_options

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
            fidelity[name] = compare(expected, logits)
        seconds = time_graphs(sessions, pixels)
        sessions.clear()  # before moving the kept file: no session may hold it open
        figures = [{"candidate": name, "latency_ms": round(1000 * seconds[name], 2), **fidelity[name],
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


def apply_umask(directory: Path) -> None:
    """Give the package the modes ``cp`` would: 0777/0666 less the umask.

    tempfile.mkdtemp makes the staging directory 0700, and some writers (onnx's external data) make 0600 files,
    whatever the umask: a server running as another user could then not read the package it was handed.
    """
    umask = os.umask(0)
    os.umask(umask)
    directory.chmod(0o777 & ~umask)
    for path in directory.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def library_versions() -> dict[str, str]:
    versions = {"fastvit_detect": __version__, "python": platform.python_version()}
    for name in ("torch", "transformers", "optimum", "onnx", "onnxruntime"):
        try:
            versions[name] = __import__(name).__version__
        except (ImportError, AttributeError):
            pass
    return versions


def export_package(
    model: str,
    output: Path,
    *,
    quantize: str = "dynamic",
    opset: int = DEFAULT_OPSET,
    revision: str | None = None,
    trust_pickle: bool = False,
    overwrite: bool = False,
    per_channel: bool = True,
    reduce_range: bool = True,
    calibration_dir: Path | None = None,
    calibration_method: str = "minmax",
    calibration_limit: int = 64,
    optimize: str = "none",
    cpu_specific: bool = False,
    max_probability_diff: float = 0.05,
    min_agreement: float = 0.995,
    validation_dirs: Sequence[Path] = (),
    validation_limit: int = 64,
    description: str | None = None,
    intended_use: str | None = None,
    log: Log = print,
) -> dict[str, Any]:
    """Export, quantize, validate; returns the manifest written into ``output``."""
    output = Path(output)
    if output.exists() and any(output.iterdir()) and not overwrite:
        raise ExportError(f"--output {output}: exists and isn't empty (pass --overwrite to replace it)")
    int8 = Int8Options(quantize, per_channel, reduce_range, Path(calibration_dir) if calibration_dir else None,
                       calibration_method, calibration_limit, optimize, cpu_specific, max_probability_diff,
                       min_agreement)
    check_int8_options(int8, log)
    started = time.perf_counter()

    def step(number: int, text: str) -> None:
        log(f"[{number}/5 {time.perf_counter() - started:6.1f}s] {text}")

    step(1, f"loading checkpoint {model}")
    checkpoint = resolve_checkpoint(model, revision, trust_pickle, log)
    use_safetensors = check_weights(checkpoint, trust_pickle)
    for name in (CONFIG_FILE, PREPROCESSOR_FILE):
        if not (checkpoint.directory / name).is_file():
            raise ExportError(f"{model}: {name} is missing; the package needs it to preprocess images the same way")
    try:
        preprocess = PreprocessConfig.from_hf(json.loads((checkpoint.directory / PREPROCESSOR_FILE).read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError, FastVitDetectError) as exc:
        raise ExportError(f"{model}: {PREPROCESSOR_FILE} can't be used: {exc}") from exc
    image_size = preprocess.output_size
    if image_size is None:
        raise ExportError(f"{model}: {PREPROCESSOR_FILE} fixes no image size (no resize or crop)")

    import torch
    import transformers
    from transformers import AutoConfig, AutoModelForImageClassification

    # Tracing and deprecation chatter from torch/transformers/optimum buries the progress lines users need.
    transformers.logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"(optimum|transformers|torch)\.")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\.")

    config = AutoConfig.from_pretrained(checkpoint.directory)
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise ExportError(f"{model}: model_type {config.model_type!r} isn't supported (supported: vit, deit)")
    if getattr(config, "image_size", image_size[0]) != image_size[0]:
        raise ExportError(f"{model}: the model expects {config.image_size}px images, the preprocessor makes {image_size}")
    torch_model = AutoModelForImageClassification.from_pretrained(
        checkpoint.directory, use_safetensors=use_safetensors
    ).eval()

    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".partial", dir=output.parent))
    try:
        notes = {key: value for key, value in (("description", description), ("intended_use", intended_use)) if value}
        manifest = _build_package(staging, checkpoint, config, torch_model, image_size, int8, opset,
                                  validation_dirs, validation_limit, step, log, started, notes)
        apply_umask(staging)
    except BaseException as exc:
        if not (isinstance(exc, ExportError) and str(staging) in str(exc)):  # keep what the message points to
            shutil.rmtree(staging, ignore_errors=True)
        raise
    if output.exists():
        shutil.rmtree(output)
    staging.rename(output)
    log(f"done in {time.perf_counter() - started:.1f}s: {output}")
    return manifest


def _build_package(staging: Path, checkpoint: Checkpoint, config: Any, torch_model: Any, image_size: tuple[int, int],
                   int8: Int8Options, opset: int, validation_dirs: Sequence[Path], validation_limit: int,
                   step: Callable[[int, str], None], log: Log, started: float,
                   notes: Mapping[str, str]) -> dict[str, Any]:
    for name in (CONFIG_FILE, PREPROCESSOR_FILE):  # byte for byte: the HF files are the contract with Optimum
        shutil.copyfile(checkpoint.directory / name, staging / name)

    step(2, f"exporting fp32 ONNX (opset {opset}); PyTorch reference logits")
    fp32_path = staging / OPTIMUM_FILES["fp32"]
    export_fp32(torch_model, fp32_path, opset, image_size)
    variants: dict[str, dict[str, Any]] = {"fp32": {"file": fp32_path.name, "precision": "fp32"}}
    images = validation_set(validation_dirs, validation_limit)
    sources = [image for _, image in images]
    expected, expected_pixels = reference_logits(torch_model, checkpoint.directory, sources)
    preprocessor = Preprocessor.from_hf(json.loads((staging / PREPROCESSOR_FILE).read_text()))

    if int8.method != "none":
        int8_path = staging / OPTIMUM_FILES["int8"]
        calibration = (calibration_pixels(int8.calibration_dir, int8.calibration_limit, preprocessor, log)
                       if int8.calibration_dir is not None else None)
        if int8.optimize == "auto":
            step(3, f"--optimize auto: building, timing and checking int8 candidates on {physical_core_count()} cores")
            settings = select_int8(fp32_path, int8_path, int8, calibration, preprocessor(sources), expected, log)
        else:
            step(3, f"quantizing to {int8.method} int8")
            settings = make_int8(fp32_path, int8_path, int8.method, int8.per_channel, int8.reduce_range,
                                 calibration, int8.calibration_method)
        variants["int8"] = {"file": int8_path.name, "precision": "int8", "quantization": settings}
    else:
        step(3, "quantization skipped (--quantize none)")
    for entry in variants.values():  # after quantizing: the quantizer reads the single-file fp32 graph
        entry["data_file"] = move_weights_to_data_file(staging / entry["file"]).name

    step(4, f"validating {len(variants)} variant(s) against PyTorch on {len(images)} images")
    for name, entry in variants.items():
        detector = Detector.load(staging, variant=name, verify=False)
        if name == "fp32":
            # Our preprocessing, compared on its own, so a logit mismatch can be told apart from a pixel one.
            pixels = detector.preprocessor(sources)
            entry["preprocess_max_abs_diff"] = float(np.abs(pixels - expected_pixels).max())
        logits = np.stack([p.logits for p in detector.predict_batch(sources, batch_size=VALIDATION_BATCH)])
        entry["validation"] = compare(expected, logits)
        log(f"           {name}: {json.dumps(entry['validation'])}")

    fp32_error = variants["fp32"]["validation"]["max_abs_logit_diff"]
    if fp32_error > FP32_MAX_ABS_LOGIT_DIFF:
        raise ExportError(
            f"fp32 ONNX logits differ from PyTorch by up to {fp32_error:.3g} (bound {FP32_MAX_ABS_LOGIT_DIFF:g}); "
            f"the package is NOT usable. Preprocessing differed by {variants['fp32']['preprocess_max_abs_diff']:.3g}. "
            f"Staging directory kept for inspection: {staging}"
        )

    step(5, "writing the manifest")
    for entry in variants.values():
        for prefix in ("", "data_"):
            path = staging / entry[f"{prefix}file"]
            entry[f"{prefix}size_bytes"] = path.stat().st_size
            entry[f"{prefix}sha256"] = file_sha256(path)
    manifest = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "source": {"model": checkpoint.public_name, "revision": checkpoint.revision,
                   "architecture": (config.architectures or [None])[0], "model_type": config.model_type},
        **notes,
        "labels": [config.id2label[i] for i in range(len(config.id2label))],
        "input": {"name": "pixel_values", "shape": ["batch_size", 3, *image_size], "dtype": "float32"},
        "output": {"name": "logits", "shape": ["batch_size", len(config.id2label)], "dtype": "float32"},
        "opset": opset,
        "default_variant": "int8" if "int8" in variants else "fp32",
        "variants": variants,
        "validation": {
            "reference": "PyTorch fp32 (transformers load_image + slow image processor)",
            "fp32_max_abs_logit_diff_bound": FP32_MAX_ABS_LOGIT_DIFF,
            "images": [name for name, _ in images],
        },
        "exporter": library_versions(),
        "export_seconds": round(time.perf_counter() - started, 1),
    }
    (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


# --- command line -------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Export a Hugging Face ViT/DeiT image classifier to a fastvit-detect ONNX model package."
    )
    parser.add_argument("model", help="Hub id (owner/name) or local checkpoint directory")
    parser.add_argument("--output", "-o", required=True, type=Path, help="package directory to create")
    parser.add_argument("--quantize", choices=("dynamic", "static", "none"), default="dynamic",
                        help="int8 variant to add: dynamic (fastest here), static (needs --calibration; results "
                             "independent of batch companions), none (default: dynamic)")
    parser.add_argument("--calibration", type=Path, metavar="DIR",
                        help="images to calibrate static int8 on (sub-folders searched), e.g. a training split")
    parser.add_argument("--calibration-method", choices=CALIBRATION_METHODS, default="minmax",
                        help="how static int8 picks activation ranges (default minmax)")
    parser.add_argument("--calibration-limit", type=positive_int, default=64, metavar="N",
                        help="at most N calibration images, spread over DIR (default 64)")
    parser.add_argument("--optimize", choices=("none", "auto"), default="none",
                        help="auto: build several int8 recipes, time them on this machine and keep the fastest "
                             "that stays close to PyTorch; the figures go into the manifest")
    parser.add_argument("--max-probability-diff", type=finite_number(0, 1), default=0.05, metavar="P",
                        help="--optimize auto: largest max |p - p_pytorch| a kept recipe may show (default 0.05)")
    parser.add_argument("--min-agreement", type=finite_number(0, 1), default=0.995, metavar="F",
                        help="--optimize auto: smallest top-1 agreement with PyTorch a kept recipe may show "
                             "(default 0.995)")
    parser.add_argument("--cpu-specific", action="store_true",
                        help="let --optimize auto keep a recipe that needs this CPU's instruction set (8-bit "
                             "weights need VNNI); the package then refuses to load on CPUs without it")
    parser.add_argument("--opset", type=whole_number(14, 30), default=DEFAULT_OPSET,
                        help=f"ONNX opset (default {DEFAULT_OPSET})")
    parser.add_argument("--description", help="what the model is, recorded in the manifest and shown by info")
    parser.add_argument("--intended-use", help="what it is (not) for, e.g. 'demo only: trained on synthetic "
                                                  "images'; recorded in the manifest and shown by info")
    parser.add_argument("--revision", help="Hub revision (branch, tag or commit) to export")
    parser.add_argument("--trust-pickle", action="store_true",
                        help="allow pytorch_model.bin weights (unpickling runs code from the checkpoint)")
    parser.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    parser.add_argument("--no-per-channel", dest="per_channel", action="store_false",
                        help="one int8 scale per weight matrix instead of per output channel")
    parser.add_argument("--no-reduce-range", dest="reduce_range", action="store_false",
                        help="full 8-bit weights (more precise on VNNI CPUs; may saturate on AVX2-only CPUs)")
    parser.add_argument("--validation-images", type=Path, action="append", default=[], metavar="DIR",
                        help="also validate on images from DIR (repeatable), e.g. a held-out test split")
    parser.add_argument("--validation-limit", type=positive_int, default=64, metavar="N",
                        help="at most N images from each --validation-images DIR (default 64)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    try:
        export_package(
            args.model, args.output, quantize=args.quantize, opset=args.opset, revision=args.revision,
            trust_pickle=args.trust_pickle, overwrite=args.overwrite, per_channel=args.per_channel,
            reduce_range=args.reduce_range, calibration_dir=args.calibration,
            calibration_method=args.calibration_method, calibration_limit=args.calibration_limit,
            optimize=args.optimize, cpu_specific=args.cpu_specific, max_probability_diff=args.max_probability_diff,
            min_agreement=args.min_agreement, validation_dirs=args.validation_images,
            validation_limit=args.validation_limit, description=args.description,
            intended_use=args.intended_use, log=log,
        )
    except (ExportError, FastVitDetectError, OSError) as exc:
        log(f"export failed: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
