"""What the survivors of the automatic mutation run in server/app.py (the routes and serve()) showed untested.
Expected values come from the serving and faces guides (GET routes answer HEAD; a busy face stage answers 503
before the upload is read; a failed image of a list is logged), from uvicorn's own Config and from the HTTP
exchanges, with the app's clock replaced where a time is checked, never from the module's code."""

from __future__ import annotations

import itertools
import logging
import math
import types
from typing import ClassVar

import pytest

pytest.importorskip("fastapi")

from conftest import sample_photos
from test_mutants_stages import _close  # every stage's threads stopped
from test_server import call  # requests through httpx's ASGI transport

import fastvit_detect.server.app as app_module
from fastvit_detect import Detector, errors
from fastvit_detect.server import ServeSettings, create_app


@pytest.fixture
def vit_app(vit_package):
    app = create_app(Detector.load(vit_package, variant="fp32", threads=1), ServeSettings())
    yield app
    _close(app)


@pytest.fixture
def faces_app(packages):
    app = create_app(Detector.load(packages["vit-faces"], variant="fp32", threads=1), ServeSettings())
    yield app
    _close(app)


def test_every_get_route_answers_head_with_its_headers_and_no_body(vit_app):
    """serving.md: GET routes answer HEAD too (a load balancer's probe, curl -I)."""
    for path in ("/", "/healthz", "/api/v1/model"):
        got, head = call(vit_app, "GET", path), call(vit_app, "HEAD", path)
        assert (got.status_code, head.status_code) == (200, 200), path
        assert head.content == b"" and head.headers["content-type"] == got.headers["content-type"], path


@pytest.mark.parametrize(("url", "body"), [("/api/v1/predict", "photo"), ("/api/v1/predict?faces=1", "photo"),
                                          ("/api/v1/explain?grid=2", "photo")])
def test_each_answer_times_its_request_in_milliseconds(faces_app, monkeypatch, url, body):
    """An answer's ``elapsed_ms`` is its request's time in milliseconds: here with the app's clock replaced, a
    reading 0.25 s after the one before (the access log reads first, the route next, then once more at its end)."""
    readings = itertools.count(10.0, 0.25)
    monkeypatch.setattr(app_module, "time", types.SimpleNamespace(perf_counter=lambda: next(readings)))
    response = call(faces_app, "POST", url, content=sample_photos()[0].read_bytes())
    assert response.status_code == 200, response.text
    assert response.json()["elapsed_ms"] == 250.0


def test_a_busy_face_stage_answers_503_before_the_upload_is_read(faces_app):
    """faces.md: with every face thread and waiting place taken, a faces request is refused at once (503), before
    its upload is read: an upload over the size limit gets the 503, not the 413 that reading it would give."""
    stage = faces_app.state.faces
    stage.admitted = stage.capacity  # every place taken, as by as many slow detections
    too_big = b"\0" * (ServeSettings().max_upload_bytes + 1)
    try:
        response = call(faces_app, "POST", "/api/v1/predict?faces=1", content=too_big)
    finally:
        stage.admitted = 0
    assert response.status_code == 503, response.text
    assert "face detection is busy" in response.json()["error"]["message"]
    assert call(faces_app, "POST", "/api/v1/predict?faces=1", content=too_big).status_code == 413


