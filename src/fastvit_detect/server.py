"""Reference HTTP server (the ``serve`` extra): an upload page and a JSON API over one shared :class:`Detector`.

    fastvit-detect serve --model DIR            # or: uvicorn-compatible app from create_app(detector)

Endpoints: ``GET /`` upload page, ``POST /api/v1/predict`` (multipart field ``file``, repeatable, or a raw image
body), ``POST /predict/`` (the seed project's ``{"image": base64}`` -> ``{"result": label}``), ``GET /healthz``,
``GET /api/v1/model`` and ``GET /openapi.json``. FastAPI's /docs and /redoc are off: they load Swagger UI from a
CDN, and nothing this server sends may make the browser fetch from elsewhere.

A request goes through three stages, so that no single client can stall the others:

1. the event loop reads the body, within the upload limit and the body timeout;
2. a bounded pool of decode threads counts the image's scans, segments and metadata (``fastvit_detect.headers``),
   reads its header, opens only the formats of ``formats`` (by default ``SERVER_FORMATS``: photo formats, not
   Pillow's slow pure-Python decoders), checks the server's own pixel cap, waits for room in a shared pixel budget
   (what decodes at once is bounded, so is its memory; a format that costs more memory per pixel, such as WebP,
   counts for more, and so does metadata), then decodes, resizes and crops. A decode thread busy on one image for
   longer than ``decode_stall_s`` shows on ``/healthz``; when all are, ``/healthz`` and new uploads get 503;
3. a model thread per worker of the detector's layout takes up to ``max_batch`` decoded images, waiting at most
   ``max_wait_ms`` after the first, and classifies them in one call of its own session; with several workers,
   concurrent requests run in parallel batches. Should a call fail, each image is retried alone, so only the
   image that breaks the model gets the error. The queue is bounded: a request that doesn't fit gets 503 at once.

``POST /api/v1/predict?faces=1`` finds the faces first: the image is decoded and its faces detected on a face
stage of its own (:class:`FaceStage`: its own bounded threads, at a lower priority, within the same pixel budget),
and each face's crop goes through stage 3 as an image of its own.

Each model thread is supervised: if it ever dies it is restarted and ``/healthz`` counts it; a thread that keeps
dying makes ``/healthz`` answer 503 and requests get 503 at once, never a hang. Connections are capped and timed
out: headers must arrive within ``header_timeout_s``, the body within ``body_timeout_s``.
"""

from __future__ import annotations

import asyncio
import base64
import ctypes
import io
import logging
import math
import os
import platform
import queue
import re
import socket
import threading
import time
from collections import deque
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Generic, TypeVar

from PIL import Image

from . import __version__
from .detector import Detector, FacesResult, ImageResult, Prediction, face_fields
from .errors import (
    BadRequestError,
    FastVitDetectError,
    ImageDecodeError,
    ImageTooLargeError,
    InvalidOptionError,
    MissingFaceDetectorError,
    ModelOutputError,
    RequestTimeoutError,
    ServerBusyError,
    UploadTooLargeError,
)
from .explain import (
    BASELINES,
    DEFAULT_METHOD,
    DEFAULT_TARGET,
    METHODS,
    Explanation,
    PreparedImage,
    Target,
    colour_stops,
    explain_prepared,
    model_passes,
    prepare_opened,
    resolve_options,
)
from .faces import (
    DEFAULT_MARGIN,
    DEFAULT_MAX_SIDE,
    DEFAULT_MIN_FACE_SIZE,
    MAX_MAX_FACES,
    MAX_MAX_SIDE,
    MIN_MAX_SIDE,
    Face,
    FaceOptions,
    expects_faces,
    face_crop,
)
from .httpapi import (
    INTERNAL_ERROR,
    SERVER_MAX_PIXELS,
    error_body,
    http_status,
    missing_serve_modules,
    named_image,
    seed_body_limit,
    seed_request_image,
)
from .media import (
    DECODE_COST,
    OpenedImage,
    check_formats,
    decode_opened,
    describe_source,
    open_image,
    server_formats,
)
from .options import check_finite, check_whole
from .session import physical_core_count

try:
    import python_multipart  # noqa: F401 - Starlette parses forms with it; fail here, not at the first upload
    import uvicorn
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, JSONResponse, Response
    from starlette.datastructures import QueryParams, UploadFile
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.formparsers import MultiPartException, MultiPartParser
    from starlette.requests import ClientDisconnect
    from starlette.staticfiles import StaticFiles
    from uvicorn.protocols.http.h11_impl import H11Protocol
except ModuleNotFoundError as exc:
    missing = missing_serve_modules() or [str(exc.name)]
    raise ModuleNotFoundError(
        f"fastvit_detect.server needs FastAPI, uvicorn and python-multipart ({', '.join(map(str, missing))} "
        "missing): pip install 'fastvit-detect[serve]'",
        name=exc.name,
    ) from exc

log = logging.getLogger("fastvit_detect.server")

STATIC_PACKAGE = ("fastvit_detect", "static")
# The page may load only what this server sends: no CDN, no fonts, no analytics.
PAGE_SECURITY_POLICY = "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; base-uri 'none'"

# --- settings -----------------------------------------------------------------------------------------------


def _check_range(name: str, value: Any, low: float, high: float, whole: bool) -> None:
    if whole:
        check_whole(name, value, int(low), int(high))
    else:
        check_finite(name, value, low, high)


@dataclass(frozen=True)
class ServeSettings:
    """Request limits, decoding, micro-batching and connection handling. ``max_batch=1`` turns batching off."""

    max_upload_bytes: int = 20 * 1024 * 1024
    max_batch: int = 8
    max_wait_ms: float = 5.0
    queue_size: int = 64  # images waiting for the model; more get 503. Also the most files one request may send
    max_pixels: int = SERVER_MAX_PIXELS  # per image, checked from the header before decoding, x DECODE_COST
    decode_workers: int = field(default_factory=lambda: max(2, physical_core_count()))
    decode_budget_pixels: int | None = None  # pixels decoding at once; None: 1.5 x max_pixels
    decode_stall_s: float = 30.0  # a decode thread busy on one image longer than this is stalled (see /healthz)
    max_connections: int = 128  # more are answered 503 at once by uvicorn
    header_timeout_s: float = 10.0  # a request's headers must be complete this long after its first byte
    body_timeout_s: float = 60.0  # the whole body must arrive within this
    keep_alive_s: float = 5.0  # an idle kept-alive connection is closed after this
    explain_concurrency: int = 1  # explanations computed at once, each on its own thread, off the model thread
    explain_queue: int = 2  # explanations that may wait for a free slot; more get 503 at once
    explain_max_passes: int = 49  # the most model passes one explanation may ask for (grid**2 or samples, + 1)
    explain_yield_s: float = 1.0  # the longest an explanation's pass waits for predictions to leave the model
    formats: tuple[str, ...] | None = field(default_factory=server_formats)  # None: all Pillow opens but EPS
    # Faces first (?faces=1): each face's crop takes a place in the inference queue, so the answer holds at most
    # min(faces_max_per_image, queue_size) faces; detection runs on faces_concurrency threads of its own.
    faces_max_per_image: int = 32  # the most faces one image's answer holds (a request's max_faces up to this)
    faces_detect_side: int = DEFAULT_MAX_SIDE  # faces are detected on a copy whose long side is at most this
    faces_concurrency: int = 1  # images in face detection at once, each on its own thread, at a lower priority
    faces_queue: int = 4  # images that may wait for face detection; more get 503 at once

    # (name, low, high, whole number?) — every numeric option is finite and in range: inf, nan, 1e300 and
    # negative values are an operator's mistake, refused before anything starts.
    LIMITS = (("max_upload_bytes", 1, 1 << 32, True), ("max_batch", 1, 4096, True), ("max_wait_ms", 0, 10_000, False),
              ("queue_size", 1, 100_000, True), ("max_pixels", 1, 1 << 32, True), ("decode_workers", 1, 256, True),
              ("decode_stall_s", 0.01, 86_400, False),
              ("max_connections", 1, 1_000_000, True), ("header_timeout_s", 0.1, 3600, False),
              ("body_timeout_s", 0.1, 3600, False), ("keep_alive_s", 0.1, 3600, False),
              ("explain_concurrency", 1, 256, True), ("explain_queue", 0, 100_000, True),
              ("explain_max_passes", 2, 1_000_000, True), ("explain_yield_s", 0, 3600, False),
              ("faces_max_per_image", 1, MAX_MAX_FACES, True),
              ("faces_detect_side", MIN_MAX_SIDE, MAX_MAX_SIDE, True), ("faces_concurrency", 1, 256, True),
              ("faces_queue", 0, 100_000, True))

    def __post_init__(self) -> None:
        for name, low, high, whole in self.LIMITS:
            _check_range(name, getattr(self, name), low, high, whole)
        if self.decode_budget_pixels is not None:
            _check_range("decode_budget_pixels", self.decode_budget_pixels, self.max_pixels, 1 << 34, True)
        object.__setattr__(self, "formats", check_formats(self.formats))  # upper case, known to Pillow

    @property
    def budget_pixels(self) -> int:
        return self.decode_budget_pixels or self.max_pixels * 3 // 2

    @property
    def faces_cap(self) -> int:
        """The most faces one image's answer holds: each face's crop takes a place in the inference queue."""
        return min(self.faces_max_per_image, self.queue_size)


