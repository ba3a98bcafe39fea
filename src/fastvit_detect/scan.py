"""Classify every image under a folder into a JSON-lines or CSV file that survives interruption.

Each batch's records are flushed as soon as they're known, so a scan stopped half-way (Ctrl-C, a crash, a
reboot) resumes where it stopped: images already in the output are skipped. Bad images get a record with their
error and never stop the scan; they count as done on resume (``--overwrite`` retries everything).
"""

from __future__ import annotations

import csv
import json
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from .detector import Detector, Prediction
from .errors import FastVitDetectError, InputError
from .preprocess import find_images
from .progress import Progress

FORMATS = ("jsonl", "csv")


def result_record(image: str, result: Prediction | InputError) -> dict[str, Any]:
    """One image's line in ``predict --json`` and scan's JSON lines."""
    if isinstance(result, InputError):
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
        self.format = fmt or ("csv" if path.suffix.lower() == ".csv" else "jsonl")
        if self.format not in FORMATS:
            raise FastVitDetectError(f"--format {self.format!r}: expected one of {', '.join(FORMATS)}")
        self.columns = ["image", "label", "score", "fake_probability",
                        *(f"p_{label}" for label in labels), "error_type", "error_message"]
        if overwrite and path.exists():
            path.unlink()
        # Compared as resolved paths, so a resumed scan may spell the folder differently (relative, absolute).
        self.done = {_identity(image) for image in self._read_done()} if path.exists() else set()
        path.parent.mkdir(parents=True, exist_ok=True)
        fresh = not path.exists() or path.stat().st_size == 0
        self._handle: TextIO = open(path, "a", encoding="utf-8", newline="")
        self._csv = csv.DictWriter(self._handle, self.columns) if self.format == "csv" else None
        if self._csv is not None and fresh:
            self._csv.writeheader()

    def _read_done(self) -> set[str]:
        try:
            with open(self.path, encoding="utf-8", newline="") as handle:
                if self.format == "csv":
                    reader = csv.DictReader(handle)
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
                        done.add(json.loads(line)["image"])
                    except (json.JSONDecodeError, KeyError, TypeError):
                        raise FastVitDetectError(
                            f"{self.path}:{number}: not a scan record; pass --overwrite to start afresh"
                        ) from None
                return done
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise FastVitDetectError(f"{self.path}: can't read the earlier results to resume: {exc}") from exc

    def write(self, image: str, result: Prediction | InputError) -> None:
        record = result_record(image, result)
        if self._csv is None:
            self._handle.write(json.dumps(record) + "\n")
            return
        row: dict[str, Any] = {"image": image}
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
        self._handle.close()


def _identity(image: str | Path) -> str:
    return str(Path(image).resolve())


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
    if not folder.is_dir():
        raise FastVitDetectError(f"{folder}: not a directory to scan")
    out_path = Path(output)
    if not overwrite:
        _repair_torn_line(out_path)
    writer = ScanOutput(out_path, detector.labels, fmt, overwrite)
    summary = ScanSummary()
    images = find_images(folder)
    summary.found = len(images)
    todo = [path for path in images if _identity(path) not in writer.done]
    summary.already_done = summary.found - len(todo)
    started = time.perf_counter()
    results = detector.predict_iter(todo, batch_size=batch_size, prefetch=1)
    try:
        for done, (path, result) in enumerate(zip(todo, results), start=1):
            writer.write(str(path), result)
            if isinstance(result, InputError):
                summary.failed += 1
            else:
                summary.classified += 1
                summary.labels[result.label] += 1
            if done % batch_size == 0 or done == len(todo):
                writer.flush()
                if progress:
                    progress(done, len(todo))
    finally:
        results.close()  # stops the decoding thread at once on Ctrl-C or a write error
        writer.flush()
        writer.close()
        summary.seconds = time.perf_counter() - started
    return summary

