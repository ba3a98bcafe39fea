"""POST /api/v1/explain: round trips, bad images and hostile parameters as 4xx, and its own concurrency limit,
which keeps explanations from holding up predictions."""

from __future__ import annotations

import asyncio
import base64
import io
import threading
import time

import httpx
import pytest
from conftest import sample_photos
from PIL import Image
from test_server import call  # requests through httpx's ASGI transport, as the predict tests send them

from fastvit_detect import Detector
from fastvit_detect.server import ServeSettings, create_app


@pytest.fixture(scope="module")
def detector(vit_package) -> Detector:
    return Detector.load(vit_package, variant="fp32", threads=1)  # fp32: batching never changes its answers


@pytest.fixture(scope="module")
def app(detector):
    app = create_app(detector, ServeSettings(max_upload_bytes=2_000_000, max_wait_ms=0, explain_max_passes=40))
    yield app
    app.state.batcher.close()
    app.state.explainer.close()


@pytest.fixture(scope="module")
def photo() -> bytes:
    return sample_photos()[0].read_bytes()


def test_explain_round_trip(app, detector, photo):
    response = call(app, "POST", "/api/v1/explain?grid=3", files={"file": ("grace.jpg", photo)})
    assert response.status_code == 200, response.text
    body = response.json()
    expected = detector.predict(photo)
    assert body["label"] == expected.label and body["probabilities"] == pytest.approx(dict(expected.probabilities))
    explanation = body["explanation"]
    assert explanation["method"] == "occlusion" and explanation["options"] == {"baseline": "blur", "grid": 3}
    assert explanation["model_passes"] == 10 and explanation["target"] == "Fake"
    heatmap = explanation["heatmap"]
    header, _, data = heatmap["png"].partition(",")
    assert header == "data:image/png;base64"
    layer = Image.open(io.BytesIO(base64.b64decode(data)))
    width, height = Image.open(io.BytesIO(photo)).size
    assert layer.mode == "RGBA" and layer.size == (heatmap["width"], heatmap["height"]) and max(layer.size) == 512
    assert layer.width / layer.height == pytest.approx(width / height, rel=0.01)  # stretches onto the photo
    grid = heatmap["grid"]
    assert max(len(grid), len(grid[0])) == 32 and len(grid[0]) / len(grid) == pytest.approx(width / height, rel=0.1)
    assert heatmap["vmax"] > 0 and len(heatmap["colours"]) > 2


def test_explain_raw_body_and_rise(app, detector, photo):
    response = call(app, "POST", "/api/v1/explain?method=rise&samples=8&seed=3&target=predicted", content=photo)
    assert response.status_code == 200, response.text
    explanation = response.json()["explanation"]
    assert explanation["options"] == {"baseline": "blur", "grid": 4, "samples": 8, "seed": 3}
    assert explanation["target"] == detector.predict(photo).label


@pytest.mark.parametrize(("name", "status", "error_type"), [
    ("empty.jpg", 422, "EmptyImageError"), ("truncated.jpg", 415, "ImageDecodeError"),
    ("text.jpg", 415, "ImageDecodeError"), ("bomb.png", 413, "ImageTooLargeError"),
])
def test_bad_images_get_the_status_predict_gives(app, bad_inputs, name, status, error_type):
    upload = {"files": {"file": (name, bad_inputs[name].read_bytes())}}
    predicted = call(app, "POST", "/api/v1/predict", **upload)
    explained = call(app, "POST", "/api/v1/explain", **upload)
    assert (explained.status_code, explained.json()["error"]["type"]) == (status, error_type)
    assert predicted.status_code == explained.status_code


@pytest.mark.parametrize("query", [
    "grid=nan", "grid=inf", "grid=0", "grid=1", "grid=-4", "grid=1e300", "grid=4.0", "grid=" + "9" * 40, "grid=",
    "grid=7",  # 50 passes: over this server's explain_max_passes
    "method=rise&samples=3", "method=rise&samples=0", "method=rise&samples=100", "method=rise&seed=-1",
    "method=gradcam", "baseline=black", "samples=8", "target=Deepfake", "target=" + "x" * 10_000, "colour=red",
])
def test_hostile_parameters_are_422(app, photo, query):
    response = call(app, "POST", f"/api/v1/explain?{query}", files={"file": ("a.jpg", photo)})
    assert response.status_code == 422, (query, response.text)
    assert response.json()["error"]["type"] == "InvalidOptionError"


