"""One way to open a session, whichever runtime a variant needs.

A :class:`Backend` opens the sessions of one runtime: :meth:`Backend.open` a session for one call at a time with
``threads`` cores (``Detector.predict``), :meth:`Backend.open_workers` the sessions of a throughput layout (batch
work). Both return objects with the session contract: ``run(pixels) -> logits`` (thread-safe), ``threads``,
``providers``, ``signature`` and ``check_compatible``. The detector, the layout pool and the calibration all open
sessions here, so each runtime's options reach every session it opens.

The runtime options ride in one object per runtime, never as new keywords of :meth:`Detector.load`:
:class:`OnnxRuntimeOptions` (providers, SessionOptions, provider options) and :class:`OpenVinoOptions` (a mapping
of OpenVINO properties, as optimum-intel's ``ov_config``, and the compiled-model cache).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from .errors import BackendError, InvalidOptionError
from .session import OnnxSession, Signature

if TYPE_CHECKING:
    import onnxruntime as ort

    from .layout import Layout

ONNXRUNTIME, OPENVINO = "onnxruntime", "openvino"
RUNTIMES = (ONNXRUNTIME, OPENVINO)


class Session(Protocol):
    """What the detector needs of a session, whatever runs it."""

    path: Path
    threads: int
    providers: list[str]
    runtime: str

    @property
    def signature(self) -> Signature: ...

    def check_compatible(self, image_size: tuple[int, int] | None, num_labels: int,
                         model_image_size: tuple[int, int] | None = None) -> None: ...

    def run(self, pixel_values: np.ndarray) -> np.ndarray: ...


class Backend:
    """Opens sessions of one runtime for one graph file."""

    runtime: str = ""

    def version(self) -> str:
        raise NotImplementedError

    def open(self, path: Path, threads: int | None) -> Session:
        raise NotImplementedError

    def open_workers(self, path: Path, layout: Layout, first: Session | None = None) -> list[Session]:
        """One session per worker of ``layout`` (the same object may stand in several places: each place is one
        call that may run at once). ``first``, a session of ``layout.threads_per_worker`` threads already open,
        may be reused."""
        raise NotImplementedError

    def layout_cache(self, graph_sha256: str, directory: Path | None = None) -> Path:
        """Where a layout calibrated for this graph on this runtime (and its version) is cached."""
        from .layout import cache_path

        return cache_path(graph_sha256, directory, self.runtime, self.version())


@dataclass(frozen=True)
class OnnxRuntimeOptions:
    """onnxruntime's knobs, for users who tune it: execution providers (default CPU), SessionOptions replacing
    fastvit-detect's tuned defaults (``threads`` still sets their intra-op threads), one dict per provider."""

    providers: Sequence[str] | None = None
    session_options: ort.SessionOptions | None = None
    provider_options: Sequence[Mapping[str, Any]] | None = None


class OnnxRuntimeBackend(Backend):
    runtime = ONNXRUNTIME

    def __init__(self, options: OnnxRuntimeOptions | None = None) -> None:
        self.options = options or OnnxRuntimeOptions()

    def version(self) -> str:
        import onnxruntime

        return str(onnxruntime.__version__)

    def open(self, path: Path, threads: int | None) -> Session:
        return OnnxSession(path, threads=threads, providers=self.options.providers,
                           options=self.options.session_options, provider_options=self.options.provider_options)

    def open_workers(self, path: Path, layout: Layout, first: Session | None = None) -> list[Session]:
        """Workers of one thread share one session: a session without an intra-op pool runs each call on its
        caller's thread, and concurrent calls are safe, so W callers get W cores with one copy of the packed
        weights (each extra session costs a full copy, about 90 MB for ViT-B int8). With more threads per worker
        each worker needs its own session, whose pool is its own."""
        if layout.threads_per_worker == 1:
            return [first or self.open(path, 1)] * layout.workers
        needed = layout.workers - (first is not None)
        opened: list[Session] = [first] if first is not None else []
        if needed:
            from concurrent.futures import ThreadPoolExecutor

            # In parallel: each one's graph optimisation and weight packing take a while.
            with ThreadPoolExecutor(min(needed, 8), thread_name_prefix="fastvit-open") as opener:
                opened += list(opener.map(lambda _: self.open(path, layout.threads_per_worker), range(needed)))
        return opened


