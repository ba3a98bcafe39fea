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
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from . import __version__
from .detector import Detector, ImageResult, Prediction
from .errors import (
    BadRequestError,
    FastVitDetectError,
    ImageDecodeError,
    ImageTooLargeError,
    InvalidOptionError,
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
from .options import check_finite, check_whole
from .preprocess import DECODE_COST, OpenedImage, check_formats, describe_source, open_image, server_formats
from .session import physical_core_count

if TYPE_CHECKING:
    from .videoserve import VideoServeSettings

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

    # (name, low, high, whole number?) — every numeric option is finite and in range: inf, nan, 1e300 and
    # negative values are an operator's mistake, refused before anything starts.
    LIMITS = (("max_upload_bytes", 1, 1 << 32, True), ("max_batch", 1, 4096, True), ("max_wait_ms", 0, 10_000, False),
              ("queue_size", 1, 100_000, True), ("max_pixels", 1, 1 << 32, True), ("decode_workers", 1, 256, True),
              ("decode_stall_s", 0.01, 86_400, False),
              ("max_connections", 1, 1_000_000, True), ("header_timeout_s", 0.1, 3600, False),
              ("body_timeout_s", 0.1, 3600, False), ("keep_alive_s", 0.1, 3600, False),
              ("explain_concurrency", 1, 256, True), ("explain_queue", 0, 100_000, True),
              ("explain_max_passes", 2, 1_000_000, True), ("explain_yield_s", 0, 3600, False))

    def __post_init__(self) -> None:
        for name, low, high, whole in self.LIMITS:
            _check_range(name, getattr(self, name), low, high, whole)
        if self.decode_budget_pixels is not None:
            _check_range("decode_budget_pixels", self.decode_budget_pixels, self.max_pixels, 1 << 34, True)
        object.__setattr__(self, "formats", check_formats(self.formats))  # upper case, known to Pillow

    @property
    def budget_pixels(self) -> int:
        return self.decode_budget_pixels or self.max_pixels * 3 // 2


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

    async def decode_with(self, upload: io.BytesIO, convert: Callable[[OpenedImage], Decoded]) -> tuple[Decoded, str]:
        """``convert(opened)`` on a decode thread, under the caps and within the pixel budget, and the upload's
        name: the one way an upload is decoded, for a prediction (:meth:`decode`) or an explanation."""
        if self.watch.all_stalled():  # queued behind them, it would wait for as long as they run
            raise ServerBusyError(f"every decode thread ({self.watch.threads}) has been busy on one image for over "
                                  f"{self.watch.stall_s:g} s; retry later")
        loop = asyncio.get_running_loop()
        source = describe_source(upload)
        opened = await loop.run_in_executor(self.pool, self.watch.run, source, open_upload, upload, self.settings)
        cost = opened.cost
        await self.budget.acquire(cost)
        try:
            work = loop.run_in_executor(self.pool, self.watch.run, source, convert, opened)
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


def prediction_body(prediction: Prediction, model: dict[str, Any], elapsed_ms: float) -> dict[str, Any]:
    return {"label": prediction.label, "score": prediction.score, "probabilities": dict(prediction.probabilities),
            "fake_probability": prediction.fake_probability, "model": model, "elapsed_ms": round(elapsed_ms, 2)}


PREDICT_REQUEST_DOCS = {"requestBody": {"required": True, "content": {
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
        (413, "body over the upload limit, or an image over the pixel cap",
         error_body(UploadTooLargeError("request body exceeds the upload limit of 20,971,520 bytes"))),
        (415, "not an image that can be decoded",
         error_body(ImageDecodeError("x.jpg: not a recognised image format"))),
        (422, "missing field, malformed body, empty image, an explain parameter out of range",
         error_body(BadRequestError("multipart field 'file' is missing"))),
        (500, "the server failed (not the request)", INTERNAL_ERROR),
        (503, "inference queue full, or the inference worker stopped: retry later",
         error_body(ServerBusyError("inference queue full; retry later"))),
    ]
}


# --- the application ----------------------------------------------------------------------------------------


def create_app(detector: Detector, settings: ServeSettings | None = None,
               video_settings: VideoServeSettings | None = None) -> FastAPI:
    """The ASGI app over a loaded detector. Its decode pool and model thread start now and stop with the app.
    ``video_settings``: the limits of ``POST /api/v1/video`` (:mod:`fastvit_detect.videoserve`)."""
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
    from .videoserve import VideoStage, add_video_route  # builds on this module (issue 24)

    videos = VideoStage(detector, video_settings)

    async def lifespan(_app: FastAPI):
        yield
        await asyncio.to_thread(batcher.close)
        decoder.close()
        explainer.close()
        videos.close()

    app = FastAPI(title="fastvit-detect", version=__version__, docs_url=None, redoc_url=None, lifespan=lifespan,
                  description="Torch-free deepfake detection with ONNX Vision Transformers.")
    app.state.detector, app.state.batcher, app.state.decoder, app.state.settings = detector, batcher, decoder, settings
    app.state.explainer = explainer
    app.state.videos = videos
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

    @app.post("/predict/", openapi_extra=SEED_REQUEST_DOCS, responses=ERROR_DOCS,
              summary="The seed project's API: {\"image\": base64} -> {\"result\": label}")
    async def predict_base64(request: Request) -> JSONResponse:
        body = await read_body(request, seed_body_limit(settings.max_upload_bytes), settings.body_timeout_s,
                               f" (an image of {settings.max_upload_bytes:,} bytes, base64-encoded in JSON)")
        (result,) = await classify([seed_request_image(body, settings.max_upload_bytes)])
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

    add_video_route(app, videos, settings, model)

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
                "explanations_in_progress": explainer.admitted, "explanations": explainer.explained}
        if stalled:
            body["reason"] = (f"every decode thread ({decoding['decode_threads']}) has been busy on one image for "
                              f"over {decoding['decode_stall_s']:g} s: new uploads get 503")
        return JSONResponse(body, status_code=200 if status == "ok" else 503)

    @get_and_head("/api/v1/model", summary="The model package's manifest, variant, labels and the serving settings")
    async def model_info() -> dict[str, Any]:
        return {**model, "labels": list(detector.labels), "manifest": detector.package.public_manifest(),
                "serving": asdict(settings), "layout": detector.layout.to_dict(), "runtime": detector.runtime,
                "variant_choice": detector.choice.to_dict()}

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
    video_settings: VideoServeSettings | None = None,
) -> None:
    """Serve a loaded detector with uvicorn until interrupted; on ``sock`` when given (see bind_socket)."""
    settings = settings or ServeSettings()
    sock = sock or bind_socket(host, port)
    app = create_app(detector, settings, video_settings)
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
