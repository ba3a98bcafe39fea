"""What the survivors of the automatic mutation run in server/stages.py (the decode, explain and face stages) showed
untested. Expected values come from the guides (docs/guides/serving.md: explanations refused before the upload is
read, their preview of at most 1024 px, nice +10 on Linux, shutdown; docs/guides/faces.md: the face stage's
threads, its waiting images, how a crop's error names it), from the HTTP exchanges themselves, from the kernel's
nice values, and from stand-ins that count or fail on purpose, never from the stages' code."""

from __future__ import annotations

import asyncio
import io
import os
import platform
import threading

import httpx
import pytest

pytest.importorskip("fastapi")

from PIL import Image
from test_server import call  # requests through httpx's ASGI transport

from fastvit_detect import Detector
from fastvit_detect.build import samples
from fastvit_detect.server import ServeSettings, create_app


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def astronaut() -> bytes:
    found = [path for path in samples.sample_photos() if path.name == "astronaut.png"]
    if not found:
        pytest.skip("astronaut.png isn't installed here")
    with Image.open(found[0]) as image:
        return _png(image.convert("RGB"))


@pytest.fixture
def detector(packages) -> Detector:
    """A detector of its own: some tests replace its preprocessing with a stand-in."""
    return Detector.load(packages["vit-faces"], variant="fp32", threads=1)


def _close(app) -> None:
    app.state.batcher.close()
    app.state.decoder.close()
    app.state.explainer.close()
    app.state.faces.close()
    app.state.videos.close()


def _error(response: httpx.Response) -> str:
    return response.json()["error"]["message"]


def test_shutdown_does_not_wait_for_a_decode_still_running(detector, astronaut):
    """serving.md: shutting down doesn't wait for a decode still running (one stuck on a hostile file can't hang
    it); the stages after the decode stage are closed too. Here a decode is held for up to 30 s by a stand-in
    conversion while the app's lifespan ends: it must return, with the face stage closed, before the gate opens."""
    app = create_app(detector, ServeSettings(max_wait_ms=0))
    decoder = app.state.decoder
    running, gate = threading.Event(), threading.Event()

    def stuck(opened):
        running.set()
        gate.wait(30)
        return None

    decoding = threading.Thread(target=lambda: asyncio.run(decoder.decode_with(io.BytesIO(astronaut), stuck)),
                                daemon=True)
    decoding.start()
    try:
        assert running.wait(30), "the stand-in decode never started"

        async def lifespan():
            async with app.router.lifespan_context(app):
                pass

        shutdown = threading.Thread(target=lambda: asyncio.run(lifespan()), daemon=True)
        shutdown.start()
        shutdown.join(10)  # generous: it takes milliseconds; the decode holds for 30 s
        assert not shutdown.is_alive() and not gate.is_set(), "shutdown waited for the decode still running"
        assert app.state.faces.pool._shutdown  # the stages after the decode stage were closed as well
    finally:
        gate.set()
        decoding.join(30)
        _close(app)


@pytest.mark.parametrize("stage", ["explainer", "faces"])
def test_shutdown_does_not_wait_for_an_explanation_or_a_detection_still_running(detector, stage):
    """As the decode stage above: a job held for up to 30 s on the explain or the face stage's thread (a stand-in)
    doesn't hold the app's shutdown, and the stages after it are closed too."""
    app = create_app(detector, ServeSettings(max_wait_ms=0))
    running, gate = threading.Event(), threading.Event()

    def stuck():
        running.set()
        gate.wait(30)

    getattr(app.state, stage).pool.submit(stuck)
    try:
        assert running.wait(30), "the stand-in job never started"

        async def lifespan():
            async with app.router.lifespan_context(app):
                pass

        shutdown = threading.Thread(target=lambda: asyncio.run(lifespan()), daemon=True)
        shutdown.start()
        shutdown.join(10)  # generous: it takes milliseconds; the job holds for 30 s
        assert not shutdown.is_alive() and not gate.is_set(), f"shutdown waited for the {stage} job still running"
        assert app.state.videos._pool._shutdown  # the last stage to close was closed too
    finally:
        gate.set()
        _close(app)


