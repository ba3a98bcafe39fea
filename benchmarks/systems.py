"""One small adapter per system under test, all serving the same checkpoint.

Each adapter does what that system's own documentation tells a user to do, nothing cleverer, and exposes:

* ``load(threads)`` / ``set_threads(threads)``;
* ``predict_files(paths)``: encoded files on disk -> class probabilities (N, labels), the end-to-end path;
* ``prepare_pixels(paths)`` + ``predict_pixels(pixels)``: the model call alone, on the system's own input type;
* ``coldstart_code``: a standalone script that a fresh interpreter runs from import to its first printed label;
* ``footprint_roots``: the distributions a deployment of the system has to install.

Libraries are imported inside ``load`` so that a missing one makes that system skipped, not the suite broken.
"""

from __future__ import annotations

import contextlib
import importlib
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fastvit_detect.detector import softmax
from fastvit_detect.session import BF16_FLAGS, has_native_bf16

from .artifacts import Artifacts

# Systems whose absence is normal: they're reported as skipped with the reason, like any other.
TORCH_ROOTS = ("torch", "transformers", "pillow")
OPTIMUM_ROOTS = ("optimum-onnx[onnxruntime]", "optimum", "onnxruntime", "transformers", "torch", "pillow")


class Unavailable(Exception):
    """The system can't run here (library not installed, mode excludes it); the message says why."""


def require(*modules: str, extra: str | None = None) -> list[Any]:
    """Import ``modules``, or raise Unavailable naming the missing one: a system that can't load is skipped.

    ``extra``: the project extra that installs them, named in the reason instead of the bare module.
    """
    try:
        return [importlib.import_module(name) for name in modules]
    except ImportError as exc:
        missing = (exc.name or "").split(".")[0] or "?"
        install = f'pip install "fastvit-detect[{extra}]"' if extra else f"pip install {missing}"
        raise Unavailable(f"not installed: {missing} ({install})") from exc




def bf16_unavailable_reason(flags: frozenset[str]) -> str | None:
    """Why bf16 autocast isn't benchmarked on a CPU with these /proc/cpuinfo ``flags``, or None if it is."""
    if not flags:
        return "CPU flags unreadable here (no /proc/cpuinfo): can't tell whether bf16 runs natively"
    if has_native_bf16(flags):
        return None  # without native bf16, autocast measures an emulation nobody would deploy
    return ("this CPU has neither AMX-BF16 nor AVX512-BF16 (amx_bf16 / avx512_bf16 not in its flags): bf16 would be "
            "emulated")


class System:
    name: str = ""
    variant: str = "fp32"
    precision: str = "fp32"
    baseline: bool = False
    footprint_roots: Sequence[str] = ()

    def __init__(self, artifacts: Artifacts) -> None:
        self.artifacts = artifacts
        self.notes: dict[str, Any] = {}
        self.threads = 0

    @property
    def key(self) -> str:
        return f"{self.name}/{self.variant}"

    def load(self, threads: int) -> None:
        raise NotImplementedError

    def set_threads(self, threads: int) -> None:
        raise NotImplementedError

    def predict_files(self, paths: Sequence[Path]) -> np.ndarray:
        raise NotImplementedError

    def prepare_pixels(self, paths: Sequence[Path]) -> Any:
        raise NotImplementedError

    def predict_pixels(self, pixels: Any) -> Any:
        raise NotImplementedError

    @property
    def model_only_reason(self) -> str | None:
        """Why the model-only figure isn't measured for this system, or None."""
        return None

    def coldstart_code(self) -> str:
        """A script run as ``python -c CODE CHECKPOINT_OR_PACKAGE IMAGE``; prints the label."""
        raise NotImplementedError

    def coldstart_args(self) -> list[str]:
        return [str(self.artifacts.checkpoint)]


# --- PyTorch + transformers ---------------------------------------------------------------------------------


