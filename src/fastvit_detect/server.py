"""Reference HTTP server (the ``serve`` extra): an upload page and a JSON API over one shared :class:`Detector`.

    fastvit-detect serve --model DIR            # or: uvicorn-compatible app from create_app(detector)

Endpoints: ``GET /`` upload page, ``POST /api/v1/predict`` (multipart field ``file``, repeatable, or a raw image
body), ``POST /predict/`` (the seed project's ``{"image": base64}`` -> ``{"result": label}``), ``GET /healthz``,
``GET /api/v1/model`` and ``GET /openapi.json``. FastAPI's /docs and /redoc are off: they load Swagger UI from a
CDN, and nothing this server sends may make the browser fetch from elsewhere.

Concurrent requests are micro-batched: one worker thread takes up to ``max_batch`` queued images, waiting at most
``max_wait_ms`` after the first, and classifies them in one session call. The event loop only parses requests
and awaits futures, so it keeps accepting requests while the model runs. The queue is bounded; a request that
doesn't fit gets 503 at once instead of waiting without limit.
"""

from __future__ import annotations

import asyncio
import io
import logging
import queue
import re
import threading
import time
from collections.abc import AsyncGenerator, Sequence
from concurrent.futures import Future
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

try:
    import python_multipart  # noqa: F401 - Starlette parses forms with it; fail here, not at the first upload
    import uvicorn
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, JSONResponse, Response
    from starlette.datastructures import UploadFile
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.formparsers import MultiPartException, MultiPartParser
    from starlette.staticfiles import StaticFiles
except ModuleNotFoundError as exc:
    raise ModuleNotFoundError(
        f"fastvit_detect.server needs FastAPI, uvicorn and python-multipart ({exc.name} is missing): "
        "pip install 'fastvit-detect[serve]'",
        name=exc.name,
    ) from exc

from . import __version__
from .detector import Detector, Prediction
from .errors import (
    BadRequestError,
    FastVitDetectError,
    ImageDecodeError,
    InputError,
    ServerBusyError,
    UploadTooLargeError,
)
from .httpapi import INTERNAL_ERROR, error_body, http_status, named_image, seed_request_image
from .preprocess import ImageInput

log = logging.getLogger("fastvit_detect.server")

STATIC_PACKAGE = ("fastvit_detect", "static")
# The page may load only what this server sends: no CDN, no fonts, no analytics.
PAGE_SECURITY_POLICY = "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; base-uri 'none'"


# --- settings and errors ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServeSettings:
    """Request limits and micro-batching. ``max_batch=1`` turns batching off: one session call per image."""

    max_upload_bytes: int = 20 * 1024 * 1024
    max_batch: int = 8
    max_wait_ms: float = 5.0
    queue_size: int = 64  # images waiting for the worker; more get 503. Also the most files one request may send

    def __post_init__(self) -> None:
        for name in ("max_upload_bytes", "max_batch", "queue_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {self.max_wait_ms}")


# --- micro-batching -----------------------------------------------------------------------------------------


class BatchPredictor(Protocol):
    """What the batcher needs from a detector (a Protocol so tests can pass a gated stand-in)."""

    def predict_batch(
        self, images: Sequence[ImageInput], batch_size: int = ..., *, errors: Literal["return"]
    ) -> list[Prediction | InputError]: ...


@dataclass
class _Job:
    image: ImageInput
    future: Future[Prediction | InputError]


_STOP = None  # queued by close(): the worker finishes what is before it, then exits


