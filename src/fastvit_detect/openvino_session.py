"""OpenVINO sessions: the same contract as :class:`~fastvit_detect.session.OnnxSession` on OpenVINO's CPU plugin.

OpenVINO reads the package's ONNX graph itself (an NNCF int8 graph in QDQ form compiles to its fused int8
kernels), so a package stays ONNX-only. ``openvino`` is imported only when such a session is opened: ``import
fastvit_detect`` and an onnxruntime-only install never touch it.

How the layout maps onto OpenVINO: one compiled model per shape of work. :meth:`Detector.predict` gets a
``LATENCY`` compiled model with every thread; batch work gets one ``THROUGHPUT`` compiled model with
``NUM_STREAMS = workers`` and ``INFERENCE_NUM_THREADS = workers x threads_per_worker``, and each concurrent call
runs on an infer request of its own, which OpenVINO schedules over its streams: one copy of the weights, however
many workers.

Compiled models are cached (OpenVINO's ``CACHE_DIR``) in a private directory of the user's cache, so a second
start doesn't compile again; a cache that can't be used safely (unwritable, a symlink, someone else's, writable by
others) is skipped with a warning, and one that fails to load is bypassed: never fatal.
"""

from __future__ import annotations

import os
import queue
import stat
import warnings
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from .errors import BackendError, MissingExtraError, ModelOutputError
from .options import check_whole
from .session import MAX_THREADS, Signature, check_compatible, physical_core_count

EXTRA = "openvino"
LATENCY, THROUGHPUT = "LATENCY", "THROUGHPUT"
# OpenVINO's element type names, spelled as onnxruntime spells graph types (what check_compatible reads).
_TYPES = {"f32": "tensor(float)", "f16": "tensor(float16)", "f64": "tensor(double)", "bf16": "tensor(bfloat16)"}


def import_openvino() -> Any:
    """The ``openvino`` module, or :class:`MissingExtraError` naming the extra that installs it."""
    try:
        import openvino
    except ImportError as exc:
        raise MissingExtraError(
            f"this variant runs on OpenVINO, which isn't installed ({exc.name or exc} is missing): "
            f'pip install "fastvit-detect[{EXTRA}]"') from exc
    return openvino


def openvino_available() -> str | None:
    """None when OpenVINO can be imported, else why not (for an ``auto`` choice that must not fail)."""
    try:
        import_openvino()
    except MissingExtraError as exc:
        return str(exc)
    return None


def openvino_version() -> str:
    return str(import_openvino().get_version())


@lru_cache(maxsize=1)
def _core() -> Any:
    return import_openvino().Core()  # one per process: it holds the plugins and their thread pools


def usable_cache_directory(path: Path) -> Path | None:
    """``path``, created private if missing, when it is safe to let OpenVINO write and later load compiled models
    there; else None. Loading a compiled blob runs whatever it holds, so the directory and its parent must be real
    directories (no symlink anywhere we check), owned by this user and writable by no one else."""
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        for level in (path, path.parent):
            info = os.lstat(level)
            if not stat.S_ISDIR(info.st_mode):
                return None  # a symlink (to a directory or not) or something else: not followed
            if hasattr(os, "getuid") and info.st_uid != os.getuid():
                return None
            if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
                return None
        if not os.access(path, os.W_OK | os.X_OK):
            return None
    except OSError:
        return None
    return path


