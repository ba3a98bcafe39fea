"""What the server package's survivors of the automatic mutation run showed untested. Expected values come from
the documented limits (docs/guides/server.md, the settings' docstrings) and from the HTTP exchanges themselves, not
from the server's code."""

from __future__ import annotations

import math

import pytest

pytest.importorskip("fastapi")

from fastvit_detect.errors import InvalidOptionError
from fastvit_detect.server.video import VideoServeSettings

# (field, the smallest and largest value taken, values refused): the video settings' documented ranges
VIDEO_RANGES = [
    ("max_upload_bytes", 1, 1 << 32, [0, (1 << 32) + 1, 1.5, True, "1"]),
    ("max_duration", 0.001, 86_400.0, [0.0, 86_400.5, math.nan, math.inf, -1.0]),
    ("max_frame_pixels", 1, 1 << 34, [0, (1 << 34) + 1]),
    ("max_frames", 1, 100_000, [0, 100_001]),
    ("fps", 0.0001, 120.0, [0.0, 120.5, math.nan, -1.0]),
    ("max_decode_seconds", 0.001, 86_400.0, [0.0, 86_400.5, math.nan, math.inf, -5.0]),
    ("concurrency", 1, 64, [0, 65]),
    ("queue", 0, 10_000, [-1, 10_001]),
]


@pytest.mark.parametrize(("field", "low", "high", "refused"), VIDEO_RANGES, ids=[row[0] for row in VIDEO_RANGES])
def test_each_video_setting_takes_its_range_and_refuses_past_it(field, low, high, refused):
    for value in (low, high):
        assert getattr(VideoServeSettings(**{field: value}), field) == value
    for value in refused:
        with pytest.raises(InvalidOptionError, match=field):
            VideoServeSettings(**{field: value})


def test_the_video_limits_carry_the_settings():
    settings = VideoServeSettings(max_upload_bytes=1234, max_duration=12.5, max_frame_pixels=640 * 480,
                                  max_decode_seconds=7.5)
    limits = settings.limits
    assert (limits.max_bytes, limits.max_duration, limits.max_frame_pixels, limits.max_decode_seconds) == (
        1234, 12.5, 640 * 480, 7.5)


SERVER_THREADS = ("fastvit-decode", "fastvit-explain", "fastvit-faces", "fastvit-video", "fastvit-detect-batcher")


def test_shutting_the_server_down_stops_every_stage_it_started(packages, tmp_path):
    """create_app's contract: the stages start with the app and stop with it. After the lifespan ends (uvicorn's
    shutdown), no thread any stage started is left: the decode pool, the model thread, explain, faces and video."""
    import threading
    import time

    from conftest import sample_photos
    from starlette.testclient import TestClient
    from video_clips import fake_segment_clip

    from fastvit_detect import Detector
    from fastvit_detect.server import ServeSettings, create_app

    before = set(threading.enumerate())
    app = create_app(Detector.load(packages["vit-faces"], variant="fp32", threads=1), ServeSettings())
    photo = sample_photos()[0].read_bytes()
    clip = fake_segment_clip(tmp_path / "clip.mp4").read_bytes()
    with TestClient(app, base_url="http://127.0.0.1") as client:
        for url, body in [("/api/v1/predict", photo), ("/api/v1/predict?faces=1", photo),
                          ("/api/v1/explain?grid=2", photo), ("/api/v1/video?max_frames=2", clip)]:
            assert client.post(url, content=body).status_code == 200, url
        started = {thread.name.rsplit("_", 1)[0] for thread in set(threading.enumerate()) - before}
        assert {prefix for prefix in SERVER_THREADS if any(name.startswith(prefix) for name in started)} == set(
            SERVER_THREADS)
    deadline = time.monotonic() + 10  # idle pool threads exit at once on shutdown
    while time.monotonic() < deadline:
        left = [thread.name for thread in set(threading.enumerate()) - before
                if thread.is_alive() and thread.name.startswith(SERVER_THREADS)]
        if not left:
            break
        time.sleep(0.05)
    assert left == []