class TorchSystem(System):
    """The seed's way: slow AutoImageProcessor + AutoModelForImageClassification, fp32, torch.no_grad()."""

    name = "pytorch"
    baseline = True
    footprint_roots = TORCH_ROOTS

    def load(self, threads: int) -> None:
        self.torch, transformers = require("torch", "transformers")
        transformers.logging.set_verbosity_error()
        from fastvit_detect.build.reference import TorchReference

        self.reference = TorchReference.load(self.artifacts.checkpoint)
        self.processor = self.reference.processor
        self.model = self.make_model(self.reference.model)
        self.notes["processor"] = type(self.processor).__name__
        self.set_threads(threads)

    def make_model(self, model: Any) -> Any:
        return model

    def set_threads(self, threads: int) -> None:
        # torch's intra-op pool is process-wide: every torch system shares it, so each sets it before its phase.
        self.torch.set_num_threads(threads)
        self.threads = threads

    def _images(self, paths: Sequence[Path]) -> list[Any]:
        return [self.reference.load_image(path) for path in paths]  # what the pipeline does: EXIF transpose + RGB

    def inference(self) -> contextlib.AbstractContextManager[Any]:
        """The context the model runs in: what the seed does, torch.no_grad()."""
        return self.torch.no_grad()

    def predict_files(self, paths: Sequence[Path]) -> np.ndarray:
        return softmax(self.predict_pixels(self.prepare_pixels(paths)).numpy())

    def prepare_pixels(self, paths: Sequence[Path]) -> Any:
        return self.reference.pixel_values(self._images(paths))

    def predict_pixels(self, pixels: Any) -> Any:
        with self.inference():
            return self.model(pixel_values=pixels).logits.float()

    def coldstart_code(self) -> str:
        return SEED_SCRIPT.format(setup="", context="")


SEED_SCRIPT = textwrap.dedent(
    """
    import sys
    import torch
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    processor = AutoImageProcessor.from_pretrained(sys.argv[1], use_fast=False)
    model = AutoModelForImageClassification.from_pretrained(sys.argv[1]).eval()
    {setup}
    with torch.no_grad(){context}:
        logits = model(**processor(Image.open(sys.argv[2]).convert("RGB"), return_tensors="pt")).logits
    print(model.config.id2label[int(logits.argmax(-1))], flush=True)
    """
)


class TorchInt8System(TorchSystem):
    """torch.ao dynamic int8 on every nn.Linear: the first thing a PyTorch user tries for CPU speed."""

    variant = "int8"
    precision = "int8"
    baseline = False

    def make_model(self, model: Any) -> Any:
        from torch.ao.quantization import quantize_dynamic

        self.notes["quantization"] = "torch.ao.quantization.quantize_dynamic({nn.Linear}, dtype=torch.qint8)"
        self.notes["quantized_engine"] = self.torch.backends.quantized.engine
        from fastvit_detect.build.chatter import library_warnings_hidden

        with library_warnings_hidden():  # torch.ao.quantization's deprecation notice
            return quantize_dynamic(model, {self.torch.nn.Linear}, dtype=self.torch.qint8)

    def coldstart_code(self) -> str:
        return SEED_SCRIPT.format(
            setup="model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)",
            context="")


class TorchCompileSystem(TorchSystem):
    """torch.compile (inductor) on the fp32 model: compiles on first call for each batch size."""

    name = "torch.compile"
    baseline = False

    def make_model(self, model: Any) -> Any:
        self.notes["backend"] = "inductor (default mode)"
        return self.torch.compile(model)

    def coldstart_code(self) -> str:
        return SEED_SCRIPT.format(setup="model = torch.compile(model)", context="")


class TorchBf16System(TorchSystem):
    """The fp32 model under torch.autocast("cpu", dtype=torch.bfloat16): PyTorch's one-line bf16 path."""

    variant = "bf16"
    precision = "bf16"
    baseline = False

    def load(self, threads: int) -> None:
        from fastvit_detect.session import cpu_flags

        flags = cpu_flags()
        reason = bf16_unavailable_reason(flags)
        if reason:
            raise Unavailable(reason)
        super().load(threads)
        self.notes["autocast"] = 'torch.autocast("cpu", dtype=torch.bfloat16) inside torch.no_grad()'
        self.notes["bf16_flags"] = ", ".join(flag for flag in BF16_FLAGS if flag in flags)

    def inference(self) -> contextlib.AbstractContextManager[Any]:
        stack = contextlib.ExitStack()
        stack.enter_context(self.torch.no_grad())
        stack.enter_context(self.torch.autocast("cpu", dtype=self.torch.bfloat16))
        return stack

    def coldstart_code(self) -> str:
        return SEED_SCRIPT.format(setup="", context=', torch.autocast("cpu", dtype=torch.bfloat16)')