def open_upload(upload: io.BytesIO, settings: ServeSettings) -> OpenedImage:
    """An upload's header read and held to the server's caps: bytes, formats, and pixels weighted by what its
    format costs to decode (``DECODE_COST``: a WebP pixel counts twice), so the decode budget counts memory."""
    opened = open_image(upload, settings.max_pixels, settings.max_upload_bytes, settings.formats)
    if opened.cost > settings.max_pixels:
        image = opened.image
        metadata = f" + {opened.metadata_bytes:,} bytes of metadata" if opened.metadata_bytes else ""
        message = (f"{opened.source}: a {image.width}x{image.height} {image.format} image costs as much to decode "
                   f"as {opened.cost:,} pixels of a JPEG or PNG ({DECODE_COST.get(str(image.format), 1):g} x "
                   f"{opened.pixels:,}{metadata}), over the cap of {settings.max_pixels:,} (raise max_pixels to "
                   "accept it)")
        image.close()
        raise ImageTooLargeError(message, opened.source)
    return opened


# --- the model thread ---------------------------------------------------------------------------------------

Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass
class _Job(Generic[Item, Result]):
    item: Item
    future: Future[Result]


_STOP = None  # queued by close(): the worker finishes what is before it, then exits
RESTART_LIMIT = 10  # worker deaths within RESTART_WINDOW_S after which it is left dead (and /healthz says so)
RESTART_WINDOW_S = 60.0


class MicroBatcher(Generic[Item, Result]):
    """Runs queued items through ``run_batch`` on ``workers`` threads, in batches of at most ``max_batch``.

    Each worker's batch starts with the oldest queued item and takes whatever else arrives within ``max_wait_ms``;
    with several workers, concurrent requests are classified in parallel batches (one per worker of the detector's
    layout, so each has its session and its cores). A failing batch is retried item by item, so only the item
    that fails gets the error; every worker is supervised on its own.
    """

    def __init__(self, run_batch: Callable[[list[Item]], Sequence[Result]], max_batch: int = 8,
                 max_wait_ms: float = 5.0, queue_size: int = 64, workers: int = 1):
        _check_range("max_batch", max_batch, 1, 4096, True)
        _check_range("queue_size", queue_size, 1, 100_000, True)
        _check_range("max_wait_ms", max_wait_ms, 0, 10_000, False)
        _check_range("workers", workers, 1, 256, True)
        self.run_batch = run_batch
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000
        self.queue_size = queue_size
        self._jobs: queue.Queue[_Job[Item, Result] | None] = queue.Queue(maxsize=queue_size)
        self._submit_lock = threading.Lock()
        self._closed = False
        self._given_up = False  # the worker died too often: set while its thread may still be winding down
        self._suspects: dict[int, list[_Job[Item, Result]]] = {}  # worker index -> jobs to retry alone first
        self._unfinished = 0  # items submitted whose future isn't done: queued, or in a batch being run
        self._idle = threading.Condition()
        self.batches_run = 0
        self.images_run = 0
        self.largest_batch = 0
        self.failed_batches = 0
        self.worker_restarts = 0
        self._counts_lock = threading.Lock()
        self._deaths: list[deque[float]] = [deque(maxlen=RESTART_LIMIT) for _ in range(workers)]
        self._workers = [self._start_worker(index) for index in range(workers)]

    def _start_worker(self, index: int) -> threading.Thread:
        worker = threading.Thread(target=self._run, args=(index,), name=f"fastvit-detect-batcher-{index}",
                                  daemon=True)
        worker.start()
        return worker

    @property
    def queue_depth(self) -> int:
        return self._jobs.qsize()

    @property
    def workers(self) -> int:
        return len(self._workers)

    @property
    def workers_alive(self) -> int:
        return sum(worker.is_alive() for worker in self._workers)

    @property
    def healthy(self) -> bool:
        """Every worker running: one left dead by repeated crashes means something is wrong for all of them."""
        return not self._closed and not self._given_up and self.workers_alive == len(self._workers)

    def submit(self, items: Sequence[Item]) -> list[Future[Result]]:
        """Queue items as one unit, all or none, so a multi-file request is never half-queued."""
        with self._submit_lock:  # only submitters add, so free space can't shrink between the check and the puts
            if self._closed:
                raise ServerBusyError("the server is shutting down")
            if self._given_up or self.workers_alive < len(self._workers):
                raise ServerBusyError("an inference worker has stopped (see the server log and /healthz)")
            free = self.queue_size - self._jobs.qsize()
            if len(items) > free:
                raise ServerBusyError(
                    f"inference queue full ({self.queue_size - free} of {self.queue_size} images waiting); retry later"
                )
            jobs: list[_Job[Item, Result]] = [_Job(item, Future()) for item in items]
            with self._idle:
                self._unfinished += len(jobs)
            for job in jobs:
                job.future.add_done_callback(self._finished)  # answered, failed or cancelled: never left counted
                self._jobs.put_nowait(job)
        return [job.future for job in jobs]

    def _finished(self, _future: Future[Result]) -> None:
        with self._idle:
            self._unfinished -= 1
            if not self._unfinished:
                self._idle.notify_all()

    def wait_until_idle(self, timeout: float) -> bool:
        """Block until no submitted item is queued or being run, or ``timeout`` seconds pass; whether it is idle.
        Lower-priority work (an explanation's pass) calls this before it takes a model worker."""
        with self._idle:
            return self._idle.wait_for(lambda: not self._unfinished, timeout)

    async def classify(self, items: Sequence[Item], return_exceptions: bool = False) -> list[Any]:
        """Submit items and await their results, in order; with ``return_exceptions``, an item's failure stands in
        its place instead of being raised. A cancelled caller's queued items are skipped."""
        futures = self.submit(items)
        return list(await asyncio.gather(*(asyncio.wrap_future(future) for future in futures),
                                         return_exceptions=return_exceptions))

    def close(self, timeout: float = 30.0) -> None:
        """Refuse new work, finish what is queued, stop the worker."""
        with self._submit_lock:
            if self._closed:
                return
            self._closed = True
        deadline = time.monotonic() + timeout
        for worker in self._workers:  # one stop each: a worker takes one, finishes its batch and exits
            if worker.is_alive():
                self._jobs.put(_STOP)  # blocks only while the queue is full, and the workers are draining it
        for worker in self._workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        self._fail_queued(ServerBusyError("the server is shutting down"))

    def _run(self, index: int) -> None:
        batch: list[_Job[Item, Result]] = []
        # Batch-mates of an item that killed this worker's predecessor: each gets a turn alone, before new work.
        suspects = self._suspects.pop(index, [])
        try:
            while suspects:
                batch = [suspects.pop(0)]
                self._classify_alone(batch[0])
            stopping = False
            while not stopping:
                batch, stopping = self._next_batch()
                self._classify(batch)
                batch = []
        except BaseException as exc:  # the worker must never die silently and leave requests hanging
            log.critical("inference worker %d died", index, exc_info=exc)
            # A batch of several: the culprit is unknown, so every image gets another turn, alone, on the
            # restarted worker; an image that kills a worker alone is the culprit and gets the error.
            alone = len(batch) == 1
            culprits = [job for job in batch if alone and not job.future.done()]
            retry = [job for job in (suspects if alone else batch + suspects) if not job.future.done()]
            # Count the death (and give up, if it's one too many) before answering: a client that has its 500
            # must find /healthz and the next request already knowing.
            if not self._restart_after_death(index, retry):
                culprits += retry
            for job in culprits:
                job.future.set_exception(exc if isinstance(exc, Exception) else RuntimeError(repr(exc)))

    def _restart_after_death(self, index: int, retry: list[_Job[Item, Result]]) -> bool:
        """Start worker ``index`` again, handing it ``retry``; False when the batcher is closed or gives up."""
        with self._submit_lock:
            if self._closed:
                return False
            now = time.monotonic()
            deaths = self._deaths[index]
            deaths.append(now)
            if len(deaths) == RESTART_LIMIT and now - deaths[0] < RESTART_WINDOW_S:
                log.critical("inference worker %d died %d times in %.0f s: left stopped; /healthz answers 503",
                             index, RESTART_LIMIT, now - deaths[0])
                self._given_up = True
                self._fail_queued(ServerBusyError("an inference worker has stopped"))
                return False
            self.worker_restarts += 1
            self._suspects[index] = retry
            self._workers[index] = self._start_worker(index)
            return True

    def _fail_queued(self, error: Exception) -> None:
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                return
            if job is not _STOP and job.future.set_running_or_notify_cancel():
                job.future.set_exception(error)

    def _next_batch(self) -> tuple[list[_Job[Item, Result]], bool]:
        """The oldest job and what else arrives within max_wait of it, up to max_batch; and whether to stop."""
        batch: list[_Job[Item, Result]] = []
        deadline: float | None = None  # set by the first job: until then, wait as long as it takes
        while len(batch) < self.max_batch:
            try:
                timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
                job = self._jobs.get(timeout=timeout)
            except queue.Empty:
                break
            if job is _STOP:
                return batch, True
            if job.future.cancelled():  # its caller went away: don't give it a place in the batch
                continue
            if deadline is None:
                deadline = time.monotonic() + self.max_wait
            batch.append(job)
        return batch, False

    def _classify(self, batch: list[_Job[Item, Result]]) -> None:
        live = [job for job in batch if job.future.set_running_or_notify_cancel()]
        if not live:
            return
        try:
            results = list(self.run_batch([job.item for job in live]))
            if len(results) != len(live):
                raise RuntimeError(f"run_batch returned {len(results)} results for {len(live)} items")
        except Exception as exc:
            with self._counts_lock:
                self.failed_batches += 1
            if len(live) > 1:  # find the culprit: the others still get their answers
                log.warning("a batch of %d failed (%s: %s); retrying each image alone", len(live),
                            type(exc).__name__, exc)
                for job in live:
                    self._classify_alone(job)
                return
            log.error("inference failed for an image", exc_info=exc)
            live[0].future.set_exception(exc)
            return
        self._count(len(live))
        for job, result in zip(live, results):
            job.future.set_result(result)

    def _classify_alone(self, job: _Job[Item, Result]) -> None:
        if not job.future.running() and not job.future.set_running_or_notify_cancel():
            return  # cancelled while it waited (a retried suspect is already running)
        try:
            (result,) = self.run_batch([job.item])
        except Exception as exc:
            log.error("inference failed for an image", exc_info=exc)
            job.future.set_exception(exc)
            return
        self._count(1)
        job.future.set_result(result)

    def _count(self, images: int) -> None:
        with self._counts_lock:  # several workers count at once
            self.batches_run += 1
            self.images_run += images
            self.largest_batch = max(self.largest_batch, images)