def test_one_image_per_request(app, photo):
    response = call(app, "POST", "/api/v1/explain", files=[("file", ("a.jpg", photo)), ("file", ("b.jpg", photo))])
    assert response.status_code == 422 and "one image" in response.json()["error"]["message"]


def test_explanations_have_their_own_limit_and_never_hold_up_predictions(detector, photo):
    app = create_app(detector, ServeSettings(max_wait_ms=0, explain_concurrency=1, explain_queue=0))
    explainer = app.state.explainer
    running, gate = threading.Event(), threading.Event()
    original = explainer.compute

    def held(*args):  # the one explanation slot stays busy until the test opens the gate
        running.set()
        assert gate.wait(30), "the test never opened the gate"
        return original(*args)

    explainer.compute = held
    upload = {"files": {"file": ("grace.jpg", photo)}}

    async def scenario():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            slow = asyncio.create_task(client.post("/api/v1/explain", **upload))
            assert await asyncio.to_thread(running.wait, 30)
            predictions = await asyncio.wait_for(asyncio.gather(
                *(client.post("/api/v1/predict", **upload) for _ in range(3))), timeout=60)
            refused = await client.post("/api/v1/explain", **upload)
            unread = await client.post("/api/v1/explain", content=b"\0" * (ServeSettings().max_upload_bytes + 1))
            health = await client.get("/healthz")
            gate.set()
            return predictions, refused, unread, health, await slow, await client.get("/healthz")

    try:
        predictions, refused, unread, during, explained, after = asyncio.run(scenario())
    finally:
        gate.set()
        app.state.batcher.close()
        explainer.close()
    assert [response.status_code for response in predictions] == [200, 200, 200]  # answered while it ran
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["type"] == "ServerBusyError" and "explanations are busy" in refused.text
    assert unread.status_code == 503  # refused before its upload is read: not 413 for the oversized body
    assert during.json()["explanations_in_progress"] == 1
    assert explained.status_code == 200 and explained.json()["label"] == detector.predict(photo).label
    assert after.json()["explanations_in_progress"] == 0 and after.json()["explanations"] == 1


def test_a_client_leaving_keeps_its_slot_until_the_work_ends(detector, photo):
    app = create_app(detector, ServeSettings(max_wait_ms=0, explain_concurrency=1, explain_queue=0))
    explainer = app.state.explainer
    running, gate = threading.Event(), threading.Event()
    original = explainer.compute

    def held(*args):
        running.set()
        assert gate.wait(30)
        return original(*args)

    explainer.compute = held

    async def scenario():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            leaving = asyncio.create_task(client.post("/api/v1/explain", content=photo))
            assert await asyncio.to_thread(running.wait, 30)
            leaving.cancel()  # the client goes away; its explanation is still computing
            await asyncio.sleep(0.05)
            refused = await client.post("/api/v1/explain", content=photo)
            gate.set()
            deadline = time.monotonic() + 30
            while explainer.admitted and time.monotonic() < deadline:  # noqa: ASYNC110 - a counter, not an event
                await asyncio.sleep(0.02)
            return refused, await client.post("/api/v1/explain?grid=2", content=photo)

    try:
        refused, later = asyncio.run(scenario())
    finally:
        gate.set()
        app.state.batcher.close()
        explainer.close()
    assert refused.status_code == 503
    assert later.status_code == 200


def test_settings_are_validated():
    for bad in ({"explain_concurrency": 0}, {"explain_queue": -1}, {"explain_max_passes": 1},
                {"explain_concurrency": float("nan")}, {"explain_max_passes": 10**12}, {"explain_yield_s": -1},
                {"explain_yield_s": float("inf")}, {"explain_yield_s": float("nan")}):
        with pytest.raises(ValueError):
            ServeSettings(**bad)


@pytest.mark.parametrize("argv", [["--explain-concurrency", "0"], ["--explain-concurrency", "nan"],
                                  ["--explain-queue", "-1"], ["--explain-max-passes", "1"],
                                  ["--explain-max-passes", "inf"], ["--explain-max-passes", "1e300"],
                                  ["--explain-yield", "nan"], ["--explain-yield", "-1"], ["--explain-yield", "1e300"]])
def test_hostile_serve_options_are_usage_errors(vit_package, argv):
    from fastvit_detect.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["serve", "--model", str(vit_package), *argv])
    assert exit_.value.code == 2