@dataclass(frozen=True)
class OpenVinoOptions:
    """OpenVINO's knobs: ``config``, properties that override fastvit-detect's (``PERFORMANCE_HINT``,
    ``NUM_STREAMS``, ``INFERENCE_PRECISION_HINT``, ...); ``cache``: keep compiled models in the user's cache
    directory (OpenVINO's ``CACHE_DIR``), so a second start doesn't compile again."""

    config: Mapping[str, Any] = field(default_factory=dict)
    cache: bool = True

    def __post_init__(self) -> None:
        # Checked here, naming the option: a string or a NaN would otherwise surface as OpenVINO's compile error.
        config = self.config
        if not isinstance(config, Mapping):
            raise InvalidOptionError(f"ov_config must be a mapping of OpenVINO property names to values, got "
                                     f"{type(config).__name__}")
        for name, value in config.items():
            if not isinstance(name, str) or not name:
                raise InvalidOptionError(f"ov_config: property names are non-empty strings, got {name!r}")
            if isinstance(value, float) and not math.isfinite(value):
                raise InvalidOptionError(f"ov_config[{name!r}] = {value!r}: not a finite number")
            if not isinstance(value, (str, int, float, bool)):
                raise InvalidOptionError(f"ov_config[{name!r}]: a string, number or bool, got {type(value).__name__}")
        object.__setattr__(self, "config", dict(config))


class OpenVinoBackend(Backend):
    runtime = OPENVINO

    def __init__(self, options: OpenVinoOptions | None = None) -> None:
        from .openvino_session import import_openvino

        import_openvino()  # a missing extra is reported now, naming it, not at the first image
        self.options = options or OpenVinoOptions()

    def version(self) -> str:
        from .openvino_session import openvino_version

        return openvino_version()

    def _cache_directory(self) -> Path | None:
        if not self.options.cache or "CACHE_DIR" in self.options.config:  # the caller's own cache, or "" for none
            return None
        from .layout import cache_directory

        return cache_directory() / "openvino"

    def open(self, path: Path, threads: int | None) -> Session:
        from .openvino_session import LATENCY, OpenVinoSession

        return OpenVinoSession(path, threads, hint=LATENCY, config=self.options.config,
                               cache_directory=self._cache_directory())

    def open_workers(self, path: Path, layout: Layout, first: Session | None = None) -> list[Session]:
        """One compiled model with a stream per worker and every worker's threads: OpenVINO's own throughput
        machinery, one copy of the weights; each worker's call runs on an infer request of its own."""
        from .openvino_session import THROUGHPUT, OpenVinoSession

        if layout.workers == 1 and first is not None:
            return [first]
        session = OpenVinoSession(path, layout.threads, streams=layout.workers, hint=THROUGHPUT,
                                  config=self.options.config, cache_directory=self._cache_directory())
        return [session] * layout.workers


def backend_for(runtime: str, onnxruntime: OnnxRuntimeOptions | None = None,
                openvino: OpenVinoOptions | None = None) -> Backend:
    """The backend that runs a variant of ``runtime``; :class:`BackendError` for one this version doesn't know,
    :class:`~fastvit_detect.errors.MissingExtraError` when its library isn't installed."""
    if runtime == ONNXRUNTIME:
        return OnnxRuntimeBackend(onnxruntime)
    if runtime == OPENVINO:
        return OpenVinoBackend(openvino)
    raise BackendError(f"runtime {runtime!r} isn't one this fastvit-detect runs ({', '.join(RUNTIMES)}); "
                       "upgrade fastvit-detect or load another variant")