@pytest.mark.skipif(platform.system() != "Linux", reason="a thread has a nice value of its own on Linux only")
def test_explain_and_face_threads_run_at_nice_plus_10(detector, monkeypatch):
    """serving.md: on Linux the explain threads run at a lower CPU priority (nice +10); faces.md: the face threads
    too. Read from the kernel on each stage's own thread; a stand-in for os.setpriority counts the calls, so the
    test still tells when the process already runs at nice 19 (as the mutation runner's tests do)."""
    calls = []
    real = os.setpriority

    def counting(which, who, priority):
        calls.append((which, who, priority))
        real(which, who, priority)

    monkeypatch.setattr(os, "setpriority", counting)
    process = os.getpriority(os.PRIO_PROCESS, 0)
    app = create_app(detector, ServeSettings(max_wait_ms=0))

    def own_nice():
        thread = threading.get_native_id()
        return thread, os.getpriority(os.PRIO_PROCESS, thread)

    try:
        for stage in (app.state.explainer, app.state.faces):
            thread, nice = stage.pool.submit(own_nice).result(30)
            assert nice == min(19, process + 10), stage
            assert (os.PRIO_PROCESS, thread, min(19, process + 10)) in calls, stage
    finally:
        _close(app)
    assert os.getpriority(os.PRIO_PROCESS, 0) == process  # the process itself keeps its priority


def test_an_unknown_explain_target_is_422_before_the_upload_is_read(detector):
    """serving.md: an unknown target gets 422 InvalidOptionError before the upload is read. The upload here is not
    an image: read and decoded it would be answered 415/400 instead; and no explanation was admitted."""
    app = create_app(detector, ServeSettings(max_wait_ms=0))
    try:
        response = call(app, "POST", "/api/v1/explain?target=nonsense&grid=2", content=b"not an image at all")
        health = call(app, "GET", "/healthz").json()
    finally:
        _close(app)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["type"] == "InvalidOptionError" and "nonsense" in _error(response)
    assert health["explanations"] == 0 and health["explanations_in_progress"] == 0


def test_an_explanation_keeps_a_preview_of_at_most_1024_px(detector):
    """serving.md: afterwards an explanation keeps only its model input and a preview of at most 1024 px, whatever
    the photo's size. A 2400 x 1800 upload through the explain stage: the picture it keeps is 1024 x 768."""
    photo = _png(Image.new("RGB", (2400, 1800), (140, 120, 100)))
    app = create_app(detector, ServeSettings(max_wait_ms=0))
    try:
        explanation, _heatmap = asyncio.run(app.state.explainer.explain(io.BytesIO(photo), "occlusion", "fake",
                                                                        {"grid": 2}))
    finally:
        _close(app)
    assert explanation.image.size == (1024, 768)


class MemoryErrorTransform:
    """A stand-in for the model's resize: running out of memory, as a crop's resize may."""

    def __call__(self, picture: Image.Image) -> Image.Image:
        raise MemoryError


def test_a_face_crops_error_names_its_face_from_1(detector, astronaut, monkeypatch):
    """faces.md: an error on one face's crop names the face as the CLI does, numbered from 1 (``photo.png face 1``).
    The astronaut has one face; its crop's preprocessing runs out of memory (a stand-in): 413 naming face 1.
    (The upload itself is decoded for detection without the model's transforms: only the crop meets them.)"""
    monkeypatch.setattr(detector.preprocessor, "transforms", [MemoryErrorTransform()])
    app = create_app(detector, ServeSettings(max_wait_ms=0))
    try:
        response = call(app, "POST", "/api/v1/predict?faces=1", files={"file": ("photo.png", astronaut)})
    finally:
        _close(app)
    assert response.status_code == 413, response.text
    assert _error(response).startswith("photo.png face 1: ran out of memory"), _error(response)


class FailingModel:
    """A stand-in for the micro-batcher whose model fails on every image (as model_result expects failures)."""

    def __init__(self) -> None:
        self.sources: list[str] = []

    async def classify(self, items, return_exceptions=False):
        self.sources += [item.source for item in items]
        if not return_exceptions:  # as MicroBatcher.classify: the first failure raised, the others lost
            raise RuntimeError("stand-in")
        return [RuntimeError("stand-in") for _ in items]


