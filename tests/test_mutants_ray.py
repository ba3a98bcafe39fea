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


def test_parquet_results_are_written_ten_thousand_records_a_file(tmp_path):
    """docs/guides/ray.md: Parquet files are written 10,000 records at a time, each whole or absent."""
    import pyarrow.parquet as pq

    from fastvit_detect.ray import ParquetOutput

    output = ParquetOutput(tmp_path / "results.parquet", ["Fake", "Real"])
    error = {"type": "ImageDecodeError", "message": "not an image"}
    for index in range(10_001):
        output.write_record({"image": f"{index}.jpg", "error": error})
        if index == 9_998:
            assert not list(output.path.glob("part-*.parquet"))  # 9,999 buffered: nothing written yet
    assert [pq.read_metadata(part).num_rows for part in sorted(output.path.glob("part-*.parquet"))] == [10_000]
    output.close()
    parts = sorted(output.path.glob("part-*.parquet"))
    assert [part.name for part in parts] == ["part-000000.parquet", "part-000001.parquet"]
    assert [pq.read_metadata(part).num_rows for part in parts] == [10_000, 1]


@pytest.mark.parametrize("faces", [False, True])
def test_parquet_rows_hold_the_local_scans_records_key_for_key(packages, faces, tmp_path):
    """docs/guides/ray.md: Parquet with the JSON line's keys as columns. The records of a local scan (a photo, a face
    scene, a file that isn't an image, a clip; with faces, a record per face before its image's) go through the
    Arrow schema and back unchanged: every column and type of record_schema, in both of its forms."""
    import json

    import numpy as np
    from video_clips import face_scene, fake_segment_clip

    from fastvit_detect import Detector
    from fastvit_detect.ray import record_schema, records_table, table_records
    from fastvit_detect.scan import scan

    folder = tmp_path / "folder"
    folder.mkdir()
    Image.fromarray(face_scene(dark=True)).save(folder / "scene.png")
    Image.fromarray(np.full((40, 60, 3), 90, np.uint8)).save(folder / "plain.png")
    (folder / "broken.jpg").write_bytes(b"not an image")
    fake_segment_clip(folder / "clip.mp4", seconds=3, fake=(1, 2))
    detector = Detector.load(packages["vit-faces" if faces else "vit"], variant="fp32", threads=1, faces=faces)
    scan(detector, folder, tmp_path / "records.jsonl")
    assert record_schema(detector.labels) == record_schema(detector.labels, faces=False)
    records = [json.loads(line) for line in (tmp_path / "records.jsonl").read_text().splitlines()]
    kinds = {("face" if "face" in record else "error" if "error" in record else
              "video" if record.get("video") else "image") for record in records}
    assert kinds == ({"face", "error", "video", "image"} if faces else {"error", "video", "image"})
    # without faces, the default form (faces=False) is the one to take: the plain scan's columns, no face ones
    table = records_table(records, detector.labels, faces=True) if faces else records_table(records, detector.labels)
    assert [json.dumps(record) for record in table_records(table)] == [json.dumps(record) for record in records]
    assert ("face" in table.column_names) is faces


def test_an_actor_opens_its_face_detector_while_the_package_is_there(packages, tmp_path):
    """A shipped package's files exist only while the actor is built (ShippedModel.unpacked): the face detector
    must be opened then, not at the first face search. Here the package folder is deleted right after the actor
    is built, as the shipped one is, and the actor still finds and judges the face."""
    import shutil

    from video_clips import face_scene

    copy = tmp_path / "package"
    shutil.copytree(packages["vit-faces"], copy)
    classifier = ray_module.BatchClassifier(copy, variant="fp32", threads=1, faces=True)
    shutil.rmtree(copy)
    Image.fromarray(face_scene(dark=True)).save(tmp_path / "scene.png")
    table = classifier({"path": ["scene.png"], "file": [str(tmp_path / "scene.png")]})
    rows = table.to_pylist()
    assert [row["error"] for row in rows] == [None] * len(rows)
    assert [row["face"] for row in rows] == [1, None]  # the face's record (numbered from 1), then the image's


def test_without_a_byte_cap_an_object_store_key_is_read_whole(vit_package, tmp_path, monkeypatch):
    monkeypatch.setattr(ray_module, "pafs", FakeObjectStores(tmp_path))
    classifier = ray_module.BatchClassifier(vit_package, variant="fp32", threads=1, max_bytes=None)
    (tmp_path / "bucket").mkdir()
    (tmp_path / "bucket" / "big.png").write_bytes(b"x" * 5_000)
    assert classifier._source("mem://bucket/big.png", "mem://bucket/big.png") == b"x" * 5_000


