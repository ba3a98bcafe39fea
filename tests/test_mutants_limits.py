"""Survivors of the automatic mutation run in server/limits.py and server/batching.py.

Where the expected values come from:
- PixelBudget: docs/guides/serving.md (an image that costs the whole budget goes ahead once nothing else is
  decoding; decode_budget_pixels may equal max_pixels).
- return_large_frees_to_the_os: its docstring (glibc on Linux: True, and every allocation of MMAP_THRESHOLD_BYTES
  or more is handed back to the OS when freed); the file system says where an allocation lives (/proc/self/maps).
- DecodeWatch: docs/reliability.md ("busy on one image longer than decode_stall_s"; "slow_decodes: decodes that
  ended after the threshold, each logged with the image's name"), with a fake clock for the boundary.
- MicroBatcher: docs/guides/serving.md and docs/reliability.md (a thread killed too often stays stopped and every
  request gets 503, never a hang), the docstrings of wait_until_idle and close ("finish what is queued, stop the
  worker"), and threads' own is_alive().
"""

from __future__ import annotations

import asyncio
import logging
import platform
import threading

import pytest

from fastvit_detect.errors import ServerBusyError
from fastvit_detect.server import batching, limits
from fastvit_detect.server.batching import MicroBatcher
from fastvit_detect.server.limits import DecodeWatch, PixelBudget, return_large_frees_to_the_os

# --- PixelBudget -------------------------------------------------------------------------------------------------


def test_an_image_costing_exactly_the_whole_budget_is_admitted():
    async def main() -> int:
        budget = PixelBudget(1000)
        await asyncio.wait_for(budget.acquire(1000), timeout=10)
        in_use = budget.in_use
        await budget.release(1000)
        return in_use

    assert asyncio.run(main()) == 1000


# --- return_large_frees_to_the_os --------------------------------------------------------------------------------

GLIBC_LINUX = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


CHILD = """
import ctypes
from fastvit_detect.server.limits import return_large_frees_to_the_os


def mapping_of(address):
    with open("/proc/self/maps") as maps:
        for line in maps:
            start, end = (int(bound, 16) for bound in line.split()[0].split("-"))
            if start <= address < end:
                return line.strip()
    return None


assert return_large_frees_to_the_os()
small = bytearray(7 << 19)  # 3.5 MiB, under the documented 4 MiB: from the heap as before
block = bytearray(9 << 19)  # 4.5 MiB, over it: in the main thread, it too would come from the brk heap
assert "[heap]" in mapping_of(ctypes.addressof((ctypes.c_char * len(small)).from_buffer(small)))
address = ctypes.addressof((ctypes.c_char * len(block)).from_buffer(block))
mapping = mapping_of(address)
assert mapping is not None and "[heap]" not in mapping, mapping  # mmap'd, not carved out of the heap
assert len(mapping.split()) == 5, mapping  # anonymous: no path
del block
assert mapping_of(address) is None  # munmap'd on free: handed back to the OS
"""


def test_it_answers_true_on_glibc_linux_and_false_elsewhere():
    assert return_large_frees_to_the_os() is GLIBC_LINUX


@pytest.mark.skipif(not GLIBC_LINUX, reason="glibc's mmap threshold: Linux with glibc only")
def test_after_it_an_allocation_over_4_mib_is_its_own_mapping_and_unmapped_when_freed():
    """The reliability guide's 4 MiB threshold, at 3.5 and 4.5 MiB. In a fresh process: in this one, earlier tests
    may have left a free heap chunk of that size, which glibc serves before it considers mmap at all."""
    import subprocess
    import sys

    from conftest import child_environment

    done = subprocess.run([sys.executable, "-c", CHILD], env=child_environment(), capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]


# --- DecodeWatch ---------------------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    fake = FakeClock(100.0)
    monkeypatch.setattr(limits.time, "monotonic", fake)
    return fake


def _decode_taking(watch: DecodeWatch, clock: FakeClock, seconds: float, name: str) -> list:
    """Run a fake decode of ``name`` that takes ``seconds`` by the fake clock; what stalled() and report() said at
    its end, while it was still busy."""
    seen = []

    def work():
        clock.now += seconds
        seen.append((watch.stalled(), watch.report()["decode_threads_stalled"], watch.all_stalled()))
        return "decoded"

    assert watch.run(name, work) == "decoded"
    return seen[0]