def test_a_request_that_crashes_the_app_is_logged_with_the_500_it_got(vit_package, caplog, monkeypatch):
    """The access log line of a request whose handler raised (no response came back through the middleware) says
    500, the status the client was answered with. The client gets the usual {"error": ...} body (serving.md: a
    500 means the server failed) and nothing of the exception: its type, its text (paths, secrets)."""
    import asyncio
    import logging

    import httpx

    from fastvit_detect import Detector
    from fastvit_detect.server import ServeSettings, create_app

    caplog.set_level(logging.INFO, logger="fastvit_detect.server")
    detector = Detector.load(vit_package, variant="fp32", threads=1)
    app = create_app(detector, ServeSettings())
    monkeypatch.setattr(type(detector.package), "public_manifest", lambda _package: {}["/srv/secret/path.key"])

    async def get() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            return await client.get("/api/v1/model")

    try:
        response = asyncio.run(get())
    finally:
        app.state.batcher.close()
    assert response.status_code == 500
    assert response.json()["error"]["type"] == "InternalServerError"
    assert "KeyError" not in response.text and "secret" not in response.text
    access = [record.getMessage() for record in caplog.records if '"GET /api/v1/model"' in record.getMessage()]
    assert len(access) == 1 and f'"GET /api/v1/model" {response.status_code} ' in access[0], access


def test_the_api_schema_lists_the_documented_endpoints_and_not_the_page(vit_package):
    """/openapi.json documents the API (the serving guide's table), not the upload page or HEAD twins."""
    import asyncio

    import httpx

    from fastvit_detect import Detector
    from fastvit_detect.server import ServeSettings, create_app

    app = create_app(Detector.load(vit_package, variant="fp32", threads=1), ServeSettings())

    async def schema() -> dict:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            return (await client.get("/openapi.json")).json()

    try:
        paths = asyncio.run(schema())["paths"]
    finally:
        app.state.batcher.close()
    assert set(paths) == {"/api/v1/predict", "/predict/", "/api/v1/explain", "/api/v1/video", "/healthz",
                          "/api/v1/model"}
    assert all("head" not in methods for methods in paths.values())
    # each answer the guide lists (408, 413, 415, 422, 500, 503; 409 for faces=1), documented with an example
    responses = paths["/api/v1/predict"]["post"]["responses"]
    assert {"408", "409", "413", "415", "422", "500", "503"} <= set(responses)
    assert all("example" in responses[status]["content"]["application/json"] for status in ("408", "409", "503"))
    # an upload endpoint answers an empty body with an error (the guide's 4xx list), so its body is required
    uploads = {path: methods["post"].get("requestBody") for path, methods in paths.items() if "post" in methods}
    assert set(uploads) == {"/api/v1/predict", "/predict/", "/api/v1/explain", "/api/v1/video"}
    assert all(body and body["required"] is True for body in uploads.values()), uploads
    # the video endpoint's query parameters, with the defaults and caps of this server (VideoServeSettings())
    video = {parameter["name"]: parameter["schema"] for parameter in paths["/api/v1/video"]["post"]["parameters"]}
    assert video == {"fps": {"type": "number", "minimum": 0.0001, "maximum": 120.0, "default": 1.0},
                     "max_frames": {"type": "integer", "minimum": 1, "maximum": 300, "default": 300}}
    assert {"multipart/form-data", "video/*"} <= set(uploads["/api/v1/video"]["content"])


def test_a_trickling_body_is_cut_at_the_body_timeout_not_a_chunk_later():
    """read_body's bound: the whole body within body_timeout_s. A client sending a byte every 0.2 s (each chunk in
    time on its own) is refused once the total passes the timeout, not allowed to go on chunk by chunk."""
    import asyncio

    from starlette.requests import Request

    from fastvit_detect.errors import RequestTimeoutError
    from fastvit_detect.server.requests import read_body

    sent = []

    async def receive() -> dict:
        await asyncio.sleep(0.2)
        sent.append(1)
        return {"type": "http.request", "body": b"x", "more_body": len(sent) < 20}

    request = Request({"type": "http", "method": "POST", "path": "/", "headers": [], "query_string": b""}, receive)
    with pytest.raises(RequestTimeoutError, match="within 0.5 s"):
        asyncio.run(read_body(request, limit=1_000, timeout_s=0.5))
    assert len(sent) < 20


def test_a_bad_files_name_in_a_list_answer_is_cut_to_200_characters(vit_package):
    import asyncio

    import httpx
    from conftest import sample_photos

    from fastvit_detect import Detector
    from fastvit_detect.server import ServeSettings, create_app

    app = create_app(Detector.load(vit_package, variant="fp32", threads=1), ServeSettings())
    photo = sample_photos()[0].read_bytes()

    async def post(name: str) -> list:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            files = [("file", ("photo.png", photo)), ("file", (name, b"not an image"))]
            return (await client.post("/api/v1/predict", files=files)).json()

    try:
        exact, longer = asyncio.run(post("n" * 200)), asyncio.run(post("n" * 201))
    finally:
        app.state.batcher.close()
    assert exact[1]["filename"] == "n" * 200 and "error" in exact[1]
    assert len(longer[1]["filename"]) == 200 and longer[1]["filename"].endswith("...")


