"""The Ray engine on a local Ray (2 CPUs): same records as the local scan, exactly once through actor deaths,
interrupted drivers and resumes, bad images as error rows. One Ray instance serves the whole module."""

from __future__ import annotations

import copy
import csv
import io
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import noise_image, png_with_header
from loopback import check_loopback_only
from PIL import Image

ray = pytest.importorskip("ray")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

import fastvit_detect.ray as engine  # noqa: E402
from fastvit_detect import Detector  # noqa: E402
from fastvit_detect.cli import main  # noqa: E402
from fastvit_detect.errors import FastVitDetectError  # noqa: E402
from fastvit_detect.scan import FACE_KEY, result_record, scan  # noqa: E402

GOOD_IMAGES = 200
RAY_NOISE = re.compile(r"^\[[^\]]* [EF] \d+ \d+\]|\t(INFO|ERROR) ", re.MULTILINE)  # C++ error/fatal, Python info/error
# name -> error type the runtime gives it; made at the folder's top level
BAD_IMAGES = {"empty.jpg": "EmptyImageError", "truncated.jpg": "ImageDecodeError",
              "truncated.png": "ImageDecodeError", "text.jpg": "ImageDecodeError", "bomb.png": "ImageTooLargeError"}
NOT_UTF8 = b"caf\xe9.png"
# Legal names that Ray Data's own reader mangled (it parses a path as a URL, dropping tabs and line breaks, and
# failed the whole job), and others a reader or a writer may trip on: all are classified like any image.
HOSTILE_NAMES = ["new\nline.png", "carriage\rreturn.jpg", "tab\there.png", "-leading-dash.png",
                 "comma,and\"quote\".png", "with space.jpg", "percent%20and#hash?.png", "ünïcödé-写真.png",
                 "x" * 251 + ".png"]


@pytest.fixture(scope="module")
def local_ray():
    try:
        engine.init_local(num_cpus=2, logging_level=logging.WARNING)
    except Exception:  # noqa: BLE001 - Ray gives a raylet 30 s to register: once more on a crowded machine
        ray.shutdown()
        engine.init_local(num_cpus=2, logging_level=logging.WARNING)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