# --- the decode stage ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DecodedImage:
    """An upload decoded, resized and cropped: what the model thread needs, and a name for errors."""

    pixels: Any  # HxWx3 uint8
    source: str


Decoded = TypeVar("Decoded")


class PixelBudget:
    """How many pixels may be decoding at once, across all requests: a weighted semaphore on the event loop.

    Decoding memory and time grow with the pixel count, so holding it to a budget bounds both, whatever clients
    send. A pixel counts as its format's ``DECODE_COST`` (a WebP pixel as two), so the budget bounds memory. An
    image waits here, not in a decode thread, so waiting bombs never occupy the pool that small images need; an
    image that fits goes ahead of larger ones queued before it.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.in_use = 0
        self._changed: asyncio.Condition | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _condition(self) -> asyncio.Condition:
        loop = asyncio.get_running_loop()
        if self._changed is None or self._loop is not loop:  # asyncio primitives belong to one event loop
            self._changed, self._loop = asyncio.Condition(), loop
        return self._changed

    async def acquire(self, pixels: int) -> None:
        changed = self._condition()
        async with changed:
            await changed.wait_for(lambda: self.in_use + pixels <= self.capacity)
            self.in_use += pixels

    async def release(self, pixels: int) -> None:
        changed = self._condition()
        async with changed:
            self.in_use -= pixels
            changed.notify_all()


MMAP_THRESHOLD_BYTES = 4 << 20
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number


def return_large_frees_to_the_os() -> bool:
    """Make glibc hand every allocation of ``MMAP_THRESHOLD_BYTES`` or more back to the OS when it is freed.

    Pillow allocates a decoded image in blocks of up to 16 MiB. glibc serves the first such blocks with mmap, but
    its dynamic threshold then rises past them, so later ones come from the heap of whichever decode thread asked,
    and each thread's heap keeps what its largest decode ever needed. The pixel budget bounds what decodes at
    once; without this, RSS would still grow towards ``decode_workers`` times the largest image's decode. Fixing
    the threshold turns the dynamic one off. Elsewhere than glibc, nothing to do: returns False.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))


class DecodeWatch:
    """Which decode threads are busy, on which image and since when: the second line behind the header caps.

    Decoding runs in C (libjpeg, libpng, libwebp) and can't be interrupted from Python; the caps on pixels, scans
    and header segments (``fastvit_detect.headers``) bound what one image costs before it starts. Should a decoder
    still run past ``stall_s`` (a slow format at the pixel cap on a loaded machine, or a class of bomb nobody has
    found yet), it shows here: ``/healthz`` reports the stalled threads and answers 503 once every decode thread
    is stalled, new uploads get 503 at once instead of queueing behind them, and the log names each slow image.
    """

    def __init__(self, threads: int, stall_s: float) -> None:
        self.threads, self.stall_s = threads, stall_s
        self._busy: dict[int, tuple[float, str]] = {}  # thread id -> (monotonic start, image name)
        self._lock = threading.Lock()
        self.slow_decodes = 0  # decodes that ended after running longer than stall_s

    def run(self, source: str, work: Callable[..., Result], *args: Any) -> Result:
        """``work(*args)`` on this decode thread, timed and visible while it runs."""
        thread = threading.get_ident()
        started = time.monotonic()
        with self._lock:
            self._busy[thread] = (started, source)
        try:
            return work(*args)
        finally:
            elapsed = time.monotonic() - started
            with self._lock:
                del self._busy[thread]
                if elapsed > self.stall_s:
                    self.slow_decodes += 1
            if elapsed > self.stall_s:
                log.warning("decoding %s held a decode thread for %.1f s (stall threshold %g s)", source, elapsed,
                            self.stall_s)

    def busy(self) -> list[float]:
        """How long each busy decode thread has been on its current image, in seconds, longest first."""
        now = time.monotonic()
        with self._lock:
            return sorted((now - started for started, _source in self._busy.values()), reverse=True)

    def stalled(self) -> int:
        return sum(seconds > self.stall_s for seconds in self.busy())

    def all_stalled(self) -> bool:
        return self.stalled() >= self.threads

    def report(self) -> dict[str, Any]:
        """``/healthz``'s decode fields."""
        busy = self.busy()
        stalled = sum(seconds > self.stall_s for seconds in busy)
        return {"decode_threads": self.threads, "decode_threads_busy": len(busy), "decode_threads_stalled": stalled,
                "longest_decode_s": round(busy[0], 3) if busy else 0.0, "slow_decodes": self.slow_decodes,
                "decode_stall_s": self.stall_s}


class DecodeStage:
    """Decodes uploads in a bounded thread pool, under the server's caps and pixel budget."""

    def __init__(self, detector: Detector, settings: ServeSettings) -> None:
        return_large_frees_to_the_os()
        self.preprocessor = detector.preprocessor
        self.settings = settings
        self.budget = PixelBudget(settings.budget_pixels)
        self.pool = ThreadPoolExecutor(settings.decode_workers, thread_name_prefix="fastvit-decode")
        self.watch = DecodeWatch(settings.decode_workers, settings.decode_stall_s)

    async def decode(self, upload: io.BytesIO) -> DecodedImage:
        """Raises the image's InputError; never blocks the event loop, never runs on the model thread."""
        pixels, source = await self.decode_with(upload, self.preprocessor.opened_to_pixels)
        return DecodedImage(pixels, source)

    async def decode_with(self, upload: io.BytesIO, convert: Callable[[OpenedImage], Decoded],
                          pool: ThreadPoolExecutor | None = None, watch: DecodeWatch | None = None
                          ) -> tuple[Decoded, str]:
        """``convert(opened)`` on a decode thread, under the caps and within the pixel budget, and the upload's
        name: the one way an upload is decoded, for a prediction (:meth:`decode`), an explanation or faces. A
        stage whose conversion costs more than decoding (face detection) runs it on its own ``pool``, timed by
        its own ``watch``: the header is still read here, and the budget still holds the decoded pixels."""
        if self.watch.all_stalled():  # queued behind them, it would wait for as long as they run
            raise ServerBusyError(f"every decode thread ({self.watch.threads}) has been busy on one image for over "
                                  f"{self.watch.stall_s:g} s; retry later")
        loop = asyncio.get_running_loop()
        source = describe_source(upload)
        opened = await loop.run_in_executor(self.pool, self.watch.run, source, open_upload, upload, self.settings)
        cost = opened.cost
        await self.budget.acquire(cost)
        try:
            work = loop.run_in_executor(pool or self.pool, (watch or self.watch).run, source, convert, opened)
        except BaseException:
            await self.budget.release(cost)
            raise
        # The budget is returned when the decode ends, not when its request does: a client that disconnects
        # mid-decode must not free room that its decode still uses.
        work.add_done_callback(lambda _done: loop.create_task(self.budget.release(cost)))
        return await asyncio.shield(work), opened.source

    async def decode_all(self, uploads: Sequence[io.BytesIO]) -> list[DecodedImage | FastVitDetectError]:
        """Every upload decoded; a bad one becomes its error in place, never failing the others."""
        results = await asyncio.gather(*(self.decode(upload) for upload in uploads), return_exceptions=True)
        for result in results:  # anything but an image's own error is the server's fault: raise it
            if isinstance(result, BaseException) and not isinstance(result, FastVitDetectError):
                raise result
        return list(results)  # type: ignore[arg-type]

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def classify_decoded(detector: Detector) -> Callable[[list[DecodedImage]], list[ImageResult]]:
    """The model thread's work: one session call for a batch of decoded images (errors stay per image)."""
    import numpy as np

    def run(items: list[DecodedImage]) -> list[ImageResult]:
        return detector.classify_pixels(np.stack([item.pixels for item in items]),
                                        sources=[item.source for item in items])

    return run