@pytest.mark.parametrize(("option", "high"), [("max_batch", 4096), ("queue_size", 100_000), ("workers", 256)])
def test_a_batchers_whole_number_options_take_their_range_and_refuse_past_it(option, high):
    """MicroBatcher's ranges (the serving flags' --max-batch, --queue-size, --workers): 1 to the cap."""
    from fastvit_detect.server import MicroBatcher

    for value in (1, high):
        batcher = MicroBatcher(lambda items: items, **{option: value})
        batcher.close()
    for value in (0, high + 1, 2.5, "2"):
        with pytest.raises(ValueError, match=option):
            MicroBatcher(lambda items: items, **{option: value})


def test_a_batchers_wait_takes_0_to_10000_ms_and_refuses_past_it():
    from fastvit_detect.server import MicroBatcher

    for value in (0, 0.5, 10_000):
        batcher = MicroBatcher(lambda items: items, max_wait_ms=value)
        assert batcher.max_wait == value / 1000  # seconds, for the queue's timeouts
        batcher.close()
    for value in (-0.5, 10_000.5, math.nan, math.inf):
        with pytest.raises(ValueError, match="max_wait_ms"):
            MicroBatcher(lambda items: items, max_wait_ms=value)


def test_a_batcher_made_without_options_has_the_servers_defaults_and_one_worker():
    """MicroBatcher is public (fastvit_detect.server): made bare, it batches as the server does by default."""
    from fastvit_detect.server import MicroBatcher, ServeSettings

    batcher, defaults = MicroBatcher(lambda items: items), ServeSettings()
    try:
        assert (batcher.max_batch, batcher.max_wait, batcher.queue_size, batcher.workers) == (
            defaults.max_batch, defaults.max_wait_ms / 1000, defaults.queue_size, 1)
    finally:
        batcher.close()


def test_serve_settings_cannot_be_changed_once_made():
    """A server's settings are shared by its stages and shown by /api/v1/model: a value, not a mutable object."""
    import dataclasses

    from fastvit_detect.server import ServeSettings

    settings = ServeSettings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.max_batch = 1  # type: ignore[misc]


def documented_setting_ranges() -> dict[str, tuple[float, float, bool]]:
    """The serving guide's table of ServeSettings' ranges: field -> (low, high, whole number?)."""
    import re
    from pathlib import Path

    guide = (Path(__file__).resolve().parent.parent / "docs" / "guides" / "serving.md").read_text()
    table = guide.split("## Settings and their ranges", 1)[1]
    ranges = {}
    for names, low, high, whole in re.findall(r"\| ((?:`\w+`(?:, )?)+) \| ([\d.]+) – ([\d.]+)( \(whole\))? \|", table):
        for name in re.findall(r"`(\w+)`", names):
            ranges[name] = (float(low), float(high), bool(whole))
    return ranges


def test_serve_settings_take_the_documented_ranges_and_refuse_past_them():
    from fastvit_detect.server import ServeSettings

    ranges = documented_setting_ranges()
    assert len(ranges) == 19  # every numeric setting the guide lists
    for name, (low, high, whole) in ranges.items():
        kind = int if whole else float
        for value in (kind(low), kind(high)):
            assert getattr(ServeSettings(**{name: value}), name) == value, (name, value)
        step = 1 if whole else (0.001 if low < 1 else 0.5)
        refused = [kind(low - step), kind(high + step)] + ([low + 0.5] if whole else [math.nan, math.inf])
        for value in refused:
            with pytest.raises(ValueError, match=name):
                ServeSettings(**{name: value})


# serve's flags in the serving guide's synopsis -> (ServeSettings field, the flag's unit in the field's)
SYNOPSIS_FLAGS = {"--max-upload-mb": ("max_upload_bytes", 1024 * 1024), "--max-pixels": ("max_pixels", 1),
                  "--max-batch": ("max_batch", 1), "--max-wait-ms": ("max_wait_ms", 1),
                  "--queue-size": ("queue_size", 1), "--max-connections": ("max_connections", 1),
                  "--header-timeout": ("header_timeout_s", 1), "--body-timeout": ("body_timeout_s", 1),
                  "--explain-concurrency": ("explain_concurrency", 1), "--explain-queue": ("explain_queue", 1),
                  "--explain-max-passes": ("explain_max_passes", 1), "--explain-yield": ("explain_yield_s", 1)}
