"""Mutants once listed as equivalent in scripts/mutation_equivalent.txt that a test can tell apart after all.

Where the expected values come from:

- the calibration cache's age: docs/guides/performance-tuning.md ("older than 180 days": one exactly 180 days old,
  or read the instant it was written, is still used), with ``time.time`` frozen at whole seconds so the ages are
  exact;
- the calibration's input size: the graph's declared input shape (written here with onnx.helper) and the error
  contract (every failure a typed FastVitDetectError, never a bare ValueError);
- a torn results file: the bytes written here (everything up to the last newline is kept) and the file system's
  own modification time (a resume with nothing to cut leaves the file untouched);
- the scan's read-ahead: docs/guides/python-api.md (it decodes the next batch while the model runs the current
  one, at most one batch ahead), counted with a stand-in around the preprocessor;
- the Hub's network errors: what urllib raises for an address without a host, and the exception a stand-in
  ``socket.create_connection`` raises.
"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest
from conftest import sample_photos

from fastvit_detect import Detector, layout, pool
from fastvit_detect.errors import FastVitDetectError
from fastvit_detect.layout import CACHE_MAX_AGE_S, Layout, read_calibration, write_calibration
from fastvit_detect.scan import _repair_torn_line, scan

# --- layout.py: a calibration's age, both ends inclusive ---------------------------------------------------------

NOW = 1_800_000_000.0  # a whole second: the ages below are exact in floating point


def test_a_calibration_read_the_instant_it_was_written_is_trusted(tmp_path, monkeypatch):
    """A coarse clock reads the same time for the write and the read: age 0 is not "in the future"."""
    monkeypatch.setattr(layout.time, "time", lambda: NOW)
    path = tmp_path / "layout.json"
    write_calibration(path, Layout(2, 1, "calibrated"), {"2x1": 10.0})
    found = read_calibration(path, cores=2)
    assert found is not None and (found.workers, found.threads_per_worker) == (2, 1)


def test_a_calibration_exactly_180_days_old_is_trusted_and_a_second_more_is_not(tmp_path, monkeypatch):
    assert CACHE_MAX_AGE_S == 180 * 24 * 3600  # the docs' 180 days
    path = tmp_path / "layout.json"
    monkeypatch.setattr(layout.time, "time", lambda: NOW)
    write_calibration(path, Layout(2, 1, "calibrated"), {"2x1": 10.0})
    monkeypatch.setattr(layout.time, "time", lambda: NOW + 180 * 24 * 3600)
    found = read_calibration(path, cores=2)
    assert found is not None and (found.workers, found.threads_per_worker) == (2, 1)
    monkeypatch.setattr(layout.time, "time", lambda: NOW + 180 * 24 * 3600 + 1)
    assert read_calibration(path, cores=2) is None


# --- pool.py: the image size a calibration times, from the graph's input shape ------------------------------------


def _identity_graph(path: Path, shape: list) -> Path:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["pixel_values"], ["logits"])], "declared-shape",
                              [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, shape)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_a_graph_declaring_0_by_0_images_is_refused_not_calibrated(tmp_path):
    """A 0-sized axis is no image size: the calibration times 224 x 224 (as for a dynamic axis), which such a graph
    refuses with a typed error; timing 0 x 0 batches would cache a layout measured on nothing."""
    model = _identity_graph(tmp_path / "zero.onnx", ["N", 3, 0, 0])
    with pytest.raises(FastVitDetectError):
        pool.calibrate_layout(model, "ab" * 32, cores=1, cache_directory=tmp_path / "cache", rounds=1)
    assert not list((tmp_path / "cache").glob("layout-*.json"))  # nothing cached


def test_a_graph_with_a_five_axis_input_fails_typed_not_with_a_bare_value_error(tmp_path):
    model = _identity_graph(tmp_path / "five.onnx", ["N", 3, 8, 8, 1])
    with pytest.raises(FastVitDetectError):
        pool.calibrate_layout(model, "ab" * 32, cores=1, cache_directory=tmp_path / "cache", rounds=1)


# --- scan.py: repairing a torn JSON-lines file ----------------------------------------------------------------------


def test_a_torn_record_after_a_newline_in_the_first_byte_is_cut_back_to_that_newline(tmp_path):
    """The walk back reaches the file's first block: the newline at byte 0 is kept, only the torn record goes."""
    path = tmp_path / "results.jsonl"
    path.write_bytes(b"\n" + b"x" * 65536)
    _repair_torn_line(path)
    assert path.read_bytes() == b"\n"


