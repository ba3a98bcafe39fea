"""onnxruntime sessions set up for low-latency CPU inference."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from .errors import (
    IncompatibleModelError,
    InvalidPackageError,
    ModelOutputError,
    ProviderError,
)
from .options import check_whole

DEFAULT_PROVIDERS = ("CPUExecutionProvider",)
MAX_THREADS = 1024
# Graph element types of a float tensor: the preprocessing makes float32, so that is what the graph must take.
FLOAT32 = "tensor(float)"
FLOAT_OUTPUTS = ("tensor(float)", "tensor(float16)", "tensor(double)")


@lru_cache(maxsize=1)
def cpuinfo() -> tuple[dict[str, str], ...]:
    """/proc/cpuinfo as one dict per logical processor; empty where there is none (not Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as handle:
            text = handle.read()
    except OSError:
        return ()
    return tuple({key.strip(): value.strip() for key, _, value in (line.partition(":") for line in block.splitlines())}
                 for block in text.strip().split("\n\n") if block.strip())


def physical_core_count() -> int:
    """Physical cores this process may run on; SMT siblings share one core's matrix units, so count them once."""
    try:
        allowed = os.sched_getaffinity(0)
    except AttributeError:  # not Linux
        return max(1, (os.cpu_count() or 2) // 2)
    cores = set()
    for processor in cpuinfo():
        try:
            if int(processor.get("processor", -1)) in allowed and "core id" in processor:
                cores.add((processor.get("physical id"), processor["core id"]))
        except ValueError:
            continue
    return len(cores) if cores else max(1, len(allowed))


# Flags of the int8 dot-product instructions (VPDPBUSD) that make full 8-bit u8 x s8 weights safe: without them
# onnxruntime sums pairs of products in int16, which 8-bit weights can saturate.
VNNI_FLAGS = ("avx512_vnni", "avx_vnni")


def cpu_flags() -> frozenset[str]:
    """The instruction-set flags /proc/cpuinfo lists (avx2, avx512_vnni, ...); empty where there is none."""
    processors = cpuinfo()
    return frozenset(processors[0].get("flags", "").split()) if processors else frozenset()


# Flags that give PyTorch's CPU kernels (oneDNN) native bf16 arithmetic; without them bf16 is emulated around fp32
# arithmetic. The runtime doesn't use bf16; the benchmark asks this before measuring PyTorch's autocast.
BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def has_vnni(flags: frozenset[str] | None = None) -> bool:
    """Whether this CPU (or one with ``flags``) can run full 8-bit int8 weights without saturating."""
    return bool((cpu_flags() if flags is None else flags) & set(VNNI_FLAGS))


def has_native_bf16(flags: frozenset[str] | None = None) -> bool:
    """Whether this CPU (or one with ``flags``) does bf16 arithmetic natively."""
    return bool((cpu_flags() if flags is None else flags) & set(BF16_FLAGS))


def session_options(threads: int | None = None) -> ort.SessionOptions:
    options = ort.SessionOptions()
    # One request runs one graph: parallelism belongs inside the operators, on the physical cores.
    options.intra_op_num_threads = threads or physical_core_count()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: ORT's warnings about unused initializers confuse users
    return options


@dataclass(frozen=True)
class Signature:
    """What a graph takes and gives, as any runtime reports it: one input, the first output. An axis is an int
    when fixed, else whatever the runtime calls a dynamic axis (a name, None or -1)."""

    input_name: str
    input_shape: tuple[Any, ...]
    input_type: str  # onnxruntime's spelling: "tensor(float)"
    output_name: str
    output_shape: tuple[Any, ...]
    output_type: str


def check_compatible(signature: Signature, path: Path, image_size: tuple[int, int] | None, num_labels: int,
                     model_image_size: tuple[int, int] | None = None) -> None:
    """Refuse a graph whose input or output shape disagrees with the package's configs.

    ``model_image_size``: the size the model was built for (config.json's ``image_size``). A graph that takes
    any image size would run at whatever the preprocessor config asks, so the config is held to it.
    """
    shape = list(signature.input_shape)
    output_shape = list(signature.output_shape)
    name, output_name = signature.input_name, signature.output_name
    if len(shape) != 4 or (isinstance(shape[1], int) and shape[1] != 3):
        raise IncompatibleModelError(f"{path}: input {name} has shape {shape}, expected (N, 3, H, W)")
    if signature.input_type != FLOAT32:
        raise IncompatibleModelError(f"{path}: input {name} takes {signature.input_type}; the "
                                     f"preprocessing makes {FLOAT32} (re-export the model with float32 input)")
    if signature.output_type not in FLOAT_OUTPUTS:
        raise IncompatibleModelError(f"{path}: output {output_name} is {signature.output_type}, expected "
                                     "float logits")
    for what, axes in (("input", shape), ("output", output_shape)):
        if axes and isinstance(axes[0], int) and axes[0] >= 0:  # a dynamic axis reads as a name, None or -1
            raise IncompatibleModelError(
                f"{path}: the {what}'s batch axis is fixed at {axes[0]}; fastvit-detect runs batches of "
                "any size, so export the model with a dynamic batch axis (fastvit-detect export does)")
    if image_size is not None:
        for axis, expected in zip(("height", "width"), image_size):
            actual = shape[2 if axis == "height" else 3]
            if isinstance(actual, int) and actual != expected:
                raise IncompatibleModelError(
                    f"{path}: input {axis} is {actual}, but the preprocessor config produces {expected} "
                    f"(input shape {shape}); is this another model's ONNX file?"
                )
        dynamic = not all(isinstance(axis, int) and axis > 0 for axis in shape[2:])
        if dynamic and model_image_size is not None and tuple(image_size) != tuple(model_image_size):
            raise IncompatibleModelError(
                f"{path}: the graph takes images of any size and config.json's image_size "
                f"{model_image_size[0]} says the model was built for {model_image_size[0]}x{model_image_size[1]}, "
                f"but the preprocessor config makes {image_size[0]}x{image_size[1]}")
    width = output_shape[-1] if output_shape else None
    if len(output_shape) != 2 or (isinstance(width, int) and width != num_labels):
        raise IncompatibleModelError(
            f"{path}: output {output_name} has shape {output_shape}, expected (N, {num_labels}) "
            "for the labels in config.json"
        )


class OnnxSession:
    """An image-classification ONNX graph on onnxruntime: pixel_values (N, 3, H, W) float32 -> logits (N, classes)."""

    runtime = "onnxruntime"

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        threads: int | None = None,
        providers: Sequence[str] | None = None,
        options: ort.SessionOptions | None = None,
        provider_options: Sequence[Mapping[str, Any]] | None = None,
    ) -> None:
        """``options``: onnxruntime SessionOptions to use instead of the tuned defaults (``threads``, when given,
        still sets their intra-op threads). ``provider_options``: one dict per provider, as onnxruntime takes
        them."""
        self.path = Path(model_path)
        chosen = tuple(providers) if providers else DEFAULT_PROVIDERS
        available = ort.get_available_providers()
        missing = [name for name in chosen if name not in available]
        if missing:
            raise ProviderError(
                f"execution provider(s) {', '.join(missing)} not available in this onnxruntime "
                f"(available: {', '.join(available)})"
            )
        if threads is not None:
            check_whole("threads", threads, 1, MAX_THREADS)
        if provider_options is not None and len(provider_options) != len(chosen):
            raise ProviderError(f"provider_options has {len(provider_options)} entries for {len(chosen)} provider(s) "
                                f"({', '.join(chosen)}): give one dict per provider")
        if options is None:
            options = session_options(threads or physical_core_count())
        elif threads is not None:
            options.intra_op_num_threads = threads
        self.threads = options.intra_op_num_threads or threads or physical_core_count()
        try:
            self._session = ort.InferenceSession(
                str(self.path), sess_options=options, providers=list(chosen),
                provider_options=[dict(entry) for entry in provider_options] if provider_options is not None else None,
            )
        except Exception as exc:  # ORT raises its own untyped errors for unreadable graphs
            raise InvalidPackageError(f"{self.path}: onnxruntime can't load the model: {exc}") from exc
        inputs = self._session.get_inputs()
        outputs = self._session.get_outputs()
        if len(inputs) != 1:
            raise IncompatibleModelError(
                f"{self.path}: expected one input (pixel_values), found {[i.name for i in inputs]}"
            )
        self.input_name = inputs[0].name
        self.input_shape = list(inputs[0].shape)
        self.input_type = inputs[0].type
        self.output_name = outputs[0].name
        self.output_shape = list(outputs[0].shape)
        self.output_type = outputs[0].type
        self.providers = self._session.get_providers()

    @property
    def signature(self) -> Signature:
        return Signature(self.input_name, tuple(self.input_shape), self.input_type, self.output_name,
                         tuple(self.output_shape), self.output_type)

    def check_compatible(self, image_size: tuple[int, int] | None, num_labels: int,
                         model_image_size: tuple[int, int] | None = None) -> None:
        """:func:`check_compatible` on this session's graph."""
        check_compatible(self.signature, self.path, image_size, num_labels, model_image_size)

    def run(self, pixel_values: np.ndarray) -> np.ndarray:
        """Logits for a float32 NCHW batch, in one session call."""
        try:
            (logits,) = self._session.run([self.output_name], {self.input_name: pixel_values})
        except Exception as exc:  # onnxruntime's errors are untyped: Fail, RuntimeException, ...
            raise ModelOutputError(f"onnxruntime failed on a batch of {len(pixel_values)} ({self.path.name}): "
                                   f"{type(exc).__name__}: {str(exc)[:500]}") from exc
        return np.asarray(logits)