# the defaults the guides state in prose: (field, value, guide, the words that state it)
PROSE_DEFAULTS = [("keep_alive_s", 5.0, "guides/serving.md", "as is one idle for 5 s between requests"),
                  ("decode_stall_s", 30.0, "reliability.md", "`ServeSettings.decode_stall_s` (default 30 s)"),
                  ("faces_concurrency", 1, "guides/faces.md", "`faces_concurrency`\n  threads (default 1)"),
                  ("faces_queue", 4, "guides/faces.md", "the event\n  loop (default 4)"),
                  ("faces_max_per_image", 32, "guides/faces.md", "`faces_max_per_image` faces (32)"),
                  ("faces_detect_side", 1600, "guides/faces.md", "at most `faces_detect_side` px (1600)")]


def test_serve_settings_defaults_are_the_documented_ones():
    """An operator reads the defaults in the guides (the synopsis of serve's flags, and the prose); ServeSettings(),
    which the CLI and serve() start from, must have those, or a server behaves otherwise than documented."""
    import re
    from pathlib import Path

    from fastvit_detect.server import ServeSettings

    docs = Path(__file__).resolve().parent.parent / "docs"
    synopsis = (docs / "guides" / "serving.md").read_text().split("```", 2)[1]
    stated = dict(re.findall(r"\[(--[a-z-]+) ([\w.,]+)\]", synopsis))
    defaults = ServeSettings()
    assert set(SYNOPSIS_FLAGS) <= set(stated)
    for flag, (name, unit) in SYNOPSIS_FLAGS.items():
        assert getattr(defaults, name) == float(stated[flag]) * unit, (flag, stated[flag])
    assert ",".join(defaults.formats) == stated["--formats"]
    assert defaults.decode_budget_pixels is None and defaults.budget_pixels == defaults.max_pixels * 3 // 2  # 1.5 x
    for name, value, guide, words in PROSE_DEFAULTS:
        assert words in (docs / guide).read_text(), (guide, words)
        assert getattr(defaults, name) == value, name


def test_decode_workers_default_to_the_physical_cores_and_at_least_two(monkeypatch):
    """serving.md: ``--decode-workers`` defaults to the physical cores, at least 2 (one slow decode never holds
    every upload back, even on one core)."""
    from pathlib import Path

    from fastvit_detect.server import ServeSettings, settings

    for cores, expected in ((1, 2), (2, 2), (3, 3), (16, 16)):
        monkeypatch.setattr(settings, "physical_core_count", lambda cores=cores: cores)
        assert ServeSettings().decode_workers == expected, cores
    guide = (Path(__file__).resolve().parent.parent / "docs" / "guides" / "serving.md").read_text()
    assert "`--decode-workers` threads (default: the physical cores, at least 2)" in guide


def test_serve_settings_check_the_decode_budget_and_the_formats():
    """decode_budget_pixels: a whole number from max_pixels to 2^34 (the serving guide); formats: Pillow's names in
    any case, kept in upper case, an unknown one refused (as --formats)."""
    from fastvit_detect.server import ServeSettings

    assert ServeSettings(max_pixels=1000, decode_budget_pixels=1000).budget_pixels == 1000
    for wrong in (999, 1500.0, 1 << 35, math.nan):
        with pytest.raises(ValueError, match="decode_budget_pixels"):
            ServeSettings(max_pixels=1000, decode_budget_pixels=wrong)
    assert ServeSettings(formats=["jpeg", "Png"]).formats == ("JPEG", "PNG")
    with pytest.raises(InvalidOptionError, match="formats"):
        ServeSettings(formats=["JPEG", "NOT-A-FORMAT"])


def test_the_video_settings_defaults_are_the_video_guides():
    """docs/guides/video.md: 256 MiB of upload, 300 s of content, 4K frames, 300 sampled frames, 300 s of decoding,
    one clip at work and two waiting, 1 frame a second by default."""
    settings = VideoServeSettings()
    assert (settings.max_upload_bytes, settings.max_duration, settings.max_frame_pixels, settings.max_frames,
            settings.max_decode_seconds, settings.concurrency, settings.queue, settings.fps) == (
        256 * 1024 * 1024, 300.0, 3840 * 2160, 300, 300.0, 1, 2, 1.0)


