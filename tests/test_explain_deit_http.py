"""POST /api/v1/explain on a center-crop (DeiT) model, over real HTTP (uvicorn on 127.0.0.1): the heat map sits
where the model looked. The DeiT fixture resizes to 256 x 256 and crops the central 224 x 224, so the model never
sees the outer 16/256 of each axis: those cells of the returned grid must be empty (None), every cell inside must
hold heat, and the heat layer must veil the margin (and only the margin) as unseen. The margin comes from the
preprocessor config, worked out by hand below, not from the code under test."""

from __future__ import annotations

import base64
import io
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from PIL import Image

uvicorn = pytest.importorskip("uvicorn")

from fastvit_detect import Detector  # noqa: E402
from fastvit_detect.explain import UNSEEN_VEIL  # noqa: E402
from fastvit_detect.server import ServeSettings, create_app  # noqa: E402

WIDTH, HEIGHT = 320, 200  # not square: each axis has its own margin in grid cells
MARGIN = 16 / 256  # (256 - 224) / 2 of the resized side, as a fraction of the original


@pytest.fixture(scope="module")
def detector(packages) -> Detector:
    detector = Detector.load(packages["deit"], variant="fp32", threads=1)
    assert detector.preprocessor.config.crop == (224, 224)  # the premise: a center-crop model
    return detector


@pytest.fixture(scope="module")
def server_url(detector) -> Iterator[str]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    app = create_app(detector, ServeSettings(max_wait_ms=0, explain_max_passes=40))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn didn't start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    server.should_exit = True
    thread.join(30)
    listener.close()


@pytest.fixture(scope="module")
def photo() -> bytes:
    rows = np.linspace(0, 255, HEIGHT, dtype=np.uint8)[:, None, None]
    columns = np.linspace(255, 0, WIDTH, dtype=np.uint8)[None, :, None]
    pixels = np.concatenate([np.broadcast_to(rows, (HEIGHT, WIDTH, 1)), np.broadcast_to(columns, (HEIGHT, WIDTH, 1)),
                             np.full((HEIGHT, WIDTH, 1), 90, np.uint8)], axis=2)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def unseen(count: int) -> set[int]:
    """Cells of a ``count``-cell axis whose centres fall in the crop's margins."""
    return {index for index in range(count) if not MARGIN <= (index + 0.5) / count < 1 - MARGIN}


@pytest.mark.parametrize("method", ["occlusion", "rise"])
def test_explain_on_a_center_crop_model_over_http(server_url, detector, photo, method):
    query = {"method": method, "grid": "4"} | ({"samples": "8", "seed": "1"} if method == "rise" else {})
    response = httpx.post(f"{server_url}/api/v1/explain", params=query, files={"file": ("photo.png", photo)},
                          timeout=120)
    assert response.status_code == 200, response.text
    body = response.json()
    expected = detector.predict(photo)
    assert body["label"] == expected.label
    assert body["probabilities"] == pytest.approx(dict(expected.probabilities), abs=1e-6)
    assert body["explanation"]["method"] == method
    grid = body["explanation"]["heatmap"]["grid"]
    assert (len(grid), len(grid[0])) == (20, 32)  # 32 cells on the longer side, the aspect ratio kept
    assert unseen(32) == {0, 1, 30, 31} and unseen(20) == {0, 19}  # the hand-worked margins
    for row_index, row in enumerate(grid):
        for column_index, value in enumerate(row):
            outside = row_index in unseen(20) or column_index in unseen(32)
            assert (value is None) == outside, (row_index, column_index, value)

    heatmap = body["explanation"]["heatmap"]
    header, _, data = heatmap["png"].partition(",")
    assert header == "data:image/png;base64"
    layer = np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGBA"))
    height, width = layer.shape[:2]
    assert (width, height) == (WIDTH, HEIGHT)  # under 512 on both sides: the original's size
    veil = np.array(UNSEEN_VEIL, dtype=np.uint8)
    veiled = np.all(layer == veil, axis=-1)
    edge_x, edge_y = int(width * 0.05), int(height * 0.05)  # inside the 6.25 % margins
    assert veiled[:, :edge_x].all() and veiled[:, -edge_x:].all()
    assert veiled[:edge_y].all() and veiled[-edge_y:].all()
    assert not veiled[int(height * 0.1):int(height * 0.9), int(width * 0.1):int(width * 0.9)].any()
