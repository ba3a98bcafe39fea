"""The server under attack (issue 10): the real ``serve`` on 127.0.0.1, real sockets, hostile clients.

Each scenario is bounded in count and time and asserts against a bound stated here. The time bounds are generous
on purpose, or relative to the attack's own duration: this runs on 2 cores shared with other jobs, and a bound
exists to catch a server that stalls behind an attacker or hangs, not to benchmark it. What each scenario
measured is printed (``pytest -s``) for docs/reliability.md.

Servers, each a subprocess whose stderr is the log the assertions read:
- ``cli_server``: ``python -m fastvit_detect serve`` with short timeouts, a small connection cap and a small pixel
  cap (bombs just under it then cost a fraction of a second each, so a dozen fit the time budget);
- ``fault_server``: the same ``serve()`` over a detector with two faults injected by pixel pattern, a solid
  magenta image makes the session call raise (as a broken graph would), a solid cyan one makes the model thread
  die with ``SystemExit``. Expected labels come from PyTorch, never from the server's own code.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import math
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import png_with_header, torch_logits
from PIL import Image, features

pytest.importorskip("uvicorn")

HOST = "127.0.0.1"
STARTUP_S = 90  # a subprocess loading onnxruntime and FastAPI on a busy machine
HEADER_TIMEOUT_S = 1.5
BODY_TIMEOUT_S = 1.5
CLOSE_SLACK_S = 5.0  # a timed-out connection is closed within its timeout plus this
MAX_CONNECTIONS = 24
BOMB_CAP = 12_000_000  # the cli_server's pixel cap; the decode budget is 1.5 times this
DECODE_WORKERS = 4  # more decode threads than cores: memory must still follow the pixel budget, not the threads
PROMPT_S = 5.0  # "at once": a refusal that needs no decoding or inference
MAGENTA, CYAN = (255, 0, 255), (0, 255, 255)


# --- servers ------------------------------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    seconds: float

    def json(self):
        return json.loads(self.body)


class Server:
    """A server subprocess on 127.0.0.1: its port, pid and log."""

    def __init__(self, command: list[str], log_path: Path) -> None:
        self.log_path = log_path
        self._log_file = open(log_path, "wb")  # noqa: SIM115 - the server writes to it until stop()
        self.process = subprocess.Popen(command, stdout=self._log_file, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + STARTUP_S
        while not (match := re.search(rf"Uvicorn running on http://{HOST}:(\d+)", self.log())):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"server did not start:\n{self.log()}")
            time.sleep(0.1)
        self.port = int(match.group(1))

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def memory_mb(self) -> dict[str, float]:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return {key: int(re.search(rf"^{key}:\s+(\d+) kB", status, re.M).group(1)) / 1024 for key in ("VmRSS", "VmHWM")}

    def connect(self, timeout: float = 30.0) -> socket.socket:
        return socket.create_connection((HOST, self.port), timeout=timeout)

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
                timeout: float = 60.0) -> Reply:
        connection = http.client.HTTPConnection(HOST, self.port, timeout=timeout)
        started = time.perf_counter()
        try:
            connection.request(method, path, body, headers or {})
            response = connection.getresponse()
            data = response.read()
            return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, data,
                         time.perf_counter() - started)
        finally:
            connection.close()

    def health(self) -> Reply:
        return self.request("GET", "/healthz", timeout=PROMPT_S * 2)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(15)
        self._log_file.close()


def post_image(server: Server, image: bytes, timeout: float = 60.0) -> Reply:
    return server.request("POST", "/api/v1/predict", image, {"Content-Type": "application/octet-stream"}, timeout)


def multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = "attack-boundary") -> tuple[bytes, dict]:
    """A multipart/form-data body from (field name, file name or None for a text field, content)."""
    chunks = []
    for name, filename, content in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        chunks.append(f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + content + b"\r\n")
    body = b"".join(chunks) + f"--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def access_lines(log: str) -> list[tuple[str, str, int]]:
    """(method, path, status) of every request line the server logged."""
    return [(method, path, int(status)) for method, path, status in re.findall(r'"([A-Z]+) (\S+)" (\d{3}) ', log)]


def tracebacks(log: str) -> list[str]:
    """The last line of every traceback in the log: the exception it reports."""
    ends, lines = [], log.splitlines()
    for index, line in enumerate(lines):
        if line.startswith("Traceback (most recent call last)"):
            rest = (candidate for candidate in lines[index + 1:] if candidate and not candidate.startswith(" "))
            ends.append(next(rest, "<cut short>"))
    return ends


def wait_until(condition, seconds: float, pause: float = 0.05):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(pause)
    return condition()


def closed_by_peer(sock: socket.socket, seconds: float) -> bool:
    """Whether the server closes this connection within ``seconds`` (what it sends meanwhile is discarded)."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            if not sock.recv(65536):
                return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False
    return False


def reset(sock: socket.socket) -> None:
    """Vanish abruptly: RST instead of FIN, as a client that crashes or loses its network does."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


# --- images -------------------------------------------------------------------------------------------------


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def solid(color: tuple[int, int, int], size: tuple[int, int] = (40, 56)) -> np.ndarray:
    return np.broadcast_to(np.array(color, dtype=np.uint8), (*size, 3)).copy()


def rgba_png_bomb(width: int, height: int) -> bytes:
    """A valid RGBA PNG of width x height that compresses to a few hundred KB at most: it all decodes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    compressor = zlib.compressobj(9)
    row = b"\0" * (1 + 4 * width)  # filter byte, then transparent black
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)  # 8 bits, colour type 6: RGBA
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


