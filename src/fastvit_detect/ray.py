"""Classify images on a Ray cluster with Ray Data: the same package, preprocessing and records as ``scan``.

Needs the ``ray`` extra (``pip install 'fastvit-detect[ray]'``); nothing else in the runtime imports this module.

Three layers, each usable alone:

- :class:`BatchClassifier`, a callable class for ``Dataset.map_batches``. Each actor loads the package once and
  turns batches of images into result records: encoded bytes plus their paths
  (``ray.data.read_binary_files(..., include_paths=True)``), or files the actor reads itself. Decoding happens
  here, with the runtime's own preprocessing (EXIF orientation, the HF resize), not with Ray's ``read_images``. A
  bad image is a row with an ``error``, never a failed task.
- :func:`classify_dataset`: files to a lazy Dataset of records. The Dataset holds the files' names, and the
  actors read them: Ray Data's own readers parse a local path as a URL, which drops tabs and line breaks from a
  file name and fails the whole job on such a file.
- :func:`classify`: files to a results file (JSON lines, CSV or a Parquet directory) with the local scan's
  resume: images already in the output are skipped. A local video is one task (a batch of one) whose record is
  the local scan's for it; a clip that fails is an error record.

A Ray this module starts listens on 127.0.0.1 only (:func:`init_local`): Ray's ports have no authentication
of their own beyond a cluster token, and a cluster that others reach is for an operator to set up (``ray start``)
and join with an address.

Exactly once: Ray retries the tasks of an actor that died, so a batch may come back twice. Only the driver
writes, and it writes an image's record only if the output doesn't hold that image yet; an interrupted job
loses at most the records not yet flushed, and those images are simply classified again on resume.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import socket
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Absolute imports (this module is fastvit_detect.ray; ``import ray`` is the Ray package).
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray
import ray.data

from .detector import DEFAULT_BATCH_SIZE, Detector, choose_variant, decides_by_faces
from .errors import ClusterUnreachableError, FastVitDetectError, ImageNotFoundError, WorkerCrashError
from .faces import FaceOptions, face_detector_variants
from .httpapi import named_image
from .media import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, file_status_problem, find_images
from .package import ModelPackage
from .progress import Progress
from .scan import FACE_KEY, ScanOutput, ScanSummary, _identity, faces_records, result_record, video_record
from .timeline import VideoResult, has_face_detector
from .video import find_videos, is_video

FORMATS = ("jsonl", "csv", "parquet")
PARQUET_ROWS_PER_FILE = 10_000
_PREDICTION_KEYS = ("image", "label", "score", "probabilities", "fake_probability", "logits")
_FACE_KEYS = (FACE_KEY, "box", "face_score")  # a face record's, before its prediction's (scan.faces_records)
_DECISION_KEYS = ("decided_by", "face_count")  # an image record's, after its prediction's, in a scan with faces
_VIDEO_KEYS = ("video", "decided_by", "duration", "sampled_frames", "suspicious_ranges")  # scan.video_record's
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_PART = re.compile(r"part-\d{6,}\.parquet")  # the files ParquetOutput writes; any others are left alone
LOOPBACK = "127.0.0.1"
JOIN_TIMEOUT_S = 60.0
"""How long joining a cluster (:func:`connected` with an address) may take before ClusterUnreachableError."""


# --- records as Arrow tables --------------------------------------------------------------------------------


def record_schema(labels: Sequence[str], faces: bool = False) -> pa.Schema:
    """The Arrow form of scan's records: one column per key of a JSON line, ``error`` null for a prediction.
    ``faces``: a scan with faces' records (:func:`fastvit_detect.scan.faces_records`): the face columns are null
    in an image's record, the decision columns null in a face's. A video's record
    (:func:`fastvit_detect.scan.video_record`) fills the video columns, null in every other record."""
    face_columns = [(FACE_KEY, pa.int32()), ("box", pa.list_(pa.float64())), ("face_score", pa.float64()),
                    ("decided_by", pa.string()), ("face_count", pa.int32())] if faces else []
    video_columns = [("video", pa.bool_()), *([] if faces else [("decided_by", pa.string())]),
                     ("duration", pa.float64()), ("sampled_frames", pa.int32()),
                     ("suspicious_ranges", pa.list_(pa.list_(pa.float64())))]
    return pa.schema([
        ("image", pa.string()),
        *face_columns,
        *video_columns,
        ("label", pa.string()),
        ("score", pa.float64()),
        ("probabilities", pa.struct([(label, pa.float64()) for label in labels])),
        ("fake_probability", pa.float64()),
        ("logits", pa.list_(pa.float32())),  # the model's own dtype: exact
        ("error", pa.struct([("type", pa.string()), ("message", pa.string())])),
    ])


def records_table(records: Sequence[Mapping[str, Any]], labels: Sequence[str], faces: bool = False) -> pa.Table:
    """Records from :func:`fastvit_detect.scan.result_record` (or, ``faces``, ``faces_records``) as a table of
    :func:`record_schema`; names that aren't UTF-8, in ``image`` and error messages, keep their bytes as ``\\xNN``
    escapes (Arrow strings are UTF-8)."""
    return pa.Table.from_pylist([_arrow_record(record) for record in records], schema=record_schema(labels, faces))


def _arrow_record(record: Mapping[str, Any]) -> dict[str, Any]:
    stored = {**record, "image": _parquet_text(record["image"])}
    if "error" in record:
        stored["error"] = {**record["error"], "message": _parquet_text(record["error"]["message"])}
    return stored


def table_records(table: pa.Table) -> Iterator[dict[str, Any]]:
    """The records of a :func:`records_table` table, key for key as ``result_record`` made them."""
    for row in table.to_pylist():
        if row["error"] is not None:
            yield {"image": row["image"], "error": row["error"]}
        elif row.get("video"):
            if row["label"] is None:  # a clip with no decodable frame
                yield {"image": row["image"], "video": True, "label": None, "score": None, "fake_probability": None,
                       "probabilities": {}, "sampled_frames": row["sampled_frames"]}
            else:
                yield {**{key: row[key] for key in _PREDICTION_KEYS}, **{key: row[key] for key in _VIDEO_KEYS}}
        elif row.get(FACE_KEY) is not None:
            yield {"image": row["image"], **{key: row[key] for key in _FACE_KEYS},
                   **{key: row[key] for key in _PREDICTION_KEYS[1:]}}
        else:
            yield {**{key: row[key] for key in _PREDICTION_KEYS},
                   **{key: row[key] for key in _DECISION_KEYS if row.get(key) is not None}}


# --- the actor ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShippedModel:
    """A model package's files in Ray's object store, put there once by the driver: for workers that can't see
    the driver's disk. Each actor writes them to a private temporary folder, loads them, and deletes them."""

    files: ray.ObjectRef  # dict[str, bytes]: file name -> contents
    variant: str

    @classmethod
    def put(cls, path: str | os.PathLike[str], variant: str = "auto", faces: bool = False) -> ShippedModel:
        """Ship the package's JSON files and one variant's graph and weights (not the other variants), and with
        ``faces`` the face detector's graphs."""
        package = ModelPackage.open(path)
        chosen = package.variant(variant)
        package.verify(chosen)
        shipped = [chosen, *(face_detector_variants(package).values() if faces else [])]
        paths = [*sorted(package.root.glob("*.json")), *(path for item in shipped for path, _, _ in item.files)]
        files = {item.name: item.read_bytes() for item in paths}
        return cls(ray.put(files), chosen.name)

    @contextmanager
    def unpacked(self) -> Iterator[str]:
        """The package in a private temporary folder, deleted on leaving the block: onnxruntime holds the graph
        in memory once the session exists, so load it inside."""
        files: dict[str, bytes] = ray.get(self.files)
        with tempfile.TemporaryDirectory(prefix="fastvit-detect-model-") as folder:
            for name, data in files.items():
                Path(folder, name).write_bytes(data)
            yield folder