# --- explanations -------------------------------------------------------------------------------------------

ExplainResult = tuple[Explanation, dict[str, Any]]  # the explanation and its answer's heat map
EXPLAIN_SLICE_IMAGES = 1  # masked copies per model call: a prediction arriving meanwhile waits for one at most
EXPLAIN_PREVIEW_SIDE = 1024  # the upright picture an explanation keeps after decoding (overlay()'s default size)
EXPLAIN_NICENESS = 10  # added to the explain threads' nice value: the CPU goes to predictions' threads first


def lower_thread_priority(increment: int = EXPLAIN_NICENESS) -> bool:
    """Raise the calling thread's nice value by ``increment``, so that the kernel runs other threads first when
    they compete for a core. Linux only, where a thread has a nice value of its own (elsewhere setpriority
    would lower the whole process): returns False and does nothing there, or where it isn't allowed."""
    if platform.system() != "Linux":
        return False
    try:
        thread = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, thread, min(19, os.getpriority(os.PRIO_PROCESS, thread) + increment))
    except OSError:
        return False
    return True


class ExplainStage:
    """Explanations under their own limits, behind predictions.

    One explanation runs dozens of model passes: queued on the model thread it would make every prediction
    behind it wait. Here at most ``explain_concurrency`` run at once, each on its own thread, and at most
    ``explain_queue`` more wait; the next gets 503 at once. An explanation's upload is opened and decoded by the
    decode stage, under the server's caps and within the same pixel budget as predictions, so what decodes at
    once stays bounded whatever the mix; only the model input and a preview outlive the decode. Its passes run
    in slices of ``EXPLAIN_SLICE_IMAGES`` on a worker of the detector's layout (never on extra threads), and each
    slice first waits until no prediction is queued or running (at most ``explain_yield_s``, so explanations
    still advance under a load that never pauses). The explain threads run at a lower CPU priority where the OS
    allows it per thread, for what they compute around the passes.
    """

    def __init__(self, detector: Detector, settings: ServeSettings, decoder: DecodeStage,
                 batcher: MicroBatcher[Any, Any]) -> None:
        self.detector = detector
        self.settings = settings
        self.labels = detector.labels
        self.decoder = decoder
        self.batcher = batcher
        self.pool = ThreadPoolExecutor(settings.explain_concurrency, thread_name_prefix="fastvit-explain",
                                       initializer=lower_thread_priority)
        self.capacity = settings.explain_concurrency + settings.explain_queue
        self.admitted = 0  # running or waiting; only the event loop changes it
        self.explained = 0
        self.passes_waited = 0  # slices that found predictions at the model and waited for them
        self.passes_forced = 0  # slices that ran after explain_yield_s although predictions were still there
        self._counts_lock = threading.Lock()  # explain threads count at once

    def check(self, method: str, target: str, options: dict[str, Any]) -> None:
        """Refuse what this server won't compute, and refuse while busy, before the upload is read."""
        Target.resolve(target, self.labels, predicted=self.labels[0])
        passes = model_passes(method, options)
        if passes > self.settings.explain_max_passes:
            raise InvalidOptionError(f"this explanation takes {passes} model passes; this server allows at most "
                                     f"{self.settings.explain_max_passes} (explain_max_passes: use a smaller grid "
                                     "or fewer samples)")
        self.check_room()

    def model_pass(self, inputs: Any) -> Any:
        """One slice of an explanation's passes: after the predictions at the model, on a worker of the layout."""
        if not self.batcher.wait_until_idle(0):
            idle = self.batcher.wait_until_idle(self.settings.explain_yield_s)
            with self._counts_lock:
                self.passes_waited += 1
                self.passes_forced += not idle
        return self.run_model(inputs)

    def run_model(self, inputs: Any) -> Any:
        return self.detector.pool.run(inputs)

    def compute(self, prepared: PreparedImage, method: str, target: str, options: dict[str, Any]) -> ExplainResult:
        """On an explain thread: the explanation, and its heat layer and grid (PNG encoding stays off the loop)."""
        explanation = explain_prepared(self.detector, prepared, method, target, EXPLAIN_SLICE_IMAGES,
                                       run=self.model_pass, **options)
        return explanation, heatmap_body(explanation)

    def check_room(self) -> None:
        if self.admitted >= self.capacity:
            raise ServerBusyError(f"explanations are busy ({self.admitted} running or waiting); retry later")

    async def explain(self, upload: io.BytesIO, method: str, target: str, options: dict[str, Any]) -> ExplainResult:
        self.check_room()  # again: others may have been admitted while this upload was read
        self.admitted += 1
        work = asyncio.ensure_future(self._explain(upload, method, target, options))

        def finished(done: asyncio.Future[ExplainResult]) -> None:
            # Counted until the work itself ends, not its request: a client that leaves mid-explanation must not
            # free a slot that its explanation still occupies.
            self.admitted -= 1
            self.explained += 1
            if not done.cancelled():
                done.exception()  # retrieved: when its client has left, nobody else awaits it

        work.add_done_callback(finished)
        return await asyncio.shield(work)

    async def _explain(self, upload: io.BytesIO, method: str, target: str, options: dict[str, Any]) -> ExplainResult:
        preprocessor = self.detector.preprocessor
        prepared, _source = await self.decoder.decode_with(
            upload, lambda opened: prepare_opened(preprocessor, opened, EXPLAIN_PREVIEW_SIDE))
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, self.compute, prepared, method, target, options)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


EXPLAIN_PARAMETERS = ("method", "target", "grid", "samples", "baseline", "seed")
WHOLE_NUMBER = re.compile(r"[0-9]{1,19}")


def repeated_query_parameters(items: Sequence[tuple[str, str]]) -> list[str]:
    """The names that occur more than once among a query string's (name, value) pairs, in order."""
    seen: set[str] = set()
    repeated: list[str] = []
    for name, _value in items:
        if name in seen and name not in repeated:
            repeated.append(name)
        seen.add(name)
    return repeated


class OneValuePerQueryParameter:
    """ASGI middleware: a query parameter given twice is a 422 naming it, on every endpoint. Starlette keeps a
    repeated parameter's last value, so ``?grid=5&grid=6`` would silently mean ``grid=6``."""

    def __init__(self, app: Callable[..., Any]) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] == "http":
            repeated = repeated_query_parameters(QueryParams(scope.get("query_string", b"")).multi_items())
            if repeated:
                error = InvalidOptionError(f"query parameter(s) {', '.join(map(repr, repeated))[:200]} given more "
                                           "than once; give each at most once")
                await JSONResponse(error_body(error), status_code=http_status(error))(scope, receive, send)
                return
        await self.app(scope, receive, send)


def explain_parameters(query: Mapping[str, str]) -> tuple[str, str, dict[str, Any]]:
    """(method, target, options) from the query string; anything unknown or malformed is a 422."""
    unknown = sorted(set(query) - set(EXPLAIN_PARAMETERS))
    if unknown:
        raise InvalidOptionError(f"unknown query parameter(s) {', '.join(map(repr, unknown))[:200]}; "
                                 f"explain takes {', '.join(EXPLAIN_PARAMETERS)}")
    options: dict[str, Any] = {}
    for key in ("grid", "samples", "seed"):
        if key in query:
            if not WHOLE_NUMBER.fullmatch(query[key]):
                raise InvalidOptionError(f"{key} must be a whole number, got {query[key][:40]!r}")
            options[key] = int(query[key])
    if "baseline" in query:
        options["baseline"] = query["baseline"]
    method = query.get("method", DEFAULT_METHOD)
    resolve_options(method, options)  # unknown methods, out-of-range values: refused before the upload is read
    return method, query.get("target", DEFAULT_TARGET)[:100], options