def test_a_shipped_package_is_verified_before_it_is_put(package_copy, monkeypatch):
    """ShippedModel.put checks the variant's files against the manifest first: a damaged file is never sent."""
    from fastvit_detect.errors import ChecksumMismatchError
    from fastvit_detect.package import ModelPackage

    put: list = []
    monkeypatch.setattr(ray_module, "ray", SimpleNamespace(put=lambda files: put.append(files) or "ref"))
    assert ShippedModel.put(package_copy, "fp32").files == "ref" and len(put) == 1
    weights = ModelPackage.open(package_copy).variant("fp32").files[-1][0]
    data = weights.read_bytes()
    weights.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(ChecksumMismatchError):
        ShippedModel.put(package_copy, "fp32")
    assert len(put) == 1


@pytest.mark.parametrize(("assigned", "threads"), [({"CPU": 3.0}, 3), ({}, 1), ({"CPU": 0.5}, 1), (None, 1)])
def test_inside_a_ray_worker_a_classifier_gets_the_cpus_ray_reserved(monkeypatch, assigned, threads):
    """At least 1; a fractional reservation rounds down; no CPU reserved, or no runtime context: 1."""
    def context():
        if assigned is None:
            raise RuntimeError("not in a worker")
        return SimpleNamespace(get_assigned_resources=lambda: assigned)

    monkeypatch.setattr(ray_module, "ray", SimpleNamespace(is_initialized=lambda: True, get_runtime_context=context))
    assert _assigned_cpus() == threads


@pytest.mark.parametrize("entry", ["classify", "classify_dataset", "BatchClassifier"])
def test_every_ray_entry_point_decodes_images_in_full_by_default(entry):
    """As a local scan does (Detector.load's jpeg_draft=False): drafting changes pixels, so it is only ever asked."""
    assert inspect.signature(getattr(ray_module, entry)).parameters["jpeg_draft"].default is False


class FakeRayData:
    """The part of Ray that classify_dataset talks to, without a cluster: a cluster of ``cpus`` CPUs (None: a
    cluster that reports none), a Dataset that records its rows and map_batches' arguments."""

    def __init__(self, cpus: float | None) -> None:
        self.cpus, self.rows, self.mapped = cpus, None, None
        self.data = SimpleNamespace(from_items=self.from_items, ActorPoolStrategy=lambda size: ("actors", size))

    def cluster_resources(self) -> dict:
        return {} if self.cpus is None else {"CPU": self.cpus}

    def from_items(self, rows):
        self.rows = rows
        return SimpleNamespace(map_batches=self.map_batches)

    def map_batches(self, classifier, **options):
        self.mapped = options
        return "dataset"


@pytest.mark.parametrize(("cpus", "threads", "videos", "actors", "num_cpus"), [
    (8.0, None, False, 8, 1),  # as many one-thread actors as the cluster's CPUs
    (8.0, 2, False, 4, 2),  # CPUs / threads per actor, each reserving its threads
    (1.0, 4, False, 1, 4),  # at least one
    (None, None, False, 1, 1),  # a cluster that reports no CPUs: one
    (8.0, None, True, 3, 1),  # videos: no more actors than clips (3), each would load the model for nothing
])
def test_a_dataset_gets_one_actor_per_cpu_share(monkeypatch, tmp_path, cpus, threads, videos, actors, num_cpus):
    fake = FakeRayData(cpus)
    monkeypatch.setattr(ray_module, "ray", fake)
    names = [str(tmp_path / f"{index}.jpg") for index in range(3)]
    job = ray_module.classify_dataset(names, "a-package", threads_per_actor=threads, videos=videos)
    assert (job.actors, job.threads_per_actor) == (actors, threads)
    assert fake.mapped["compute"] == ("actors", actors) and fake.mapped["num_cpus"] == num_cpus
    assert fake.mapped["fn_constructor_kwargs"]["videos"] is videos
    assert [row["path"] for row in fake.rows] == names and job.names == dict(zip(names, names))


def test_no_names_is_an_empty_job_without_a_dataset(monkeypatch):
    monkeypatch.setattr(ray_module, "ray", FakeRayData(8.0))
    assert ray_module.classify_dataset([], "a-package", threads_per_actor=2) == ray_module.Job(None, {}, 0, 2)


def test_two_names_with_one_parquet_spelling_get_two_keys(monkeypatch, tmp_path):
    """A name that isn't UTF-8 is stored with its bytes escaped (\\xe9); a name spelling that escape literally
    would share its key, so the second gets a NUL suffix, and each key maps back to its own name."""
    fake = FakeRayData(2.0)
    monkeypatch.setattr(ray_module, "ray", fake)
    raw, literal = str(tmp_path / "caf\udce9.jpg"), str(tmp_path / "caf\\xe9.jpg")
    job = ray_module.classify_dataset([raw, literal], "a-package")
    keys = [row["path"] for row in fake.rows]
    assert keys == [literal, f"{literal}\0" + "1"]
    assert job.names == {keys[0]: raw, keys[1]: literal}


