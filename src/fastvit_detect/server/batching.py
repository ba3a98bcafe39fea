"""The model threads: :class:`MicroBatcher` gathers decoded images into batches for each worker's session,
supervises its threads (restarted when they die, within a limit) and bounds its queue."""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from ..errors import (
    ServerBusyError,
)
from .settings import check_range

log = logging.getLogger("fastvit_detect.server")


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
        check_range("max_batch", max_batch, 1, 4096, True)
        check_range("queue_size", queue_size, 1, 100_000, True)
        check_range("max_wait_ms", max_wait_ms, 0, 10_000, False)
        check_range("workers", workers, 1, 256, True)
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
