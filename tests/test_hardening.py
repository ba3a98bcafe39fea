"""One hostile input must never hurt anyone else: decoder failures of every class, paths that aren't files, byte
caps, hostile file objects and arrays, and batches where good and bad images are mixed."""

from __future__ import annotations

import csv
import io
import json
import os
import random
import socket
import struct
import subprocess
import sys
import threading

import numpy as np
import pytest
from conftest import sample_photos
from PIL import Image, PngImagePlugin

import fastvit_detect as fd
from fastvit_detect.scan import scan

MARKED_WIDTH = 13  # PNGs this wide get the injected decoder failure


def png(width: int = 40, height: int = 30, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def psd_header(width: int, height: int) -> bytes:
    """A Photoshop file's header declaring width x height, and nothing else."""
    return b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, height, width, 8, 3) + b"\0" * 80


def dds_with_unknown_pixel_format() -> bytes:
    """A DDS file with a four-character code Pillow doesn't know: its plugin raises NotImplementedError."""
    header = b"DDS " + struct.pack("<7I", 124, 0x1007, 16, 16, 0, 0, 0) + b"\0" * 44
    return header + struct.pack("<2I4s5I", 32, 0x4, b"ABCD", 0, 0, 0, 0, 0) + struct.pack("<4I", 0x1000, 0, 0, 0) \
        + b"\0" * 1028


# --- every decoder failure is an ImageDecodeError -----------------------------------------------------------


DECODER_FAILURES = [RuntimeError("corrupt AVIF"), NotImplementedError("unknown pixel format"),
                    OverflowError("2**31 pixels"), struct.error("unpack requires a buffer"), IndexError("palette"),
                    TypeError("bad tile"), ZeroDivisionError("division by zero"), KeyError("mode"),
                    AssertionError("plugin invariant"), RecursionError("nested IFDs"), UnicodeDecodeError(
                        "utf-8", b"\xff", 0, 1, "bad text chunk"), MemoryError()]


@pytest.fixture
def failing_png_decoder(monkeypatch):
    """PNGs MARKED_WIDTH px wide raise the exception the test sets; every other PNG decodes normally."""
    state: dict[str, BaseException | None] = {"error": None}
    real_load = PngImagePlugin.PngImageFile.load

    def load(self):  # type: ignore[no-untyped-def]
        if self.size[0] == MARKED_WIDTH and state["error"] is not None:
            raise state["error"]
        return real_load(self)

    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", load)
    return state


@pytest.mark.parametrize("error", DECODER_FAILURES, ids=lambda error: type(error).__name__)
def test_any_decoder_exception_is_a_typed_error_and_fails_only_its_image(vit_package, failing_png_decoder, error):
    failing_png_decoder["error"] = error
    detector = fd.Detector.load(vit_package, variant="fp32")
    poison = png(MARKED_WIDTH, 20)
    expected_class = fd.ImageTooLargeError if isinstance(error, MemoryError) else fd.ImageDecodeError
    with pytest.raises(expected_class) as info:
        detector.predict(poison)
    assert info.value.source == f"<{len(poison)} bytes>" and type(error).__name__ in str(info.value.__cause__.__class__)
    good = [png(40, 30, seed) for seed in range(3)]
    results = detector.predict_batch([good[0], poison, good[1], good[2]], batch_size=4, errors="return")
    assert isinstance(results[1], expected_class)
    alone = [detector.predict(image) for image in good]
    for result, reference in zip([results[0], results[2], results[3]], alone):
        np.testing.assert_array_equal(result.logits, reference.logits)


def test_real_decoder_failures_outside_oserror(vit_package):
    """Files that make Pillow's own plugins raise NotImplementedError, or declare 2**31 pixels."""
    detector = fd.Detector.load(vit_package, max_pixels=None)
    with pytest.raises(fd.ImageDecodeError, match="NotImplementedError: Unimplemented pixel format"):
        detector.predict(dds_with_unknown_pixel_format())
    with pytest.raises(fd.ImageTooLargeError, match="2,147,483,648 pixels|safety limit"):
        fd.Detector.load(vit_package).predict(psd_header(65536, 32768))
    with pytest.raises(fd.ImageTooLargeError):
        detector.predict(psd_header(65536, 32768))


