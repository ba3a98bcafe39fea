"""What the survivors of the automatic mutation run in server/requests.py (reading uploads and query parameters,
the answers' bodies) showed untested. Expected values come from the serving and faces guides (413 over the upload
limit, never before it; 422 for a bad parameter before the upload is read; ``?faces=1`` or ``true``), from the
HTTP exchanges themselves and from Pillow's own encoder, never from the module's code."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import io
import math

import pytest

pytest.importorskip("fastapi")

from PIL import Image
from starlette.requests import Request
from test_server import call  # requests through httpx's ASGI transport

from fastvit_detect import Detector
from fastvit_detect.errors import ImageTooLargeError, InvalidOptionError, UploadTooLargeError
from fastvit_detect.server import ServeSettings, create_app, requests


def _request(chunks: list[bytes], headers: dict[str, str] | None = None) -> Request:
    """A request whose body arrives in ``chunks``, with ``headers`` (a Content-Length, a content type)."""
    pending = list(chunks)

    async def receive() -> dict:
        body = pending.pop(0) if pending else b""
        return {"type": "http.request", "body": body, "more_body": bool(pending)}

    raw = [(name.lower().encode(), value.encode()) for name, value in (headers or {}).items()]
    return Request({"type": "http", "method": "POST", "path": "/", "headers": raw, "query_string": b""}, receive)


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "streamed"])
def test_a_body_of_exactly_the_limit_is_read_and_one_byte_more_is_413(declared):
    """serving.md: a body over ``--max-upload-mb`` is a 413; one of exactly the limit is not over it. Both with a
    Content-Length (refused before reading) and without (counted as it arrives, in chunks)."""
    limit = 1000
    for size, refused in ((limit, False), (limit + 1, True)):
        body = bytes(size)
        chunks = [body[:300], body[300:700], body[700:]]
        headers = {"content-length": str(size)} if declared else {}
        reading = requests.read_body(_request(chunks, headers), limit=limit, timeout_s=10)
        if refused:
            with pytest.raises(UploadTooLargeError, match=f"upload limit of {limit:,} bytes"):
                asyncio.run(reading)
        else:
            assert asyncio.run(reading) == body


def test_a_multipart_body_without_a_file_field_names_the_fields_it_sent():
    settings = ServeSettings()
    boundary = "x" * 16

    def multipart(*fields: str) -> Request:
        parts = "".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\nvalue\r\n'
                        for name in fields)
        return _request([f"{parts}--{boundary}--\r\n".encode()],
                        {"content-type": f"multipart/form-data; boundary={boundary}"})

    with pytest.raises(requests.BadRequestError, match=r"field 'file' is missing \(fields sent: image, name\)"):
        asyncio.run(requests.read_uploads(multipart("image", "name"), settings))
    with pytest.raises(requests.BadRequestError, match=r"field 'file' is missing \(fields sent: none\)"):
        asyncio.run(requests.read_uploads(multipart(), settings))


def test_a_multipart_forms_files_are_closed_before_the_answer(monkeypatch):
    """The parsed form's files (spooled to disk past 1 MB) are closed when the uploads are read, not left to the
    garbage collector: with a reference kept elsewhere they would stay open."""
    from starlette.datastructures import FormData

    closed: list[FormData] = []
    original = FormData.close

    async def recording_close(form: FormData) -> None:
        closed.append(form)
        await original(form)

    monkeypatch.setattr(FormData, "close", recording_close)
    boundary = "y" * 16
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'.encode()
            + bytes(2_000_000) + f"\r\n--{boundary}--\r\n".encode())
    request = _request([body], {"content-type": f"multipart/form-data; boundary={boundary}"})
    uploads, as_list = asyncio.run(requests.read_uploads(request, ServeSettings()))
    assert len(uploads) == 1 and not as_list and len(uploads[0].getvalue()) == 2_000_000
    assert len(closed) == 1


def test_an_image_over_its_decode_cost_is_closed_when_refused(monkeypatch):
    """A WebP pixel costs two (serving.md): a 100x100 WebP under a 15,000 px cap passes the pixel count but not
    its cost, and is refused with 413, its file closed rather than left open until collected."""
    opened, open_image = [], requests.open_image

    def recording_open(*args, **kwargs):
        opened.append(open_image(*args, **kwargs))
        return opened[-1]

    buffer = io.BytesIO()
    Image.new("RGB", (100, 100), (40, 90, 200)).save(buffer, format="WEBP")
    monkeypatch.setattr(requests, "open_image", recording_open)
    with pytest.raises(ImageTooLargeError, match="costs as much to decode as 20,000 pixels"):
        requests.open_upload(io.BytesIO(buffer.getvalue()), ServeSettings(max_pixels=15_000))
    with pytest.raises(ValueError, match="closed"):
        opened[0].image.load()


def test_explain_parameters_refuse_a_bad_method_or_range_and_cut_a_long_target():
    """serving.md: an explanation's parameters are checked before its upload is read (422); the target names a
    label, and what comes back of a long one is at most 100 characters."""
    for query, cause in (({"method": "lime"}, "lime"), ({"grid": "999"}, "grid"), ({"samples": "1"}, "samples"),
                         ({"method": "rise", "samples": "3"}, "samples")):
        with pytest.raises(InvalidOptionError, match=cause):
            requests.explain_parameters(query)
    method, target, options = requests.explain_parameters({"target": "t" * 150, "grid": "3"})
    assert (method, target, options) == ("occlusion", "t" * 100, {"grid": 3})


def test_a_numbers_text_is_read_up_to_40_characters_and_longer_is_not_a_number():
    """A query number past 40 characters (a megabyte of digits) is never parsed: it turns NaN, which the face
    options refuse with their range. 40 characters are still read."""
    forty = "0." + "0" * 37 + "1"
    assert len(forty) == 40
    assert requests.number_parameter({"margin": forty}, "margin", 0.5) == float(forty)
    assert math.isnan(requests.number_parameter({"margin": forty + "1"}, "margin", 0.5))
    assert requests.number_parameter({}, "margin", 0.5) == 0.5


def test_face_requests_and_found_faces_cannot_be_changed_once_made():
    from fastvit_detect.faces import FaceOptions

    request = requests.FaceRequest(FaceOptions(), "none")
    found = requests.FoundFaces([], [], 10, 20)
    for record, name in ((request, "no_face"), (found, "width")):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(record, name, 1)


def test_a_faces_answer_gives_its_time_to_a_hundredth_of_a_millisecond():
    from fastvit_detect.detector import FacesResult
    from fastvit_detect.faces import FaceOptions

    result = FacesResult(faces=[], prediction=None, no_face="none", decisive=None)
    body = requests.faces_body(result, requests.FoundFaces([], [], 64, 48), requests.FaceRequest(FaceOptions(), "none"),
                               {"name": "m"}, elapsed_ms=12.3456)
    assert body["elapsed_ms"] == 12.35
    assert body["image"] == {"width": 64, "height": 48} and body["label"] is None and body["faces"] == []


@pytest.mark.parametrize("switch", ["true", "TRUE", " True ", "1"])
def test_faces_true_asks_for_faces_like_faces_1(vit_package, switch):
    """faces.md: ``?faces=1`` or ``true`` asks for faces: from a package without the face detector that is a 409
    naming it, never a silent whole-image answer."""
    app = create_app(Detector.load(vit_package, variant="fp32", threads=1), ServeSettings())
    try:
        response = call(app, "POST", f"/api/v1/predict?faces={switch}", content=b"not read")
    finally:
        app.state.batcher.close()
    assert response.status_code == 409, response.text
    assert "has no face detector" in response.json()["error"]["message"]


def test_the_heat_map_travels_as_small_as_pillow_can_make_it():
    """The heat layer goes to the client base64 inside JSON: as Pillow's optimising PNG encoder makes it, not its
    quick default (the same pixels, a larger answer)."""

    class Layered:
        def layer(self, side: int) -> Image.Image:
            gradient = Image.linear_gradient("L").resize((side, side // 2))
            return Image.merge("RGBA", [gradient, gradient.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
                                        Image.new("L", gradient.size, 90), gradient])

        def colour_scale(self) -> float:
            return 0.5

        def grid(self, side: int) -> list:
            return []

    body = requests.heatmap_body(Layered())  # type: ignore[arg-type]
    sent = base64.b64decode(body["png"].split(",", 1)[1])
    with Image.open(io.BytesIO(sent)) as image:
        optimised = io.BytesIO()
        image.save(optimised, format="PNG", optimize=True)
        assert (image.width, image.height) == (body["width"], body["height"]) == (512, 256)
    assert len(sent) <= len(optimised.getvalue())


def _documented_bounds(docs: dict) -> dict[str, tuple[object, object]]:
    """A route's query parameters in /openapi.json: name -> (minimum, maximum), None where the schema has none."""
    return {parameter["name"]: (parameter["schema"].get("minimum"), parameter["schema"].get("maximum"))
            for parameter in docs["parameters"] if "minimum" in parameter["schema"]}


