"""Classify every image under a folder into a JSON-lines or CSV file that survives interruption.

Each batch's records are flushed as soon as they're known, so a scan stopped half-way (Ctrl-C, a crash, a
reboot) resumes where it stopped: images already in the output are skipped. Bad images get a record with their
error and never stop the scan; they count as done on resume (``--overwrite`` retries everything).

With faces (``scan --faces``, or a detector that decides by faces: :attr:`Detector.faces_first`), each image gets
one record per face, the most confident first (``face``: 1, 2, ...; ``box``: x0, y0, x1, y1 in the upright image's
pixels; ``face_score``: the face detector's; the face crop's verdict), then the image's own record (its verdict,
``decided_by`` "face" or "whole-image", and ``face_count``: how many). At most ``max_faces`` faces per image are
recorded. An image is done once its own record is written: a scan stopped between an image's face records and its
own record resumes by cutting those face records and doing the image again.

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
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from .detector import Detector, FacesResult, ImageResult, Prediction
from .errors import FastVitDetectError
from .media import find_images
from .progress import Progress
from .video import find_videos, is_video

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


def video_record(video: str, result: Any) -> dict[str, Any]:
    """One video's record in a scan (either engine): its verdict, as :func:`result_record` gives an image's, with
    ``video``, ``decided_by``, ``duration``, ``sampled_frames`` and ``suspicious_ranges``; a clip with no
    decodable frame gets no verdict (``label`` None). ``result``: a :class:`fastvit_detect.timeline.VideoResult`."""
    assert result.prediction is not None or not result.frames
    if result.prediction is None:
        return {"image": video, "video": True, "label": None, "score": None, "fake_probability": None,
                "probabilities": {}, "sampled_frames": 0}
    return {**result_record(video, result.prediction), "video": True, "decided_by": result.decided_by,
            "duration": result.duration, "sampled_frames": len(result.frames),
            "suspicious_ranges": [list(span) for span in result.suspicious_ranges()]}


FACE_KEY = "face"  # a face record's key: its number in the image, from 1
FACE_COLUMNS = ["face", "box_x0", "box_y0", "box_x1", "box_y1", "face_score"]


def faces_records(image: str, result: FacesResult | FastVitDetectError) -> list[dict[str, Any]]:
    """One image's records in a scan with faces: a record per face (its number, box, detector score and verdict),
    then the image's record (its verdict, the path that decided it and its number of faces); an error record for an
    image that failed."""
    if isinstance(result, FastVitDetectError):
        return [result_record(image, result)]
    records: list[dict[str, Any]] = [
        {"image": image, FACE_KEY: number, "box": [round(value, 2) for value in face.box], "face_score": face.score,
         **prediction.to_dict()}
        for number, (face, prediction) in enumerate(result.faces, start=1)]
    verdict = result.prediction.to_dict() if result.prediction is not None else {"label": None}
    records.append({"image": image, **verdict, "decided_by": result.decided_by, "face_count": len(result.faces)})
    return records


@dataclass
class ScanSummary:
    found: int = 0
    already_done: int = 0
    classified: int = 0
    failed: int = 0
    seconds: float = 0.0
    labels: Counter[str] = field(default_factory=Counter)
    faces: int | None = None  # faces recorded, in a scan with faces

    def count(self, record: dict[str, Any]) -> None:
        """Count one record written: an image's verdict or error, or (with faces) a face."""
        if FACE_KEY in record:
            self.faces = (self.faces or 0) + 1
        elif "error" in record:
            self.failed += 1
        else:
            self.classified += 1
            self.labels[str(record["label"])] += 1

    def describe(self) -> str:
        rate = self.classified / self.seconds if self.seconds > 0 else 0.0
        labels = ", ".join(f"{label} {count}" for label, count in sorted(self.labels.items())) or "none"
        resumed = f"; {self.already_done} already in the output, skipped" if self.already_done else ""
        faces = f" ({self.faces} face(s))" if self.faces is not None else ""
        return (f"{self.found} image(s) found{resumed}; {self.classified} classified{faces} in {self.seconds:.1f}s "
                f"({rate:.1f} images/s): {labels}; {self.failed} failed")


