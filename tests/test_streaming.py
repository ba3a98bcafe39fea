"""Batching and streaming as the README promises them: one session call per ``batch_size`` images, the next batch
decoded while the model runs the current one, scan records on disk batch by batch."""

from __future__ import annotations

import json
import shutil
import threading

import pytest
from conftest import sample_photos

from fastvit_detect import Detector, ImageDecodeError, Prediction
from fastvit_detect.scan import scan

# How long a test waits for the decoding thread to reach a batch it should already be on. Only a broken overlap
# waits this long; a working one is there at once.
OVERLAP_WAIT = 5.0


class Recorder:
    """Wraps a detector's session and decoder: the size of each session call, and when each batch's decoding began."""

    def __init__(self, detector: Detector, batches: int, during_run=None) -> None:
        self.calls: list[int] = []
        self.decoding = [threading.Event() for _ in range(batches)]
        self._decoded = 0
        self._lock = threading.Lock()
        self._during_run = during_run
        run, decode = detector.session.run, detector.preprocessor.batch_pixels

        def counted_run(pixel_values):
            index = len(self.calls)
            self.calls.append(len(pixel_values))
            if self._during_run is not None:
                self._during_run(index)
            return run(pixel_values)

        def announced_decode(chunk):
            with self._lock:
                index, self._decoded = self._decoded, self._decoded + 1
            if index < len(self.decoding):
                self.decoding[index].set()
            return decode(chunk)

        detector.session.run = counted_run  # instance attributes: only this detector is instrumented
        detector.preprocessor.batch_pixels = announced_decode


def overlap(recorder: Recorder, k: int, so_far: list[bool]) -> bool:
    """Called as batch k's session call starts: has batch k+1's decoding begun? (Waits only until the first no.)"""
    if k + 1 >= len(recorder.decoding):
        return False  # the last batch: no next one to overlap with
    return recorder.decoding[k + 1].wait(OVERLAP_WAIT if all(so_far) else 0)


@pytest.fixture
def detector(vit_package) -> Detector:
    return Detector.load(vit_package, variant="fp32", threads=1)


def test_one_session_call_per_batch_size_images(detector, reference):
    images = sample_photos() + sample_photos()[:3]  # 12 images
    recorder = Recorder(detector, batches=4)
    results = detector.predict_batch(images, batch_size=5)
    assert recorder.calls == [5, 5, 2]
    assert [result.label for result in results] == reference.labels("vit", images)
    recorder.calls.clear()
    detector.predict_batch(images * 2)  # default batch size 16
    assert recorder.calls == [16, 8]
    recorder.calls.clear()
    list(detector.predict_iter(images, batch_size=4))
    assert recorder.calls == [4, 4, 4]


def test_bad_images_take_no_place_in_the_session_call(detector, bad_inputs, reference):
    photos = sample_photos()[:3]
    images = [photos[0], bad_inputs["text.jpg"], photos[1], photos[2]]
    recorder = Recorder(detector, batches=1)
    results = detector.predict_batch(images, batch_size=4, errors="return")
    assert recorder.calls == [3]
    assert isinstance(results[1], ImageDecodeError)
    assert [r.label for r in results if isinstance(r, Prediction)] == reference.labels("vit", photos)


def test_predict_iter_decodes_the_next_batch_while_the_model_runs(detector, reference):
    images = sample_photos()[:6]
    overlapped: list[bool] = []
    recorder = Recorder(detector, batches=3, during_run=lambda k: overlapped.append(overlap(recorder, k, overlapped)))
    stream = detector.predict_iter(images, batch_size=2, prefetch=1)
    first = next(stream)
    # Batch 0's first result is out: batch 1's decoding had begun while the model ran batch 0.
    assert recorder.decoding[1].is_set() and overlapped[0]
    rest = list(stream)
    assert overlapped == [True, True, False]  # the last batch has no next one to overlap with
    assert [r.label for r in [first, *rest]] == reference.labels("vit", images)


def test_prefetch_0_decodes_in_the_calling_thread(detector):
    threads: set[str] = set()
    decode = detector.preprocessor.batch_pixels

    def where(chunk):
        threads.add(threading.current_thread().name)
        return decode(chunk)

    detector.preprocessor.batch_pixels = where
    list(detector.predict_iter(sample_photos()[:4], batch_size=2, prefetch=0))
    assert threads == {threading.current_thread().name}
    threads.clear()
    list(detector.predict_iter(sample_photos()[:4], batch_size=2))
    assert len(threads) == 1 and threads != {threading.current_thread().name}


@pytest.fixture
def photo_folder(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for photo in sample_photos()[:6]:
        shutil.copyfile(photo, folder / photo.name)
    return folder


def test_scan_overlaps_decoding_and_flushes_each_batch(detector, photo_folder, tmp_path, reference):
    output = tmp_path / "results.jsonl"
    on_disk: list[int] = []
    overlapped: list[bool] = []

    def during_run(k: int) -> None:
        overlapped.append(overlap(recorder, k, overlapped))
        # Batch k is about to run: every record of batches 0..k-1 must be in the file already, whole.
        text = output.read_text() if output.exists() else ""
        on_disk.append(text.count("\n"))

    recorder = Recorder(detector, batches=3, during_run=during_run)
    summary = scan(detector, photo_folder, output, batch_size=2)
    assert recorder.calls == [2, 2, 2]
    assert on_disk == [0, 2, 4]
    assert overlapped == [True, True, False]
    records = [json.loads(line) for line in output.read_text().splitlines()]
    photos = sorted(photo_folder.iterdir())
    assert [record["image"] for record in records] == [str(path) for path in photos]
    assert [record["label"] for record in records] == reference.labels("vit", photos)
    assert (summary.classified, summary.failed) == (6, 0)