class PipelineSystem(TorchSystem):
    """transformers.pipeline("image-classification") with its defaults, fed file paths."""

    name = "pytorch-pipeline"
    baseline = False

    def load(self, threads: int) -> None:
        self.torch, transformers = require("torch", "transformers")
        transformers.logging.set_verbosity_error()
        self.pipe = transformers.pipeline("image-classification", model=str(self.artifacts.checkpoint), device="cpu")
        self.label2id = {label: int(index) for index, label in self.pipe.model.config.id2label.items()}
        self.notes["processor"] = type(self.pipe.image_processor).__name__
        self.set_threads(threads)

    def predict_files(self, paths: Sequence[Path]) -> np.ndarray:
        outputs = self.pipe([str(path) for path in paths], batch_size=len(paths), top_k=None)
        probabilities = np.zeros((len(paths), len(self.label2id)))
        for row, scores in enumerate(outputs):
            for entry in scores:
                probabilities[row, self.label2id[entry["label"]]] = entry["score"]
        return probabilities

    @property
    def model_only_reason(self) -> str | None:
        return "same model call as pytorch/fp32; the pipeline adds only pre- and post-processing"

    def coldstart_code(self) -> str:
        return textwrap.dedent(
            """
            import sys
            from transformers import pipeline

            classify = pipeline("image-classification", model=sys.argv[1], device="cpu")
            print(classify(sys.argv[2])[0]["label"], flush=True)
            """
        )


# --- Hugging Face Optimum -----------------------------------------------------------------------------------


class OptimumSystem(System):
    """ORTModelForImageClassification on Optimum's own export, with the checkpoint's (slow) HF processor."""

    name = "optimum"
    file_name = "model.onnx"
    footprint_roots = OPTIMUM_ROOTS

    def load(self, threads: int) -> None:
        self.ort, self.torch, optimum_ort, transformers = require(
            "onnxruntime", "torch", "optimum.onnxruntime", "transformers")
        self.model_class = optimum_ort.ORTModelForImageClassification
        self.processor = transformers.AutoImageProcessor.from_pretrained(self.artifacts.optimum_dir, use_fast=False)
        self.notes["processor"] = type(self.processor).__name__
        self.notes["file"] = self.file_name
        self.model = None
        self.set_threads(threads)

    def set_threads(self, threads: int) -> None:
        if self.model is not None and threads == self.threads:
            return
        # ORT fixes its thread pool when the session is created, so another thread count needs another session.
        options = self.ort.SessionOptions()
        options.intra_op_num_threads = threads
        self.model = None
        from fastvit_detect.build.chatter import library_warnings_hidden

        with library_warnings_hidden():
            self.model = self.model_class.from_pretrained(
                self.artifacts.optimum_dir, file_name=self.file_name, session_options=options
            )
        self.threads = threads

    def _images(self, paths: Sequence[Path]) -> list[Any]:
        from fastvit_detect.build.reference import TorchReference

        return [TorchReference.load_image(path) for path in paths]  # as the pipeline opens files

    def predict_files(self, paths: Sequence[Path]) -> np.ndarray:
        inputs = self.processor(self._images(paths), return_tensors="pt")
        logits = self.model(**inputs).logits
        return softmax(np.asarray(logits))

    def prepare_pixels(self, paths: Sequence[Path]) -> Any:
        return self.processor(self._images(paths), return_tensors="pt")["pixel_values"]

    def predict_pixels(self, pixels: Any) -> Any:
        return self.model(pixel_values=pixels).logits

    def coldstart_args(self) -> list[str]:
        return [str(self.artifacts.optimum_dir)]

    def coldstart_code(self) -> str:
        return textwrap.dedent(
            f"""
            import sys
            from PIL import Image
            from optimum.onnxruntime import ORTModelForImageClassification
            from transformers import AutoImageProcessor

            processor = AutoImageProcessor.from_pretrained(sys.argv[1], use_fast=False)
            model = ORTModelForImageClassification.from_pretrained(sys.argv[1], file_name={self.file_name!r})
            logits = model(**processor(Image.open(sys.argv[2]).convert("RGB"), return_tensors="pt")).logits
            print(model.config.id2label[int(logits.argmax(-1))], flush=True)
            """
        )


