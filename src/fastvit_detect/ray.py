"""Classify images on a Ray cluster with Ray Data: the same package, preprocessing and records as ``scan``.

Needs the ``ray`` extra (``pip install 'fastvit-detect[ray]'``); nothing else in the runtime imports this module.

Three layers, each usable alone:

- :class:`BatchClassifier`, a callable class for ``Dataset.map_batches``. Each actor loads the package once and
  turns batches of encoded image bytes plus their paths (``ray.data.read_binary_files(..., include_paths=True)``)
  into result records. Decoding happens here, with the runtime's own preprocessing (EXIF orientation, the HF
  resize), not with Ray's ``read_images``. A bad image is a row with an ``error``, never a failed task.
- :func:`classify_dataset`: files to a lazy Dataset of records.
- :func:`classify`: files to a results file (JSON lines, CSV or a Parquet directory) with the local scan's
  resume: images already in the output are skipped.

Exactly once: Ray retries the tasks of an actor that died, so a batch may come back twice. Only the driver
writes, and it writes an image's record only if the output doesn't hold that image yet; an interrupted job
loses at most the records not yet flushed, and those images are simply classified again on resume.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
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

from .detector import DEFAULT_BATCH_SIZE, Detector, choose_variant
from .errors import FastVitDetectError, ImageNotFoundError, WorkerCrashError
from .httpapi import named_image
from .package import ModelPackage
from .preprocess import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, file_status_problem, find_images
from .progress import Progress
from .scan import ScanOutput, ScanSummary, _identity, result_record

FORMATS = ("jsonl", "csv", "parquet")
PARQUET_ROWS_PER_FILE = 10_000
_PREDICTION_KEYS = ("image", "label", "score", "probabilities", "fake_probability", "logits")
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_PART = re.compile(r"part-\d{6,}\.parquet")  # the files ParquetOutput writes; any others are left alone


# --- records as Arrow tables --------------------------------------------------------------------------------


def record_schema(labels: Sequence[str]) -> pa.Schema:
    """The Arrow form of scan's records: one column per key of a JSON line, ``error`` null for a prediction."""
    return pa.schema([
        ("image", pa.string()),
        ("label", pa.string()),
        ("score", pa.float64()),
        ("probabilities", pa.struct([(label, pa.float64()) for label in labels])),
        ("fake_probability", pa.float64()),
        ("logits", pa.list_(pa.float32())),  # the model's own dtype: exact
        ("error", pa.struct([("type", pa.string()), ("message", pa.string())])),
    ])


def records_table(records: Sequence[Mapping[str, Any]], labels: Sequence[str]) -> pa.Table:
    """Records from :func:`fastvit_detect.scan.result_record` as a table of :func:`record_schema`."""
    return pa.Table.from_pylist([dict(record) for record in records], schema=record_schema(labels))


def table_records(table: pa.Table) -> Iterator[dict[str, Any]]:
    """The records of a :func:`records_table` table, key for key as ``result_record`` made them."""
    for row in table.to_pylist():
        if row["error"] is not None:
            yield {"image": row["image"], "error": row["error"]}
        else:
            yield {key: row[key] for key in _PREDICTION_KEYS}


# --- the actor ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShippedModel:
    """A model package's files in Ray's object store, put there once by the driver: for workers that can't see
    the driver's disk. Each actor writes them to a private temporary folder, loads them, and deletes them."""

    files: ray.ObjectRef  # dict[str, bytes]: file name -> contents
    variant: str

    @classmethod
    def put(cls, path: str | os.PathLike[str], variant: str = "auto") -> ShippedModel:
        """Ship the package's JSON files and one variant's graph and weights (not the other variants)."""
        package = ModelPackage.open(path)
        chosen = package.variant(variant)
        package.verify(chosen)
        paths = [*sorted(package.root.glob("*.json")), *(path for path, _, _ in chosen.files)]
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
    try:
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
    except Exception:  # noqa: BLE001 - outside a Ray worker: one thread is the safe default
        return 1
    return max(1, int(cpus))


