"""What scan's survivors of the automatic mutation run showed untested: a results path that isn't a regular file
given to ScanOutput itself (the Ray engine's writer), nested output folders, what reaches the disk and when, the
file handle's end, a record torn inside its quoted last field, another model's CSV of a different width, and the
default batch's flush and progress cadence.

The expected answers come from the file system (``/proc/self/fd``, the bytes on disk), Python's csv module and a
fake detector that counts, not from scan's own code."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from fastvit_detect.detector import Prediction
from fastvit_detect.errors import FastVitDetectError
from fastvit_detect.scan import ScanOutput, check_scan_target, output_format, scan

LABELS = ("Fake", "Real")
GOOD = {"label": "Real", "score": 0.75, "fake_probability": 0.25, "probabilities": {"Fake": 0.25, "Real": 0.75}}


def open_descriptors_to(path: Path) -> list[int]:
    """This process's file descriptors open on ``path``, as the kernel lists them."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == str(path.resolve()):
                found.append(int(name))
        except OSError:  # the descriptor listdir itself used, closed by now
            continue
    return found


needs_proc = pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs Linux's /proc/self/fd")


def test_the_writer_refuses_a_directory_as_its_results_file(tmp_path):
    folder = tmp_path / "results.jsonl"
    folder.mkdir()
    with pytest.raises(FastVitDetectError, match=r"results\.jsonl: a directory; scan writes a resumable"):
        ScanOutput(folder, LABELS, "jsonl")


def test_the_writer_refuses_a_device_as_its_results_file():
    """/dev/null reads back empty and takes every write: without the check a scan would 'succeed' into it."""
    with pytest.raises(FastVitDetectError, match=r"/dev/null: not a regular file"):
        ScanOutput(Path("/dev/null"), LABELS, "jsonl")


def test_results_go_into_folders_that_do_not_exist_yet(tmp_path):
    path = tmp_path / "runs" / "today" / "results.jsonl"
    with ScanOutput(path, LABELS, "jsonl") as output:
        output.write_record({"image": "a.png", **GOOD})
    assert path.read_text().count("\n") == 1


@needs_proc
def test_each_flush_and_the_close_sync_the_results_file_to_disk(tmp_path, monkeypatch):
    path = tmp_path / "results.csv"
    synced: list[int] = []
    real_fsync = os.fsync

    def counting_fsync(descriptor: int) -> None:
        if os.readlink(f"/proc/self/fd/{descriptor}") == str(path.resolve()):
            synced.append(descriptor)
        real_fsync(descriptor)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    output = ScanOutput(path, LABELS, "csv")
    output.write_record({"image": "a.png", **GOOD})
    output.flush()
    assert len(synced) == 1
    output.write_record({"image": "b.png", **GOOD})
    output.close()  # the last batch reaches the disk even when the caller never flushed it
    assert len(synced) == 2
    assert path.read_text().count("\n") == 3


@needs_proc
def test_the_results_file_is_closed_when_the_writer_is(tmp_path):
    path = tmp_path / "results.jsonl"
    with ScanOutput(path, LABELS, "jsonl") as output:
        output.write_record({"image": "a.png", **GOOD})
        assert len(open_descriptors_to(path)) == 1
    assert open_descriptors_to(path) == []


def test_a_record_torn_inside_its_quoted_last_field_after_a_newline_is_cut(tmp_path):
    """The error message is the last column and may hold a newline: a record torn just after that newline has
    every field and ends its physical line, yet its quote is still open. Kept, it would swallow the next record."""
    path = tmp_path / "results.csv"
    with ScanOutput(path, LABELS, "csv", overwrite=True) as output:
        output.write_record({"image": "a.png", **GOOD})
    before = path.read_bytes()
    with ScanOutput(path, LABELS, "csv") as output:
        output.write_record({"image": "b.png", "error": {"type": "ImageDecodeError", "message": "b: first\nsecond"}})
    whole = path.read_bytes()
    torn = whole[:whole.index(b"first\n") + len(b"first\n")]
    path.write_bytes(torn)
    output = ScanOutput(path, LABELS, "csv")
    output.close()
    assert path.read_bytes() == before
    assert output.done == {str(Path("a.png").resolve())}


