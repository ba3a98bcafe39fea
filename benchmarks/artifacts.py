"""The model files every system loads, all made from one checkpoint so every system runs the same weights.

* the checkpoint: ``--model`` (a local directory or a Hub id), else a seeded random-weight ViT-B/16-224 made
  offline by ``fastvit_detect.build.seeded`` (same shape and compute as the seed detectors);
* the fastvit-detect package, made by ``fastvit_detect.build.export`` (fp32 + int8);
* the Optimum export (``ORTModelForImageClassification(export=True)``) and its ``ORTQuantizer`` int8 twin;
* with the openvino extra, an NNCF int8 quantization of the package's fp32 graph for OpenVINO, made on first use.

Everything is cached under the cache directory, keyed by the checkpoint, so a re-run skips straight to measuring.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import re
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .progress import log

ROOT = Path(__file__).resolve().parent.parent
CONFIG_FILE = "config.json"
PREPROCESSOR_FILE = "preprocessor_config.json"


@dataclass(frozen=True)
class Artifacts:
    source: str  # what the user asked for: a path, a Hub id, or the seeded preset
    checkpoint: Path  # HF checkpoint directory (config.json, preprocessor_config.json, weights)
    package: Path  # fastvit-detect model package
    optimum_dir: Path  # Optimum export: model.onnx (fp32) and model_quantized.onnx (ORTQuantizer int8)
    optimum_quantization: dict[str, Any] = field(default_factory=dict)
    openvino_dir: Path | None = None  # where the NNCF int8 model for OpenVINO is cached
    calibration_dir: Path | None = None  # images the static int8 recipes calibrate on
    calibration_limit: int | None = None  # None: the exporter's default

    @property
    def config(self) -> dict[str, Any]:
        return json.loads((self.checkpoint / CONFIG_FILE).read_text())

    @property
    def openvino_int8_xml(self) -> Path:
        if self.openvino_dir is None:
            raise ValueError("no OpenVINO cache directory was prepared")
        return self.openvino_dir / "model.xml"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")[:60] or "model"


def _files_key(anchor: Path, paths: Sequence[Path]) -> str:
    """Changes when any of ``paths`` (or the set of them) does, judged by name, size and modification time."""
    digest = hashlib.sha256(str(anchor.resolve()).encode())
    for path in paths:
        stat = path.stat()
        digest.update(f"{path.relative_to(anchor)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:12]


def _checkpoint_key(directory: Path) -> str:
    """Changes when the checkpoint's configs or weights do, so a stale export is never reused."""
    return _files_key(directory, sorted(path for path in directory.iterdir() if path.is_file()))


def resolve_checkpoint(model: str | None, preset: str, cache: Path) -> tuple[str, Path]:
    """(source description, checkpoint directory); builds the seeded checkpoint when no model is given."""
    if model is None:
        directory = cache / f"checkpoint-{preset}-seed0"
        if not (directory / CONFIG_FILE).is_file():
            log(f"building the seeded {preset} checkpoint (random weights, offline) in {directory}")
            partial = directory.with_suffix(".partial")
            shutil.rmtree(partial, ignore_errors=True)
            from fastvit_detect.build.seeded import build_checkpoint

            build_checkpoint(partial, "vit", preset=preset, seed=0)
            partial.rename(directory)
        return f"seeded {preset} (export/make_checkpoint.py, seed 0, random weights)", directory
    from fastvit_detect.build import ExportError
    from fastvit_detect.build.checkpoint import resolve_checkpoint as resolve

    try:
        checkpoint = resolve(model, None, False, log)
    except ExportError as exc:
        raise SystemExit(f"benchmarks: {exc}") from None
    return model, checkpoint.directory