def _column(batch: Any, name: str) -> list[Any]:
    if isinstance(batch, pa.Table):
        if name not in batch.column_names:
            raise ValueError(_missing_column(name, batch.column_names))
        return batch.column(name).to_pylist()
    if name not in batch:
        raise ValueError(_missing_column(name, list(batch)))
    column = batch[name]
    return column.tolist() if hasattr(column, "tolist") else list(column)


def _missing_column(name: str, have: Sequence[str]) -> str:
    return (f"BatchClassifier needs the columns 'bytes' and 'path' (ray.data.read_binary_files(..., "
            f"include_paths=True)); this batch has no {name!r}, only {list(have)}")


class BatchClassifier:
    """A callable class for ``Dataset.map_batches``: encoded images in, scan records out.

    Takes batches with a ``bytes`` column (encoded image files) and a ``path`` column, as
    ``ray.data.read_binary_files(..., include_paths=True)`` makes them, in any batch format. Returns a
    ``pyarrow.Table`` of :func:`record_schema`: ``image`` (the path), ``label``, ``score``, ``probabilities``,
    ``fake_probability`` and ``logits``, or ``error`` (``type``, ``message``) for an image that failed.

    ``model``: a package path every worker can read (shared storage), or a :class:`ShippedModel`.
    ``threads``: onnxruntime intra-op threads; default the CPUs Ray reserved for the actor (``num_cpus``).
    ``crash_ledger``: a :func:`start_crash_ledger` actor; without one, an image that kills its worker every
    time is retried by Ray for ever. The other options are :meth:`Detector.load`'s.
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
    ) -> None:
        self.crash_ledger = crash_ledger
        if isinstance(model, ShippedModel):
            package: AbstractContextManager[str | os.PathLike[str]] = model.unpacked()
            variant = model.variant
        else:
            package = nullcontext(model)
        with package as path:
            self.detector = Detector.load(path, variant=variant, threads=threads or _assigned_cpus(),
                                          max_pixels=max_pixels, max_bytes=max_bytes, jpeg_draft=jpeg_draft)
        self.batch_size = batch_size
        self.labels = self.detector.labels

    def __call__(self, batch: Any) -> pa.Table:
        paths = [str(path) for path in _column(batch, "path")]
        data = _column(batch, "bytes")
        ledger = self.crash_ledger
        if ledger is None:
            results = self._predict(data, paths)
        else:
            key = hashlib.sha256("\0".join(paths).encode("utf-8", "surrogatepass")).hexdigest()
            if ray.get(ledger.begin.remote(key)):
                results = [self._predict_alone(ledger, data[index], paths[index]) for index in range(len(paths))]
            else:
                results = self._predict(data, paths)
            ray.get(ledger.end.remote(key))
        return records_table([result_record(path, result) for path, result in zip(paths, results)], self.labels)

    def _predict_alone(self, ledger: Any, data: bytes | None, path: str) -> Any:
        crashes = int(ray.get(ledger.begin.remote(path)))
        if crashes >= self.crashes_before_giving_up:
            result: Any = WorkerCrashError(f"{path}: the worker process died {crashes} times classifying this image "
                                           "on its own (a decoder crash or out of memory); not tried again")
        else:
            result = self._predict([data], [path])[0]
        ray.get(ledger.end.remote(path))
        return result

    def _predict(self, data: Sequence[bytes | None], paths: Sequence[str]) -> list[Any]:
        # Each attempt gets fresh file objects: a failed attempt may have read some to the end.
        def images(indices: Iterable[int]) -> list[Any]:
            return [named_image(data[i] or b"", paths[i]) for i in indices]

        try:
            return list(self.detector.predict_batch(images(range(len(paths))), batch_size=self.batch_size,
                                                    errors="return"))
        except Exception:  # noqa: BLE001 - whatever broke the batch belongs to one image: find it, keep the rest
            results: list[Any] = []
            for index in range(len(paths)):
                try:
                    results.extend(self.detector.predict_batch(images([index]), errors="return"))
                except Exception as exc:  # noqa: BLE001 - this image's record carries it
                    results.append(exc)
            return results


# --- listing ------------------------------------------------------------------------------------------------


def is_uri(source: str) -> bool:
    """``s3://...``, ``gs://...``, ``file://...``: a source for pyarrow's file systems rather than a local path."""
    return _URI.match(source) is not None


