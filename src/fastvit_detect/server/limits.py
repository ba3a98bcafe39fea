"""What bounds the server's memory while it decodes: the shared pixel budget, the decode watch that notices a
stalled decode thread, and glibc's mmap threshold so that large frees go back to the OS."""

from __future__ import annotations

import asyncio
import ctypes
import logging
import platform
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

Result = TypeVar("Result")

log = logging.getLogger("fastvit_detect.server")


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