@pytest.mark.parametrize(("photo", "named"), [("grey", "photo.png"), ("astronaut", "photo.png face 1")])
def test_a_failed_model_pass_names_the_face_or_the_whole_image(detector, astronaut, photo, named, caplog):
    """faces.md: the model's failure on a face's crop names that face (from 1) in the server's log (the client gets
    a bare 500); with no face, the whole image's fallback names the upload alone. A plain grey image has no face
    (no_face=whole-image, the default). The stand-in model records the names it was given too."""
    data = astronaut if photo == "astronaut" else _png(Image.new("RGB", (256, 256), (128, 128, 128)))
    app = create_app(detector, ServeSettings(max_wait_ms=0))
    model = FailingModel()
    app.state.faces.batcher = model
    try:
        response = call(app, "POST", "/api/v1/predict?faces=1", files={"file": ("photo.png", data)})
    finally:
        _close(app)
    assert model.sources == [named]
    assert response.status_code == 500, response.text
    assert f"ModelOutputError: {named}: inference failed (RuntimeError)" in caplog.text


def test_an_image_waiting_for_the_face_thread_is_not_opened_meanwhile(detector, astronaut):
    """faces.md: images waiting for a face thread wait on the event loop; each is opened and charged to the pixel
    budget only when a face thread is free for it. faces_concurrency 1, faces_queue 1: after a first request has
    come and gone, one detection is held by a stand-in and a second waits: the decode stage has been asked to open
    one upload only (a stand-in counts), and /healthz's decoding_pixels is the held image's alone."""
    app = create_app(detector, ServeSettings(max_wait_ms=0, faces_concurrency=1, faces_queue=1))
    faces = app.state.faces
    running, gate = threading.Event(), threading.Event()
    original_find = faces.find
    held = []

    def find(*args):
        if held:
            running.set()
            assert gate.wait(30), "the test never opened the gate"
        return original_find(*args)

    faces.find = find
    decoder = app.state.decoder
    original_decode_with = decoder.decode_with
    opened = []

    def decode_with(upload, *args, **kwargs):
        opened.append(upload)
        return original_decode_with(upload, *args, **kwargs)

    decoder.decode_with = decode_with

    async def scenario():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test",
                                     timeout=60) as client:
            first = await client.post("/api/v1/predict?faces=1", content=astronaut)
            alone = (await client.get("/healthz")).json()["decoding_pixels"]
            assert alone == 0, alone
            held.append(True)
            slow = asyncio.create_task(client.post("/api/v1/predict?faces=1", content=astronaut))
            assert await asyncio.to_thread(running.wait, 30)
            one = (await client.get("/healthz")).json()["decoding_pixels"]
            waiting = asyncio.create_task(client.post("/api/v1/predict?faces=1", content=astronaut))
            for _ in range(200):
                health = (await client.get("/healthz")).json()
                if health["faces"]["in_progress"] == 2:
                    break
                await asyncio.sleep(0.01)
            assert health["faces"]["in_progress"] == 2, health["faces"]
            await asyncio.sleep(0.3)  # the waiting image's task gets many turns of the loop meanwhile
            seen = (len(opened), (await client.get("/healthz")).json()["decoding_pixels"])
            gate.set()
            return first, await slow, await waiting, one, seen

    try:
        first, slow, waiting, one, (opened_while_held, pixels_while_held) = asyncio.run(scenario())
    finally:
        gate.set()
        _close(app)
    assert [first.status_code, slow.status_code, waiting.status_code] == [200, 200, 200]
    assert one > 0
    assert opened_while_held == 2, "the waiting image was opened before a face thread was free for it"
    assert pixels_while_held == one
    assert len(opened) == 3


def test_a_client_that_leaves_mid_detection_leaves_no_unretrieved_exception(detector, astronaut, caplog):
    """serving.md: a client that disconnects is logged as 499, without a traceback. Here the client leaves while its
    detection is held by a stand-in, which then fails (as a corrupt image would): nobody awaits that detection any
    more, and asyncio must not log "Task exception was never retrieved" with its traceback when it is collected."""

    from fastvit_detect.errors import ImageDecodeError

    app = create_app(detector, ServeSettings(max_wait_ms=0))
    faces = app.state.faces
    running, gate = threading.Event(), threading.Event()

    def find(opened, request):
        running.set()
        assert gate.wait(30), "the test never opened the gate"
        raise ImageDecodeError(f"{opened.source}: a stand-in failure after its client left", opened.source)

    faces.find = find
    _leave_while_held(app, faces, "detected", "/api/v1/predict?faces=1", astronaut, running, gate)
    assert "never retrieved" not in caplog.text