def error_record(name: str) -> dict:
    return {"image": name, "error": {"type": "ImageDecodeError", "message": f"{name}: not an image"}}


def test_a_parquet_folder_is_resumed_by_default_its_parts_numbered_on(tmp_path):
    """ParquetOutput's defaults: an existing folder is resumed (overwrite is asked for), with the plain scan's
    columns (faces is asked for); a new part takes the number after the largest, however many digits it has."""
    from fastvit_detect.ray import ParquetOutput, image_identity, record_schema

    folder = tmp_path / "results.parquet"
    first = ParquetOutput(folder, ["Fake", "Real"])
    assert first.schema == record_schema(["Fake", "Real"], faces=False)
    first.write_record(error_record(str(tmp_path / "a.jpg")))
    first.close()
    (folder / "part-000000.parquet").rename(folder / "part-000007.parquet")
    resumed = ParquetOutput(folder, ["Fake", "Real"])
    assert resumed.done == {image_identity(str(tmp_path / "a.jpg"))}
    resumed.write_record(error_record(str(tmp_path / "b.jpg")))
    resumed.close()
    assert sorted(part.name for part in folder.glob("part-*")) == ["part-000007.parquet", "part-000008.parquet"]
    (folder / "part-000008.parquet").rename(folder / "part-1234567.parquet")  # past six digits
    again = ParquetOutput(folder, ["Fake", "Real"])
    again.write_record(error_record(str(tmp_path / "c.jpg")))
    again.close()
    assert (folder / "part-1234568.parquet").is_file()


def test_a_resumed_parquet_folder_knows_names_that_are_not_utf8(tmp_path):
    """Parquet holds a name that isn't UTF-8 with its bytes escaped; resuming must still know it as done (else it
    would be classified, and written, twice), and know a UTF-8 name as itself."""
    from fastvit_detect.ray import ParquetOutput, image_identity

    folder = tmp_path / "results.parquet"
    raw, plain = str(tmp_path / "caf\udce9.jpg"), str(tmp_path / "plain.jpg")
    output = ParquetOutput(folder, ["Fake", "Real"])
    for name in (raw, plain):
        output.write_record(error_record(name))
    output.close()
    resumed = ParquetOutput(folder, ["Fake", "Real"])
    assert resumed.holds(raw, image_identity(raw)) and resumed.holds(plain, image_identity(plain))
    assert not resumed.holds(str(tmp_path / "other.jpg"), image_identity(str(tmp_path / "other.jpg")))


def test_an_actors_error_message_names_the_image_as_it_was_listed():
    """The actor read ``key`` (escaped, with a NUL suffix when two names share it); the message names the image."""
    from fastvit_detect.ray import _named_in_message

    assert _named_in_message("/d/caf\\xe9.jpg: broken", "/d/caf\\xe9.jpg\x001", "/d/caf\udce9.jpg") == (
        "/d/caf\udce9.jpg: broken")
    assert _named_in_message("/d/a.jpg: broken", "/d/a.jpg", "/d/a.jpg") == "/d/a.jpg: broken"


def test_parquet_parts_hold_whole_images_and_are_synced_before_they_are_renamed(tmp_path, monkeypatch):
    """rows_per_file at a time, but never between an image's face records and its own record (a file holds whole
    images, so resuming is exact); parts numbered one after another; each part's bytes all on disk (flushed, then
    fsynced) before the rename that makes it visible."""
    import os

    import pyarrow.parquet as pq

    from fastvit_detect.ray import ParquetOutput

    events: list = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: events.append(("fsync", os.fstat(fd).st_size)) or real_fsync(fd))
    monkeypatch.setattr(os, "replace",
                        lambda old, new: events.append(("replace", os.path.getsize(old))) or real_replace(old, new))
    output = ParquetOutput(tmp_path / "results.parquet", ["Fake", "Real"], rows_per_file=2, faces=True)
    face = {"image": "a.jpg", "face": 1, "box": [0.0, 0.0, 1.0, 1.0], "face_score": 0.9, "label": "Fake",
            "score": 0.8, "probabilities": {"Fake": 0.8, "Real": 0.2}, "fake_probability": 0.8, "logits": [1.0, -1.0]}
    image = {key: face[key] for key in ("image", "label", "score", "probabilities", "fake_probability", "logits")}
    records = [face, {**face, "face": 2}, {**face, "face": 3}, {**image, "decided_by": "faces", "face_count": 3},
               error_record("b.jpg"), error_record("c.jpg")]
    for record in records:
        output.write_record(record)
    output.close()
    parts = sorted((tmp_path / "results.parquet").glob("part-*.parquet"))
    assert [part.name for part in parts] == ["part-000000.parquet", "part-000001.parquet"]
    assert [pq.read_metadata(part).num_rows for part in parts] == [4, 2]  # the image's 3 faces and itself, then 2
    assert [kind for kind, _ in events] == ["fsync", "replace"] * 2
    assert all(synced == renamed for (_, synced), (_, renamed) in zip(events[::2], events[1::2]))


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_line_results_are_on_disk_after_each_flush(tmp_path, suffix):
    """docs/guides/ray.md: JSON lines and CSV are flushed batch by batch, as in the local scan."""
    from fastvit_detect.ray import open_output

    path = tmp_path / f"results{suffix}"
    output = open_output(path, ["Fake", "Real"])
    output.write_record(error_record("a.jpg"))
    output.flush()
    assert "a.jpg" in path.read_text()
    output.close()
    if suffix == ".csv":  # by default the plain scan's columns, no face ones
        assert path.read_text().splitlines()[0].split(",")[:3] == ["image", "label", "score"]