def test_a_csv_of_a_model_with_more_labels_is_refused_not_wiped(tmp_path):
    """Another model's results: refused (as for the same width, tests/test_scan.py), never cut to nothing."""
    path = tmp_path / "results.csv"
    earlier = ("image,label,score,fake_probability,p_Cat,p_Dog,p_Fox,error_type,error_message\r\n"
               "x.png,Cat,0.5,,0.5,0.3,0.2,,\r\n")
    path.write_text(earlier, newline="")
    with pytest.raises(FastVitDetectError, match="aren't this model's"):
        ScanOutput(path, LABELS, "csv")
    assert path.read_bytes() == earlier.encode()


class CountingDetector:
    """Stands in for a Detector: every image is Real, and it records how scan drives it."""

    labels = LABELS
    faces_first = False  # a whole-image detector: scan asks (Detector.faces_first, since faces landed)

    def __init__(self) -> None:
        self.calls: list[dict] = []
        self.closed = False

    def predict_iter(self, images, **options):
        self.calls.append(options)
        return self._results(list(images))

    def _results(self, images):
        try:
            for _ in images:
                yield Prediction("Real", 0.75, {"Fake": 0.25, "Real": 0.75}, np.zeros(2, np.float32), 0.25)
        finally:
            self.closed = True


def image_folder(root: Path, count: int) -> Path:
    root.mkdir()
    for index in range(count):
        (root / f"{index:03d}.png").write_bytes(b"never decoded by the fake detector")
    return root


def test_the_default_batch_flushes_and_reports_every_sixteen_images_and_at_the_end(tmp_path):
    folder = image_folder(tmp_path / "images", 20)
    detector = CountingDetector()
    reports: list[tuple[int, int]] = []
    summary = scan(detector, folder, tmp_path / "results.jsonl", progress=lambda done, total: reports.append(
        (done, total)))
    assert reports == [(16, 20), (20, 20)]  # predict_batch's documented default batch, docs/guides/python-api.md
    assert detector.calls[0]["batch_size"] == 16
    assert summary.classified == 20 and summary.labels["Real"] == 20
    assert (tmp_path / "results.jsonl").read_text().count("\n") == 20


def test_a_write_that_fails_stops_the_decoding_at_once(tmp_path, monkeypatch):
    folder = image_folder(tmp_path / "images", 5)
    detector = CountingDetector()

    def full_disk(self, record):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ScanOutput, "write_record", full_disk)  # every record goes through it
    with pytest.raises(OSError, match="No space left") as failure:
        scan(detector, folder, tmp_path / "results.jsonl")
    # Checked while the error's traceback (and so scan's frame) is still held: closed by scan, not by the garbage
    # collector.
    assert detector.closed
    assert failure.tb is not None


def test_the_scan_target_is_checked_before_a_model_is_loaded(tmp_path):
    """check_scan_target, which the CLI calls before loading a model: the results file's format from its name, and
    a results path that is a directory refused there."""
    images = tmp_path / "images"
    images.mkdir()
    assert check_scan_target(images, tmp_path / "results.csv", None) == "csv"
    assert check_scan_target(images, tmp_path / "results.out", None) == "jsonl"
    (tmp_path / "taken.jsonl").mkdir()
    with pytest.raises(FastVitDetectError, match=r"taken\.jsonl: a directory"):
        check_scan_target(images, tmp_path / "taken.jsonl", None)


@pytest.mark.parametrize("path, fmt, message", [
    ("out.parquet", None, ("out.parquet: parquet results (from its .parquet suffix) can't be written here: this scan "
                          "writes jsonl or csv; Parquet needs --engine ray")),
    ("out.data", "parquet", ("out.data: parquet results (from --format parquet) can't be written here: this scan "
                            "writes jsonl or csv; Parquet needs --engine ray")),
    ("out.data", "xml", ("out.data: xml results (from --format xml) can't be written here: this scan writes jsonl or "
                        "csv")),
])
def test_a_results_format_this_engine_does_not_write_is_refused_saying_why(path, fmt, message):
    with pytest.raises(FastVitDetectError) as refused:
        output_format(path, fmt)
    assert str(refused.value) == message


def test_a_flushed_record_is_in_the_file_before_the_writer_closes(tmp_path):
    """What a scan killed right after a batch leaves: every record flushed is on disk, read by another handle."""
    path = tmp_path / "results.jsonl"
    output = ScanOutput(path, LABELS, "jsonl")
    output.write_record({"image": "a.png", **GOOD})
    output.flush()
    assert path.read_text().count("\n") == 1
    output.close()


def test_a_scan_of_what_is_no_folder_is_refused_not_an_empty_scan(tmp_path):
    detector = CountingDetector()
    with pytest.raises(FastVitDetectError, match=r"missing: not a directory to scan"):
        scan(detector, tmp_path / "missing", tmp_path / "results.jsonl")
    assert detector.calls == []