def optimum_quantization_config() -> tuple[Any, dict[str, Any]]:
    """The ``AutoQuantizationConfig`` an Optimum user picks for this CPU: the most specific ISA it supports.

    ``per_channel=False`` is the setting of Optimum's quantization quick-start, i.e. what a user copies first.
    """
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    from fastvit_detect.session import cpu_flags

    flags = cpu_flags()
    if "avx512_vnni" in flags:  # Optimum's presets are named by instruction set, the most specific first
        name, config = "avx512_vnni", AutoQuantizationConfig.avx512_vnni(is_static=False, per_channel=False)
    elif "avx512f" in flags:
        name, config = "avx512", AutoQuantizationConfig.avx512(is_static=False, per_channel=False)
    else:
        name, config = "avx2", AutoQuantizationConfig.avx2(is_static=False, per_channel=False)
    return config, {"preset": f"AutoQuantizationConfig.{name}(is_static=False, per_channel=False)",
                    "per_channel": False, "reduce_range": bool(getattr(config, "reduce_range", False)),
                    "weights_dtype": str(getattr(config, "weights_dtype", "")),
                    "activations_dtype": str(getattr(config, "activations_dtype", ""))}


def build_optimum(checkpoint: Path, directory: Path) -> dict[str, Any]:
    """Optimum's own export and dynamic quantization, the way its documentation shows them."""

    from optimum.onnxruntime import ORTModelForImageClassification, ORTQuantizer

    settings_file = directory / "benchmark_quantization.json"
    if all(path.is_file() for path in (directory / "model.onnx", directory / "model_quantized.onnx", settings_file)):
        return json.loads(settings_file.read_text())
    log(f"exporting with Optimum (ORTModelForImageClassification, export=True) into {directory}")
    partial = directory.with_suffix(".partial")
    shutil.rmtree(partial, ignore_errors=True)
    from fastvit_detect.build.chatter import library_warnings_hidden

    with library_warnings_hidden():
        model = ORTModelForImageClassification.from_pretrained(checkpoint, export=True)
        model.save_pretrained(partial)
        shutil.copyfile(checkpoint / PREPROCESSOR_FILE, partial / PREPROCESSOR_FILE)
        config, settings = optimum_quantization_config()
        log(f"quantizing with Optimum's ORTQuantizer: {settings['preset']}")
        ORTQuantizer.from_pretrained(partial, file_name="model.onnx").quantize(config, save_dir=partial)
    (partial / settings_file.name).write_text(json.dumps(settings, indent=2) + "\n")
    shutil.rmtree(directory, ignore_errors=True)
    partial.rename(directory)
    return settings


def openvino_exportable() -> bool:
    """Whether the exporter can add the openvino-int8 variant here (NNCF and OpenVINO installed)."""
    return all(importlib.util.find_spec(name) is not None for name in ("nncf", "openvino"))


def _current_package(directory: Path) -> bool:
    """Whether a cached package exists, is in the format today's exporter writes and holds the openvino-int8
    variant when it can be made here (else: re-export it)."""
    from fastvit_detect.package import FORMAT_VERSION, MANIFEST_FILE

    try:
        manifest = json.loads((directory / MANIFEST_FILE).read_text())
    except (OSError, ValueError):
        return False
    return manifest.get("format_version") == FORMAT_VERSION and (
        "openvino-int8" in manifest.get("variants", {}) or not openvino_exportable())


