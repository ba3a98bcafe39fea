"""Faces first over HTTP (issue 23): POST /api/v1/predict?faces=1 against Detector.predict_faces, its parameters held
to the library's bounds, a package without the face detector, /healthz and /api/v1/model, and hostile clients: a
wall of faces, bombs, fuzzed bytes and absurd parameters get typed 4xx answers, never a 500, and the server keeps
answering meanwhile."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import shutil
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from test_server import call  # requests through httpx's ASGI transport

from fastvit_detect import Detector
from fastvit_detect.build import samples
from fastvit_detect.detector import FacesResult, Prediction
from fastvit_detect.faces import MAX_CROP_SIDE, Face, bounded_face_crop, face_crop
from fastvit_detect.package import MANIFEST_FILE
from fastvit_detect.server import ServeSettings, create_app

ASTRONAUT_FACE = (150, 30, 300, 210)  # as tests/test_faces.py: a patch around the astronaut's face


def _photo(name: str) -> Image.Image:
    found = [path for path in samples.sample_photos() if path.name == name]
    if not found:
        pytest.skip(f"{name} isn't installed here")
    with Image.open(found[0]) as image:
        return image.convert("RGB")


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def wall_of_faces() -> Image.Image:
    """tests/test_faces.py's wall: 1,760 small astronaut faces on 1600x1200."""
    patch = _photo("astronaut.png").crop(ASTRONAUT_FACE).resize((30, 36))
    wall = Image.new("RGB", (1600, 1200))
    for row in range(1200 // 36):
        for column in range(1600 // 30):
            wall.paste(patch, (column * 30, row * 36))
    return wall


@pytest.fixture(scope="module")
def faces_package(packages) -> Path:
    return packages["vit-faces"]


@pytest.fixture(scope="module")
def detector(faces_package) -> Detector:
    # fp32: a crop's verdict doesn't depend on its batch-mates, so the server's answers equal predict_faces'.
    return Detector.load(faces_package, variant="fp32", threads=1)


@pytest.fixture(scope="module")
def app(detector):
    app = create_app(detector, ServeSettings(max_upload_bytes=8_000_000, max_wait_ms=0))
    yield app
    app.state.batcher.close()
    app.state.faces.close()


@pytest.fixture(scope="module")
def astronaut() -> bytes:
    return _png(_photo("astronaut.png"))


def _upload(data: bytes, name: str = "photo.png") -> dict:
    return {"files": {"file": (name, data)}}


def test_faces_answer_equals_predict_faces(app, detector, astronaut):
    response = call(app, "POST", "/api/v1/predict?faces=1", **_upload(astronaut))
    assert response.status_code == 200, response.text
    body = response.json()
    expected = detector.predict_faces(astronaut)
    assert len(body["faces"]) == len(expected.faces) == 1
    assert body["decided_by"] == "face" and body["decisive"] == expected.decisive
    assert body["label"] == expected.prediction.label
    assert body["probabilities"] == pytest.approx(dict(expected.prediction.probabilities), abs=1e-6)
    assert body["image"] == {"width": 512, "height": 512}
    for answered, (face, prediction) in zip(body["faces"], expected.faces):
        assert answered["box"] == pytest.approx(list(face.box), abs=0.01)
        assert answered["face_score"] == pytest.approx(face.score)
        np.testing.assert_allclose(answered["landmarks"], face.landmarks, atol=0.01)
        assert answered["label"] == prediction.label
        assert answered["fake_probability"] == pytest.approx(prediction.fake_probability, abs=1e-6)
    assert body["face_options"] == {"margin": 0.3, "min_face_size": 20, "max_faces": 32, "detect_side": 1600,
                                    "no_face": "whole-image"}
    assert body["model"]["variant"] == "fp32" and body["elapsed_ms"] > 0


def test_geometry_parameters_reach_the_detector(app, detector, astronaut):
    response = call(app, "POST", "/api/v1/predict?faces=1&margin=0&min_face_size=40&max_faces=1",
                    content=astronaut)
    assert response.status_code == 200, response.text
    expected = detector.predict_faces(astronaut, margin=0.0, min_face_size=40, max_faces=1)
    (face,) = response.json()["faces"]
    assert face["box"] == pytest.approx(list(expected.faces[0][0].box), abs=0.01)
    assert face["fake_probability"] == pytest.approx(expected.faces[0][1].fake_probability, abs=1e-6)


def test_no_face_falls_back_to_the_whole_image_or_none(app, detector):
    coffee = _png(_photo("coffee.png"))
    body = call(app, "POST", "/api/v1/predict?faces=1", content=coffee).json()
    assert body["faces"] == [] and body["decided_by"] == "whole-image" and body["decisive"] is None
    assert body["label"] == detector.predict_faces(coffee).prediction.label
    body = call(app, "POST", "/api/v1/predict?faces=1&no_face=none", content=coffee).json()
    assert body["faces"] == [] and body["decided_by"] == "none"
    assert body["label"] is None and body["probabilities"] is None


def test_faces_0_and_the_default_follow_the_package(app, detector, faces_package, astronaut, tmp_path):
    for query in ("", "?faces=0", "?faces=false"):
        body = call(app, "POST", f"/api/v1/predict{query}", content=astronaut).json()
        assert "faces" not in body and body["label"] == detector.predict(astronaut).label, query
    expecting = tmp_path / "expects-faces"
    shutil.copytree(faces_package, expecting)
    manifest = json.loads((expecting / MANIFEST_FILE).read_text())
    manifest["expects_faces"] = True
    (expecting / MANIFEST_FILE).write_text(json.dumps(manifest))
    expecting_app = create_app(Detector.load(expecting, variant="fp32", threads=1), ServeSettings(max_wait_ms=0))
    # Grace Hopper's photo is Fake as a whole to this fixture model, and her face is Real: the answers tell which.
    hopper = _png(_photo("grace_hopper.jpg"))
    assert (detector.predict(hopper).label, detector.predict_faces(hopper).prediction.label) == ("Fake", "Real")
    try:
        body = call(expecting_app, "POST", "/api/v1/predict", content=hopper).json()
        assert len(body["faces"]) == 1 and body["label"] == "Real"
        assert call(expecting_app, "POST", "/api/v1/predict?faces=0", content=hopper).json()["label"] == "Fake"
        seed = call(expecting_app, "POST", "/predict/", json={"image": base64.b64encode(hopper).decode()})
        assert seed.json() == {"result": "Real"}  # the seed's API follows the package too
        model = call(expecting_app, "GET", "/api/v1/model").json()
        assert model["faces"]["expected"] is True and model["faces"]["available"] is True
    finally:
        expecting_app.state.batcher.close()


def test_several_files_are_answered_in_order_with_errors_in_place(app, astronaut):
    files = [("file", ("a.png", astronaut)), ("file", ("bad.jpg", b"not an image")),
             ("file", ("c.png", _png(_photo("coffee.png"))))]
    response = call(app, "POST", "/api/v1/predict?faces=1", files=files)
    assert response.status_code == 200, response.text
    first, bad, coffee = response.json()
    assert first["filename"] == "a.png" and len(first["faces"]) == 1
    assert bad["filename"] == "bad.jpg" and bad["error"]["type"] == "ImageDecodeError"
    assert coffee["faces"] == [] and coffee["decided_by"] == "whole-image"


def test_healthz_and_model_say_whether_faces_are_available(app):
    health = call(app, "GET", "/healthz").json()
    assert health["faces"]["available"] is True and health["faces"]["expected"] is False
    assert health["faces"]["threads"] == 1 and health["faces"]["threads_stalled"] == 0
    model = call(app, "GET", "/api/v1/model").json()
    assert model["faces"] == {"available": True, "expected": False, "max_faces": 32, "detect_side": 1600,
                              "margin": 0.3, "min_face_size": 20, "no_face": ["whole-image", "none"]}
    assert model["serving"]["faces_max_per_image"] == 32


def test_a_package_without_the_face_detector_answers_409(vit_package, astronaut):
    plain = create_app(Detector.load(vit_package, variant="fp32", threads=1), ServeSettings(max_wait_ms=0))
    try:
        response = call(plain, "POST", "/api/v1/predict?faces=1", content=astronaut)
        assert response.status_code == 409, response.text
        error = response.json()["error"]
        assert error["type"] == "MissingFaceDetectorError" and "no face detector" in error["message"]
        assert str(vit_package.parent) not in error["message"]  # the client learns the package's name, not paths
        assert call(plain, "POST", "/api/v1/predict?faces=0", content=astronaut).status_code == 200
        assert call(plain, "POST", "/api/v1/predict", content=astronaut).status_code == 200
        assert call(plain, "GET", "/healthz").json()["faces"]["available"] is False
        assert call(plain, "GET", "/api/v1/model").json()["faces"]["available"] is False
    finally:
        plain.state.batcher.close()


def test_a_package_that_expects_faces_without_the_detector_is_refused_at_start(vit_package, tmp_path):
    from fastvit_detect.errors import MissingFaceDetectorError

    copy = tmp_path / "package"
    shutil.copytree(vit_package, copy)
    manifest = json.loads((copy / MANIFEST_FILE).read_text())
    manifest["expects_faces"] = True
    (copy / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(MissingFaceDetectorError):
        create_app(Detector.load(copy, variant="fp32", threads=1), ServeSettings(max_wait_ms=0))


@pytest.mark.parametrize("query", [
    "faces=garbage", "faces=2", "faces=", "faces=1&max_faces=" + str(10**9), "faces=1&max_faces=0",
    "faces=1&max_faces=-1", "faces=1&max_faces=33", "faces=1&max_faces=2.0", "faces=1&margin=nan",
    "faces=1&margin=inf", "faces=1&margin=-inf", "faces=1&margin=-0.1", "faces=1&margin=4.01", "faces=1&margin=1e300",
    "faces=1&margin=abc", "faces=1&margin=" + "9" * 100, "faces=1&min_face_size=11", "faces=1&min_face_size=1e3",
    "faces=1&min_face_size=" + "9" * 40, "faces=1&no_face=maybe", "faces=1&face=1", "colour=red",
    "faces=0&margin=0.3", "margin=0.3",  # geometry without faces: a client's mistake, said, not ignored
])
def test_hostile_parameters_are_422(app, astronaut, query):
    response = call(app, "POST", f"/api/v1/predict?{query}", **_upload(astronaut))
    assert response.status_code == 422, (query, response.text)
    assert response.json()["error"]["type"] == "InvalidOptionError"


@pytest.mark.parametrize("query", ["faces=1&faces=1", "faces=1&margin=0.2&margin=0.3", "faces=0&faces=1"])
def test_repeated_parameters_are_422(app, astronaut, query):
    response = call(app, "POST", f"/api/v1/predict?{query}", **_upload(astronaut))
    assert response.status_code == 422 and "more than once" in response.json()["error"]["message"]


def test_the_bounds_are_the_cli_flags_bounds(app, astronaut):
    """The server refuses exactly what predict --faces refuses: both hold the options to FaceOptions' bounds."""
    from test_operator_mistakes import subcommands

    from fastvit_detect.cli import build_parser

    predict = subcommands(build_parser())["predict"]
    flags = {action.dest: action.type.bounds for action in predict._actions
             if action.dest in ("margin", "min_face_size") and hasattr(action.type, "bounds")}
    assert set(flags) == {"margin", "min_face_size"}
    for name, (low, high) in flags.items():
        step = 1 if name == "min_face_size" else 0.01
        for value, status in ((low, 200), (high, 200), (low - step, 422), (high + step, 422)):
            if name == "min_face_size" and value > 512:
                continue  # above the photo's side: accepted, and nothing to find; the bound is what matters
            shown = int(value) if name == "min_face_size" else round(value, 2)
            response = call(app, "POST", f"/api/v1/predict?faces=1&{name}={shown}", content=astronaut)
            assert response.status_code == status, (name, shown, response.text)


def test_a_huge_image_with_faces_is_held_to_the_pixel_cap(app, bad_inputs):
    for query in ("faces=1", "faces=0"):
        response = call(app, "POST", f"/api/v1/predict?{query}", **_upload(bad_inputs["bomb.png"].read_bytes()))
        assert response.status_code == 413 and response.json()["error"]["type"] == "ImageTooLargeError"
    capped = create_app(app.state.detector, ServeSettings(max_pixels=200_000, max_wait_ms=0))
    try:
        response = call(capped, "POST", "/api/v1/predict?faces=1", content=_png(_photo("astronaut.png")))
        assert response.status_code == 413, response.text  # 512 x 512 = 262,144 pixels
        assert call(capped, "GET", "/healthz").json()["decoding_pixels"] == 0
    finally:
        capped.state.batcher.close()


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_fuzzed_bytes_with_faces_are_typed_4xx_never_500(app, tmp_path):
    """The fuzz campaign's mutated files (tests/fuzzing.py; bombs are left to its memory-limited workers) through
    the faces path: a 200 or a typed 4xx each, and the server still healthy afterwards."""
    import fuzzing

    context = fuzzing.Context(fuzzing.saved(fuzzing.picture(), "PNG"), fuzzing.saved(fuzzing.picture(), "JPEG"),
                              tmp_path)
    statuses: dict[int, int] = {}
    for index in range(240):
        plan, rng = fuzzing.plan(0, index, with_model=False)
        if plan.family in ("bomb", "array", "pil", "object"):
            continue
        case = fuzzing.build_case(plan, rng, context)
        try:
            data = case.input if isinstance(case.input, bytes) else Path(case.input).read_bytes()
        except (TypeError, OSError):
            continue
        finally:
            case.close()
        response = call(app, "POST", "/api/v1/predict?faces=1", **_upload(data, f"case-{index}"))
        assert response.status_code in (200, 413, 415, 422), (index, plan, response.text)
        if response.status_code != 200:
            assert response.json()["error"]["type"].endswith("Error"), response.text
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
    assert sum(statuses.values()) > 80 and statuses.get(200, 0) > 10, statuses
    assert call(app, "GET", "/healthz").json()["status"] == "ok"


def test_walls_of_faces_are_capped_and_the_server_keeps_answering(detector, astronaut):
    """Three clients each send a photo of 1,760 faces at once: one is detected, one waits, the third is refused at
    once (faces_queue=1); the answers hold at most faces_cap faces, and /healthz and a plain prediction are
    answered while the walls are detected (on the face thread, off the event loop and the decode threads)."""
    app = create_app(detector, ServeSettings(max_wait_ms=0, faces_max_per_image=16, faces_queue=1))
    wall = _png(wall_of_faces())

    async def scenario():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test",
                                     timeout=300) as client:
            crowds = [asyncio.create_task(client.post("/api/v1/predict?faces=1", content=wall)) for _ in range(3)]
            seen_busy, health_times, plain, refused_while_busy = False, [], None, False
            while not all(crowd.done() for crowd in crowds):
                started = time.perf_counter()
                health = await client.get("/healthz")
                health_times.append(time.perf_counter() - started)
                assert health.status_code == 200, health.text
                if health.json()["faces"]["threads_busy"]:
                    seen_busy = True
                    refused_while_busy |= any(crowd.done() and crowd.result().status_code == 503 for crowd in crowds)
                    if plain is None:
                        plain = await client.post("/api/v1/predict", content=astronaut)
                await asyncio.sleep(0.05)
            return [crowd.result() for crowd in crowds], seen_busy, health_times, plain, refused_while_busy

    try:
        crowds, seen_busy, health_times, plain, refused_while_busy = asyncio.run(scenario())
    finally:
        app.state.batcher.close()
        app.state.faces.close()
    assert sorted(crowd.status_code for crowd in crowds) == [200, 200, 503], [crowd.text[:200] for crowd in crowds]
    assert all(len(crowd.json()["faces"]) == 16 for crowd in crowds if crowd.status_code == 200)
    assert seen_busy and refused_while_busy, "the walls' detection was never seen running: the test proves nothing"
    assert plain is not None and plain.status_code == 200 and "faces" not in plain.json()
    assert max(health_times) < 5, health_times  # generous: unblocked it answers in milliseconds
    assert call(app, "GET", "/healthz").json()["faces"]["in_progress"] == 0


def test_busy_face_detection_gets_503_and_predictions_go_on(detector, astronaut):
    app = create_app(detector, ServeSettings(max_wait_ms=0, faces_concurrency=1, faces_queue=0))
    faces = app.state.faces
    running, gate = threading.Event(), threading.Event()
    original = faces.find

    def held(*args):
        running.set()
        assert gate.wait(30), "the test never opened the gate"
        return original(*args)

    faces.find = held

    async def scenario():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            slow = asyncio.create_task(client.post("/api/v1/predict?faces=1", content=astronaut))
            assert await asyncio.to_thread(running.wait, 30)
            refused = await client.post("/api/v1/predict?faces=1", content=astronaut)
            plain = await client.post("/api/v1/predict", content=astronaut)
            health = await client.get("/healthz")
            gate.set()
            return await slow, refused, plain, health

    try:
        slow, refused, plain, health = asyncio.run(scenario())
    finally:
        gate.set()
        app.state.batcher.close()
        faces.close()
    assert slow.status_code == 200 and len(slow.json()["faces"]) == 1
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert "face detection is busy" in refused.json()["error"]["message"]
    assert plain.status_code == 200
    assert health.status_code == 200 and health.json()["faces"]["in_progress"] == 1


def test_a_wide_margin_crop_may_pass_the_upload_pixel_cap(faces_package, detector, astronaut):
    """A crop is derived, and bounded by MAX_CROP_SIDE: the upload's pixel cap applies to the upload only. Here the
    512 px photo passes a 300,000 px cap (serve --max-pixels sets both the server's and the detector's), and its
    face's crop with margin 4 (about 600 px a side) does not."""
    capped_detector = Detector.load(faces_package, variant="fp32", threads=1, max_pixels=300_000)
    capped = create_app(capped_detector, ServeSettings(max_pixels=300_000, max_wait_ms=0))
    try:
        response = call(capped, "POST", "/api/v1/predict?faces=1&margin=4", content=astronaut)
    finally:
        capped.state.batcher.close()
    assert response.status_code == 200, response.text
    expected = detector.predict_faces(astronaut, margin=4.0)
    assert response.json()["faces"][0]["fake_probability"] == pytest.approx(
        expected.faces[0][1].fake_probability, abs=1e-6)


def test_face_crops_are_bounded_in_memory():
    """A close-up face in a large photo with a wide margin: face_crop would allocate a square of 5x the box (here
    12,500 px, 470 MB); the server's crop is cut from a reduced copy, at most MAX_CROP_SIDE a side."""
    picture = Image.new("RGB", (3000, 2500), (90, 120, 150))
    close_up = Face((250.0, 0.0, 2750.0, 2500.0), 0.99)
    crop = bounded_face_crop(picture, close_up, margin=4.0)
    assert max(crop.shape[:2]) <= MAX_CROP_SIDE and crop.shape[0] == crop.shape[1]
    centre = crop[crop.shape[0] // 2, crop.shape[1] // 2]
    assert list(centre) == [90, 120, 150] and not crop[0, 0].any()  # the photo in the middle, black beyond it
    small = Face((100.0, 100.0, 300.0, 340.0), 0.99)
    assert np.array_equal(bounded_face_crop(picture, small, 0.3), face_crop(picture, small, 0.3))


def test_a_faces_record_keeps_the_detector_score_beside_the_verdict():
    """FacesResult.to_dict put the verdict's score over the face's: the detector's score was lost from the record."""
    face = Face((1.0, 2.0, 30.0, 40.0), 0.875, ((5.0, 6.0),) * 5)
    verdict = Prediction("Fake", 0.75, {"Fake": 0.75, "Real": 0.25}, np.array([1.0, 0.0]), 0.75)
    (record,) = FacesResult.decide([(face, verdict)], "whole-image").to_dict()["faces"]
    assert record["face_score"] == 0.875 and record["score"] == 0.75


def test_serve_face_flags_reach_the_settings(faces_package, monkeypatch):
    from fastvit_detect import server
    from fastvit_detect.cli import main

    served = {}
    monkeypatch.setattr(server, "serve", lambda detector, **options: served.update(detector=detector, **options))
    assert main(["serve", "--model", str(faces_package), "--variant", "fp32", "--threads", "1",
                 "--faces-max-per-image", "7", "--faces-detect-side", "800", "--faces-concurrency", "2",
                 "--faces-queue", "0"]) == 0
    settings = served["settings"]
    assert (settings.faces_max_per_image, settings.faces_detect_side, settings.faces_concurrency,
            settings.faces_queue) == (7, 800, 2, 0)
    assert main(["serve", "--model", str(faces_package), "--variant", "fp32"]) == 0
    assert served["settings"].faces_max_per_image == ServeSettings().faces_max_per_image
    for flag, value in (("--faces-max-per-image", "0"), ("--faces-max-per-image", "1025"),
                        ("--faces-detect-side", "63"), ("--faces-concurrency", "nan"), ("--faces-queue", "-1")):
        with pytest.raises(SystemExit):
            main(["serve", "--model", str(faces_package), flag, value])