def test_a_client_that_leaves_mid_explanation_leaves_no_unretrieved_exception(detector, astronaut, caplog):
    """As with faces above: the client leaves while its explanation is held by a stand-in, which then fails; no
    "Task exception was never retrieved" is logged when that explanation is collected."""

    from fastvit_detect.errors import ImageDecodeError

    app = create_app(detector, ServeSettings(max_wait_ms=0))
    explainer = app.state.explainer
    running, gate = threading.Event(), threading.Event()

    def compute(prepared, *args):
        running.set()
        assert gate.wait(30), "the test never opened the gate"
        raise ImageDecodeError(f"{prepared.source}: a stand-in failure after its client left", prepared.source)

    explainer.compute = compute
    _leave_while_held(app, explainer, "explained", "/api/v1/explain?grid=2", astronaut, running, gate)
    assert "never retrieved" not in caplog.text


def _leave_while_held(app, stage, done: str, url: str, body: bytes, running: threading.Event,
                      gate: threading.Event) -> None:
    """POST ``url``; once the stage's stand-in holds it, the client leaves (its handler is cancelled); then the
    stand-in fails. The stage ends with nothing admitted and the request counted ``done``; the caller reads the log."""
    import gc

    async def scenario():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test",
                                     timeout=60) as client:
            leaving = asyncio.create_task(client.post(url, content=body))
            assert await asyncio.to_thread(running.wait, 30)
            leaving.cancel()
            with pytest.raises(asyncio.CancelledError):
                await leaving
            gate.set()
            for _ in range(500):
                if stage.admitted == 0:
                    break
                await asyncio.sleep(0.01)
            assert stage.admitted == 0 and getattr(stage, done) == 1
            gc.collect()

    try:
        asyncio.run(scenario())
        gc.collect()
    finally:
        gate.set()
        _close(app)


def test_lowering_a_threads_priority_is_linux_only_and_never_fatal(monkeypatch):
    """Elsewhere setpriority would lower the whole process: False, nothing done. Where the kernel refuses (a
    sandbox, a container without the capability): False, and the explanation thread goes on."""
    from fastvit_detect.server import stages

    calls = []
    monkeypatch.setattr(stages.os, "setpriority", lambda *args: calls.append(args))
    monkeypatch.setattr(stages.platform, "system", lambda: "Darwin")
    assert stages.lower_thread_priority() is False and calls == []

    def refuse(*_args):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(stages.platform, "system", lambda: "Linux")
    monkeypatch.setattr(stages.os, "setpriority", refuse)
    assert stages.lower_thread_priority() is False


def test_a_worker_dying_after_close_is_not_restarted():
    from fastvit_detect.server.batching import MicroBatcher

    batcher = MicroBatcher(lambda items: items, max_batch=1, max_wait_ms=0, workers=1)
    batcher.close(timeout=5)
    assert batcher._restart_after_death(0, []) is False
    assert batcher.worker_restarts == 0


def test_a_request_validation_error_is_a_422_in_the_servers_error_format(vit_package):
    """FastAPI's own validation (a typed parameter a route may declare) answers in the same JSON as every other
    error: {"error": {"type", "message"}}, 422, the message cut to 1,000 characters."""
    import json

    from fastapi.exceptions import RequestValidationError

    app = create_app(Detector.load(vit_package, variant="fp32", threads=1), ServeSettings())
    try:
        handler = app.exception_handlers[RequestValidationError]
        errors = [{"loc": ["query", "x"], "msg": "m" * 2000, "type": "value_error"}]
        response = asyncio.run(handler(None, RequestValidationError(errors)))
    finally:
        app.state.batcher.close()
    body = json.loads(response.body)
    assert response.status_code == 422 and body["error"]["type"] == "BadRequestError"
    assert body["error"]["message"] == str(errors)[:1000]