class HeldVideoDetector:
    """Stands in for a Detector in a VideoStage: predict_video waits for ``release`` and records the thread."""

    def __init__(self) -> None:
        import threading

        self.package = None  # read only by has_face_detector, which the test replaces
        self.release, self.started = threading.Event(), threading.Event()
        self.threads: list[int] = []

    def predict_video(self, upload, **options):
        import threading

        self.threads.append(threading.get_ident())
        self.started.set()
        self.release.wait(30)
        return "a result"


def test_a_clip_runs_at_lower_priority_and_closing_the_stage_does_not_wait_for_it(monkeypatch):
    """The video guide: clips run on a thread at a lower CPU priority; and shutting the server down doesn't wait
    for a clip at work (a clip may take minutes)."""
    import asyncio
    import io
    import threading
    import time

    import fastvit_detect.server.video as video_module

    lowered: list[int] = []
    monkeypatch.setattr(video_module, "lower_thread_priority", lambda: lowered.append(threading.get_ident()))
    monkeypatch.setattr(video_module, "has_face_detector", lambda package: False)
    detector = HeldVideoDetector()
    stage = video_module.VideoStage(detector, VideoServeSettings())  # type: ignore[arg-type]
    outcome: list[object] = []
    worker = threading.Thread(target=lambda: outcome.append(asyncio.run(stage.classify(io.BytesIO(b"clip"), 1.0, 3))))
    worker.start()
    assert detector.started.wait(10)
    started = time.monotonic()
    stage.close()
    closing = time.monotonic() - started
    detector.release.set()
    worker.join(10)
    assert closing < 5, closing  # it returned while the clip was still held
    assert lowered == detector.threads and len(lowered) == 1  # lowered on the thread that ran the clip
    assert outcome == ["a result"]


def test_every_error_class_gets_the_status_the_serving_guide_gives_it():
    """The serving guide's mapping (fastvit_detect.httpapi, for any framework): 408 body too slow, 409 faces asked
    of a package without a detector, 413 too big, 415 not decodable, 422 any other fault of the input or the
    request, 503 busy, 500 whatever is the server's (the model's) fault."""
    from fastvit_detect import errors
    from fastvit_detect.httpapi import http_status

    expected = {errors.RequestTimeoutError: 408, errors.MissingFaceDetectorError: 409,
                errors.UploadTooLargeError: 413, errors.ImageTooLargeError: 413, errors.VideoTooLargeError: 413,
                errors.ImageDecodeError: 415, errors.UnsupportedInputError: 415, errors.VideoDecodeError: 415,
                errors.EmptyImageError: 422, errors.BadRequestError: 422, errors.InvalidOptionError: 422,
                errors.InputError: 422, errors.ImageNotFoundError: 422, errors.ServerBusyError: 503,
                errors.ModelOutputError: 500, errors.FastVitDetectError: 500}
    for kind, status in expected.items():
        assert http_status(kind.__new__(kind)) == status, kind.__name__


def test_the_protocol_class_waits_for_headers_as_long_as_the_servers_default():
    """TimedH11Protocol is exported for programs that run uvicorn themselves (``http=TimedH11Protocol``): its own
    header deadline is the serving guide's default, 10 s, as serve() sets from ServeSettings."""
    from fastvit_detect.server import ServeSettings, TimedH11Protocol

    assert TimedH11Protocol.header_timeout_s == ServeSettings().header_timeout_s == 10.0


def test_a_port_must_be_a_whole_number_from_0_to_65535():
    import contextlib
    import socket

    from fastvit_detect.errors import FastVitDetectError
    from fastvit_detect.server.protocol import bind_socket

    for port in (-1, 65536, True, "80", 80.0):
        with pytest.raises(ValueError, match="port must be 0-65535"):
            bind_socket("127.0.0.1", port)
    bound = bind_socket("127.0.0.1", 0)  # 0: any free port
    try:
        assert bound.getsockname()[1] > 0
    finally:
        bound.close()
    with socket.socket() as taken:  # 65535 is a port like any other: bound, or refused as in use, never a ValueError
        with contextlib.suppress(OSError):
            taken.bind(("127.0.0.1", 65535))
        with pytest.raises(FastVitDetectError, match="can't listen on 127.0.0.1:65535"):
            bind_socket("127.0.0.1", 65535)