class OptimumInt8System(OptimumSystem):
    """Optimum's ORTQuantizer dynamic int8 (the AutoQuantizationConfig preset for this CPU's ISA)."""

    variant = "int8"
    precision = "int8"
    file_name = "model_quantized.onnx"

    def load(self, threads: int) -> None:
        super().load(threads)
        self.notes["quantization"] = self.artifacts.optimum_quantization.get("preset")


# --- fastvit-detect -----------------------------------------------------------------------------------------


class FastVitSystem(System):
    """fastvit-detect's Detector on one variant of the exported package."""

    name = "fastvit-detect"
    footprint_roots = ("fastvit-detect",)

    def __init__(self, artifacts: Artifacts, variant: str) -> None:
        super().__init__(artifacts)
        self.variant = variant
        self.precision = "int8" if "int8" in variant else "fp32"
        self.detectors: dict[int, Any] = {}
        if variant == "auto" or "openvino" in variant:
            self.footprint_roots = ("fastvit-detect[openvino]",)  # what a server that runs it installs

    def load(self, threads: int) -> None:
        from fastvit_detect import Detector

        self.detector_class = Detector
        self.set_threads(threads)
        entry = self.detector.variant.entry
        self.precision = "int8" if "int8" in self.detector.variant.name else "fp32"
        self.notes["runtime"] = self.detector.runtime
        self.notes["layout"] = self.detector.layout.describe()
        if self.variant == "auto":
            self.notes["choice"] = self.detector.choice.describe()
        self.notes["file"] = self.detector.variant.path.name
        if entry is not None and entry.quantization is not None:
            self.notes["quantization"] = entry.quantization

    def set_threads(self, threads: int) -> None:
        # One Detector per thread count, kept: switching back and forth costs nothing after the first time.
        if threads not in self.detectors:
            self.detectors[threads] = self.detector_class.load(self.artifacts.package, variant=self.variant,
                                                               threads=threads)
        self.detector = self.detectors[threads]
        self.threads = threads

    def predict_files(self, paths: Sequence[Path]) -> np.ndarray:
        predictions = self.detector.predict_batch(paths, batch_size=max(1, len(paths)))
        labels = self.detector.labels
        return np.array([[prediction.probabilities[label] for label in labels] for prediction in predictions])

    def prepare_pixels(self, paths: Sequence[Path]) -> Any:
        return self.detector.preprocessor(paths)

    def predict_pixels(self, pixels: Any) -> Any:
        return self.detector.run_logits(pixels)

    def coldstart_args(self) -> list[str]:
        return [str(self.artifacts.package)]

    def coldstart_code(self) -> str:
        return textwrap.dedent(
            f"""
            import sys
            from fastvit_detect import Detector

            print(Detector.load(sys.argv[1], variant={self.variant!r}).predict(sys.argv[2]).label, flush=True)
            """
        )


# --- OpenVINO (optional: the openvino extra) ----------------------------------------------------------------

OPENVINO_EXTRA = "openvino"
# OpenVINO's names for the precisions it may pick, as this suite writes them.
OPENVINO_PRECISIONS = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}