def test_a_decode_of_exactly_stall_s_is_not_stalled_nor_slow(clock, caplog):
    watch = DecodeWatch(1, 2.0)
    with caplog.at_level(logging.WARNING, logger="fastvit_detect.server"):
        stalled, reported, all_stalled = _decode_taking(watch, clock, 2.0, "exact.png")
    assert (stalled, reported, all_stalled) == (0, 0, False)
    assert watch.slow_decodes == 0
    assert "exact.png" not in caplog.text


def test_a_decode_longer_than_stall_s_is_stalled_counted_and_logged_by_name(clock, caplog):
    watch = DecodeWatch(1, 2.0)
    with caplog.at_level(logging.WARNING, logger="fastvit_detect.server"):
        stalled, reported, all_stalled = _decode_taking(watch, clock, 2.5, "bomb.webp")
    assert (stalled, reported, all_stalled) == (1, 1, True)
    assert watch.slow_decodes == 1
    assert watch.report()["slow_decodes"] == 1
    assert [record.levelno for record in caplog.records if "bomb.webp" in record.getMessage()] == [logging.WARNING]


# --- MicroBatcher ----------------------------------------------------------------------------------------------------


class Killer(BaseException):
    """Not an Exception: it gets past the batch's retry and kills the worker thread, as SystemExit would."""


def test_a_request_arriving_while_a_given_up_worker_winds_down_is_refused(monkeypatch):
    # The last death's culprit is answered from the dying thread, which is still alive then: a request made in
    # that moment (here from the culprit's done-callback, on that thread) must get 503, not a place in a queue that
    # nothing will ever read.
    monkeypatch.setattr(batching, "RESTART_LIMIT", 2)
    last = threading.Event()

    def run_batch(items):
        if items == ["last"]:
            last.wait(30)
        raise Killer()

    batcher = MicroBatcher(run_batch, max_batch=1, max_wait_ms=0, workers=1)
    seen: list = []
    try:
        (first,) = batcher.submit(["first"])
        with pytest.raises(RuntimeError, match="Killer"):  # a BaseException is answered as RuntimeError
            first.result(timeout=30)
        assert batcher.worker_restarts == 1
        (final,) = batcher.submit(["last"])

        def submit_again(_future):
            try:
                seen.append(batcher.submit(["late"]))
            except ServerBusyError as exc:
                seen.append(exc)

        final.add_done_callback(submit_again)
        last.set()
        with pytest.raises(RuntimeError, match="Killer"):  # a BaseException is answered as RuntimeError
            final.result(timeout=30)
        assert len(seen) == 1
        assert isinstance(seen[0], ServerBusyError), "accepted while the worker was giving up"
        with pytest.raises(ServerBusyError):
            batcher.submit(["after"])
    finally:
        batcher.close(timeout=5)


class WaitSignallingCondition(threading.Condition):
    def __init__(self) -> None:
        super().__init__()
        self.waiting = threading.Event()

    def wait(self, timeout=None):
        self.waiting.set()  # set while the lock is held: a notify can only come after the wait below releases it
        return super().wait(timeout)


def test_wait_until_idle_returns_once_the_last_job_finishes_and_not_before():
    release = threading.Event()

    def run_batch(items):
        release.wait(30)
        return items

    batcher = MicroBatcher(run_batch, max_batch=1, max_wait_ms=0, workers=1)
    batcher._idle = WaitSignallingCondition()  # a stand-in that says when the waiter is asleep on it
    try:
        futures = batcher.submit(["a"])
        assert batcher.wait_until_idle(0.05) is False  # still unfinished
        batcher._idle.waiting.clear()
        answers: list[bool] = []
        waiter = threading.Thread(target=lambda: answers.append(batcher.wait_until_idle(3600)), daemon=True)
        waiter.start()
        assert batcher._idle.waiting.wait(30)  # asleep before the jobs finish: only a notify wakes it
        release.set()
        assert [future.result(timeout=30) for future in futures] == ["a"]
        waiter.join(30)  # a notify lost: the waiter would sleep out its hour
        assert answers == [True]
    finally:
        batcher.close(timeout=5)


