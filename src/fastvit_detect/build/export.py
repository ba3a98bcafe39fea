"""Turn a fine-tuned Hugging Face ViT/DeiT image classifier into a fastvit-detect model package.

    fastvit-detect export sakshamkr1/deepfake_vit --output deepfake_vit_onnx
    fastvit-detect export ./my_checkpoint --output pkg --quantize none

The package is written into a staging directory next to ``--output``, every variant is validated against the
PyTorch reference, and only then is it moved into place: a package that exists has passed validation.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..backends import OPENVINO
from ..detector import Detector
from ..errors import FastVitDetectError
from ..faces import EXPECTS_FACES, FACE_FILES, FACE_LICENSE_FILE
from ..fidelity import logit_agreement
from ..manifest import DEFAULT_RUNTIME, FileEntry, Manifest, Source, VariantEntry
from ..options import finite_number, non_empty_path, positive_int, refuse_empty_text, whole_number
from ..package import CONFIG_FILE, OPTIMUM_FILES, PREPROCESSOR_FILE, ModelPackage, Variant
from ..preprocess import Preprocessor
from ..session import physical_core_count
from . import ExportError, Log, openvino
from .chatter import library_warnings_hidden
from .checkpoint import LoadedCheckpoint, load_checkpoint
from .graphs import export_fp32, move_weights_to_data_file
from .quantize import CALIBRATION_METHODS, Int8Options, calibration_pixels, check_int8_options, make_int8, select_int8
from .reference import TorchReference
from .samples import validation_set
from .writer import FP32_MAX_ABS_LOGIT_DIFF, apply_umask, file_entry, write_manifest

DEFAULT_OPSET = 18  # Optimum's recommended minimum for ViT; onnxruntime >= 1.14 runs it
VALIDATION_BATCH = 8
Step = Callable[[int, str], None]


_INT8_DEFAULTS = Int8Options()


@dataclass(frozen=True)
class ExportSettings:
    """Everything an export is asked to do; the command line's options, one field each."""

    model: str  # a Hub id or a local checkpoint directory
    output: Path
    # The int8 fields take Int8Options' defaults: one place for them.
    quantize: str = _INT8_DEFAULTS.method  # dynamic | static | none
    opset: int = DEFAULT_OPSET
    revision: str | None = None
    trust_pickle: bool = False
    overwrite: bool = False
    per_channel: bool = _INT8_DEFAULTS.per_channel
    reduce_range: bool = _INT8_DEFAULTS.reduce_range
    calibration_dir: Path | None = None
    calibration_method: str = _INT8_DEFAULTS.calibration_method
    calibration_limit: int = _INT8_DEFAULTS.calibration_limit
    optimize: str = _INT8_DEFAULTS.optimize  # none | auto
    cpu_specific: bool = _INT8_DEFAULTS.cpu_specific
    max_probability_diff: float = _INT8_DEFAULTS.max_probability_diff
    min_agreement: float = _INT8_DEFAULTS.min_agreement
    validation_dirs: Sequence[Path] = ()
    validation_limit: int = 64
    description: str | None = None
    intended_use: str | None = None
    openvino: bool = False  # add the openvino-int8 variant (NNCF int8, run by OpenVINO)
    faces: bool = False  # add the face detector (MTCNN from facenet-pytorch's wheel)
    expects_faces: bool = False  # mark the model as trained on face crops (implies faces)
    faces_wheel: Path | None = None  # a local copy of facenet-pytorch's wheel, instead of pip download

    @property
    def int8(self) -> Int8Options:
        return Int8Options(self.quantize, self.per_channel, self.reduce_range,
                           Path(self.calibration_dir) if self.calibration_dir else None, self.calibration_method,
                           self.calibration_limit, self.optimize, self.cpu_specific, self.max_probability_diff,
                           self.min_agreement)

    @property
    def notes(self) -> dict[str, str]:
        """The free-text fields the manifest records when given."""
        return {key: value for key, value in (("description", self.description),
                                              ("intended_use", self.intended_use)) if value}


def export_package(settings: ExportSettings, log: Log = print) -> Manifest:
    """Export, quantize, validate; returns the manifest written into ``settings.output``."""
    output = Path(settings.output)
    if output.exists() and any(output.iterdir()) and not settings.overwrite:
        raise ExportError(f"--output {output}: exists and isn't empty (pass --overwrite to replace it)")
    check_int8_options(settings.int8, log, openvino=settings.openvino)
    with library_warnings_hidden():  # the libraries' tracing and deprecation chatter; ours still shows
        return _export(settings, output, log)


