"""The reference server: every endpoint and error code, micro-batching, the 503 path and the ``serve`` command.

Requests go through httpx's ASGI transport (in process, no sockets) except in the ``serve`` command test, which
starts the real uvicorn server on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from conftest import child_environment, sample_photos
from PIL import Image

from fastvit_detect import Detector
from fastvit_detect.errors import ServerBusyError
from fastvit_detect.server import MicroBatcher, ServeSettings, create_app

PREDICTION_KEYS = {"label", "score", "probabilities", "fake_probability", "model", "elapsed_ms"}


@pytest.fixture(scope="module")
def detector(vit_package) -> Detector:
    # fp32: its results don't depend on which images share a batch, so batched answers can be compared exactly.
    return Detector.load(vit_package, variant="fp32", threads=1)


@pytest.fixture(scope="module")
def app(detector):
    app = create_app(detector, ServeSettings(max_upload_bytes=2_000_000, max_batch=4, max_wait_ms=20))
    yield app
    app.state.batcher.close()


@pytest.fixture(scope="module")
def photos() -> list[bytes]:
    return [path.read_bytes() for path in sample_photos()]


async def post_many(app, requests: list[dict]) -> list[httpx.Response]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        return list(await asyncio.gather(*(client.request(**request) for request in requests)))


def call(app, method: str, url: str, **kwargs) -> httpx.Response:
    (response,) = asyncio.run(post_many(app, [{"method": method, "url": url, **kwargs}]))
    return response


PROBABILITY_TOLERANCE = 1e-5  # fp32 ONNX against PyTorch


def assert_matches_reference(body: dict, reference, path) -> None:
    """A prediction body against PyTorch's answer for the image file it was made from."""
    (row,) = reference.probabilities("vit", [path])
    assert body["label"] == reference.label("vit", path)
    assert body["probabilities"] == pytest.approx(dict(zip(["Fake", "Real"], row)), abs=PROBABILITY_TOLERANCE)
    assert body["score"] == pytest.approx(row.max(), abs=PROBABILITY_TOLERANCE)
    assert body["fake_probability"] == pytest.approx(row[0], abs=PROBABILITY_TOLERANCE)


def split_photos(reference) -> list:
    """Sample photos PyTorch calls Fake and Real, alternating: a constant answer can't pass."""
    photos = sample_photos()
    labels = reference.labels("vit", photos)
    fake = [photo for photo, label in zip(photos, labels) if label == "Fake"]
    real = [photo for photo, label in zip(photos, labels) if label == "Real"]
    assert fake and real
    return [photo for pair in zip(fake, real) for photo in pair]


# --- endpoints ----------------------------------------------------------------------------------------------