class OpenVinoSystem(System):
    """OpenVINO runtime on the package's fp32 ONNX graph, with fastvit-detect's preprocessing, so the two differ
    only in the runtime. OpenVINO picks the precision it computes in (bf16 where the CPU has it); ``precision``
    and the notes say which it chose."""

    name = "openvino"
    footprint_roots = ("openvino", "fastvit-detect")  # the scripts borrow fastvit-detect's preprocessing
    modules: tuple[str, ...] = ("openvino",)

    def graph_path(self) -> Path:
        return self.artifacts.package / "model.onnx"

    def load(self, threads: int) -> None:
        (self.ov, *_) = require(*self.modules, extra=OPENVINO_EXTRA)
        from fastvit_detect import Detector

        self.core = self.ov.Core()
        self.graph = self.core.read_model(str(self.graph_path()))
        self.preprocessor = Detector.load(self.artifacts.package, variant="fp32", threads=1).preprocessor
        self.compiled: dict[int, Any] = {}
        self.set_threads(threads)
        chosen = self.model.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        self.notes["openvino"] = self.ov.get_version()
        self.notes["inference_precision"] = (
            f"{chosen} (OpenVINO's own choice: compiled_model.get_property('INFERENCE_PRECISION_HINT'); "
            f"the CPU plugin's default is {self.core.get_property('CPU', 'INFERENCE_PRECISION_HINT').get_type_name()})")
        self.notes["performance_hint"] = str(self.model.get_property("PERFORMANCE_HINT"))
        self.choose_precision(OPENVINO_PRECISIONS.get(chosen, chosen))

    def choose_precision(self, chosen: str) -> None:
        self.precision = chosen

    def set_threads(self, threads: int) -> None:
        if threads not in self.compiled:
            self.compiled[threads] = self.core.compile_model(self.graph, "CPU", {"INFERENCE_NUM_THREADS": threads})
        self.model = self.compiled[threads]
        self.threads = threads

    def predict_files(self, paths: Sequence[Path]) -> np.ndarray:
        return softmax(self.predict_pixels(self.preprocessor(paths)))

    def prepare_pixels(self, paths: Sequence[Path]) -> Any:
        return self.preprocessor(paths)

    def predict_pixels(self, pixels: Any) -> Any:
        return next(iter(self.model(pixels).values()))

    def coldstart_args(self) -> list[str]:
        return [str(self.artifacts.package), str(self.graph_path())]

    def coldstart_code(self) -> str:
        return textwrap.dedent(
            """
            import json, sys
            import numpy as np, openvino
            from fastvit_detect import Detector

            pre = Detector.load(sys.argv[1], variant="fp32", threads=1).preprocessor
            model = openvino.Core().compile_model(sys.argv[2], "CPU")
            logits = next(iter(model(pre([sys.argv[3]])).values()))
            labels = json.load(open(sys.argv[1] + "/config.json"))["id2label"]
            print(labels[str(int(np.argmax(logits)))], flush=True)
            """
        )


class OpenVinoInt8System(OpenVinoSystem):
    """OpenVINO on an NNCF post-training int8 quantization of the package's fp32 graph (built and cached by
    ``artifacts.openvino_int8``), calibrated on the images and with the settings of the exporter's static int8."""

    variant = "int8"
    precision = "int8"
    modules = ("openvino", "nncf")

    def graph_path(self) -> Path:
        return self.artifacts.openvino_int8_xml

    def load(self, threads: int) -> None:
        require(*self.modules, extra=OPENVINO_EXTRA)
        from .artifacts import openvino_int8

        self.notes["quantization"] = openvino_int8(self.artifacts)
        super().load(threads)

    def choose_precision(self, chosen: str) -> None:
        # The quantized MatMuls run in int8 whatever the hint; it decides the precision of everything else.
        self.notes["inference_precision"] = "int8 MatMuls; the rest in " + self.notes["inference_precision"]


def all_systems(artifacts: Artifacts) -> list[System]:
    """Every system, baseline first; fastvit-detect gets one entry per variant its package holds."""
    from fastvit_detect import ModelPackage

    package = ModelPackage.open(artifacts.package)
    return [
        TorchSystem(artifacts),
        PipelineSystem(artifacts),
        TorchInt8System(artifacts),
        TorchCompileSystem(artifacts),
        TorchBf16System(artifacts),
        OptimumSystem(artifacts),
        OptimumInt8System(artifacts),
        *(FastVitSystem(artifacts, variant) for variant in package.variants),
        FastVitSystem(artifacts, "auto"),  # what a user gets without naming a variant: chosen on this machine
        OpenVinoSystem(artifacts),
        OpenVinoInt8System(artifacts),
    ]