class ScanOutput:
    """An append-only results file in JSON lines or CSV, and the images it already holds."""

    def __init__(self, path: Path, labels: Sequence[str], fmt: str | None = None, overwrite: bool = False,
                 faces: bool = False) -> None:
        """``faces``: the scan records faces (:func:`faces_records`): CSV files get the face and decision columns,
        and face records an interrupted run left without their image's record are cut before resuming."""
        self.path = path
        self.faces = faces
        self.format = output_format(path, fmt)
        self.columns = ["image", *(FACE_COLUMNS if faces else []), "label", "score", "fake_probability",
                        *(f"p_{label}" for label in labels), *(["decided_by", "face_count"] if faces else []),
                        "error_type", "error_message"]
        _check_regular_output(path)
        if overwrite and path.exists():
            path.unlink()
        if not overwrite:
            if self.format == "csv":
                _repair_torn_csv(path, len(self.columns), self.columns.index(FACE_KEY) if faces else None)
            else:
                _repair_torn_line(path)
                if faces:
                    _cut_unfinished_faces(path)
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
                    return {row["image"] for row in reader if row.get("image") and not row.get(FACE_KEY)}
                done = set()
                for number, line in enumerate(handle, start=1):
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                        image = record["image"]
                    except (ValueError, KeyError, TypeError, RecursionError):
                        image = None
                    if not isinstance(image, str):
                        raise FastVitDetectError(
                            f"{self.path}:{number}: not a scan record; pass --overwrite to start afresh"
                        )
                    # a video's record says how its clip was decided too: it tells nothing of a faces scan
                    if ("error" not in record and not record.get("video")
                            and (FACE_KEY in record or "decided_by" in record) != self.faces):
                        raise FastVitDetectError(
                            f"{self.path}:{number}: a record of a scan {'without' if self.faces else 'with'} faces; "
                            f"resume it {'without' if self.faces else 'with'} faces (--no-faces / --faces), or write "
                            "to another file or pass --overwrite"
                        )
                    if FACE_KEY not in record:  # an image is done by its own record, not its faces'
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
        elif record["label"] is not None:  # None: a scan with faces that found none and gives no verdict
            row.update(label=record["label"], score=record["score"], fake_probability=record["fake_probability"])
            row.update({f"p_{label}": p for label, p in record["probabilities"].items()})
        if FACE_KEY in record:
            row.update(zip(FACE_COLUMNS, [record[FACE_KEY], *record["box"], record["face_score"]]))
        # Only the columns this file has: a video's record says how its clip was decided in a scan without faces too.
        row.update({key: record[key] for key in ("decided_by", "face_count") if key in record and key in self.columns})
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


def _cut_unfinished_faces(path: Path) -> None:
    """Cut the face records at the end of a JSON-lines file that no image record follows: the faces of an image
    whose own record an interrupted run never wrote (it is scanned again, faces and all)."""
    if not path.is_file():
        return
    with open(path, "rb+") as handle:
        offset = finished = 0
        for line in handle:
            offset += len(line)
            try:
                is_face = FACE_KEY in json.loads(line)
            except (ValueError, TypeError, RecursionError):
                is_face = False  # not a record: _read_done names the line
            if not is_face:
                finished = offset
        if finished != offset:
            handle.truncate(finished)