def drive(monkeypatch, package, names, output, records, **options):
    """ray.classify with Ray's part replaced: no cluster is joined, each job's one block holds its names' records
    from ``records`` (as the actors would send them, Arrow tables of record_schema); everything else is the
    engine's own code."""
    from fastvit_detect.ray import records_table

    asked: list = []
    monkeypatch.setattr(ray_module.ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray_module, "init_local", lambda **_: asked.append("init_local"))
    monkeypatch.setattr(ray_module, "start_crash_ledger", lambda: asked.append("ledger"))

    def planned(todo, model, **planned_options):
        # which names, and how: a video is a task of its own (a batch of one)
        asked.append((list(todo), planned_options["batch_size"], planned_options.get("videos", False)))
        if not todo:
            return ray_module.Job(dataset=None, names={}, actors=0, threads_per_actor=1)
        return ray_module.Job(dataset=tuple(todo), names={name: name for name in todo}, actors=1, threads_per_actor=1)

    monkeypatch.setattr(ray_module, "classify_dataset", planned)
    labels = ["Fake", "Real"]
    faces = options.get("faces") is True

    def block(dataset):  # each job's block: the records of its own names
        return iter([records_table([record for record in records if record["image"] in dataset], labels, faces)])

    monkeypatch.setattr(ray_module, "_batches", block)
    return ray_module.classify(names, package, output, variant="fp32", **options), asked


def test_a_ray_scan_resumes_its_output_by_default(monkeypatch, vit_package, tmp_path):
    names = [str(tmp_path / f"{index}.png") for index in range(3)]
    for name in names:
        Image.new("RGB", (8, 8)).save(name)
    output = tmp_path / "results.jsonl"
    records = [error_record(name) for name in names]
    first, _ = drive(monkeypatch, vit_package, names, output, records)
    assert (first.found, first.already_done, first.actors) == (3, 0, 1)
    again, asked = drive(monkeypatch, vit_package, names, output, records)
    assert (again.found, again.already_done, again.actors) == (3, 3, 0)  # nothing left: no actor asked for
    assert asked == [([], 16, False), ([], 1, True)]  # nor the crash ledger started
    assert len(output.read_text().splitlines()) == 3


def test_a_ray_scan_with_faces_counts_faces_and_needs_the_face_detector(monkeypatch, packages, tmp_path):
    """summary.faces counts the face records written (0 when none was found, None without faces); a package
    without the face detector fails before Ray is started or joined."""
    from fastvit_detect.errors import MissingFaceDetectorError

    name = str(tmp_path / "a.png")
    Image.new("RGB", (8, 8)).save(name)
    face = {"image": name, "face": 1, "box": [0.0, 0.0, 1.0, 1.0], "face_score": 0.9, "label": "Fake",
            "score": 0.8, "probabilities": {"Fake": 0.8, "Real": 0.2}, "fake_probability": 0.8, "logits": [1.0, -1.0]}
    image = {**{key: face[key] for key in ("image", "label", "score", "probabilities", "fake_probability",
                                           "logits")}, "decided_by": "faces", "face_count": 2}
    summary, _ = drive(monkeypatch, packages["vit-faces"], [name], tmp_path / "faces.jsonl",
                       [face, {**face, "face": 2}, image], faces=True)
    assert summary.faces == 2
    none, _ = drive(monkeypatch, packages["vit-faces"], [name], tmp_path / "none.jsonl",
                    [{**image, "decided_by": "whole-image", "face_count": 0}], faces=True)
    assert none.faces == 0
    plain, _ = drive(monkeypatch, packages["vit"], [name], tmp_path / "plain.jsonl", [error_record(name)])
    assert plain.faces is None
    with pytest.raises(MissingFaceDetectorError):
        drive(monkeypatch, packages["vit"], [name], tmp_path / "refused.jsonl", [], faces=True)
    assert not (tmp_path / "refused.jsonl").exists()