def heatmap_body(explanation: Explanation) -> dict[str, Any]:
    """The answer's heat map: a PNG layer over the photo's frame, its colour scale and a coarse grid."""
    layer = explanation.layer(EXPLAIN_LAYER_SIDE)
    png = io.BytesIO()
    layer.save(png, format="PNG", optimize=True)
    return {"png": "data:image/png;base64," + base64.b64encode(png.getvalue()).decode("ascii"),
            "width": layer.width, "height": layer.height, "vmax": explanation.colour_scale(),
            "colours": colour_stops(), "grid": explanation.grid(EXPLAIN_GRID_SIDE)}


def explanation_body(explanation: Explanation, heatmap: dict[str, Any], model: dict[str, Any],
                     elapsed_ms: float) -> dict[str, Any]:
    return {**prediction_body(explanation.prediction, model, elapsed_ms),
            "explanation": {**explanation.summary(), "heatmap": heatmap}}


EXPLAIN_LAYER_SIDE = 512  # the heat layer's longer side: the page stretches it over the preview
EXPLAIN_GRID_SIDE = 32


# --- faces first: POST /api/v1/predict?faces=1 ----------------------------------------------------------------

PREDICT_PARAMETERS = ("faces", "margin", "min_face_size", "max_faces", "no_face")
FACE_GEOMETRY_PARAMETERS = PREDICT_PARAMETERS[1:]
FACES_SWITCH = {"1": True, "true": True, "0": False, "false": False}
NO_FACE_POLICIES = ("whole-image", "none")
MAX_CROP_SIDE = 4096  # a face crop larger than this is cut from a reduced copy: see bounded_face_crop


@dataclass(frozen=True)
class FaceRequest:
    """What a predict request with faces asks for: the detection and crop geometry, and what no face means."""

    options: FaceOptions
    no_face: str  # "whole-image" or "none", as Detector.predict_faces takes it


@dataclass(frozen=True)
class FoundFaces:
    """An upload's faces, found on a face thread, and the model-size pixels to classify: each face's crop, or
    the whole image's when no face was found and the request falls back to it (none otherwise)."""

    faces: list[Face]
    pixels: list[Any]  # HxWx3 uint8 each, the model's input size
    width: int  # of the upright original, the boxes' frame
    height: int


def bounded_face_crop(picture: Any, face: Face, margin: float, limit: int = MAX_CROP_SIDE) -> Any:
    """:func:`~fastvit_detect.faces.face_crop`, with memory bounded whatever the box and margin: a crop whose
    side would pass ``limit`` px (a close-up face in a 40 MP photo with margin 4 is a 30,000 px square, 2.7 GB)
    is cut from a copy reduced by a whole factor, to at most ``limit`` px a side; below it, exactly face_crop.
    The classifier sees 224 px either way."""
    x0, y0, x1, y1 = face.box
    side = (1 + margin) * max(x1 - x0, y1 - y0)
    factor = math.ceil(side / limit) if math.isfinite(side) else 1  # face_crop refuses a box that isn't finite
    if factor <= 1:
        return face_crop(picture, face, margin)
    reduced = picture.reduce(factor)
    scale_x, scale_y = reduced.width / picture.width, reduced.height / picture.height
    shrunk = replace(face, box=(x0 * scale_x, y0 * scale_y, x1 * scale_x, y1 * scale_y), landmarks=None)
    return face_crop(reduced, shrunk, margin)


class FaceStage:
    """Face detection for predict requests, where it can't stall anything else.

    Detection costs a second or more of CPU per photo, more than decoding it. It runs on ``faces_concurrency``
    threads of its own, at a lower CPU priority (as explanations), so decode threads stay free for plain
    uploads and predictions get the cores first; ``faces_queue`` more images may wait (on the event loop,
    holding no thread), the next gets 503 at once. Each image is decoded on its face thread, within the decode
    stage's pixel budget, which stays held until its crops are cut: what decodes and detects at once is bounded
    with everything else. Detection runs on a copy of at most ``faces_detect_side`` px and returns at most
    ``faces_cap`` faces (the faces first of all: MTCNN's own stage caps bound a crowd's cost, see
    :mod:`fastvit_detect.faces`); each face's crop then takes a place in the micro-batcher's queue, so a photo of
    many faces is batched with other requests' images, and waits or is refused as that many images would be.
    """

    def __init__(self, detector: Detector, settings: ServeSettings, decoder: DecodeStage,
                 batcher: MicroBatcher[DecodedImage, ImageResult]) -> None:
        self.detector, self.settings, self.decoder, self.batcher = detector, settings, decoder, batcher
        self.expected = expects_faces(detector.package)
        try:
            detector.face_detector  # noqa: B018 - opened and verified now, not during the first request
            self.available = True
        except MissingFaceDetectorError:
            if self.expected:  # every default request would fail: say so before serving
                raise
            self.available = False
        self.pool = ThreadPoolExecutor(settings.faces_concurrency, thread_name_prefix="fastvit-faces",
                                       initializer=lower_thread_priority)
        self.watch = DecodeWatch(settings.faces_concurrency, settings.decode_stall_s)
        self.slots = PixelBudget(settings.faces_concurrency)  # a weighted semaphore: here each image weighs 1
        self.capacity = settings.faces_concurrency + settings.faces_queue
        self.admitted = 0  # images detecting or waiting to; only the event loop changes it
        self.detected = 0

    def request(self, query: Mapping[str, str]) -> FaceRequest | None:
        """The predict request's face parameters, or None for a whole-image prediction. Refuses (422) unknown or
        malformed parameters, and (409) faces from a package without the face detector, before the upload is
        read. Without ``faces``, the package decides: faces when its manifest says the model expects them."""
        unknown = sorted(set(query) - set(PREDICT_PARAMETERS))
        if unknown:
            raise InvalidOptionError(f"unknown query parameter(s) {', '.join(map(repr, unknown))[:200]}; "
                                     f"predict takes {', '.join(PREDICT_PARAMETERS)}")
        wanted = self.expected
        if "faces" in query:
            switch = FACES_SWITCH.get(query["faces"].strip().lower())
            if switch is None:
                raise InvalidOptionError(f"faces must be 1 or 0 (or true, false), got {query['faces'][:40]!r}")
            wanted = switch
        geometry = [name for name in FACE_GEOMETRY_PARAMETERS if name in query]
        if not wanted:
            if geometry:
                raise InvalidOptionError(f"{', '.join(geometry)} only apply to faces: ask with faces=1")
            return None
        if not self.available:
            raise MissingFaceDetectorError(
                f"faces=1: this server's model package ({public_model_name(self.detector)}) has no face detector "
                "(it was exported without --faces); ask with faces=0, or serve a package exported with --faces")
        cap = self.settings.faces_cap
        max_faces = _whole_parameter(query, "max_faces", cap)
        if max_faces > cap:
            raise InvalidOptionError(f"max_faces={max_faces:,}: this server answers with at most {cap} faces per "
                                     f"image (faces_max_per_image, within queue_size)")
        no_face = query.get("no_face", NO_FACE_POLICIES[0])
        if no_face not in NO_FACE_POLICIES:
            raise InvalidOptionError(f"no_face must be one of {', '.join(NO_FACE_POLICIES)}, got {no_face[:40]!r}")
        # FaceOptions holds the bounds the CLI and the library use: one place for them.
        options = FaceOptions(min_face_size=_whole_parameter(query, "min_face_size", DEFAULT_MIN_FACE_SIZE),
                              max_faces=max_faces, max_side=self.settings.faces_detect_side,
                              margin=_number_parameter(query, "margin", DEFAULT_MARGIN))
        return FaceRequest(options, no_face)

    def check_room(self) -> None:
        if self.admitted >= self.capacity:
            raise ServerBusyError(f"face detection is busy ({self.admitted} images detecting or waiting); retry "
                                  "later")
        if self.watch.all_stalled():
            raise ServerBusyError(f"every face detection thread ({self.watch.threads}) has been busy on one image "
                                  f"for over {self.watch.stall_s:g} s; retry later")

    def find(self, opened: OpenedImage, request: FaceRequest) -> FoundFaces:
        """On a face thread: decode the upright original, find its faces, cut and resize their crops."""
        picture = decode_opened(opened)
        try:
            faces = self.detector.face_detector.detect(picture, request.options)
            preprocessor = self.detector.preprocessor
            if faces:
                # Opened as the crops they are, not as uploads: bounded_face_crop bounds their size, and the
                # upload's pixel cap (which a crop with a wide margin may pass) was checked on the upload.
                pixels = [preprocessor.opened_to_pixels(OpenedImage(Image.fromarray(bounded_face_crop(
                    picture, face, request.options.margin)), f"{opened.source} face {number}", owned=True))
                    for number, face in enumerate(faces, start=1)]
            else:
                pixels = [preprocessor.to_pixels(picture)] if request.no_face == "whole-image" else []
            return FoundFaces(faces, pixels, picture.width, picture.height)
        finally:
            picture.close()

    async def predict(self, upload: io.BytesIO, request: FaceRequest) -> tuple[FacesResult, FoundFaces]:
        """One upload's faces and verdicts; raises the image's error (an InputError, or a 503 while busy)."""
        self.check_room()
        self.admitted += 1
        work = asyncio.ensure_future(self._find(upload, request))

        def finished(done: asyncio.Future[tuple[FoundFaces, str]]) -> None:
            # Counted until the detection ends, not its request: a client that leaves mid-detection must not free
            # the place that its detection still occupies.
            self.admitted -= 1
            self.detected += 1
            if not done.cancelled():
                done.exception()  # retrieved: when its client has left, nobody else awaits it

        work.add_done_callback(finished)
        found, source = await asyncio.shield(work)
        numbers = range(1, len(found.faces) + 1) if found.faces else [0]
        items = [DecodedImage(pixels, f"{source} face {number}" if number else source)
                 for pixels, number in zip(found.pixels, numbers)]
        answers = await self.batcher.classify(items, return_exceptions=True) if items else []
        predictions = []
        for item, answer in zip(items, answers):
            result = _model_result(item, answer)
            if not isinstance(result, Prediction):
                raise result  # a crop the model failed on fails its image, as in Detector.predict_faces
            predictions.append(result)
        if found.faces:
            return FacesResult.decide(list(zip(found.faces, predictions)), request.no_face), found
        return FacesResult.decide([], request.no_face, predictions[0] if predictions else None), found

    async def _find(self, upload: io.BytesIO, request: FaceRequest) -> tuple[FoundFaces, str]:
        await self.slots.acquire(1)  # a free face thread first: the pixel budget is taken only when it can decode
        try:
            return await self.decoder.decode_with(upload, lambda opened: self.find(opened, request),
                                                  pool=self.pool, watch=self.watch)
        finally:
            await self.slots.release(1)

    async def predict_all(self, uploads: Sequence[io.BytesIO], request: FaceRequest
                          ) -> list[tuple[FacesResult, FoundFaces] | FastVitDetectError]:
        """Every upload's faces; a bad image becomes its error in place, never failing the others."""
        results = await asyncio.gather(*(self.predict(upload, request) for upload in uploads),
                                       return_exceptions=True)
        for result in results:  # anything but an image's own error is the server's fault: raise it
            if isinstance(result, BaseException) and not isinstance(result, FastVitDetectError):
                raise result
        return list(results)  # type: ignore[arg-type]

    def report(self) -> dict[str, Any]:
        """``/healthz``'s faces fields."""
        threads = self.watch.report()
        return {"available": self.available, "expected": self.expected, "in_progress": self.admitted,
                "detected": self.detected, "threads": threads["decode_threads"],
                "threads_busy": threads["decode_threads_busy"], "threads_stalled": threads["decode_threads_stalled"],
                "longest_detection_s": threads["longest_decode_s"]}

    def summary(self) -> dict[str, Any]:
        """``/api/v1/model``'s faces fields: what a client may ask for."""
        return {"available": self.available, "expected": self.expected, "max_faces": self.settings.faces_cap,
                "detect_side": self.settings.faces_detect_side, "margin": DEFAULT_MARGIN,
                "min_face_size": DEFAULT_MIN_FACE_SIZE, "no_face": list(NO_FACE_POLICIES)}

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def _whole_parameter(query: Mapping[str, str], name: str, default: int) -> int:
    if name not in query:
        return default
    if not WHOLE_NUMBER.fullmatch(query[name]):
        raise InvalidOptionError(f"{name} must be a whole number, got {query[name][:40]!r}")
    return int(query[name])