def test_a_conversion_that_cant_be_scheduled_gives_its_pixels_back_to_the_budget(vit_package):
    """decode_with on a stage pool that is shut down (a server stopping): the error is raised, and the pixels the
    image had taken from the budget are returned, not leaked for the rest of the server's life."""
    from concurrent.futures import ThreadPoolExecutor

    photo = io.BytesIO()
    Image.new("RGB", (64, 48), (120, 30, 200)).save(photo, format="PNG")
    app = create_app(Detector.load(vit_package, variant="fp32", threads=1), ServeSettings())
    decoder = app.state.decoder
    stopped = ThreadPoolExecutor(1)
    stopped.shutdown()

    async def attempt() -> None:
        with pytest.raises(RuntimeError, match="shutdown"):
            await decoder.decode_with(io.BytesIO(photo.getvalue()), lambda opened: None, pool=stopped)

    try:
        asyncio.run(attempt())
        assert decoder.budget.in_use == 0
    finally:
        app.state.batcher.close()
        decoder.close()


def test_lowering_a_threads_priority_adds_10_to_its_nice_value_up_to_19(monkeypatch):
    """serving.md: explain, face and video threads run at nice +10, capped at 19, the kernel's lowest priority;
    True says it was done (the thread asked about, not the process: its native id)."""
    from fastvit_detect.server import stages

    monkeypatch.setattr(stages.platform, "system", lambda: "Linux")
    for current, lowered in ((0, 10), (5, 15), (9, 19), (15, 19), (-5, 5)):
        calls: list[tuple] = []
        monkeypatch.setattr(stages.os, "getpriority", lambda which, who, current=current: current)
        monkeypatch.setattr(stages.os, "setpriority", lambda *args, calls=calls: calls.append(args))
        assert stages.lower_thread_priority() is True
        assert calls == [(os.PRIO_PROCESS, threading.get_native_id(), lowered)], current


def test_closing_the_decode_stage_drops_the_uploads_still_waiting(detector, astronaut, monkeypatch):
    """serving.md: shutting down doesn't wait for decodes. The one at work runs out; an upload still waiting for a
    decode thread is dropped, never opened, rather than decoded for a server that has stopped."""
    from fastvit_detect.server import stages

    opened: list[str] = []
    real_open = stages.open_upload

    def recording_open(upload, settings):
        opened.append(upload.name)
        return real_open(upload, settings)

    monkeypatch.setattr(stages, "open_upload", recording_open)
    decoder = stages.DecodeStage(detector, ServeSettings(decode_workers=1))
    running, gate = threading.Event(), threading.Event()

    def held(opened_image):
        running.set()
        gate.wait(30)
        return "pixels"

    def upload(name: str) -> io.BytesIO:
        named = io.BytesIO(astronaut)
        named.name = name
        return named

    async def close_while_one_waits():
        first = asyncio.ensure_future(decoder.decode_with(upload("first.png"), held))
        assert await asyncio.to_thread(running.wait, 30), "the held decode never started"
        waiting = asyncio.ensure_future(decoder.decode_with(upload("waiting.png"), held))
        await asyncio.sleep(0.1)  # queued behind the held decode: one thread
        decoder.close()
        gate.set()
        return await asyncio.gather(first, waiting, return_exceptions=True)

    try:
        first, waiting = asyncio.run(close_while_one_waits())
    finally:
        gate.set()
    assert first == ("pixels", "first.png") and isinstance(waiting, asyncio.CancelledError)
    assert opened == ["first.png"]


def test_a_decoded_image_cannot_be_changed_once_made():
    import dataclasses

    from fastvit_detect.server.stages import DecodedImage

    image = DecodedImage(b"pixels", "a.png")
    with pytest.raises(dataclasses.FrozenInstanceError):
        image.source = "b.png"  # type: ignore[misc]


def test_an_explanations_check_takes_exactly_the_most_passes_and_any_label_count():
    """serving.md: an explanation over ``explain_max_passes`` model passes is a 422 before its upload is read; one
    of exactly that many is computed (occlusion: grid**2 + 1 passes). The check resolves the target against the
    model's labels, which may be one label only (a package's id2label has no minimum)."""
    import types

    from fastvit_detect.errors import InvalidOptionError
    from fastvit_detect.server.stages import ExplainStage

    for labels in (("Fake", "Real"), ("Only",)):
        stage = ExplainStage(types.SimpleNamespace(labels=labels), ServeSettings(explain_max_passes=2 * 2 + 1),
                             decoder=None, batcher=None)  # type: ignore[arg-type]
        try:
            for target in ("predicted", labels[-1]):
                stage.check("occlusion", target, {"grid": 2})
            with pytest.raises(InvalidOptionError, match="takes 10 model passes; this server allows at most 5"):
                stage.check("occlusion", "predicted", {"grid": 3})
            with pytest.raises(InvalidOptionError, match="isn't one of the model's labels"):
                stage.check("occlusion", "Neither", {"grid": 2})
        finally:
            stage.close()