def test_a_ray_scan_reports_progress_for_files_refused_before_the_job_then_per_block(monkeypatch, vit_package,
                                                                                       tmp_path):
    """A file that can't be read (gone, here) is an error record at once, counted in progress before any actor
    runs; then progress after each block. Without a progress callback nothing is called."""
    present, gone = str(tmp_path / "present.png"), str(tmp_path / "gone.png")
    Image.new("RGB", (8, 8)).save(present)
    calls: list = []
    results = tmp_path / "results.jsonl"

    def progress(done: int, total: int) -> None:  # what is on disk when progress is reported: flushed records
        calls.append((done, total, len(results.read_text().splitlines()) if results.exists() else 0))

    summary, _ = drive(monkeypatch, vit_package, [present, gone], results, [error_record(present)], progress=progress)
    assert [call[:2] for call in calls] == [(1, 2), (2, 2)] and summary.failed == 2
    assert calls[-1][2] == 2  # after the block: both records on disk
    quiet, _ = drive(monkeypatch, vit_package, [present, gone], tmp_path / "quiet.jsonl", [error_record(present)])
    assert quiet.failed == 2


def test_the_image_byte_cap_refuses_large_images_up_front_but_not_videos(monkeypatch, vit_package, tmp_path):
    """ray.classify's max_bytes: a larger local image gets its error record without being read (no actor asked);
    a video is held to the video limits by its actor instead, never to the image cap."""
    import numpy as np
    from video_clips import fake_segment_clip

    big = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), "uint8")).save(big)
    clip = fake_segment_clip(tmp_path / "clip.mp4", seconds=1)
    cap = 1_000
    assert big.stat().st_size > cap and clip.stat().st_size > cap
    summary, asked = drive(monkeypatch, vit_package, [str(big), str(clip)], tmp_path / "results.jsonl",
                           [error_record(str(clip))], max_bytes=cap)
    # no image for the actors; the clip as a video job, a batch of one, with the crash ledger there for it
    assert asked == ["ledger", ([], 16, False), ([str(clip)], 1, True)] and summary.failed == 2
    first = (tmp_path / "results.jsonl").read_text().splitlines()[0]
    assert "ImageTooLargeError" in first and str(big) in first


@pytest.mark.parametrize(("faces", "with_clip", "shipped_faces"), [(True, False, True), (False, True, True),
                                                                    (False, False, False)])
def test_a_shipped_model_carries_the_face_detector_when_images_or_videos_need_it(monkeypatch, packages, tmp_path,
                                                                                faces, with_clip, shipped_faces):
    """ship_model=True: the face detector's graphs go along for a scan that decides by faces, and for one with
    videos (their timeline looks for faces too); not otherwise."""
    from video_clips import fake_segment_clip

    shipped: list = []
    monkeypatch.setattr(ray_module.ShippedModel, "put",
                        classmethod(lambda cls, path, variant, ship_faces: shipped.append(ship_faces) or str(path)))
    names = [str(tmp_path / "a.png")]
    Image.new("RGB", (8, 8)).save(names[0])
    if with_clip:
        names.append(str(fake_segment_clip(tmp_path / "clip.mp4", seconds=1)))
    drive(monkeypatch, packages["vit-faces"], names, tmp_path / "results.jsonl",
          [error_record(name) for name in names], faces=faces, ship_model=True)
    assert shipped == [shipped_faces]


class FakeRay:
    """Ray's module as init_local and connected use it, recording the calls; ``node`` is the address the started
    Ray says it listens on."""

    def __init__(self, initialized: bool = False, node: str = "127.0.0.1") -> None:
        self.initialized, self.calls = initialized, []
        self.util = SimpleNamespace(get_node_ip_address=lambda: node)
        self._private = SimpleNamespace(ray_constants=SimpleNamespace(ENABLE_RAY_CLUSTER=True))
        self.context = SimpleNamespace(enable_progress_bars=True)
        self.data = SimpleNamespace(DataContext=SimpleNamespace(get_current=lambda: self.context))
        self.__version__ = "fake"

    def is_initialized(self) -> bool:
        return self.initialized

    def init(self, **options) -> None:
        self.calls.append(("init", options, self._private.ray_constants.ENABLE_RAY_CLUSTER))
        self.initialized = True

    def shutdown(self) -> None:
        self.calls.append(("shutdown",))
        self.initialized = False