# --- scan.py: a resume with nothing to cut leaves the results file untouched ----------------------------------------


@pytest.fixture
def photos(tmp_path) -> Path:
    root = tmp_path / "photos"
    root.mkdir()
    for photo in sample_photos()[:3]:
        shutil.copyfile(photo, root / photo.name)
    return root


@pytest.mark.parametrize("name", ["results.jsonl", "results.csv"])
def test_resuming_a_finished_scan_leaves_the_results_file_untouched(vit_package, photos, tmp_path, name):
    detector = Detector.load(vit_package, variant="fp32")
    output = tmp_path / "out" / name
    scan(detector, photos, output, batch_size=2)
    before = output.read_bytes()
    assert before.endswith(b"\n")
    old = 1_000_000_000  # 2001: any write, or a truncate even to the same size, sets the time to now
    os.utime(output, (old, old))
    again = scan(detector, photos, output, batch_size=2)
    assert (again.already_done, again.classified) == (3, 0)
    assert output.stat().st_mtime == old
    assert output.read_bytes() == before


# --- scan.py: the scan decodes at most one batch ahead of the model -------------------------------------------------


class Stop(Exception):
    pass


def test_scan_decodes_at_most_one_batch_ahead_of_the_model(vit_package, tmp_path, monkeypatch):
    root = tmp_path / "photos"
    root.mkdir()
    for index, photo in enumerate(sample_photos()[:6]):
        shutil.copyfile(photo, root / f"{index}{photo.suffix}")
    detector = Detector.load(vit_package, variant="fp32", workers=1)
    assert detector.layout.workers == 1
    decoded: list[int] = []
    batch_pixels = detector.preprocessor.batch_pixels

    def counting(chunk):
        decoded.append(len(chunk))
        return batch_pixels(chunk)

    monkeypatch.setattr(detector.preprocessor, "batch_pixels", counting)

    def progress(done, total):
        raise Stop  # after the first batch's records: the model has run one batch

    with pytest.raises(Stop):
        scan(detector, root, tmp_path / "results.jsonl", batch_size=1, progress=progress)
    assert decoded == [1, 1]  # the batch the model ran and the one decoded ahead of it, no more


# --- hub.py: network errors that urllib wraps ------------------------------------------------------------------------


def test_an_endpoint_without_a_host_is_unreachable_not_a_nonsense_answer(tmp_path):
    """urllib refuses "http://" with URLError('no host given'), whose reason is a string: the Hub can't be reached
    (so the cache may serve), not an answer that made no sense."""
    pytest.importorskip("huggingface_hub")
    from fastvit_detect.errors import HubOfflineError
    from fastvit_detect.hub import fetch

    with pytest.raises(HubOfflineError, match="can't be reached.*isn't in the cache"):  # the cache was asked
        fetch("deepfakes/vit-onnx", cache_dir=tmp_path, endpoint="http://")


def test_a_refused_connection_is_named_by_the_error_the_socket_raised(tmp_path, monkeypatch):
    """The refusal itself (ConnectionRefusedError, its own words) is the cause the message names, not a
    ConnectionError wrapped around it."""
    pytest.importorskip("huggingface_hub")
    from fastvit_detect.errors import HubOfflineError
    from fastvit_detect.hub import fetch

    refusal = ConnectionRefusedError("refused by the stand-in")

    def refuse(*args, **kwargs):
        raise refusal

    monkeypatch.setattr(socket, "create_connection", refuse)
    with pytest.raises(HubOfflineError) as offline:
        fetch("deepfakes/vit-onnx", cache_dir=tmp_path, endpoint="http://127.0.0.1:9")
    message = str(offline.value)
    assert "can't be reached: refused by the stand-in (ConnectionRefusedError)" in message, message


def test_an_endpoint_without_a_host_says_why(tmp_path):
    pytest.importorskip("huggingface_hub")
    from fastvit_detect.errors import HubOfflineError
    from fastvit_detect.hub import fetch

    with pytest.raises(HubOfflineError, match="can't be reached: .*no host given"):
        fetch("deepfakes/vit-onnx", cache_dir=tmp_path, endpoint="http://")