class _StandInBatcher:
    """A batcher whose model is busy for as long as ``busy_for`` calls of wait_until_idle; records the timeouts."""

    def __init__(self, busy_for: int) -> None:
        self.busy_for, self.timeouts = busy_for, []

    def wait_until_idle(self, timeout: float) -> bool:
        self.timeouts.append(timeout)
        return len(self.timeouts) > self.busy_for


def _explain_stage(batcher, **settings):
    import types

    from fastvit_detect.server.stages import ExplainStage

    detector = types.SimpleNamespace(labels=("Fake", "Real"), pool=types.SimpleNamespace(run=lambda inputs: inputs))
    return ExplainStage(detector, ServeSettings(**settings), decoder=None, batcher=batcher)  # type: ignore[arg-type]


@pytest.mark.parametrize(("busy_for", "timeouts", "waited", "forced"), [
    (0, [0], 0, 0),  # the model is free: the pass runs at once, without waiting at all
    (1, [0, 2.5], 1, 0),  # predictions at the model: the pass waits for them, up to explain_yield_s
    (2, [0, 2.5], 1, 1),  # still there after explain_yield_s: the pass runs anyway, counted as forced
])
def test_an_explanations_pass_yields_to_predictions_for_at_most_explain_yield_s(busy_for, timeouts, waited, forced):
    """serving.md: each slice of an explanation first waits until no prediction is queued or running, at most
    ``explain_yield_s``, so explanations still advance under a load that never pauses."""
    batcher = _StandInBatcher(busy_for)
    stage = _explain_stage(batcher, explain_yield_s=2.5)
    try:
        assert stage.model_pass("inputs") == "inputs"
    finally:
        stage.close()
    assert batcher.timeouts == timeouts
    assert (stage.passes_waited, stage.passes_forced) == (waited, forced)


def test_explanations_past_the_running_and_waiting_ones_are_refused_even_after_the_upload_was_read():
    """serving.md: at most explain_concurrency run and explain_queue wait; the next gets 503, checked before the
    upload is read and again after (others may have been admitted meanwhile): then nothing is decoded."""
    from fastvit_detect.errors import ServerBusyError

    stage = _explain_stage(_StandInBatcher(0), explain_concurrency=1, explain_queue=2)
    try:
        stage.admitted = 2
        stage.check_room()  # the third place is free
        stage.admitted = 3
        with pytest.raises(ServerBusyError, match=r"explanations are busy \(3 running or waiting\)"):
            stage.check_room()
        with pytest.raises(ServerBusyError, match="explanations are busy"):  # the decoder (None) is never reached
            asyncio.run(stage.explain(io.BytesIO(b"upload"), "occlusion", "fake", {"grid": 2}))
        assert stage.admitted == 3
    finally:
        stage.close()


@pytest.mark.parametrize("stage", ["explainer", "faces"])
def test_closing_the_explain_or_face_stage_drops_the_work_still_waiting(detector, stage):
    """Shutting down doesn't wait for explanations or detections (serving.md): the one at work runs out, one
    still waiting for the stage's thread never starts."""
    app = create_app(detector, ServeSettings(explain_concurrency=1, faces_concurrency=1))
    pool = getattr(app.state, stage).pool
    running, gate, ran = threading.Event(), threading.Event(), []
    try:
        held = pool.submit(lambda: (running.set(), gate.wait(30), ran.append("held")))
        waiting = pool.submit(lambda: ran.append("waiting"))
        assert running.wait(30)
        getattr(app.state, stage).close()
        gate.set()
        held.result(30)
    finally:
        gate.set()
        _close(app)
    assert waiting.cancelled() and ran == ["held"]


