"""Classify every image under a folder into a JSON-lines or CSV file that survives interruption.

Each batch's records are flushed as soon as they're known, so a scan stopped half-way (Ctrl-C, a crash, a
reboot) resumes where it stopped: images already in the output are skipped. Bad images get a record with their
error and never stop the scan; they count as done on resume (``--overwrite`` retries everything).

Image names are paths exactly as the file system has them. A name that isn't valid UTF-8 is kept losslessly:
Python decodes it with ``surrogateescape``, JSON lines escape those characters (``\\udcXX``), and CSV files hold
the raw bytes (read them with ``errors="surrogateescape"``). Both read back to the same ``str``, which
``os.fsencode`` turns into the original bytes.
"""

from __future__ import annotations

import csv
import json
import os
import stat
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from .detector import Detector, ImageResult, Prediction
from .errors import FastVitDetectError
from .preprocess import find_images
from .progress import Progress

FORMATS = ("jsonl", "csv")  # this engine's; the Ray engine also writes Parquet
CSV_ERRORS = "surrogateescape"  # names that aren't UTF-8 keep their bytes: see the module docstring
# What a results file's name says it holds; any other name holds JSON lines unless --format says otherwise.
SUFFIX_FORMATS = {".csv": "csv", ".parquet": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}


def output_format(path: str | os.PathLike[str], fmt: str | None, accepted: Sequence[str] = FORMATS) -> str:
    """The format of the results file ``path``: ``fmt``, else the one its suffix names, else JSON lines.

    Judged from both: a suffix that names another format than ``fmt`` (``-o x.parquet --format jsonl``) is
    refused, as is a format this engine doesn't write, rather than a file whose name lies about its content."""
    implied = SUFFIX_FORMATS.get(Path(path).suffix.lower())
    if fmt is not None and implied is not None and fmt != implied:
        raise FastVitDetectError(f"{path}: the name says {implied} but --format says {fmt}; make them agree")
    chosen = fmt or implied or "jsonl"
    if chosen not in accepted:
        because = f"--format {fmt}" if fmt else f"its {Path(path).suffix} suffix"
        ray_only = "; Parquet needs --engine ray" if chosen == "parquet" else ""
        raise FastVitDetectError(f"{path}: {chosen} results (from {because}) can't be written here: this scan writes "
                                 f"{' or '.join(accepted)}{ray_only}")
    return chosen


def check_scan_target(root: str | os.PathLike[str], output: str | os.PathLike[str], fmt: str | None) -> str:
    """Refuse a folder that isn't one and a results file that can't be written, before a model is loaded; returns
    the output's format."""
    if not Path(root).is_dir():
        raise FastVitDetectError(f"{root}: not a directory to scan")
    chosen = output_format(output, fmt)
    _check_regular_output(Path(output))
    return chosen


def result_record(image: str, result: ImageResult) -> dict[str, Any]:
    """One image's line in ``predict --json`` and scan's JSON lines."""
    if not isinstance(result, Prediction):
        return {"image": image, "error": {"type": type(result).__name__, "message": str(result)}}
    return {"image": image, **result.to_dict()}


@dataclass
class ScanSummary:
    found: int = 0
    already_done: int = 0
    classified: int = 0
    failed: int = 0
    seconds: float = 0.0
    labels: Counter[str] = field(default_factory=Counter)

    def describe(self) -> str:
        rate = self.classified / self.seconds if self.seconds > 0 else 0.0
        labels = ", ".join(f"{label} {count}" for label, count in sorted(self.labels.items())) or "none"
        resumed = f"; {self.already_done} already in the output, skipped" if self.already_done else ""
        return (f"{self.found} image(s) found{resumed}; {self.classified} classified in {self.seconds:.1f}s "
                f"({rate:.1f} images/s): {labels}; {self.failed} failed")


class ScanOutput:
    """An append-only results file in JSON lines or CSV, and the images it already holds."""

    def __init__(self, path: Path, labels: Sequence[str], fmt: str | None = None, overwrite: bool = False) -> None:
        self.path = path
        self.format = output_format(path, fmt)
        self.columns = ["image", "label", "score", "fake_probability",
                        *(f"p_{label}" for label in labels), "error_type", "error_message"]
        _check_regular_output(path)
        if overwrite and path.exists():
            path.unlink()
        if not overwrite:
            if self.format == "csv":
                _repair_torn_csv(path)
            else:
                _repair_torn_line(path)
        # Compared as resolved paths, so a resumed scan may spell the folder differently (relative, absolute).
        self.done = {_identity(image) for image in self._read_done()} if path.exists() else set()
        path.parent.mkdir(parents=True, exist_ok=True)
        fresh = not path.exists() or path.stat().st_size == 0
        # Held for the whole scan and closed by close(), hence no `with`.
        self._handle: TextIO = open(path, "a", encoding="utf-8", errors=CSV_ERRORS, newline="")  # noqa: SIM115
        self._csv = csv.DictWriter(self._handle, self.columns) if self.format == "csv" else None
        if self._csv is not None and fresh:
            self._csv.writeheader()

    def __enter__(self) -> ScanOutput:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _read_done(self) -> set[str]:
        try:
            with open(self.path, encoding="utf-8", errors=CSV_ERRORS, newline="") as handle:
                if self.format == "csv":
                    reader = csv.DictReader(handle, strict=True)
                    if reader.fieldnames is not None and reader.fieldnames != self.columns:
                        raise FastVitDetectError(
                            f"{self.path}: its columns {reader.fieldnames} aren't this model's {self.columns}; "
                            "write to another file or pass --overwrite"
                        )
                    return {row["image"] for row in reader if row.get("image")}
                done = set()
                for number, line in enumerate(handle, start=1):
                    if not line.strip():
                        continue
                    try:
                        image = json.loads(line)["image"]
                    except (ValueError, KeyError, TypeError, RecursionError):
                        image = None
                    if not isinstance(image, str):
                        raise FastVitDetectError(
                            f"{self.path}:{number}: not a scan record; pass --overwrite to start afresh"
                        )
                    done.add(image)
                return done
        except (OSError, csv.Error) as exc:
            raise FastVitDetectError(f"{self.path}: can't read the earlier results to resume: {exc}") from exc

    def write(self, image: str, result: ImageResult) -> None:
        self.write_record(result_record(image, result))

    def write_record(self, record: dict[str, Any]) -> None:
        """Write a record in :func:`result_record`'s shape, wherever it was made (the Ray engine's actors)."""
        if self._csv is None:
            self._handle.write(json.dumps(record) + "\n")  # ASCII: names that aren't UTF-8 come out as \udcXX
            return
        row: dict[str, Any] = {"image": record["image"]}
        if "error" in record:
            row.update(error_type=record["error"]["type"], error_message=record["error"]["message"])
        else:
            row.update(label=record["label"], score=record["score"], fake_probability=record["fake_probability"])
            row.update({f"p_{label}": p for label, p in record["probabilities"].items()})
        self._csv.writerow(row)

    def flush(self) -> None:
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        if not self._handle.closed:
            try:
                self.flush()
            finally:
                self._handle.close()