class MicroBatcher:
    """Classifies queued images on one worker thread, in batches of at most ``max_batch``.

    A batch starts with the oldest queued image and takes whatever else arrives within ``max_wait_ms``. The
    detector runs on this thread only, so onnxruntime's intra-op threads have the cores to themselves.
    """

    def __init__(self, detector: BatchPredictor, max_batch: int = 8, max_wait_ms: float = 5.0, queue_size: int = 64):
        if max_batch < 1 or queue_size < 1 or max_wait_ms < 0:
            raise ValueError("max_batch and queue_size must be >= 1 and max_wait_ms >= 0")
        self.detector = detector
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000
        self.queue_size = queue_size
        self._jobs: queue.Queue[_Job | None] = queue.Queue(maxsize=queue_size)
        self._submit_lock = threading.Lock()
        self._closed = False
        self.batches_run = 0
        self.images_run = 0
        self.largest_batch = 0
        self._worker = threading.Thread(target=self._run, name="fastvit-detect-batcher", daemon=True)
        self._worker.start()

    @property
    def queue_depth(self) -> int:
        return self._jobs.qsize()

    def submit(self, images: Sequence[ImageInput]) -> list[Future[Prediction | InputError]]:
        """Queue images as one unit, all or none, so a multi-file request is never half-queued."""
        with self._submit_lock:  # only submitters add, so free space can't shrink between the check and the puts
            if self._closed:
                raise ServerBusyError("the server is shutting down")
            free = self.queue_size - self._jobs.qsize()
            if len(images) > free:
                raise ServerBusyError(
                    f"inference queue full ({self.queue_size - free} of {self.queue_size} images waiting); retry later"
                )
            jobs = [_Job(image, Future()) for image in images]
            for job in jobs:
                self._jobs.put_nowait(job)
        return [job.future for job in jobs]

    async def classify(self, images: Sequence[ImageInput]) -> list[Prediction | InputError]:
        """Submit images and await their results, in order. A cancelled caller's queued images are skipped."""
        futures = self.submit(images)
        return list(await asyncio.gather(*(asyncio.wrap_future(future) for future in futures)))

    def close(self, timeout: float = 30.0) -> None:
        """Refuse new work, finish what is queued, stop the worker."""
        with self._submit_lock:
            if self._closed:
                return
            self._closed = True
        self._jobs.put(_STOP)  # blocks only while the queue is full, and the worker is draining it
        self._worker.join(timeout)

    def _run(self) -> None:
        stopping = False
        while not stopping:
            batch, stopping = self._next_batch()
            self._classify(batch)

    def _next_batch(self) -> tuple[list[_Job], bool]:
        """The oldest job and what else arrives within max_wait of it, up to max_batch; and whether to stop."""
        batch: list[_Job] = []
        deadline: float | None = None  # set by the first job: until then, wait as long as it takes
        while len(batch) < self.max_batch:
            try:
                timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
                job = self._jobs.get(timeout=timeout)
            except queue.Empty:
                break
            if job is _STOP:
                return batch, True
            if job.future.cancelled():  # its caller went away: don't give it a place in the batch
                continue
            if deadline is None:
                deadline = time.monotonic() + self.max_wait
            batch.append(job)
        return batch, False

    def _classify(self, batch: list[_Job]) -> None:
        live = [job for job in batch if job.future.set_running_or_notify_cancel()]
        if not live:
            return
        try:
            results = self.detector.predict_batch([job.image for job in live], batch_size=len(live), errors="return")
        except Exception as exc:  # the model failed, not an input: every request in the batch gets the error
            log.exception("inference failed for a batch of %d image(s)", len(live))
            for job in live:
                job.future.set_exception(exc)
            return
        self.batches_run += 1
        self.images_run += len(live)
        self.largest_batch = max(self.largest_batch, len(live))
        for job, result in zip(live, results):
            job.future.set_result(result)


# --- reading requests ---------------------------------------------------------------------------------------


async def read_body(request: Request, limit: int, limit_note: str = "") -> bytes:
    """The request body, refused with 413 as soon as it passes ``limit`` bytes: never read unbounded."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise UploadTooLargeError(
            f"request body of {int(declared):,} bytes exceeds the upload limit of {limit:,} bytes{limit_note}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise UploadTooLargeError(f"request body exceeds the upload limit of {limit:,} bytes{limit_note}")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_uploads(request: Request, settings: ServeSettings) -> tuple[list[io.BytesIO], bool]:
    """The images of a predict request, and whether it was multipart with several files (answered with a list)."""
    body = await read_body(request, settings.max_upload_bytes)
    if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        if not body:
            raise BadRequestError("no image: send it as multipart field 'file' or as the request body")
        return [named_image(body, "request body")], False

    async def in_memory() -> AsyncGenerator[bytes, None]:  # the body is read already, within the limit
        yield body

    try:
        form = await MultiPartParser(request.headers, in_memory(), max_files=settings.queue_size).parse()
    except MultiPartException as exc:
        raise BadRequestError(f"malformed multipart body: {exc.message}") from exc
    try:
        fields = form.getlist("file")
        if not fields:
            sent = ", ".join(form.keys()) or "none"
            raise BadRequestError(f"multipart field 'file' is missing (fields sent: {sent})")
        uploads = []
        for index, field in enumerate(fields):
            if not isinstance(field, UploadFile):
                raise BadRequestError("multipart field 'file' must be a file upload, not a text value")
            uploads.append(named_image(await field.read(), field.filename or f"file #{index + 1}"))
        return uploads, len(uploads) > 1
    finally:
        await form.close()


# --- responses ----------------------------------------------------------------------------------------------


HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def public_model_name(detector: Detector) -> str:
    """A Hub id as is; for a local export only the folder's name: clients needn't learn the server's paths."""
    model = (detector.package.manifest or {}).get("source", {}).get("model")
    if isinstance(model, str) and HUB_ID.fullmatch(model) and not Path(model).exists():
        return model
    return Path(model).name if isinstance(model, str) and model else detector.package.root.name