def test_a_local_ray_binds_loopback_without_a_dashboard_and_clusters_off_while_it_starts(monkeypatch):
    from fastvit_detect.errors import FastVitDetectError

    fake = FakeRay()
    monkeypatch.setattr(ray_module, "ray", fake)
    ray_module.init_local()
    ((call, options, clusters_on),) = fake.calls
    assert call == "init"
    assert options == {"address": "local", "_node_ip_address": "127.0.0.1", "include_dashboard": False}
    assert clusters_on is False and fake._private.ray_constants.ENABLE_RAY_CLUSTER is True  # off, then back
    elsewhere = FakeRay(node="10.0.0.7")
    monkeypatch.setattr(ray_module, "ray", elsewhere)
    with pytest.raises(FastVitDetectError, match="would listen on 10.0.0.7, not 127.0.0.1"):
        ray_module.init_local(include_dashboard=True)
    assert [call[0] for call in elsewhere.calls] == ["init", "shutdown"]
    assert elsewhere.calls[0][1]["include_dashboard"] is True  # the caller's choice stands


def test_a_ray_already_joined_is_reused_at_once_and_left_running(monkeypatch):
    fake = FakeRay(initialized=True)
    monkeypatch.setattr(ray_module, "ray", fake)
    with connected() as seconds:
        assert seconds == 0.0
    assert fake.calls == [] and fake.initialized


def test_joining_is_quiet_unless_asked():
    """connected's default: Ray's logging cut to warnings, the workers' output kept in Ray's files."""
    assert inspect.signature(connected).parameters["verbose"].default is False


def test_a_started_ray_shows_no_progress_bars_of_its_own_and_is_shut_down_after(monkeypatch):
    """Our progress line is on stderr; Ray Data's bars would fight it for the terminal line."""
    fake = FakeRay()
    monkeypatch.setattr(ray_module, "ray", fake)
    with connected("local"):
        assert fake.initialized and fake.context.enable_progress_bars is False
    assert [call[0] for call in fake.calls] == ["init", "shutdown"]


def test_an_address_where_nothing_listens_is_refused_without_asking_ray(monkeypatch):
    """_join tries the host and port first (Ray itself retries such an address for minutes): a closed port on
    loopback is a ClusterUnreachableError naming the address and the cause, and ray.init is never called."""
    import socket

    from fastvit_detect.errors import ClusterUnreachableError

    fake = FakeRay()
    monkeypatch.setattr(ray_module, "ray", fake)
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(ClusterUnreachableError, match=f"Ray at 127.0.0.1:{port}: can't connect to 127.0.0.1:{port} "
                                                      r"\(Connection refused\)"):
        ray_module._join(f"127.0.0.1:{port}", 5, 30, False)
    assert fake.calls == []
    with socket.socket() as head:  # something listens: the probe passes and ray.init is asked, on loopback
        head.bind(("127.0.0.1", 0))
        head.listen()
        listening = f"127.0.0.1:{head.getsockname()[1]}"
        ray_module._join(listening, 5, 30, False)
    ((call, options, clusters_on),) = fake.calls
    assert call == "init" and options["address"] == listening and clusters_on is False


@pytest.mark.parametrize(("address", "expected"), [
    ("10.0.0.7:6379", ("10.0.0.7", 6379)), ("ray://head.example:10001", ("head.example", 10001)),
    ("[::1]:6379", ("::1", 6379)), ("auto", (None, 0)), ("head:", (None, 0)), ("head:port", (None, 0)),
    (":6379", (None, 0)),
    ("ray://h:1://x:2", ("h:1://x", 2))])  # only the first "://" ends the scheme
def test_the_host_and_port_tried_before_joining(address, expected):
    assert ray_module._host_port(address) == expected