def test_a_failed_image_in_a_list_is_logged_and_answered_without_its_cause(vit_app, monkeypatch, caplog):
    """serving.md: 500 means the server failed. In a list answer such an image gets the generic error in its place
    (nothing of the cause), the others their verdicts, and the log gets the cause to find it by."""
    decoder = vit_app.state.decoder
    decode_all = decoder.decode_all

    async def one_fails(uploads):
        decoded = await decode_all(uploads)
        return [errors.BackendError("/srv/models/secret: the session broke"), *decoded[1:]]

    monkeypatch.setattr(decoder, "decode_all", one_fails)
    caplog.set_level(logging.ERROR, logger="fastvit_detect.server")
    photo = sample_photos()[0].read_bytes()
    response = call(vit_app, "POST", "/api/v1/predict", files=[("file", ("a.png", photo)), ("file", ("b.png", photo))])
    assert response.status_code == 200, response.text
    failed, answered = response.json()
    assert failed["filename"] == "a.png" and failed["error"]["type"] == "InternalServerError"
    assert "secret" not in response.text and answered["label"] in ("Fake", "Real")
    assert [record.getMessage() for record in caplog.records] == [
        "an image failed: BackendError: /srv/models/secret: the session broke"]


class RecordingServer:
    """Stands in for uvicorn.Server: keeps the Config serve() built instead of serving."""

    configs: ClassVar[list] = []

    def __init__(self, config) -> None:
        self.configs.append(config)

    def run(self, sockets) -> None:
        self.sockets = sockets


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_serve_hands_uvicorn_the_settings_and_announces_the_bound_address(vit_package, monkeypatch, host):
    """serve(): uvicorn gets the settings' keep-alive (whole seconds, rounded up), a concurrency limit that serves
    max_connections, the header deadline, and its own access log off (log_request writes one line a request);
    the 'Uvicorn running on' line scripts wait for names the bound address, an IPv6 one in brackets."""
    try:
        sock = app_module.bind_socket(host, 0)
    except Exception as exc:  # noqa: BLE001 - no IPv6 loopback on this machine
        pytest.skip(f"can't bind {host}: {exc}")
    RecordingServer.configs = []
    monkeypatch.setattr(app_module.uvicorn, "Server", RecordingServer)
    announced: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: announced.append(record.getMessage())  # type: ignore[method-assign]
    uvicorn_log = logging.getLogger("uvicorn.error")
    real_config = app_module.uvicorn.Config

    def listened_config(*args, **kwargs):
        config = real_config(*args, **kwargs)  # configures uvicorn's loggers afresh: listen to its log after that
        uvicorn_log.addHandler(handler)
        return config

    monkeypatch.setattr(app_module.uvicorn, "Config", listened_config)
    settings = ServeSettings(keep_alive_s=2.2, max_connections=7, header_timeout_s=3.5)
    try:
        app_module.serve(Detector.load(vit_package, variant="fp32", threads=1), settings=settings, sock=sock)
        port = sock.getsockname()[1]
    finally:
        sock.close()
        uvicorn_log.removeHandler(handler)
    (config,) = RecordingServer.configs
    assert config.access_log is False
    assert config.timeout_keep_alive == math.ceil(2.2) == 3
    assert config.limit_concurrency == 8  # uvicorn refuses once connections reach it, that request's own included
    assert config.http.header_timeout_s == 3.5
    shown = f"[{host}]" if ":" in host else host
    assert announced == [f"Uvicorn running on http://{shown}:{port} (Press CTRL+C to quit)"]
    config.app.state.batcher.close()


def test_the_seed_endpoint_on_a_faces_package_answers_503_while_face_detection_is_busy(faces_app, monkeypatch):
    """The seed project's /predict/ on a package that expects faces goes through the face stage like predict:
    while every face thread and waiting place is taken, 503 at once; once free, the verdict."""
    import base64

    stage = faces_app.state.faces
    monkeypatch.setattr(stage, "expected", True)  # as for a package whose manifest says its model expects faces
    body = {"image": base64.b64encode(sample_photos()[0].read_bytes()).decode("ascii")}
    stage.admitted = stage.capacity
    try:
        busy = call(faces_app, "POST", "/predict/", json=body)
    finally:
        stage.admitted = 0
    assert busy.status_code == 503 and "face detection is busy" in busy.json()["error"]["message"]
    answered = call(faces_app, "POST", "/predict/", json=body)
    assert answered.status_code == 200 and answered.json()["result"] in ("Fake", "Real")