@pytest.mark.parametrize(("spacing_s", "given_up"), [(6.0, True), (6.7, False)])
def test_a_worker_is_left_stopped_after_10_deaths_within_a_minute_and_not_otherwise(monkeypatch, caplog, spacing_s,
                                                                                   given_up):
    """serving.md: a thread that dies 10 times in a minute is left stopped: what is queued behind it and every
    request after get 503, /healthz says so, and the log says why; deaths further apart are each restarted. Each
    death is logged with its traceback. With the batcher's clock replaced: 10 deaths 6 s apart span 54 s, 6.7 s
    apart 60.3 s."""
    import types

    from fastvit_detect.errors import ServerBusyError

    now = [1000.0]
    monkeypatch.setattr(batching, "time", types.SimpleNamespace(monotonic=lambda: now[0]))
    holding, release = threading.Event(), threading.Event()

    def run_batch(items):
        if items == [9]:  # the last death waits until an image is queued behind it
            holding.set()
            release.wait(30)
        raise Killer()

    batcher = MicroBatcher(run_batch, max_batch=1, max_wait_ms=0)
    caplog.set_level(logging.CRITICAL, logger="fastvit_detect.server")
    try:
        for death in range(10):
            (future,) = batcher.submit([death])
            if death == 9:
                assert holding.wait(30)
                if given_up:
                    (queued,) = batcher.submit(["queued"])
                release.set()
            assert isinstance(future.exception(timeout=10), RuntimeError)  # the killer's own answer: a 500
            now[0] += spacing_s
        assert batcher.worker_restarts == (9 if given_up else 10)
        assert batcher.healthy is not given_up
        if given_up:
            assert isinstance(queued.exception(timeout=10), ServerBusyError)
            with pytest.raises(ServerBusyError, match="an inference worker has stopped"):
                batcher.submit(["later"])
        else:  # restarted each time, and serving: the next death is the 11th, still not in a minute
            (future,) = batcher.submit(["again"])
            assert isinstance(future.exception(timeout=10), RuntimeError) and batcher.worker_restarts == 11
    finally:
        release.set()
        batcher.close(timeout=5)
    deaths = [record for record in caplog.records if record.getMessage() == "inference worker 0 died"]
    assert len(deaths) == (10 if given_up else 11) and all(record.exc_info for record in deaths)
    stopped = [record.getMessage() for record in caplog.records if "left stopped" in record.getMessage()]
    assert stopped == (["inference worker 0 died 10 times in 54 s: left stopped; /healthz answers 503"]
                       if given_up else [])


def test_ten_deaths_exactly_60_s_apart_are_not_under_a_minute(monkeypatch):
    """serving.md: the 1st to 10th death *less than* 60 s apart stop the worker; 60.0 s apart is a minute, not
    under it (the clock replaced: deaths at 0, 1, ..., 8 and 60 s)."""
    import types

    now = [0.0]
    monkeypatch.setattr(batching, "time", types.SimpleNamespace(monotonic=lambda: now[0]))

    def run_batch(items):
        raise Killer()

    batcher = MicroBatcher(run_batch, max_batch=1, max_wait_ms=0)
    try:
        for moment in (0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 60.0):
            now[0] = moment
            (future,) = batcher.submit([moment])
            assert isinstance(future.exception(timeout=10), RuntimeError)
        assert batcher.healthy and batcher.worker_restarts == 10
    finally:
        batcher.close(timeout=5)


def test_a_worker_given_up_answers_every_image_of_the_batch_it_died_in(monkeypatch):
    """When the death that stops the worker came in a batch of several, no restarted thread will retry its
    batch-mates: each is answered (an error), none left waiting forever."""
    monkeypatch.setattr(batching, "RESTART_LIMIT", 1)  # the first death stops it

    def run_batch(items):
        if "killer" in items:
            raise Killer()
        return items

    batcher = MicroBatcher(run_batch, max_batch=2, max_wait_ms=1000)
    try:
        killer, mate = batcher.submit(["killer", "mate"])  # one batch of two
        assert isinstance(killer.exception(timeout=10), RuntimeError)
        assert isinstance(mate.exception(timeout=10), RuntimeError)
        assert not batcher.healthy and batcher.worker_restarts == 0
        assert batcher._restart_after_death(0, []) is False  # another death now: no restart, said plainly
    finally:
        batcher.close(timeout=5)


