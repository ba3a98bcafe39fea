"""The throughput building block: a layout's sessions, and an ordered decode -> model pipeline over them.

:class:`SessionPool` holds ``workers`` onnxruntime sessions of ``threads_per_worker`` intra-op threads; a call
takes whichever session is free, so up to ``workers`` threads can run batches at once (the server's model
threads, the pipeline's). :func:`ordered_pipeline` keeps them busy: decode threads prepare the next batches while
every worker runs one, and results come back in input order. Imports only the session and the layout.
"""

from __future__ import annotations

import os
import queue
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import numpy as np

from .backends import Backend, OnnxRuntimeBackend, Session
from .layout import Layout, calibrate, candidate_layouts, check_cache_writable, write_calibration
from .session import physical_core_count

Chunk = TypeVar("Chunk")
Decoded = TypeVar("Decoded")
Result = TypeVar("Result")


class SessionPool:
    """``layout.workers`` sessions of one graph. ``run`` is thread-safe and blocks while every session is busy."""

    def __init__(self, layout: Layout, sessions: Sequence[Session]) -> None:
        if len(sessions) != layout.workers:
            raise ValueError(f"a layout of {layout.workers} workers needs as many sessions, got {len(sessions)}")
        # The same session may stand in several places: each place is one call that may run at once.
        self.layout = layout
        self.sessions = list(sessions)
        self._free: queue.SimpleQueue[Session] = queue.SimpleQueue()
        for session in self.sessions:
            self._free.put(session)

    @classmethod
    def build(cls, layout: Layout, backend: Backend, path: Path, first: Session | None = None) -> SessionPool:
        """Open the layout's sessions with ``backend`` (see :meth:`Backend.open_workers`); ``first``, a session of
        ``layout.threads_per_worker`` threads already open, may be reused."""
        return cls(layout, backend.open_workers(path, layout, first))

    def run(self, pixel_values: np.ndarray) -> np.ndarray:
        session = self._free.get()
        try:
            return session.run(pixel_values)
        finally:
            self._free.put(session)


def ordered_pipeline(
    chunks: Iterable[Chunk],
    decode: Callable[[Chunk], Decoded],
    classify: Callable[[Chunk, Decoded], Result],
    workers: int,
    decoders: int,
    ahead: int,
) -> Generator[Result, None, None]:
    """``classify(chunk, decode(chunk))`` for every chunk, up to ``workers`` at once, yielded in input order.

    Decoding runs on its own ``decoders`` threads, so a worker never waits for Pillow while others compute; at
    most ``workers + ahead`` chunks are in flight, which bounds memory whatever the input's length. An exception
    from either stage is raised when the stream reaches its chunk. Closing the generator cancels what hasn't
    started and waits for the batches that are running, so no work outlives the caller's loop.
    """
    decoding = ThreadPoolExecutor(decoders, thread_name_prefix="fastvit-decode")
    modelling = ThreadPoolExecutor(workers, thread_name_prefix="fastvit-model")
    pending: deque[Future[Result]] = deque()

    def decoded_then_classified(chunk: Chunk, decoded: Future[Decoded]) -> Result:
        return classify(chunk, decoded.result())

    try:
        for chunk in chunks:
            pending.append(modelling.submit(decoded_then_classified, chunk, decoding.submit(decode, chunk)))
            if len(pending) >= workers + ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()
        # Model threads waiting on a cancelled decode get CancelledError and end; running batches finish.
        decoding.shutdown(wait=False, cancel_futures=True)
        modelling.shutdown(wait=True, cancel_futures=True)
        decoding.shutdown(wait=True)



# --- calibration --------------------------------------------------------------------------------------------

CALIBRATION_BATCH = 8
CALIBRATION_SECONDS = 1.5  # per layout and round: long enough for every worker to finish a few batches


def measure_layout(layout: Layout, backend: Backend, path: Path, image_size: tuple[int, int],
                   seconds: float = CALIBRATION_SECONDS) -> float:
    """Images per second (model only) of ``layout``'s workers running batches at once for about ``seconds``."""
    pool = SessionPool.build(layout, backend, path)
    pixels = np.random.default_rng(0).standard_normal((CALIBRATION_BATCH, 3, *image_size)).astype(np.float32)
    done = [0] * layout.workers

    def work(index: int, deadline: float) -> None:
        session = pool.sessions[index]
        while True:
            session.run(pixels)
            done[index] += 1
            if time.perf_counter() >= deadline:
                return

    with ThreadPoolExecutor(layout.workers, thread_name_prefix="fastvit-calibrate") as runners:
        list(runners.map(lambda index: session_warm_up(pool.sessions[index], pixels), range(layout.workers)))
        started = time.perf_counter()
        list(runners.map(work, range(layout.workers), [started + seconds] * layout.workers))
        elapsed = time.perf_counter() - started
    return sum(done) * CALIBRATION_BATCH / elapsed


def session_warm_up(session: Session, pixels: np.ndarray) -> None:
    session.run(pixels)  # the first call allocates buffers and picks kernels


def calibrate_layout(model_path: str | os.PathLike[str], model_sha256: str, cores: int | None = None,
                     backend: Backend | None = None, cache_directory: Path | None = None,
                     rounds: int = 2) -> tuple[Layout, dict[str, float], Path]:
    """Time every candidate layout for ``cores`` (default: this process's physical cores) on this graph, opened
    by ``backend`` (default onnxruntime's) with its options, and cache the fastest for this machine, runtime and
    model; returns it, the figures and the cache file."""
    cores = cores or physical_core_count()
    backend = backend or OnnxRuntimeBackend()
    cache = backend.layout_cache(model_sha256, cache_directory)
    check_cache_writable(cache.parent)  # before the timing: finding out afterwards wastes it
    path = Path(model_path)
    probe = backend.open(path, 1)
    height, width = (axis if isinstance(axis, int) and axis > 0 else 224 for axis in probe.signature.input_shape[2:4])
    del probe
    best, figures = calibrate(lambda layout: measure_layout(layout, backend, path, (height, width)),
                              candidate_layouts(cores), rounds=rounds)
    write_calibration(cache, best, figures)
    return best, figures, cache