def _number_parameter(query: Mapping[str, str], name: str, default: float) -> float:
    """A number from the query; NaN and infinities pass through, for FaceOptions to refuse with its range."""
    if name not in query:
        return default
    try:
        return float(query[name]) if len(query[name]) <= 40 else math.nan
    except ValueError:
        raise InvalidOptionError(f"{name} must be a number, got {query[name][:40]!r}") from None


def faces_body(result: FacesResult, found: FoundFaces, request: FaceRequest, model: dict[str, Any],
               elapsed_ms: float) -> dict[str, Any]:
    """A faces answer: the image's verdict (its fields where a plain prediction's are; all None when no face was
    found and none was asked for), which path decided, and each face with its box and verdict."""
    verdict = (prediction_fields(result.prediction) if result.prediction is not None else
               {"label": None, "score": None, "probabilities": None, "fake_probability": None})
    options = request.options
    return {**verdict, "decided_by": result.decided_by, "decisive": result.decisive,
            "image": {"width": found.width, "height": found.height},
            "faces": [{**face_fields(face), **prediction_fields(prediction)} for face, prediction in result.faces],
            "face_options": {"margin": options.margin, "min_face_size": options.min_face_size,
                             "max_faces": options.max_faces, "detect_side": options.max_side,
                             "no_face": request.no_face},
            "model": model, "elapsed_ms": round(elapsed_ms, 2)}


# --- reading requests ---------------------------------------------------------------------------------------


class ClientGone(Exception):
    """The client disconnected before its request was read: nobody is left to answer."""


async def read_body(request: Request, limit: int, timeout_s: float, limit_note: str = "") -> bytes:
    """The request body, refused with 413 as soon as it passes ``limit`` bytes and with 408 when it takes longer
    than ``timeout_s``: never read unbounded, never waited for forever."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise UploadTooLargeError(
            f"request body of {int(declared):,} bytes exceeds the upload limit of {limit:,} bytes{limit_note}")
    chunks, size = [], 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    stream = request.stream().__aiter__()
    try:
        while True:
            try:
                chunk = await asyncio.wait_for(stream.__anext__(), max(0.0, deadline - loop.time()))
            except StopAsyncIteration:
                break
            size += len(chunk)
            if size > limit:
                raise UploadTooLargeError(f"request body exceeds the upload limit of {limit:,} bytes{limit_note}")
            chunks.append(chunk)
    except asyncio.TimeoutError:
        raise RequestTimeoutError(
            f"request body not received within {timeout_s:g} s ({size:,} bytes arrived)") from None
    except ClientDisconnect:
        raise ClientGone() from None
    return b"".join(chunks)


async def read_uploads(request: Request, settings: ServeSettings) -> tuple[list[io.BytesIO], bool]:
    """The images of a predict request, and whether it was multipart with several files (answered with a list)."""
    body = await read_body(request, settings.max_upload_bytes, settings.body_timeout_s)
    if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        if not body:
            raise BadRequestError("no image: send it as multipart field 'file' or as the request body")
        return [named_image(body, "request body")], False

    async def in_memory() -> AsyncGenerator[bytes, None]:  # the body is read already, within the limit
        yield body

    try:
        form = await MultiPartParser(request.headers, in_memory(), max_files=settings.queue_size).parse()
    except MultiPartException as exc:
        raise BadRequestError(f"malformed multipart body: {exc.message}") from exc
    try:
        fields = form.getlist("file")
        if not fields:
            sent = ", ".join(form.keys()) or "none"
            raise BadRequestError(f"multipart field 'file' is missing (fields sent: {sent[:200]})")
        uploads = []
        for index, upload in enumerate(fields):
            if not isinstance(upload, UploadFile):
                raise BadRequestError("multipart field 'file' must be a file upload, not a text value")
            uploads.append(named_image(await upload.read(), _safe_name(upload.filename) or f"file #{index + 1}"))
        return uploads, len(uploads) > 1
    finally:
        await form.close()


def _safe_name(name: str | None) -> str | None:
    """A client's file name as it may appear in answers and logs: printable and short."""
    if not name:
        return None
    cleaned = "".join(character if character.isprintable() else "?" for character in name)
    return cleaned if len(cleaned) <= 200 else cleaned[:197] + "..."


# --- responses ----------------------------------------------------------------------------------------------


def public_model_name(detector: Detector) -> str:
    """A Hub id as is; for a local export only the folder's name: clients needn't learn the server's paths."""
    return detector.package.source_name


def model_summary(detector: Detector) -> dict[str, Any]:
    manifest = detector.package.manifest
    return {"name": public_model_name(detector), "revision": manifest.source.revision if manifest else None,
            "variant": detector.variant.name}