def test_a_batch_that_kills_its_worker_is_run_again_image_by_image_on_the_new_one():
    """serving.md: the images of the batch a thread died in are run again one at a time on the new thread, so only
    an image that kills a thread on its own gets an error (500); its batch-mate gets its answer."""
    def run_batch(items):
        if "killer" in items:
            raise Killer()
        return [item.upper() for item in items]

    batcher = MicroBatcher(run_batch, max_batch=2, max_wait_ms=1000)
    try:
        killer, mate = batcher.submit(["killer", "mate"])  # one batch of two: which one killed it is unknown
        assert mate.result(timeout=10) == "MATE"
        assert isinstance(killer.exception(timeout=10), RuntimeError)
        assert batcher.worker_restarts == 2 and batcher.healthy  # the batch's death, then the killer's alone
    finally:
        batcher.close(timeout=5)


def test_close_waits_at_most_its_timeout_in_all_however_many_threads_are_stuck(monkeypatch):
    """close(timeout) bounds the whole shutdown, not each thread's: with three stuck threads and the clock moving
    as the joins wait, the first join takes the timeout and the others nothing more."""
    import types

    now = [100.0]
    monkeypatch.setattr(batching, "time", types.SimpleNamespace(monotonic=lambda: now[0]))
    release = threading.Event()
    batcher = MicroBatcher(lambda items: (release.wait(30), items)[1], max_batch=1, max_wait_ms=0, workers=3)
    waits: list[float] = []
    real_join = threading.Thread.join

    def waiting_join(thread, timeout=None):
        if thread in batcher._workers:
            waits.append(timeout)
            now[0] += timeout  # the wait ran out, the thread still stuck
            return None
        return real_join(thread, timeout)

    try:
        futures = batcher.submit(["a", "b", "c"])
        while batcher.queue_depth:  # each thread has taken one and is stuck in it
            threading.Event().wait(0.01)
        with monkeypatch.context() as patch:
            patch.setattr(threading.Thread, "join", waiting_join)
            batcher.close(timeout=2.0)
        assert waits == [2.0, 0.0, 0.0]
    finally:
        release.set()
        assert [future.result(timeout=30) for future in futures] == ["a", "b", "c"]


def test_a_failed_batch_is_retried_image_by_image_and_counted_once(caplog):
    """serving.md: a failing batch is retried image by image, so only the image that fails gets the error (500),
    the others their answers; /healthz counts one failed batch, and the retries that succeeded as batches of one.
    The log warns of the batch and gives each image's failure its traceback."""
    def run_batch(items):
        if "bad" in items:
            raise ValueError("a bad item")
        return [item.upper() for item in items]

    batcher = MicroBatcher(run_batch, max_batch=8, max_wait_ms=500)
    caplog.set_level(logging.WARNING, logger="fastvit_detect.server")
    try:
        good, bad = batcher.submit(["good", "bad"])  # one batch of two
        assert good.result(timeout=10) == "GOOD" and isinstance(bad.exception(timeout=10), ValueError)
        assert (batcher.failed_batches, batcher.batches_run, batcher.images_run, batcher.largest_batch) == (1, 1, 1, 1)
        (alone,) = batcher.submit(["bad"])  # a batch of one fails without a retry
        assert isinstance(alone.exception(timeout=10), ValueError)
        assert (batcher.failed_batches, batcher.batches_run) == (2, 1)
    finally:
        batcher.close(timeout=5)
    logged = [(record.levelno, record.getMessage(), bool(record.exc_info)) for record in caplog.records]
    warned = "a batch of 2 failed (ValueError: a bad item); retrying each image alone"
    assert logged == [(logging.WARNING, warned, False), (logging.ERROR, "inference failed for an image", True),
                      (logging.ERROR, "inference failed for an image", True)]