def test_the_listening_socket_queues_as_many_connections_as_uvicorn_would(monkeypatch):
    """The server binds its own socket (to refuse a bad host plainly) and hands it to uvicorn, so uvicorn's
    ``backlog`` setting never applies: the socket must carry uvicorn's default itself, or a burst of connections
    is refused sooner (or later) than under ``uvicorn.run``."""
    import inspect
    import socket

    import uvicorn

    from fastvit_detect.server import protocol

    listened = []

    class Recording(socket.socket):
        def listen(self, *args):
            listened.append(args)
            super().listen(*args)

    monkeypatch.setattr(protocol.socket, "socket", Recording)
    bound = protocol.bind_socket("127.0.0.1", 0)
    bound.close()
    assert listened == [(inspect.signature(uvicorn.Config).parameters["backlog"].default,)]


def test_a_restarted_server_binds_its_port_while_old_connections_linger():
    """A server restarted at once finds its port's last connections in TIME_WAIT: it binds anyway (SO_REUSEADDR),
    as an operator expects, rather than failing with 'address already in use' for a minute."""
    import socket

    from fastvit_detect.server.protocol import bind_socket

    first = bind_socket("127.0.0.1", 0)
    port = first.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port), timeout=10)
    accepted, _ = first.accept()
    accepted.close()  # the server's side closes first: its end of the connection lingers in TIME_WAIT
    client.close()
    first.close()
    again = bind_socket("127.0.0.1", port)
    try:
        assert again.getsockname() == ("127.0.0.1", port)
        assert again.get_inheritable()  # uvicorn's worker processes take the listening socket as it is
    finally:
        again.close()


def test_a_port_in_use_is_refused_without_leaking_the_socket():
    import os
    import socket

    from fastvit_detect.errors import FastVitDetectError
    from fastvit_detect.server.protocol import bind_socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        before = len(os.listdir("/proc/self/fd"))
        kept = []  # the errors, and through their tracebacks every local of bind_socket: only close() frees a socket
        for _ in range(3):
            with pytest.raises(FastVitDetectError, match=f"can't listen on 127.0.0.1:{port}: Address already in use"
                               ) as refused:
                bind_socket("127.0.0.1", port)
            kept.append(refused.value)
        assert len(os.listdir("/proc/self/fd")) == before


def test_video_serve_settings_cannot_be_changed_once_made():
    """Checked once when made (every range): a frozen value, so no field can later leave its range."""
    import dataclasses

    settings = VideoServeSettings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.max_frames = 10**9  # type: ignore[misc]


def held_stage(monkeypatch, **settings):
    import fastvit_detect.server.video as video_module

    monkeypatch.setattr(video_module, "lower_thread_priority", lambda: True)
    monkeypatch.setattr(video_module, "has_face_detector", lambda package: False)
    detector = HeldVideoDetector()
    return detector, video_module.VideoStage(detector, VideoServeSettings(**settings))  # type: ignore[arg-type]


def test_a_clips_parameters_are_checked_against_the_stages_limits(monkeypatch):
    """The video guide: ?fps= and ?max_frames= are optional (the stage's settings then), and a value that isn't
    finite and in range is a 422 naming it: fps 0.0001 to 120, max_frames 1 to the server's max_frames."""
    from starlette.datastructures import QueryParams

    _, stage = held_stage(monkeypatch, fps=2.0, max_frames=50)
    try:
        assert stage.parameters(QueryParams("")) == (2.0, 50)
        assert stage.parameters(QueryParams("fps=0.0001&max_frames=1")) == (0.0001, 1)
        assert stage.parameters(QueryParams("fps=120&max_frames=50")) == (120.0, 50)
        for query, name in (("fps=0", "fps"), ("fps=120.5", "fps"), ("fps=nan", "fps"), ("fps=inf", "fps"),
                            ("max_frames=0", "max_frames"), ("max_frames=51", "max_frames"),
                            ("max_frames=ten", "max_frames"), ("frames=10", "frames")):
            with pytest.raises(InvalidOptionError, match=name):
                stage.parameters(QueryParams(query))
    finally:
        stage.close()