def test_eps_is_refused_before_ghostscript_runs(vit_package):
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    with pytest.raises(fd.ImageDecodeError, match="EPS images aren't accepted"):
        fd.Detector.load(vit_package).predict(eps)


# --- paths that aren't files, and byte caps -----------------------------------------------------------------


def test_fifo_is_refused_without_blocking(vit_package, tmp_path):
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    result: dict[str, BaseException] = {}

    def classify() -> None:
        try:
            fd.Detector.load(vit_package).predict(fifo)
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            result["error"] = exc

    worker = threading.Thread(target=classify, daemon=True)
    worker.start()
    worker.join(30)
    assert not worker.is_alive(), "reading a FIFO blocked"
    assert isinstance(result["error"], fd.ImageNotFoundError) and "a FIFO" in str(result["error"])


@pytest.mark.parametrize("device, kind", [("/dev/zero", "a character device"), ("/dev/urandom", "a character device"),
                                          ("/dev/null", "a character device")])
def test_devices_are_refused(vit_package, device, kind):
    if not os.path.exists(device):
        pytest.skip(f"{device} doesn't exist here")
    with pytest.raises(fd.ImageNotFoundError, match=f"not a regular file \\({kind}\\)"):
        fd.Detector.load(vit_package).predict(device)


def test_unix_socket_is_refused(vit_package, tmp_path):
    path = tmp_path / "s.png"
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(path))
        with pytest.raises(fd.ImageNotFoundError, match="a socket"):
            fd.Detector.load(vit_package).predict(path)


def test_huge_file_is_refused_before_reading(vit_package, tmp_path):
    huge = tmp_path / "huge.png"
    with open(huge, "wb") as handle:  # sparse: 3 GiB on paper, nothing on disk
        handle.write(png())
        handle.truncate(3 * 1024**3)
    with pytest.raises(fd.ImageTooLargeError, match="3,221,225,472 bytes exceeds the cap of 268,435,456 bytes"):
        fd.Detector.load(vit_package).predict(huge)


def test_byte_cap_applies_to_every_input_kind(vit_package):
    data = png(60, 60)
    detector = fd.Detector.load(vit_package, max_bytes=len(data) - 1)
    for image in (data, bytearray(data), memoryview(data), io.BytesIO(data)):
        with pytest.raises(fd.ImageTooLargeError, match=f"{len(data):,} bytes exceeds the cap"):
            detector.predict(image)
    assert fd.Detector.load(vit_package, max_bytes=len(data)).predict(data).label in ("Fake", "Real")


@pytest.mark.parametrize("bad", [0, -1, 1.5, float("inf"), float("nan"), "10", True])
def test_caps_must_be_sane(vit_package, bad):
    with pytest.raises(ValueError, match=r"\(None: no cap\) must be a whole number >= 1"):
        fd.Detector.load(vit_package, max_bytes=bad)
    with pytest.raises(ValueError, match=r"\(None: no cap\) must be a whole number >= 1"):
        fd.Detector.load(vit_package, max_pixels=bad)


# --- hostile file objects, arrays and PIL images ------------------------------------------------------------


class Reader(io.RawIOBase):
    def __init__(self, behaviour: str) -> None:
        self.behaviour = behaviour

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1):  # type: ignore[override]
        if self.behaviour == "raises":
            raise RuntimeError("the network share went away")
        if self.behaviour == "text":
            return "not bytes"
        if self.behaviour == "endless":  # asked for everything, it would never stop: the cap bounds the read
            assert size is not None and size > 0, "read() without a size on an endless stream"
            return b"\0" * size
        return b""