def list_images(sources: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[str]:
    """Image names from folders (recursively, by the local scan's suffixes), files and URIs, in order, once each.

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
            names.extend(str(path) for path in find_images(text))
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


def _ray_path(name: str) -> str:
    """The name Ray Data gives this file in the ``path`` column (Dataset.input_files)."""
    return name.split("://", 1)[1] if is_uri(name) else os.path.abspath(name)


def _unreadable(name: str, max_bytes: int | None) -> FastVitDetectError | None:
    """Why the driver won't hand this local file to Ray, or None: the runtime's own checks before a read (Ray
    reads a file whole, so a FIFO would hang a read task and /dev/zero never end), and a name pyarrow can open.
    URIs are left to the reader: object stores hold only regular objects, and the actor checks the size."""
    if is_uri(name):
        return None
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return ImageNotFoundError(f"{name}: Ray Data reads files through pyarrow, which can't open a name that isn't "
                                  "UTF-8; rename it or scan it with --engine local", name)
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
    """A planned run: the Dataset of records for the images to read, and the names Ray will call them by."""

    dataset: ray.data.Dataset | None
    names: dict[str, str]  # Ray's path -> the image's name
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
) -> Job:
    """The lazy Dataset that reads ``names`` (local paths or URIs) and classifies them on ``actors`` actors.

    ``actors``: default as many as the cluster's CPUs allow at ``threads_per_actor`` CPUs each. Read tasks
    reserve no CPU: they only move bytes, and an actor pool that took every CPU would otherwise starve them.
    """
    if not names:
        return Job(None, {}, 0, threads_per_actor)
    by_ray_path = {_ray_path(name): name for name in names}
    if len(by_ray_path) < len(names):  # list_images gives each file once: only mixed URI schemes get here
        raise FastVitDetectError("two of the names are one file to Ray Data (the same path under two URI schemes?); "
                                 "give each image once")
    dataset = ray.data.read_binary_files([_source(name) for name in names], include_paths=True, num_cpus=0,
                                         runtime_env=runtime_env)
    listed = set(dataset.input_files())
    if listed != set(by_ray_path):
        strange = sorted(listed ^ set(by_ray_path))[:3]
        raise FastVitDetectError(f"Ray Data names {len(listed ^ set(by_ray_path))} file(s) differently than "
                                 f"fastvit-detect expects, e.g. {strange}; please report this")
    cpus = int(ray.cluster_resources().get("CPU", 1))
    actors = actors or max(1, cpus // (threads_per_actor or 1))
    dataset = dataset.map_batches(
        classifier,
        batch_size=batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=threads_per_actor or 1,
        fn_constructor_kwargs=dict(model=model, variant=variant, threads=threads_per_actor, batch_size=batch_size,
                                   max_pixels=max_pixels, max_bytes=max_bytes, jpeg_draft=jpeg_draft,
                                   crash_ledger=crash_ledger),
        runtime_env=runtime_env,
    )
    return Job(dataset, by_ray_path, actors, threads_per_actor)


def _source(name: str) -> str:
    return name if is_uri(name) else os.path.abspath(name)


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
                 rows_per_file: int | None = None) -> None:
        self.path = path
        self.labels = list(labels)
        self.schema = record_schema(labels)
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
        stored = {**record, "image": _parquet_text(record["image"])}
        if "error" in record:
            stored["error"] = {**record["error"], "message": _parquet_text(record["error"]["message"])}
        self._pending.append(stored)
        if len(self._pending) >= self.rows_per_file:
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

    def __init__(self, path: Path, labels: Sequence[str], fmt: str, overwrite: bool) -> None:
        self._output = ScanOutput(path, labels, fmt, overwrite)  # cuts a record an interrupted run tore
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
                overwrite: bool = False) -> ParquetOutput | _LineOutput:
    """The results file (or Parquet folder) at ``path``, ready to resume."""
    fmt = output_format(path, fmt)
    if fmt == "parquet":
        return ParquetOutput(Path(path), labels, overwrite)
    return _LineOutput(Path(path), labels, fmt, overwrite)


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
) -> RaySummary:
    """Classify the images in ``sources`` not yet in ``output`` on the connected Ray cluster.

    ``sources``: folders, files or URIs (see :func:`list_images`). ``output``: ``.jsonl`` (default), ``.csv`` or
    a ``.parquet`` folder, or ``fmt``. ``model``: a package path every node can read, or with
    ``ship_model=True`` a path on the driver whose files go to the workers once through the object store.
    ``max_bytes``: larger local files get an error record without being read (larger objects from URIs, once
    read at the actor). Connects to a running Ray (``ray.init()``) or starts a local one if none is connected.
    """
    package = ModelPackage.open(model)  # a bad package or variant fails here, not in every actor
    # The driver chooses for every actor (auto: the fastest variant on this machine), so a scan's records all come
    # from one variant and runtime.
    chosen = package.variant(choose_variant(package, variant).name)
    if not ray.is_initialized():
        ray.init()
    writer = open_output(output, package.labels, fmt, overwrite)
    summary = RaySummary(threads_per_actor=threads_per_actor)
    started = time.perf_counter()
    try:
        listing = _listing(sources)
        summary.found = len(listing)
        todo = [name for name, key in listing if not writer.holds(name, key)]
        summary.already_done = summary.found - len(todo)
        done = 0
        readable = []
        for name in todo:
            problem = _unreadable(name, max_bytes)
            if problem is None:
                readable.append(name)
                continue
            writer.write_record(result_record(name, problem))
            summary.failed += 1
            done += 1
        if progress and done:
            progress(done, len(todo))
        model_source: str | ShippedModel = ShippedModel.put(model, chosen.name) if ship_model else str(model)
        job = classify_dataset(readable, model_source, variant=chosen.name, actors=actors,
                               threads_per_actor=threads_per_actor, batch_size=batch_size, max_pixels=max_pixels,
                               max_bytes=max_bytes, jpeg_draft=jpeg_draft, runtime_env=runtime_env,
                               classifier=classifier,
                               crash_ledger=start_crash_ledger() if readable else None)
        summary.actors = job.actors
        written: set[str] = set()
        if job.dataset is not None:
            for table in _batches(job.dataset):
                for record in table_records(table):
                    path = record["image"]  # Ray's name for the file: one per image
                    if path in written:
                        summary.duplicates_dropped += 1
                        continue
                    written.add(path)
                    name = job.names[path]
                    writer.write_record({**record, "image": name})
                    done += 1
                    if "error" in record:
                        summary.failed += 1
                    else:
                        summary.classified += 1
                        summary.labels[record["label"]] += 1
                writer.flush()
                if progress:
                    progress(done, len(todo))
        missing = len(readable) - len(written)
        if missing:  # Ray dropped blocks: never expected with its default settings, and resumable if it happens
            raise FastVitDetectError(f"{missing} image(s) came back from no actor; run the job again to resume")
    finally:
        writer.close()
        summary.seconds = time.perf_counter() - started
    return summary


@contextmanager
def connected(address: str | None = None) -> Iterator[float]:
    """Join the Ray cluster at ``address`` (default ``$RAY_ADDRESS``, else start a local Ray) for the block;
    yields the seconds that took. A Ray this process already joined is reused and left running."""
    if ray.is_initialized():
        yield 0.0
        return
    started = time.perf_counter()
    try:
        ray.init(address=address, logging_level=logging.WARNING)
    except Exception as exc:
        raise FastVitDetectError(f"can't start or join Ray{f' at {address}' if address else ''}: {exc}") from exc
    # Our own progress line is on stderr; Ray Data's bars would fight it for the same terminal line.
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        yield time.perf_counter() - started
    finally:
        ray.shutdown()


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
    "BatchClassifier",
    "CrashLedger",
    "ParquetOutput",
    "RaySummary",
    "ShippedModel",
    "classify",
    "classify_dataset",
    "connected",
    "list_images",
    "open_output",
    "record_schema",
    "records_table",
    "start_crash_ledger",
    "table_records",
]
