"""The server's settings: :class:`ServeSettings`, every limit a deployment may tune, validated where it is given."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..faces import (
    DEFAULT_MAX_SIDE,
    MAX_MAX_FACES,
    MAX_MAX_SIDE,
    MIN_MAX_SIDE,
)
from ..httpapi import (
    SERVER_MAX_PIXELS,
)
from ..media import (
    check_formats,
    server_formats,
)
from ..options import check_finite, check_whole
from ..session import physical_core_count


def check_range(name: str, value: Any, low: float, high: float, whole: bool) -> None:
    if whole:
        check_whole(name, value, int(low), int(high))
    else:
        check_finite(name, value, low, high)


@dataclass(frozen=True)
class ServeSettings:
    """Request limits, decoding, micro-batching and connection handling. ``max_batch=1`` turns batching off."""

    max_upload_bytes: int = 20 * 1024 * 1024
    max_batch: int = 8
    max_wait_ms: float = 5.0
    queue_size: int = 64  # images waiting for the model; more get 503. Also the most files one request may send
    max_pixels: int = SERVER_MAX_PIXELS  # per image, checked from the header before decoding, x DECODE_COST
    decode_workers: int = field(default_factory=lambda: max(2, physical_core_count()))
    decode_budget_pixels: int | None = None  # pixels decoding at once; None: 1.5 x max_pixels
    decode_stall_s: float = 30.0  # a decode thread busy on one image longer than this is stalled (see /healthz)
    max_connections: int = 128  # more are answered 503 at once by uvicorn
    header_timeout_s: float = 10.0  # a request's headers must be complete this long after its first byte
    body_timeout_s: float = 60.0  # the whole body must arrive within this
    keep_alive_s: float = 5.0  # an idle kept-alive connection is closed after this
    explain_concurrency: int = 1  # explanations computed at once, each on its own thread, off the model thread
    explain_queue: int = 2  # explanations that may wait for a free slot; more get 503 at once
    explain_max_passes: int = 49  # the most model passes one explanation may ask for (grid**2 or samples, + 1)
    explain_yield_s: float = 1.0  # the longest an explanation's pass waits for predictions to leave the model
    formats: tuple[str, ...] | None = field(default_factory=server_formats)  # None: all Pillow opens but EPS
    # Faces first (?faces=1): each face's crop takes a place in the inference queue, so the answer holds at most
    # min(faces_max_per_image, queue_size) faces; detection runs on faces_concurrency threads of its own.
    faces_max_per_image: int = 32  # the most faces one image's answer holds (a request's max_faces up to this)
    faces_detect_side: int = DEFAULT_MAX_SIDE  # faces are detected on a copy whose long side is at most this
    faces_concurrency: int = 1  # images in face detection at once, each on its own thread, at a lower priority
    faces_queue: int = 4  # images that may wait for face detection; more get 503 at once

    # (name, low, high, whole number?) — every numeric option is finite and in range: inf, nan, 1e300 and
    # negative values are an operator's mistake, refused before anything starts.
    LIMITS = (("max_upload_bytes", 1, 1 << 32, True), ("max_batch", 1, 4096, True), ("max_wait_ms", 0, 10_000, False),
              ("queue_size", 1, 100_000, True), ("max_pixels", 1, 1 << 32, True), ("decode_workers", 1, 256, True),
              ("decode_stall_s", 0.01, 86_400, False),
              ("max_connections", 1, 1_000_000, True), ("header_timeout_s", 0.1, 3600, False),
              ("body_timeout_s", 0.1, 3600, False), ("keep_alive_s", 0.1, 3600, False),
              ("explain_concurrency", 1, 256, True), ("explain_queue", 0, 100_000, True),
              ("explain_max_passes", 2, 1_000_000, True), ("explain_yield_s", 0, 3600, False),
              ("faces_max_per_image", 1, MAX_MAX_FACES, True),
              ("faces_detect_side", MIN_MAX_SIDE, MAX_MAX_SIDE, True), ("faces_concurrency", 1, 256, True),
              ("faces_queue", 0, 100_000, True))

    def __post_init__(self) -> None:
        for name, low, high, whole in self.LIMITS:
            check_range(name, getattr(self, name), low, high, whole)
        if self.decode_budget_pixels is not None:
            check_range("decode_budget_pixels", self.decode_budget_pixels, self.max_pixels, 1 << 34, True)
        object.__setattr__(self, "formats", check_formats(self.formats))  # upper case, known to Pillow

    @property
    def budget_pixels(self) -> int:
        return self.decode_budget_pixels or self.max_pixels * 3 // 2

    @property
    def faces_cap(self) -> int:
        """The most faces one image's answer holds: each face's crop takes a place in the inference queue."""
        return min(self.faces_max_per_image, self.queue_size)