def _export(settings: ExportSettings, output: Path, log: Log) -> Manifest:
    started = time.perf_counter()

    def step(number: int, text: str) -> None:
        log(f"[{number}/5 {time.perf_counter() - started:6.1f}s] {text}")

    step(1, f"loading checkpoint {settings.model}")
    wheel = None
    if settings.faces or settings.expects_faces:  # before minutes of work: an unreachable wheel is said at once
        from . import faces  # torch at import: only when asked (the test suite imports this module torch-free)

        wheel = (faces.fetch_wheel(faces.wheel_cache(), log) if settings.faces_wheel is None
                 else faces.check_wheel(Path(settings.faces_wheel)))
    loaded = load_checkpoint(settings.model, settings.revision, settings.trust_pickle, log)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".partial", dir=output.parent))
    try:
        manifest = _build_package(staging, loaded, settings, step, log, started, wheel)
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


@dataclass(frozen=True)
class _Expected:
    """The validation images and PyTorch's answers on them."""

    names: list[str]
    sources: list[Any]  # paths or PIL images
    logits: np.ndarray
    pixels: np.ndarray


def _build_package(staging: Path, loaded: LoadedCheckpoint, settings: ExportSettings, step: Step, log: Log,
                   started: float, wheel: Path | None = None) -> Manifest:
    """``wheel``: facenet-pytorch's, when the face detector is to be added."""
    for name in (CONFIG_FILE, PREPROCESSOR_FILE):  # byte for byte: the HF files are the contract with Optimum
        shutil.copyfile(loaded.checkpoint.directory / name, staging / name)

    step(2, f"exporting fp32 ONNX (opset {settings.opset}); PyTorch reference logits")
    fp32_path = staging / OPTIMUM_FILES["fp32"]
    export_fp32(loaded.model, fp32_path, settings.opset, loaded.image_size)
    images = validation_set(settings.validation_dirs, settings.validation_limit)
    sources = [image for _, image in images]
    reference = TorchReference.load(loaded.checkpoint.directory, model=loaded.model)
    expected_logits, expected_pixels = reference.logits_and_pixels(sources, VALIDATION_BATCH)
    expected = _Expected([name for name, _ in images], sources, expected_logits, expected_pixels)

    variants: dict[str, dict[str, Any]] = {"fp32": {"file": fp32_path.name, "precision": "fp32"}}
    int8 = _add_int8(staging, fp32_path, settings.int8, expected, step, log)
    if int8 is not None:
        variants["int8"] = int8
    if settings.openvino:
        variants[openvino.VARIANT] = _add_openvino_int8(staging, fp32_path, settings.int8, expected, step, log)
    for entry in variants.values():  # after quantizing: the quantizer reads the single-file fp32 graph
        entry["data_file"] = move_weights_to_data_file(staging / entry["file"]).name

    step(4, f"validating {len(variants)} variant(s) against PyTorch on {len(sources)} images")
    _validate(staging, variants, expected, log)
    if openvino.VARIANT in variants:
        _gate(staging, variants, openvino.VARIANT, settings.int8, log)

    sections = _add_faces(staging, wheel, settings.expects_faces, log) if wheel is not None else None
    step(5, "writing the manifest")
    checkpoint, config = loaded.checkpoint, loaded.config
    source = Source(model=checkpoint.public_name, revision=checkpoint.revision,
                    architecture=(config.architectures or [None])[0], model_type=config.model_type)
    return write_manifest(staging, source=source, labels=[config.id2label[i] for i in range(len(config.id2label))],
                          image_size=loaded.image_size, opset=settings.opset, variants=variants,
                          image_names=expected.names, notes=settings.notes,
                          export_seconds=time.perf_counter() - started, sections=sections)


def _add_faces(staging: Path, wheel: Path, expects_faces: bool, log: Log) -> dict[str, Any]:
    """The face detector's graphs and licence written into ``staging``; the manifest's ``faces`` section (and
    ``expects_faces`` when asked)."""
    from . import faces

    figures = faces.add_face_detector(staging, wheel, log)
    files = {net: file_entry(staging / name).to_dict() for net, name in FACE_FILES.items()}
    section: dict[str, Any] = {"faces": {"detector": "mtcnn", **figures, "files": files,
                                         "license_file": FACE_LICENSE_FILE}}
    if expects_faces:
        section[EXPECTS_FACES] = True
    return section