def encoded(array: np.ndarray, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **options)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """GOOD_IMAGES small photos-like images in nested folders, the bad ones, a FIFO and a name that isn't UTF-8."""
    root = tmp_path_factory.mktemp("ray-images") / "photos"
    for index in range(GOOD_IMAGES):
        sub = root / f"part{index % 3}" / ("deeper" if index % 5 == 0 else "")
        sub.mkdir(parents=True, exist_ok=True)
        pixels = noise_image(24 + index % 40, 30 + (7 * index) % 50, seed=index)
        if index % 2:
            (sub / f"img{index:03d}.jpg").write_bytes(encoded(pixels, "JPEG", quality=80))
        else:
            (sub / f"img{index:03d}.png").write_bytes(encoded(pixels, "PNG"))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: the actor must apply EXIF orientation as the local runtime does
    (root / "rotated.jpg").write_bytes(encoded(noise_image(40, 64, seed=999), "JPEG", exif=exif.tobytes()))
    jpeg, png = encoded(noise_image(80, 80, 1), "JPEG"), encoded(noise_image(80, 80, 2), "PNG")
    bad = {"empty.jpg": b"", "truncated.jpg": jpeg[: len(jpeg) // 3], "truncated.png": png[: len(png) // 2],
           "text.jpg": b"not an image\n" * 20, "bomb.png": png_with_header(100_000, 100_000)}
    for name, data in bad.items():
        (root / name).write_bytes(data)
    with open(os.path.join(os.fsencode(root), NOT_UTF8), "wb") as handle:
        handle.write(encoded(noise_image(30, 30, 3), "PNG"))
    for index, name in enumerate(HOSTILE_NAMES):
        (root / name).write_bytes(encoded(noise_image(28, 36, 50 + index), "PNG" if name.endswith(".png") else "JPEG"))
    os.mkfifo(root / "pipe.png")  # not a regular file: never listed, never read
    return root


@pytest.fixture(scope="module")
def expected(folder, vit_package) -> dict[str, dict]:
    """The local scan's records for the folder: the reference every Ray run must reproduce."""
    output = folder.parent / "local.jsonl"
    scan(Detector.load(vit_package, variant="fp32"), folder, output, batch_size=8)
    return {record["image"]: record for record in map(json.loads, output.read_text().splitlines())}


def read_records(path: Path) -> list[dict]:
    """JSON lines and Parquet give whole records; CSV rows are turned back into records without the logits."""
    if path.suffix == ".parquet":
        return [record for part in sorted(path.glob("part-*.parquet"))
                for record in engine.table_records(pq.read_table(part))]
    if path.suffix == ".csv":
        records = []
        with open(path, encoding="utf-8", errors="surrogateescape", newline="") as handle:
            for row in csv.DictReader(handle):
                if row["error_type"]:
                    records.append({"image": row["image"],
                                    "error": {"type": row["error_type"], "message": row["error_message"]}})
                else:
                    records.append({"image": row["image"], "label": row["label"], "score": float(row["score"]),
                                    "p_Fake": float(row["p_Fake"]), "p_Real": float(row["p_Real"])})
        return records
    return [json.loads(line) for line in path.read_text().splitlines()]


def as_csv(expected: dict[str, dict]) -> dict[str, dict]:
    """The records as a CSV row holds them: probabilities as columns, no logits."""
    rows = {}
    for name, record in expected.items():
        if "error" in record:
            rows[name] = record
        else:
            rows[name] = {"image": name, "label": record["label"], "score": record["score"],
                          **{f"p_{label}": p for label, p in record["probabilities"].items()}}
    return rows


def as_parquet(expected: dict[str, dict]) -> dict[str, dict]:
    """The records as Parquet holds them: names that aren't UTF-8 with their bytes escaped."""
    stored = {}
    for record in copy.deepcopy(list(expected.values())):
        record["image"] = engine._parquet_text(record["image"])
        if "error" in record:
            record["error"]["message"] = engine._parquet_text(record["error"]["message"])
        stored[record["image"]] = record
    return stored


def check_exactly_once(records: list[dict], expected: dict[str, dict]) -> dict[str, dict]:
    names = [record["image"] for record in records]
    assert len(names) == len(set(names)), "an image was written twice"
    assert set(names) == set(expected), "images missing or extra"
    return dict(zip(names, records))


def check_same_as_local_scan(by_name: dict[str, dict], expected: dict[str, dict]) -> None:
    for name, want in expected.items():
        # the same record, key for key and in order: labels, probabilities, fp32 logits bit for bit, errors
        assert json.dumps(by_name[name]) == json.dumps(want), name
    bad = {Path(name).name: record["error"]["type"] for name, record in by_name.items() if "error" in record}
    assert bad == BAD_IMAGES  # every other image, the hostile names among them, has its verdict


def test_batch_classifier_reads_files_uris_and_bytes_itself(vit_package, folder, tmp_path):
    """Without a cluster: the actor's three ways to an image, and a read that fails, each as the image's record.
    First in the module, before its Ray starts: outside a worker, nothing here may start one (it would listen
    beyond loopback)."""
    was_running = ray.is_initialized()
    classifier = engine.BatchClassifier(vit_package, variant="fp32", max_bytes=100_000)
    local = Detector.load(vit_package, variant="fp32")
    hostile = folder / HOSTILE_NAMES[0]
    big = tmp_path / "big.png"
    big.write_bytes(encoded(noise_image(300, 300, 7), "PNG"))  # over max_bytes
    files = [os.fsencode(hostile), f"file://{hostile}".encode(), f"file://{tmp_path}/gone.png".encode(),
             f"file://{big}".encode(), os.path.join(os.fsencode(folder), NOT_UTF8), b"mock://nowhere/x.png"]
    keys = ["a", "b", "c", "d", "e", "f"]
    table = classifier(pa.table({"path": keys, "file": pa.array(files, pa.binary())}))
    records = dict(zip(keys, engine.table_records(table)))
    want = local.predict(hostile).to_dict()
    assert [json.dumps(records[key]) for key in "ab"] == [json.dumps({"image": key, **want}) for key in "ab"]
    assert records["c"]["error"]["type"] == "ImageNotFoundError" and records["c"]["image"] == "c"
    assert records["d"]["error"]["type"] == "ImageTooLargeError"
    assert records["e"]["label"] in ("Fake", "Real")  # a name that isn't UTF-8, read from its bytes
    assert records["f"]["error"]["type"] == "ImageNotFoundError"
    assert records["f"]["error"]["message"].startswith("f: can't read it")
    from_bytes = classifier({"path": np.array(["x"]), "bytes": np.array([hostile.read_bytes()], dtype=object)})
    assert next(engine.table_records(from_bytes))["logits"] == records["a"]["logits"]
    assert ray.is_initialized() == was_running


def test_folder_to_json_lines_gives_the_local_scans_records(local_ray, folder, vit_package, expected, tmp_path):
    output = tmp_path / "ray.jsonl"
    # Besides the folder: a file:// URI, a FIFO and a missing file named one by one, as a list of paths may;
    # the folder's text.jpg named again as a URI is the same image, listed once.
    shutil.copyfile(folder / "text.jpg", tmp_path / "text.jpg")
    text_uri, pipe, gone = f"file://{tmp_path / 'text.jpg'}", str(folder / "pipe.png"), str(tmp_path / "gone.jpg")
    summary = engine.classify([folder, text_uri, pipe, gone, f"file://{folder / 'text.jpg'}"], vit_package, output,
                              variant="fp32", actors=2, threads_per_actor=1, batch_size=8)
    assert (summary.found, summary.already_done) == (len(expected) + 3, 0)
    assert (summary.classified, summary.failed) == (GOOD_IMAGES + 2 + len(HOSTILE_NAMES), len(BAD_IMAGES) + 3)
    records = read_records(output)
    extras = {record["image"]: record["error"] for record in records if record["image"] in (text_uri, pipe, gone)}
    assert extras[text_uri]["type"] == "ImageDecodeError"
    assert "not a regular file (a FIFO)" in extras[pipe]["message"] and "no such file" in extras[gone]["message"]
    rest = [record for record in records if record["image"] not in extras]
    check_same_as_local_scan(check_exactly_once(rest, expected), expected)
    again = engine.classify(folder, vit_package, output, variant="fp32")  # all done: Ray isn't even asked
    assert (again.already_done, again.classified, again.failed) == (len(expected), 0, 0)


def test_parquet_stopped_half_way_then_resumed(local_ray, folder, vit_package, expected, tmp_path, monkeypatch):
    monkeypatch.setattr(engine, "PARQUET_ROWS_PER_FILE", 25)
    output = tmp_path / "results.parquet"

    def stop_half_way(done: int, total: int) -> None:
        if done >= total // 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        engine.classify(folder, vit_package, output, variant="fp32", actors=1, threads_per_actor=2, batch_size=8,
                        progress=stop_half_way)
    first = read_records(output)
    assert len(expected) // 2 <= len(first) < len(expected) and len(list(output.glob("part-*.parquet"))) >= 4
    (output / ".part-000099.tmp").write_bytes(b"PAR1 torn")  # what a run killed mid-write leaves
    resumed = engine.classify(folder, vit_package, output, variant="fp32", actors=2, threads_per_actor=1)
    assert resumed.already_done == len(first) and resumed.classified + resumed.failed == len(expected) - len(first)
    assert not list(output.glob(".part-*"))
    stored = as_parquet(expected)
    check_same_as_local_scan(check_exactly_once(read_records(output), stored), stored)