def test_model_info_shows_the_explain_limits(app):
    serving = call(app, "GET", "/api/v1/model").json()["serving"]
    assert (serving["explain_concurrency"], serving["explain_queue"], serving["explain_max_passes"]) == (1, 2, 40)


# --- issue 22: explanations within the server's limits ------------------------------------------------------


def close_app(app) -> None:
    app.state.batcher.close()
    app.state.explainer.close()
    app.state.decoder.close()


def test_explanations_decode_within_the_prediction_pixel_budget(detector, photo, monkeypatch):
    """An explanation's decode takes its pixels from the decode stage's budget: with the budget taken, it waits
    (never decodes beside it), and while it decodes, its pixels are counted."""
    import fastvit_detect.explain as explain

    width, height = Image.open(io.BytesIO(photo)).size
    settings = ServeSettings(max_wait_ms=0, max_pixels=width * height, decode_budget_pixels=width * height)
    app = create_app(detector, settings)
    budget = app.state.decoder.budget
    charged = []
    decode = explain.decode_opened

    def spied(*args, **kwargs):  # the explanation's decode: what is charged against the budget meanwhile?
        charged.append(budget.in_use)
        return decode(*args, **kwargs)

    monkeypatch.setattr(explain, "decode_opened", spied)

    async def scenario():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            await budget.acquire(budget.capacity)  # a prediction's decode holds the whole budget
            explaining = asyncio.create_task(client.post("/api/v1/explain?grid=2", content=photo))
            done, _ = await asyncio.wait({explaining}, timeout=2)
            waited = not done and not charged
            await budget.release(budget.capacity)
            return waited, await asyncio.wait_for(explaining, 60), budget.in_use

    try:
        waited, response, left = asyncio.run(scenario())
    finally:
        close_app(app)
    assert waited, "the explanation decoded while the budget was taken"
    assert response.status_code == 200, response.text
    assert charged == [width * height] and left == 0  # charged its pixels while it decoded, then gave them back


def test_an_explanation_keeps_only_a_preview_after_decoding(detector, tmp_path):
    """What outlives an explanation's decode (while it waits for and runs its passes) is small."""
    from fastvit_detect.explain import prepare_opened

    big = tmp_path / "big.png"
    Image.new("RGB", (3000, 2000), (120, 30, 200)).save(big)
    prepared = prepare_opened(detector.preprocessor, detector.preprocessor.open(big), 1024)
    assert prepared.original_size == (3000, 2000) and max(prepared.picture.size) == 1024
    assert prepared.pixels.shape == (*detector.preprocessor.output_size, 3)


def test_the_default_passes_cap_is_at_most_49_and_named_in_the_refusal(detector, photo):
    assert ServeSettings().explain_max_passes <= 49
    app = create_app(detector, ServeSettings(max_wait_ms=0))
    try:
        refused = call(app, "POST", "/api/v1/explain?grid=7", content=photo)  # 7 x 7 + 1 = 50 passes
        allowed = call(app, "POST", "/api/v1/explain?grid=6", content=photo)  # 37
        rise = call(app, "POST", "/api/v1/explain?method=rise&samples=64", content=photo)  # 65
    finally:
        close_app(app)
    assert refused.status_code == 422, refused.text
    message = refused.json()["error"]["message"]
    assert "50 model passes" in message and f"at most {ServeSettings().explain_max_passes}" in message
    assert "explain_max_passes" in message
    assert rise.status_code == 422 and "65 model passes" in rise.json()["error"]["message"]
    assert allowed.status_code == 200, allowed.text


@pytest.mark.parametrize(("url", "name"), [("/api/v1/explain?grid=5&grid=6", "grid"),
                                           ("/api/v1/explain?method=rise&samples=8&method=occlusion", "method"),
                                           ("/api/v1/predict?x=1&x=2", "x")])
def test_a_repeated_query_parameter_is_refused_naming_it(app, photo, url, name, caplog):
    with caplog.at_level("INFO", logger="fastvit_detect.server"):
        response = call(app, "POST", url, content=photo)
    assert response.status_code == 422, response.text
    assert any(f'"POST {url.partition("?")[0]}" 422' in record.getMessage() for record in caplog.records)  # logged
    error = response.json()["error"]
    assert error["type"] == "InvalidOptionError"
    assert repr(name) in error["message"] and "more than once" in error["message"]