def openvino_int8(artifacts: Artifacts) -> dict[str, Any]:
    """NNCF post-training int8 of the package's fp32 graph (``nncf_quantize_kwargs``), saved as OpenVINO IR; built
    once, then reused while its recipe (graph, calibration files, library versions) is unchanged. Returns the
    recipe and the build's facts."""
    import nncf
    import openvino

    from fastvit_detect import Detector
    from fastvit_detect.build.openvino import NNCF_RECIPE, nncf_quantize_kwargs
    from fastvit_detect.build.quantize import Int8Options
    from fastvit_detect.preprocess import find_images

    if artifacts.calibration_dir is None or artifacts.openvino_dir is None:
        raise ValueError("openvino int8 needs a calibration directory and a cache directory")
    limit = artifacts.calibration_limit or Int8Options.calibration_limit
    source = artifacts.package / "model.onnx"
    sources = sorted(artifacts.package.glob("model.onnx*"))  # the graph and its external weights
    recipe = {
        "tool": "nncf.quantize", "nncf": nncf.__version__, "openvino": openvino.get_version(),
        "source": f"{source.name} of the package (fp32), key {_files_key(artifacts.package, sources)}",
        **NNCF_RECIPE,
        "calibration_dir": str(artifacts.calibration_dir),
        "calibration_key": _files_key(artifacts.calibration_dir, find_images(artifacts.calibration_dir)),
        "calibration_limit": limit,
    }
    settings_file = artifacts.openvino_dir / "benchmark_quantization.json"
    if artifacts.openvino_int8_xml.is_file() and settings_file.is_file():
        cached = json.loads(settings_file.read_text())
        if cached.get("recipe") == recipe:
            return cached
    pixels = calibration_pixels(artifacts, Detector.load(artifacts.package, variant="fp32", threads=1).preprocessor)
    log(f"quantizing the package's fp32 graph for OpenVINO with NNCF ({len(pixels)} calibration images)")
    started = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # NNCF's progress bars: keep stdout for results
        quantized = nncf.quantize(openvino.Core().read_model(str(source)),
                                  nncf.Dataset([pixels[i : i + 1] for i in range(len(pixels))]),
                                  **nncf_quantize_kwargs(pixels))
    partial = artifacts.openvino_dir.with_suffix(".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    openvino.save_model(quantized, str(partial / artifacts.openvino_int8_xml.name))
    settings = {"recipe": recipe, "calibration_images": len(pixels), "subset_size": len(pixels),
                "quantize_s": round(time.perf_counter() - started, 1)}
    (partial / settings_file.name).write_text(json.dumps(settings, indent=2) + "\n")
    shutil.rmtree(artifacts.openvino_dir, ignore_errors=True)
    partial.rename(artifacts.openvino_dir)
    return settings


def calibration_pixels(artifacts: Artifacts, preprocessor: Any) -> Any:
    """The calibration batch, chosen and preprocessed the way the exporter's static int8 does it."""
    if artifacts.calibration_dir is None:
        raise ValueError("no calibration directory was prepared")
    from fastvit_detect.build.quantize import Int8Options
    from fastvit_detect.build.quantize import calibration_pixels as choose_and_preprocess

    limit = artifacts.calibration_limit or Int8Options.calibration_limit
    return choose_and_preprocess(artifacts.calibration_dir, limit, preprocessor, lambda text: log(text.strip()))


def prepare(model: str | None, preset: str, cache: Path, calibration_dir: Path | None = None,
            calibration_limit: int | None = None) -> Artifacts:
    from fastvit_detect.build.export import ExportSettings, export_package
    from fastvit_detect.build.quantize import Int8Options

    cache.mkdir(parents=True, exist_ok=True)
    source, checkpoint = resolve_checkpoint(model, preset, cache)
    key = f"{_slug(checkpoint.name if model is None else model)}-{_checkpoint_key(checkpoint)}"
    package = cache / f"package-{key}"
    if not _current_package(package):
        log(f"exporting the fastvit-detect package (fastvit_detect.build.export) into {package}")
        shutil.rmtree(package, ignore_errors=True)
        # --openvino where NNCF is here, calibrated like the benchmark's openvino/int8 (same images and limit), so
        # fastvit-detect/openvino-int8 and openvino/int8 differ in what surrounds the model, not in the model.
        settings = ExportSettings(str(checkpoint), package, openvino=openvino_exportable(),
                                  calibration_dir=calibration_dir,
                                  calibration_limit=calibration_limit or Int8Options.calibration_limit)
        export_package(settings, log=lambda text: log(f"  export: {text}"))
    optimum_dir = cache / f"optimum-{key}"
    settings = build_optimum(checkpoint, optimum_dir)
    return Artifacts(source, checkpoint, package, optimum_dir, settings, openvino_dir=cache / f"openvino-int8-{key}",
                     calibration_dir=calibration_dir,
                     calibration_limit=calibration_limit or Int8Options.calibration_limit)