@pytest.mark.parametrize("behaviour, error, cause", [
    ("raises", fd.ImageDecodeError, "RuntimeError: the network share went away"),
    ("text", fd.UnsupportedInputError, "binary mode"),
    ("endless", fd.ImageTooLargeError, "exceeds the cap"),
    ("empty", fd.EmptyImageError, "empty input"),
])
def test_hostile_file_objects(vit_package, behaviour, error, cause):
    with pytest.raises(error, match=cause):
        fd.Detector.load(vit_package).predict(Reader(behaviour))


@pytest.mark.parametrize("array, error", [
    (np.zeros((10, 10, 3), dtype=np.float32), fd.UnsupportedInputError),
    (np.zeros((10, 10, 4), dtype=np.uint8), fd.UnsupportedInputError),
    (np.zeros((10, 10, 3), dtype=object), fd.UnsupportedInputError),
    (np.zeros((0, 10, 3), dtype=np.uint8), fd.EmptyImageError),
    (np.zeros((2, 2, 2, 3), dtype=np.uint8), fd.UnsupportedInputError),
    (np.broadcast_to(np.zeros(3, dtype=np.uint8), (200_000, 200_000, 3)), fd.ImageTooLargeError),
])
def test_hostile_arrays(vit_package, array, error):
    with pytest.raises(error):
        fd.Detector.load(vit_package).predict(array)


def test_odd_arrays_that_are_images_still_work(vit_package):
    detector = fd.Detector.load(vit_package, variant="fp32")
    image = np.random.default_rng(0).integers(0, 255, (50, 40, 3), dtype=np.uint8)
    reference = detector.predict(image).logits
    for variant in (image[::-1][::-1], np.asfortranarray(image), image.copy(order="C")):
        np.testing.assert_array_equal(detector.predict(variant).logits, reference)
    readonly = image.copy()
    readonly.flags.writeable = False
    np.testing.assert_array_equal(detector.predict(readonly).logits, reference)


@pytest.mark.parametrize("mode", ["F", "I", "I;16", "1", "L", "LA", "P", "CMYK", "YCbCr", "HSV", "RGBA", "LAB"])
def test_pil_images_in_every_mode_give_a_verdict(vit_package, mode):
    """Every mode Pillow converts to RGB gives the verdict of the RGB image it converts to."""
    image = Image.new(mode, (20, 10))
    detector = fd.Detector.load(vit_package, variant="fp32")
    np.testing.assert_array_equal(detector.predict(image).logits, detector.predict(image.convert("RGB")).logits)


def test_a_mode_that_cannot_become_rgb_is_a_decode_error(vit_package, monkeypatch):
    image = Image.new("L", (20, 10))

    def refuse(self, mode=None, *args, **kwargs):  # type: ignore[no-untyped-def]
        raise ValueError(f"conversion from {self.mode} to {mode} not supported")

    monkeypatch.setattr(Image.Image, "convert", refuse)
    with pytest.raises(fd.ImageDecodeError, match="can't convert mode L to RGB"):
        fd.Detector.load(vit_package).predict(image)


def test_a_closed_pil_image_is_an_input_error(vit_package):
    image = Image.open(io.BytesIO(png()))
    image.close()
    with pytest.raises(fd.InputError):
        fd.Detector.load(vit_package).predict(image)


def test_unreadable_file_is_image_not_found(vit_package, tmp_path, monkeypatch):
    path = tmp_path / "locked.png"
    path.write_bytes(png())
    real_open = os.open

    def deny(name, *args, **kwargs):  # type: ignore[no-untyped-def]
        if os.fspath(name) == str(path):  # what a 0000 file gives any user but root
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(name, *args, **kwargs)

    monkeypatch.setattr(os, "open", deny)
    with pytest.raises(fd.ImageNotFoundError, match="can't read file: Permission denied"):
        fd.Detector.load(vit_package).predict(path)


# --- batch isolation: good and bad images shuffled together ------------------------------------------------