@dataclass
class Honest:
    """A valid image and PyTorch's verdict on it."""

    data: bytes
    label: str
    fake_probability: float


@pytest.fixture(scope="module")
def honest(checkpoints) -> list[Honest]:
    """Images whose label PyTorch gives with a clear margin, both labels represented."""
    rng = np.random.default_rng(10)
    candidates = [solid(tuple(int(v) for v in rng.integers(0, 256, 3))) for _ in range(60)]
    candidates += [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(4)]
    assert not any((image == MAGENTA).all() or (image == CYAN).all() for image in candidates)
    logits = torch_logits(checkpoints["vit"], [Image.fromarray(image) for image in candidates])
    probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    labels = ("Fake", "Real")  # conftest's vit checkpoint
    chosen: dict[str, list[Honest]] = {label: [] for label in labels}
    for image, row in zip(candidates, probabilities):
        label = labels[int(row.argmax())]
        if row.max() >= 0.55 and len(chosen[label]) < 3:  # a clear verdict: fp32 rounding can't flip it
            chosen[label].append(Honest(png(image), label, float(row[0])))
    assert all(chosen.values()), f"the reference gave one label only: {probabilities.round(3)}"
    return [image for images in chosen.values() for image in images]


def check_verdict(reply: Reply, image: Honest) -> str | None:
    """None if the reply is the reference's verdict on the image, else what is wrong with it."""
    if reply.status != 200:
        return f"status {reply.status}: {reply.body[:200]!r}"
    body = reply.json()
    if "result" in body:  # the seed API: a label only
        return None if body["result"] == image.label else f"label {body['result']} != {image.label}"
    if body["label"] != image.label or not math.isclose(body["fake_probability"], image.fake_probability,
                                                        abs_tol=1e-4):
        return f"{body['label']} {body['fake_probability']} != {image.label} {image.fake_probability}"
    return None


# --- the servers --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli_server(vit_package, tmp_path_factory):
    command = [sys.executable, "-m", "fastvit_detect", "serve", "--model", str(vit_package), "--variant", "fp32",
               "--port", "0", "--threads", "1", "--max-pixels", str(BOMB_CAP),
               "--decode-workers", str(DECODE_WORKERS), "--max-connections", str(MAX_CONNECTIONS),
               "--header-timeout", str(HEADER_TIMEOUT_S), "--body-timeout", str(BODY_TIMEOUT_S)]
    server = Server(command, tmp_path_factory.mktemp("cli-server") / "server.log")
    yield server
    server.stop()


# The serve() of `fastvit-detect serve`, over a detector with faults that chosen pixels trigger. The checks read
# only what reaches the model thread, so the decode stage and the batcher in front of it are the real ones.
FAULTY_SERVER = r"""
import sys
import numpy as np
from fastvit_detect import Detector
from fastvit_detect.server import ServeSettings, serve

detector = Detector.load(sys.argv[1], variant="fp32", threads=1)
magenta = detector.preprocessor.normalize(np.array([[[[255, 0, 255]]]], dtype=np.uint8))[0, :, 0, 0]
session_run, classify_pixels = detector.session.run, detector.classify_pixels

def run(pixel_values):  # float32 NCHW, normalised
    if (pixel_values == magenta[None, :, None, None]).all(axis=(1, 2, 3)).any():
        raise RuntimeError("injected model failure")  # as onnxruntime raises for a graph that breaks
    return session_run(pixel_values)

def classify(pixels, *args, **kwargs):  # uint8 NHWC, one micro-batch
    if (pixels == np.array([0, 255, 255], dtype=np.uint8)).all(axis=(1, 2, 3)).any():
        raise SystemExit("injected worker death")
    return classify_pixels(pixels, *args, **kwargs)

detector.session.run, detector.classify_pixels = run, classify
serve(detector, port=0, settings=ServeSettings(max_batch=8, max_wait_ms=25, decode_workers=2))
"""


def start_faulty_server(package: Path, log_path: Path) -> Server:
    return Server([sys.executable, "-c", FAULTY_SERVER, str(package)], log_path)


@pytest.fixture(scope="module")
def fault_server(vit_package, tmp_path_factory):
    server = start_faulty_server(vit_package, tmp_path_factory.mktemp("fault-server") / "server.log")
    yield server
    server.stop()


# --- 1. a poison client among honest ones -------------------------------------------------------------------