def _identity(image: str | Path) -> str:
    return str(Path(image).resolve())


def _check_regular_output(path: Path) -> None:
    """Results go to a regular file: resuming reads it back, and a pipe or device can't be read back or synced."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise FastVitDetectError(f"{path}: can't use it as the results file: {exc.strerror or exc}") from exc
    if not stat.S_ISREG(mode):
        kind = "a directory" if stat.S_ISDIR(mode) else "not a regular file"
        raise FastVitDetectError(f"{path}: {kind}; scan writes a resumable results file, so give a path to a "
                                 "file on disk")


def _repair_torn_line(path: Path) -> None:
    """Cut a last line an interrupted run left half-written, so appended records start on a line of their own.

    Truncates in place, reading only the file's tail: rewriting the file would risk every earlier record.
    """
    if not path.is_file() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as handle:
        size = handle.seek(0, os.SEEK_END)
        handle.seek(size - 1)
        if handle.read(1) == b"\n":
            return
        end = size
        while end > 0:  # walk back block by block to the last newline
            start = max(0, end - 65536)
            handle.seek(start)
            block = handle.read(end - start)
            newline = block.rfind(b"\n")
            if newline >= 0:
                handle.truncate(start + newline + 1)
                return
            end = start
        handle.truncate(0)


def _repair_torn_csv(path: Path) -> None:
    """Cut the CSV back to its last complete record, parsing records rather than lines.

    A quoted field may hold newlines (a file name, an error message), so a run interrupted mid-record can leave a
    file that ends in a newline and still tears a record. A record counts as complete when it parses with the
    file's own header's number of fields (not this model's: another model's results are refused by the caller,
    never cut) and its last line ends with a newline; anything after the last one is cut.
    """
    if not path.is_file() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as handle:
        ends: list[int] = []  # byte offset after each physical line, in order
        line_ends_newline: list[bool] = []

        def lines() -> Any:
            offset = 0
            for raw in iter(handle.readline, b""):
                offset += len(raw)
                ends.append(offset)
                line_ends_newline.append(raw.endswith(b"\n"))
                yield raw.decode("utf-8", errors=CSV_ERRORS)

        good_end = 0
        columns: int | None = None
        reader = csv.reader(lines(), strict=True)
        try:
            for row in reader:
                consumed = reader.line_num
                columns = len(row) if columns is None else columns
                if len(row) != columns or not line_ends_newline[consumed - 1]:
                    break
                good_end = ends[consumed - 1]
        except csv.Error:  # end of file inside a quoted field: a torn record
            pass
        if good_end != handle.seek(0, os.SEEK_END):
            handle.truncate(good_end)


def scan(
    detector: Detector,
    root: str | os.PathLike[str],
    output: str | os.PathLike[str],
    batch_size: int = 16,
    fmt: str | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> ScanSummary:
    """Classify the images under ``root`` not yet in ``output``, appending a record per image."""
    folder = Path(root)
    check_scan_target(folder, output, fmt)
    summary = ScanSummary()
    started = time.perf_counter()
    with ScanOutput(Path(output), detector.labels, fmt, overwrite) as writer:
        images = find_images(folder)
        summary.found = len(images)
        todo = [path for path in images if _identity(path) not in writer.done]
        summary.already_done = summary.found - len(todo)
        started = time.perf_counter()
        results = detector.predict_iter(todo, batch_size=batch_size, prefetch=1, errors="return")
        try:
            for done, (path, result) in enumerate(zip(todo, results), start=1):
                writer.write(str(path), result)
                if isinstance(result, Prediction):
                    summary.classified += 1
                    summary.labels[result.label] += 1
                else:
                    summary.failed += 1
                if done % batch_size == 0 or done == len(todo):
                    writer.flush()
                    if progress:
                        progress(done, len(todo))
        finally:
            results.close()  # stops the decoding thread at once on Ctrl-C or a write error
            summary.seconds = time.perf_counter() - started
    return summary