def test_joining_gives_up_at_the_timeout_and_names_a_failure_to_join(monkeypatch):
    """Something answers at the address but ray.init hangs (not a Ray head): ClusterUnreachableError at the
    timeout, not minutes later; ray.init failing is one too, with its cause. Hosts other than loopback are
    joined as they are; localhost with Ray clusters off."""
    import socket
    import threading
    import time

    from fastvit_detect.errors import ClusterUnreachableError

    release = threading.Event()
    fake = FakeRay()
    monkeypatch.setattr(ray_module, "ray", fake)
    with socket.socket() as head:
        head.bind(("127.0.0.1", 0))
        head.listen()
        address = f"localhost:{head.getsockname()[1]}"
        monkeypatch.setattr(fake, "init", lambda **options: release.wait(30))
        waits: list = []
        real_join = threading.Thread.join

        def recorded_join(thread, timeout=None):
            if thread.name == "fastvit-detect-ray-join":
                waits.append((timeout, thread.daemon))
            return real_join(thread, timeout)

        monkeypatch.setattr(threading.Thread, "join", recorded_join)
        started = time.monotonic()
        with pytest.raises(ClusterUnreachableError, match=f"Ray at {address}: couldn't join within 0.5 s"):
            ray_module._join(address, 0.5, 30, False)
        assert time.monotonic() - started < 5
        # what is left of the timeout after the probe, never more; on a daemon thread, abandoned at the timeout
        ((wait, daemon),) = waits
        assert 0 <= wait <= 0.5 and daemon
        release.set()

        def refuse(**options):
            fake.calls.append(("init", options, fake._private.ray_constants.ENABLE_RAY_CLUSTER))
            raise ConnectionError("not a Ray head")

        monkeypatch.setattr(fake, "init", refuse)
        with pytest.raises(ClusterUnreachableError, match=f"can't join Ray at {address}: not a Ray head"):
            ray_module._join(address, 5, 30, False)
    assert fake.calls[-1][2] is False  # localhost: clusters off while joining
    fake.calls.clear()
    monkeypatch.setattr(ray_module, "_host_port", lambda address: (None, 0))  # "auto": nothing to probe
    monkeypatch.setattr(fake, "init", FakeRay.init.__get__(fake))
    ray_module._join("auto", 5, 30, True)
    ((_, options, clusters_on),) = fake.calls
    assert options == {"address": "auto", "logging_level": 30, "log_to_driver": True} and clusters_on is True


def test_ray_datas_console_log_is_cut_to_warnings_unless_verbose():
    import logging

    console = logging.StreamHandler()
    console.name, console.level = "console", logging.DEBUG
    logger = logging.getLogger("ray.data")
    logger.addHandler(console)
    try:
        with ray_module._ray_logs(verbose=False) as level:
            assert (level, console.level) == (logging.WARNING, logging.WARNING)
        assert console.level == logging.DEBUG
        with ray_module._ray_logs(verbose=True) as level:
            assert (level, console.level) == (logging.INFO, logging.DEBUG)
    finally:
        logger.removeHandler(console)


def test_a_stopped_ray_job_is_an_error_naming_the_last_line_of_the_cause(monkeypatch):
    from fastvit_detect.errors import FastVitDetectError

    class RayError(Exception):
        pass

    def batches(**_options):
        yield "first"
        raise RayError("ActorDiedError\n  traceback...\nOSError: /models/p: no such file\n")

    monkeypatch.setattr(ray_module, "ray", SimpleNamespace(exceptions=SimpleNamespace(RayError=RayError)))
    stream = ray_module._batches(SimpleNamespace(iter_batches=batches))
    assert next(stream) == "first"  # the blocks before the failure are delivered (and written)
    with pytest.raises(FastVitDetectError, match="run it again to resume\\): OSError: /models/p: no such file$"):
        next(stream)

    def silent(**_options):
        raise RayError("")
        yield  # a generator, as iter_batches is

    with pytest.raises(FastVitDetectError, match="resume\\): RayError$"):  # an empty message: its type
        next(ray_module._batches(SimpleNamespace(iter_batches=silent)))


def test_a_cluster_is_described_by_its_live_nodes_and_cpus(monkeypatch):
    monkeypatch.setattr(ray_module, "ray", SimpleNamespace(cluster_resources=lambda: {"CPU": 6.0},
                                                           nodes=lambda: [{"Alive": True}, {"Alive": False}]))
    assert ray_module.describe_cluster() == "1 node(s), 6 CPU(s)"
    monkeypatch.setattr(ray_module, "ray", SimpleNamespace(cluster_resources=dict, nodes=list))
    assert ray_module.describe_cluster() == "0 node(s), 0 CPU(s)"


def test_an_actor_classifies_a_batch_alone_image_by_image_when_the_batch_breaks(vit_package, tmp_path, monkeypatch):
    """Whatever broke a batch belongs to one image: each is tried alone, the others get their verdicts (as the
    local detector gives them) and the culprit's record carries its exception. A batch may come as an Arrow table
    (Ray Data's pyarrow format) as well as a dict."""
    import pyarrow as pa
    from conftest import noise_image

    from fastvit_detect import Detector
    from fastvit_detect.scan import result_record

    paths = []
    for index in range(3):
        paths.append(str(tmp_path / f"{index}.png"))
        Image.fromarray(noise_image(24, 30, seed=index)).save(paths[-1])
    classifier = ray_module.BatchClassifier(vit_package, variant="fp32", threads=1)
    real = classifier.detector.predict_batch

    def fragile(images, **options):
        if len(images) > 1:
            raise RuntimeError("the batch broke")
        if str(getattr(images[0], "name", images[0])).endswith("1.png"):
            raise ValueError("this image breaks the model")
        return real(images, **options)

    monkeypatch.setattr(classifier.detector, "predict_batch", fragile)
    table = classifier(pa.table({"path": paths, "file": paths}))
    rows = {row["image"]: row for row in table.to_pylist()}
    assert rows[paths[1]]["error"] == {"type": "ValueError", "message": "this image breaks the model"}
    expected = Detector.load(vit_package, variant="fp32", threads=1).predict_batch([paths[0], paths[2]])
    for path, prediction in zip((paths[0], paths[2]), expected):
        assert rows[path]["error"] is None and rows[path]["label"] == result_record(path, prediction)["label"]
        assert rows[path]["logits"] == pytest.approx(result_record(path, prediction)["logits"])