def poison_images() -> dict[str, tuple[bytes, int, str]]:
    """Images that fail, each with the status and error type(s) it must get. The decoder ones raise outside OSError
    in Pillow: NotImplementedError, OverflowError, RuntimeError."""
    valid = png(np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    dds = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(dds, format="DDS")
    dds_unknown_format = bytearray(dds.getvalue())
    dds_unknown_format[80:84] = b"\0\0\0\0"  # pixel format flags: none Pillow knows -> NotImplementedError
    psd_overflow = b"8BPS" + struct.pack(">H6sHIIHH", 1, b"\0" * 6, 3, 2**31 - 1, 2**31 - 1, 8, 3) + b"\0" * 64
    poisons = {
        "dds-unknown-pixel-format": (bytes(dds_unknown_format), 415, "ImageDecodeError"),
        "psd-2^62-pixels": (psd_overflow, 415, "ImageDecodeError"),  # OverflowError
        "truncated-png": (valid[: len(valid) // 2], 415, "ImageDecodeError"),
        "not-an-image": (b"GET / HTTP/1.1\r\n" * 20, 415, "ImageDecodeError"),
        "empty": (b"", 422, "EmptyImageError BadRequestError"),  # as a file, as a raw body
        "header-bomb": (png_with_header(100_000, 100_000), 413, "ImageTooLargeError"),
        "breaks-the-model": (png(solid(MAGENTA)), 500, "InternalServerError"),
    }
    if features.check("avif"):
        avif = io.BytesIO()
        Image.new("RGB", (16, 16), (200, 30, 30)).save(avif, format="AVIF")
        avif_without_item = avif.getvalue().replace(b"pitm", b"xxxx", 1)  # RuntimeError
        poisons["avif-without-image-item"] = (avif_without_item, 415, "ImageDecodeError")
    return poisons


def test_a_poison_client_does_not_hurt_honest_clients(fault_server, honest):
    poisons = poison_images()
    clients, each, deadline = 4, 25, time.monotonic() + 60
    honest_failures: list[str] = []
    honest_answered = Counter()
    poison_outcomes: Counter[tuple[str, str]] = Counter()  # (poison, what went wrong or "as expected")
    stop = threading.Event()

    def honest_client(index: int) -> None:
        for turn in range(each):
            if time.monotonic() > deadline:
                honest_failures.append("deadline passed")
                return
            image = honest[(index + turn) % len(honest)]
            if turn % 3 == 2:  # the seed API too
                body = json.dumps({"image": base64.b64encode(image.data).decode()}).encode()
                reply = fault_server.request("POST", "/predict/", body, {"Content-Type": "application/json"})
            else:
                reply = post_image(fault_server, image.data)
            problem = check_verdict(reply, image)
            honest_answered["ok" if problem is None else "wrong"] += 1
            if problem:
                honest_failures.append(problem)

    def poison_once(turn: int) -> tuple[str, str]:
        name, (data, status, error) = list(poisons.items())[turn % len(poisons)]
        if turn % 3 == 0:
            reply = post_image(fault_server, data)
        elif turn % 3 == 1:
            body, headers = multipart([("file", f"{name}.png", data)])
            reply = fault_server.request("POST", "/api/v1/predict", body, headers)
        else:  # the poison shares its request with a good image, which must still get its answer
            image = honest[turn % len(honest)]
            body, headers = multipart([("file", f"{name}.png", data), ("file", "honest.png", image.data)])
            reply = fault_server.request("POST", "/api/v1/predict", body, headers)
            if reply.status != 200:
                return name, f"mixed request: status {reply.status}"
            (bad, good) = reply.json()
            got = bad.get("error", {}).get("type")
            problem = check_verdict(Reply(200, {}, json.dumps(good).encode(), 0), image)
            return name, (f"mixed request: {got} not in {error}" if got not in error.split() else
                          f"mixed request: the good image: {problem}" if problem else "as expected")
        got = reply.json().get("error", {}).get("type") if reply.status >= 400 else None
        return name, "as expected" if reply.status == status and got in error.split() else f"{reply.status} {got}"

    def poison_client() -> None:
        for turn in range(10_000):  # bounded; in practice it stops when the honest clients are done
            if stop.is_set() or time.monotonic() > deadline:
                return
            poison_outcomes[poison_once(turn)] += 1

    threads = [threading.Thread(target=honest_client, args=(index,)) for index in range(clients)]
    poisoner = threading.Thread(target=poison_client)
    started = time.perf_counter()
    for thread in (poisoner, *threads):
        thread.start()
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()) + 30)
    stop.set()
    poisoner.join(60)
    seconds = time.perf_counter() - started

    answered = honest_answered["ok"] / (clients * each)
    print(f"\npoison client: honest clients {honest_answered['ok']}/{clients * each} answered 200 with the "
          f"reference's label ({answered:.1%}) in {seconds:.1f} s; {sum(poison_outcomes.values())} poison "
          f"requests: {dict(poison_outcomes)}")
    assert answered >= 0.99, honest_failures[:10]
    wrong = {key: count for key, count in poison_outcomes.items() if key[1] != "as expected"}
    assert not wrong, wrong
    assert {name for name, _ in poison_outcomes} == set(poisons), "the poison client didn't get round"
    log = fault_server.log()
    # Only the injected model failure is the server's own fault: the log may tell its story, nothing else.
    assert all("injected model failure" in end for end in tracebacks(log)), tracebacks(log)
    assert "retrying each image alone" in log, "no batch mixed the model poison with honest images"
    assert all(status != 500 or path == "/api/v1/predict" for _, path, status in access_lines(log))


# --- 2. decompression bombs, concurrently -------------------------------------------------------------------


@dataclass
class Barrage:
    """What a dozen bombs and three over-the-cap images sent at once met, with normal requests in between."""

    bombs: list[Reply]
    refused: list[Reply]
    normal: list[tuple[Reply, Honest, int]]  # and how many bombs were answered when it was
    seconds: float  # from the first send until every bomb was answered
    rss_before: float
    rss_samples: list[float]  # MB, every 20 ms while the bombs were in flight


def bomb_barrage(server: Server, under: bytes, over: bytes, normal_images: list[Honest],
                 wait_for_decoding: bool = False) -> Barrage:
    before = server.memory_mb()["VmRSS"]
    bombs: list[Reply] = []
    refused: list[Reply] = []
    sampling, samples = threading.Event(), [before]

    def sample() -> None:
        while not sampling.wait(0.02):
            samples.append(server.memory_mb()["VmRSS"])

    threading.Thread(target=sample, daemon=True).start()
    senders = [threading.Thread(target=lambda: bombs.append(post_image(server, under, 180))) for _ in range(12)]
    senders += [threading.Thread(target=lambda: refused.append(post_image(server, over))) for _ in range(3)]
    started = time.perf_counter()
    for sender in senders:
        sender.start()
    if wait_for_decoding:
        assert wait_until(lambda: server.health().json()["decoding_pixels"] > 0, 30), "no bomb started decoding"
    normal = [(post_image(server, image.data), image, len(bombs)) for image in normal_images]
    for sender in senders:
        sender.join(240)
    seconds = time.perf_counter() - started
    sampling.set()
    return Barrage(bombs, refused, normal, seconds, before, samples)


def test_concurrent_bombs_neither_stall_others_nor_hold_memory(cli_server, honest):
    """A dozen valid PNGs just under the pixel cap at once, and some just over it.

    Bounds: the bombs just over the cap get 413 from their header, and a normal request is answered, each within a
    quarter of the time the bombs take to decode (were either stuck behind the bombs, they would take about all of
    it); the server's peak RSS stays within 8 bytes per pixel of the decode budget (RGBA plus its RGB copy is 7)
    plus 100 MB above its RSS before the bombs; afterwards its RSS is back within 100 MB of that.
    """
    side = math.isqrt(BOMB_CAP)
    under, over = rgba_png_bomb(side, side), rgba_png_bomb(side + 1, side + 1)
    budget = BOMB_CAP * 3 // 2  # ServeSettings' default decode budget
    barrage = bomb_barrage(cli_server, under, over, [honest[turn % len(honest)] for turn in range(5)],
                           wait_for_decoding=True)
    bombs, refused, normal, bombs_s, before = (barrage.bombs, barrage.refused, barrage.normal, barrage.seconds,
                                               barrage.rss_before)
    peak = max(cli_server.memory_mb()["VmHWM"], *barrage.rss_samples)
    after = wait_until(lambda: cli_server.memory_mb()["VmRSS"] <= before + 100 and cli_server.memory_mb()["VmRSS"],
                       5) or cli_server.memory_mb()["VmRSS"]

    latencies = [reply.seconds for reply, _, _ in normal]
    print(f"\nbombs: 12 x {side}x{side} RGBA PNG ({len(under) / 1e3:.0f} KB each, cap {BOMB_CAP / 1e6:g} MP, "
          f"{DECODE_WORKERS} decode threads) decoded in {bombs_s:.1f} s; normal requests meanwhile "
          f"{min(latencies) * 1e3:.0f}-{max(latencies) * 1e3:.0f} ms; over the cap: "
          f"{', '.join(f'{reply.status} in {reply.seconds * 1e3:.0f} ms' for reply in refused)}; RSS before "
          f"{before:.0f} MB, peak {peak:.0f} MB, after {after:.0f} MB")
    assert len(bombs) == 12 and all(reply.status == 200 for reply in bombs), [reply.status for reply in bombs]
    assert [reply.status for reply in refused] == [413] * 3
    assert all(reply.json()["error"]["type"] == "ImageTooLargeError" for reply in refused)
    assert max(reply.seconds for reply in refused) <= bombs_s / 4
    assert all(check_verdict(reply, image) is None for reply, image, _ in normal), [r.body for r, _, _ in normal]
    assert max(latencies) <= bombs_s / 4, (latencies, bombs_s)
    assert normal[-1][2] < 12, "the bombs were all done before the normal requests: nothing was measured"
    assert peak - before <= 8 * budget / 2**20 + 100, (before, peak)
    assert after - before <= 100, (before, after)
    assert "Traceback" not in cli_server.log()


def webp_bomb(width: int, height: int) -> bytes:
    """A lossless WebP of one colour: a few hundred bytes, and about 16 bytes a pixel of memory to decode."""
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (40, 90, 160)).save(buffer, format="WEBP", lossless=True)
    return buffer.getvalue()