def test_actor_killed_mid_job_and_an_image_that_kills_every_worker(local_ray, folder, vit_package, expected,
                                                                    tmp_path):
    poisoned = tmp_path / "photos"
    shutil.copytree(folder, poisoned, ignore=lambda _dir, names: [name for name in names if name == "pipe.png"])
    (poisoned / "poison.png").write_bytes(encoded(noise_image(30, 30, 4), "PNG"))
    killed_once = tmp_path / "killed-once"

    class Dying(engine.BatchClassifier):  # a local class: Ray ships it by value with its closure
        crashes_before_giving_up = 1
        calls = 0

        def __call__(self, batch):
            Dying.calls += 1
            if Dying.calls == 3:  # one actor, once, mid-job: SIGKILL, as the kernel's OOM killer would
                try:
                    os.close(os.open(killed_once, os.O_CREAT | os.O_EXCL))
                    os.kill(os.getpid(), signal.SIGKILL)
                except FileExistsError:
                    pass
            return super().__call__(batch)

        def _predict(self, data, paths):
            if any(path.endswith("poison.png") for path in paths):  # a decoder that crashes the process
                os.kill(os.getpid(), signal.SIGKILL)
            return super()._predict(data, paths)

    output = tmp_path / "ray.jsonl"
    summary = engine.classify(poisoned, vit_package, output, variant="fp32", actors=2, threads_per_actor=1,
                              batch_size=8, classifier=Dying)
    assert killed_once.exists()
    records = read_records(output)
    poison = [record for record in records if record["image"].endswith("poison.png")]
    assert len(poison) == 1 and poison[0]["error"]["type"] == "WorkerCrashError"
    moved = {}  # the local scan's records, as they'd read for the copied folder
    for record in copy.deepcopy(list(expected.values())):
        record["image"] = str(poisoned / Path(record["image"]).relative_to(folder))
        if "error" in record:
            record["error"]["message"] = record["error"]["message"].replace(str(folder), str(poisoned))
        moved[record["image"]] = record
    rest = [record for record in records if record is not poison[0]]
    check_same_as_local_scan(check_exactly_once(rest, moved), moved)
    assert summary.failed == len(BAD_IMAGES) + 1


