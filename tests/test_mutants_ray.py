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


class FakeObjectStores:
    """pyarrow.fs as an object store presents itself, over local folders: ``from_uri("mem://bucket/")`` gives a file
    system whose paths are ``bucket/key`` and the root ``bucket`` (as S3FileSystem and GcsFileSystem do); a store
    that is no bucket store (``hdfs://host:port/``) gives the root ``/`` and takes the path after the authority.
    Every call is recorded."""

    def __init__(self, root: Path) -> None:
        import pyarrow.fs as pafs

        self.root, self.calls = root, []
        self.FileSystem = SimpleNamespace(from_uri=self.from_uri)
        self._pafs = pafs

    def from_uri(self, uri: str):
        self.calls.append(uri)
        scheme, rest = uri.split("://", 1)
        authority, _, inside = rest.partition("/")
        if scheme == "mem":
            return self._pafs.SubTreeFileSystem(str(self.root), self._pafs.LocalFileSystem()), authority
        return self._pafs.SubTreeFileSystem(str(self.root / authority), self._pafs.LocalFileSystem()), f"/{inside}"


def test_object_store_keys_are_read_whole_through_one_file_system_per_bucket(vit_package, tmp_path, monkeypatch):
    """A key as the listing gives it (a space, a line break, even "://" inside it) is read as it is, not parsed as
    a URI; one file system per bucket, made once; a store that isn't a bucket store is asked for each URI."""
    stores = FakeObjectStores(tmp_path)
    monkeypatch.setattr(ray_module, "pafs", stores)
    classifier = ray_module.BatchClassifier(vit_package, variant="fp32", threads=1, max_bytes=1_000)
    keys = {"photos/a b.png": b"first", "photos/line\nbreak.png": b"second", "photos/odd://name.png": b"third"}
    for key, data in keys.items():
        (tmp_path / "bucket" / key).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "bucket" / key).write_bytes(data)
    (tmp_path / "other" / "x.png").parent.mkdir(parents=True)
    (tmp_path / "other" / "x.png").write_bytes(b"other bucket")
    for key, data in keys.items():
        assert classifier._source(f"mem://bucket/{key}", f"mem://bucket/{key}") == data
    assert classifier._source("mem://other/x.png", "mem://other/x.png") == b"other bucket"
    assert stores.calls == ["mem://bucket/", "mem://other/"]

    (tmp_path / "host:8020" / "dir").mkdir(parents=True)
    (tmp_path / "host:8020" / "dir" / "y.png").write_bytes(b"no bucket")
    for _ in range(2):
        assert classifier._source("hdfs://host:8020/dir/y.png", "hdfs://host:8020/dir/y.png") == b"no bucket"
    assert stores.calls[2:] == ["hdfs://host:8020/", "hdfs://host:8020/dir/y.png"] * 2

    (tmp_path / "bucket" / "big.png").write_bytes(b"x" * 5_000)  # read up to the cap + 1: the detector refuses it
    assert len(classifier._source("mem://bucket/big.png", "mem://bucket/big.png")) == 1_001


def test_the_line_writers_close_closes_the_results_file(tmp_path):
    """The Ray job's JSON-lines/CSV writer: what was written is on disk and no descriptor is left open on it."""
    from test_mutants_scan import open_descriptors_to

    for name in ("results.jsonl", "results.csv"):
        path = tmp_path / name
        output = ray_module.open_output(path, ["Fake", "Real"])
        output.write_record({"image": "a.png", "label": "Real", "score": 0.75, "fake_probability": 0.25,
                             "probabilities": {"Fake": 0.25, "Real": 0.75}})
        output.close()
        assert open_descriptors_to(path) == [], name
        assert "a.png" in path.read_text()


def test_ray_starts_quietly_and_leaves_the_environment_as_it_found_it(monkeypatch):
    """While Ray starts, its C++ core logs fatal messages only (RAY_BACKEND_LOG_LEVEL=fatal); afterwards the
    variable is gone again, and a value the user set is neither replaced nor removed."""
    import os

    monkeypatch.delenv("RAY_BACKEND_LOG_LEVEL", raising=False)
    with ray_module._core_log_level(verbose=False):
        assert os.environ["RAY_BACKEND_LOG_LEVEL"] == "fatal"
    assert "RAY_BACKEND_LOG_LEVEL" not in os.environ
    with ray_module._core_log_level(verbose=True):
        assert "RAY_BACKEND_LOG_LEVEL" not in os.environ
    monkeypatch.setenv("RAY_BACKEND_LOG_LEVEL", "debug")
    with ray_module._core_log_level(verbose=False):
        assert os.environ["RAY_BACKEND_LOG_LEVEL"] == "debug"
    assert os.environ["RAY_BACKEND_LOG_LEVEL"] == "debug"


def test_the_crash_ledger_reserves_no_cpu(monkeypatch):
    """start_crash_ledger's contract: the ledger only counts, so it takes no CPU from the cluster (one it reserved
    would leave a 2-CPU cluster one actor short, or stall a job that asks for every CPU)."""
    asked = {}

    def remote(**options):
        asked.update(options)
        return lambda cls: SimpleNamespace(remote=lambda: "handle")

    monkeypatch.setattr(ray_module.ray, "remote", remote)
    assert ray_module.start_crash_ledger() == "handle"
    assert asked["num_cpus"] == 0