def model_summary(detector: Detector) -> dict[str, Any]:
    source = (detector.package.manifest or {}).get("source", {})
    return {"name": public_model_name(detector), "revision": source.get("revision"), "variant": detector.variant.name}


def public_manifest(detector: Detector) -> dict[str, Any] | None:
    manifest = detector.package.manifest
    if manifest is None:
        return None
    return {**manifest, "source": {**manifest.get("source", {}), "model": public_model_name(detector)}}


def prediction_body(prediction: Prediction, model: dict[str, Any], elapsed_ms: float) -> dict[str, Any]:
    return {"label": prediction.label, "score": prediction.score, "probabilities": dict(prediction.probabilities),
            "fake_probability": prediction.fake_probability, "model": model, "elapsed_ms": round(elapsed_ms, 2)}


PREDICT_REQUEST_DOCS = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
        "file": {"type": "array", "items": {"type": "string", "format": "binary"},
                 "description": "one image, or several: several are answered with a list in the same order"}}}},
    "image/*": {"schema": {"type": "string", "format": "binary"}},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
}}}
SEED_REQUEST_DOCS = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "required": ["image"],
    "properties": {"image": {"type": "string", "description": "base64 image, optionally a data:image/...;base64, URL"}},
}}}}}
ERROR_DOCS: dict[int | str, dict[str, Any]] = {
    status: {"description": description, "content": {"application/json": {"example": example}}}
    for status, description, example in [
        (413, "body over the upload limit, or an image over the pixel cap",
         error_body(UploadTooLargeError("request body exceeds the upload limit of 20,971,520 bytes"))),
        (415, "not an image that can be decoded",
         error_body(ImageDecodeError("x.jpg: not a recognised image format (5 bytes)"))),
        (422, "missing field, malformed body, empty image",
         error_body(BadRequestError("multipart field 'file' is missing"))),
        (500, "the server failed (not the request)", INTERNAL_ERROR),
        (503, "inference queue full: retry later", error_body(ServerBusyError("inference queue full; retry later"))),
    ]
}


# --- the application ----------------------------------------------------------------------------------------