def _add_int8(staging: Path, fp32_path: Path, int8: Int8Options, expected: _Expected, step: Step,
              log: Log) -> dict[str, Any] | None:
    """Make the int8 variant as ``int8`` asks; returns its manifest figures, or None with --quantize none."""
    if int8.method == "none":
        step(3, "quantization skipped (--quantize none)")
        return None
    int8_path = staging / OPTIMUM_FILES["int8"]
    preprocessor = Preprocessor.from_hf(json.loads((staging / PREPROCESSOR_FILE).read_text()))
    calibrated = int8.method == "static" or int8.optimize == "auto"  # dynamic int8 needs none (--openvino may)
    calibration = (calibration_pixels(int8.calibration_dir, int8.calibration_limit, preprocessor, log)
                   if int8.calibration_dir is not None and calibrated else None)
    if int8.optimize == "auto":
        step(3, f"--optimize auto: building, timing and checking int8 candidates on {physical_core_count()} cores")
        settings = select_int8(fp32_path, int8_path, int8, calibration, preprocessor(expected.sources),
                               expected.logits, log)
    else:
        step(3, f"quantizing to {int8.method} int8")
        settings = make_int8(fp32_path, int8_path, int8.method, int8.per_channel, int8.reduce_range, calibration,
                             int8.calibration_method)
    return {"file": int8_path.name, "precision": "int8", "quantization": settings}


def _add_openvino_int8(staging: Path, fp32_path: Path, int8: Int8Options, expected: _Expected, step: Step,
                       log: Log) -> dict[str, Any]:
    """Make the openvino-int8 variant: NNCF int8 calibrated on --calibration's images (else the validation images,
    with a warning); returns its manifest figures."""
    openvino.require_nncf()  # before minutes of work: a missing extra is named at once
    preprocessor = Preprocessor.from_hf(json.loads((staging / PREPROCESSOR_FILE).read_text()))
    if int8.calibration_dir is not None:
        pixels = calibration_pixels(int8.calibration_dir, int8.calibration_limit, preprocessor, log)
        where = f"{int8.calibration_dir.name}/ ({len(pixels)} images, --calibration)"
    else:
        pixels = preprocessor(expected.sources[: int8.calibration_limit])
        where = f"the {len(pixels)} validation images (no --calibration given)"
        log("           warning: --openvino without --calibration calibrates on the validation images, so its "
            "fidelity figures flatter it; pass --calibration DIR (e.g. a training split)")
    step(3, f"quantizing to {openvino.VARIANT} with NNCF on {where}")
    path = staging / openvino.FILE
    quantization = openvino.make_openvino_int8(fp32_path, path, pixels, where)
    return {"file": path.name, "precision": "int8", "runtime": OPENVINO, "quantization": quantization}


def _gate(staging: Path, variants: dict[str, dict[str, Any]], name: str, int8: Int8Options, log: Log) -> None:
    """Leave out variant ``name`` if it strays from PyTorch more than the int8 bounds allow: no package ships a
    variant that fails the agreement gate."""
    figures = variants[name]["validation"]
    agreement, delta = figures["top1_agreement"], figures["max_abs_probability_diff"]
    if agreement >= int8.min_agreement and delta <= int8.max_probability_diff:
        return
    log(f"           {name} LEFT OUT: top-1 agreement {agreement:.4f} (needs >= {int8.min_agreement}) and max |dp| "
        f"{delta:.4f} (needs <= {int8.max_probability_diff}) against PyTorch; --min-agreement and "
        "--max-probability-diff set the bounds")
    entry = variants.pop(name)
    for key in ("file", "data_file"):
        (staging / entry[key]).unlink(missing_ok=True)


def _staged(staging: Path, variants: Mapping[str, dict[str, Any]]) -> ModelPackage:
    """The staging directory as the runtime will open it, before its manifest exists: the Optimum-named variants
    are found by file name; the others (openvino-int8) are added with their runtime."""
    package = ModelPackage.open(staging)
    found = dict(package.variants)
    for name, entry in variants.items():
        if name not in found:
            unchecked = FileEntry(entry["file"], "0" * 64, 0)  # verify=False: the manifest is written after this
            found[name] = Variant(name, staging / entry["file"], VariantEntry(name, unchecked, runtime=entry.get(
                "runtime", DEFAULT_RUNTIME)), staging / entry["data_file"] if entry.get("data_file") else None)
    return replace(package, variants=found)


def _validate(staging: Path, variants: Mapping[str, dict[str, Any]], expected: _Expected, log: Log) -> None:
    """Run each variant as the runtime will and record how far it is from PyTorch; refuse an fp32 graph that
    isn't PyTorch's model."""
    package = _staged(staging, variants)
    for name, entry in variants.items():
        detector = Detector.load(package, variant=name, verify=False, ov_config={"CACHE_DIR": ""})
        if name == "fp32":
            # Our preprocessing, compared on its own, so a logit mismatch can be told apart from a pixel one.
            pixels = detector.preprocessor(expected.sources)
            entry["preprocess_max_abs_diff"] = float(np.abs(pixels - expected.pixels).max())
        logits = np.stack([p.logits for p in detector.predict_batch(expected.sources, batch_size=VALIDATION_BATCH)])
        entry["validation"] = logit_agreement(expected.logits, logits)
        log(f"           {name}: {json.dumps(entry['validation'])}")
    fp32_error = variants["fp32"]["validation"]["max_abs_logit_diff"]
    if fp32_error > FP32_MAX_ABS_LOGIT_DIFF:
        raise ExportError(
            f"fp32 ONNX logits differ from PyTorch by up to {fp32_error:.3g} (bound {FP32_MAX_ABS_LOGIT_DIFF:g}); "
            f"the package is NOT usable. Preprocessing differed by {variants['fp32']['preprocess_max_abs_diff']:.3g}. "
            f"Staging directory kept for inspection: {staging}"
        )


