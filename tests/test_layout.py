"""Throughput layouts: several sessions at once give every image the answer one session gives, in order, with
errors in place; bad layout arguments and hostile calibration caches are refused or ignored; the server serves
concurrent requests with several workers, each supervised and isolated."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import threading
import time

import httpx
import numpy as np
import pytest
from conftest import sample_photos

import fastvit_detect as fd
from fastvit_detect import cli, layout, pool
from fastvit_detect.errors import ServerBusyError
from fastvit_detect.layout import Layout, cache_path, choose_layout, read_calibration, rule_layout, write_calibration
from fastvit_detect.server import RESTART_LIMIT, MicroBatcher, ServeSettings, create_app


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Every test gets its own calibration cache: the user's real one must neither leak in nor be written."""
    monkeypatch.setenv("FASTVIT_DETECT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def mixed(bad_inputs) -> list:
    images = [*sample_photos(), bad_inputs["text.jpg"], bad_inputs["truncated.png"], bad_inputs["empty.jpg"],
              *sample_photos()[:3]]
    random.Random(3).shuffle(images)
    return images


# --- the rule -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cores, expected", [(1, (1, 1)), (2, (1, 2)), (3, (1, 3)), (4, (2, 2)), (16, (8, 2)),
                                             (17, (8, 2)), (64, (32, 2))])
def test_rule(cores, expected):
    chosen = rule_layout(cores)
    assert (chosen.workers, chosen.threads_per_worker) == expected and chosen.source == "rule"


def cores(monkeypatch, count: int) -> None:
    """Pretend this machine has ``count`` physical cores."""
    monkeypatch.setattr(fd.detector, "physical_core_count", lambda: count)
    monkeypatch.setattr(fd.session, "physical_core_count", lambda: count)


def test_two_cores_default_is_one_session_with_both(vit_package, monkeypatch):
    cores(monkeypatch, 2)
    detector = fd.Detector.load(vit_package)
    assert (detector.layout.workers, detector.layout.threads_per_worker) == (1, 2)
    assert detector.pool.sessions == [detector.session]  # no second copy of the weights


def test_sixteen_cores_default_follows_the_rule(vit_package, monkeypatch):
    cores(monkeypatch, 16)
    detector = fd.Detector.load(vit_package)
    assert (detector.layout.workers, detector.layout.threads_per_worker, detector.layout.source) == (8, 2, "rule")
    assert detector.session.threads == 16  # predict() still gets every core
    assert "8x2" in repr(detector)


@pytest.mark.parametrize("workers, threads_per_worker, threads, expected", [
    (4, None, 8, (4, 2)), (None, 4, 8, (2, 4)), (3, None, 2, (3, 1)), (None, 16, 2, (1, 16)), (2, 3, 1, (2, 3))])
def test_one_argument_takes_the_other_from_the_cores(workers, threads_per_worker, threads, expected):
    chosen = choose_layout(threads, workers, threads_per_worker)
    assert (chosen.workers, chosen.threads_per_worker, chosen.source) == (*expected, "caller")


@pytest.mark.parametrize("name", ["workers", "threads_per_worker"])
@pytest.mark.parametrize("bad", [0, -1, float("inf"), float("nan"), 2.0, True, "2", 10**30, 10**4])
def test_bad_layout_arguments_are_refused(vit_package, name, bad):
    with pytest.raises(ValueError, match=name):
        fd.Detector.load(vit_package, **{name: bad})


def test_a_layout_over_the_thread_limit_is_refused(vit_package):
    with pytest.raises(ValueError, match="at most 1024 threads"):
        fd.Detector.load(vit_package, workers=256, threads_per_worker=8)


@pytest.mark.parametrize("flag, value", [("--workers", "0"), ("--workers", "-2"), ("--workers", "inf"),
                                         ("--workers", "nan"), ("--workers", "1e300"), ("--workers", "2.5"),
                                         ("--workers", "9" * 40), ("--threads-per-worker", "0"),
                                         ("--threads-per-worker", "100000")])