class CrashLedger:
    """Counts, across actor restarts, how often work began and never finished: the trace of a crashed worker.

    Ray restarts a dead actor and retries its task for ever, so an image that kills the process every time it is
    decoded (a decoder crash, an out-of-memory kill) would stall the job. With a ledger, a batch that crashed
    once is redone image by image, and an image that crashed its worker on its
    own (:attr:`BatchClassifier.crashes_before_giving_up` times) becomes an error record. Only work with
    crashes in its history stays in the ledger.
    """

    def __init__(self) -> None:
        self._running: set[str] = set()  # begun and not yet ended
        self._crashes: dict[str, int] = {}

    def begin(self, key: str) -> int:
        """Mark ``key`` started; returns how many earlier starts never finished."""
        crashes = self._crashes.pop(key, 0) + (key in self._running)
        if crashes:
            self._crashes[key] = crashes
        self._running.add(key)
        return crashes

    def end(self, key: str) -> None:
        self._running.discard(key)
        self._crashes.pop(key, None)


def start_crash_ledger() -> Any:
    """A :class:`CrashLedger` actor for one job (no CPU reserved: it only counts)."""
    return ray.remote(num_cpus=0, max_restarts=-1)(CrashLedger).remote()


def _assigned_cpus() -> int:
    """The CPUs Ray reserved for this actor (at least 1)."""
    if not ray.is_initialized():  # not in a worker; asking for the runtime context would start a Ray
        return 1
    try:
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
    except Exception:  # noqa: BLE001 - outside a Ray worker: one thread is the safe default
        return 1
    return max(1, int(cpus))


def _has_column(batch: Any, name: str) -> bool:
    return name in (batch.column_names if isinstance(batch, pa.Table) else batch)


def _column(batch: Any, name: str) -> list[Any]:
    if not _has_column(batch, name):
        have = batch.column_names if isinstance(batch, pa.Table) else list(batch)
        raise ValueError(f"BatchClassifier needs a 'path' column and a 'bytes' or 'file' column "
                         f"(ray.data.read_binary_files(..., include_paths=True)); this batch has no {name!r}, "
                         f"only {list(have)}")
    column = batch.column(name).to_pylist() if isinstance(batch, pa.Table) else batch[name]
    return column.tolist() if hasattr(column, "tolist") else list(column)


ImageSource = bytes | str | FastVitDetectError
"""One image as an actor holds it: encoded bytes, a local path the detector reads, or why it couldn't be read."""