def test_page_and_its_files_are_local(app):
    page = call(app, "GET", "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.headers["content-security-policy"].startswith("default-src 'self'")
    for marker in ('id="file"', 'id="drop-zone"', 'id="preview"', 'id="fake-bar"', 'id="error"'):
        assert marker in page.text
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert "static/app.js" in assets and "static/style.css" in assets
    for asset in assets:
        assert not asset.startswith(("http:", "https:", "//")), f"external resource {asset}"
    for asset in ("static/app.js", "static/style.css"):
        response = call(app, "GET", "/" + asset)
        assert response.status_code == 200
        assert not re.search(r"https?://", response.text), f"{asset} names an external URL"


def test_docs_need_no_cdn(app):
    assert call(app, "GET", "/docs").status_code == 404  # Swagger UI would load from a CDN
    schema = call(app, "GET", "/openapi.json").json()
    assert {"/api/v1/predict", "/predict/", "/healthz", "/api/v1/model"} <= set(schema["paths"])
    assert "multipart/form-data" in schema["paths"]["/api/v1/predict"]["post"]["requestBody"]["content"]


def test_predict_multipart(app, reference):
    for photo in split_photos(reference)[:2]:
        response = call(app, "POST", "/api/v1/predict", files={"file": ("photo.jpg", photo.read_bytes(), "image/jpeg")})
        assert response.status_code == 200
        body = response.json()
        assert set(body) == PREDICTION_KEYS
        assert_matches_reference(body, reference, photo)
        assert body["model"]["variant"] == "fp32" and body["elapsed_ms"] > 0


def test_predict_raw_body(app, reference):
    for photo in split_photos(reference)[:2]:
        response = call(app, "POST", "/api/v1/predict", content=photo.read_bytes(),
                        headers={"content-type": "image/png"})
        assert response.status_code == 200
        assert_matches_reference(response.json(), reference, photo)


def test_several_files_give_a_list_in_order_with_errors_in_place(app, reference):
    first_photo, second_photo = split_photos(reference)[:2]
    files = [("file", ("a.jpg", first_photo.read_bytes())), ("file", ("notes.txt", b"not an image")),
             ("file", ("c.png", second_photo.read_bytes()))]
    response = call(app, "POST", "/api/v1/predict", files=files)
    assert response.status_code == 200
    first, bad, third = response.json()
    assert [first["filename"], bad["filename"], third["filename"]] == ["a.jpg", "notes.txt", "c.png"]
    assert_matches_reference({key: first[key] for key in PREDICTION_KEYS}, reference, first_photo)
    assert_matches_reference({key: third[key] for key in PREDICTION_KEYS}, reference, second_photo)
    assert bad["error"]["type"] == "ImageDecodeError" and "notes.txt" in bad["error"]["message"]


@pytest.mark.parametrize("prefix", ["", "data:image/jpeg;base64,"])
def test_seed_endpoint(app, reference, prefix):
    for photo in split_photos(reference)[:4]:
        encoded = base64.encodebytes(photo.read_bytes()).decode()  # line-wrapped, as Python's encodebytes writes it
        response = call(app, "POST", "/predict/", json={"image": prefix + encoded})
        assert response.status_code == 200
        assert response.json() == {"result": reference.label("vit", photo)}


def test_health_and_model_info(app, detector):
    health = call(app, "GET", "/healthz").json()
    assert health["status"] == "ok" and health["variant"] == "fp32" and health["queue_depth"] == 0
    info = call(app, "GET", "/api/v1/model").json()
    assert info["variant"] == "fp32" and info["labels"] == ["Fake", "Real"]
    manifest = json.loads((detector.package.root / "fastvit_manifest.json").read_text())
    assert info["manifest"]["variants"] == manifest["variants"]
    # The exporter's local path stays on the server: clients see the checkpoint folder's name only.
    assert info["manifest"]["source"]["model"] == info["name"] == "vit"
    assert info["serving"]["max_batch"] == 4


def test_one_log_line_per_request(app, photos, caplog):
    with caplog.at_level(logging.INFO, logger="fastvit_detect.server"):
        call(app, "GET", "/healthz")
        call(app, "POST", "/api/v1/predict", content=b"junk")
    lines = [record.getMessage() for record in caplog.records if record.name == "fastvit_detect.server"]
    assert len(lines) == 2
    assert '"GET /healthz" 200' in lines[0] and '"POST /api/v1/predict" 415' in lines[1]
    assert lines[1].endswith(" ms")


# --- client errors: a status, a JSON error naming the cause, never a 500 ------------------------------------


def seed_json(value) -> dict:
    return {"json": {"image": value}}


@pytest.mark.parametrize(
    "url, request_kwargs, status, error_type, cause",
    [
        ("/api/v1/predict", {"files": {"file": ("notes.jpg", b"hello")}}, 415, "ImageDecodeError",
         "notes.jpg: not a recognised image format"),
        ("/api/v1/predict", {"files": {"file": ("empty.jpg", b"")}}, 422, "EmptyImageError", "empty.jpg: empty"),
        ("/api/v1/predict", {"files": {"image": ("a.jpg", b"x")}}, 422, "BadRequestError",
         "multipart field 'file' is missing"),
        ("/api/v1/predict", {"data": {"file": "just text"}, "files": {"other": ("a.jpg", b"x")}}, 422,
         "BadRequestError", "must be a file upload"),
        ("/api/v1/predict", {"content": b""}, 422, "BadRequestError", "no image"),
        ("/api/v1/predict", {"content": b"--x\r\nbroken", "headers": {"content-type": "multipart/form-data"}}, 422,
         "BadRequestError", "malformed multipart"),
        ("/predict/", {"content": b"{not json"}, 422, "BadRequestError", "isn't valid JSON"),
        ("/predict/", {"json": {"picture": "abc"}}, 422, "BadRequestError", "'image' is missing"),
        ("/predict/", {"json": ["abc"]}, 422, "BadRequestError", "'image' is missing"),
        ("/predict/", seed_json(123), 422, "BadRequestError", "must be a base64 string"),
        ("/predict/", seed_json("%%%"), 422, "BadRequestError", "isn't valid base64"),
        ("/predict/", seed_json("data:image/png,abc"), 422, "BadRequestError", "without ';base64,'"),
        ("/predict/", seed_json(base64.b64encode(b"GIF89a broken").decode()), 415, "ImageDecodeError",
         "image (base64)"),
        ("/predict/", seed_json(""), 422, "EmptyImageError", "empty input"),
    ],
)
def test_client_errors(app, url, request_kwargs, status, error_type, cause):
    response = call(app, "POST", url, **request_kwargs)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["type"] == error_type and cause in error["message"]


@pytest.mark.parametrize("name, status, error_type", [("truncated.jpg", 415, "ImageDecodeError"),
                                                      ("bomb.png", 413, "ImageTooLargeError")])
def test_bad_image_files(app, bad_inputs, name, status, error_type):
    response = call(app, "POST", "/api/v1/predict", files={"file": (name, bad_inputs[name].read_bytes())})
    assert response.status_code == status
    assert response.json()["error"]["type"] == error_type and name in response.json()["error"]["message"]


def test_wrong_method_and_path(app):
    assert call(app, "GET", "/api/v1/predict").status_code == 405
    assert call(app, "GET", "/nowhere").status_code == 404


def test_oversize_upload_is_413(detector, photos):
    small = create_app(detector, ServeSettings(max_upload_bytes=10_000))
    try:
        big = photos[0]
        assert len(big) > 10_000
        for url, kwargs in [("/api/v1/predict", {"files": {"file": ("big.jpg", big)}}),
                            ("/api/v1/predict", {"content": big}),
                            ("/predict/", {"json": {"image": base64.b64encode(big).decode()}})]:
            response = call(small, "POST", url, **kwargs)
            assert response.status_code == 413, url
            assert response.json()["error"]["type"] == "UploadTooLargeError"
            assert "10,000 bytes" in response.json()["error"]["message"]
    finally:
        small.state.batcher.close()


def test_upload_limit_is_enforced_while_reading(detector):
    """A chunked body without Content-Length is cut off at the limit, not read to its end."""
    limit, chunk = 50_000, b"x" * 8192
    small = create_app(detector, ServeSettings(max_upload_bytes=limit))
    sent = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(2_000):  # 16 MB, 300 times the limit, if the server read it all
            sent += len(chunk)
            yield chunk

    try:
        response = call(small, "POST", "/api/v1/predict", content=endless())
        assert response.status_code == 413
        assert sent <= limit + 2 * len(chunk)
    finally:
        small.state.batcher.close()


# --- micro-batching -----------------------------------------------------------------------------------------


def test_concurrent_requests_are_batched_and_answered_in_order(detector, reference, odd_images):
    images = sample_photos() + list(odd_images.values())[:6]  # 15
    # The first request holds the worker until the other 14 are queued: then they go in full batches of 4.
    gated = GatedDetector(detector)
    app = create_app(gated, ServeSettings(max_batch=4, max_wait_ms=20))  # type: ignore[arg-type]
    batcher = app.state.batcher
    session_calls: list[int] = []
    run = detector.session.run

    def counted_run(pixel_values):
        session_calls.append(len(pixel_values))
        return run(pixel_values)

    requests = [{"method": "POST", "url": "/api/v1/predict", "files": {"file": (f"{index}.img", path.read_bytes())}}
                for index, path in enumerate(images)]

    async def scenario() -> tuple[dict, list[httpx.Response], dict]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            before = (await client.get("/healthz")).json()
            held = asyncio.create_task(client.request(**requests[0]))
            assert await asyncio.to_thread(gated.entered.wait, 10)
            rest = [asyncio.create_task(client.request(**request)) for request in requests[1:]]
            deadline = time.monotonic() + 30
            while batcher.queue_depth < len(rest) and time.monotonic() < deadline:  # noqa: ASYNC110 - no event
                await asyncio.sleep(0.01)  # to wait on: the batcher's queue is filled by the server's handlers
            gated.gate.set()
            responses = list(await asyncio.gather(held, *rest))
            return before, responses, (await client.get("/healthz")).json()

    detector.session.run = counted_run
    try:
        before, responses, after = asyncio.run(scenario())
    finally:
        gated.gate.set()
        del detector.session.run
        batcher.close()
        app.state.decoder.close()
    for path, response in zip(images, responses):
        assert response.status_code == 200
        assert_matches_reference(response.json(), reference, path)
    assert (before["batches"], before["images"], before["largest_batch"]) == (0, 0, 0)
    assert [len(batch) for batch in gated.batches] == [1, 4, 4, 4, 2]
    assert session_calls == [1, 4, 4, 4, 2]  # one session call per batch
    assert (after["batches"], after["images"], after["largest_batch"]) == (5, 15, 4)


class GatedDetector:
    """A stand-in detector: each call records its batch and waits for the test to open the gate."""

    def __init__(self, detector: Detector | None = None, fail: bool = False) -> None:
        self.detector = detector
        self.fail = fail
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.batches: list[list] = []

    def run(self, items):
        """A MicroBatcher's run_batch: items come back as they are."""
        self.batches.append(list(items))
        self.entered.set()
        assert self.gate.wait(10), "the test never opened the gate"
        if self.fail:
            self.fail = False
            raise RuntimeError("model crashed")
        return list(items)

    def classify_pixels(self, pixels, failures=None, sources=None):
        self.run(sources)
        return self.detector.classify_pixels(pixels, failures, sources)

    def __getattr__(self, name):  # package, variant, labels, preprocessor: the real detector's
        return getattr(self.detector, name)


def test_batches_are_bounded_and_keep_order():
    gated = GatedDetector()
    batcher = MicroBatcher(gated.run, max_batch=4, max_wait_ms=0, queue_size=16)
    try:
        first = batcher.submit(["first"])
        assert gated.entered.wait(5)  # the worker holds "first"; what follows queues up behind it
        queued = [batcher.submit([f"image-{index}"])[0] for index in range(9)]
        queued[4].cancel()  # its caller went away: it must not be classified
        gated.gate.set()
        assert first[0].result(5) == "first"
        assert [future.result(5) for index, future in enumerate(queued) if index != 4] == [
            f"image-{index}" for index in range(9) if index != 4]
        assert [len(batch) for batch in gated.batches] == [1, 4, 4]
        assert all("image-4" not in batch for batch in gated.batches)
    finally:
        batcher.close()


def test_max_batch_1_disables_batching():
    gated = GatedDetector()
    gated.gate.set()
    batcher = MicroBatcher(gated.run, max_batch=1, max_wait_ms=50, queue_size=16)
    try:
        futures = batcher.submit([f"image-{index}" for index in range(5)])
        assert [future.result(5) for future in futures] == [f"image-{index}" for index in range(5)]
        assert [len(batch) for batch in gated.batches] == [1] * 5
    finally:
        batcher.close()


def test_a_model_failure_fails_its_batch_only():
    gated = GatedDetector(fail=True)
    gated.gate.set()
    batcher = MicroBatcher(gated.run, max_batch=4, max_wait_ms=0, queue_size=4)
    try:
        with pytest.raises(RuntimeError, match="model crashed"):
            batcher.submit(["doomed"])[0].result(5)
        assert batcher.submit(["fine"])[0].result(5) == "fine"  # the worker survived
    finally:
        batcher.close()


def test_a_model_failure_is_a_json_500_and_the_server_carries_on(detector, photos, reference, caplog):
    caplog.set_level(logging.ERROR)
    gated = GatedDetector(detector, fail=True)
    gated.gate.set()
    broken = create_app(gated, ServeSettings(max_wait_ms=0))  # type: ignore[arg-type]

    async def two_requests() -> list[httpx.Response]:
        # raise_app_exceptions=False: answer as a server would, instead of re-raising into the test
        transport = httpx.ASGITransport(app=broken, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return [await client.post("/api/v1/predict", content=photos[0]) for _ in range(2)]

    try:
        failed, recovered = asyncio.run(two_requests())
    finally:
        broken.state.batcher.close()
    assert failed.status_code == 500 and failed.json()["error"]["type"] == "InternalServerError"
    assert "model crashed" not in failed.text  # internals stay in the server's log...
    # ...where the request's failure is, by its type, at error level
    assert any(record.levelno == logging.ERROR and "ModelOutputError" in record.getMessage()
               for record in caplog.records), caplog.text
    assert recovered.status_code == 200 and recovered.json()["label"] == reference.label("vit", sample_photos()[0])


def test_submission_is_all_or_nothing():
    gated = GatedDetector()
    batcher = MicroBatcher(gated.run, max_batch=4, max_wait_ms=0, queue_size=3)
    try:
        batcher.submit(["held"])
        assert gated.entered.wait(5)
        batcher.submit(["a", "b"])
        with pytest.raises(ServerBusyError, match="queue full"):
            batcher.submit(["c", "d"])  # one slot left: neither is queued
        assert batcher.queue_depth == 2
    finally:
        gated.gate.set()
        batcher.close()
    with pytest.raises(ServerBusyError, match="shutting down"):
        batcher.submit(["late"])


def test_full_queue_answers_503(detector, photos):
    gated = GatedDetector(detector)
    busy = create_app(gated, ServeSettings(max_batch=4, max_wait_ms=0, queue_size=2))  # type: ignore[arg-type]
    batcher = busy.state.batcher
    upload = {"method": "POST", "url": "/api/v1/predict", "content": photos[0]}

    async def scenario() -> tuple[list[httpx.Response], httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=busy), base_url="http://test") as client:
            held = asyncio.create_task(client.request(**upload))
            assert await asyncio.to_thread(gated.entered.wait, 10)  # the worker is busy with the first image
            waiting = [asyncio.create_task(client.request(**upload)) for _ in range(2)]
            deadline = time.monotonic() + 10
            while batcher.queue_depth < 2 and time.monotonic() < deadline:  # noqa: ASYNC110 - polled, as above
                await asyncio.sleep(0.01)
            refused = await client.request(**upload)
            gated.gate.set()
            return list(await asyncio.gather(held, *waiting)), refused

    try:
        served, refused = asyncio.run(scenario())
    finally:
        gated.gate.set()
        batcher.close()
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["type"] == "ServerBusyError"
    assert [response.status_code for response in served] == [200, 200, 200]
    assert [len(batch) for batch in gated.batches] == [1, 2]


def test_settings_are_validated():
    for bad in ({"max_batch": 0}, {"queue_size": 0}, {"max_upload_bytes": 0}, {"max_wait_ms": -1}):
        with pytest.raises(ValueError):
            ServeSettings(**bad)


# --- the serve command --------------------------------------------------------------------------------------


def test_serve_command_runs_uvicorn(vit_package, reference):
    command = [sys.executable, "-m", "fastvit_detect", "serve", "--model", str(vit_package), "--port", "0",
               "--threads", "1", "--max-batch", "2"]
    server = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    log: list[str] = []
    try:
        deadline = time.monotonic() + 60
        address = None
        while address is None and time.monotonic() < deadline:
            line = server.stderr.readline()
            assert line, f"server exited early: {''.join(log)}"
            log.append(line)
            if match := re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", line):
                address = match.group(1)
        assert address, "".join(log)
        with httpx.Client(base_url=address, timeout=30) as client:
            assert client.get("/healthz").json()["variant"] == "int8"
            for photo in split_photos(reference)[:2]:
                answer = client.post("/predict/", json={"image": base64.b64encode(photo.read_bytes()).decode()})
                assert answer.json() == {"result": reference.label("vit", photo)}
    finally:
        server.terminate()  # SIGTERM: uvicorn shuts down gracefully
        rest = server.communicate(timeout=30)[1]
    output = "".join(log) + rest
    assert '"GET /healthz" 200' in output and '"POST /predict/" 200' in output
    assert "Traceback" not in output


BLOCK_FASTAPI = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"fastapi", "uvicorn"}:
            raise ImportError(f"blocked import of {name}")
