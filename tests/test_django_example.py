"""The Django example (examples/django_app): the seed project's page and endpoint on fastvit-detect, no torch."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import deepfake_site
import django
import pytest
from conftest import sample_photos
from django.test import Client, override_settings
from PIL import Image

# The site pytest's `pythonpath` (pyproject) puts on the path: examples/django_app, or the mutation check's copy
# of it with one line broken. Subprocesses get the same one.
SITE = Path(deepfake_site.__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def client(vit_package) -> Client:
    # Django is configured once per process: settings read the model directory from the environment, once.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FASTVIT_MODEL_DIR", str(vit_package))
        patch.setenv("DJANGO_SETTINGS_MODULE", "deepfake_site.settings")
        patch.setenv("DJANGO_ALLOWED_HOSTS", "testserver")
        django.setup()
    return Client()


def post_image(client: Client, value) -> tuple[int, dict]:
    response = client.post("/predict/", data=json.dumps({"image": value}), content_type="application/json")
    return response.status_code, response.json()


def test_page(client):
    response = client.get("/")
    assert response.status_code == 200
    page = response.content.decode()
    assert 'type="file"' in page and 'fetch("/predict/"' in page and "readAsDataURL" in page


@pytest.mark.parametrize("prefix", ["", "data:image/jpeg;base64,"])
def test_predict_returns_the_label(client, reference, prefix):
    photos = sample_photos()
    expected = reference.labels("vit", photos)  # PyTorch's labels; int8 keeps them on these images
    assert len(set(expected)) == 2
    for photo, label in zip(photos, expected):
        status, body = post_image(client, prefix + base64.b64encode(photo.read_bytes()).decode())
        assert (status, body) == (200, {"result": label}), photo.name


def test_detector_is_loaded_once_and_shared_between_threads(client, reference):
    from django.apps import apps

    shared = apps.get_app_config("detection").detector
    photos = sample_photos()[:4] * 2
    encoded = [base64.b64encode(photo.read_bytes()).decode() for photo in photos]
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda value: post_image(Client(), value), encoded))
    assert answers == [(200, {"result": label}) for label in reference.labels("vit", photos)]
    assert apps.get_app_config("detection").detector is shared


def qoi_image() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(buffer, format="QOI")  # a pure-Python decoder: not on a public page
    return buffer.getvalue()


QOI = qoi_image()


@pytest.mark.parametrize(
    "body, status, error_type, cause",
    [
        (b"{not json", 422, "BadRequestError", "isn't valid JSON"),
        (json.dumps({"picture": "abc"}).encode(), 422, "BadRequestError", '{"image": "<base64>"}'),
        (json.dumps({"image": "%%%"}).encode(), 422, "BadRequestError", "isn't valid base64"),
        (json.dumps({"image": base64.b64encode(b"plain text").decode()}).encode(), 415, "ImageDecodeError",
         "not a recognised image format (accepted: JPEG"),
        (json.dumps({"image": base64.b64encode(QOI).decode()}).encode(), 415, "UnsupportedInputError",
         "QOI images aren't accepted here"),
        (json.dumps({"image": ""}).encode(), 422, "EmptyImageError", "empty input"),
    ],
)
def test_bad_requests(client, body, status, error_type, cause):
    response = client.post("/predict/", data=body, content_type="application/json")
    assert response.status_code == status
    error = response.json()["error"]
    assert error["type"] == error_type and cause in error["message"]


def test_oversize_body_is_413(client):
    with override_settings(DATA_UPLOAD_MAX_MEMORY_SIZE=1000):
        status, body = post_image(client, base64.b64encode(sample_photos()[0].read_bytes()).decode())
    assert status == 413 and "exceeds 1,000 bytes" in body["error"]["message"]


def test_wrong_method(client):
    assert client.get("/predict/").status_code == 405


TORCH_BLOCKED = textwrap.dedent(
    """
    import base64, json, os, sys

    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {"torch", "transformers", "optimum", "fastapi", "uvicorn"}:
                raise ImportError(f"blocked import of {name}")

    sys.meta_path.insert(0, Block())
    import django
    django.setup()
    from django.test import Client
    image = base64.b64encode(open(sys.argv[1], "rb").read()).decode()
    response = Client().post("/predict/", data=json.dumps({"image": image}), content_type="application/json")
    print(response.status_code, response.json()["result"])
    """
)


def test_site_runs_without_torch_or_fastapi(vit_package, reference):
    env = {**os.environ, "FASTVIT_MODEL_DIR": str(vit_package), "DJANGO_SETTINGS_MODULE": "deepfake_site.settings",
           "DJANGO_ALLOWED_HOSTS": "testserver",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(SITE), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-c", TORCH_BLOCKED, str(sample_photos()[0])], capture_output=True,
                            text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["200", reference.label("vit", sample_photos()[0])]


def test_missing_model_dir_stops_the_site():
    env = {**os.environ, "FASTVIT_MODEL_DIR": "", "DJANGO_SETTINGS_MODULE": "deepfake_site.settings"}
    result = subprocess.run([sys.executable, "manage.py", "check"], cwd=SITE, capture_output=True, text=True, env=env,
                            timeout=120)
    assert result.returncode != 0 and "set FASTVIT_MODEL_DIR" in result.stderr