# --- command line -------------------------------------------------------------------------------------------


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Export a Hugging Face ViT/DeiT image classifier to a fastvit-detect ONNX model package."
    )
    parser.add_argument("model", help="Hub id (owner/name) or local checkpoint directory")
    parser.add_argument("--output", "-o", required=True, type=Path, help="package directory to create")
    parser.add_argument("--quantize", choices=("dynamic", "static", "none"), default=_INT8_DEFAULTS.method,
                        help="int8 variant to add: dynamic (fastest here), static (needs --calibration; results "
                             "independent of batch companions), none (default: %(default)s)")
    parser.add_argument("--calibration", dest="calibration_dir", type=Path, metavar="DIR",
                        help="images to calibrate static int8 on (sub-folders searched), e.g. a training split")
    parser.add_argument("--calibration-method", choices=CALIBRATION_METHODS,
                        default=_INT8_DEFAULTS.calibration_method,
                        help="how static int8 picks activation ranges (default %(default)s)")
    parser.add_argument("--calibration-limit", type=positive_int, default=_INT8_DEFAULTS.calibration_limit,
                        metavar="N", help="at most N calibration images, spread over DIR (default %(default)s)")
    parser.add_argument("--optimize", choices=("none", "auto"), default=_INT8_DEFAULTS.optimize,
                        help="auto: build several int8 recipes, time them on this machine and keep the fastest "
                             "that stays close to PyTorch; the figures go into the manifest")
    parser.add_argument("--max-probability-diff", type=finite_number(0, 1),
                        default=_INT8_DEFAULTS.max_probability_diff, metavar="P",
                        help="--optimize auto and --openvino: largest max |p - p_pytorch| a kept recipe (or the "
                             "openvino-int8 variant) may show (default %(default)s)")
    parser.add_argument("--min-agreement", type=finite_number(0, 1), default=_INT8_DEFAULTS.min_agreement,
                        metavar="F", help="--optimize auto and --openvino: smallest top-1 agreement with PyTorch a "
                                          "kept recipe (or the openvino-int8 variant) may show (default %(default)s)")
    parser.add_argument("--cpu-specific", action="store_true",
                        help="let --optimize auto keep a recipe that needs this CPU's instruction set (8-bit "
                             "weights need VNNI); the package then refuses to load on CPUs without it")
    parser.add_argument("--openvino", action="store_true",
                        help="also add the openvino-int8 variant: NNCF int8 run by OpenVINO, the fastest CPU path on "
                             "most CPUs (needs the openvino extra; calibrates on --calibration DIR when given, and "
                             "is gated by --min-agreement / --max-probability-diff like --optimize auto)")
    parser.add_argument("--faces", action="store_true",
                        help="also add the face detector (MTCNN's three nets, from facenet-pytorch 2.6.0's wheel, "
                             "fetched with pip download --no-deps), so predict --faces classifies each face")
    parser.add_argument("--expects-faces", action="store_true",
                        help="mark the model as trained on face crops (implies --faces): predict then finds the "
                             "faces by default, and info says so")
    parser.add_argument("--faces-wheel", type=non_empty_path, metavar="WHEEL",
                        help="a local copy of facenet_pytorch-2.6.0-py3-none-any.whl (offline exports)")
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
    parser.add_argument("--validation-images", dest="validation_dirs", type=Path, action="append", default=[],
                        metavar="DIR",
                        help="also validate on images from DIR (repeatable), e.g. a held-out test split")
    parser.add_argument("--validation-limit", type=positive_int, default=ExportSettings.validation_limit,
                        metavar="N", help="at most N images from each --validation-images DIR (default %(default)s)")
    return refuse_empty_text(parser)


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """``fastvit-detect export`` and ``python export/export.py``: exit 0 when the package was written, 1 when the
    export failed (the reason on stderr), 2 for bad arguments."""
    args = build_parser(prog).parse_args(argv)

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    try:
        export_package(ExportSettings(**vars(args)), log)  # the parser's destinations are the settings' fields
    except (ExportError, FastVitDetectError, OSError) as exc:
        log(f"export failed: {exc}")
        return 1
    return 0