def test_each_progress_report_follows_a_flush_of_exactly_that_many_records(tmp_path):
    """Progress is reported after the batch's records reach the file: what a user sees counted is on disk."""
    folder = image_folder(tmp_path / "images", 5)
    output = tmp_path / "results.jsonl"
    on_disk: list[tuple[int, int]] = []
    scan(CountingDetector(), folder, output, batch_size=2,
         progress=lambda done, total: on_disk.append((done, output.read_text().count("\n"))))
    assert on_disk == [(2, 2), (4, 4), (5, 5)]


def test_a_face_records_box_is_its_pixels_to_the_hundredth():
    """The faces guide: a face record's box is x0, y0, x1, y1 in pixels, rounded to 1/100 px (a record that keeps
    the detector's float noise would differ between runs; one rounded coarser would move the box)."""
    from fastvit_detect.detector import FacesResult
    from fastvit_detect.faces import Face
    from fastvit_detect.scan import faces_records

    prediction = Prediction("Real", 0.75, {"Fake": 0.25, "Real": 0.75}, np.zeros(2, np.float32), 0.25)
    face = Face((10.123456, 20.5049, 99.996, 140.0), 0.987654321)
    records = faces_records("a.png", FacesResult.decide([(face, prediction)], "whole-image"))
    assert records[0]["box"] == [10.12, 20.5, 100.0, 140.0]
    assert records[0]["face_score"] == 0.987654321 and records[0]["face"] == 1
    assert records[1] == {"image": "a.png", **prediction.to_dict(), "decided_by": "face", "face_count": 1}


class FacelessDetector(CountingDetector):
    """Decides by faces and finds none: every image is decided whole."""

    faces_first = True

    def predict_faces_iter(self, images, **options):
        from fastvit_detect.detector import FacesResult

        self.calls.append(options)
        whole = Prediction("Real", 0.75, {"Fake": 0.25, "Real": 0.75}, np.zeros(2, np.float32), 0.25, "whole-image")
        return (FacesResult.decide([], "whole-image", whole) for _ in list(images))


def test_a_faces_scan_says_how_many_faces_even_none_and_a_plain_scan_says_nothing_of_faces(tmp_path):
    """ScanSummary.faces: faces recorded in a scan with faces (0 when none was found), None in a scan without."""
    faces = scan(FacelessDetector(), image_folder(tmp_path / "a", 3), tmp_path / "faces.jsonl")
    assert faces.faces == 0 and faces.classified == 3 and "3 classified (0 face(s))" in faces.describe()
    plain = scan(CountingDetector(), image_folder(tmp_path / "b", 3), tmp_path / "plain.jsonl")
    assert plain.faces is None and "face" not in plain.describe()


def test_a_faces_csv_whose_only_record_is_an_unfinished_images_face_is_cut_to_its_header(tmp_path):
    """A run killed after the first face record of its first image: that image isn't done, so its face record is
    cut and the image classified again on resume (its face written once)."""
    path = tmp_path / "results.csv"
    writer = ScanOutput(path, LABELS, faces=True)
    writer.write_record({"image": "a.png", "face": 1, "box": [1.0, 2.0, 3.0, 4.0], "face_score": 0.9, **GOOD})
    writer.close()
    header = path.read_text().splitlines()[0]
    assert len(path.read_text().splitlines()) == 2
    again = ScanOutput(path, LABELS, faces=True)
    again.close()
    assert path.read_text().splitlines() == [header] and again.done == set()


def test_a_faces_results_file_ending_in_a_line_that_is_no_record_is_refused_whole_not_cut(tmp_path):
    """Resuming a faces scan cuts only face records an interrupted run left without their image's record; a whole
    line that isn't a record at all (a hand edit, another program's output) is named, and the file left alone."""
    path = tmp_path / "results.jsonl"
    writer = ScanOutput(path, LABELS, faces=True)
    writer.write_record({"image": "a.png", "face": 1, "box": [1.0, 2.0, 3.0, 4.0], "face_score": 0.9, **GOOD})
    writer.write_record({"image": "a.png", **GOOD, "decided_by": "face", "face_count": 1})
    writer.close()
    with open(path, "a") as handle:
        handle.write("this is not JSON\n")
    before = path.read_bytes()
    with pytest.raises(FastVitDetectError, match=r"results.jsonl:3: not a scan record"):
        ScanOutput(path, LABELS, faces=True)
    assert path.read_bytes() == before