sys.meta_path.insert(0, Block())
from fastvit_detect.cli import main
print("INFO", main(["info", sys.argv[1]]))
print("SERVE", main(["serve", "--model", sys.argv[1]]))
"""


def test_serve_without_the_extra_says_what_to_install(vit_package):
    result = subprocess.run([sys.executable, "-c", BLOCK_FASTAPI, str(vit_package)], capture_output=True, text=True,
                            timeout=60, check=False, env=child_environment())
    assert "INFO 0" in result.stdout and "SERVE 2" in result.stdout  # the other commands still work
    assert "pip install 'fastvit-detect[serve]'" in result.stderr and "Traceback" not in result.stderr
    assert "(fastapi, uvicorn missing)" in result.stderr  # every missing module, not only the first one hit


REMOVE_FASTAPI = """
import sys
class Missing:  # as if FastAPI and uvicorn were never installed
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"fastapi", "uvicorn"}:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Missing())
try:
    import fastvit_detect.server
except ModuleNotFoundError as exc:
    print("NAME", exc.name)
    print("MESSAGE", exc)
"""


def test_importing_the_server_without_the_extra_names_every_missing_module():
    """A program that builds its own app (``from fastvit_detect.server import create_app``) gets one error naming
    every module of the serve extra that is missing, and what to install."""
    result = subprocess.run([sys.executable, "-c", REMOVE_FASTAPI], capture_output=True, text=True, timeout=60,
                            check=False, env=child_environment())
    assert result.returncode == 0, result.stderr
    assert "NAME uvicorn" in result.stdout  # the first import that failed, for tools that read exc.name
    assert ("MESSAGE fastvit_detect.server needs FastAPI, uvicorn and python-multipart (fastapi, uvicorn missing): "
            "pip install 'fastvit-detect[serve]'") in result.stdout


def test_serve_rejects_bad_settings_before_loading(tmp_path, capsys):
    from fastvit_detect.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--model", str(tmp_path / "none"), "--max-wait-ms", "-1"])
    assert exit_info.value.code == 2
    assert "expected a number from 0 up to 10000, got -1" in capsys.readouterr().err


def test_unknown_routes_and_methods_use_the_error_shape(app):
    missing = call(app, "GET", "/nope")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "HTTPError"
    wrong = call(app, "GET", "/api/v1/predict")
    assert wrong.status_code == 405 and "error" in wrong.json()


def test_absurdly_nested_json_is_a_client_error(app):
    response = call(app, "POST", "/predict/", content=b"[" * 100_000, headers={"content-type": "application/json"})
    assert response.status_code == 422 and response.json()["error"]["type"] == "BadRequestError"


def test_image_over_the_servers_pixel_cap_is_413(vit_package, reference, tmp_path):
    """The server's own --max-pixels, far below Pillow's limit: refused from the header, 413, before decoding."""
    capped = create_app(Detector.load(vit_package, variant="fp32", threads=1), ServeSettings(max_pixels=10_000))
    over, at_cap = tmp_path / "over.png", tmp_path / "at-cap.png"
    Image.new("RGB", (200, 100), (230, 230, 230)).save(over)  # 20,000 pixels
    Image.new("RGB", (100, 100), (230, 230, 230)).save(at_cap)  # 10,000: allowed
    try:
        for url, request in [("/api/v1/predict", {"files": {"file": ("over.png", over.read_bytes())}}),
                             ("/api/v1/predict", {"content": over.read_bytes()}),
                             ("/predict/", {"json": {"image": base64.b64encode(over.read_bytes()).decode()}})]:
            response = call(capped, "POST", url, **request)
            assert response.status_code == 413, url
            error = response.json()["error"]
            assert error["type"] == "ImageTooLargeError"
            assert "20,000 pixels exceeds the cap of 10,000" in error["message"]
        response = call(capped, "POST", "/predict/", json={"image": base64.b64encode(at_cap.read_bytes()).decode()})
        assert response.json() == {"result": reference.label("vit", at_cap)}
    finally:
        capped.state.batcher.close()
        capped.state.decoder.close()


def test_a_batch_waits_at_most_max_wait_for_company(monkeypatch):
    """--max-wait-ms is an upper bound: the worker never asks the queue for more than that after a batch's first."""
    from fastvit_detect.server import batching

    waits: list[float | None] = []

    class RecordingQueue(queue.Queue):
        def get(self, block=True, timeout=None):
            waits.append(timeout)
            return super().get(block, timeout)

    gated = GatedDetector()
    gated.gate.set()
    with monkeypatch.context() as patch:
        patch.setattr(batching.queue, "Queue", RecordingQueue)
        batcher = MicroBatcher(gated.run, max_batch=4, max_wait_ms=40, queue_size=8)
    try:
        assert batcher.submit(["alone"])[0].result(10) == "alone"
        assert [future.result(10) for future in batcher.submit(["a", "b"])] == ["a", "b"]
    finally:
        batcher.close()
    bounded = [wait for wait in waits if wait is not None]
    assert bounded and all(0 <= wait <= 0.040 for wait in bounded), waits
    assert [len(batch) for batch in gated.batches] == [1, 2]
