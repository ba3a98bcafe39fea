"""What the Ray engine's survivors of the automatic mutation run (its mutants the fast, in-process tests reach)
showed untested. The expected values are the docs' (``--connect-timeout``: default 60) and the documented
contract of each piece, not read from ray.py."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

pytest.importorskip("ray")

import fastvit_detect.ray as ray_module
from fastvit_detect.ray import ShippedModel, _assigned_cpus, connected


def test_joining_a_cluster_waits_60_seconds_by_default():
    """docs/guides/ray.md, scan --engine ray: ``--connect-timeout S`` ... (default 60)."""
    assert inspect.signature(connected).parameters["timeout"].default == 60


def test_a_shipped_model_cannot_be_changed_after_it_is_put():
    """Sent to every actor: its object reference and variant are fixed once the driver put it."""
    shipped = ShippedModel(files=None, variant="int8")  # type: ignore[arg-type]
    with pytest.raises(dataclasses.FrozenInstanceError):
        shipped.variant = "fp32"  # type: ignore[misc]


def test_outside_a_ray_worker_a_classifier_gets_one_thread():
    """No Ray reservation to read (and asking would start a Ray): one intra-op thread, the safe default."""
    import ray

    assert not ray.is_initialized()
    assert _assigned_cpus() == 1


@pytest.mark.parametrize("threads, expected", [(None, 1), (3, 3)])
def test_a_classifier_loads_its_detector_as_detector_load_would(monkeypatch, threads, expected):
    """Detector.load's own defaults (jpeg_draft off: full-size decoding, as a local scan does) and the thread count
    given, else the CPUs Ray reserved (1 outside a worker)."""
    loaded: list[dict] = []

    class FakeDetector:
        labels = ("Fake", "Real")
        faces_first = False  # BatchClassifier asks (Detector.faces_first, since faces landed)

        @classmethod
        def load(cls, path, **options):
            loaded.append(options)
            return cls()

    monkeypatch.setattr(ray_module, "Detector", FakeDetector)
    ray_module.BatchClassifier("a-package", threads=threads)
    assert loaded[0]["threads"] == expected
    assert loaded[0]["jpeg_draft"] is False


def test_a_batch_that_finished_leaves_no_trace_in_the_crash_ledger(vit_package, tmp_path, monkeypatch):
    """Ray may hand the same batch to a worker again (a retry after another failure): one that finished before is
    classified as a batch again, not taken for a crash and redone image by image."""
    monkeypatch.setattr(ray_module.ray, "get", lambda value: value)  # the ledger is a plain object here
    ledger = ray_module.CrashLedger()
    handle = SimpleNamespace(begin=SimpleNamespace(remote=ledger.begin), end=SimpleNamespace(remote=ledger.end))
    classifier = ray_module.BatchClassifier(vit_package, variant="fp32", threads=1, crash_ledger=handle)
    alone: list[str] = []
    monkeypatch.setattr(ray_module.BatchClassifier, "_predict_alone",
                        lambda self, ledger, source, path: alone.append(path))
    paths = []
    for index in range(2):
        paths.append(str(tmp_path / f"img{index}.png"))
        Image.new("RGB", (24, 24), (40 * index, 90, 200)).save(paths[-1])
    batch = {"path": paths, "bytes": [Path(path).read_bytes() for path in paths]}
    for _ in range(2):
        assert classifier(batch).num_rows == 2
    assert alone == []