class BatchClassifier:
    """A callable class for ``Dataset.map_batches``: images in, scan records out.

    Takes batches with a ``path`` column, the image's name in the records, and either a ``bytes`` column of
    encoded images, as ``ray.data.read_binary_files(..., include_paths=True)`` makes them, or a ``file`` column
    (binary: ``os.fsencode`` of an absolute local path or of a URI) that the actor reads itself, a local file
    through the runtime's own checks (regular files only, ``max_bytes``), a URI through pyarrow's file system for
    its scheme. Any batch format. Returns a ``pyarrow.Table`` of :func:`record_schema`: ``image`` (the path),
    ``label``, ``score``, ``probabilities``, ``fake_probability`` and ``logits``, or ``error`` (``type``,
    ``message``) for an image that failed.

    ``model``: a package path every worker can read (shared storage), or a :class:`ShippedModel`.
    ``threads``: onnxruntime intra-op threads; default the CPUs Ray reserved for the actor (``num_cpus``).
    ``crash_ledger``: a :func:`start_crash_ledger` actor; without one, an image that kills its worker every
    time is retried by Ray for ever. The other options are :meth:`Detector.load`'s; with a detector that decides by
    faces (``faces``), the records are :func:`fastvit_detect.scan.faces_records`'s, as the local scan writes them.
    ``videos``: the rows are videos, each classified whole (:meth:`Detector.predict_video`, with faces where the
    package has a face detector, as the local scan does) into :func:`fastvit_detect.scan.video_record`'s record; a
    clip that fails, whatever the cause, is an error record.
    """

    crashes_before_giving_up = 2
    """Deaths of a worker classifying one image on its own after which the image gets a WorkerCrashError."""

    def __init__(
        self,
        model: str | os.PathLike[str] | ShippedModel,
        variant: str = "auto",
        threads: int | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        max_bytes: int | None = DEFAULT_MAX_BYTES,
        jpeg_draft: bool = False,
        crash_ledger: ray.actor.ActorHandle | None = None,
        faces: bool | str = "auto",
        face_options: FaceOptions | None = None,
        videos: bool = False,
    ) -> None:
        self.crash_ledger = crash_ledger
        self.videos = videos
        if isinstance(model, ShippedModel):
            package: AbstractContextManager[str | os.PathLike[str]] = model.unpacked()
            variant = model.variant
        else:
            package = nullcontext(model)
        with package as path:
            self.detector = Detector.load(path, variant=variant, threads=threads or _assigned_cpus(),
                                          max_pixels=max_pixels, max_bytes=max_bytes, jpeg_draft=jpeg_draft,
                                          faces=faces, face_options=face_options)
            self.faces = self.detector.faces_first
            self.video_faces = videos and has_face_detector(self.detector.package)
            if self.faces or self.video_faces:  # opened here, while a shipped package's files exist, and checked once
                self.detector.face_detector  # noqa: B018
        self.batch_size = batch_size
        self.max_bytes = max_bytes
        self.labels = self.detector.labels
        self._filesystems: dict[tuple[str, str], pafs.FileSystem] = {}

    def __call__(self, batch: Any) -> pa.Table:
        paths = [str(path) for path in _column(batch, "path")]
        if _has_column(batch, "bytes"):
            sources: list[ImageSource] = [data or b"" for data in _column(batch, "bytes")]
        else:
            sources = [self._source(os.fsdecode(file), path) for file, path in zip(_column(batch, "file"), paths)]
        ledger = self.crash_ledger
        if ledger is None:
            results = self._predict(sources, paths)
        else:
            key = hashlib.sha256("\0".join(paths).encode("utf-8", "surrogatepass")).hexdigest()
            if ray.get(ledger.begin.remote(key)):
                results = [self._predict_alone(ledger, sources[index], paths[index]) for index in range(len(paths))]
            else:
                results = self._predict(sources, paths)
            ray.get(ledger.end.remote(key))
        if self.videos:
            records = [video_record(path, result) if isinstance(result, VideoResult) else result_record(path, result)
                       for path, result in zip(paths, results)]
        elif self.faces:
            records = [record for path, result in zip(paths, results) for record in faces_records(path, result)]
        else:
            records = [result_record(path, result) for path, result in zip(paths, results)]
        return records_table(records, self.labels, self.faces)

    def _source(self, file: str, path: str) -> ImageSource:
        """A local file (``file://`` URIs too) stays a path: the detector reads it, with its checks. Another URI
        is read here, at most ``max_bytes`` + 1 bytes (the detector refuses more)."""
        location = _source(file)
        if not is_uri(location):
            return location
        try:
            filesystem, inside = self._filesystem(location)
            with filesystem.open_input_stream(inside) as stream:
                # read() with no size, not read(-1): pyarrow 26 raises SystemError for a negative size.
                return bytes(stream.read() if self.max_bytes is None else stream.read(self.max_bytes + 1))
        except (OSError, ValueError, pa.ArrowException) as exc:
            return ImageNotFoundError(f"{path}: can't read it: {exc}", path)

    def _filesystem(self, uri: str) -> tuple[pafs.FileSystem, str]:
        """pyarrow's file system for ``uri`` and the path in it. A bucket's file system (``s3://bucket/``) is made
        once and takes the rest of each URI as it is: parsing each URI would refuse keys that aren't valid in a
        URI (a space, a line break), which the listing gives as they are."""
        scheme, rest = uri.split("://", 1)
        bucket = rest.split("/", 1)[0]
        if (scheme, bucket) not in self._filesystems:
            filesystem, root = pafs.FileSystem.from_uri(f"{scheme}://{bucket}/")
            if root.strip("/") != bucket:  # not a bucket store (hdfs://host:port/...): each URI parsed on its own
                return pafs.FileSystem.from_uri(uri)
            self._filesystems[(scheme, bucket)] = filesystem
        return self._filesystems[(scheme, bucket)], rest

    def _predict_alone(self, ledger: Any, source: ImageSource, path: str) -> Any:
        crashes = int(ray.get(ledger.begin.remote(path)))
        if crashes >= self.crashes_before_giving_up:
            result: Any = WorkerCrashError(f"{path}: the worker process died {crashes} times classifying this image "
                                           "on its own (a decoder crash or out of memory); not tried again")
        else:
            result = self._predict([source], [path])[0]
        ray.get(ledger.end.remote(path))
        return result

    def _predict(self, sources: Sequence[ImageSource], paths: Sequence[str]) -> list[Any]:
        results: list[Any] = list(sources)  # an image that couldn't be read keeps its error
        readable = [index for index, source in enumerate(sources) if not isinstance(source, FastVitDetectError)]

        # Each attempt gets fresh file objects: a failed attempt may have read some to the end.
        def images(indices: Iterable[int]) -> list[Any]:
            return [_image(sources[index], paths[index]) for index in indices]

        predict = self._predict_videos if self.videos else self._predict_faces if self.faces else \
            self.detector.predict_batch
        predictions: list[Any] = []
        try:
            predictions.extend(predict(images(readable), batch_size=self.batch_size, errors="return"))
        except Exception:  # noqa: BLE001 - whatever broke the batch belongs to one image: find it, keep the rest
            predictions = []
            for index in readable:
                try:
                    predictions.extend(predict(images([index]), errors="return"))
                except Exception as exc:  # noqa: BLE001 - this image's record carries it
                    predictions.append(exc)
        for index, prediction in zip(readable, predictions):
            results[index] = prediction
        return results


    def _predict_faces(self, images: list[Any], batch_size: int = DEFAULT_BATCH_SIZE, errors: str = "return"
                       ) -> list[Any]:
        return list(self.detector.predict_faces_iter(images, batch_size=batch_size, errors="return"))

    def _predict_videos(self, videos: list[Any], batch_size: int = DEFAULT_BATCH_SIZE, errors: str = "return"
                        ) -> list[Any]:
        """Each clip's VideoResult, or the exception it failed with: a clip's failure is its record, not the task's."""
        results: list[Any] = []
        for video in videos:
            try:
                results.append(self.detector.predict_video(video, faces=self.video_faces))
            except Exception as exc:  # noqa: BLE001 - this clip's record carries it
                results.append(exc)
        return results