def test_a_batchers_counters_start_at_zero_and_count_batches_and_images():
    """/healthz's batches, images and largest_batch: nothing before the first batch, then what ran."""
    release = threading.Event()

    def run_batch(items):
        release.wait(30)
        return items

    batcher = MicroBatcher(run_batch, max_batch=8, max_wait_ms=200)
    try:
        assert (batcher.batches_run, batcher.images_run, batcher.largest_batch, batcher.failed_batches,
                batcher.worker_restarts) == (0, 0, 0, 0, 0)
        futures = batcher.submit(["a", "b", "c"])
        release.set()
        assert [future.result(timeout=10) for future in futures] == ["a", "b", "c"]
        assert (batcher.batches_run, batcher.images_run, batcher.largest_batch) == (1, 3, 3)
    finally:
        release.set()
        batcher.close(timeout=5)


def test_a_batch_never_waits_longer_than_max_wait_for_company():
    """serving.md: a batch takes what arrives within --max-wait-ms of its first image, no longer: every wait for
    another image after the first is at most max_wait (the queue's own timeouts, recorded; no clock read)."""
    waits: list[float | None] = []
    batcher = MicroBatcher(lambda items: [item.upper() for item in items], max_batch=8, max_wait_ms=50)
    real_get = batcher._jobs.get

    def recording_get(block=True, timeout=None):
        waits.append(timeout)
        return real_get(block, timeout)

    batcher._jobs.get = recording_get  # type: ignore[method-assign]
    try:
        assert [future.result(timeout=10) for future in batcher.submit(["a", "b"])] == ["A", "B"]
    finally:
        batcher.close(timeout=5)
    after_first = [wait for wait in waits[1:] if wait is not None]
    assert after_first and all(0 <= wait <= 0.05 for wait in after_first), waits


def test_classify_raises_an_images_failure_unless_asked_to_return_it():
    import asyncio

    def run_batch(items):
        raise ValueError("a bad item")

    batcher = MicroBatcher(run_batch, max_batch=1)
    try:
        with pytest.raises(ValueError, match="a bad item"):
            asyncio.run(batcher.classify(["bad"]))
        (returned,) = asyncio.run(batcher.classify(["bad"], return_exceptions=True))
        assert isinstance(returned, ValueError)
    finally:
        batcher.close(timeout=5)


def test_the_model_threads_never_keep_a_process_alive():
    """A server killed without close() (an unhandled signal, a crashed parent) must still exit: its model threads
    are daemons, as the decode pool's are."""
    batcher = MicroBatcher(lambda items: items, workers=3)
    try:
        threads = [thread for thread in threading.enumerate() if thread.name.startswith("fastvit-detect-batcher")]
        assert len(threads) >= 3 and all(thread.daemon for thread in threads)
    finally:
        batcher.close(timeout=5)


def test_close_answers_what_was_queued_and_stops_every_worker(caplog):
    started, release = threading.Event(), threading.Event()

    def run_batch(items):
        started.set()
        release.wait(30)
        return [item.upper() for item in items]

    batcher = MicroBatcher(run_batch, max_batch=8, max_wait_ms=1000, workers=1)
    (first,) = batcher.submit(["a"])
    assert started.wait(30)
    queued = batcher.submit(["b", "c"])  # waiting behind the running batch when close() queues its stop
    closer = threading.Thread(target=batcher.close, kwargs={"timeout": 10}, daemon=True)
    with caplog.at_level(logging.WARNING, logger="fastvit_detect.server"):
        closer.start()
        while batcher.queue_depth < 3 and closer.is_alive():  # b, c, then the stop
            threading.Event().wait(0.01)
        release.set()
        closer.join(60)
    assert not closer.is_alive()
    assert first.result(timeout=0) == "A"
    assert [future.done() for future in queued] == [True, True]
    assert [future.result(timeout=0) for future in queued] == ["B", "C"]
    assert batcher.workers_alive == 0
    assert not any(record.levelno >= logging.ERROR for record in caplog.records), caplog.text


