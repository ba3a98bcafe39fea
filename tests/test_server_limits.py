"""Size limits at their exact boundaries: the seed endpoint's upload limit holds the *decoded* image to
``max_upload_bytes`` whatever the base64 overhead (compact, data URL, line-wrapped as ``base64.encodebytes``
writes it); and the library's byte caps given 0 or 1 (the command line's ``--max-image-mb 0`` and
``--max-upload-mb 0`` end up here): 0 is refused as a caller's mistake, 1 is a real 1-byte cap."""

from __future__ import annotations

import base64
import io
import json

import pytest
from conftest import VIT_PROCESSOR
from PIL import Image
from test_server import call  # requests through httpx's ASGI transport, as the predict tests send them

from fastvit_detect import Detector
from fastvit_detect.errors import ImageTooLargeError
from fastvit_detect.preprocess import Preprocessor
from fastvit_detect.server import ServeSettings, create_app

LIMIT = 300_000  # bytes of image; large enough that base64's line breaks add far more than a few hundred bytes


@pytest.fixture(scope="module")
def detector(vit_package) -> Detector:
    return Detector.load(vit_package, variant="fp32", threads=1)


@pytest.fixture(scope="module")
def app(detector):
    app = create_app(detector, ServeSettings(max_upload_bytes=LIMIT, max_wait_ms=0))
    yield app
    app.state.batcher.close()


def png_of_exactly(size: int) -> bytes:
    """A valid PNG of exactly ``size`` bytes: a small image, then padding after its end (which decoders ignore)."""
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 40, 90)).save(buffer, format="PNG")
    data = buffer.getvalue()
    assert len(data) < size
    return data + b"\0" * (size - len(data))


ENCODINGS = {
    "compact": lambda data: base64.b64encode(data).decode(),
    "data-url": lambda data: "data:image/png;base64," + base64.b64encode(data).decode(),
    "line-wrapped": lambda data: base64.encodebytes(data).decode(),  # 76 characters and a newline per line
    "crlf-wrapped": lambda data: base64.encodebytes(data).decode().replace("\n", "\r\n"),
}


@pytest.mark.parametrize("encoding", list(ENCODINGS))
def test_an_image_of_exactly_the_limit_is_accepted_however_it_is_encoded(app, encoding):
    image = png_of_exactly(LIMIT)
    body = json.dumps({"image": ENCODINGS[encoding](image)}).encode()
    assert len(body) > LIMIT * 4 // 3  # the overhead the body limit must allow for
    response = call(app, "POST", "/predict/", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text
    assert response.json()["result"] in ("Fake", "Real")


@pytest.mark.parametrize("encoding", list(ENCODINGS))
def test_an_image_one_byte_over_the_limit_is_413(app, encoding):
    body = json.dumps({"image": ENCODINGS[encoding](png_of_exactly(LIMIT + 1))}).encode()
    response = call(app, "POST", "/predict/", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 413, response.text
    assert f"{LIMIT:,}" in response.json()["error"]["message"]


def test_a_body_far_over_what_any_encoding_of_the_limit_needs_is_refused_unread(app):
    body = json.dumps({"image": "A" * (2 * LIMIT)}).encode()
    response = call(app, "POST", "/predict/", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 413 and "base64-encoded in JSON" in response.json()["error"]["message"]


# --- byte caps of 0 and 1 -----------------------------------------------------------------------------------


def test_a_byte_cap_of_zero_is_refused_naming_it(vit_package):
    with pytest.raises(ValueError, match="max_bytes"):
        Detector.load(vit_package, max_bytes=0)
    with pytest.raises(ValueError, match="max_bytes"):
        Preprocessor.from_hf(VIT_PROCESSOR, max_bytes=0)
    with pytest.raises(ValueError, match="max_upload_bytes"):
        ServeSettings(max_upload_bytes=0)


def test_a_byte_cap_of_one_refuses_every_image_by_its_size(vit_package, tmp_path):
    detector = Detector.load(vit_package, variant="fp32", threads=1, max_bytes=1)
    image = png_of_exactly(1000)
    path = tmp_path / "small.png"
    path.write_bytes(image)
    for given in (image, str(path), io.BytesIO(image)):
        with pytest.raises(ImageTooLargeError, match="bytes exceeds the cap of 1 bytes"):
            detector.predict(given)
    exact = Detector.load(vit_package, variant="fp32", threads=1, max_bytes=1000)
    assert exact.predict(image).label in ("Fake", "Real")  # the cap is inclusive
    with pytest.raises(ImageTooLargeError):
        Detector.load(vit_package, variant="fp32", threads=1, max_bytes=999).predict(image)


def test_an_upload_cap_of_one_byte_refuses_every_upload_with_413(detector):
    app = create_app(detector, ServeSettings(max_upload_bytes=1, max_wait_ms=0))
    try:
        image = png_of_exactly(1000)
        assert call(app, "POST", "/api/v1/predict", content=image).status_code == 413
        assert call(app, "POST", "/api/v1/predict", files={"file": ("a.png", image)}).status_code == 413
        seed = {"image": base64.b64encode(image).decode()}
        assert call(app, "POST", "/predict/", json=seed).status_code == 413
    finally:
        app.state.batcher.close()