def test_cli_refuses_bad_layout_flags(vit_package, flag, value, capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(["predict", str(sample_photos()[0]), "--model", str(vit_package), flag, value])
    assert exited.value.code == cli.EXIT_USAGE
    assert flag in capsys.readouterr().err


def test_cli_refuses_a_product_over_the_limit(vit_package, capsys):
    code = cli.main(["predict", str(sample_photos()[0]), "--model", str(vit_package), "--workers", "256",
                     "--threads-per-worker", "8"])
    assert code == cli.EXIT_USAGE and "over 1024 threads" in capsys.readouterr().err


# --- several workers: the same answers, in order, errors in place -------------------------------------------


@pytest.fixture(scope="module")
def one_session(vit_package):
    return fd.Detector.load(vit_package, variant="fp32", threads=1)


@pytest.fixture(scope="module")
def three_workers(vit_package):
    return fd.Detector.load(vit_package, variant="fp32", workers=3, threads_per_worker=1)


def assert_same_results(got, expected):
    assert len(got) == len(expected)
    for mine, reference in zip(got, expected):
        assert type(mine) is type(reference)
        if isinstance(reference, fd.Prediction):
            assert mine.label == reference.label
            np.testing.assert_allclose(mine.logits, reference.logits, rtol=0, atol=1e-5)
        else:
            assert mine.source == reference.source


@pytest.mark.parametrize("batch_size", [1, 2, 16])
def test_workers_give_one_sessions_logits_in_order(one_session, three_workers, mixed, batch_size):
    reference = one_session.predict_batch(mixed, batch_size=batch_size, errors="return")
    assert_same_results(three_workers.predict_batch(mixed, batch_size=batch_size, errors="return"), reference)
    streamed = list(three_workers.predict_iter(iter(mixed), batch_size=batch_size, errors="return"))
    assert_same_results(streamed, reference)
    assert len(three_workers.pool.sessions) == 3
    assert len({id(session) for session in three_workers.pool.sessions}) == 1  # one-thread workers share one


def test_workers_of_several_threads_have_a_session_each(vit_package, one_session, mixed):
    detector = fd.Detector.load(vit_package, variant="fp32", workers=2, threads_per_worker=2)
    assert len({id(session) for session in detector.pool.sessions}) == 2
    assert all(session.threads == 2 for session in detector.pool.sessions)
    assert_same_results(detector.predict_batch(mixed, batch_size=4, errors="return"),
                        one_session.predict_batch(mixed, batch_size=4, errors="return"))


def test_workers_raise_the_first_failure_in_order(one_session, three_workers, mixed):
    first_bad = next(index for index, image in enumerate(mixed) if "bad-inputs" in str(image))
    for detector in (one_session, three_workers):
        with pytest.raises(fd.InputError) as raised:
            detector.predict_batch(mixed, batch_size=2)
        assert raised.value.source == str(mixed[first_bad])
        stream = detector.predict_iter(mixed, batch_size=1)  # a failing batch raises at its start
        for _ in range(first_bad):
            assert isinstance(next(stream), fd.Prediction)
        with pytest.raises(fd.InputError):
            next(stream)
        stream.close()


def test_a_short_batch_runs_on_the_all_cores_session(three_workers, one_session):
    calls = []
    real = three_workers.session.run
    three_workers.session.run = lambda pixels: calls.append(len(pixels)) or real(pixels)  # type: ignore[method-assign]
    try:
        (result,) = three_workers.predict_batch(sample_photos()[:1])
        single = three_workers.predict(sample_photos()[1])
    finally:
        del three_workers.session.run
    assert calls == [1, 1]
    np.testing.assert_allclose(result.logits, one_session.predict(sample_photos()[0]).logits, atol=1e-5)
    assert single.label == one_session.predict(sample_photos()[1]).label


def test_each_worker_retries_a_failing_batch_image_by_image(vit_package):
    detector = fd.Detector.load(vit_package, variant="fp32", workers=2, threads_per_worker=2)  # a session each
    calls: list[tuple[int, int]] = []
    lock = threading.Lock()
    for index, session in enumerate(detector.pool.sessions):
        real_run = session._session.run

        def run(outputs, feeds, index=index, real_run=real_run, session=session):  # type: ignore[no-untyped-def]
            batch = feeds[session.input_name]
            with lock:
                calls.append((index, len(batch)))
            time.sleep(0.05)  # long enough that both workers take a batch
            if (batch.reshape(len(batch), -1).max(axis=1) > 0.99).any():  # the all-white image breaks the "model"
                raise RuntimeError("kernel failed")
            return real_run(outputs, feeds)

        session._session.run = run
    white = np.full((30, 30, 3), 255, dtype=np.uint8)
    grey = [np.full((30, 30, 3), value, dtype=np.uint8) for value in (40, 90, 140, 190)]
    images = [grey[0], white, grey[1], grey[2], white, grey[3]]
    results = detector.predict_batch(images, batch_size=3, errors="return")
    assert [type(result).__name__ for result in results] == ["Prediction", "ModelOutputError", "Prediction",
                                                             "Prediction", "ModelOutputError", "Prediction"]
    assert {index for index, _ in calls} == {0, 1}  # both workers met a failing batch and recovered
    assert sorted(size for _, size in calls) == [1, 1, 1, 1, 1, 1, 3, 3]


def test_closing_a_stream_early_stops_its_threads(three_workers, mixed):
    before = {thread.name for thread in threading.enumerate()}
    stream = three_workers.predict_iter(mixed * 3, batch_size=1, errors="return")
    next(stream)
    stream.close()
    leftover = [thread for thread in threading.enumerate() if thread.name not in before
                and thread.name.startswith(("fastvit-model", "fastvit-decode"))]
    assert not leftover


# --- calibration cache --------------------------------------------------------------------------------------


SHA = "ab" * 32


def valid_record(**overrides):
    record = {"format": layout.CACHE_FORMAT, "machine": layout.machine_key(), "created": time.time(),
              "workers": 2, "threads_per_worker": 1, "images_per_s": {}}
    return {**record, **overrides}


def test_a_calibration_is_written_atomically_and_read_back(private_cache):
    path = cache_path(SHA)
    write_calibration(path, Layout(2, 1, "calibrated"), {"2x1": 10.0, "1x2": 9.0})
    assert [entry.name for entry in private_cache.iterdir()] == [path.name]  # no temporary file left
    chosen = read_calibration(path, cores=2)
    assert chosen is not None and (chosen.workers, chosen.threads_per_worker, chosen.source) == (2, 1, "calibrated")


@pytest.mark.parametrize("content", [
    b"", b"not json", b"[1, 2]", b"[" * 60_000, b'{"format": 1}', json.dumps(valid_record(workers=0)).encode(),
    json.dumps(valid_record(workers=-4)).encode(), json.dumps(valid_record(workers=10**40)).encode(),
    json.dumps(valid_record(workers=2.5)).encode(), json.dumps(valid_record(workers="2")).encode(),
    json.dumps(valid_record(threads_per_worker=True)).encode(), json.dumps(valid_record(machine="elsewhere")).encode(),
    json.dumps(valid_record(created=time.time() + 86400)).encode(), json.dumps(valid_record(created=0)).encode(),
    json.dumps(valid_record(created=float("nan"))).encode(), json.dumps(valid_record(workers=64)).encode(),
    json.dumps(valid_record(format=99)).encode(), b'{"workers": 2, "threads_per_worker": 1, "created": 1e400}',
    b"\xff\xfe" + "{}".encode("utf-16-le"), json.dumps(valid_record()).encode() + b" " * 70_000,
], ids=lambda content: content[:30].decode("latin-1"))
def test_hostile_calibration_files_are_ignored(vit_package, private_cache, content, monkeypatch):
    sha = fd.ModelPackage.open(vit_package).variant("auto").sha256
    path = cache_path(sha)
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    assert read_calibration(path, cores=2) is None
    cores(monkeypatch, 2)
    assert fd.Detector.load(vit_package).layout.source == "rule"


def test_calibration_files_that_are_not_regular_files_are_ignored(private_cache, tmp_path):
    private_cache.mkdir()
    target = tmp_path / "elsewhere.json"
    target.write_text(json.dumps(valid_record()))
    os.symlink(target, cache_path(SHA))
    assert read_calibration(cache_path(SHA), cores=2) is None  # a link could point anywhere
    fifo = cache_path("cd" * 32)
    os.mkfifo(fifo)
    assert read_calibration(fifo, cores=2) is None  # and never blocks on a FIFO
    os.mkdir(cache_path("ef" * 32))
    assert read_calibration(cache_path("ef" * 32), cores=2) is None


def test_a_valid_calibration_is_used_unless_the_caller_says_otherwise(vit_package, monkeypatch):
    cores(monkeypatch, 2)
    sha = fd.ModelPackage.open(vit_package).variant("auto").sha256
    write_calibration(cache_path(sha), Layout(2, 1, "calibrated"), {})
    assert fd.Detector.load(vit_package).layout.source == "calibrated"
    assert fd.Detector.load(vit_package, workers=1).layout.describe().startswith("1 worker x 2 threads (caller")
    assert fd.Detector.load(vit_package, threads=1).layout.source == "rule"  # 2 x 1 doesn't fit one core


def test_calibrate_times_the_candidates_and_caches_the_fastest(vit_package, monkeypatch, capsys):
    monkeypatch.setattr(pool, "CALIBRATION_SECONDS", 0.05)
    monkeypatch.setattr(cli, "physical_core_count", lambda: 2)
    monkeypatch.setattr(pool, "physical_core_count", lambda: 2)
    assert cli.main(["info", str(vit_package), "--calibrate"]) == cli.EXIT_OK
    out = capsys.readouterr().out
    assert "1x2" in out and "2x1" in out and "chosen:" in out
    assert cli.main(["info", str(vit_package)]) == cli.EXIT_OK
    assert "(calibrated: measured" in capsys.readouterr().out


def test_info_reports_the_layout(vit_package, monkeypatch, capsys):
    monkeypatch.setattr(cli, "physical_core_count", lambda: 16)
    assert cli.main(["info", str(vit_package)]) == cli.EXIT_OK
    assert "layout       8 workers x 2 threads (rule" in capsys.readouterr().out


# --- the server with several workers ------------------------------------------------------------------------


def test_the_server_serves_concurrent_requests_on_two_workers(vit_package, one_session, mixed):
    detector = fd.Detector.load(vit_package, variant="fp32", workers=2, threads_per_worker=1)
    app = create_app(detector, ServeSettings(max_batch=3, max_wait_ms=20))
    uploads = [path.read_bytes() for path in mixed]

    async def post_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            answers = await asyncio.gather(*(client.post("/api/v1/predict", content=body) for body in uploads))
            return [*answers, await client.get("/healthz")]

    try:
        *responses, health = asyncio.run(post_all())
    finally:
        app.state.batcher.close()
    for path, response in zip(mixed, responses):
        if "bad-inputs" in str(path):
            assert response.status_code in (415, 422)
        else:
            assert response.status_code == 200
            assert response.json()["label"] == one_session.predict(path).label
            reference = one_session.predict(path).probabilities
            assert response.json()["probabilities"] == pytest.approx(dict(reference), abs=1e-5)
    body = health.json()
    assert body["workers"] == body["workers_alive"] == 2 and body["layout"]["workers"] == 2
    assert body["images"] == sum("bad-inputs" not in str(path) for path in mixed)


class Die(BaseException):
    """Not an Exception: what kills a worker thread rather than failing its batch."""


def test_every_worker_is_supervised_and_a_crashing_one_stops_the_service():
    started = threading.Barrier(2, timeout=5)
    doomed = {"left": 3}

    def run(items):
        if items == ["together"]:
            started.wait()  # both workers hold a batch at once: they really run in parallel
            return items
        if doomed["left"] > 0:
            doomed["left"] -= 1
            raise Die()
        return items

    batcher = MicroBatcher(run, max_batch=1, max_wait_ms=0, queue_size=64, workers=2)
    try:
        assert [future.result(5) for future in batcher.submit(["together", "together"])] == ["together"] * 2
        for _ in range(3):
            with pytest.raises(RuntimeError):
                batcher.submit(["dies"])[0].result(5)
        assert batcher.submit(["fine"])[0].result(5) == "fine"
        assert batcher.worker_restarts == 3 and batcher.healthy and batcher.workers_alive == 2
        doomed["left"] = 10**6  # now every batch kills its worker: one of them reaches the limit
        for _ in range(4 * RESTART_LIMIT):
            with contextlib.suppress(RuntimeError, ServerBusyError):  # died, or refused once one is left dead
                batcher.submit(["dies"])[0].result(5)
            if not batcher.healthy:
                break
        assert not batcher.healthy
        with pytest.raises(ServerBusyError):
            batcher.submit(["refused"])
    finally:
        batcher.close(timeout=5)


def test_numpy_integers_are_taken_as_plain_ints():
    """A layout is written as JSON (the calibration cache, /healthz): numpy's integers must not reach it."""
    layout = choose_layout(cores=np.int64(4), workers=np.int32(2))
    assert (layout.workers, layout.threads_per_worker) == (2, 2)
    assert type(layout.workers) is int and type(layout.threads_per_worker) is int
    assert json.loads(json.dumps(layout.to_dict()))["workers"] == 2