def test_an_actor_gives_each_clip_the_local_scans_record_and_a_broken_clip_its_error(vit_package, tmp_path):
    """videos=True: a clip's record is scan.video_record of Detector.predict_video's result, a failed clip's is its
    error; the task goes on."""
    import json

    from video_clips import fake_segment_clip

    from fastvit_detect import Detector
    from fastvit_detect.scan import video_record

    clip = str(fake_segment_clip(tmp_path / "clip.mp4", seconds=3, fake=(1, 2)))
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 64)  # an MP4 header and nothing to decode
    classifier = ray_module.BatchClassifier(vit_package, variant="fp32", threads=1, videos=True)
    rows = list(ray_module.table_records(classifier({"path": [clip, str(broken)], "file": [clip, str(broken)]})))
    local = video_record(clip, Detector.load(vit_package, variant="fp32", threads=1).predict_video(clip, faces=False))
    assert json.dumps(rows[0]) == json.dumps(json.loads(json.dumps(local)))
    assert rows[1]["image"] == str(broken) and rows[1]["error"]["type"].startswith("Video")


def test_a_clip_with_no_decodable_frame_keeps_its_record_through_parquet():
    from fastvit_detect.ray import records_table, table_records

    record = {"image": "empty.mp4", "video": True, "label": None, "score": None, "fake_probability": None,
              "probabilities": {}, "sampled_frames": 0}
    assert list(table_records(records_table([record], ["Fake", "Real"]))) == [record]


def test_overwrite_removes_the_earlier_parquet_parts(tmp_path):
    from fastvit_detect.ray import ParquetOutput

    folder = tmp_path / "results.parquet"
    first = ParquetOutput(folder, ["Fake", "Real"])
    first.write_record(error_record("a.jpg"))
    first.close()
    again = ParquetOutput(folder, ["Fake", "Real"], overwrite=True)
    assert again.done == set() and not list(folder.glob("part-*"))


def test_a_ray_scan_starts_a_local_ray_when_none_is_joined(monkeypatch, vit_package, tmp_path):
    name = str(tmp_path / "a.png")
    Image.new("RGB", (8, 8)).save(name)
    monkeypatch.setattr(ray_module.ray, "is_initialized", lambda: False)
    started: list = []
    monkeypatch.setattr(ray_module, "init_local", lambda **_: started.append(True))
    monkeypatch.setattr(ray_module, "classify_dataset",
                        lambda todo, model, **_: ray_module.Job(None, {}, 0, 1))
    with pytest.raises(Exception, match="came back from no actor"):  # the stand-in job returns nothing
        ray_module.classify([name], vit_package, tmp_path / "results.jsonl", variant="fp32")
    assert started == [True]


def test_a_local_path_that_cant_be_read_is_an_error_record_before_the_job(tmp_path):
    """Not missing but unreadable (a path through a file): ImageNotFoundError naming the cause, no actor asked."""
    from fastvit_detect.errors import ImageNotFoundError

    (tmp_path / "file.png").write_bytes(b"x")
    problem = ray_module._unreadable(str(tmp_path / "file.png" / "inside.png"), 1000)
    assert isinstance(problem, ImageNotFoundError) and "can't read file: Not a directory" in str(problem)
    assert ray_module._unreadable("s3://bucket/key.png", 1000) is None  # URIs are the actors' to read


def test_a_batch_without_the_needed_columns_is_refused_naming_the_ones_it_has(vit_package):
    import pyarrow as pa

    classifier = ray_module.BatchClassifier(vit_package, variant="fp32", threads=1)
    for batch in ({"path": ["a.png"], "data": [b""]}, pa.table({"path": ["a.png"], "data": [b""]})):
        with pytest.raises(ValueError, match=r"has no 'file', only \['path', 'data'\]"):
            classifier(batch)


def test_a_summary_of_no_job_had_no_actors():
    assert ray_module.RaySummary().actors == 0 and ray_module.RaySummary().duplicates_dropped == 0