def _repair_torn_csv(path: Path, columns: int, face_column: int | None = None) -> None:
    """Cut the CSV back to its last complete record, parsing records rather than lines.

    A quoted field may hold newlines (a file name, an error message), so a run interrupted mid-record can leave a
    file that ends in a newline and still tears a record. A record counts as complete when it parses with the
    header's number of fields and its last line ends with a newline; anything after the last one is cut. With
    ``face_column``, face records after the last image record are cut too (see :func:`_cut_unfinished_faces`).
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
        reader = csv.reader(lines(), strict=True)
        try:
            for row in reader:
                consumed = reader.line_num
                if consumed == 1 and len(row) != columns and line_ends_newline[0]:
                    return  # another scan's whole header (other labels, or faces): left for _read_done to refuse
                if len(row) != columns or not line_ends_newline[consumed - 1]:
                    break
                if face_column is None or consumed == 1 or not row[face_column]:  # the header, or an image's record
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
    video_frames: str | os.PathLike[str] | None = None,
) -> ScanSummary:
    """Classify the images under ``root`` not yet in ``output``, appending a record per image, and with a
    detector that decides by faces (:attr:`Detector.faces_first`) a record per face before it.

    Videos (files :func:`~fastvit_detect.video.find_videos` finds, and image-named files whose content is a video)
    get one record each, after the images: the clip's verdict as :meth:`Detector.predict_video` gives it, with
    ``video``, ``duration``, ``sampled_frames`` and ``suspicious_ranges`` (JSON lines; CSV keeps the common
    columns). ``video_frames``: a JSON-lines file that gets one line per sampled frame too (appended)."""
    folder = Path(root)
    check_scan_target(folder, output, fmt)
    faces = detector.faces_first
    summary = ScanSummary(faces=0 if faces else None)
    started = time.perf_counter()
    with ScanOutput(Path(output), detector.labels, fmt, overwrite, faces=faces) as writer:
        images = sorted({*find_images(folder), *find_videos(folder)})
        summary.found = len(images)
        todo = [path for path in images if _identity(path) not in writer.done]
        summary.already_done = summary.found - len(todo)
        videos = [path for path in todo if is_video(path)]
        if videos:
            todo = [path for path in todo if path not in set(videos)]
        started = time.perf_counter()
        results: Generator[Any, None, None] = (
            detector.predict_faces_iter(todo, batch_size=batch_size, errors="return") if faces
            else detector.predict_iter(todo, batch_size=batch_size, prefetch=1, errors="return"))
        try:
            for done, (path, result) in enumerate(zip(todo, results), start=1):
                records = faces_records(str(path), result) if faces else [result_record(str(path), result)]
                for record in records:
                    writer.write_record(record)
                    summary.count(record)
                if done % batch_size == 0 or done == len(todo):
                    writer.flush()
                    if progress:
                        progress(done, len(todo))
        finally:
            results.close()  # stops the decoding thread at once on Ctrl-C or a write error
            summary.seconds = time.perf_counter() - started
        if videos:
            _scan_videos(detector, videos, writer, summary, video_frames)
            summary.seconds = time.perf_counter() - started
    return summary


def _scan_videos(detector: Detector, videos: Sequence[Path], writer: ScanOutput, summary: ScanSummary,
                 frames_file: str | os.PathLike[str] | None) -> None:
    """One record per video (flushed as it is written, so a resumed scan skips it), and its frames' lines."""
    from .errors import InputError, ModelOutputError
    from .timeline import has_face_detector

    faces = has_face_detector(detector.package)
    frames = open(frames_file, "a", encoding="utf-8") if frames_file is not None else None  # noqa: SIM115
    try:
        for path in videos:
            try:
                result = detector.predict_video(path, faces=faces)
            except (InputError, ModelOutputError) as exc:
                writer.write(str(path), exc)
                summary.failed += 1
            else:
                if result.prediction is not None:
                    summary.classified += 1
                    summary.labels[result.prediction.label] += 1
                writer.write_record(video_record(str(path), result))
                if frames is not None:
                    for frame in result.frames:
                        frames.write(json.dumps({"video": str(path), **frame.to_dict()}) + "\n")
                    frames.flush()
            writer.flush()
    finally:
        if frames is not None:
            frames.close()