def _held_face_stage(detector, monkeypatch, **settings):
    """The app's face stage, its detection replaced by a stand-in that waits for ``gate`` (no faces found)."""
    from fastvit_detect.server.requests import FoundFaces

    app = create_app(detector, ServeSettings(**settings))
    stage = app.state.faces
    gate, started = threading.Event(), []

    def find(opened, request):
        started.append(opened.source)
        gate.wait(30)
        return FoundFaces([], [], opened.image.width, opened.image.height)

    monkeypatch.setattr(stage, "find", find)
    return app, stage, gate, started


def _face_request():
    from fastvit_detect.faces import FaceOptions
    from fastvit_detect.server.requests import FaceRequest

    return FaceRequest(FaceOptions(), "none")


def test_face_detections_run_as_many_at_once_as_faces_concurrency_and_free_their_thread(detector, astronaut,
                                                                                        monkeypatch):
    """faces.md: ``faces_concurrency`` images detect at once, each on its own thread; one that ends frees its
    thread for the next, however many came before."""
    app, stage, gate, started = _held_face_stage(detector, monkeypatch, faces_concurrency=2, faces_queue=4)

    async def scenario() -> list[int]:
        seen: list[int] = []
        for _ in range(2):  # twice: the threads must have come back after the first round
            gate.clear()
            started.clear()
            work = [asyncio.ensure_future(stage.predict(io.BytesIO(astronaut), _face_request())) for _ in range(3)]
            for _ in range(3000):  # until both threads have started (at most 30 s: a loaded machine is slow)
                if len(started) == 2:
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.1)  # the third must still be waiting
            assert len(started) == 2, started
            gate.set()
            await asyncio.wait_for(asyncio.gather(*work), 10)  # a thread never freed: the third would wait forever
            seen.append(len(started))
        return seen

    try:
        assert asyncio.run(scenario()) == [3, 3]
    finally:
        gate.set()
        _close(app)


def test_the_face_stage_takes_exactly_faces_concurrency_plus_faces_queue(detector):
    from fastvit_detect.errors import ServerBusyError

    app = create_app(detector, ServeSettings(faces_concurrency=2, faces_queue=3))
    stage = app.state.faces
    try:
        stage.admitted = 4
        stage.check_room()  # the fifth place is free
        stage.admitted = 5
        with pytest.raises(ServerBusyError, match=r"face detection is busy \(5 images detecting or waiting\)"):
            stage.check_room()
    finally:
        stage.admitted = 0
        _close(app)


def test_a_face_requests_decoded_picture_is_closed_once_its_crops_are_cut(detector, astronaut, monkeypatch):
    """The upright original is decoded on the face thread and held only until its crops are cut (faces.md): its
    pixels are freed then, not when the garbage collector gets to them."""
    from fastvit_detect.server import stages

    pictures = []
    real_decode = stages.decode_opened

    def recording_decode(opened, *args):
        pictures.append(real_decode(opened, *args))
        return pictures[-1]

    monkeypatch.setattr(stages, "decode_opened", recording_decode)
    app = create_app(detector, ServeSettings(max_wait_ms=0))
    try:
        response = call(app, "POST", "/api/v1/predict?faces=1", files={"file": ("photo.png", astronaut)})
    finally:
        _close(app)
    assert response.status_code == 200, response.text
    assert len(pictures) == 1
    with pytest.raises(ValueError, match="closed"):
        pictures[0].getpixel((0, 0))


def test_a_client_that_leaves_mid_clip_leaves_no_unretrieved_exception(detector, caplog):
    """As with faces and explanations: the client leaves while its clip is held by a stand-in, which then fails (a
    corrupt clip); the clip's place comes back when it ends, and no "exception was never retrieved" is logged."""
    from fastvit_detect.errors import VideoDecodeError

    app = create_app(detector, ServeSettings(max_wait_ms=0))
    videos = app.state.videos
    running, gate = threading.Event(), threading.Event()

    class FailingClips:
        package = detector.package

        def predict_video(self, upload, **options):
            running.set()
            assert gate.wait(30), "the test never opened the gate"
            raise VideoDecodeError("clip: a stand-in failure after its client left")

    videos.detector = FailingClips()
    _leave_while_held(app, videos, "done", "/api/v1/video", b"a clip", running, gate)
    assert "never retrieved" not in caplog.text