def prediction_fields(prediction: Prediction) -> dict[str, Any]:
    return {"label": prediction.label, "score": prediction.score, "probabilities": dict(prediction.probabilities),
            "fake_probability": prediction.fake_probability}


def prediction_body(prediction: Prediction, model: dict[str, Any], elapsed_ms: float) -> dict[str, Any]:
    return {**prediction_fields(prediction), "model": model, "elapsed_ms": round(elapsed_ms, 2)}


PREDICT_REQUEST_DOCS = {"parameters": [
    {"name": "faces", "in": "query", "schema": {"type": "string", "enum": ["1", "0"]},
     "description": "find the faces first: each face's box and verdict, the image decided by its faces (default: "
                    "as the package's manifest says, see /api/v1/model's faces.expected)"},
    {"name": "margin", "in": "query", "schema": {"type": "number", "minimum": 0, "maximum": 4,
                                                 "default": DEFAULT_MARGIN},
     "description": "faces: a crop's side is (1 + margin) x the face box's longer side"},
    {"name": "min_face_size", "in": "query", "schema": {"type": "integer", "minimum": 12,
                                                        "default": DEFAULT_MIN_FACE_SIZE},
     "description": "faces: the smallest face searched for, in px of the detection copy"},
    {"name": "max_faces", "in": "query", "schema": {"type": "integer", "minimum": 1},
     "description": "faces: at most this many, the most confident (default and limit: /api/v1/model's "
                    "faces.max_faces)"},
    {"name": "no_face", "in": "query", "schema": {"type": "string", "enum": list(NO_FACE_POLICIES)},
     "description": "faces: with no face found, classify the whole image (default) or give no verdict"},
], "requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
        "file": {"type": "array", "items": {"type": "string", "format": "binary"},
                 "description": "one image, or several: several are answered with a list in the same order"}}}},
    "image/*": {"schema": {"type": "string", "format": "binary"}},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
}}}
EXPLAIN_REQUEST_DOCS = {
    "parameters": [
        {"name": "method", "in": "query", "schema": {"type": "string", "enum": list(METHODS),
                                                      "default": DEFAULT_METHOD}},
        {"name": "target", "in": "query", "schema": {"type": "string", "default": DEFAULT_TARGET},
         "description": "a label, 'predicted' (the verdict's) or 'fake'"},
        {"name": "grid", "in": "query", "schema": {"type": "integer", "minimum": 2}},
        {"name": "samples", "in": "query", "schema": {"type": "integer", "minimum": 2},
         "description": "rise only; even"},
        {"name": "baseline", "in": "query", "schema": {"type": "string", "enum": list(BASELINES)}},
        {"name": "seed", "in": "query", "schema": {"type": "integer", "minimum": 0}, "description": "rise only"},
    ],
    "requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
            "file": {"type": "string", "format": "binary"}}}},
        "image/*": {"schema": {"type": "string", "format": "binary"}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    }},
}
SEED_REQUEST_DOCS = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "required": ["image"],
    "properties": {"image": {"type": "string", "description": "base64 image, optionally a data:image/...;base64, URL"}},
}}}}}
ERROR_DOCS: dict[int | str, dict[str, Any]] = {
    status: {"description": description, "content": {"application/json": {"example": example}}}
    for status, description, example in [
        (408, "the request body took longer than the body timeout",
         error_body(RequestTimeoutError("request body not received within 60 s"))),
        (409, "faces=1 asked of a model package without the face detector",
         error_body(MissingFaceDetectorError("faces=1: this server's model package has no face detector"))),
        (413, "body over the upload limit, or an image over the pixel cap",
         error_body(UploadTooLargeError("request body exceeds the upload limit of 20,971,520 bytes"))),
        (415, "not an image that can be decoded",
         error_body(ImageDecodeError("x.jpg: not a recognised image format"))),
        (422, "missing field, malformed body, empty image, a query parameter unknown or out of range",
         error_body(BadRequestError("multipart field 'file' is missing"))),
        (500, "the server failed (not the request)", INTERNAL_ERROR),
        (503, "inference queue full, or the inference worker stopped: retry later",
         error_body(ServerBusyError("inference queue full; retry later"))),
    ]
}


# --- the application ----------------------------------------------------------------------------------------