def test_webp_bombs_are_charged_their_decoding_memory(cli_server, honest):
    """A dozen tiny lossless WebPs just under the cap at their decode cost (2 x pixels: 6 MP) at once, and some
    just over it. Each costs about 16 bytes a pixel to decode, twice a PNG's; charged as PNGs, three would decode at
    once and peak RSS would pass the bound. Bounds: the PNG bombs' (8 bytes per pixel of the budget plus 100 MB
    above the RSS before); those over the cap get 413 from their header, normal requests get their verdicts."""
    side = math.isqrt(BOMB_CAP // 2)
    under, over = webp_bomb(side, side), webp_bomb(side + 1, side + 1)
    budget = BOMB_CAP * 3 // 2
    barrage = bomb_barrage(cli_server, under, over, honest[:3])
    bombs, refused, bombs_s, before = barrage.bombs, barrage.refused, barrage.seconds, barrage.rss_before
    normal = [(reply, image) for reply, image, _ in barrage.normal]
    peak = max(barrage.rss_samples)  # sampled: VmHWM still holds the PNG bombs' peak, taken by this server first
    latencies = [reply.seconds for reply, _ in normal]
    print(f"\nwebp bombs: 12 x {side}x{side} lossless WebP ({len(under)} bytes each, charged 2 x "
          f"{side * side / 1e6:.1f} MP against a {BOMB_CAP / 1e6:g} MP cap) decoded in {bombs_s:.1f} s; normal "
          f"requests meanwhile {min(latencies) * 1e3:.0f}-{max(latencies) * 1e3:.0f} ms; over the cap: "
          f"{', '.join(f'{reply.status} in {reply.seconds * 1e3:.0f} ms' for reply in refused)}; RSS before "
          f"{before:.0f} MB, peak {peak:.0f} MB")
    assert len(bombs) == 12 and all(reply.status == 200 for reply in bombs), [reply.status for reply in bombs]
    assert [reply.status for reply in refused] == [413] * 3
    assert all("costs as much to decode" in reply.json()["error"]["message"] for reply in refused)
    assert all(check_verdict(reply, image) is None for reply, image in normal), [r.body for r, _ in normal]
    assert peak - before <= 8 * budget / 2**20 + 100, (before, peak)
    assert "Traceback" not in cli_server.log()


def test_scan_and_header_bombs_are_refused_promptly_and_hold_no_memory(cli_server, honest):
    """Bombs whose cost grows with something other than pixels (issue 22): 4 clients each sending, twice, a 2 MB
    JPEG of 500 k empty APP1 segments, one of COM segments, a PNG of 170 k private chunks and a 1 MP JPEG of
    20,000 repeated scans, while normal requests go on. (2 MB, not an attacker's 20: each body must arrive within
    this server's 1.5 s body timeout on a loaded machine; the walk stops at its cap either way.) On main each took
    a decode thread for about a second or, for the scans, 11 s, and the segment bombs some 65 MB each (four clients
    looping a 20 MB one drove a server from 99 MB to 2,976 MB). Bounds: each bomb gets its 415 within PROMPT_S,
    normal requests their verdicts, and the server's peak RSS stays within what the bodies themselves take (4 at
    once, each held about 3 times while read and opened) plus 100 MB."""
    from hostile import jpeg_scan_bomb, jpeg_segment_bomb, png_chunk_bomb

    bombs = {"APP1": jpeg_segment_bomb(500_000, 0xE1), "COM": jpeg_segment_bomb(500_000, 0xFE),
             "PNG chunks": png_chunk_bomb(170_000), "scans": jpeg_scan_bomb(20_000)}
    largest = max(len(data) for data in bombs.values())
    before = cli_server.memory_mb()["VmRSS"]
    sampling, samples = threading.Event(), [before]

    def sample() -> None:
        while not sampling.wait(0.02):
            samples.append(cli_server.memory_mb()["VmRSS"])

    replies: list[tuple[str, Reply]] = []
    failures: list[str] = []

    def attacker() -> None:
        for _round in range(2):
            for name, data in bombs.items():
                try:
                    replies.append((name, post_image(cli_server, data)))
                except OSError as exc:  # the server dropped the connection: a failure to report, not a dead thread
                    failures.append(f"{name}: {type(exc).__name__}: {exc}")

    threading.Thread(target=sample, daemon=True).start()
    attackers = [threading.Thread(target=attacker) for _ in range(4)]
    for thread in attackers:
        thread.start()
    normal = [(post_image(cli_server, image.data), image) for image in honest]
    for thread in attackers:
        thread.join(120)
    sampling.set()
    peak = max(samples)
    assert not failures and len(replies) == 32, failures
    print(f"\nscan and header bombs: {len(replies)} sent by 4 clients ("
          f"{', '.join(f'{name} {len(data) / 1e6:.1f} MB' for name, data in bombs.items())}); answered "
          f"{dict(Counter(reply.status for _, reply in replies))} in {min(r.seconds for _, r in replies) * 1e3:.0f}-"
          f"{max(r.seconds for _, r in replies) * 1e3:.0f} ms; normal requests meanwhile "
          f"{min(r.seconds for r, _ in normal) * 1e3:.0f}-{max(r.seconds for r, _ in normal) * 1e3:.0f} ms; RSS "
          f"before {before:.0f} MB, peak {peak:.0f} MB")
    assert all(reply.status == 415 for _, reply in replies), [(name, reply.status) for name, reply in replies]
    assert all(reply.json()["error"]["type"] == "ImageDecodeError" for _, reply in replies)
    assert max(reply.seconds for _, reply in replies) <= PROMPT_S
    assert all(check_verdict(reply, image) is None for reply, image in normal), [r.body for r, _ in normal]
    assert peak - before <= 4 * 3 * largest / 2**20 + 100, (before, peak)
    assert "Traceback" not in cli_server.log()


# --- 3. slow and vanishing clients --------------------------------------------------------------------------


def trickle(server: Server, at_once: bytes, trickled: bytes, pause: float = 0.25) -> tuple[bytes, float]:
    """Send ``at_once``, then ``trickled`` a byte every ``pause`` seconds: what the server answered, and when it
    closed the connection (seconds after connecting), or inf if it didn't within the timeouts and slack."""
    sock = server.connect()
    started, answer = time.monotonic(), b""
    sock.settimeout(pause)
    try:
        sock.sendall(at_once)
        for byte in trickled[: int((HEADER_TIMEOUT_S + BODY_TIMEOUT_S + CLOSE_SLACK_S) / pause)]:
            try:
                sock.sendall(bytes([byte]))
            except OSError:  # closed: keep what it said
                break
            try:
                data = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if not data:
                return answer, time.monotonic() - started
            answer += data
        closed = closed_by_peer(sock, CLOSE_SLACK_S)
        return answer, time.monotonic() - started if closed else math.inf
    finally:
        sock.close()


def test_slow_clients_are_cut_off_and_others_served(cli_server, honest):
    """Bounds: a connection trickling its headers (or sending nothing) is closed after the header timeout, and
    one trickling its body gets 408 after the body timeout; each within CLOSE_SLACK_S of its timeout."""
    mark = len(cli_server.log())
    head = f"POST /api/v1/predict HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: image/png\r\n".encode()
    cases = {  # (sent at once, trickled, the timeout that must end it)
        "headers trickled": (b"", head + b"Content-Length: 100\r\n\r\n", HEADER_TIMEOUT_S),
        "nothing sent": (b"", b"", HEADER_TIMEOUT_S),
        "body trickled": (head + b"Content-Length: 5000\r\n\r\n", b"x" * 5000, BODY_TIMEOUT_S),
        # a body no route reads: answered, then the rest trickles in as if it were the next request's headers
        "body nobody reads": (b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n", b"x" * 5000,
                              HEADER_TIMEOUT_S),
    }
    outcomes: dict[str, tuple[bytes, float]] = {}

    def attack(name: str) -> None:
        at_once, trickled, _ = cases[name]
        if not at_once + trickled:  # connect and say nothing
            sock = cli_server.connect()
            started = time.monotonic()
            closed = closed_by_peer(sock, HEADER_TIMEOUT_S + CLOSE_SLACK_S)
            outcomes[name] = (b"", time.monotonic() - started if closed else math.inf)
            sock.close()
        else:
            outcomes[name] = trickle(cli_server, at_once, trickled)

    attackers = [threading.Thread(target=attack, args=(name,)) for name in cases]
    for attacker in attackers:
        attacker.start()
    served = []
    for turn in range(6):  # meanwhile, the others
        image = honest[turn % len(honest)]
        served.append(check_verdict(post_image(cli_server, image.data), image))
        time.sleep(0.2)
    for attacker in attackers:
        attacker.join(HEADER_TIMEOUT_S + BODY_TIMEOUT_S + 3 * CLOSE_SLACK_S)

    print("\nslow clients: " + "; ".join(f"{name}: {answer.split(b' ', 2)[1].decode() if answer else 'closed'}"
                                        f" after {seconds:.2f} s" for name, (answer, seconds) in outcomes.items()))
    assert served == [None] * len(served), served
    for name, (_, _, timeout) in cases.items():
        # The server's clock starts when it accepts, a moment before connect() returns here: a few ms early is on time.
        assert timeout - 0.05 <= outcomes[name][1] <= timeout + CLOSE_SLACK_S, (name, outcomes[name])
    assert outcomes["body trickled"][0].startswith(b"HTTP/1.1 408 "), outcomes
    # ...and says it closes the connection: what is left of the body must not be read as the next request
    assert b"\r\nconnection: close\r\n" in outcomes["body trickled"][0].lower(), outcomes
    assert outcomes["body nobody reads"][0].startswith(b"HTTP/1.1 200 "), outcomes
    assert not outcomes["headers trickled"][0] and not outcomes["nothing sent"][0], outcomes
    log = cli_server.log()[mark:]
    assert "Traceback" not in log and all(status != 500 for _, _, status in access_lines(log)), log
    # the operator learns why those connections ended: two slow headers, one silent, one body nobody read
    assert log.count(f"closing a connection whose request headers took over {HEADER_TIMEOUT_S:g} s") == 3, log


def test_vanishing_clients_leave_no_trace(cli_server, honest):
    """Clients that vanish mid-upload, while their image waits or decodes, and before their answer: no traceback,
    no 500 in the log, the decode budget and the queue are given back (within 30 s), others are served."""
    mark = len(cli_server.log())
    side = math.isqrt(BOMB_CAP)
    bomb = rgba_png_bomb(side, side)  # takes long enough to decode that its client is gone by the time it is
    request = f"POST /api/v1/predict HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: image/png\r\n".encode()

    def vanish(head: bytes, sent: bytes, abrupt: bool, after: float = 0.0) -> None:
        sock = cli_server.connect()
        sock.sendall(head + sent)
        time.sleep(after)
        reset(sock) if abrupt else sock.close()

    for abrupt in (False, True):
        vanish(request + b"Content-Length: 200000\r\n\r\n", honest[0].data[:1000], abrupt)  # mid-upload
        vanish(request + f"Content-Length: {len(bomb)}\r\n\r\n".encode(), bomb, abrupt)  # waiting to decode
        vanish(request + f"Content-Length: {len(bomb)}\r\n\r\n".encode(), bomb, abrupt, after=0.3)  # decoding
        image = honest[1].data  # answered in milliseconds: gone just before or as the answer is written
        vanish(request + f"Content-Length: {len(image)}\r\n\r\n".encode(), image, abrupt, after=0.01)

    def idle() -> bool:
        health = cli_server.health().json()
        return health["decoding_pixels"] == 0 and health["queue_depth"] == 0

    settled = wait_until(idle, 30, pause=0.2)
    reply = post_image(cli_server, honest[2].data)
    log = cli_server.log()[mark:]
    statuses = Counter(status for _, _, status in access_lines(log))
    print(f"\nvanishing clients: the server logged {dict(statuses)}")
    assert settled, cli_server.health().json()
    assert check_verdict(reply, honest[2]) is None
    assert "Traceback" not in log and statuses[500] == 0, log
    assert statuses[499] >= 2, log  # the two mid-upload ones at least, logged as nginx's "client closed request"


def test_connections_beyond_the_cap_get_503(cli_server):
    """--max-connections N: N connections at once are served, the next one gets 503; once they close, all is
    well again (within 10 s)."""
    held: list[socket.socket] = []

    def hold_one() -> bytes:  # a kept-alive connection, idle after its request: it counts until it closes
        sock = cli_server.connect(10)
        sock.sendall(f"GET /healthz HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
        held.append(sock)
        return sock.recv(65536).split(b"\r\n", 1)[0]

    def probe() -> int:
        return cli_server.request("GET", "/healthz", timeout=10).status

    try:
        answers = [hold_one() for _ in range(MAX_CONNECTIONS - 1)]
        with_room = probe()  # the N-th connection
        answers.append(hold_one())
        beyond = probe()  # the (N+1)-th
    finally:
        for sock in held:
            sock.close()
    recovered = wait_until(lambda: probe() == 200, 10, pause=0.2)
    assert answers == [b"HTTP/1.1 200 OK"] * MAX_CONNECTIONS
    assert (with_room, beyond) == (200, 503)
    assert recovered


# --- 4. the model thread dying ------------------------------------------------------------------------------


def test_a_dying_worker_is_restarted_and_nothing_hangs(fault_server, honest):
    """An image that kills the model thread (SystemExit): /healthz counts the restarts, its batch-mates are retried
    alone on the restarted thread and get their verdicts, only the killer gets 500, and the server carries on."""
    restarts = fault_server.health().json()["worker_restarts"]
    replies: list[tuple[Reply, Honest]] = []

    def honest_client(index: int) -> None:
        for turn in range(6):
            image = honest[(index + turn) % len(honest)]
            replies.append((post_image(fault_server, image.data, timeout=60), image))

    clients = [threading.Thread(target=honest_client, args=(index,)) for index in range(3)]
    for client in clients:
        client.start()
    killer = post_image(fault_server, png(solid(CYAN)), timeout=60)
    for client in clients:
        client.join(120)
    health = fault_server.health()
    after = post_image(fault_server, honest[0].data)

    statuses = Counter(reply.status for reply, _ in replies)
    print(f"\ndying worker: the killer got {killer.status}; honest requests meanwhile {dict(statuses)}; "
          f"/healthz {health.status} {health.json()}")
    assert killer.status == 500 and killer.json()["error"]["type"] == "InternalServerError"
    assert len(replies) == 18, "a request hung"
    assert all(check_verdict(reply, image) is None for reply, image in replies if reply.status != 500)
    assert statuses == {200: 18}, "an honest image failed beside the killer"
    assert health.status == 200 and health.json()["worker_alive"] is True
    # One death if the killer ran alone; two if it shared a batch (the batch, then the killer alone on retry).
    assert health.json()["worker_restarts"] in (restarts + 1, restarts + 2)
    assert check_verdict(after, honest[0]) is None
    ends = tracebacks(fault_server.log())
    assert all("injected worker death" in end or "injected model failure" in end for end in ends), ends


def test_a_worker_that_keeps_dying_is_reported_and_refused(vit_package, tmp_path, honest):
    """A crash loop leaves the worker stopped: /healthz answers 503 and requests get 503 at once (PROMPT_S)."""
    from fastvit_detect.server import RESTART_LIMIT

    server = start_faulty_server(vit_package, tmp_path / "server.log")
    try:
        killers = [post_image(server, png(solid(CYAN)), timeout=60).status for _ in range(RESTART_LIMIT)]
        health = server.health()
        refused = [post_image(server, image.data, timeout=PROMPT_S * 2) for image in honest]
    finally:
        server.stop()
    print(f"\ncrash loop: {RESTART_LIMIT} deaths answered {Counter(killers)}; then /healthz {health.status} "
          f"{health.json()}; requests {Counter(reply.status for reply in refused)} in at most "
          f"{max(reply.seconds for reply in refused) * 1e3:.0f} ms")
    assert killers == [500] * RESTART_LIMIT
    assert health.status == 503 and health.json()["worker_alive"] is False
    assert health.json()["worker_restarts"] == RESTART_LIMIT - 1
    for reply in refused:
        assert reply.status == 503 and reply.headers["retry-after"] == "1" and reply.seconds <= PROMPT_S
        assert reply.json()["error"]["type"] == "ServerBusyError"


def test_batch_mates_of_a_worker_killer_are_retried_alone_and_answered():
    """The model thread dies inside a batch of five: the four others still get their results (from the restarted
    thread, one at a time), the killer gets the error, and nothing else is lost."""
    from fastvit_detect.server import MicroBatcher

    calls: list[list[str]] = []

    def run(items):
        calls.append(list(items))
        if "killer" in items:
            raise SystemExit("injected worker death")
        return [item.upper() for item in items]

    batcher = MicroBatcher(run, max_batch=8, max_wait_ms=200, queue_size=16)
    try:
        items = ["a", "b", "killer", "c", "d"]
        futures = batcher.submit(items)
        outcomes = []
        for future in futures:
            try:
                outcomes.append(future.result(10))
            except RuntimeError as exc:
                outcomes.append(str(exc))
        assert calls[0] == items  # one batch: the culprit was unknown when the thread died
        assert outcomes == ["A", "B", "SystemExit('injected worker death')", "C", "D"]
        assert batcher.worker_restarts == 2 and batcher.healthy  # the batch, then the killer alone
        assert batcher.submit(["e"])[0].result(10) == "E"
    finally:
        batcher.close(timeout=5)


def test_a_batcher_left_stopped_refuses_work_while_its_thread_winds_down():
    """After the last restart the dying thread still runs a moment; what is submitted then must fail, not wait
    forever for a worker that will never come."""
    from fastvit_detect.errors import ServerBusyError
    from fastvit_detect.server import RESTART_LIMIT, MicroBatcher

    class Lingering(MicroBatcher):
        def _run(self, index: int) -> None:  # the OS may well deschedule a thread between its last lines
            super()._run(index)
            time.sleep(2)

    def die(_items):
        raise SystemExit("injected worker death")

    batcher = Lingering(die, max_batch=1, max_wait_ms=0, queue_size=4)
    try:
        for _ in range(RESTART_LIMIT):
            with pytest.raises(RuntimeError, match="SystemExit"):
                batcher.submit(["doomed"])[0].result(10)
        time.sleep(0.5)  # the last death has given up by now; its thread lingers
        with pytest.raises(ServerBusyError):
            batcher.submit(["late"])[0].result(1)
        assert not batcher.healthy
    finally:
        batcher.close(timeout=5)


# --- 5. odd requests ----------------------------------------------------------------------------------------


def test_head_answers_like_get_without_a_body(cli_server):
    for path in ("/", "/healthz", "/api/v1/model"):
        get, head = cli_server.request("GET", path), cli_server.request("HEAD", path)
        assert (head.status, head.body) == (200, b""), (path, head)
        assert head.headers["content-type"] == get.headers["content-type"], path
        if path != "/healthz":  # its counters move between the two
            assert head.headers["content-length"] == get.headers["content-length"] == str(len(get.body)), path


def test_absurd_bodies_get_4xx_at_once(cli_server, honest):
    """Each answered with its 4xx within PROMPT_S, no traceback, no 500; the server then still serves."""
    mark = len(cli_server.log())
    image = honest[0].data
    as_json = {"Content-Type": "application/json"}
    many_fields = multipart([(f"field{index}", None, b"x") for index in range(5000)] + [("file", "a.png", image)])
    many_files = multipart([("file", f"{index}.png", image) for index in range(2000)])
    cases = {  # name: (path, body, headers, status)
        "5000-digit integer": ("/predict/", b'{"image": ' + b"9" * 5000 + b"}", as_json, 422),
        "100k-deep nesting": ("/predict/", b'{"image": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", as_json, 422),
        "image as a number": ("/predict/", b'{"image": 1e999}', as_json, 422),
        "5000 fields": ("/api/v1/predict", *many_fields, 422),
        "2000 files": ("/api/v1/predict", *many_files, 422),
        "1 MB field name": ("/api/v1/predict", *multipart([("n" * 2**20, "a.png", image)]), 422),
        "1 MB file name": ("/api/v1/predict", *multipart([("file", "n" * 2**20, image)]), 422),
        "100k parts, no content": ("/api/v1/predict", b"--b\r\n\r\n\r\n" * 100_000 + b"--b--\r\n",
                                   {"Content-Type": "multipart/form-data; boundary=b"}, 422),
        "no boundary": ("/api/v1/predict", image, {"Content-Type": "multipart/form-data"}, 422),
        "never-ending part": ("/api/v1/predict", b"--b\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\n"
                              + b"x" * 5_000_000, {"Content-Type": "multipart/form-data; boundary=b"}, 422),
    }
    replies = {name: cli_server.request("POST", path, body, headers)
               for name, (path, body, headers, _) in cases.items()}
    after = post_image(cli_server, image)
    print("\nabsurd bodies: " + "; ".join(f"{name}: {reply.status} in {reply.seconds * 1e3:.0f} ms"
                                          for name, reply in replies.items()))
    assert {name: reply.status for name, reply in replies.items()} == {name: case[3] for name, case in cases.items()}
    assert all(reply.seconds <= PROMPT_S for reply in replies.values()), replies
    assert check_verdict(after, honest[0]) is None
    log = cli_server.log()[mark:]
    assert "Traceback" not in log and all(status != 500 for _, _, status in access_lines(log)), log


def test_a_client_gone_before_its_headers_ended_is_not_closed_again_later(cli_server):
    """A connection that ends while its headers are still coming stops its header timer: no "closing a
    connection" line for it once the header timeout has passed (the log would blame a client already gone)."""
    mark = len(cli_server.log())
    for abrupt in (False, True):
        sock = cli_server.connect()
        sock.sendall(f"POST /api/v1/predict HTTP/1.1\r\nHost: {HOST}\r\n".encode())
        time.sleep(0.05)
        reset(sock) if abrupt else sock.close()
    time.sleep(HEADER_TIMEOUT_S + CLOSE_SLACK_S)
    assert "closing a connection whose request headers" not in cli_server.log()[mark:]


def test_each_request_on_a_kept_alive_connection_gets_its_own_header_deadline(cli_server):
    """The header deadline runs from a request's first byte: a kept-alive client's second request, begun 0.6 of
    the timeout after its first and finished 0.6 later, is answered (1.2 timeouts after the first request began,
    but 0.6 after its own began). A deadline left armed from the first request would close it."""
    def response(sock: socket.socket) -> bytes:  # one whole response: its headers, then Content-Length bytes
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                return data  # closed by the server
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
        while len(body) < length:
            body += sock.recv(65536)
        return head

    sock = cli_server.connect()
    sock.settimeout(30)
    try:
        request = f"GET /healthz HTTP/1.1\r\nHost: {HOST}\r\n".encode()
        sock.sendall(request + b"\r\n")
        assert response(sock).startswith(b"HTTP/1.1 200")
        time.sleep(0.6 * HEADER_TIMEOUT_S)
        sock.sendall(request)  # the second request's headers, all but their end
        time.sleep(0.6 * HEADER_TIMEOUT_S)
        sock.sendall(b"\r\n")
        second = response(sock)
        assert second.startswith(b"HTTP/1.1 200"), second[:100]
    finally:
        sock.close()