@pytest.fixture(scope="module")
def mixed_inputs(bad_inputs, tmp_path_factory) -> list:
    folder = tmp_path_factory.mktemp("mixed")
    paths = []
    for index, photo in enumerate(sample_photos()[:5]):
        target = folder / f"good-{index}{photo.suffix}"
        target.write_bytes(photo.read_bytes())
        paths.append(target)
    for name in ("empty.jpg", "truncated.jpg", "truncated.png", "text.jpg", "bomb.png"):
        target = folder / f"bad-{name}"
        target.write_bytes(bad_inputs[name].read_bytes())
        paths.append(target)
    (folder / "bad-dds.dds.png").write_bytes(dds_with_unknown_pixel_format())
    paths.append(folder / "bad-dds.dds.png")
    random.Random(7).shuffle(paths)
    return paths


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_good_images_get_their_own_logits_whatever_shares_their_batch(vit_package, mixed_inputs, batch_size,
                                                                     tmp_path):
    detector = fd.Detector.load(vit_package, variant="fp32")
    alone = {path: detector.predict(path).logits for path in mixed_inputs if path.name.startswith("good")}
    batched = detector.predict_batch(mixed_inputs, batch_size=batch_size, errors="return")
    streamed = list(detector.predict_iter(iter(mixed_inputs), batch_size=batch_size, errors="return"))
    out = tmp_path / "scan.jsonl"
    scan(detector, mixed_inputs[0].parent, out, batch_size=batch_size)
    scanned = {json.loads(line)["image"]: json.loads(line) for line in out.read_text().splitlines()}
    for path, from_batch, from_stream in zip(mixed_inputs, batched, streamed):
        record = scanned[str(path)]
        if path.name.startswith("good"):
            np.testing.assert_allclose(from_batch.logits, alone[path], rtol=0, atol=1e-6)
            np.testing.assert_array_equal(from_stream.logits, from_batch.logits)
            np.testing.assert_allclose(record["logits"], alone[path], rtol=0, atol=1e-6)
        else:
            assert isinstance(from_batch, fd.InputError) and type(from_stream) is type(from_batch)
            assert record["error"]["type"] == type(from_batch).__name__


def test_predict_iter_raises_by_default_like_predict_batch(vit_package, bad_inputs):
    detector = fd.Detector.load(vit_package, variant="fp32")
    images = [sample_photos()[0], bad_inputs["text.jpg"], sample_photos()[1]]
    stream = detector.predict_iter(images, batch_size=1)
    assert isinstance(next(stream), fd.Prediction)
    with pytest.raises(fd.ImageDecodeError):
        next(stream)
    with pytest.raises(fd.ImageDecodeError):
        detector.predict_batch(images)
    returned = list(detector.predict_iter(images, batch_size=2, errors="return"))
    assert [type(result) for result in returned] == [fd.Prediction, fd.ImageDecodeError, fd.Prediction]


@pytest.mark.parametrize("argument, value", [("batch_size", 0), ("batch_size", 10**20), ("batch_size", 2.0),
                                             ("batch_size", True), ("prefetch", -1), ("prefetch", 10**9),
                                             ("errors", "ignore")])
def test_stream_arguments_are_checked_at_the_call(vit_package, argument, value):
    with pytest.raises(ValueError, match=argument):
        fd.Detector.load(vit_package).predict_iter([], **{argument: value})


def test_a_failing_session_call_is_retried_image_by_image(vit_package, monkeypatch):
    """Should a batched session call fail, only the image that makes the model fail gets the error."""
    detector = fd.Detector.load(vit_package, variant="fp32")
    real_run = detector.session._session.run
    calls: list[int] = []

    def run(outputs, feeds):  # type: ignore[no-untyped-def]
        batch = feeds[detector.session.input_name]
        calls.append(len(batch))
        if (batch.reshape(len(batch), -1).max(axis=1) > 0.99).any():  # the all-white image breaks the "model"
            raise RuntimeError("kernel failed")
        return real_run(outputs, feeds)

    monkeypatch.setattr(detector.session._session, "run", run)
    white = np.full((30, 30, 3), 255, dtype=np.uint8)
    grey = [np.full((30, 30, 3), value, dtype=np.uint8) for value in (40, 90, 140)]
    results = detector.predict_batch([grey[0], white, grey[1], grey[2]], batch_size=4, errors="return")
    assert calls == [4, 1, 1, 1, 1]
    assert isinstance(results[1], fd.ModelOutputError) and "kernel failed" in str(results[1])
    assert all(isinstance(results[index], fd.Prediction) for index in (0, 2, 3))
    with pytest.raises(fd.ModelOutputError):
        detector.predict(white)


