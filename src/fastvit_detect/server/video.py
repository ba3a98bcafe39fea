"""``POST /api/v1/video``: a clip's verdict over HTTP, in a stage of its own so a video never stalls image requests.

A clip costs seconds to minutes, where an image costs milliseconds. Queued behind the model thread's micro-batches,
one clip would hold every image request behind it. Here at most :attr:`VideoServeSettings.concurrency` clips are
sampled and classified at once, each on a thread of its own (at a lower CPU priority where the OS allows it per
thread, as explanations are), and at most :attr:`VideoServeSettings.queue` more wait; the next gets 503 at once.
The upload is read within its own byte cap (larger than an image's) and the body timeout; the clip's duration,
resolution, packets, decoded frames and decoding time are held to :class:`fastvit_detect.video.VideoLimits`
built from these settings. Errors answer as everywhere else in the server (``httpapi.HTTP_STATUS``): over a cap
413 (``VideoTooLargeError``, ``UploadTooLargeError``), not a video we read 415 (``VideoDecodeError``,
``NoVideoStreamError``), a bad parameter 422, busy 503.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from ..errors import BadRequestError, InvalidOptionError, ServerBusyError
from ..options import check_finite, check_whole
from ..timeline import VideoResult, has_face_detector
from ..video import MAX_FPS, MIN_FPS, VideoLimits
from .requests import BINARY, ERROR_DOCS, read_uploads, refuse_unknown_parameters, upload_body
from .settings import ServeSettings
from .stages import lower_thread_priority

if TYPE_CHECKING:
    import io

    from ..detector import Detector

__all__ = ["VideoServeSettings", "VideoStage"]

VIDEO_PARAMETERS = ("fps", "max_frames")


@dataclass(frozen=True)
class VideoServeSettings:
    """A server's video limits. ``max_upload_bytes``: the clip's bytes; ``max_duration``: seconds of content;
    ``max_frame_pixels``: a frame's width x height (4K passes); ``max_frames``: the most frames a request may have
    sampled (``?max_frames=``, default this); ``fps``: the default sampling rate (``?fps=``);
    ``max_decode_seconds``: a clip's indexing and decoding time; ``concurrency`` and ``queue``: clips at work and
    waiting."""

    max_upload_bytes: int = 256 * 1024 * 1024
    max_duration: float = 300.0
    max_frame_pixels: int = 3840 * 2160
    max_frames: int = 300
    fps: float = 1.0
    max_decode_seconds: float = 300.0
    concurrency: int = 1
    queue: int = 2

    def __post_init__(self) -> None:
        check_whole("max_upload_bytes", self.max_upload_bytes, 1, 1 << 32, InvalidOptionError)
        check_finite("max_duration", self.max_duration, 0.001, 86_400.0, InvalidOptionError)
        check_whole("max_frame_pixels", self.max_frame_pixels, 1, 1 << 34, InvalidOptionError)
        check_whole("max_frames", self.max_frames, 1, 100_000, InvalidOptionError)
        check_finite("fps", self.fps, MIN_FPS, MAX_FPS, InvalidOptionError)
        check_finite("max_decode_seconds", self.max_decode_seconds, 0.001, 86_400.0, InvalidOptionError)
        check_whole("concurrency", self.concurrency, 1, 64, InvalidOptionError)
        check_whole("queue", self.queue, 0, 10_000, InvalidOptionError)

    @property
    def limits(self) -> VideoLimits:
        return VideoLimits(max_bytes=self.max_upload_bytes, max_duration=self.max_duration,
                           max_frame_pixels=self.max_frame_pixels, max_decode_seconds=self.max_decode_seconds)


class VideoStage:
    """Clips classified off the event loop and off the model thread, under :class:`VideoServeSettings`."""

    def __init__(self, detector: Detector, settings: VideoServeSettings | None = None) -> None:
        self.detector = detector
        self.settings = settings or VideoServeSettings()
        self.faces = has_face_detector(detector.package)
        self._pool = ThreadPoolExecutor(self.settings.concurrency, thread_name_prefix="fastvit-video")
        self._lock = threading.Lock()
        self.admitted = 0  # clips at work or waiting
        self.done = 0

    def parameters(self, query: Any) -> tuple[float, int]:
        """``fps`` and ``max_frames`` from a request's query, checked against this stage's limits (422 otherwise,
        and for any other parameter)."""
        refuse_unknown_parameters(query, VIDEO_PARAMETERS, "video")
        try:
            fps = float(query.get("fps", self.settings.fps))
            max_frames = int(query.get("max_frames", self.settings.max_frames))
        except ValueError as exc:
            raise InvalidOptionError(f"fps and max_frames must be numbers: {exc}") from exc
        check_finite("fps", fps, MIN_FPS, MAX_FPS, InvalidOptionError)
        check_whole("max_frames", max_frames, 1, self.settings.max_frames, InvalidOptionError)
        return fps, max_frames

    async def classify(self, upload: io.BytesIO, fps: float, max_frames: int) -> VideoResult:
        with self._lock:
            if self.admitted >= self.settings.concurrency + self.settings.queue:
                raise ServerBusyError(f"{self.admitted} videos are being classified or waiting; retry later")
            self.admitted += 1
        try:
            work = asyncio.get_running_loop().run_in_executor(self._pool, self._run, upload, fps, max_frames)
        except BaseException:  # the pool was shut down: nothing runs, the place goes back
            self._finished(None)
            raise
        # Counted until the clip ends, not its request: a client that leaves mid-clip must not free the place
        # that its clip still occupies on the thread (as the explain and face stages count theirs).
        work.add_done_callback(self._finished)
        return await asyncio.shield(work)

    def _finished(self, work: asyncio.Future[VideoResult] | None) -> None:
        with self._lock:
            self.admitted -= 1
            self.done += 1
        if work is not None and not work.cancelled():
            work.exception()  # retrieved: when its client has left, nobody else awaits it

    def _run(self, upload: io.BytesIO, fps: float, max_frames: int) -> VideoResult:
        lower_thread_priority()  # the decoding thread it starts inherits the priority
        return self.detector.predict_video(upload, fps=fps, max_frames=max_frames, faces=self.faces,
                                           limits=self.settings.limits)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def video_request_docs(settings: VideoServeSettings) -> dict[str, Any]:
    """The endpoint's parameters and body for /openapi.json, with this server's defaults and caps."""
    return {"parameters": [
        {"name": "fps", "in": "query", "schema": {"type": "number", "minimum": MIN_FPS, "maximum": MAX_FPS,
                                                  "default": settings.fps},
         "description": "frames sampled a second of the clip"},
        {"name": "max_frames", "in": "query", "schema": {"type": "integer", "minimum": 1,
                                                         "maximum": settings.max_frames,
                                                         "default": settings.max_frames},
         "description": "at most this many sampled frames: a longer clip gets this many equal windows"},
    ], "requestBody": upload_body({**BINARY, "description": "one clip"}, "video/*")}


def add_video_route(app: FastAPI, stage: VideoStage, settings: ServeSettings, model: dict[str, Any]) -> None:
    """Register ``POST /api/v1/video`` on the server's app."""
    uploads_settings = replace(settings, max_upload_bytes=stage.settings.max_upload_bytes)

    @app.post("/api/v1/video", responses=ERROR_DOCS, openapi_extra=video_request_docs(stage.settings),
              summary="Classify one video (multipart field 'file', or the raw body): verdict, tracks, timeline")
    async def video(request: Request) -> JSONResponse:
        started = time.perf_counter()
        fps, max_frames = stage.parameters(request.query_params)
        uploads, as_list = await read_uploads(request, uploads_settings)
        if as_list:
            raise BadRequestError(f"video takes one clip per request, got {len(uploads)} files")
        result = await stage.classify(uploads[0], fps, max_frames)
        return JSONResponse({**result.to_dict(), "model": model,
                             "elapsed_ms": 1000 * (time.perf_counter() - started)})