class OpenVinoSession:
    """An image-classification graph compiled by OpenVINO's CPU plugin: pixel_values (N, 3, H, W) float32 -> logits.

    ``run`` is thread-safe: each concurrent call takes an infer request of its own (``streams`` of them run at
    once). ``config``: OpenVINO properties that override fastvit-detect's (optimum-intel's ``ov_config``).
    """

    runtime = "openvino"

    def __init__(self, model_path: str | os.PathLike[str], threads: int | None = None, *, streams: int = 1,
                 hint: str = LATENCY, config: Mapping[str, Any] | None = None,
                 cache_directory: Path | None = None) -> None:
        self.path = Path(model_path)
        if threads is not None:
            check_whole("threads", threads, 1, MAX_THREADS)
        check_whole("streams", streams, 1, MAX_THREADS)
        self.threads = threads or physical_core_count()
        self.streams = streams
        properties: dict[str, Any] = {"PERFORMANCE_HINT": hint, "INFERENCE_NUM_THREADS": self.threads,
                                      "NUM_STREAMS": streams}
        properties.update(dict(config or {}))
        self.cache_directory = usable_cache_directory(cache_directory) if cache_directory is not None else None
        if cache_directory is not None and self.cache_directory is None:
            warnings.warn(f"OpenVINO's compiled-model cache {cache_directory} isn't a private directory this user "
                          "can write (a symlink, someone else's, writable by others, or read-only): compiling "
                          "without it", RuntimeWarning, stacklevel=2)
        self._given = dict(config or {})
        self._compiled = self._compile(properties)
        self.providers = [f"OpenVINO {openvino_version()} CPU"]
        self.inference_precision = self._property("INFERENCE_PRECISION_HINT")
        (port,), output = self._compiled.inputs, self._compiled.outputs[0]
        self.signature = Signature(_name(port), _shape(port), _type(port), _name(output), _shape(output),
                                   _type(output))
        self._free: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def _compile(self, properties: dict[str, Any]) -> Any:
        core = _core()
        if self.cache_directory is not None:
            try:
                return core.compile_model(str(self.path), "CPU", {**properties, "CACHE_DIR": str(self.cache_directory)})
            except Exception as exc:  # noqa: BLE001 - OpenVINO raises bare RuntimeErrors; retried without the cache
                first = exc
            try:
                compiled = core.compile_model(str(self.path), "CPU", properties)
            except Exception:  # noqa: BLE001 - not the cache's fault: report the compile failure itself
                raise self._compile_error(first) from first
            warnings.warn(f"OpenVINO's compiled-model cache {self.cache_directory} failed "
                          f"({type(first).__name__}: {str(first)[:200]}); compiled without it", RuntimeWarning,
                          stacklevel=3)
            return compiled
        try:
            return core.compile_model(str(self.path), "CPU", properties)
        except Exception as exc:  # OpenVINO raises untyped RuntimeErrors
            raise self._compile_error(exc) from exc

    def _compile_error(self, exc: BaseException) -> BackendError:
        text = " ".join(str(exc).split())
        given = f" with ov_config {self._given}" if self._given else ""
        return BackendError(f"{self.path}: OpenVINO {openvino_version()} can't compile this graph for the CPU{given}: "
                            f"{type(exc).__name__}: {text[:500]}")

    def _property(self, name: str) -> str:
        try:
            value = self._compiled.get_property(name)
        except Exception:  # noqa: BLE001 - a property this OpenVINO doesn't report is simply unknown
            return "unknown"
        return str(getattr(value, "get_type_name", lambda: value)())

    @property
    def input_shape(self) -> list[Any]:
        return list(self.signature.input_shape)

    @property
    def output_shape(self) -> list[Any]:
        return list(self.signature.output_shape)

    def check_compatible(self, image_size: tuple[int, int] | None, num_labels: int,
                         model_image_size: tuple[int, int] | None = None) -> None:
        check_compatible(self.signature, self.path, image_size, num_labels, model_image_size)

    def run(self, pixel_values: np.ndarray) -> np.ndarray:
        """Logits for a float32 NCHW batch, in one inference on a free infer request."""
        try:
            request = self._free.get_nowait()
        except queue.Empty:
            request = self._compiled.create_infer_request()
        try:
            request.infer({0: np.ascontiguousarray(pixel_values)})
            logits = np.array(request.get_output_tensor(0).data, copy=True)  # the request reuses its buffer
        except Exception as exc:  # untyped errors: this batch fails, not the process
            raise ModelOutputError(f"OpenVINO failed on a batch of {len(pixel_values)} ({self.path.name}): "
                                   f"{type(exc).__name__}: {str(exc)[:500]}") from exc
        self._free.put(request)
        return logits


def _name(port: Any) -> str:
    try:
        return str(port.get_any_name())
    except RuntimeError:  # a port without a name
        return "?"


def _shape(port: Any) -> tuple[Any, ...]:
    return tuple(dimension.get_length() if dimension.is_static else None for dimension in port.get_partial_shape())


def _type(port: Any) -> str:
    name = port.get_element_type().get_type_name()
    return _TYPES.get(name, f"tensor({name})")
