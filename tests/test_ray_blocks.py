"""The Ray driver's exactly-once promise and the crash ledger's count, without a Ray instance: a block that Ray
delivers twice (a retried task of an actor that died) is written once, and an image becomes an error record
after exactly ``crashes_before_giving_up`` deaths of a worker classifying it on its own, not one sooner or later.

The driver's loop gets hand-made blocks (``_batches`` replaced), the classifier a plain :class:`CrashLedger`
behind a stand-in for an actor handle; everything else is the engine's own code."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import noise_image
from PIL import Image

pytest.importorskip("ray")
pytest.importorskip("pyarrow")

import fastvit_detect.ray as engine
from fastvit_detect import Detector
from fastvit_detect.scan import result_record


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("blocks")
    paths = []
    for index in range(5):
        path = folder / f"img{index}.png"
        Image.fromarray(noise_image(24, 24 + index, seed=index)).save(path)
        paths.append(path)
    (folder / "broken.png").write_bytes(b"not a png")
    return [*paths, folder / "broken.png"]


@pytest.fixture(scope="module")
def detector(vit_package):
    return Detector.load(vit_package, variant="fp32", threads=1)


def blocks_of(detector, paths: list[Path], sizes: list[int]) -> list:
    """The records of ``paths`` as Arrow tables of ``sizes`` records each, as the actors send them."""
    records = [result_record(str(path), result) for path, result in
               zip(paths, detector.predict_batch([str(path) for path in paths], errors="return"))]
    tables, start = [], 0
    for size in sizes:
        tables.append(engine.records_table(records[start:start + size], detector.labels))
        start += size
    return tables


def run_driver(monkeypatch, vit_package, paths, blocks, output):
    """engine.classify with Ray's part replaced: the job's blocks are ``blocks``, in that order."""
    monkeypatch.setattr(engine.ray, "is_initialized", lambda: True)
    monkeypatch.setattr(engine, "start_crash_ledger", lambda: None)

    def planned(names, model, **_options):
        if not names:  # as classify_dataset: no Dataset for an empty list (the scan's videos, here)
            return engine.Job(dataset=None, names={}, actors=0, threads_per_actor=1)
        return engine.Job(dataset=object(), names={name: name for name in names}, actors=1, threads_per_actor=1)

    monkeypatch.setattr(engine, "classify_dataset", planned)
    monkeypatch.setattr(engine, "_batches", lambda _dataset: iter(blocks))
    return engine.classify([str(path) for path in paths], vit_package, output, variant="fp32")


def test_a_block_delivered_twice_is_written_once(monkeypatch, vit_package, detector, images, tmp_path):
    first, second, third = blocks_of(detector, images, [2, 2, 2])
    output = tmp_path / "records.jsonl"
    # The second block again after the third: an actor died after sending it, and Ray ran its task again.
    summary = run_driver(monkeypatch, vit_package, images, [first, second, third, second], output)
    names = [json.loads(line)["image"] for line in output.read_text().splitlines()]
    assert sorted(names) == sorted(str(path) for path in images)  # each image once
    assert summary.duplicates_dropped == 2
    assert (summary.classified, summary.failed) == (5, 1)  # counted once too
    assert sum(summary.labels.values()) == 5


def test_a_retried_block_cut_differently_is_still_written_once(monkeypatch, vit_package, detector, images,
                                                               tmp_path):
    whole = blocks_of(detector, images, [6])
    halves = blocks_of(detector, images, [3, 3])
    output = tmp_path / "records.jsonl"
    summary = run_driver(monkeypatch, vit_package, images, [halves[0], *whole], output)
    assert len(output.read_text().splitlines()) == 6 and summary.duplicates_dropped == 3
    assert summary.classified + summary.failed == 6


def test_a_block_that_never_comes_is_an_error_not_a_silent_gap(monkeypatch, vit_package, detector, images,
                                                               tmp_path):
    first, _lost = blocks_of(detector, images, [4, 2])
    with pytest.raises(engine.FastVitDetectError, match="2 image"):
        run_driver(monkeypatch, vit_package, images, [first], tmp_path / "records.jsonl")


# --- the crash ledger's count -------------------------------------------------------------------------------


class LedgerHandle:
    """An actor handle's shape over a plain ledger: ``handle.begin.remote(key)`` gives what ``ray.get`` takes."""

    def __init__(self, ledger: engine.CrashLedger) -> None:
        self.begin = SimpleNamespace(remote=ledger.begin)
        self.end = SimpleNamespace(remote=ledger.end)


@pytest.fixture
def classifier(vit_package, monkeypatch):
    monkeypatch.setattr(engine.ray, "get", lambda value: value)
    return engine.BatchClassifier(vit_package, variant="fp32", threads=1)


def die_classifying(ledger: engine.CrashLedger, path: str, times: int) -> None:
    """``times`` workers began ``path`` on its own and were killed before they finished."""
    for _ in range(times):
        ledger.begin(path)


@pytest.mark.parametrize("deaths", [0, 1])
def test_an_image_is_tried_again_after_fewer_deaths_than_the_limit(classifier, images, deaths):
    assert engine.BatchClassifier.crashes_before_giving_up == 2  # the documented default
    ledger = engine.CrashLedger()
    path = str(images[0])
    die_classifying(ledger, path, deaths)
    result = classifier._predict_alone(LedgerHandle(ledger), images[0].read_bytes(), path)
    assert not isinstance(result, Exception) and result.label in classifier.labels
    assert ledger.begin(path) == 0  # it finished: no trace left


@pytest.mark.parametrize("deaths", [2, 3])
def test_an_image_becomes_an_error_record_after_exactly_the_limit_of_deaths(classifier, images, deaths):
    ledger = engine.CrashLedger()
    path = str(images[1])
    die_classifying(ledger, path, deaths)
    result = classifier._predict_alone(LedgerHandle(ledger), images[1].read_bytes(), path)
    assert isinstance(result, engine.WorkerCrashError)
    assert f"died {deaths} times" in str(result)


def test_a_batch_that_crashed_once_is_redone_image_by_image(classifier, images, monkeypatch):
    ledger = engine.CrashLedger()
    paths = [str(path) for path in images[:3]]
    batch = {"path": paths, "bytes": [Path(path).read_bytes() for path in paths]}
    alone: list[str] = []
    original = engine.BatchClassifier._predict_alone

    def spy(self, handle, data, path):
        alone.append(path)
        return original(self, handle, data, path)

    monkeypatch.setattr(engine.BatchClassifier, "_predict_alone", spy)
    classifier.crash_ledger = LedgerHandle(ledger)
    assert classifier(batch).num_rows == 3 and alone == []  # a first try: the batch as a whole
    key = hashlib.sha256("\0".join(paths).encode()).hexdigest()
    ledger.begin(key)  # the batch's worker died once
    table = classifier(batch)
    assert alone == paths and table.num_rows == 3
    assert all(record.get("error") is None for record in engine.table_records(table))