def test_cli_driver_killed_then_resumed(local_ray, folder, vit_package, expected, tmp_path, capsys):
    output = tmp_path / "cli.csv"
    scan_args = ["scan", str(folder), "--engine", "ray", "--model", str(vit_package), "--variant", "fp32",
                 "-o", str(output), "--actors", "1", "--batch-size", "4"]
    address = ray.get_runtime_context().gcs_address  # a second driver joins this module's Ray
    driver = subprocess.Popen([sys.executable, "-m", "fastvit_detect", *scan_args, "--address", address],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while driver.poll() is None and time.monotonic() < deadline:
        if output.exists() and output.read_bytes().count(b"\n") >= 22:  # the header, 20 rows, a name with a line break
            break
        time.sleep(0.1)
    driver.send_signal(signal.SIGKILL)
    _, err = driver.communicate(timeout=60)
    written = sum(1 for _row in csv.reader(io.StringIO(output.read_text(errors="surrogateescape"))))
    assert 20 <= written < len(expected), "the driver should die mid-job"
    # Ray's C++ core logs at error level that Ray Data's actors take constructor arguments from the object store,
    # on every job; and its Python side logs at INFO. Neither belongs in a scan that runs normally.
    err_text = err.decode(errors="replace")
    assert not RAY_NOISE.search(err_text), err_text
    with open(output, "ab") as handle:
        handle.write(b'"/photos/torn\n.jpg",Fake,0.9')  # a record cut short by the kill
    assert main(scan_args) in (0, 1)  # the same command in this process, on the Ray it already joined
    assert f"{written - 1} already in the output, skipped" in capsys.readouterr().err  # less the CSV header
    rows = as_csv(expected)
    check_same_as_local_scan(check_exactly_once(read_records(output), rows), rows)


def test_an_actor_that_cannot_start_stops_the_job_cleanly(local_ray, folder, vit_package, tmp_path):
    class NoPackageHere(engine.BatchClassifier):  # as on a worker that can't read the driver's package path
        def __init__(self, *args, **kwargs):
            engine.ModelPackage.open(tmp_path / "not-on-this-node")  # raises PackageNotFoundError

    output = tmp_path / "out.jsonl"
    with pytest.raises(FastVitDetectError, match="the Ray job stopped.*not-on-this-node: no such directory"):
        engine.classify(next(folder.rglob("img000.png")), vit_package, output, classifier=NoPackageHere)
    assert output.read_text() == ""


def test_a_local_ray_listens_on_loopback_only(local_ray, folder, vit_package, tmp_path):
    """The module's Ray, started as the CLI starts one (init_local), after a job: GCS, raylet, agents, workers and
    this driver all listen on 127.0.0.1 (Ray's default is the machine's network address, on every interface)."""
    engine.classify(next(folder.rglob("img000.png")), vit_package, tmp_path / "one.jsonl", variant="fp32", actors=1)
    assert ray.util.get_node_ip_address() == "127.0.0.1"
    check_loopback_only()


def scan_in_a_fresh_process(folder, vit_package, tmp_path, *options):
    """``scan --engine ray`` in a process of its own: this one already joined the module's Ray."""
    started = time.monotonic()
    finished = subprocess.run([sys.executable, "-m", "fastvit_detect", "scan", str(folder), "--engine", "ray",
                               "--model", str(vit_package), "-o", str(tmp_path / "never.jsonl"), *options],
                              capture_output=True, text=True, timeout=300)
    return finished, time.monotonic() - started


def test_an_address_where_no_ray_answers_fails_in_time(folder, vit_package, tmp_path):
    # Nothing listens: refused at once (Ray itself tries such an address for over ten minutes).
    finished, seconds = scan_in_a_fresh_process(folder, vit_package, tmp_path, "--address", "127.0.0.1:1")
    assert finished.returncode == 2, finished.stderr
    assert "Ray at 127.0.0.1:1: can't connect to 127.0.0.1:1 (Connection refused)" in finished.stderr
    assert "Traceback" not in finished.stderr and seconds < 120  # the interpreter's start-up, on a loaded machine
    # Something listens that isn't a Ray head: given up after --connect-timeout.
    with socket.create_server(("127.0.0.1", 0)) as silent:
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        finished, seconds = scan_in_a_fresh_process(folder, vit_package, tmp_path, "--address", address,
                                                    "--connect-timeout", "3")
    assert finished.returncode == 2, finished.stderr
    assert f"Ray at {address}: couldn't join within 3 s" in finished.stderr and seconds < 120
    assert not (tmp_path / "never.jsonl").exists()


def test_the_example_runs_again_into_the_same_results(local_ray, folder, vit_package, tmp_path, capsys):
    from examples import ray_scan

    images = tmp_path / "images"
    images.mkdir()
    for source in (folder / HOSTILE_NAMES[0], folder / "empty.jpg", next(folder.rglob("img001.jpg"))):
        shutil.copyfile(source, images / source.name)
    workdir = tmp_path / "work"
    argv = ["--model", str(vit_package), "--images", str(images), "--workdir", str(workdir), "--actors", "1"]
    assert ray_scan.main(argv) == 0
    assert "3 image(s) found; 2 classified" in capsys.readouterr().out
    assert ray_scan.main(argv) == 0  # the same results folder: nothing left to do
    assert "3 image(s) found; 3 already in the output, skipped; 0 classified" in capsys.readouterr().out
    assert sorted(path.name for path in workdir.iterdir()) == ["results.parquet"]


def test_records_round_trip_through_arrow(vit_package, folder):
    detector = Detector.load(vit_package, variant="fp32")
    images = [next(folder.rglob("img000.png")), folder / "text.jpg"]
    records = [result_record(str(image), result)
               for image, result in zip(images, detector.predict_batch(images, errors="return"))]
    table = engine.records_table(records, detector.labels)
    assert list(engine.table_records(table)) == records
    assert [json.dumps(record) for record in engine.table_records(table)] == [json.dumps(r) for r in records]


def test_listing(folder, tmp_path):
    names = engine.list_images(folder)
    assert names == [str(path) for path in sorted(folder.rglob("*")) if path.is_file()
                     and path.suffix.lower() in {".jpg", ".png"}]
    assert not any(name.endswith("pipe.png") for name in names)
    one = names[3]
    missing = str(tmp_path / "gone.jpg")
    assert engine.list_images([one, folder, missing, os.path.relpath(one)]) == [one, *names[:3], *names[4:], missing]
    assert engine.list_images([folder, f"file://{folder / 'text.jpg'}"]) == names  # one file, two spellings
    assert engine.list_images(f"file://{folder / 'part0'}") == [f"file://{name}" for name in names
                                                                 if name.startswith(str(folder / "part0") + "/")]
    with pytest.raises(FastVitDetectError, match="can't list it"):  # pyarrow can't list a name that isn't UTF-8
        engine.list_images(f"file://{folder}")
    assert engine._unreadable(missing, None).__class__.__name__ == "ImageNotFoundError"
    assert "not a regular file" in str(engine._unreadable(str(folder / "pipe.png"), None))
    assert "exceeds the cap" in str(engine._unreadable(one, 10))
    assert engine._unreadable(one, None) is None


def test_outputs_of_another_kind_are_refused(tmp_path):
    (tmp_path / "file.parquet").write_text("not a folder")
    with pytest.raises(FastVitDetectError, match="not a directory"):
        engine.open_output(tmp_path / "file.parquet", ["Fake", "Real"])
    other = tmp_path / "other.parquet"
    writer = engine.open_output(other, ["Cat", "Dog"])
    writer.write_record({"image": "x.jpg", "error": {"type": "EmptyImageError", "message": "empty"}})
    writer.close()
    with pytest.raises(FastVitDetectError, match="aren't this model's"):
        engine.open_output(other, ["Fake", "Real"])
    with pytest.raises(FastVitDetectError, match="expected one of"):
        engine.open_output(tmp_path / "x.jsonl", ["Fake", "Real"], fmt="xml")


def test_engine_options_are_checked_before_ray_starts(vit_package, folder, tmp_path, capsys):
    model = ["--model", str(vit_package)]
    for argv in (["--actors", "2"], ["--format", "parquet"], ["--engine", "ray", "--threads", "2"],
                 ["--ship-model"], ["--connect-timeout", "5"], ["--ray-verbose"]):
        assert main(["scan", str(folder), *model, "-o", str(tmp_path / "x.jsonl"), *argv]) == 2, argv
    assert main(["scan", str(tmp_path / "missing"), *model, "--engine", "ray"]) == 2
    assert "not a directory to scan" in capsys.readouterr().err
    for option in ("--actors", "--connect-timeout"):
        for bad in ("0", "-1", "inf", "nan", "1e9"):
            with pytest.raises(SystemExit):
                main(["scan", str(folder), *model, "--engine", "ray", option, bad])


def test_crash_ledger_counts_starts_that_never_finished():
    ledger = engine.CrashLedger()
    assert ledger.begin("batch") == 0
    ledger.end("batch")
    assert ledger.begin("batch") == 0  # finished work leaves no trace
    assert ledger.begin("batch") == 1  # started again without finishing: its worker died
    assert ledger.begin("batch") == 2
    ledger.end("batch")
    assert ledger.begin("batch") == 0 and ledger._crashes == {}
    ledger.end("batch")
    assert not ledger._running


@pytest.fixture(scope="module")
def video_folder(tmp_path_factory) -> Path:
    """Two photos, a clip with a fake segment (3-5 s), the same clip renamed .jpg (a video by content), and a
    truncated clip: a video each whole, the broken one an error record."""
    clips = pytest.importorskip("video_clips")
    pytest.importorskip("av")
    root = tmp_path_factory.mktemp("ray-videos") / "media"
    root.mkdir()
    clip = clips.fake_segment_clip(root / "clip.mp4")
    (root / "renamed.jpg").write_bytes(clip.read_bytes())
    (root / "broken.mp4").write_bytes(clip.read_bytes()[: clip.stat().st_size // 3])
    (root / "photo.png").write_bytes(clips.image_bytes())
    (root / "other.jpg").write_bytes(clips.image_bytes("astronaut.png", "JPEG"))
    return root


@pytest.mark.parametrize("output", ["ray.jsonl", "ray.parquet", "ray.csv"])
@pytest.mark.parametrize("faces", [True, False], ids=["faces", "no-faces"])
def test_a_video_is_one_task_whose_record_is_the_local_scans(local_ray, video_folder, packages, tmp_path, output,
                                                             faces):
    package = packages["vit-faces"]
    local = tmp_path / "local.jsonl"
    scan(Detector.load(package, variant="fp32", faces=faces), video_folder, local, batch_size=8, fmt="jsonl")
    expected_lines = [json.loads(line) for line in local.read_text().splitlines()]
    expected = {record["image"]: record for record in expected_lines if FACE_KEY not in record}
    calls = tmp_path / "calls.jsonl"  # the actors are other processes: each call's videos, a line per call

    class Counting(engine.BatchClassifier):
        def __call__(self, batch):
            table = super().__call__(batch)
            with open(calls, "a") as handle:
                handle.write(json.dumps([record["image"] for record in engine.table_records(table)
                                         if record.get("video") or "error" in record]) + "\n")
            return table

    summary = engine.classify(video_folder, package, tmp_path / output, variant="fp32", actors=1, threads_per_actor=2,
                              batch_size=8, faces=faces, classifier=Counting)
    assert summary.found == 5 and summary.failed == 1
    names = {Path(name).name for name, record in expected.items() if record.get("video")}
    assert names == {"clip.mp4", "renamed.jpg"}
    written = read_records(tmp_path / output)
    if output.endswith(".csv"):
        assert [row["label"] for row in written if Path(row["image"]).name in names] == ["Fake", "Fake"]
    else:
        # a record per image or video (and per face), each the local scan's, the clips' timelines and errors too
        def in_order(records):
            for record in records:  # FFmpeg's detail names its own handle, which differs between processes
                if "error" in record:
                    record["error"]["message"] = record["error"]["message"].split(" (")[0]
            return sorted(records, key=lambda record: json.dumps(record, sort_keys=True))

        assert in_order(written) == in_order(expected_lines)
        by_name = {Path(record["image"]).name: record for record in written if FACE_KEY not in record}
        assert by_name["clip.mp4"]["suspicious_ranges"] == [[3.0, 5.0]] and by_name["clip.mp4"]["label"] == "Fake"
        assert by_name["broken.mp4"]["error"]["type"] == expected[str(video_folder / "broken.mp4")]["error"]["type"]
    # the clips came one per actor call, on their own, the broken one too
    videos = sorted(json.loads(line) for line in calls.read_text().splitlines() if line != "[]\n" and line != "[]")
    assert videos == [[str(video_folder / name)] for name in sorted([*names, "broken.mp4"])]
    again = engine.classify(video_folder, package, tmp_path / output, variant="fp32", faces=faces)
    assert (again.already_done, again.classified, again.failed) == (5, 0, 0)


def test_a_shipped_model_brings_the_face_detector_for_videos(local_ray, video_folder, packages, tmp_path):
    """Without faces for images, a clip still looks for faces (as the local scan's does): the shipped package must
    carry the face detector's graphs, or the clip would be decided by whole frames."""
    package = packages["vit-faces"]
    output = tmp_path / "shipped.jsonl"
    engine.classify(video_folder, package, output, variant="fp32", actors=1, faces=False, ship_model=True)
    records = {Path(record["image"]).name: record for record in read_records(output)}
    assert records["clip.mp4"]["decided_by"] == "face track" and records["clip.mp4"]["label"] == "Fake"
    assert records["clip.mp4"]["suspicious_ranges"] == [[3.0, 5.0]] and "decided_by" not in records["photo.png"]