# --- scan: names that aren't UTF-8, torn records, outputs that aren't files ---------------------------------


@pytest.fixture
def odd_names(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    names = [b"caf\xe9-latin1.png", b"plain.png", b"new\nline.png", b'quote"comma,.png']
    for index, name in enumerate(names):
        (folder.as_posix().encode() + b"/" + name).decode("utf-8", errors="surrogateescape")
        with open(os.fsencode(folder) + b"/" + name, "wb") as handle:
            handle.write(png(30 + index, 20, index))
    return folder, names


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_names_that_are_not_utf8_survive_a_scan_and_its_resume(vit_package, odd_names, tmp_path, suffix):
    folder, names = odd_names
    detector = fd.Detector.load(vit_package)
    out = tmp_path / f"results{suffix}"
    first = scan(detector, folder, out, batch_size=2)
    assert first.classified == len(names) and first.failed == 0
    again = scan(detector, folder, out, batch_size=2)
    assert again.already_done == len(names) and again.classified == 0
    if suffix == ".jsonl":
        images = [json.loads(line)["image"] for line in out.read_text(encoding="ascii").splitlines()]
    else:
        with open(out, encoding="utf-8", errors="surrogateescape", newline="") as handle:
            images = [row["image"] for row in csv.DictReader(handle)]
    assert sorted(os.path.basename(os.fsencode(image)) for image in images) == sorted(names)


def test_a_csv_record_torn_inside_a_quoted_name_is_repaired(vit_package, odd_names, tmp_path):
    folder, names = odd_names
    detector = fd.Detector.load(vit_package)
    out = tmp_path / "results.csv"
    scan(detector, folder, out, batch_size=8)
    data = out.read_bytes()
    cut = data.index(b"new\nline.png") + len(b"new\n")  # an interruption right after the newline in the name
    out.write_bytes(data[:cut])
    resumed = scan(detector, folder, out, batch_size=8)
    with open(out, encoding="utf-8", errors="surrogateescape", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(names) and len({row["image"] for row in rows}) == len(names)
    assert all(row["label"] in ("Fake", "Real") for row in rows)
    assert resumed.classified >= 1


@pytest.mark.parametrize("target", ["fifo", "/dev/full", "/dev/null", "directory"])
def test_scan_output_that_is_not_a_regular_file_ends_cleanly(vit_package, odd_names, tmp_path, target):
    folder, _ = odd_names
    if target == "fifo":
        output = tmp_path / "out.jsonl"
        os.mkfifo(output)
    elif target == "directory":
        output = tmp_path
    else:
        output = target
    command = [sys.executable, "-m", "fastvit_detect", "scan", str(folder), "--model", str(vit_package), "-o",
               str(output)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 2, result.stderr
    assert "scan writes a resumable results file" in result.stderr and "Traceback" not in result.stderr


def test_scan_closes_its_output_when_the_folder_walk_fails(vit_package, tmp_path, monkeypatch):
    import fastvit_detect.scan as scan_module

    opened = []
    real_open = open

    def tracking_open(*args, **kwargs):  # type: ignore[no-untyped-def]
        handle = real_open(*args, **kwargs)
        opened.append(handle)
        return handle

    def walk_fails(_root):  # type: ignore[no-untyped-def]
        raise PermissionError("can't list a sub-folder")

    monkeypatch.setattr(scan_module, "find_images", walk_fails)
    monkeypatch.setattr("builtins.open", tracking_open)
    with pytest.raises(PermissionError):
        scan(fd.Detector.load(vit_package), tmp_path, tmp_path / "out.jsonl")
    assert opened and all(handle.closed for handle in opened)