def _image(source: ImageSource, path: str) -> Any:
    return named_image(source, path) if isinstance(source, bytes) else source


# --- listing ------------------------------------------------------------------------------------------------


def is_uri(source: str) -> bool:
    """``s3://...``, ``gs://...``, ``file://...``: a source for pyarrow's file systems rather than a local path."""
    return _URI.match(source) is not None


def list_images(sources: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[str]:
    """Image and video names from folders (recursively, by the local scan's suffixes), files and URIs, in order, once
    each.

    A local folder lists as ``scan`` lists it (the same names); a URI folder (``s3://bucket/photos``) lists
    through pyarrow's file system for its scheme, its images named ``scheme://path``. Any other source is one
    image, whether or not it exists: a missing file becomes its error record, not a failed job.
    """
    return [name for name, _key in _listing(sources)]


def _listing(sources: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[tuple[str, str]]:
    """:func:`list_images`' names, each with its :func:`image_identity` (computed once: it costs system calls)."""
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    names: list[str] = []
    for source in sources:
        text = os.fspath(source)
        if is_uri(text):
            names.extend(_list_uri(text))
        elif os.path.isdir(text):
            names.extend(str(path) for path in sorted({*find_images(text), *find_videos(text)}))
        else:
            names.append(text)
    seen: set[str] = set()
    unique = []
    for name in names:
        key = image_identity(name)
        if key not in seen:
            seen.add(key)
            unique.append((name, key))
    return unique


def _list_uri(uri: str) -> list[str]:
    scheme = uri.split("://", 1)[0]
    try:
        filesystem, root = pafs.FileSystem.from_uri(uri)
        info = filesystem.get_file_info(root)
        if info.type != pafs.FileType.Directory:
            return [uri]
        listing = filesystem.get_file_info(pafs.FileSelector(root, recursive=True))
        # FIFOs and devices list as FileType.Unknown. Reading a path decodes it: one that isn't UTF-8 fails here.
        files = [entry.path for entry in listing if entry.type == pafs.FileType.File]
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise FastVitDetectError(f"{uri}: can't list it: {exc}") from exc
    return sorted(f"{scheme}://{path}" for path in files if os.path.splitext(path)[1].lower() in IMAGE_SUFFIXES)


def image_identity(name: str) -> str:
    """What makes two names the same image: the resolved path for a local file (``file://`` URIs included),
    the URI as written otherwise."""
    if name.startswith("file://"):
        return _identity(name[len("file://"):])
    return name if is_uri(name) else _identity(name)


def _unreadable(name: str, max_bytes: int | None) -> FastVitDetectError | None:
    """Why the driver won't hand this local file to the actors, or None: the runtime's own checks before a read,
    made early so that no actor spends time on it (the actor's detector makes them again). URIs are left to the
    actors: object stores hold only regular objects, and the actor reads at most ``max_bytes`` + 1."""
    if is_uri(name):
        return None
    try:
        status = os.stat(name)
    except FileNotFoundError:
        return ImageNotFoundError(f"{name}: no such file", name)
    except OSError as exc:
        return ImageNotFoundError(f"{name}: can't read file: {exc.strerror or exc}", name)
    return file_status_problem(status, name, max_bytes)


# --- the dataset --------------------------------------------------------------------------------------------


@dataclass
class Job:
    """A planned run: the Dataset of records for the images to read, and the keys its records name them by."""

    dataset: ray.data.Dataset | None
    names: dict[str, str]  # the records' image (the Dataset's path) -> the image's name
    actors: int
    threads_per_actor: int | None


def classify_dataset(
    names: Sequence[str],
    model: str | os.PathLike[str] | ShippedModel,
    *,
    variant: str = "auto",
    actors: int | None = None,
    threads_per_actor: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
    jpeg_draft: bool = False,
    runtime_env: dict[str, Any] | None = None,
    classifier: type[BatchClassifier] = BatchClassifier,
    crash_ledger: ray.actor.ActorHandle | None = None,
    faces: bool | str = "auto",
    face_options: FaceOptions | None = None,
    videos: bool = False,
) -> Job:
    """The lazy Dataset that reads ``names`` (local paths or URIs) and classifies them on ``actors`` actors;
    ``videos``: the names are videos, a record each (see :class:`BatchClassifier`).

    The Dataset holds each image's key (its ``path`` in the records: the absolute path or URI, ``\\xNN``-escaped
    where it isn't UTF-8) and the file to read; the actors read the files. ``Job.names`` maps keys back to names.
    ``actors``: default as many as the cluster's CPUs allow at ``threads_per_actor`` CPUs each.
    """
    if not names:
        return Job(None, {}, 0, threads_per_actor)
    by_key: dict[str, str] = {}
    rows = []
    for name in names:
        source = _source(name)
        key = _parquet_text(source)
        if key in by_key:  # a name that isn't UTF-8 beside one spelling its escape: a NUL makes the key unique
            key = f"{key}\0{len(by_key)}"
        by_key[key] = name
        rows.append({"path": key, "file": os.fsencode(source)})
    dataset: ray.data.Dataset = ray.data.from_items(rows)
    cpus = int(ray.cluster_resources().get("CPU", 1))
    actors = actors or max(1, cpus // (threads_per_actor or 1))
    if videos:  # a clip is a task: no more actors (each loading the model) than clips
        actors = min(actors, len(rows))
    dataset = dataset.map_batches(
        classifier,
        batch_size=batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=threads_per_actor or 1,
        fn_constructor_kwargs=dict(model=model, variant=variant, threads=threads_per_actor, batch_size=batch_size,
                                   max_pixels=max_pixels, max_bytes=max_bytes, jpeg_draft=jpeg_draft,
                                   crash_ledger=crash_ledger, faces=faces, face_options=face_options,
                                   videos=videos),
        runtime_env=runtime_env,
    )
    return Job(dataset, by_key, actors, threads_per_actor)


def _source(name: str) -> str:
    """What an actor reads for the image ``name``: the absolute path of a local file (``file://`` URIs
    included), the URI otherwise."""
    if name.startswith("file://"):
        return os.path.abspath(name[len("file://"):])
    return name if is_uri(name) else os.path.abspath(name)


def _named_in_message(message: str, key: str, name: str) -> str:
    """An actor's error message names the file it read (``key``, less a NUL suffix); name it as listed."""
    shown = key.split("\0", 1)[0]
    return message if shown == name else message.replace(shown, name)


# --- outputs ------------------------------------------------------------------------------------------------


def output_format(path: str | os.PathLike[str], fmt: str | None) -> str:
    if fmt is None:
        suffix = Path(path).suffix.lower()
        fmt = {".csv": "csv", ".parquet": "parquet"}.get(suffix, "jsonl")
    if fmt not in FORMATS:
        raise FastVitDetectError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    return fmt


def _parquet_text(text: str) -> str:
    """Parquet strings are UTF-8: a file name that isn't (lone surrogates in Python) keeps its raw bytes as
    ``\\xNN`` escapes, in the image column and in error messages alike."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


class ParquetOutput:
    """A folder of Parquet files holding scan records, resumable like scan's files.

    Records are buffered and written ``rows_per_file`` at a time (and at the end): each file is written under a
    temporary name and renamed into place, so a file is either whole or absent. An interrupted run loses the
    buffered records only; their images are classified again on resume.
    """

    def __init__(self, path: Path, labels: Sequence[str], overwrite: bool = False,
                 rows_per_file: int | None = None, faces: bool = False) -> None:
        self.path = path
        self.labels = list(labels)
        self.schema = record_schema(labels, faces)
        self.rows_per_file = rows_per_file or PARQUET_ROWS_PER_FILE
        if path.exists() and not path.is_dir():
            raise FastVitDetectError(f"{path}: not a directory; Parquet results are a folder of part files")
        path.mkdir(parents=True, exist_ok=True)
        for leftover in path.glob(".part-*.tmp"):  # a run killed while writing
            leftover.unlink()
        parts = sorted(part for part in path.glob("part-*.parquet") if _PART.fullmatch(part.name))
        if overwrite:
            for part in parts:
                part.unlink()
            parts = []
        self.done: set[str] = set()
        for part in parts:
            self.done.update(image_identity(name) for name in self._read_images(part))
        self._next = 1 + max((int(part.name[5:-8]) for part in parts), default=-1)
        self._pending: list[dict[str, Any]] = []

    def _read_images(self, part: Path) -> list[str]:
        try:
            schema = pq.read_schema(part)
            if schema.remove_metadata() != self.schema:
                raise FastVitDetectError(f"{part}: its columns aren't this model's records ({self.schema.names}, "
                                         f"labels {self.labels}); write to another folder or pass --overwrite")
            return pq.read_table(part, columns=["image"]).column("image").to_pylist()
        except (OSError, pa.ArrowException) as exc:
            raise FastVitDetectError(f"{part}: can't read the earlier results to resume: {exc}") from exc

    def holds(self, name: str, key: str) -> bool:
        """Whether the image ``name`` (whose :func:`image_identity` is ``key``) is in the folder already."""
        stored = _parquet_text(name)
        return (key if stored == name else image_identity(stored)) in self.done

    def write_record(self, record: Mapping[str, Any]) -> None:
        self._pending.append(_arrow_record(record))
        # Never between an image's face records and its own: a file holds whole images, so resuming is exact.
        if len(self._pending) >= self.rows_per_file and FACE_KEY not in record:
            self._write_part()

    def flush(self) -> None:
        """Nothing between files: a Parquet file can't be appended to."""

    def _write_part(self) -> None:
        if not self._pending:
            return
        final = self.path / f"part-{self._next:06d}.parquet"
        temporary = self.path / f".part-{self._next:06d}.tmp"
        with open(temporary, "wb") as handle:
            pq.write_table(pa.Table.from_pylist(self._pending, schema=self.schema), handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, final)
        self._next += 1
        self._pending = []

    def close(self) -> None:
        self._write_part()


class _LineOutput:
    """scan's JSON-lines or CSV writer, seen through the interface the job needs."""

    def __init__(self, path: Path, labels: Sequence[str], fmt: str, overwrite: bool, faces: bool = False) -> None:
        self._output = ScanOutput(path, labels, fmt, overwrite, faces)  # cuts a record an interrupted run tore
        self.done = self._output.done

    def holds(self, _name: str, key: str) -> bool:
        return key in self.done

    def write_record(self, record: Mapping[str, Any]) -> None:
        self._output.write_record(dict(record))

    def flush(self) -> None:
        self._output.flush()

    def close(self) -> None:
        self._output.close()


def open_output(path: str | os.PathLike[str], labels: Sequence[str], fmt: str | None = None,
                overwrite: bool = False, faces: bool = False) -> ParquetOutput | _LineOutput:
    """The results file (or Parquet folder) at ``path``, ready to resume; ``faces``: for a scan with faces."""
    fmt = output_format(path, fmt)
    if fmt == "parquet":
        return ParquetOutput(Path(path), labels, overwrite, faces=faces)
    return _LineOutput(Path(path), labels, fmt, overwrite, faces)


# --- the job ------------------------------------------------------------------------------------------------


@dataclass
class RaySummary(ScanSummary):
    actors: int = 0
    threads_per_actor: int | None = None
    duplicates_dropped: int = 0  # records of retried batches that arrived twice


def classify(
    sources: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    model: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    fmt: str | None = None,
    overwrite: bool = False,
    variant: str = "auto",
    actors: int | None = None,
    threads_per_actor: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
    jpeg_draft: bool = False,
    ship_model: bool = False,
    runtime_env: dict[str, Any] | None = None,
    progress: Progress | None = None,
    classifier: type[BatchClassifier] = BatchClassifier,
    faces: bool | str = "auto",
    face_options: FaceOptions | None = None,
) -> RaySummary:
    """Classify the images in ``sources`` not yet in ``output`` on the connected Ray cluster.

    ``sources``: folders, files or URIs (see :func:`list_images`). ``output``: ``.jsonl`` (default), ``.csv`` or
    a ``.parquet`` folder, or ``fmt``. ``model``: a package path every node can read, or with
    ``ship_model=True`` a path on the driver whose files go to the workers once through the object store.
    ``max_bytes``: larger local files get an error record without being read (larger objects from URIs, once
    read at the actor). Uses the Ray this process joined, or starts a local one (:func:`init_local`).
    ``faces``, ``face_options``: as :meth:`Detector.load`; a scan that decides by faces writes the local scan's
    records, a record per face (at most ``face_options.max_faces``) before the image's own. Local files that are
    videos by content (those a folder lists by their video suffix, and image-named ones) get the local scan's
    record each (:func:`fastvit_detect.scan.video_record`), a task each, after the images; a URI is an image.
    """
    package = ModelPackage.open(model)  # a bad package or variant fails here, not in every actor
    # The driver chooses for every actor (auto: the fastest variant on this machine), so a scan's records all come
    # from one variant and runtime.
    chosen = package.variant(choose_variant(package, variant).name)
    with_faces = decides_by_faces(package, faces)
    if with_faces:
        face_detector_variants(package)  # a package without the face detector fails here, not in every actor
    if not ray.is_initialized():
        init_local()
    writer = open_output(output, package.labels, fmt, overwrite, with_faces)
    summary = RaySummary(threads_per_actor=threads_per_actor, faces=0 if with_faces else None)
    started = time.perf_counter()
    try:
        listing = _listing(sources)
        summary.found = len(listing)
        todo = [name for name, key in listing if not writer.holds(name, key)]
        summary.already_done = summary.found - len(todo)
        done = 0
        readable: list[str] = []
        videos: list[str] = []
        for name in todo:
            # A video is known by its content (as the local scan knows it) and read under the video limits, which
            # its actor applies: the image size cap isn't a video's.
            video = not is_uri(name) and is_video(name)
            problem = _unreadable(name, None if video else max_bytes)
            if problem is None:
                (videos if video else readable).append(name)
                continue
            writer.write_record(result_record(name, problem))
            summary.failed += 1
            done += 1
        if progress and done:
            progress(done, len(todo))
        ship_faces = with_faces or (bool(videos) and has_face_detector(package))  # videos look for faces too
        model_source: str | ShippedModel = (ShippedModel.put(model, chosen.name, ship_faces) if ship_model
                                            else str(model))
        ledger = start_crash_ledger() if readable or videos else None
        options: dict[str, Any] = dict(variant=chosen.name, actors=actors, threads_per_actor=threads_per_actor,
                                       max_pixels=max_pixels, max_bytes=max_bytes, jpeg_draft=jpeg_draft,
                                       runtime_env=runtime_env, classifier=classifier, crash_ledger=ledger,
                                       faces=with_faces, face_options=face_options)
        job = classify_dataset(readable, model_source, batch_size=batch_size, **options)
        # A video is a task of its own (a batch of one): a clip costs as much as hundreds of images.
        video_job = classify_dataset(videos, model_source, batch_size=1, videos=True, **options)
        summary.actors = max(job.actors, video_job.actors)
        # A record's key: its image (the Dataset's key for the file) and, for a face's record, the face's number. A
        # retried batch brings the same keys again, however Ray cuts its output into tables.
        written: set[tuple[str, int | None]] = set()
        images = 0
        for planned in (job, video_job):
            if planned.dataset is None:
                continue
            for table in _batches(planned.dataset):
                for record in table_records(table):
                    path = record["image"]
                    key = (path, record.get(FACE_KEY))
                    if key in written:
                        summary.duplicates_dropped += 1
                        continue
                    written.add(key)
                    name = planned.names[path]
                    if "error" in record:
                        message = _named_in_message(record["error"]["message"], path, name)
                        record = {**record, "error": {**record["error"], "message": message}}
                    writer.write_record({**record, "image": name})
                    summary.count(record)
                    if FACE_KEY not in record:
                        images += 1
                        done += 1
                writer.flush()
                if progress:
                    progress(done, len(todo))
        missing = len(readable) + len(videos) - images
        if missing:  # Ray dropped blocks: never expected with its default settings, and resumable if it happens
            raise FastVitDetectError(f"{missing} image(s) came back from no actor; run the job again to resume")
    finally:
        writer.close()
        summary.seconds = time.perf_counter() - started
    return summary


# --- starting and joining Ray -------------------------------------------------------------------------------


def init_local(**options: Any) -> None:
    """Start a Ray on this machine for this process: ``ray.init(address="local", **options)`` with every port
    it opens on 127.0.0.1 and no dashboard. Raises :class:`FastVitDetectError` where this Ray would listen on
    another address (it is then shut down again)."""
    options.setdefault("include_dashboard", False)
    with _loopback_node():
        ray.init(address="local", _node_ip_address=LOOPBACK, **options)
    node_address = ray.util.get_node_ip_address()
    if node_address != LOOPBACK:
        ray.shutdown()
        raise FastVitDetectError(f"the local Ray would listen on {node_address}, not {LOOPBACK} (Ray "
                                 f"{ray.__version__}); start a Ray yourself, with its ports behind a firewall, and "
                                 "pass its address")


@contextmanager
def _loopback_node() -> Iterator[None]:
    """While Ray starts or joins: this machine's Ray address is 127.0.0.1.

    ray.init replaces a loopback node or cluster address with the machine's network address
    (``services.resolve_ip_for_localhost``), so a Ray it starts listens beyond the machine and a Ray bound to
    127.0.0.1 can't be joined. It keeps 127.0.0.1 where Ray clusters are off (macOS and Windows by default),
    a switch it reads at each call: off for the call, then back."""
    constants = ray._private.ray_constants
    enabled = constants.ENABLE_RAY_CLUSTER
    constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        constants.ENABLE_RAY_CLUSTER = enabled


@contextmanager
def connected(address: str | None = None, *, timeout: float = JOIN_TIMEOUT_S,
              verbose: bool = False) -> Iterator[float]:
    """Join the Ray cluster at ``address`` for the block, or start a local Ray on 127.0.0.1
    (:func:`init_local`) for ``"local"`` and by default when ``$RAY_ADDRESS`` is unset; yields the seconds that
    took. A Ray this process already joined is reused and left running.

    ``timeout``: seconds joining may take; an address where nothing answers, or something that isn't a Ray head,
    raises :class:`ClusterUnreachableError` by then. ``verbose``: Ray's own logging as Ray sets it; otherwise
    warnings and worse from Ray's Python side and Ray Data, only fatal messages from Ray's C++ core, whose
    normal operation logs at error level (Ray Data's actors take their constructor arguments from the object
    store, and the core says so), and the workers' output stays in Ray's log files (errors still reach the
    driver as exceptions). A ``RAY_BACKEND_LOG_LEVEL`` of your own wins.
    """
    if ray.is_initialized():
        yield 0.0
        return
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    started = time.perf_counter()
    with _ray_logs(verbose) as level:
        with _core_log_level(verbose):
            if address == "local":
                try:
                    init_local(logging_level=level, log_to_driver=verbose)
                except FastVitDetectError:
                    raise
                except Exception as exc:
                    raise FastVitDetectError(f"can't start a local Ray: {exc}") from exc
            else:
                _join(address, timeout, level, log_to_driver=verbose)
        # Our own progress line is on stderr; Ray Data's bars would fight it for the same terminal line.
        ray.data.DataContext.get_current().enable_progress_bars = False
        try:
            yield time.perf_counter() - started
        finally:
            ray.shutdown()


def _join(address: str, timeout: float, level: int, log_to_driver: bool) -> None:
    """``ray.init(address)`` within ``timeout`` seconds. Ray itself retries an address where nothing answers for
    minutes, so a host and port are tried first, and ray.init runs on a thread that is abandoned on time out
    (the process should exit then: the thread may join later)."""
    deadline = time.monotonic() + timeout
    host, port = _host_port(address)
    if host is not None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
        except OSError as exc:
            cause = f"no answer within {timeout:g} s" if isinstance(exc, TimeoutError) else exc.strerror or str(exc)
            raise ClusterUnreachableError(f"Ray at {address}: can't connect to {host}:{port} ({cause}); is a Ray head "
                                          "running there (ray start --head), and is the address right?") from exc
    loopback = host in ("localhost", LOOPBACK, "::1")
    outcome: list[BaseException | None] = []

    def join() -> None:
        try:
            with _loopback_node() if loopback else nullcontext():
                ray.init(address=address, logging_level=level, log_to_driver=log_to_driver)
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            outcome.append(exc)

    thread = threading.Thread(target=join, name="fastvit-detect-ray-join", daemon=True)
    thread.start()
    thread.join(max(0.0, deadline - time.monotonic()))
    if not outcome:
        raise ClusterUnreachableError(f"Ray at {address}: couldn't join within {timeout:g} s (something answers "
                                      "there, but not as a Ray head this process can join)")
    if outcome[0] is not None:
        raise ClusterUnreachableError(f"can't join Ray at {address}: {outcome[0]}") from outcome[0]


def _host_port(address: str) -> tuple[str | None, int]:
    """The host and port to try for ``host:port`` or ``ray://host:port``; (None, 0) for ``auto`` and the like."""
    target = address.split("://", 1)[1] if "://" in address else address
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        return None, 0
    return host.strip("[]"), int(port)


@contextmanager
def _ray_logs(verbose: bool) -> Iterator[int]:
    """Ray Data's console log at warnings for the block, unless ``verbose``; yields the level for ray.init."""
    consoles = [] if verbose else [handler for handler in logging.getLogger("ray.data").handlers
                                   if handler.name == "console"]  # its file log keeps the INFO lines
    levels = [handler.level for handler in consoles]
    for handler in consoles:
        handler.setLevel(max(handler.level, logging.WARNING))
    try:
        yield logging.INFO if verbose else logging.WARNING
    finally:
        for handler, level in zip(consoles, levels):
            handler.setLevel(level)


@contextmanager
def _core_log_level(verbose: bool) -> Iterator[None]:
    """While Ray starts or joins: its C++ core logs fatal messages only, unless ``verbose`` or the user set
    ``RAY_BACKEND_LOG_LEVEL``. Read once by the core of this process and of the Ray processes it starts."""
    if verbose or "RAY_BACKEND_LOG_LEVEL" in os.environ:
        yield
        return
    os.environ["RAY_BACKEND_LOG_LEVEL"] = "fatal"
    try:
        yield
    finally:
        os.environ.pop("RAY_BACKEND_LOG_LEVEL", None)


def _batches(dataset: ray.data.Dataset) -> Iterator[pa.Table]:
    try:
        yield from dataset.iter_batches(batch_size=None, batch_format="pyarrow")
    except ray.exceptions.RayError as exc:
        # Typically an actor that can't start: a package path the workers can't read (see --ship-model).
        message = str(exc).strip().splitlines()
        raise FastVitDetectError(f"the Ray job stopped (records written so far are kept; run it again to resume): "
                                 f"{message[-1] if message else type(exc).__name__}") from exc


def describe_cluster() -> str:
    resources = ray.cluster_resources()
    nodes = [node for node in ray.nodes() if node.get("Alive")]
    return f"{len(nodes)} node(s), {int(resources.get('CPU', 0))} CPU(s)"


__all__ = [
    "JOIN_TIMEOUT_S",
    "BatchClassifier",
    "CrashLedger",
    "ParquetOutput",
    "RaySummary",
    "ShippedModel",
    "classify",
    "classify_dataset",
    "connected",
    "init_local",
    "list_images",
    "open_output",
    "record_schema",
    "records_table",
    "start_crash_ledger",
    "table_records",
]