def slow_model_app(package, yield_s: float):
    """An app over a detector whose model is a fake: each prediction batch blocks until the test lets it go,
    and every call records which kind of thread made it (the model threads, or an explanation's)."""
    detector = Detector.load(package, variant="fp32", threads=1, workers=1, threads_per_worker=1)
    app = create_app(detector, ServeSettings(max_wait_ms=0, explain_yield_s=yield_s))
    calls: list[str] = []
    entered, release = threading.Semaphore(0), threading.Semaphore(0)
    real = detector.session.run

    def fake(pixel_values):
        kind = "predict" if threading.current_thread().name.startswith("fastvit-detect-batcher") else "explain"
        if kind == "predict":
            entered.release()
            assert release.acquire(timeout=60), "the test never let the prediction go"
        calls.append(kind)
        return real(pixel_values)

    detector.session.run = fake  # the pool's one session is this one (1 worker x 1 thread)
    assert app.state.detector.pool.sessions == [detector.session]
    return app, calls, entered, release


def test_predictions_queued_behind_the_model_go_before_an_explanation(vit_package, photo):
    app, calls, entered, release = slow_model_app(vit_package, yield_s=120)

    async def scenario():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            first = asyncio.create_task(client.post("/api/v1/predict", content=photo))
            assert await asyncio.to_thread(entered.acquire, timeout=30)  # the prediction is in the model
            explaining = asyncio.create_task(client.post("/api/v1/explain?grid=2", content=photo))
            await asyncio.wait({explaining}, timeout=2)  # time enough to decode it and run a pass, if it may
            early = list(calls)
            second = asyncio.create_task(client.post("/api/v1/predict", content=photo))
            while app.state.batcher.queue_depth < 1:  # noqa: ASYNC110 - a queue, not an event
                await asyncio.sleep(0.01)
            release.release()  # the first prediction ends; the second, queued, must go before the explanation
            assert await asyncio.to_thread(entered.acquire, timeout=30)
            release.release()
            return early, await first, await second, await asyncio.wait_for(explaining, 60)

    try:
        early, first, second, explained = asyncio.run(scenario())
    finally:
        release.release(10)
        close_app(app)
    assert early == [], "an explanation pass ran while a prediction was in the model"
    assert [response.status_code for response in (first, second, explained)] == [200, 200, 200]
    assert calls == ["predict", "predict"] + ["explain"] * 5  # the verdict and 2 x 2 masked copies, one per call
    assert app.state.explainer.passes_waited >= 1 and app.state.explainer.passes_forced == 0


def test_explanations_still_advance_when_predictions_never_pause(detector, photo):
    """A pass waits for predictions at most explain_yield_s: predictions that never leave the queue empty (here:
    one that never finishes, outside the model) can't stall explanations."""
    app = create_app(detector, ServeSettings(max_wait_ms=0, explain_yield_s=0.05))
    batcher = app.state.batcher
    entered, release = threading.Event(), threading.Event()
    classify = batcher.run_batch

    def held(items):
        entered.set()
        assert release.wait(60), "the test never let the prediction go"
        return classify(items)

    batcher.run_batch = held

    async def scenario():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            waiting = asyncio.create_task(client.post("/api/v1/predict", content=photo))
            assert await asyncio.to_thread(entered.wait, 30)
            explained = await asyncio.wait_for(client.post("/api/v1/explain?grid=2", content=photo), 60)
            release.set()
            return explained, await waiting

    try:
        explained, waited = asyncio.run(scenario())
    finally:
        release.set()
        close_app(app)
    assert explained.status_code == 200 and waited.status_code == 200
    assert app.state.explainer.passes_waited == app.state.explainer.passes_forced == 5


def test_explain_flags_reach_the_server(vit_package, monkeypatch):
    from fastvit_detect import server
    from fastvit_detect.cli import main

    served = {}
    monkeypatch.setattr(server, "serve", lambda detector, **options: served.update(detector=detector, **options))
    assert main(["serve", "--model", str(vit_package), "--variant", "fp32", "--threads", "1"]) == 0
    assert (served["settings"].explain_max_passes, served["settings"].explain_yield_s) == (49, 1.0)  # the defaults
    assert main(["serve", "--model", str(vit_package), "--variant", "fp32", "--threads", "1",
                 "--explain-max-passes", "30", "--explain-yield", "0.25"]) == 0
    assert (served["settings"].explain_max_passes, served["settings"].explain_yield_s) == (30, 0.25)
