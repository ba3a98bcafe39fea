"""The pool's sessions and its calibration measure, with fake sessions and a fake clock, so every figure is known
in advance: which sessions a layout opens (one shared by one-thread workers, one each otherwise), how many batches
a measure runs and the images per second it reports, which input size it times, and that closing a pipeline
leaves no decode running or queued."""

from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import ClassVar

import numpy as np
import pytest

from fastvit_detect import pool
from fastvit_detect.backends import OnnxRuntimeBackend
from fastvit_detect.layout import Layout
from fastvit_detect.pool import SessionPool, measure_layout, ordered_pipeline


class FakeSession:
    """Counts its calls; each call advances the fake clock by ``step`` seconds (0.125: exact in binary)."""

    opened: ClassVar[list[FakeSession]] = []

    def __init__(self, threads: int, clock: list[float] | None = None, step: float = 0.125,
                 input_shape=("batch", 3, 224, 224)) -> None:
        self.threads, self.clock, self.step, self.input_shape = threads, clock, step, list(input_shape)
        self.shapes: list[tuple[int, ...]] = []
        FakeSession.opened.append(self)

    @property
    def signature(self) -> SimpleNamespace:
        return SimpleNamespace(input_shape=tuple(self.input_shape))

    def run(self, pixels: np.ndarray) -> np.ndarray:
        self.shapes.append(pixels.shape)
        if self.clock is not None:
            self.clock[0] += self.step
        return np.zeros((pixels.shape[0], 2), np.float32)


class FakeBackend(OnnxRuntimeBackend):
    """onnxruntime's backend (its rule for sharing sessions between workers) opening fake sessions."""

    def __init__(self, make) -> None:
        super().__init__()
        self.make = make

    def open(self, path, threads):
        return self.make(threads)


MODEL = Path("model.onnx")


@pytest.fixture(autouse=True)
def fresh():
    FakeSession.opened = []


def test_one_thread_workers_share_one_session_and_others_get_one_each():
    threads_asked: list[int] = []

    def make(threads):
        threads_asked.append(threads)
        return FakeSession(threads)

    backend = FakeBackend(make)
    shared = SessionPool.build(Layout(3, 1, "caller"), backend, MODEL)
    assert threads_asked == [1] and len({id(session) for session in shared.sessions}) == 1
    assert len(shared.sessions) == 3
    threads_asked.clear()
    separate = SessionPool.build(Layout(2, 2, "caller"), backend, MODEL)
    assert threads_asked == [2, 2] and len({id(session) for session in separate.sessions}) == 2
    threads_asked.clear()
    first = FakeSession(2)
    reused = SessionPool.build(Layout(3, 2, "caller"), backend, MODEL, first=first)
    assert threads_asked == [2, 2] and reused.sessions[0] is first


def test_a_measure_runs_batches_of_8_until_the_deadline_and_reports_images_per_second(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(pool.time, "perf_counter", lambda: clock[0])
    figure = measure_layout(Layout(1, 2, "calibrated"), FakeBackend(lambda threads: FakeSession(threads, clock)),
                            MODEL, (32, 48), seconds=1.0)
    (session,) = FakeSession.opened
    # One warm-up call, then calls of 0.125 s each until 1 s has passed: 8 timed batches of 8 images in 1 s.
    assert session.shapes == [(8, 3, 32, 48)] * 9
    assert figure == 64.0


def test_every_worker_of_a_measure_warms_up_and_runs(monkeypatch):
    figure = measure_layout(Layout(2, 1, "calibrated"), FakeBackend(FakeSession), MODEL, (16, 16), seconds=0.05)
    (session,) = FakeSession.opened  # one-thread workers share it
    assert len(session.shapes) >= 4  # two warm-ups, and each worker ran at least once
    assert figure > 0


@pytest.mark.parametrize("shape, expected", [(("batch", 3, 32, 48), (32, 48)), (("batch", 3, "h", "w"), (224, 224)),
                                             ((1, 3, 0, 64), (224, 64)), ((1, 3, 1, 1), (1, 1))])
def test_calibration_times_the_graphs_input_size_or_224_where_it_is_dynamic(monkeypatch, tmp_path, shape, expected):
    sizes: list[tuple[int, int]] = []
    backend = FakeBackend(lambda threads: FakeSession(threads, input_shape=shape))

    def fake_measure(layout, backend, path, image_size, seconds=pool.CALIBRATION_SECONDS):
        sizes.append(image_size)
        return float(layout.workers)

    monkeypatch.setattr(pool, "measure_layout", fake_measure)
    best, _figures, path = pool.calibrate_layout("model.onnx", "ab" * 32, cores=2, backend=backend,
                                                 cache_directory=tmp_path)
    assert sizes == [expected] * 4  # 2 candidates, 2 rounds by default
    assert (best.workers, best.threads_per_worker) == (2, 1) and path.parent == tmp_path


# --- closing a pipeline -------------------------------------------------------------------------------------


def test_closing_a_pipeline_runs_no_queued_decode_and_leaves_none_running():
    decoded: list[int] = []
    running = [0]
    lock = threading.Lock()

    def decode(chunk):
        with lock:
            running[0] += 1
        time.sleep(0.05)
        decoded.append(chunk)
        with lock:
            running[0] -= 1
        return chunk

    classifying = [0]

    def classify(chunk, _decoded):
        with lock:
            classifying[0] += 1
        time.sleep(0.1)
        with lock:
            classifying[0] -= 1
        return chunk

    pulled = itertools.count()
    stream = ordered_pipeline((next(pulled) for _ in itertools.repeat(None)), decode=decode, classify=classify,
                              workers=2, decoders=1, ahead=6)
    assert next(stream) == 0
    stream.close()
    taken = next(pulled)  # how many chunks the pipeline had taken (the next number it would have got)
    assert running[0] == 0 and classifying[0] == 0  # no decode, no batch outlives close()
    time.sleep(0.2)
    assert len(decoded) < taken - 2  # the queued decodes were cancelled, not run


def test_closing_waits_for_a_decode_already_running_for_a_cancelled_batch():
    running = [0]
    lock = threading.Lock()

    def decode(chunk):
        with lock:
            running[0] += 1
        time.sleep(1.0 if chunk == 2 else 0.0)  # chunk 2's decode is still running when the stream is closed
        with lock:
            running[0] -= 1
        return chunk

    def classify(chunk, _decoded):
        time.sleep(0.3 if chunk == 1 else 0.0)  # the one model thread is busy with chunk 1: chunk 2 never starts
        return chunk

    stream = ordered_pipeline(iter(range(100)), decode=decode, classify=classify, workers=1, decoders=2, ahead=2)
    assert next(stream) == 0
    stream.close()
    assert running[0] == 0  # close() returned only after that decode ended: nothing of the stream outlives it