def test_clips_past_the_one_at_work_and_its_queue_are_refused_until_one_finishes(monkeypatch):
    """The video guide: ``concurrency`` clips at work and ``queue`` waiting, the next answered 503 at once; a
    finished clip frees its place, however many came and went before."""
    import asyncio
    import io

    from fastvit_detect.errors import ServerBusyError

    detector, stage = held_stage(monkeypatch, concurrency=1, queue=1)

    async def rounds() -> list[object]:
        answers: list[object] = []
        for _ in range(3):
            detector.release.clear()
            admitted = [asyncio.ensure_future(stage.classify(io.BytesIO(b"clip"), 1.0, 3)) for _ in range(2)]
            await asyncio.sleep(0.05)  # both admitted: one at work, one waiting
            with pytest.raises(ServerBusyError, match="2 videos are being classified or waiting"):
                await asyncio.wait_for(stage.classify(io.BytesIO(b"clip"), 1.0, 3), 5)  # refused at once, or fail
            detector.release.set()
            answers += await asyncio.gather(*admitted)
        return answers

    try:
        assert asyncio.run(rounds()) == ["a result"] * 6
    finally:
        detector.release.set()
        stage.close()


def test_closing_the_video_stage_drops_the_clips_still_waiting(monkeypatch, caplog):
    """Shutting the server down cancels the clips that haven't started (a clip may take minutes each): the one at
    work finishes, the waiting one never reaches the detector, every place comes back, and nothing is logged for
    the cancelled one. A clip sent after that is refused, its place given back too."""
    import asyncio
    import io

    detector, stage = held_stage(monkeypatch, concurrency=1, queue=2)

    async def close_while_one_waits() -> list[object]:
        clips = [asyncio.ensure_future(stage.classify(io.BytesIO(b"clip"), 1.0, 3)) for _ in range(2)]
        assert await asyncio.to_thread(detector.started.wait, 30), "the first clip never started"
        await asyncio.sleep(0.05)  # the second is queued behind it
        stage.close()
        detector.release.set()
        return await asyncio.gather(*clips, return_exceptions=True)

    first, waiting = asyncio.run(close_while_one_waits())
    assert first == "a result" and isinstance(waiting, asyncio.CancelledError)
    assert len(detector.threads) == 1 and stage.admitted == 0
    with pytest.raises(RuntimeError, match="shutdown"):
        asyncio.run(stage.classify(io.BytesIO(b"late"), 1.0, 3))
    assert stage.admitted == 0
    assert "Exception in callback" not in caplog.text, caplog.text


def post_clip_and_close(app, url: str):
    """POST a clip's bytes to ``url`` through httpx's ASGI transport, then stop the app's model and video threads."""
    import asyncio

    import httpx

    async def post() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            return await client.post(url, content=b"a clip")

    try:
        return asyncio.run(post())
    finally:
        app.state.batcher.close()
        app.state.videos.close()


def test_a_clips_answer_times_the_request_in_milliseconds(vit_package, monkeypatch):
    """The video guide: the answer carries ``elapsed_ms``, the request's time in milliseconds (here with the
    route's clock replaced: 0.25 s between its two readings)."""
    import types

    import fastvit_detect.server.video as video_module
    from fastvit_detect import Detector
    from fastvit_detect.server import ServeSettings, create_app

    readings = iter([100.0, 100.25])
    monkeypatch.setattr(video_module, "time", types.SimpleNamespace(perf_counter=lambda: next(readings)))
    app = create_app(Detector.load(vit_package, variant="fp32", threads=1), ServeSettings())

    async def classified(upload, fps, max_frames):
        return types.SimpleNamespace(to_dict=lambda: {"verdict": "Real", "fps": fps, "max_frames": max_frames})

    monkeypatch.setattr(app.state.videos, "classify", classified)
    response = post_clip_and_close(app, "/api/v1/video?fps=2")
    assert response.status_code == 200, response.text
    answer = response.json()
    assert (answer["verdict"], answer["fps"], answer["max_frames"]) == ("Real", 2.0, 300)
    assert answer["elapsed_ms"] == 250.0 and answer["model"]


@pytest.mark.parametrize(("error", "status", "headers"), [
    ("ServerBusyError", 503, {"retry-after": "1"}),  # retry later
    ("RequestTimeoutError", 408, {"connection": "close"}),  # the connection's state is unknown: start afresh
    ("InvalidOptionError", 422, {}),  # the client's mistake: neither
])
def test_only_a_busy_server_asks_for_a_retry_and_only_a_timeout_closes_the_connection(vit_package, monkeypatch,
                                                                                         error, status, headers):


    from fastvit_detect import Detector, errors
    from fastvit_detect.server import ServeSettings, create_app

    app = create_app(Detector.load(vit_package, variant="fp32", threads=1), ServeSettings())

    async def failing(upload, fps, max_frames):
        raise getattr(errors, error)("as the test asks")

    monkeypatch.setattr(app.state.videos, "classify", failing)
    response = post_clip_and_close(app, "/api/v1/video")
    assert response.status_code == status and response.json()["error"]["message"] == "as the test asks"
    sent = {name: response.headers[name] for name in ("retry-after", "connection") if name in response.headers}
    assert sent == headers


