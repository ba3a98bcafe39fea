"""Load test of ``fastvit-detect serve`` on loopback: throughput and latency with and without micro-batching.

    python benchmarks/loadtest.py --model artifacts/demo/package                 # 8 clients, 60 s per setting
    python benchmarks/loadtest.py --model DIR --max-batch 1 4 8 --duration 30 --json out.json
    python benchmarks/loadtest.py --url http://127.0.0.1:8000 --duration 20       # a server already running

For each ``--max-batch`` setting it starts the server on 127.0.0.1 (a free port), warms it up, then runs
``--clients`` concurrent clients, each posting one image after another over a keep-alive connection, until
``--duration`` seconds or ``--max-requests`` requests have passed, and stops the server. It reports requests/s,
p50/p90/p99 latency, errors, and the mean batch the server ran (from /healthz). Traffic goes to loopback only:
``--url`` must name 127.0.0.0/8, localhost or [::1].

Clients and server share the machine's cores: on a small machine the figures compare settings, not hardware.
"""

from __future__ import annotations

import argparse
import http.client
import io
import ipaddress
import json
import re
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
from PIL import Image

SERVER_START_TIMEOUT_S = 120
REQUEST_TIMEOUT_S = 60
WARM_UP_REQUESTS = 4


@dataclass
class Result:
    setting: str
    clients: int
    duration_s: float
    requests: int
    errors: int
    busy_503: int
    requests_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_batch: float | None