def test_the_schemas_bounds_are_the_ones_the_server_enforces():
    """A client generated from /openapi.json must be able to send each parameter's documented minimum and maximum,
    and be refused one step past them: the schema can't drift from the checks."""
    from fastvit_detect.faces import FaceOptions

    face_bounds = _documented_bounds(requests.PREDICT_REQUEST_DOCS)
    assert set(face_bounds) == {"margin", "min_face_size", "max_faces"}
    for name, (low, high) in face_bounds.items():
        step = 1 if name != "margin" else 0.01
        for value in (low, high):
            if value is not None:
                assert getattr(FaceOptions(**{name: value}), name) == value
        for value in (low - step, None if high is None else high + step):
            if value is not None:
                with pytest.raises(InvalidOptionError, match=name):
                    FaceOptions(**{name: value})

    explain_bounds = _documented_bounds(requests.EXPLAIN_REQUEST_DOCS)
    assert set(explain_bounds) == {"grid", "samples", "seed"}
    for name, (low, high) in explain_bounds.items():
        method = {"method": "rise"} if name in ("samples", "seed") else {}
        assert requests.explain_parameters({**method, name: str(low)})[2][name] == low
        with pytest.raises(InvalidOptionError, match=name):
            requests.explain_parameters({**method, name: str(low - 1)})
        assert high is None


def test_a_predictions_answer_gives_its_time_to_a_hundredth_of_a_millisecond():
    import numpy as np

    from fastvit_detect.detector import Prediction

    prediction = Prediction("Fake", 0.75, {"Fake": 0.75, "Real": 0.25}, np.array([1.0, -0.1]), 0.75)
    body = requests.prediction_body(prediction, {"name": "m"}, elapsed_ms=12.3456)
    assert body == {"label": "Fake", "score": 0.75, "probabilities": {"Fake": 0.75, "Real": 0.25},
                    "fake_probability": 0.75, "model": {"name": "m"}, "elapsed_ms": 12.35}