def test_close_waits_at_most_30_seconds_for_a_stuck_model_thread_then_refuses_what_is_queued(monkeypatch):
    """The serving guide's shutdown promise: queued predictions are finished while a model thread still runs, for
    at most 30 s by default; what is still queued after that gets 503 (ServerBusyError). The joins are recorded
    rather than slept: the test reads the wait close() allows, not the clock."""
    release = threading.Event()

    def run_batch(items):
        release.wait(30)
        return items

    batcher = MicroBatcher(run_batch, max_batch=1, max_wait_ms=0, workers=1)
    waits: list[float] = []
    real_join = threading.Thread.join

    def recorded_join(thread, timeout=None):
        if thread in batcher._workers:
            waits.append(timeout)
            return None  # as if the wait ran out with the thread still stuck
        return real_join(thread, timeout)

    try:
        (running,) = batcher.submit(["running"])
        while batcher.queue_depth:  # the worker has taken "running" and is stuck in it
            threading.Event().wait(0.01)
        (queued,) = batcher.submit(["queued"])
        with monkeypatch.context() as patch:
            patch.setattr(threading.Thread, "join", recorded_join)
            batcher.close()
        assert len(waits) == 1 and 29 < waits[0] <= 30
        with pytest.raises(ServerBusyError, match="shutting down"):
            queued.result(timeout=0)
    finally:
        release.set()
        assert running.result(timeout=30) == "running"


def test_a_pixel_budget_wakes_its_waiters_in_each_event_loop_it_serves():
    """An image over what is left waits and goes ahead once pixels are released; the same budget serves a second
    event loop afterwards (a restarted app, another test client): asyncio's primitives belong to one loop."""
    budget = PixelBudget(100)

    async def scenario() -> None:
        await budget.acquire(80)
        waiter = asyncio.create_task(budget.acquire(50))  # 130 > 100: waits
        await asyncio.sleep(0.05)
        assert not waiter.done()
        await budget.release(80)
        await asyncio.wait_for(waiter, 10)
        assert budget.in_use == 50
        await budget.release(50)

    asyncio.run(scenario())
    asyncio.run(scenario())
    assert budget.in_use == 0


@pytest.mark.parametrize(("system", "libc"), [("Linux", ("musl", "1.2.4")), ("Darwin", ("", "")),
                                              ("Windows", ("", ""))])
def test_only_glibc_on_linux_gets_its_malloc_tuned(monkeypatch, system, libc):
    """Elsewhere (musl, macOS, Windows) mallopt's parameter numbers mean other things or don't exist: nothing is
    called, False is answered."""
    called = []
    monkeypatch.setattr(limits.platform, "system", lambda: system)
    monkeypatch.setattr(limits.platform, "libc_ver", lambda: libc)
    monkeypatch.setattr(limits.ctypes, "CDLL", lambda *_: called.append(True))
    assert return_large_frees_to_the_os() is False and called == []


def test_healthz_reports_the_longest_decode_in_milliseconds_and_zero_when_idle(clock):
    """busy(): each busy thread's time on its image, longest first; report()'s longest_decode_s, rounded to the
    millisecond, 0.0 with no decode running."""
    watch = DecodeWatch(2, 30.0)
    assert watch.report()["longest_decode_s"] == 0.0
    started, release = [threading.Event(), threading.Event()], threading.Event()

    def work(index: int) -> None:
        started[index].set()
        release.wait(30)

    threads = []
    for index, at in enumerate((100.0, 101.0)):  # the first image at 100.0 s, the second at 101.0 s
        clock.now = at
        threads.append(threading.Thread(target=watch.run, args=(f"{index}.png", work, index)))
        threads[-1].start()
        assert started[index].wait(30)
    clock.now = 102.23456
    try:
        assert watch.busy() == pytest.approx([2.23456, 1.23456])
        assert watch.report()["longest_decode_s"] == 2.235
    finally:
        release.set()
        for thread in threads:
            thread.join(30)
    assert watch.report()["longest_decode_s"] == 0.0 and watch.busy() == []


def test_without_mallopt_nothing_is_tuned(monkeypatch):
    """A glibc whose mallopt can't be reached (a static build, a sandbox): False, and the server goes on."""
    def no_library(*_args):
        raise OSError("cannot open shared object")

    monkeypatch.setattr(limits.platform, "system", lambda: "Linux")
    monkeypatch.setattr(limits.platform, "libc_ver", lambda: ("glibc", "2.36"))
    monkeypatch.setattr(limits.ctypes, "CDLL", no_library)
    assert return_large_frees_to_the_os() is False