def synthetic_photo(width: int = 800, height: int = 600, seed: int = 0) -> bytes:
    """A photo-sized JPEG with smooth content and noise, so decoding costs what a real upload's does."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([np.sin(x / 37), np.cos(y / 23), np.sin((x + y) / 51)], axis=-1) * 80 + 128
    pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def require_loopback(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if parts.scheme != "http" or not loopback:
        raise SystemExit(f"loadtest: refusing {url}: only http:// on loopback (127.0.0.0/8, localhost, [::1])")
    return host, parts.port or 80


class Server:
    """``fastvit-detect serve`` in a subprocess on 127.0.0.1, port chosen by the OS (read from its log)."""

    def __init__(self, model: str, max_batch: int, extra: list[str]) -> None:
        # Open for the server's lifetime; closed in stop().
        self.log = tempfile.NamedTemporaryFile(prefix="loadtest-server-", suffix=".log", delete=False)  # noqa: SIM115
        command = [sys.executable, "-m", "fastvit_detect", "serve", "--model", model, "--host", "127.0.0.1",
                   "--port", "0", "--max-batch", str(max_batch), *extra]
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT)
        self.url = self._wait_for_address()

    def _wait_for_address(self) -> str:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while time.monotonic() < deadline:
            text = Path(self.log.name).read_text(errors="replace")
            if match := re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", text):
                return match.group(1)
            if self.process.poll() is not None:
                raise SystemExit(f"loadtest: the server exited:\n{text}")
            time.sleep(0.1)
        self.stop()
        raise SystemExit("loadtest: the server didn't start in time")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()
        Path(self.log.name).unlink(missing_ok=True)


def get_json(host: str, port: int, path: str) -> dict:
    connection = http.client.HTTPConnection(host, port, timeout=REQUEST_TIMEOUT_S)
    try:
        connection.request("GET", path)
        return json.loads(connection.getresponse().read())
    finally:
        connection.close()


def run_clients(host: str, port: int, images: list[bytes], clients: int, duration_s: float,
                max_requests: int) -> tuple[list[float], int, int, float]:
    """Latencies (ms) of successful requests, error count, 503 count, and the wall time taken."""
    latencies: list[float] = []
    counts = {"errors": 0, "busy": 0, "issued": 0}
    lock = threading.Lock()
    started = time.monotonic()
    deadline = started + duration_s

    def client(index: int) -> None:
        connection = http.client.HTTPConnection(host, port, timeout=REQUEST_TIMEOUT_S)
        sent = 0
        try:
            while time.monotonic() < deadline:
                with lock:
                    if counts["issued"] >= max_requests:
                        return
                    counts["issued"] += 1
                image = images[(index + sent) % len(images)]
                sent += 1
                began = time.perf_counter()
                try:
                    connection.request("POST", "/api/v1/predict", body=image,
                                       headers={"Content-Type": "image/jpeg"})
                    response = connection.getresponse()
                    response.read()
                    status = response.status
                except (OSError, http.client.HTTPException):
                    status = None
                    connection.close()  # reconnects on the next request
                elapsed_ms = 1000 * (time.perf_counter() - began)
                with lock:
                    if status == 200:
                        latencies.append(elapsed_ms)
                    else:
                        counts["errors"] += 1
                        counts["busy"] += status == 503
        finally:
            connection.close()

    threads = [threading.Thread(target=client, args=(index,), daemon=True) for index in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(duration_s + 2 * REQUEST_TIMEOUT_S)
    return latencies, counts["errors"], counts["busy"], time.monotonic() - started


def measure(url: str, setting: str, images: list[bytes], args: argparse.Namespace) -> Result:
    host, port = require_loopback(url)
    run_clients(host, port, images, 1, 600, WARM_UP_REQUESTS)  # first session calls allocate and pick kernels
    before = get_json(host, port, "/healthz")
    latencies, errors, busy, wall = run_clients(host, port, images, args.clients, args.duration, args.max_requests)
    after = get_json(host, port, "/healthz")
    batches = after.get("batches", 0) - before.get("batches", 0)
    served = after.get("images", 0) - before.get("images", 0)
    p50, p90, p99 = (float(np.percentile(latencies, q)) if latencies else float("nan") for q in (50, 90, 99))
    return Result(setting=setting, clients=args.clients, duration_s=round(wall, 1), requests=len(latencies) + errors,
                  errors=errors, busy_503=busy, requests_per_s=round(len(latencies) / wall, 2),
                  p50_ms=round(p50, 1), p90_ms=round(p90, 1), p99_ms=round(p99, 1),
                  mean_batch=round(served / batches, 2) if batches else None)


def print_table(results: list[Result]) -> None:
    print(f"{'setting':<16} {'clients':>7} {'requests':>8} {'errors':>6} {'req/s':>7} {'p50 ms':>8} {'p90 ms':>8} "
          f"{'p99 ms':>8} {'batch':>6}")
    for r in results:
        batch = "-" if r.mean_batch is None else f"{r.mean_batch:.2f}"
        print(f"{r.setting:<16} {r.clients:>7} {r.requests:>8} {r.errors:>6} {r.requests_per_s:>7.2f} "
              f"{r.p50_ms:>8.1f} {r.p90_ms:>8.1f} {r.p99_ms:>8.1f} {batch:>6}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--model", help="model package: start a server per --max-batch setting")
    target.add_argument("--url", help="a server already running on loopback, e.g. http://127.0.0.1:8000")
    parser.add_argument("--max-batch", type=int, nargs="+", default=[1, 8], help="settings to compare (default 1 8)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds per setting (default 60)")
    parser.add_argument("--max-requests", type=int, default=100_000, help="stop a setting after this many requests")
    parser.add_argument("--image", type=Path, nargs="*", default=[],
                        help="images to send, in turn (default: a synthetic 800x600 JPEG)")
    parser.add_argument("--server-args", default="",
                        help="more arguments for fastvit-detect serve, e.g. '--variant fp32 --threads 2'")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if args.clients < 1 or args.duration <= 0 or args.max_requests < 1:
        parser.error("--clients and --max-requests must be >= 1, --duration > 0")
    images = [path.read_bytes() for path in args.image] or [synthetic_photo()]

    results = []
    if args.url:
        results.append(measure(args.url, "as running", images, args))
    else:
        for max_batch in args.max_batch:
            server = Server(args.model, max_batch, [*args.server_args.split(), "--log-level", "info"])
            try:
                print(f"[loadtest] max-batch {max_batch}: {server.url}, {args.clients} clients, {args.duration:.0f} s",
                      file=sys.stderr, flush=True)
                results.append(measure(server.url, f"max-batch {max_batch}", images, args))
            finally:
                server.stop()
    print_table(results)
    if args.json:
        args.json.write_text(json.dumps([asdict(result) for result in results], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
