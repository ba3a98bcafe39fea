"""The upload page in a real browser: headless Chromium, driven over the DevTools protocol, against uvicorn.

Chromium is Debian's ``chromium`` package (CI installs it); the test skips where it isn't installed. It talks
to Chromium with ``websocket-client``. Screenshots land in the test's tmp dir and in ``artifacts/browser/``.
"""

from __future__ import annotations

import base64
import contextlib
import io
import itertools
import json
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import uvicorn
from conftest import ROOT, sample_photos

from fastvit_detect import Detector
from fastvit_detect.server import create_app

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium isn't installed (apt-get install chromium)")
websocket = pytest.importorskip("websocket", reason="websocket-client drives Chromium: pip install websocket-client")

ARTIFACTS = ROOT / "artifacts" / "browser"


@pytest.fixture(scope="module")
def detector(vit_package) -> Detector:
    return Detector.load(vit_package, threads=1)


@contextlib.contextmanager
def serving(detector: Detector) -> Iterator[str]:
    """uvicorn on 127.0.0.1, on a port the OS picks: the socket is bound before the server starts, so no race."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(detector), log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn didn't start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)
        listener.close()


@pytest.fixture(scope="module")
def server_url(detector) -> Iterator[str]:
    with serving(detector) as url:
        yield url


class Browser:
    """Headless Chromium and one page, over the DevTools protocol."""

    def __init__(self, profile: Path) -> None:
        self.log = open(profile.parent / "chromium.log", "wb")  # noqa: SIM115 - Chromium's lifetime; closed on stop
        self.process = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--remote-debugging-port=0", "--window-size=1000,900", "about:blank"],
            stdout=self.log, stderr=subprocess.STDOUT,
        )
        port = self._devtools_port(profile / "DevToolsActivePort")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as response:
            page = next(target for target in json.load(response) if target["type"] == "page")
        # suppress_origin: Chromium refuses DevTools websockets that carry an Origin it wasn't told to allow.
        self.socket = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=30, suppress_origin=True)
        self.ids = itertools.count(1)
        self.events: list[dict[str, Any]] = []

    def _devtools_port(self, port_file: Path) -> int:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.process.poll() is None, "Chromium exited at start-up"
            if port_file.exists() and port_file.read_text().strip():
                return int(port_file.read_text().split()[0])
            time.sleep(0.05)
        raise AssertionError("Chromium didn't open its DevTools port")

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        message_id = next(self.ids)
        self.socket.send(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv())
            if message.get("id") == message_id:
                assert "error" not in message, f"{method}: {message['error']}"
                return message["result"]
            self.events.append(message)

    def evaluate(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if value := self.evaluate(expression):
                return value
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {expression}")

    def upload(self, selector: str, path: Path) -> None:
        root = self.send("DOM.getDocument")["root"]["nodeId"]
        node = self.send("DOM.querySelector", nodeId=root, selector=selector)["nodeId"]
        self.send("DOM.setFileInputFiles", nodeId=node, files=[str(path)])  # fires the input's change event

    def screenshot(self, path: Path, clip: dict[str, float] | None = None) -> None:
        options: dict[str, Any] = {"format": "png"}
        if clip is not None:
            options["clip"] = {**clip, "scale": 1}
        path.write_bytes(base64.b64decode(self.send("Page.captureScreenshot", **options)["data"]))

    def requested_urls(self) -> list[str]:
        return [event["params"]["request"]["url"] for event in self.events
                if event.get("method") == "Network.requestWillBeSent"]

    def close(self) -> None:
        self.socket.close()
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


@pytest.fixture
def browser(tmp_path) -> Iterator[Browser]:
    opened = Browser(tmp_path / "profile")
    yield opened
    opened.close()


def save_screenshot(browser: Browser, tmp_path: Path, name: str) -> Path:
    shot = tmp_path / name
    browser.screenshot(shot)
    assert shot.read_bytes().startswith(b"\x89PNG")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, ARTIFACTS / name)
    return shot


def test_upload_shows_the_verdict_and_errors(browser, server_url, reference, tmp_path):
    browser.send("Network.enable")
    browser.send("Page.navigate", url=server_url + "/")
    browser.wait_for("document.readyState === 'complete' && document.getElementById('model').textContent"
                     ".startsWith('Model ')")

    photos = sample_photos()
    labels = reference.labels("vit", photos)
    # One photo PyTorch calls Fake, then one it calls Real: the page must show each verdict, not a constant one.
    for expected_label in ("Fake", "Real"):
        photo = photos[labels.index(expected_label)]
        browser.evaluate("document.body.dataset.state = ''")
        browser.upload("#file", photo)
        assert browser.wait_for("['done', 'error'].includes(document.body.dataset.state) && "
                                "document.body.dataset.state") == "done", \
            browser.evaluate("document.getElementById('error').textContent")
        shown = browser.evaluate("""({
            label: document.getElementById('label').textContent,
            bar: parseFloat(document.getElementById('fake-bar').style.width),
            probabilities: document.getElementById('probabilities').children.length,
            preview: document.getElementById('preview').naturalWidth,
            errorHidden: document.getElementById('error').hidden,
        })""")
        (row,) = reference.probabilities("vit", [photo])
        assert shown["label"] == expected_label
        # int8 against PyTorch: these models' probabilities stay within 0.05 (test_detector); the bar rounds to 0.1 %.
        assert shown["bar"] == pytest.approx(100 * row[0], abs=5)
        assert shown["probabilities"] == 2 and shown["preview"] > 0 and shown["errorHidden"]
        save_screenshot(browser, tmp_path, f"upload-result-{expected_label.lower()}.png")

    not_an_image = tmp_path / "notes.jpg"
    not_an_image.write_text("this is not an image\n")
    browser.upload("#file", not_an_image)
    browser.wait_for("document.body.dataset.state === 'error'")
    message = browser.evaluate("document.getElementById('error').textContent")
    assert "HTTP 415" in message and "ImageDecodeError" in message and "notes.jpg" in message
    assert browser.evaluate("document.getElementById('result').hidden")
    save_screenshot(browser, tmp_path, "upload-error.png")

    requested = browser.requested_urls()
    assert any(url.endswith("/api/v1/predict") for url in requested)
    outside = [url for url in requested if not url.startswith((server_url + "/", "blob:", "data:"))]
    assert not outside, f"the page fetched from elsewhere: {outside}"


def posted(url: str, photo: Path) -> Any:
    """The JSON answer to ``photo`` sent to ``url`` as the page sends it: multipart field ``file``."""
    boundary = "fastvit-test-boundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{photo.name}\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n")
    body = head.encode() + photo.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.load(response)


def explained(server_url: str, photo: Path) -> dict[str, Any]:
    return posted(server_url + "/api/v1/explain?target=predicted", photo)


def test_show_evidence_draws_the_heat_map_over_the_preview(browser, server_url, detector, tmp_path):
    from PIL import Image

    # A photo with some positive evidence for its verdict: with none, an honest overlay draws nothing.
    photo = next(path for path in sample_photos() if explained(server_url, path)["explanation"]["heat_max"] > 0)
    browser.send("Network.enable")
    browser.send("Page.navigate", url=server_url + "/")
    browser.wait_for("document.readyState === 'complete' && document.getElementById('model').textContent"
                     ".startsWith('Model ')")
    browser.evaluate("document.getElementById('evidence').click()")  # on before the upload: explained after it
    browser.upload("#file", photo)
    assert browser.wait_for("['shown', 'error'].includes(document.body.dataset.evidence) && "
                            "document.body.dataset.evidence") == "shown", \
        browser.evaluate("document.getElementById('evidence-error').textContent")
    assert browser.evaluate("document.body.dataset.state") == "done"
    geometry = browser.evaluate("""(() => {
        const box = (id) => { const r = document.getElementById(id).getBoundingClientRect();
                              return [r.x, r.y, r.width, r.height]; };
        const heat = document.getElementById('heat');
        return {preview: box('preview'), heat: box('heat'), heatLoaded: heat.complete && heat.naturalWidth > 0,
                legend: !document.getElementById('legend').hidden,
                caption: document.getElementById('legend-caption').textContent,
                bar: document.getElementById('legend-bar').style.background};
    })()""")
    assert geometry["heatLoaded"] and geometry["legend"] and "Evidence for" in geometry["caption"]
    assert geometry["heat"] == pytest.approx(geometry["preview"], abs=0.5)  # exactly over the photo
    assert geometry["bar"].startswith("linear-gradient")
    x, y, width, height = geometry["preview"]
    clip = {"x": x, "y": y, "width": width, "height": height}
    with_heat = tmp_path / "evidence-on.png"
    browser.screenshot(with_heat, clip)
    save_screenshot(browser, tmp_path, "upload-evidence.png")

    browser.evaluate("document.getElementById('evidence').click()")  # off: the photo alone again
    browser.wait_for("document.body.dataset.evidence === 'off'")
    without_heat = tmp_path / "evidence-off.png"
    browser.screenshot(without_heat, clip)
    shown = np.asarray(Image.open(with_heat).convert("RGB"), dtype=np.int16)
    plain = np.asarray(Image.open(without_heat).convert("RGB"), dtype=np.int16)
    assert shown.shape == plain.shape
    changed = np.abs(shown - plain).max(axis=2) > 24
    # What the server's heat layer, stretched over the photo and blended by its alpha, should change: the fixture
    # model reads the whole photo's brightness, so its heat may cover all of it (a mask, not a share, to compare).
    layer_url = explained(server_url, photo)["explanation"]["heatmap"]["png"]
    layer = Image.open(io.BytesIO(base64.b64decode(layer_url.split(",", 1)[1]))).convert("RGBA")
    layer = np.asarray(layer.resize((shown.shape[1], shown.shape[0]), Image.BILINEAR), dtype=np.float64)
    alpha = layer[..., 3:] / 255
    expected = np.abs(layer[..., :3] * alpha + plain * (1 - alpha) - plain).max(axis=2) > 24
    assert changed.mean() > 0.02, changed.mean()  # the heat is drawn
    assert (changed == expected).mean() > 0.9, ((changed == expected).mean(), changed.mean(), expected.mean())

    browser.evaluate("document.getElementById('evidence').click()")  # on again: the answer is reused
    browser.wait_for("document.body.dataset.evidence === 'shown'")
    requested = browser.requested_urls()
    assert sum("/api/v1/explain" in url for url in requested) == 1
    outside = [url for url in requested if not url.startswith((server_url + "/", "blob:", "data:"))]
    assert not outside, f"the page fetched from elsewhere: {outside}"


def test_find_faces_draws_each_box_with_its_verdict(browser, packages, tmp_path):
    """A group photo (test_faces' scene: five faces pasted on a photo) to a package with the face detector: with
    "Find faces" on, the page draws one box per face of the JSON answer, where that face is on the preview, tagged
    with its verdict."""
    from test_faces import COMPOSITION, _scene

    photo = tmp_path / "group.png"
    _scene(1400, 900, COMPOSITION)[0].save(photo)
    # fp32: a crop's verdict doesn't depend on its batch-mates, so the page's answer equals the one fetched here.
    with serving(Detector.load(packages["vit-faces"], variant="fp32", threads=1)) as url:
        answer = posted(url + "/api/v1/predict?faces=1", photo)
        browser.send("Network.enable")
        browser.send("Page.navigate", url=url + "/")
        browser.wait_for("document.readyState === 'complete' && !document.getElementById('faces').disabled")
        assert not browser.evaluate("document.getElementById('faces').checked")  # the package doesn't expect faces
        browser.evaluate("document.getElementById('faces').click()")
        browser.upload("#file", photo)
        assert browser.wait_for("['done', 'error'].includes(document.body.dataset.state) && "
                                "document.body.dataset.state") == "done", \
            browser.evaluate("document.getElementById('error').textContent")
        assert browser.evaluate("document.body.dataset.faces") == "shown"
        shown = browser.evaluate("""(() => {
            const rect = (node) => { const r = node.getBoundingClientRect(); return [r.x, r.y, r.width, r.height]; };
            return {preview: rect(document.getElementById('preview')),
                    boxes: [...document.querySelectorAll('#face-boxes .face-box')].map((box) => ({
                        rect: rect(box), tag: box.querySelector('.face-tag').textContent,
                        label: box.dataset.label, decisive: box.classList.contains('decisive')})),
                    listed: document.getElementById('face-list').children.length,
                    summary: document.getElementById('faces-summary').textContent,
                    verdict: document.getElementById('label').textContent};
        })()""")
        save_screenshot(browser, tmp_path, "upload-faces.png")
        requested = browser.requested_urls()
    assert len(answer["faces"]) == 5 and answer["image"] == {"width": 1400, "height": 900}
    assert len(shown["boxes"]) == shown["listed"] == 5
    assert shown["verdict"] == answer["label"] and "5 faces found" in shown["summary"]
    x, y, width, height = shown["preview"]
    for drawn, face in zip(shown["boxes"], answer["faces"]):
        x0, y0, x1, y1 = face["box"]
        expected = [x + width * x0 / 1400, y + height * y0 / 900, width * (x1 - x0) / 1400, height * (y1 - y0) / 900]
        assert drawn["rect"] == pytest.approx(expected, abs=1.0), (drawn, face)
        assert drawn["label"] == face["label"].lower() and face["label"] in drawn["tag"]
    assert [drawn["decisive"] for drawn in shown["boxes"]] == [index == answer["decisive"] for index in range(5)]
    assert any(link.endswith("/api/v1/predict?faces=1") for link in requested)
    outside = [link for link in requested if not link.startswith((url + "/", "blob:", "data:"))]
    assert not outside, f"the page fetched from elsewhere: {outside}"


def plotted(page: dict[str, Any], time: float, probability: float) -> tuple[float, float]:
    """Where the page's timeline puts ``probability`` at ``time``: in its plot area, time left to right over the
    clip's span, p(fake) bottom to top."""
    left, top, right, bottom = page["plot"]
    return left + (right - left) * time / page["span"], bottom - (bottom - top) * probability


def test_a_video_shows_its_verdict_ranges_and_timeline(browser, packages, tmp_path):
    """A clip (video_clips.py: a face, darkened from 3 to 5 s, which the fixture calls Fake) to a package with the
    face detector: the page sends it to api/v1/video, shows the verdict and the suspicious range, and draws one
    point per sampled frame of each track where the JSON answer puts it. The same clip named .jpg (the browser
    types it an image) is a video by the server's answer."""
    pytest.importorskip("av")
    import video_clips

    clip = video_clips.fake_segment_clip(tmp_path / "clip.mp4")
    renamed = tmp_path / "holiday.jpg"
    renamed.write_bytes(clip.read_bytes())
    with serving(Detector.load(packages["vit-faces"], variant="fp32", threads=1)) as url:
        answer = posted(url + "/api/v1/video", clip)
        browser.send("Network.enable")
        browser.send("Page.navigate", url=url + "/")
        browser.wait_for("document.readyState === 'complete' && document.getElementById('model').textContent"
                         ".startsWith('Model ')")
        shown = []
        for upload in (clip, renamed):
            browser.evaluate("document.body.dataset.state = ''")
            browser.upload("#file", upload)
            assert browser.wait_for("['done', 'error'].includes(document.body.dataset.state) && "
                                    "document.body.dataset.state", timeout=120) == "done", \
                browser.evaluate("document.getElementById('error').textContent")
            shown.append(browser.evaluate("""(() => {
                const svg = document.getElementById('timeline');
                const box = svg.getBoundingClientRect();
                return {video: document.body.dataset.video,
                        verdict: document.getElementById('label').textContent,
                        ranges: document.getElementById('video-ranges').textContent,
                        summary: document.getElementById('video-summary').textContent,
                        plot: svg.dataset.plot.split(',').map(Number), span: Number(svg.dataset.span),
                        scale: box.width / svg.viewBox.baseVal.width,
                        threshold: Number(svg.querySelector('line.threshold').getAttribute('y1')),
                        suspicious: [...svg.querySelectorAll('rect.suspicious')].map((rect) => [
                            Number(rect.getAttribute('x')), Number(rect.getAttribute('width'))]),
                        points: [...svg.querySelectorAll('circle.point')].map((dot) => {
                            const r = dot.getBoundingClientRect();
                            return {track: Number(dot.dataset.track), cx: Number(dot.getAttribute('cx')),
                                    cy: Number(dot.getAttribute('cy')), x: r.x + r.width / 2 - box.x,
                                    y: r.y + r.height / 2 - box.y};
                        }),
                        lines: svg.querySelectorAll('polyline.track').length};
            })()"""))
        save_screenshot(browser, tmp_path, "upload-video.png")
        requested = browser.requested_urls()
    assert answer["label"] == "Fake" and answer["suspicious_ranges"] == [[3.0, 5.0]]
    for page in shown:
        assert page["video"] == "shown" and page["verdict"] == "Fake"
        assert "Suspicious: 3.0 s – 5.0 s" in page["ranges"] and "8 frames sampled" in page["summary"]
        assert page["span"] == pytest.approx(answer["duration"])
        # every track's frames, one point each, where time and p(fake) put them (in the SVG and on the screen)
        frames = [(track["id"], frame["time"], frame["fake_probability"]) for track in answer["tracks"]
                  for frame in track["frames"] if frame["fake_probability"] is not None]
        assert [point["track"] for point in page["points"]] == [track for track, _, _ in frames]
        drawn = [coordinate for point in page["points"] for coordinate in (point["cx"], point["cy"])]
        assert drawn == pytest.approx([value for _, time, p in frames for value in plotted(page, time, p)], abs=0.01)
        assert page["lines"] == len(answer["tracks"])
        for point in page["points"]:
            assert [point["x"], point["y"]] == pytest.approx([point["cx"] * page["scale"],
                                                              point["cy"] * page["scale"]], abs=1.0)
        # the clip's timeline is its decisive track's here (one face throughout): the same points
        decisive = [point for point in page["points"] if point["track"] == answer["decisive_track"]]
        assert [value for point in decisive for value in (point["cx"], point["cy"])] == pytest.approx(
            [value for time, p in answer["timeline"] for value in plotted(page, time, p)], abs=0.01)
        above = [time for (time, _), point in zip(answer["timeline"], decisive) if point["cy"] < page["threshold"]]
        assert above == [3.0, 4.0]  # the fake segment's frames, and only those, above the dashed 0.5 line
        start, end = plotted(page, 3.0, 0)[0], plotted(page, 5.0, 0)[0]
        assert page["suspicious"] == [pytest.approx([start, end - start], abs=0.01)]
    assert sum(link.endswith("/api/v1/video") for link in requested) == 2  # the clip, and the renamed one's retry
    assert sum("/api/v1/predict" in link for link in requested) == 1  # the renamed one, first as an image
    outside = [link for link in requested if not link.startswith((url + "/", "blob:", "data:"))]
    assert not outside, f"the page fetched from elsewhere: {outside}"