def create_app(detector: Detector, settings: ServeSettings | None = None) -> FastAPI:
    """The ASGI app over a loaded detector. Its batcher's worker starts now and stops with the app's lifespan."""
    settings = settings or ServeSettings()
    batcher = MicroBatcher(detector, settings.max_batch, settings.max_wait_ms, settings.queue_size)
    model = model_summary(detector)
    static = StaticFiles(packages=[STATIC_PACKAGE])
    index_page, found = static.lookup_path("index.html")
    if found is None:
        raise RuntimeError("fastvit_detect/static/index.html is missing: the package was installed without its data")

    async def lifespan(_app: FastAPI):  # type: ignore[no-untyped-def]
        yield
        await asyncio.to_thread(batcher.close)

    app = FastAPI(title="fastvit-detect", version=__version__, docs_url=None, redoc_url=None, lifespan=lifespan,
                  description="Torch-free deepfake detection with ONNX Vision Transformers.")
    app.state.detector, app.state.batcher, app.state.settings = detector, batcher, settings
    app.mount("/static", static, name="static")

    @app.exception_handler(Exception)
    async def server_error(_request: Request, _exc: Exception) -> JSONResponse:
        # Not the client's fault: the log gets the traceback (uvicorn writes it as the exception propagates), the
        # client only learns that it failed.
        return JSONResponse(INTERNAL_ERROR, status_code=500)

    @app.exception_handler(FastVitDetectError)
    async def detector_error(_request: Request, exc: FastVitDetectError) -> JSONResponse:
        status = http_status(exc)
        if status == 500:  # a broken model, say: handled here, so no one else logs it
            log.error("request failed", exc_info=exc)
            return JSONResponse(INTERNAL_ERROR, status_code=500)
        headers = {"Retry-After": "1"} if status == 503 else None
        return JSONResponse(error_body(exc), status_code=status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # 404, 405 and the like, in the same {"error": ...} shape as every other failure.
        body = {"error": {"type": "HTTPError", "message": str(exc.detail)}}
        return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(error_body(BadRequestError(str(exc.errors()))), status_code=422)

    @app.middleware("http")
    async def log_request(request: Request, call_next):  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            client = f"{request.client.host}:{request.client.port}" if request.client else "-"
            log.info('%s "%s %s" %d %.1f ms', client, request.method, request.url.path, status,
                     1000 * (time.perf_counter() - started))

    @app.get("/", include_in_schema=False)
    async def page() -> Response:
        return FileResponse(index_page, media_type="text/html",
                            headers={"Content-Security-Policy": PAGE_SECURITY_POLICY, "Cache-Control": "no-cache"})

    @app.post("/api/v1/predict", openapi_extra=PREDICT_REQUEST_DOCS, responses=ERROR_DOCS,
              summary="Classify one image (object) or several multipart files (list, in order)")
    async def predict(request: Request) -> JSONResponse:
        started = time.perf_counter()
        uploads, as_list = await read_uploads(request, settings)
        results = await batcher.classify(uploads)
        elapsed_ms = 1000 * (time.perf_counter() - started)
        if not as_list:
            (result,) = results
            if isinstance(result, InputError):
                raise result
            return JSONResponse(prediction_body(result, model, elapsed_ms))
        return JSONResponse([
            {"filename": upload.name, **(error_body(result) if isinstance(result, InputError)
                                        else prediction_body(result, model, elapsed_ms))}
            for upload, result in zip(uploads, results)
        ])

    @app.post("/predict/", openapi_extra=SEED_REQUEST_DOCS, responses=ERROR_DOCS,
              summary="The seed project's API: {\"image\": base64} -> {\"result\": label}")
    async def predict_base64(request: Request) -> JSONResponse:
        # base64 takes 4 bytes per 3: allow the JSON body that much more, then hold the decoded image to the limit.
        body = await read_body(request, settings.max_upload_bytes * 4 // 3 + 1024,
                               f" (an image of {settings.max_upload_bytes:,} bytes, base64-encoded in JSON)")
        (result,) = await batcher.classify([seed_request_image(body, settings.max_upload_bytes)])
        if isinstance(result, InputError):
            raise result
        return JSONResponse({"result": result.label})

    @app.get("/healthz", summary="Liveness, and the batcher's counters")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "variant": detector.variant.name, "queue_depth": batcher.queue_depth,
                "batches": batcher.batches_run, "images": batcher.images_run, "largest_batch": batcher.largest_batch}

    @app.get("/api/v1/model", summary="The model package's manifest, variant, labels and the serving settings")
    async def model_info() -> dict[str, Any]:
        return {**model, "labels": list(detector.labels), "manifest": public_manifest(detector),
                "serving": asdict(settings)}

    return app


def serve(
    detector: Detector,
    host: str = "127.0.0.1",
    port: int = 8000,
    settings: ServeSettings | None = None,
    log_level: str = "info",
) -> None:
    """Serve a loaded detector with uvicorn until interrupted."""
    if not 0 <= port <= 65535:
        raise ValueError(f"port must be 0-65535, got {port}")
    app = create_app(detector, settings)
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.info("serving %s (variant %s, labels %s) with %s", detector.package.root, detector.variant.name,
             ", ".join(detector.labels), app.state.settings)
    # access_log off: log_request writes one line per request, with its latency.
    uvicorn.run(app, host=host, port=port, access_log=False, log_level=log_level)