def create_app(detector: Detector, settings: ServeSettings | None = None) -> FastAPI:
    """The ASGI app over a loaded detector. Its decode pool and model thread start now and stop with the app."""
    settings = settings or ServeSettings()
    detector.pool  # noqa: B018 - the layout's sessions open now, not during the first request
    decoder = DecodeStage(detector, settings)
    batcher: MicroBatcher[DecodedImage, ImageResult] = MicroBatcher(
        classify_decoded(detector), settings.max_batch, settings.max_wait_ms, settings.queue_size,
        workers=detector.layout.workers)
    model = model_summary(detector)
    static = StaticFiles(packages=[STATIC_PACKAGE])
    index_page, found = static.lookup_path("index.html")
    if found is None:
        raise RuntimeError("fastvit_detect/static/index.html is missing: the package was installed without its data")

    explainer = ExplainStage(detector, settings, decoder, batcher)
    faces = FaceStage(detector, settings, decoder, batcher)

    async def lifespan(_app: FastAPI):
        yield
        await asyncio.to_thread(batcher.close)
        decoder.close()
        explainer.close()
        faces.close()

    app = FastAPI(title="fastvit-detect", version=__version__, docs_url=None, redoc_url=None, lifespan=lifespan,
                  description="Torch-free deepfake detection with ONNX Vision Transformers.")
    app.state.detector, app.state.batcher, app.state.decoder, app.state.settings = detector, batcher, decoder, settings
    app.state.explainer, app.state.faces = explainer, faces
    app.mount("/static", static, name="static")

    @app.exception_handler(Exception)
    async def server_error(_request: Request, _exc: Exception) -> JSONResponse:
        # Not the client's fault: the log gets the traceback (uvicorn writes it as the exception propagates), the
        # client only learns that it failed.
        return JSONResponse(INTERNAL_ERROR, status_code=500)

    @app.exception_handler(FastVitDetectError)
    async def detector_error(_request: Request, exc: FastVitDetectError) -> JSONResponse:
        status = http_status(exc)
        if status == 500:  # a broken model, say: handled here, so no one else logs it
            log.error("request failed: %s: %s", type(exc).__name__, exc)
            return JSONResponse(INTERNAL_ERROR, status_code=500)
        headers = {"Retry-After": "1"} if status == 503 else {"Connection": "close"} if status == 408 else None
        return JSONResponse(error_body(exc), status_code=status, headers=headers)

    @app.exception_handler(ClientGone)
    async def client_gone(_request: Request, _exc: ClientGone) -> Response:
        return Response(status_code=499)  # nginx's "client closed request": never sent, only logged

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # 404, 405 and the like, in the same {"error": ...} shape as every other failure.
        body = {"error": {"type": "HTTPError", "message": str(exc.detail)}}
        return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(error_body(BadRequestError(str(exc.errors())[:1000])), status_code=422)

    app.add_middleware(OneValuePerQueryParameter)  # added before log_request, so it runs inside: refusals are logged

    @app.middleware("http")
    async def log_request(request: Request, call_next):
        started = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            client = f"{request.client.host}:{request.client.port}" if request.client else "-"
            log.info('%s "%s %s" %d %.1f ms', client, request.method, request.url.path, status,
                     1000 * (time.perf_counter() - started))

    async def classify(uploads: Sequence[io.BytesIO]) -> list[ImageResult]:
        decoded = await decoder.decode_all(uploads)
        ready = [item for item in decoded if isinstance(item, DecodedImage)]
        answers = iter(await batcher.classify(ready, return_exceptions=True)) if ready else iter(())
        return [_model_result(item, next(answers)) if isinstance(item, DecodedImage) else item for item in decoded]

    def get_and_head(path: str, **options: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """A GET route that answers HEAD too (FastAPI routes don't), documented once."""
        def register(endpoint: Callable[..., Any]) -> Callable[..., Any]:
            app.add_api_route(path, endpoint, methods=["HEAD"], include_in_schema=False)
            return app.get(path, **options)(endpoint)
        return register

    @get_and_head("/", include_in_schema=False)
    async def page() -> Response:
        return FileResponse(index_page, media_type="text/html",
                            headers={"Content-Security-Policy": PAGE_SECURITY_POLICY, "Cache-Control": "no-cache"})

    @app.post("/api/v1/predict", openapi_extra=PREDICT_REQUEST_DOCS, responses=ERROR_DOCS,
              summary="Classify one image (object) or several multipart files (list, in order)")
    async def predict(request: Request) -> JSONResponse:
        started = time.perf_counter()
        face_request = faces.request(request.query_params)
        if face_request is not None:
            faces.check_room()  # before the upload is read; again per image
            return await predict_faces(request, face_request, started)
        uploads, as_list = await read_uploads(request, settings)
        results = await classify(uploads)
        elapsed_ms = 1000 * (time.perf_counter() - started)
        if not as_list:
            (result,) = results
            if not isinstance(result, Prediction):
                raise result
            return JSONResponse(prediction_body(result, model, elapsed_ms))
        return JSONResponse([
            {"filename": upload.name, **(prediction_body(result, model, elapsed_ms) if isinstance(result, Prediction)
                                        else _error_entry(result))}
            for upload, result in zip(uploads, results)
        ])

    async def predict_faces(request: Request, face_request: FaceRequest, started: float) -> JSONResponse:
        uploads, as_list = await read_uploads(request, settings)
        results = await faces.predict_all(uploads, face_request)
        elapsed_ms = 1000 * (time.perf_counter() - started)
        if not as_list:
            (result,) = results
            if isinstance(result, FastVitDetectError):
                raise result
            return JSONResponse(faces_body(*result, face_request, model, elapsed_ms))
        return JSONResponse([
            {"filename": upload.name, **(faces_body(*result, face_request, model, elapsed_ms)
                                        if not isinstance(result, FastVitDetectError) else _error_entry(result))}
            for upload, result in zip(uploads, results)
        ])

    @app.post("/predict/", openapi_extra=SEED_REQUEST_DOCS, responses=ERROR_DOCS,
              summary="The seed project's API: {\"image\": base64} -> {\"result\": label}")
    async def predict_base64(request: Request) -> JSONResponse:
        body = await read_body(request, seed_body_limit(settings.max_upload_bytes), settings.body_timeout_s,
                               f" (an image of {settings.max_upload_bytes:,} bytes, base64-encoded in JSON)")
        image = seed_request_image(body, settings.max_upload_bytes)
        face_request = faces.request({})  # the seed's client sends no options: the package decides, as predict's
        if face_request is not None:
            faces.check_room()
            decided, _found = await faces.predict(image, face_request)
            assert decided.prediction is not None  # no face: the whole image decides, by default
            return JSONResponse({"result": decided.prediction.label})
        (result,) = await classify([image])
        if not isinstance(result, Prediction):
            raise result
        return JSONResponse({"result": result.label})

    @app.post("/api/v1/explain", openapi_extra=EXPLAIN_REQUEST_DOCS, responses=ERROR_DOCS,
              summary="Classify one image and show why: the verdict plus a heat map of the evidence")
    async def explain(request: Request) -> JSONResponse:
        started = time.perf_counter()
        method, target, options = explain_parameters(request.query_params)
        explainer.check(method, target, options)
        uploads, as_list = await read_uploads(request, settings)
        if as_list:
            raise BadRequestError(f"explain takes one image per request, got {len(uploads)} files")
        explanation, heatmap = await explainer.explain(uploads[0], method, target, options)
        return JSONResponse(explanation_body(explanation, heatmap, model, 1000 * (time.perf_counter() - started)))

    @get_and_head("/healthz", summary="Liveness, and the model thread's and decode threads' counters")
    async def healthz() -> JSONResponse:
        alive = batcher.healthy
        decoding = decoder.watch.report()
        stalled = decoding["decode_threads_stalled"] >= decoding["decode_threads"]
        status = "unavailable" if not alive else "stalled" if stalled else "ok"
        body = {"status": status, "worker_alive": alive,
                "workers": batcher.workers, "workers_alive": batcher.workers_alive,
                "layout": detector.layout.to_dict(),
                "worker_restarts": batcher.worker_restarts, "variant": detector.variant.name,
                "runtime": detector.runtime, "variant_choice": detector.choice.to_dict(),
                "queue_depth": batcher.queue_depth, "batches": batcher.batches_run, "images": batcher.images_run,
                "largest_batch": batcher.largest_batch, "failed_batches": batcher.failed_batches,
                "decoding_pixels": decoder.budget.in_use, **decoding,
                "explanations_in_progress": explainer.admitted, "explanations": explainer.explained,
                "faces": faces.report()}
        if stalled:
            body["reason"] = (f"every decode thread ({decoding['decode_threads']}) has been busy on one image for "
                              f"over {decoding['decode_stall_s']:g} s: new uploads get 503")
        return JSONResponse(body, status_code=200 if status == "ok" else 503)

    @get_and_head("/api/v1/model", summary="The model package's manifest, variant, labels and the serving settings")
    async def model_info() -> dict[str, Any]:
        return {**model, "labels": list(detector.labels), "manifest": detector.package.public_manifest(),
                "serving": asdict(settings), "layout": detector.layout.to_dict(), "runtime": detector.runtime,
                "variant_choice": detector.choice.to_dict(), "faces": faces.summary()}

    return app


def _model_result(item: DecodedImage, result: ImageResult | BaseException) -> ImageResult:
    """The model thread's answer for one image. Its failure (already logged there, with the traceback) becomes
    this image's ModelOutputError: a 500 for this image alone, never for the other files of its request."""
    if isinstance(result, FastVitDetectError | Prediction):
        return result
    if isinstance(result, Exception):
        return ModelOutputError(f"{item.source}: inference failed ({type(result).__name__})", item.source)
    raise result  # not a failure of this image's: a cancellation, say


def _error_entry(error: FastVitDetectError) -> dict[str, Any]:
    """A failed image in a list answer: its own error for client faults, the generic one for the server's."""
    if http_status(error) == 500:
        log.error("an image failed: %s: %s", type(error).__name__, error)
        return INTERNAL_ERROR
    return error_body(error)


# --- running it ---------------------------------------------------------------------------------------------


class TimedH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, plus a deadline for a request's headers.

    uvicorn times out idle kept-alive connections but not a client that trickles its headers a byte at a time:
    each such connection would stay open forever. Here the headers of every request must be complete within the
    deadline of the request's first byte, or the connection is closed.
    """

    header_timeout_s = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_deadline: asyncio.TimerHandle | None = None
        self._arm_header_deadline()

    def _arm_header_deadline(self) -> None:
        if getattr(self, "_header_deadline", None) is None:
            self._header_deadline = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def _disarm_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_too_slow(self) -> None:
        self._header_deadline = None
        if self._awaiting_headers():
            log.info("closing a connection whose request headers took over %g s", self.header_timeout_s)
            self.transport.close()

    def _awaiting_headers(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def data_received(self, data: bytes) -> None:
        if self._awaiting_headers():
            self._arm_header_deadline()
        super().data_received(data)
        if not self._awaiting_headers():
            self._disarm_header_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_deadline()
        super().connection_lost(exc)


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening socket, or a FastVitDetectError saying why not: a bad host or a port in use are an operator's
    mistake, to be told plainly before the server starts."""
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise ValueError(f"port must be 0-65535, got {port!r}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        raise FastVitDetectError(f"--host {host!r}: not an address this machine can listen on ({exc})") from exc
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise FastVitDetectError(f"can't listen on {host}:{port}: {exc.strerror or exc}") from exc
    sock.set_inheritable(True)
    return sock


def serve(
    detector: Detector,
    host: str = "127.0.0.1",
    port: int = 8000,
    settings: ServeSettings | None = None,
    log_level: str = "info",
    sock: socket.socket | None = None,
) -> None:
    """Serve a loaded detector with uvicorn until interrupted; on ``sock`` when given (see bind_socket)."""
    settings = settings or ServeSettings()
    sock = sock or bind_socket(host, port)
    app = create_app(detector, settings)
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The effective decode budget, not its "None: 1.5 x max_pixels" default: the operator reads figures here.
    log.info("serving %s (variant %s on %s, labels %s) with %s", public_model_name(detector), detector.variant.name,
             detector.runtime, ", ".join(detector.labels),
             replace(settings, decode_budget_pixels=settings.budget_pixels))
    log.info("variant chosen: %s", detector.choice.describe())

    protocol = type("ConfiguredH11Protocol", (TimedH11Protocol,), {"header_timeout_s": settings.header_timeout_s})
    # access_log off: log_request writes one line per request, with its latency. uvicorn refuses a request once
    # its connections, that request's own included, reach limit_concurrency: max_connections + 1 serves that many.
    config = uvicorn.Config(app, host=host, port=port, http=protocol, access_log=False, log_level=log_level,
                            timeout_keep_alive=math.ceil(settings.keep_alive_s),
                            limit_concurrency=settings.max_connections + 1)
    # uvicorn announces its address only for sockets it binds itself; scripts wait for this line.
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    logging.getLogger("uvicorn.error").info("Uvicorn running on http://%s:%d (Press CTRL+C to quit)", shown, bound_port)
    uvicorn.Server(config).run(sockets=[sock])