def test_the_access_log_names_the_client_and_the_time_in_milliseconds(vit_package, caplog, monkeypatch):
    """Each request's access line: the client's address and port, the request, its status and its time in ms
    (here with the app's clock replaced: 0.5 s between its readings)."""
    import asyncio
    import itertools
    import logging
    import types

    import httpx

    import fastvit_detect.server.app as app_module
    from fastvit_detect import Detector
    from fastvit_detect.server import ServeSettings, create_app

    caplog.set_level(logging.INFO, logger="fastvit_detect.server")
    app = create_app(Detector.load(vit_package, variant="fp32", threads=1), ServeSettings())
    readings = itertools.chain([10.0], itertools.repeat(10.5))
    monkeypatch.setattr(app_module, "time", types.SimpleNamespace(perf_counter=lambda: next(readings)))

    async def get() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=("192.0.2.7", 40123))
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            return await client.get("/api/v1/model")

    try:
        assert asyncio.run(get()).status_code == 200
    finally:
        app.state.batcher.close()
    access = [record.getMessage() for record in caplog.records if '"GET /api/v1/model"' in record.getMessage()]
    assert access == ['192.0.2.7:40123 "GET /api/v1/model" 200 500.0 ms']


def test_healthz_counts_the_clips_at_work_or_waiting_and_those_finished(vit_package, monkeypatch):
    """The video guide: /healthz has ``videos_in_progress`` (at work or waiting) and ``videos`` (finished,
    answered or failed), as it counts explanations."""
    import asyncio
    import io

    import httpx

    import fastvit_detect.server.video as video_module
    from fastvit_detect import Detector
    from fastvit_detect.server import ServeSettings, create_app

    monkeypatch.setattr(video_module, "lower_thread_priority", lambda: True)
    app = create_app(Detector.load(vit_package, variant="fp32", threads=1), ServeSettings())
    held = HeldVideoDetector()
    monkeypatch.setattr(app.state.videos, "detector", held)

    async def health(client: httpx.AsyncClient) -> tuple[int, int]:
        body = (await client.get("/healthz")).json()
        return body["videos_in_progress"], body["videos"]

    async def scenario() -> list[tuple[int, int]]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            seen = [await health(client)]
            clips = [asyncio.ensure_future(app.state.videos.classify(io.BytesIO(b"clip"), 1.0, 3)) for _ in range(2)]
            await asyncio.sleep(0.05)
            seen.append(await health(client))
            held.release.set()
            await asyncio.gather(*clips)
            seen.append(await health(client))
            return seen

    try:
        assert asyncio.run(scenario()) == [(0, 0), (2, 0), (0, 2)]
    finally:
        held.release.set()
        app.state.batcher.close()
        app.state.videos.close()


def test_a_client_that_leaves_mid_clip_keeps_its_place_until_the_clip_ends(monkeypatch):
    """A vanishing client: its request is cancelled, but its clip goes on decoding on the stage's thread. Its
    place is held until the clip ends, as explanations and detections hold theirs, or a client posting and leaving
    over and over would queue clips (and their uploads, up to 256 MiB each) without bound."""
    import asyncio
    import io

    from fastvit_detect.errors import ServerBusyError

    detector, stage = held_stage(monkeypatch, concurrency=1, queue=0)

    async def leave_mid_clip() -> None:
        request = asyncio.ensure_future(stage.classify(io.BytesIO(b"clip"), 1.0, 3))
        assert await asyncio.to_thread(detector.started.wait, 30), "the clip never started"
        request.cancel()  # the client went away
        with pytest.raises(asyncio.CancelledError):
            await request
        with pytest.raises(ServerBusyError):  # the clip still runs: its place is still taken
            await asyncio.wait_for(stage.classify(io.BytesIO(b"another"), 1.0, 3), 5)
        assert (stage.admitted, stage.done) == (1, 0)
        detector.release.set()
        for _ in range(3000):  # the clip ends on its thread; its place comes back on the loop
            if stage.admitted == 0:
                break
            await asyncio.sleep(0.01)
        assert (stage.admitted, stage.done) == (0, 1)
        assert await asyncio.wait_for(stage.classify(io.BytesIO(b"again"), 1.0, 3), 30) == "a result"

    try:
        asyncio.run(leave_mid_clip())
    finally:
        detector.release.set()
        stage.close()
